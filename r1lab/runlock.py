"""One writer per run folder, and launched workers that die with their launcher.

`lock_folder(folder)` takes an advisory lock (flock) on `<folder>/.lock` and writes its holder (PID,
host, start time) there. A second process that asks for the same folder gets an error naming that
holder instead of interleaving checkpoints and metrics with it. The kernel drops the lock when its
process ends, however it ends (kill -9 included), so there is no stale lock to clear by hand. Within one
process the lock is taken once and kept until the process ends: a recipe's stages and a test that
trains and then resumes in one process pass through it.

`die_with_parent()` (Linux) asks the kernel to SIGKILL this process when its parent dies: the launcher
(`r1lab train --num-processes N`) passes it to `accelerate launch`, and every worker calls it at start,
so killing the launcher leaves no orphan training on.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path

from r1lab import R1labError

_HELD: dict[Path, int] = {}          # folder -> the open file descriptor holding its lock


def lock_folder(folder: str | Path) -> None:
    """Hold `folder`'s writer lock for the rest of this process; an error naming the holder if another
    process has it. Creates the folder."""
    import fcntl

    folder = Path(folder).resolve()
    if folder in _HELD:
        try:
            if os.stat(folder / ".lock").st_ino == os.fstat(_HELD[folder]).st_ino:
                return                   # held here already
        except FileNotFoundError:
            pass
        os.close(_HELD.pop(folder))      # the folder was removed and made again: lock the new one
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "a process that has not said who it is"
        os.close(fd)
        raise R1labError(f"{folder} is in use by another r1lab run ({holder}); wait for it to end or stop it, "
                         "or choose another output folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    _HELD[folder] = fd


def release_folder(folder: str | Path) -> None:
    """Give `folder`'s lock back before this process ends (nothing happens if it is not held here)."""
    fd = _HELD.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)                 # closing the last descriptor drops the flock


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG; Linux only,
    elsewhere nothing). If the parent died before the request took hold, exit now. Safe to call in a
    subprocess's preexec_fn."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)      # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
