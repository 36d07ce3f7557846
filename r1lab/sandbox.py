"""Run untrusted Python (a model's program) against trusted tests, contained.

    from r1lab.sandbox import Sandbox, Limits
    box = Sandbox(Limits(wall_s=5))
    result = box.run("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3"])
    result.passed, result.total, result.status          # 1, 1, "ok"
    box.run_many([{"program": ..., "tests": [...]}, ...])   # in parallel, up to `workers` at a time

Each run gets a fresh temporary directory (removed afterwards) and two processes: the trusted judge
(`sandbox_jail.py`, which runs the tests) and the program process (the untrusted code); only plain
data crosses between them, so exiting early, patching assertions or an always-equal `__eq__` earn
nothing. What is enforced, and how (Linux; `Sandbox().describe()` or `r1lab sandbox` prints it):

| limit                      | how                                                                   |
|----------------------------|-----------------------------------------------------------------------|
| wall clock                 | the host kills the whole run at `wall_s` (tests passed before count)  |
| CPU time, memory, file size, open files, core dumps | rlimits on the program process (RLIMIT_CPU, AS, FSIZE, NOFILE, CORE) |
| process count              | RLIMIT_NPROC on the program: per run as root (each run has its own uid), per *user* otherwise |
| output                     | stdout/stderr read up to `output_bytes`; more kills the run           |
| environment                | nothing inherited: PATH, HOME=/tmp, LANG, thread counts only         |
| namespaces (`unshare`)     | no network (empty net namespace); own pid namespace (host processes are invisible, everything dies with the run); own mount namespace: only /usr, /lib*, the Python installation (read-only, nosuid), /dev/null/zero/random, /proc and a `disk_mb` tmpfs at /tmp are visible - no home directories, no /etc/passwd, no project files |
| privileges                 | as root: the program runs as an unprivileged per-run uid; otherwise all capabilities are dropped in the user namespace; no_new_privs; the judge is not dumpable (the program cannot ptrace it or open its fds) |

Not enforced: where `unshare` or user namespaces are unavailable (macOS, locked-down containers) only
the rlimits, the timeout, the clean environment and the temporary directory remain, so the program
could read your files, use the network, outlive the run and, running as your user, even tamper with
the results (a warning says so once): do not train on untrusted code there. CPU share and
disk bandwidth are not throttled; memory is per process (RLIMIT_AS), not per run (no cgroups). If the
host process itself is killed, the judge's own alarm (wall_s + 5 s) still ends the run; its temporary
directory stays behind, holding no program or tests (they reach the judge as files no path names) and
in the `none` mode only what the program wrote, until the next `Sandbox()` on that root removes it.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from r1lab import R1labError
from r1lab.sandbox_jail import asserts, test_statements

JAIL = str(Path(__file__).with_name("sandbox_jail.py"))
UID_BASE = 2_000_000_000           # per-run uids, far above any real user's (used only as root)
MAX_WALL_S = 86_400                # a day: the judge's alarm takes whole seconds in a C unsigned int
MAX_LIMIT = 2**31 - 1              # integer limits: rlimits, tmpfs sizes and byte counts all fit
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
       "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0         # whole run: the program's start-up and every test
    cpu_s: int = 5               # CPU seconds of the program process (each process it forks too)
    memory_mb: int = 1024        # address space of each program process
    processes: int = 32          # processes of the program, itself included
    disk_mb: int = 64            # the writable /tmp (and the largest file)
    output_bytes: int = 65536    # stdout and stderr, each

    def __post_init__(self):
        """Refuse, naming the field and its range, a limit the jail could not apply: NaN, an infinity,
        zero or less, a bool, a fraction where an integer is needed, or a number too big for an rlimit."""
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "disk_mb", "output_bytes"):
            value, seconds = getattr(self, name), name == "wall_s"
            kinds, high = ((int, float), MAX_WALL_S) if seconds else ((int,), MAX_LIMIT)
            if type(value) not in kinds or not 0 < value <= high:       # NaN and inf fail too
                expected = f"a number of seconds in (0, {high}]" if seconds else f"an integer in [1, {high}]"
                raise R1labError(f"sandbox limit {name} must be {expected}, got {value!r}")


@dataclass
class Result:
    passed: int                  # tests passed
    total: int                   # tests run or to run (0 if the judge never started)
    status: str                  # "ok", "timeout", "output_limit" or "error" (the sandbox itself failed)
    errors: list[str] = field(default_factory=list)   # why each failed test failed
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def read_program(path: str | Path) -> str:
    """The text of a program file (`r1lab sandbox PROGRAM`); a missing, unreadable or binary file is an
    R1labError naming it, not a traceback."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise R1labError(f"{path}: file not found; give the path of a Python source file") from None
    except OSError as e:
        raise R1labError(f"{path}: cannot be read ({e.strerror}); give the path of a Python source file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise R1labError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); "
                         "give a Python source file saved as UTF-8") from None


