"""What every task shares: the Task protocol and the leak-free split (a hash of the text decides train or test,
so the same question never lands in both)."""
from __future__ import annotations

import hashlib
from typing import Protocol

from r1lab import R1labError
from r1lab.types import Problem


class Task(Protocol):
    name: str

    def problems(self, split: str, n: int, seed: int) -> list[Problem]: ...


def split_of(text: str, test_percent: int) -> str:
    """"test" for test_percent of all texts, by a hash of the text, else "train"."""
    bucket = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100
    return "test" if bucket < test_percent else "train"


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise R1labError(f"unknown split {split!r}; expected 'train' or 'test'")
