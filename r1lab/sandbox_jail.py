"""The inside of r1lab's sandbox: started by `r1lab.sandbox` as `python -I sandbox_jail.py WORKDIR JOB_FD`.

Standard library only. This process (the *judge*) is trusted: it is the only one that reports
results. It never runs untrusted code itself:

1. reads the job (program, limits) from JOB_FD and keeps the tests' fd for later: both are files no
   path names, so nothing on disk holds the program or the tests, even if the host is killed;
2. with namespaces (started under `unshare`): builds a minimal root - a read-only tmpfs holding the
   system and Python directories bound read-only and nosuid, /dev/{null,zero,random,urandom}, /proc
   of the new pid namespace, and a size-capped writable tmpfs at /tmp - then chroots into it;
3. drops privileges: to the job's uid when it started as real root, else all capabilities (user
   namespace); then no_new_privs and not dumpable (so the program cannot ptrace it or open its fds);
4. forks the *program* process, which sets its rlimits, closes every fd of the judge's, runs the
   untrusted program and then answers calls: (function name, arguments) -> return value;
5. runs each test statement here, with stubs in place of the program's functions. Only plain data
   (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, exact types) crosses back, so
   the program cannot make a test pass by exiting early, by patching builtins or assertions (they
   live in this process), or by returning an object whose `__eq__` is always true.

Results go to the result fd as JSON lines: {"tests": n, "entry_point": name or null}, then
{"test": i, "passed": bool, "error": str, "called": bool (the entry point has been called)}, then {"done": true}.
"""
import ast
import builtins
import ctypes
import json
import math
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
MAX_MESSAGE = 16 << 20
SYSTEM_PATHS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin", "/etc/ld.so.cache",
                "/etc/localtime", "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None) -> None:
    encode = lambda s: None if s is None else s.encode()
    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def bind_read_only(path: str, root: str) -> None:
    """Bind `path` at the same place under `root`, read-only and nosuid (symlinks are copied)."""
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(path, target, None, MS_BIND)
    keep = os.statvfs(path).f_flag & ~MS_RDONLY   # flags a user namespace may not clear (ST_* == MS_*)
    mount(None, target, None, keep | MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def build_root(root: str, job: dict) -> None:
    """The minimal file system, at `root` (the work dir, now covered), then chroot into it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for name, mode in (("proc", 0o555), ("tmp", 0o1777), ("etc", 0o755)):
        os.mkdir(root + "/" + name, mode)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={job['disk_mb']}m,mode=1777")
    paths = [p for p in [*SYSTEM_PATHS, *job["python_paths"]] if os.path.lexists(p)]
    paths = [p for i, p in enumerate(paths) if not any(p == b or p.startswith(b.rstrip("/") + "/") for b in paths[:i])]
    # a Python under /tmp: its parent folders on a tmpfs of their own, made read-only (and, as a mount
    # point, not renamable), so the program cannot swap the trusted judge's modules
    shields = sorted({"/".join(p.split("/")[:3]) for p in paths if p.startswith("/tmp/")})
    for shield in shields:
        os.makedirs(root + shield, exist_ok=True)
        mount("tmpfs", root + shield, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for path in paths:
        bind_read_only(path, root)
    for shield in shields:
        mount(None, root + shield, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    uid = job["uid"] if job["uid"] is not None else 0
    with open(root + "/etc/passwd", "w") as f:
        f.write(f"sandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/false\n")
    with open(root + "/etc/group", "w") as f:
        f.write(f"sandbox:x:{uid}:\n")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)


def drop_privileges(uid: int | None) -> None:
    """To `uid` (real root), else every capability (user namespace); then no_new_privs, not dumpable."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif os.geteuid() == 0:
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)       # _LINUX_CAPABILITY_VERSION_3, this process
        _check(_libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")


# --- plain data across the process boundary (exact types only: no subclass, no custom __eq__) ---

def encode(value, depth: int = 0):
    kind = type(value)
    if depth > 200:
        raise ValueError("data nested too deeply")
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is complex:
        return {"complex": [repr(value.real), repr(value.imag)]}
    if kind is bytes:
        return {"bytes": value.hex()}
    raise TypeError(f"a {kind.__name__} cannot leave the sandbox; only plain data "
                    "(None, bool, int, float, complex, str, bytes, list, tuple, dict, set) can")


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    (kind, data), = value.items()
    if kind == "float":
        return float(data)
    if kind == "complex":
        return complex(float(data[0]), float(data[1]))
    if kind == "bytes":
        return bytes.fromhex(data)
    if kind == "dict":
        return {decode(k): decode(v) for k, v in data}
    return {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](decode(v) for v in data)


def send(stream, message: dict) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def receive(stream) -> dict:
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        raise EOFError
    if len(line) > MAX_MESSAGE:
        raise ValueError(f"message over {MAX_MESSAGE} bytes")
    return json.loads(line)


# --- the program process ---

def serve_program(job: dict, requests, replies) -> None:
    """Set the limits, run the untrusted program, then answer calls until the judge hangs up."""
    limits = [(resource.RLIMIT_CPU, job["cpu_s"]), (resource.RLIMIT_AS, job["memory_mb"] << 20),
              (resource.RLIMIT_FSIZE, job["disk_mb"] << 20), (resource.RLIMIT_NOFILE, 256),
              (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, job["processes"])]
    for limit, value in limits:
        resource.setrlimit(limit, (value, value))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # dies with the judge, even without a pid namespace
    low, high = sorted((requests.fileno(), replies.fileno()))
    os.closerange(3, low)                                     # every fd of the judge's (results, tests), /proc or not
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)
    namespace = {"__name__": job.get("name", "solution"), "__builtins__": __builtins__}
    try:
        exec(compile(job["program"], "solution.py", "exec"), namespace)
    except BaseException as e:   # noqa: BLE001 - anything the program raises is its failure
        send(replies, {"error": f"the program failed: {type(e).__name__}: {e}"[:2000]})
        return
    send(replies, {"functions": [k for k, v in namespace.items() if callable(v) and not k.startswith("__")]})
    while True:
        try:
            request = receive(requests)
        except EOFError:
            return
        try:
            result = namespace[request["call"]](*decode(request["args"]), **decode(request.get("kwargs", {"dict": []})))
            reply = {"value": encode(result)}
        except BaseException as e:  # noqa: BLE001
            reply = {"error": f"{type(e).__name__}: {e}"[:2000], "type": type(e).__name__}
        send(replies, reply)


