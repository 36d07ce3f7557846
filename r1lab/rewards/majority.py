"""Majority vote: a reward without ground truth (the talk: "can we learn from competition if we do
not have any ground truth?"). Each member of a group scores 1 if its answer agrees with the group's
majority answer (a pseudo-label; answers grouped by math-verify equivalence, ties to the first to
appear, as cons@k), else 0. A member without an answer scores 0. Needs no `answer` on the problem.
"""
from __future__ import annotations

from r1lab.metrics import majority
from r1lab.rewards.accuracy import equivalent
from r1lab.types import Completion, Problem


def majority_reward(group: list[Completion], problem: Problem) -> list[float]:
    answers = [c.answer for c in group]
    winner = majority(answers, equivalent)
    if winner is None:
        return [0.0] * len(group)
    label = answers[winner]
    return [float(a is not None and (a.strip() == label.strip() or equivalent(a, label))) for a in answers]
