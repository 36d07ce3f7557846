"""Torch's CPU threads, chosen for the cores nobody else is using, and chosen again as that changes.

Why: torch runs each op on an OpenMP team that meets at a barrier after it. When another process holds
one of the cores, the team member sharing that core waits for whole scheduler time slices, and every op
waits for it: on 2 Zen 4 cores a GRPO-like step ran 2.8-3.5x slower beside one competing process (~20x was
reported on an Intel AMX CPU under heavier load, issue 31). With one thread per free core no team member waits
for another process (bench/contention.py: 1.8-2.5x).

How: the other processes' CPU use is the machine's busy time (/proc/stat) minus this process's own
(`time.process_time`, every thread of it), over the interval since the last look. `choose_threads` is
the rule; `ThreadGovernor` applies it once at start and then between training steps (`end_step`).
A fixed count (`--threads N`, which the CLI passes as R1LAB_THREADS) turns the choice off; a launcher's or
the user's OMP_NUM_THREADS is the most it ever picks.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from r1lab import R1labError

ENV = "R1LAB_THREADS"


def cores() -> int:
    """The cores this process may run on (its affinity mask, as a container or `taskset` sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_busy_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """CPU-seconds all processes have spent busy since boot (the `cpu` line of /proc/stat, without idle
    and iowait); None where there is no /proc (macOS), where the governor keeps torch's own choice."""
    try:
        fields = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10])           # guest time is counted in user time as well
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def choose_threads(cores: int, others: float, ceiling: int | None = None) -> int:
    """Threads for `cores` cores when other processes keep `others` cores busy (a CPU-seconds per second
    average): one per core they leave free, at least 1, at most `ceiling` (OMP_NUM_THREADS)."""
    free = cores - int(others + 0.5)            # 0.5 of a core busy or more takes that core
    return max(1, min(free, ceiling or cores, cores))


def fixed_threads() -> int | None:
    """The count the user fixed (--threads, as R1LAB_THREADS), or None; a bad value is an error naming it."""
    text = os.environ.get(ENV)
    if text in (None, ""):
        return None
    if not text.isdigit() or int(text) < 1:
        raise R1labError(f"{ENV} (--threads) must be a whole number >= 1, got {text!r}")
    return int(text)


class ThreadGovernor:
    """Sets torch's thread count for the load it sees: `adjust()` between steps, over the interval since
    the last call (the first over `window` seconds). `threads` and `others` are the last choice and the
    load it was made for, for the step metrics and `r1lab doctor`."""

    def __init__(self, window: float = 0.1):
        self.fixed = fixed_threads()
        ceiling = os.environ.get("OMP_NUM_THREADS", "")
        self.ceiling = int(ceiling) if ceiling.isdigit() and int(ceiling) > 0 else None
        self.cores = cores()
        self.others = 0.0
        self.threads = torch.get_num_threads()
        self._last = self._clock()
        if self.fixed is None and self._last is not None and window > 0:
            time.sleep(window)
        self.adjust()

    @staticmethod
    def _clock() -> tuple[float, float, float] | None:
        busy = machine_busy_seconds()
        return None if busy is None else (time.monotonic(), busy, time.process_time())

    def adjust(self) -> int:
        """Choose and set the thread count; the count set."""
        if self.fixed is not None:
            self.threads = self.fixed
        else:
            now = self._clock()
            if now is None or self._last is None:
                return self.threads
            wall, busy, own = (a - b for a, b in zip(now, self._last))
            self._last = now
            if wall <= 0:
                return self.threads
            self.others = max(0.0, (busy - own) / wall)
            self.threads = choose_threads(self.cores, self.others, self.ceiling)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.threads

    def describe(self) -> str:
        if self.fixed is not None:
            return f"threads: {self.threads} (fixed by --threads / {ENV})"
        return (f"threads: {self.threads} of {self.cores} cores (other processes keep {self.others:.1f} cores busy; "
                "r1lab uses the free ones and chooses again between steps; --threads N fixes it)")
