"""The sandbox: correct judging, hostile programs contained, reward hacking scores 0.

Every hostile program is given one test that it would pass if it were a correct solution, so
"contained" means both: the host is unaffected AND the run scores what it earned.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1lab import R1labError
from r1lab.sandbox import Limits, Sandbox, check_tests, isolation, read_program

ISOLATED = isolation() != "none"
needs_namespaces = pytest.mark.skipif(not ISOLATED, reason="no namespaces here: only rlimits and the timeout apply")
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def spawner(marker: str, seconds: int, **popen) -> str:
    """Program text defining spawn(): starts `sleep` named `marker` (argv[0]) in the background, returns its pid."""
    options = "".join(f", {k}={v!r}" for k, v in popen.items())
    return (f"import shutil, subprocess\ndef spawn():\n    return subprocess.Popen([{marker!r}, '{seconds}'], "
            f"executable=shutil.which('sleep'){options}).pid\n")


@pytest.fixture
def box(tmp_path):
    return Sandbox(Limits(wall_s=10, cpu_s=5, memory_mb=512, processes=16, disk_mb=16, output_bytes=4096),
                   tmp_root=str(tmp_path))


def leftovers(tmp_path) -> list[str]:
    return [p.name for p in tmp_path.iterdir() if p.name.startswith("r1lab-sandbox-")]


def test_correct_program_passes_and_fractions_count(box, tmp_path):
    result = box.run(ADD, ADD_TESTS + ["assert add(2, 2) == 5"])
    assert (result.passed, result.total, result.status) == (2, 3, "ok")
    assert result.fraction == pytest.approx(2 / 3)
    assert "test 2: AssertionError" in result.errors[0]
    assert leftovers(tmp_path) == []


def test_plain_data_round_trips_and_candidate_and_setup(box):
    program = "def f(x):\n    return (x, {1: [2.5, float('inf')]}, {3}, b'\\x00', 1j, None, True)\n"
    tests = ["assert candidate('a') == ('a', {1: [2.5, float('inf')]}, {3}, b'\\x00', 1j, None, True)",
             "assert helper(f(2))"]
    result = box.run(program, tests, setup="def helper(value):\n    return value[0] == 2\n", entry_point="f")
    assert (result.passed, result.total) == (2, 2), result.errors


def test_stdout_is_captured_and_a_loop_of_asserts_is_one_test(box):
    result = box.run(ADD + "print('hello')", ["for i in range(5):\n    assert add(i, 0) == i"])
    assert (result.passed, result.total, result.stdout) == (1, 1, "hello\n")


@pytest.mark.parametrize("program", [
    "while True:\n    pass",                                    # infinite loop at import
    ADD + "import time\nwhile True:\n    time.sleep(1)",       # sleeps forever
])
def test_infinite_loop_is_stopped_quickly(tmp_path, program):
    box = Sandbox(Limits(wall_s=2, cpu_s=1), tmp_root=str(tmp_path))
    started = time.monotonic()
    result = box.run(program, ADD_TESTS)
    assert result.passed == 0 and result.status in ("timeout", "ok")
    assert time.monotonic() - started < 6
    assert leftovers(tmp_path) == []


def test_fork_bomb_is_contained(box):
    program = ADD + "import os\nfor _ in range(10000):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = box.run(program, ADD_TESTS)
    assert result.status in ("ok", "timeout", "output_limit")
    assert os.getloadavg() is not None          # the host still answers
    assert box.run(ADD, ADD_TESTS).passed == 2  # and the next run is unaffected


def test_allocating_50_gb_fails_inside(box):
    result = box.run(ADD + "x = bytearray(50 * 2**30)", ADD_TESTS)
    assert result.passed == 0 and "MemoryError" in result.errors[0]


def test_a_10_gb_file_is_cut_short(box, tmp_path):
    program = ADD + ("import os\nwith open('big', 'wb') as f:\n    for _ in range(10240):\n"
                     "        f.write(b'x' * 2**20)\n")
    result = box.run(program, ADD_TESTS)
    assert result.passed == 0
    assert any(word in result.errors[0] for word in ("File too large", "No space", "EFBIG", "SIGXFSZ", "ended", "exited"))
    assert leftovers(tmp_path) == []


@needs_namespaces
def test_secrets_are_not_readable(box):
    secret = Path.home() / f".r1lab-sandbox-secret-{os.getpid()}"
    secret.write_text("TOKEN=hunter2")
    try:
        program = ADD + f"def steal():\n    out = []\n    for path in ('/etc/passwd', {str(secret)!r}, {str(Path.home())!r}):\n" \
                        "        try:\n            out.append(open(path).read())\n" \
                        "        except OSError as e:\n            out.append(type(e).__name__)\n    return out\n"
        host_account = Path("/etc/passwd").read_text().splitlines()[0]          # e.g. root:x:0:0:root:/root:/bin/bash
        result = box.run(program, ["assert steal()[0].startswith('sandbox:')",
                                   f"assert {host_account!r} not in steal()[0]",      # the host's accounts stay unseen
                                   "assert steal()[1] in ('FileNotFoundError', 'PermissionError')",
                                   "assert steal()[2] in ('FileNotFoundError', 'PermissionError', 'IsADirectoryError')"])
        assert result.passed == 4, result.errors
    finally:
        secret.unlink()


@needs_namespaces
def test_files_outside_cannot_be_deleted(box, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    program = ADD + (f"import os, shutil\nfor path in ({str(keep)!r}, '/usr/bin/env'):\n    try:\n        os.remove(path)\n"
                     f"    except OSError:\n        pass\nshutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n"
                     "shutil.rmtree('/usr/bin', ignore_errors=True)\n")   # /usr/bin, not /usr: a walk of all
                                                                       # of /usr outlasted the 10 s wall in CI
    result = box.run(program, ADD_TESTS)
    assert result.passed == 2                 # it ran, and failed to delete anything
    assert keep.read_text() == "precious" and Path("/usr/bin/env").exists()


@needs_namespaces
def test_no_network(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    program = ADD + ("import socket\ndef reach(host, port):\n    try:\n        socket.create_connection((host, port), timeout=2)\n"
                     "        return 'connected'\n    except OSError as e:\n        return type(e).__name__\n")
    result = box.run(program, [f"assert reach('127.0.0.1', {port}) != 'connected'", "assert reach('8.8.8.8', 53) != 'connected'"])
    assert result.passed == 2, result.errors
    with pytest.raises(socket.timeout):
        server.accept()                      # nobody ever connected to the host
    server.close()


@needs_namespaces
def test_cannot_kill_the_parent(box):
    program = ADD + (f"import os, signal\nfor pid in (os.getppid(), {os.getpid()}, 1):\n    try:\n"
                     "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n")
    result = box.run(program, ADD_TESTS)
    assert result.passed == 2 and result.status == "ok"     # the judge survived and reported


@needs_namespaces
def test_background_process_does_not_outlive_the_run(box):
    marker = f"r1lab-outlive-{os.getpid()}"
    program = ADD + spawner(marker, 300, start_new_session=True)
    result = box.run(program, [*ADD_TESTS, "assert spawn() > 0"])
    assert result.passed == 3, result.errors        # the background process did start
    time.sleep(0.2)
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and marker in _cmdline(pid)]


def test_one_gb_of_output_is_cut(box):
    started = time.monotonic()
    result = box.run(ADD + "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)\n", ADD_TESTS)
    assert result.status == "output_limit" and len(result.stdout) == 4096 and result.passed == 0
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)\n" + ADD,                                       # exit 0 before the tests
    "import os\nos._exit(0)\n" + ADD,
    "import builtins\nclass Yes(AssertionError):\n    pass\nbuiltins.AssertionError = Yes\n"
    "def add(a, b):\n    return 0\n",                                       # patch the assertions
    "import unittest\nunittest.TestCase.assertEqual = lambda *a: None\ndef add(a, b):\n    return 0\n",
    "class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
    "def add(a, b):\n    return Any()\n",                                   # always-equal object
    "class Int(int):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Int(0)\n",
    "import sys\ndef add(a, b):\n    sys.stdout.write('{\"test\": 0, \"passed\": true}\\n')\n    return 0\n",   # forged reports
])
def test_reward_hacking_scores_zero(box, program):
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
    assert box.run(program, tests).passed == 0


def test_two_hundred_programs_in_parallel_leave_nothing_behind(tmp_path):
    marker = f"r1lab-parallel-{os.getpid()}"
    box = Sandbox(Limits(wall_s=30), workers=16, tmp_root=str(tmp_path))
    jobs = [{"program": ADD + spawner(marker, 60),
             "tests": [f"assert add({i}, 1) == {i + 1}", *(["assert spawn() > 0"] if i % 10 == 0 else [])]}
            for i in range(200)]
    results = box.run_many(jobs)
    assert sum(r.passed for r in results) == 220, [r for r in results if r.passed != r.total][:2]
    assert leftovers(tmp_path) == []
    time.sleep(0.2)
    if ISOLATED:
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and marker in _cmdline(pid)]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("field, value, expected", [
    ("wall_s", 0, r"wall_s must be a number of seconds in \(0, 86400\], got 0"),
    ("wall_s", float("inf"), r"wall_s must be a number of seconds in \(0, 86400\], got inf"),   # r1lab sandbox --wall-s inf
    ("wall_s", float("nan"), r"wall_s .* got nan"),
    ("wall_s", -1.5, r"wall_s .* got -1.5"),
    ("cpu_s", 2.5, r"cpu_s must be an integer in \[1, 2147483647\], got 2.5"),
    ("memory_mb", True, r"memory_mb must be an integer .* got True"),
    ("processes", 0, r"processes must be an integer .* got 0"),
    ("output_bytes", 2**64, r"output_bytes must be an integer .* got 18446744073709551616"),
])
def test_bad_limits_are_named_with_their_range(field, value, expected):
    with pytest.raises(R1labError, match=expected) as error:
        Limits(**{field: value})
    assert "\n" not in str(error.value)


def test_read_program_refuses_binary_and_missing_files(tmp_path):
    (tmp_path / "ok.py").write_text("def f():\n    return 'é'\n", encoding="utf-8")
    assert read_program(tmp_path / "ok.py") == "def f():\n    return 'é'\n"
    (tmp_path / "model.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe\x80")
    with pytest.raises(R1labError, match=r"model.bin: not a UTF-8 text file \(invalid .* at byte 8\)"):
        read_program(tmp_path / "model.bin")
    with pytest.raises(R1labError, match=r"nope.py: file not found"):
        read_program(tmp_path / "nope.py")
    with pytest.raises(R1labError, match=r": cannot be read \(Is a directory\)"):
        read_program(tmp_path)


NEVER_CALLS = "def check(candidate):\n    assert 1 == 1\ncheck(candidate)"


@pytest.mark.parametrize("program, tests, passed", [
    ("def add(a, b):\n    return None", [NEVER_CALLS], 0),                       # the example
    ("def add(a, b):\n    return None", ["assert 1 == 1", "assert 2 == 2"], 0),
    (ADD, [NEVER_CALLS.replace("1 == 1", "candidate(1, 2) == 3")], 1),           # a check that calls it
    (ADD, ["assert 1 == 1", "assert add(1, 2) == 3"], 2),                        # one call is enough
    ("def plus(a, b):\n    return a + b",                                       # no entry point at all
     ["try:\n    candidate(1, None)\nexcept Exception:\n    pass\nelse:\n    assert False"], 0),
], ids=["check-never-calls", "asserts-only", "check-calls", "one-call", "entry-point-missing"])
def test_tests_that_never_call_the_entry_point_earn_nothing(box, program, tests, passed):
    result = box.run(program, tests, entry_point="add")
    assert result.passed == passed, result.errors
    if passed == 0:
        assert any("entry point" in e for e in result.errors), result.errors


def test_passes_before_a_timeout_count_only_if_the_entry_point_was_called():
    from r1lab.sandbox import _result
    def streams(*lines):
        return {"results": "\n".join(map(__import__("json").dumps, lines)).encode(), "stdout": b"", "stderr": b""}
    start = {"tests": 2, "entry_point": "f"}
    uncalled = _result(streams(start, {"test": 0, "passed": True, "error": None, "called": False}), "timeout", 1.0)
    called = _result(streams(start, {"test": 0, "passed": True, "error": None, "called": True}), "timeout", 1.0)
    assert (uncalled.passed, called.passed) == (0, 1)


@needs_namespaces
def test_user_namespace_mode_contains_too(tmp_path):
    """The mode a non-root user gets: namespaces in a user namespace, every capability dropped."""
    box = Sandbox(Limits(wall_s=10), mode="userns", tmp_root=str(tmp_path))
    program = ADD + ("import os\ndef attempts():\n    out = []\n    for action in (lambda: os.remove('/usr/bin/env'),"
                     " lambda: os.chroot('/tmp'), lambda: open('/etc/passwd', 'a')):\n        try:\n"
                     "            action()\n            out.append('done')\n        except OSError as e:\n"
                     "            out.append(type(e).__name__)\n    return out\n")
    result = box.run(program, [*ADD_TESTS, "assert 'done' not in attempts()"])
    assert result.passed == 3, result.errors
    assert Path("/usr/bin/env").exists() and leftovers(tmp_path) == []


def test_a_program_cannot_shadow_the_tests_builtins(box):
    program = "def abs(x):\n    return 0\ndef len(x):\n    return 3\ndef f(x):\n    return 99.0\n"
    result = box.run(program, ["assert abs(f(3.5) - 0.5) < 1e-6", "assert len(str(f(1))) == 3"])
    assert result.passed == 0


def test_keyword_arguments_builtin_exceptions_and_assert_true(box):
    program = ADD + "def div(a, b):\n    return a / b\n"
    tests = ["assert True",                                               # HumanEval's filler: not a test
             "assert add(a=1, b=2) == 3",
             "try:\n    div(1, 0)\n    assert False\nexcept ZeroDivisionError:\n    pass"]
    result = box.run(program, tests)
    assert (result.passed, result.total) == (2, 2), result.errors


DOUBLE, NOT_DOUBLE = "def double(x):\n    return 2 * x\n", "def double(x):\n    return 0\n"
HUMANEVAL_STYLE = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(3) == 6\ncheck(double)"
MBPP_STYLE = ["assert double(1) == 2", "assert double(0) == 0", "assert double(-2) == -4"]
SETUP_THEN_ASSERT = ["import math\nexpected = math.floor(4.5) * 2", "got = double(4)", "assert got == expected"]


@pytest.mark.parametrize("program, tests, passed, total", [
    (DOUBLE, [HUMANEVAL_STYLE], 1, 1),              # HumanEval's own format: the call check(double) is the test
    (NOT_DOUBLE, [HUMANEVAL_STYLE], 0, 1),          # defining check() cannot fail, so it is not a test
    ("x = 1", [HUMANEVAL_STYLE], 0, 1),             # no double at all
    (DOUBLE, MBPP_STYLE, 3, 3),                     # MBPP's list of asserts: one test each
    (NOT_DOUBLE, MBPP_STYLE, 1, 3),                 # double(0) == 0 holds
    (DOUBLE, SETUP_THEN_ASSERT, 1, 1),              # imports and assignments are setup; the assert counts
    (NOT_DOUBLE, SETUP_THEN_ASSERT, 0, 1),
    (DOUBLE, ["assert True", "pass", "for x in (1, 2):\n    assert double(x) == 2 * x"], 1, 1),
    (NOT_DOUBLE, [HUMANEVAL_STYLE.replace("check(double)", "if __name__ == '__main__':\n    check(double)")], 0, 1),
])
def test_only_statements_that_can_fail_count(box, program, tests, passed, total):
    result = box.run(program, tests)
    assert (result.passed, result.total) == (passed, total), result.errors


@pytest.mark.parametrize("tests, message", [
    ([HUMANEVAL_STYLE], None),
    (MBPP_STYLE, None),
    (SETUP_THEN_ASSERT, None),
    (["def check(candidate):\n    assert candidate(1) == 2"], "no test that runs an assertion"),   # check() never called
    (["assert True", "x = double(1)"], "no test that runs an assertion"),
    (["print(double(1))"], "no test that runs an assertion"),       # runs the program, asserts nothing
    (["assert double(1) == 2", "assert ("], r"tests\[1\] is not valid Python"),
    (["assert " + "-" * 1000 + "1 == -1"], r"tests\[0\] is nested too deeply"),      # a RecursionError before
    (["assert " + "-" * 100000 + "1 == -1"], r"tests\[0\] is nested too deeply"),    # a MemoryError before
])
def test_check_tests_refuses_tests_that_assert_nothing(tests, message):
    if message is None:
        check_tests(tests, "row 1")
    else:
        with pytest.raises(R1labError, match=f"row 1: {message}"):
            check_tests(tests, "row 1")


def test_reports_are_capped_and_deduplicated():
    from r1lab.sandbox import _result
    lines = [{"tests": 1}, {"test": 0, "passed": True}, {"test": 0, "passed": True}, {"test": 1, "passed": True}, {"done": True}]
    result = _result({"results": "\n".join(map(__import__("json").dumps, lines)).encode(), "stdout": b"", "stderr": b""}, "ok", 0.0)
    assert (result.passed, result.total) == (1, 1)


@needs_namespaces
def test_runs_end_even_when_the_host_process_dies(tmp_path):
    """The judge's own alarm (wall_s + 5 s) ends a run whose host was killed; the pid namespace goes with it."""
    import signal
    import subprocess
    import sys
    marker = f"r1lab-orphan-{os.getpid()}"
    program = spawner(marker, 300) + "import time\nspawn()\ntime.sleep(300)\n"
    host = ("from r1lab.sandbox import Sandbox, Limits\n"
            f"Sandbox(Limits(wall_s=2), tmp_root={str(tmp_path)!r}).run({program!r}, ['assert 1'])\n")
    (tmp_path / "host.py").write_text(host)                  # a file: the marker is not in the host's command line
    process = subprocess.Popen([sys.executable, str(tmp_path / "host.py")])
    deadline = time.monotonic() + 20
    while not [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)], "the program never started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    while [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]


