"""Pure estimators for the paper's evaluation table.

- pass@1 (paper section 3): the mean correctness of k samples per problem, averaged over problems.
  Correctness is 0 or 1 here, as in pass@k and cons@k (a task's partial credit is not correctness).
- pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021) from n samples, c correct.
- cons@k: majority vote over the k parsed answers. Answers are grouped by the same equivalence the
  accuracy reward uses (math-verify), samples without an answer do not vote, and a tie goes to the
  answer that appeared first among the samples (a fixed, order-based rule; samples are in seed order).
- reflection: whether a text holds one of REFLECTION_MARKERS (the "aha moment" rate's numerator).
- bootstrap confidence intervals over problems (percentile method, seeded).
- cluster bootstrap over (seed, problem) tables: resample the seeds, then the problems within each
  drawn seed (two-stage, as for clustered data), so the interval holds the between-seed variance
  that pooling (seed, problem) pairs as independent leaves out; the paired variant resamples the
  per-(seed, problem) differences of two models evaluated on the same problems and sampling seeds.
"""
from __future__ import annotations

import random
import re
from math import comb
from typing import Callable, Sequence


def pass_at_1(correct: Sequence[Sequence[float]]) -> float:
    """correct[i][j]: 1 if sample j of problem i is correct, else 0."""
    return sum(sum(row) / len(row) for row in correct) / len(correct)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if k > n:
        raise ValueError(f"k ({k}) cannot exceed n ({n})")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def majority(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> int | None:
    """Index of a representative of the most common answer (ties: first to appear); None if nobody answered."""
    clusters: list[list[int]] = []          # indices of equivalent answers, in order of first appearance
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for cluster in clusters:
            first = answers[cluster[0]]
            if answer.strip() == first.strip() or same(answer, first):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None
    best = max(len(c) for c in clusters)
    return next(c[0] for c in clusters if len(c) == best)


def cons_at_k(answers: Sequence[str | None], correct: Sequence[float], same: Callable[[str, str], bool]) -> float:
    """1 if the majority answer of one problem's samples is correct (its representative is), else 0."""
    winner = majority(answers, same)
    return 0.0 if winner is None else float(correct[winner])


def _percentiles(means: list[float], level: float) -> tuple[float, float]:
    means, tail = sorted(means), (1 - level) / 2
    return means[int(tail * len(means))], means[min(len(means) - 1, int((1 - tail) * len(means)))]


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem values."""
    rng = random.Random(seed)
    n = len(values)
    return _percentiles([sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)], level)


def cluster_bootstrap_ci(values: Sequence[Sequence[float]], resamples: int = 1000, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of values[s][p] (seed s, problem p): each resample draws as
    many seeds as there are, with replacement, then each drawn seed's problems with replacement; its
    statistic is the mean of the drawn seeds' means (every seed weighs the same)."""
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        drawn = [values[rng.randrange(len(values))] for _ in values]
        means.append(sum(sum(rows[rng.randrange(len(rows))] for _ in rows) / len(rows) for rows in drawn) / len(drawn))
    return _percentiles(means, level)


def paired_cluster_bootstrap_ci(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], resamples: int = 1000,
                                level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """`cluster_bootstrap_ci` of the differences a[s][p] - b[s][p]: two models on the same problems under the
    same seeds, so each problem's difficulty cancels out of the interval."""
    if [len(rows) for rows in a] != [len(rows) for rows in b]:
        raise ValueError("paired values need the same seeds and problems on both sides")
    return cluster_bootstrap_ci([[x - y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)], resamples, level, seed)


REFLECTION_MARKERS = ("wait", "let me check", "let me verify", "double-check", "double check", "re-evaluate",
                      "reevaluate", "let's verify", "let me re-check")


def reflects(text: str, markers=REFLECTION_MARKERS) -> bool:
    """Whether a text reflects (the paper's "aha moment"): one of the markers as whole words, any case."""
    return any(re.search(rf"\b{re.escape(m)}\b", text, re.IGNORECASE) for m in markers)
