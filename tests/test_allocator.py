"""r1lab/allocator.py: glibc's malloc told to keep freed memory (what it sets, when it does not), and the effect
in a fresh process: a large block comes from the heap, not from mmap, and stays after it is freed."""
import subprocess
import sys

import pytest

from r1lab import R1labError
from r1lab.allocator import LARGEST, M_MMAP_MAX, M_TOP_PAD, M_TRIM_THRESHOLD, glibc, keep_freed_memory


class FakeLibc:
    def __init__(self):
        self.calls = []
        self.mallopt = self

    def __call__(self, option, value):
        self.calls.append((option, value))
        return 1


def test_it_turns_off_mmap_and_trimming(monkeypatch):
    monkeypatch.delenv("R1LAB_MALLOC", raising=False)
    libc = FakeLibc()
    assert keep_freed_memory(libc)
    assert libc.calls == [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, LARGEST), (M_TOP_PAD, LARGEST)]


def test_system_leaves_malloc_alone_and_a_bad_value_is_named(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setenv("R1LAB_MALLOC", "system")
    assert not keep_freed_memory(libc) and libc.calls == []
    monkeypatch.setenv("R1LAB_MALLOC", "jemalloc")
    with pytest.raises(R1labError, match="R1LAB_MALLOC must be 'keep'.*'jemalloc'"):
        keep_freed_memory(libc)


PROBE = """
import ctypes, sys
from r1lab.allocator import glibc, keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = glibc()
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
libc.malloc.argtypes = [ctypes.c_size_t]
kept = keep_freed_memory()
size = 256 * 2 ** 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
mapped = libc.mallinfo2().hblkhd
libc.free(block)
print(kept, mapped >= size, libc.mallinfo2().arena >= size)
"""


@pytest.mark.skipif(glibc() is None or not hasattr(glibc(), "mallinfo2"), reason="glibc >= 2.33 only")
@pytest.mark.parametrize("choice, expected", [("keep", "True False True"), ("system", "False True False")])
def test_a_freed_block_stays_in_the_heap(choice, expected):
    env = {"R1LAB_MALLOC": choice, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == expected.split()        # kept; the block was mmap'd; the heap still holds it