def _processes_mentioning(text: str) -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and text in _cmdline(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_host_leaves_no_program_text_and_its_folder_goes_at_the_next_start(tmp_path):
    """The job reaches the judge as a file no path names, so SIGKILLing the host leaves the program's
    text nowhere on disk; once the run has ended, the next Sandbox removes the run's folder."""
    marker, secret = f"r1lab-killed-{os.getpid()}", f"secret-{os.getpid()}-{time.time_ns()}"
    runs, host_dir = tmp_path / "runs", tmp_path / "host"
    runs.mkdir()
    host_dir.mkdir()
    program = f"# {secret}\n" + spawner(marker, 300) + "import time\nspawn()\ntime.sleep(300)\n"
    (host_dir / "host.py").write_text("from r1lab.sandbox import Sandbox, Limits\n"
                                      f"Sandbox(Limits(wall_s=60), tmp_root={str(runs)!r}).run({program!r}, ['assert 1'])\n")
    package_root = str(Path(sys.modules["r1lab"].__file__).parents[1])      # the host runs the r1lab under test
    host = subprocess.Popen([sys.executable, str(host_dir / "host.py")], env={**os.environ, "PYTHONPATH": package_root})
    deadline = time.monotonic() + 30
    while not _processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(marker), "the program never started"
    host.send_signal(signal.SIGKILL)
    host.wait()
    try:
        left = [p for p in runs.rglob("*") if p.is_file() and not p.is_symlink()]
        assert not [p for p in left if secret.encode() in p.read_bytes()], left
        assert leftovers(runs)                               # the folder of the run, still going, is kept
        Sandbox(Limits(wall_s=2), tmp_root=str(runs))        # a start while the judge lives removes nothing
        assert leftovers(runs)
    finally:
        for pid in _processes_mentioning(str(runs)):         # end the orphaned run (its alarm would, in 65 s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
    # A killed process's command line empties before it closes its files, so the judge may still hold the
    # slot's lock for a moment after /proc stops naming it (seen once under load): start until it is free.
    deadline = time.monotonic() + 30
    while True:
        Sandbox(Limits(wall_s=2), tmp_root=str(runs))
        if not leftovers(runs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert leftovers(runs) == []


def test_stale_run_folders_go_and_live_ones_stay(tmp_path):
    from r1lab.sandbox import _slot, remove_stale
    with _slot() as (slot, _):
        live, stale, other = (tmp_path / f"r1lab-sandbox-{slot}-live1234", tmp_path / "r1lab-sandbox-999999-dead5678",
                              tmp_path / "r1lab-sandbox-notours")
        for folder in (live, stale, other):
            (folder / "tmp").mkdir(parents=True)
            (folder / "tmp" / "data").write_text("x")
        remove_stale(str(tmp_path))
        assert (live.exists(), stale.exists(), other.exists()) == (True, False, True)