# --- the judge ---

SETUP = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign,
         ast.AnnAssign, ast.AugAssign)


def asserts(node: ast.AST) -> bool:
    """An `assert` that can fail (not HumanEval's `assert True` filler), or a `raise`."""
    if isinstance(node, ast.Assert):
        return not (isinstance(node.test, ast.Constant) and node.test.value)
    return isinstance(node, ast.Raise)


def test_statements(tests: list[str]) -> list[tuple[str, bool]]:
    """(statement source, counts as a test): each test text is split into top-level statements. A test
    is one whose execution can fail: it asserts, raises or calls (`check(f)`, `assert f(1) == 2`, a loop
    of those). Definitions (def, class, import, assignment) are setup: they run but never count, since
    defining HumanEval's `check(candidate)` cannot fail. The rest (`pass`, `assert True`) only run."""
    statements = []
    for text in tests:
        for node in ast.parse(text).body:
            counts = not isinstance(node, SETUP) and any(isinstance(n, ast.Call) or asserts(n) for n in ast.walk(node))
            statements.append((ast.unparse(node), counts))
    return statements


def start_program(job: dict):
    """Fork the program process; return the judge's (requests, replies) streams to it."""
    to_program_r, to_program_w = os.pipe()
    from_program_r, from_program_w = os.pipe()
    if os.fork() == 0:
        os.close(to_program_w)
        os.close(from_program_r)
        try:
            serve_program(job, os.fdopen(to_program_r), os.fdopen(from_program_w, "w"))
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:   # noqa: BLE001 - the program may have closed or replaced them
                    pass
            os._exit(0)
    os.close(to_program_r)
    os.close(from_program_w)
    return os.fdopen(to_program_w, "w"), os.fdopen(from_program_r)


def judge(tests: dict, requests, replies, results) -> None:
    """Run the tests against stubs of the program's functions. With an entry point, each report says
    whether it has been called yet ("called"); the host zeroes the passes of a run that never called
    it, since such tests (`def check(candidate): assert 1 == 1`) cannot tell one program from another.
    A program that does not define the entry point fails every test."""
    statements = test_statements(tests["tests"])
    entry = tests.get("entry_point") or None
    send(results, {"tests": sum(counts for _, counts in statements), "entry_point": entry})
    try:
        hello = receive(replies)
    except (EOFError, ValueError):
        hello = {"error": "the program exited before its functions could be called"}
    if entry and "error" not in hello and entry not in hello.get("functions", []):
        hello = {"error": f"the program defines no function {entry!r} (the entry point)"}
    called = set()                          # names of the program's functions the tests called

    def stub(name):
        def call(*args, **kwargs):
            called.add(name)
            send(requests, {"call": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
            reply = receive(replies)
            if "value" in reply and "error" not in reply:
                return decode(reply["value"])
            kind = getattr(builtins, str(reply.get("type")), None)     # a builtin exception keeps its type
            kind = kind if isinstance(kind, type) and issubclass(kind, Exception) else RuntimeError
            raise kind(f"{name} raised {reply.get('error', 'nothing: the reply was not a return value')}")
        return call

    namespace = {"__name__": "__main__"}     # tests written as a script (`if __name__ == "__main__": check(f)`) run
    exec(compile(tests.get("setup") or "", "setup", "exec"), namespace)
    for name in hello.get("functions", []):
        if isinstance(name, str) and name not in vars(builtins):    # a program's `abs` must not replace the tests' abs
            namespace.setdefault(name, stub(name))
    if tests.get("entry_point"):
        namespace[tests["entry_point"]] = namespace["candidate"] = stub(tests["entry_point"])
    index = 0
    for source, counts in statements:
        try:
            if "error" in hello:
                raise RuntimeError(hello["error"])
            exec(compile(source, f"test {index}", "exec"), namespace)
            passed, error = True, None
        except EOFError:
            passed, error = False, "the program process ended"
        except BaseException as e:   # noqa: BLE001
            passed, error = False, f"{type(e).__name__}: {e}"[:1000]
        if counts:
            send(results, {"test": index, "passed": passed, "error": error, "called": entry in called})
            index += 1
    send(results, {"done": True})


def main(workdir: str, job_fd: int) -> None:
    with os.fdopen(job_fd, encoding="utf-8") as f:
        job = json.load(f)
    tests_file = os.fdopen(job["tests_fd"], encoding="utf-8")
    results = os.fdopen(job["result_fd"], "w")
    if job["namespaces"]:
        build_root(workdir, job)
        os.chdir("/tmp")
    else:
        os.chdir(os.path.join(workdir, "tmp"))
    drop_privileges(job["uid"])
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))     # ends the run (and its pid namespace) if the host is gone
    signal.alarm(int(job["wall_s"]) + 5)
    requests, replies = start_program(job)   # closes the tests and results fds before the program runs
    tests = json.load(tests_file)            # read only now: the program's memory never held the tests
    tests_file.close()
    judge(tests, requests, replies, results)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
