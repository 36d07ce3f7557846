"""Tasks give Problems. A spec names one: `arithmetic`, `reasoning-gym:<dataset>`, `jsonl:<path>`, `humaneval`, `agentjo`,
`hf:<hub id or path>[:<config>]` (Hugging Face datasets, tasks/hf.py).

    from r1lab.tasks import get_task
    task = get_task("arithmetic", operands=3, high=30)
    task.problems("train", n=100, seed=0)

A task is any object with `name` and `problems(split, n, seed) -> list[Problem]`; splits are
"train" and "test". Options are the task class's fields; an unknown one is an error naming the valid ones.
A task from `get_task` never returns an empty split: that is an error naming the task and split.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from r1lab import R1labError
from r1lab.tasks.base import Task, check_split, split_of
from r1lab.types import Problem

__all__ = ["Task", "get_task", "check_split", "split_of"]


def get_task(spec: str, **options) -> Task:
    from r1lab.tasks.agentjo import AgentJo
    from r1lab.tasks.arithmetic import Arithmetic
    from r1lab.tasks.code import HumanEval
    from r1lab.tasks.gym import ReasoningGym
    from r1lab.tasks.hf import HFDataset
    from r1lab.tasks.jsonl import JsonlTask

    kind, _, argument = spec.partition(":")
    if kind == "arithmetic" and not argument:
        cls, positional = Arithmetic, {}
    elif kind == "humaneval" and not argument:
        cls, positional = HumanEval, {}
    elif kind == "agentjo" and not argument:
        cls, positional = AgentJo, {}
    elif kind == "reasoning-gym" and argument:
        cls, positional = ReasoningGym, {"dataset": argument}
    elif kind == "jsonl" and argument:
        cls, positional = JsonlTask, {"path": argument}
    elif kind == "hf" and argument:
        cls, positional = HFDataset, {"dataset": argument}
    else:
        raise R1labError(f"unknown task {spec!r}; expected 'arithmetic', 'humaneval', 'agentjo', 'reasoning-gym:<dataset>', "
                         "'jsonl:<path>' or 'hf:<hub id or path>[:<config>]'")
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in positional]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise R1labError(f"unknown option(s) {unknown} for task {spec!r}; valid options: {', '.join(valid)}")
    return NonEmpty(cls(**positional, **options))


@dataclass(frozen=True)
class NonEmpty:
    """What get_task returns: the task itself (its fields and methods are this object's), except that a split
    with no problems (an empty file; rows that all hash to the other split) is an error naming the task and
    split here, instead of a ZeroDivisionError or IndexError in whatever asked for them."""
    task: Task

    def __getattr__(self, name: str):
        if name.startswith("__"):          # copy and pickle look these up before `task` is set
            raise AttributeError(name)
        return getattr(self.task, name)

    def problems(self, split: str, *args, **kwargs) -> list[Problem]:
        problems = self.task.problems(split, *args, **kwargs)
        if not problems:
            raise R1labError(f"task {self.task.name!r} has no {split} problems; is its data empty, or does its "
                             "test_percent leave this split without rows?")
        return problems