def check_tests(tests: list[str], where: str) -> None:
    """Refuse, naming `where`, tests that do not parse or that never run an assertion: some statement
    that counts as a test (the judge's rule, `sandbox_jail.test_statements`) must assert, or use a
    function defined in the tests that asserts (HumanEval's `check(f)`)."""
    statements = []
    for i, test in enumerate(tests):
        try:
            statements += [(ast.parse(source).body[0], counts) for source, counts in test_statements([test])]
        except SyntaxError as e:
            raise R1labError(f"{where}: tests[{i}] is not valid Python ({e.msg})") from None
        except (RecursionError, MemoryError):          # e.g. 'assert ' + '-' * 1000 + '1'
            raise R1labError(f"{where}: tests[{i}] is nested too deeply for Python to handle; "
                             "expected ordinary test code") from None
    checkers = {s.name for s, _ in statements if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                and any(map(asserts, ast.walk(s)))}
    if not any(asserts(n) or isinstance(n, ast.Name) and n.id in checkers
               for s, counts in statements if counts for n in ast.walk(s)):
        raise R1labError(f"{where}: no test that runs an assertion; a test is a statement that asserts or calls "
                         "(def, class, import and assignments are setup only): HumanEval's "
                         "`def check(candidate): ...` needs its call, e.g. `check(my_function)`, after it")


