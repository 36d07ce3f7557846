"""Accuracy: is the parsed answer equal to the ground truth?

Order: the task's own scorer (reasoning-gym's `score_answer`) where the problem has one; else
math-verify (bare numbers, `\\boxed{}`, fractions, LaTeX); else a numeric comparison with a relative
tolerance of 1e-6 (e.g. "1,000" vs "1000.0"). Only the answer part counts: a correct number in the
reasoning earns nothing. Where the truth is a number, an answer that is still a computation ("3 + 1 + 19"
for 23, `still_a_computation`) is wrong: math-verify evaluates it, and GRPO on 9-digit products learned
to answer with the question's own product (found in recipes/tools.yaml's first run). Answers over MAX_ANSWER_CHARS are not judged (bounded time).

`accuracy` is 1 or 0: an answer is correct only with full marks (`is_correct`, the same notion evaluation
uses). A task's partial credit (reasoning-gym gives len(truth)/len(answer) when the truth is inside the
answer, which rewards answers like "0 1 2 ... 9") is the separate reward `accuracy_partial`.
"""
from __future__ import annotations

import re

from r1lab.types import Completion, Problem

MAX_ANSWER_CHARS = 1000
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_OPERATION = re.compile(r"\d\s*(?:[-+*/×÷^]|\\times|\\cdot|\\div)\s*[-+]?[\d(\\]")   # a number, an operator, a number
_FRACTION = re.compile(r"[-+]?\d+\s*/\s*\d+")


def task_score(problem: Problem, answer: str) -> float | None:
    """A task's own score for this answer (reasoning-gym's `score_answer`, which can give partial credit; a
    code problem's tests, all passing = 1; an AgentJo call's reply parsed complete, r1lab/rewards/agentjo.py),
    or None to use math-verify."""
    if "agentjo" in problem.meta:
        from r1lab.rewards.agentjo import agentjo_score
        return agentjo_score(problem, answer)
    if "code" in problem.meta:
        from r1lab.rewards.code import run_tests
        return 1.0 if run_tests(problem, answer).fraction == 1.0 else 0.0
    if "reasoning_gym" in problem.meta:
        from r1lab.tasks.gym import score_gym
        return score_gym(problem, answer)
    return None


def still_a_computation(answer: str) -> bool:
    """Whether an answer still asks for arithmetic ("351137028 * 991808147", "3 + 1 + 19", "2^{10}") instead
    of giving its result: math-verify evaluates such an answer and would call it equal to the result, so a
    model could earn the reward by copying the question. A plain fraction ("3/4") is a result."""
    text = answer.strip().strip("$").strip()
    return bool(_OPERATION.search(text)) and not _FRACTION.fullmatch(text)


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
    if as_number(truth) is not None and still_a_computation(answer):
        return False                             # the truth is a number: the answer must be one, not a sum to do
    if verify(parse(truth), parse(answer)):
        return True
    a, b = as_number(answer), as_number(truth)
    return a is not None and b is not None and numbers_close(a, b)


def is_correct(score: float) -> bool:
    """Whether a task score means a correct answer: full marks, for rewards and evaluation alike."""
    return score >= 1.0


def accuracy_partial(completion: Completion, problem: Problem) -> float:
    """The task's own score, partial credit included, where it has one; else 1 or 0 as `accuracy`."""
    if completion.answer is None:
        return 0.0
    own = task_score(problem, completion.answer)
    if own is not None:
        return own
    if problem.answer is None:
        return 0.0
    return 1.0 if equivalent(completion.answer, problem.answer) else 0.0


def accuracy(completion: Completion, problem: Problem) -> float:
    return float(is_correct(accuracy_partial(completion, problem)))
