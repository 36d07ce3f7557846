"""Accuracy: is the parsed answer equal to the ground truth?

Order: the task's own scorer (reasoning-gym's `score_answer`) where the problem has one; else
math-verify (bare numbers, `\\boxed{}`, fractions, LaTeX); else a numeric comparison with a relative
tolerance of 1e-6 (e.g. "1,000" vs "1000.0"). Only the answer part counts: a correct number in the
reasoning earns nothing. Answers over MAX_ANSWER_CHARS are not judged (bounded time).
"""
from __future__ import annotations

import re

from r1lab.tasks import task_score
from r1lab.types import Completion, Problem

MAX_ANSWER_CHARS = 1000
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")


def as_number(text: str) -> float | None:
    """The value of a text that is just a number (commas as thousands separators allowed)."""
    text = text.strip().strip("$").strip()
    return float(text.replace(",", "")) if _NUMBER.fullmatch(text) else None


def numbers_close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(b))


def equivalent(answer: str, truth: str) -> bool:
    """Math equivalence of two answer texts (math-verify, then the numeric fallback)."""
    from math_verify import parse, verify

    if len(answer) > MAX_ANSWER_CHARS:
        return False
    if answer.strip() == truth.strip():
        return True
    if verify(parse(truth), parse(answer)):
        return True
    a, b = as_number(answer), as_number(truth)
    return a is not None and b is not None and numbers_close(a, b)


def accuracy(completion: Completion, problem: Problem) -> float:
    if completion.answer is None:
        return 0.0
    own = task_score(problem, completion.answer)
    if own is not None:
        return own
    if problem.answer is None:
        return 0.0
    return 1.0 if equivalent(completion.answer, problem.answer) else 0.0
