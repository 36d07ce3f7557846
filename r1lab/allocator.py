"""Freed memory kept for the next training step, instead of handed back to the OS and faulted in again.

Why: glibc's malloc serves a large allocation (above its mmap threshold: 128 KiB, rising to at most 32 MiB)
with a fresh `mmap` and hands it back with `munmap` when freed, and trims the heap's free top back to the
OS. A training step allocates and frees GBs of activations and gradients, so every step got them as new
pages: a page fault and a kernel-zeroed page for every 4 KiB. On 2 Zen 4 cores a GRPO step of SmolLM2-135M
(small setting, every row, fp32) spent 16.5 s of 83 CPU-seconds in the kernel; with freed memory kept,
10.6 s, and its training pass ran 3.7 s instead of 4.4-4.9 s at the same peak memory (docs/speed.md).
PyTorch's CPU tuning guide gets this from jemalloc or tcmalloc by LD_PRELOAD; this gets it from glibc itself.

How: `mallopt(M_MMAP_MAX, 0)` (no allocation by mmap: all from the heap), and the heap's trim threshold and
top pad at their largest (2 GiB: the heap is trimmed only when more than 2 GiB at its top are free, and then
keeps 2 GiB), once, when a training stage starts (`Parallel`). The cost: the process keeps its peak heap
until it exits, and the peak can rise where later blocks do not fit the holes earlier ones left. With the LM
head's gradient written once a pass (algorithms/head_logprobs.py) it did not in the GRPO steps measured:
SmolLM2-135M small 3.9 GB either way; gemma3-270m (262k-row head) 6.20-6.60 GB against 6.71 without, at 8.3-8.7
against 12.0 s a step (before that change its per-chunk 671 MB gradients fragmented the heap: 7.91 against 6.75 GB).
Only with glibc (Linux); elsewhere, or with R1LAB_MALLOC=system (the way back when memory is tight), malloc is
left as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

from r1lab import R1labError

ENV = "R1LAB_MALLOC"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4     # glibc's malloc.h
LARGEST = 2 ** 31 - 1                                     # mallopt takes an int


def glibc():
    """The C library when it is glibc (it has gnu_get_libc_version), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory(libc=None) -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (see the module docstring); whether it did.
    R1LAB_MALLOC=system (or anything but `keep`, the default) leaves malloc alone."""
    choice = os.environ.get(ENV, "keep")
    if choice not in ("keep", "system"):
        raise R1labError(f"{ENV} must be 'keep' (the default: freed memory kept for reuse) or 'system' (malloc as "
                         f"it is), got {choice!r}")
    libc = libc or glibc()
    if choice == "system" or libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, LARGEST), (M_TOP_PAD, LARGEST))
    return all([bool(libc.mallopt(option, value)) for option, value in settings])      # mallopt: 1 on success
