"""Code rewards: the program (the parsed answer) run against the problem's tests in `r1lab.sandbox`.

- `code`: the fraction of the problem's tests passed (paper: "verify with compiler (code)");
- `code_strict`: 1 only if every test passes, else 0.
Both never raise: no program, a crash or a hang (stopped at the sandbox's wall clock) score 0, and so
do tests that never call the problem's entry point (they judged no program; see `Sandbox.run`). A
group's programs run in parallel, up to the sandbox's worker count.
"""
from __future__ import annotations

import functools

from r1lab import R1labError
from r1lab.sandbox import Limits, Result, Sandbox
from r1lab.templates import extract_program
from r1lab.types import Completion, Problem


@functools.cache
def sandbox() -> Sandbox:
    return Sandbox(Limits(wall_s=10, cpu_s=5))


def job(problem: Problem, answer: str | None) -> dict:
    spec = problem.meta.get("code")
    if spec is None:
        raise R1labError(f"problem {problem.id}: the code reward needs a code task (humaneval, or jsonl rows with tests)")
    program = spec["prefix"] + "\n" + extract_program(answer or "")
    return {"program": program, "tests": spec["tests"], "setup": spec["setup"], "entry_point": spec["entry_point"] or None}


def run_tests(problem: Problem, answer: str | None) -> Result:
    return sandbox().run(**job(problem, answer))


def _scores(group: list[Completion], problem: Problem) -> list[Result | None]:
    jobs = [job(problem, c.answer) for c in group]
    has_program = [bool(c.answer and c.answer.strip()) for c in group]
    results = iter(sandbox().run_many([j for j, ok in zip(jobs, has_program) if ok]))
    return [next(results) if ok else None for ok in has_program]


def code_reward(group: list[Completion], problem: Problem) -> list[float]:
    return [r.fraction if r else 0.0 for r in _scores(group, problem)]


def code_strict_reward(group: list[Completion], problem: Problem) -> list[float]:
    return [1.0 if r and r.fraction == 1.0 else 0.0 for r in _scores(group, problem)]