@functools.cache
def isolation() -> str:
    """'root' (namespaces, per-run uids), 'userns' (namespaces in a user namespace) or 'none'."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        mode, reason = "none", "not Linux, or no `unshare` (util-linux)"
    else:
        mode, reason = "none", ""
        for candidate in (["root", "userns"] if os.geteuid() == 0 else ["userns"]):
            probe = Sandbox(Limits(wall_s=30), mode=candidate).run("def one():\n    return 1", ["assert one() == 1"])
            if probe.passed == 1:
                mode = candidate
                break
            reason = (probe.stderr.strip().splitlines() or [probe.status])[-1]
    if mode == "none":
        warnings.warn(f"r1lab sandbox: namespaces unavailable ({reason}); untrusted programs run with rlimits "
                      "and a timeout only: they can read your files, use the network and outlive the run")
    return mode


class Sandbox:
    def __init__(self, limits: Limits = Limits(), workers: int = 8, mode: str | None = None, tmp_root: str | None = None):
        self.limits, self.workers, self.tmp_root = limits, workers, tmp_root
        self._mode = mode
        remove_stale(tmp_root or tempfile.gettempdir())

    @property
    def mode(self) -> str:
        if self._mode is None:
            self._mode = isolation()
        return self._mode

    def describe(self) -> str:
        lines = {"root": "namespaces (network, pid, mount, ipc, uts), per-run unprivileged uid, rlimits, timeout",
                 "userns": "namespaces (user, network, pid, mount, ipc, uts), capabilities dropped, rlimits, timeout",
                 "none": "rlimits and timeout only: NO file system, network or process isolation"}
        return f"sandbox isolation: {self.mode} - {lines[self.mode]}; limits: {self.limits}"

    def run_many(self, jobs: list[dict]) -> list[Result]:
        """Each job is run()'s keyword arguments; results in the jobs' order."""
        self.mode  # noqa: B018 - probe once, before the threads start
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda job: self.run(**job), jobs))

    def run(self, program: str, tests: list[str], setup: str = "", entry_point: str | None = None,
            as_main: bool = False) -> Result:
        """Run `program`, then each test statement (trusted code, in the judge) against its functions; a
        statement counts as a test when it can fail (`sandbox_jail.test_statements`: it asserts or calls).
        `setup` is trusted code run before the tests (helpers, imports); `entry_point` is also bound as
        `candidate` (HumanEval's convention), and the tests must call it: a run whose tests passed
        without calling it scores 0 (`def check(candidate): assert 1 == 1` judges nothing). The program
        runs as module `solution`, or as `__main__` with `as_main` (a script: its `if __name__ ==
        "__main__":` block runs). Never raises for anything the program does."""
        started = time.monotonic()
        with _slot() as (slot, lock_fd), \
                tempfile.TemporaryDirectory(prefix=f"r1lab-sandbox-{slot}-", dir=self.tmp_root) as workdir:
            uid = UID_BASE + slot if os.geteuid() == 0 and self.mode != "userns" else None
            result_r, result_w = os.pipe()
            try:
                process = self._start(workdir, uid, result_w, lock_fd, program, tests, setup, entry_point, as_main)
            except OSError as e:            # the sandbox itself could not start: say so, never raise
                os.close(result_r)
                return Result(0, 0, "error", stderr=f"the sandbox could not start: {e}")
            finally:
                os.close(result_w)
            try:
                streams, status = self._collect(process, result_r, started)
            finally:
                os.close(result_r)
                _kill(process, uid if self.mode == "none" else None)   # a pid namespace dies with its init
        return _result(streams, status, time.monotonic() - started)

    def _start(self, workdir, uid, result_fd, lock_fd, program, tests, setup, entry_point, as_main) -> subprocess.Popen:
        """Start the judge. The job and the tests reach it as unnamed files (fds, `_unnamed`): no path
        ever names them, so a killed host leaves no program text behind. The judge also inherits the
        slot's lock and holds it until it exits, so a live run's folder is never taken for a stale one."""
        namespaces = self.mode != "none"
        if not namespaces and uid is not None:
            try:
                os.mkdir(Path(workdir, "tmp"))
                os.chown(Path(workdir, "tmp"), uid, uid)
            except OSError:                 # e.g. root in a user namespace that maps no such uid
                uid = None
        prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
        env = dict(ENV)
        if not namespaces:
            Path(workdir, "tmp").mkdir(exist_ok=True)
            env["HOME"] = env["TMPDIR"] = str(Path(workdir, "tmp"))
        with _unnamed(workdir, {"tests": list(tests), "setup": setup, "entry_point": entry_point}) as tests_fd:
            job = {"program": program, "name": "__main__" if as_main else "solution", "result_fd": result_fd,
                   "tests_fd": tests_fd, "uid": uid, "namespaces": namespaces, "wall_s": self.limits.wall_s,
                   "python_paths": sorted(prefixes, key=len), "cpu_s": self.limits.cpu_s,
                   "memory_mb": self.limits.memory_mb, "processes": self.limits.processes, "disk_mb": self.limits.disk_mb}
            with _unnamed(workdir, job) as job_fd:
                command = [sys.executable, "-I", JAIL, workdir, str(job_fd)]
                if namespaces:
                    user = ["--user", "--map-root-user"] if self.mode == "userns" else []
                    command = ["unshare", *user, "--net", "--pid", "--mount", "--ipc", "--uts", "--fork",
                               "--kill-child", *command]
                return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, pass_fds=(result_fd, lock_fd, tests_fd, job_fd),
                                        env=env, cwd=workdir, start_new_session=True)

    def _collect(self, process, result_fd, started) -> tuple[dict, str]:
        """Read results, stdout and stderr until all close, the deadline passes or output overflows."""
        streams = {"results": b"", "stdout": b"", "stderr": b""}
        caps = {"results": 64 << 20, "stdout": self.limits.output_bytes, "stderr": self.limits.output_bytes}
        selector = selectors.DefaultSelector()
        selector.register(result_fd, selectors.EVENT_READ, "results")
        selector.register(process.stdout, selectors.EVENT_READ, "stdout")
        selector.register(process.stderr, selectors.EVENT_READ, "stderr")
        status = "ok"
        while selector.get_map():
            remaining = self.limits.wall_s - (time.monotonic() - started)
            events = selector.select(timeout=max(remaining, 0)) if remaining > 0 else []
            if not events:
                status = "timeout"
                break
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                streams[key.data] += chunk
                if len(streams[key.data]) > caps[key.data]:
                    streams[key.data] = streams[key.data][:caps[key.data]]
                    status = "output_limit"
            if status == "output_limit":
                break
        selector.close()
        return streams, status


@contextlib.contextmanager
def _unnamed(folder: str, data: dict):
    """An fd, at offset 0, of a file holding `data` as JSON that no path names (O_TMPFILE where the file
    system has it, else created and unlinked at once); closed on leaving."""
    with tempfile.TemporaryFile("w+", dir=folder, encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        f.seek(0)
        yield f.fileno()


def _lock_slot(slot: int) -> int | None:
    """An fd holding slot `slot`'s flock, or None when a live run (its host or its judge) holds it."""
    folder = Path(tempfile.gettempdir(), "r1lab-uid-locks")
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / str(slot), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


@contextlib.contextmanager
def _slot():
    """(slot, lock fd): the smallest slot number no run on this machine holds (an flock on a file per slot,
    so threads and processes alike never share one); as root, the run's uid is UID_BASE + slot."""
    slot, fd = next((slot, fd) for slot in itertools.count() if (fd := _lock_slot(slot)) is not None)
    try:
        yield slot, fd
    finally:
        os.close(fd)            # releases the lock, unless the judge still holds it


def remove_stale(root: str) -> None:
    """Remove the run folders (`r1lab-sandbox-<slot>-*`, ours) in `root` that no live run holds: those of
    hosts killed mid-run, once their judge has ended too (the slot's lock is free again)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        match = re.fullmatch(r"r1lab-sandbox-(\d+)-[a-z0-9_]+", entry.name)
        try:
            ours = match and entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.geteuid()
        except OSError:
            ours = False
        if not ours:
            continue
        fd = _lock_slot(int(match[1]))
        if fd is not None:
            try:
                shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(fd)


def _kill(process: subprocess.Popen, uid: int | None) -> None:
    """Kill the run's process group (and, given its uid, every process of that uid), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                uids = next(line for line in open(f"/proc/{pid}/status") if line.startswith("Uid:")).split()[1:]
                if str(uid) in uids:
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, StopIteration):
                pass
    process.stdout.close()
    process.stderr.close()
    process.wait()


def _result(streams: dict, status: str, seconds: float) -> Result:
    """The judge's reports -> Result. Tests that passed without the entry point ever being called (in
    the reports that arrived) earn nothing: they judged no program."""
    total, seen, passed, errors, done, entry, called = 0, set(), 0, [], False, None, False
    for line in streams["results"].decode(errors="replace").splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:      # the last line, cut by a kill
            continue
        total = message.get("tests", total)
        entry = message.get("entry_point", entry)
        called = called or message.get("called") is True
        done = done or message.get("done", False)
        if "test" in message and message["test"] not in seen:   # only the judge writes here; be strict anyway
            seen.add(message["test"])
            passed += message["passed"] is True
            if not message["passed"]:
                errors.append(f"test {message['test']}: {message['error']}")
    if entry and not called and passed:
        passed = 0
        errors.append(f"the tests never called the entry point {entry!r}, so no test judged the program")
    if status == "ok" and not done:
        status = "error"
    stdout, stderr = (streams[k].decode(errors="replace") for k in ("stdout", "stderr"))
    return Result(min(passed, total), total, status, errors, stdout, stderr, seconds)
