"""Rule-based rewards: pure functions `fn(completion, problem) -> float`, combined by a weighted sum.

    from r1lab.rewards import parse_rewards, score
    weights = parse_rewards("accuracy,format=0.5")          # {"accuracy": 1.0, "format": 0.5}
    total, parts, failures = score(weights, completions, problems)

Extraction (the template's parse, done once when a completion is made) is separate from judging
(the functions here). A reward that raises scores 0 and is counted in `failures`: one bad sample
must never stop a training run.
"""
from __future__ import annotations

import math
from typing import Callable

from r1lab import R1labError
from r1lab.schema import reward_weights
from r1lab.rewards.accuracy import accuracy, accuracy_partial
from r1lab.rewards.agentjo import agentjo_format
from r1lab.rewards.code import code_reward, code_strict_reward
from r1lab.rewards.format import format_partial, format_strict
from r1lab.rewards.language import language_en, language_zh
from r1lab.rewards.majority import majority_reward
from r1lab.types import Completion, Problem

RewardFn = Callable[[Completion, Problem], float]

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,            # 1 if the parsed answer is right (task scorer, math-verify, numeric tolerance), else 0
    "accuracy_partial": accuracy_partial,   # as accuracy, with a task's partial credit (reasoning-gym's score_answer)
    "format": format_strict,         # 1 for the template's exact structure, else 0
    "format_partial": format_partial,  # as format, with partial credit for each well-placed tag
    "language": language_en,         # share of English words in the reasoning (paper section 2.3.2)
    "language_zh": language_zh,      # share of Chinese words in the reasoning
    "agentjo_format": agentjo_format,  # 1 if AgentJo parses the reply into the requested keys and types (task agentjo)
}
GroupRewardFn = Callable[[list[Completion], Problem], list[float]]
GROUP_REWARDS: dict[str, GroupRewardFn] = {
    "majority": majority_reward,     # agreement with the group's majority answer (no ground truth needed)
    "code": code_reward,             # fraction of the problem's tests the program passes (sandboxed, in parallel)
    "code_strict": code_strict_reward,   # 1 if the program passes every test, else 0
}


def import_reward(name: str) -> None:
    """Register a user reward named 'package.module:function' (fn(completion, problem) -> float)."""
    import importlib

    module_name, _, function = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        raise R1labError(f"reward {name!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise R1labError(f"reward {name!r} is not a function")
    REWARDS[name] = fn


def parse_rewards(spec: str | dict) -> dict[str, float]:
    """'accuracy,format=0.5' or {'accuracy': 1, 'format': 0.5} -> {name: weight}, checked by
    r1lab.config.reward_weights (names, finite weights); a name 'package.module:function' is your own reward,
    fn(completion, problem) -> float, imported and registered here."""
    weights = reward_weights(spec)
    for name in weights:
        if ":" in name and name not in REWARDS:
            import_reward(name)
    return weights


def check_rewards_fit(weights: dict[str, float], problem: Problem) -> None:
    """Code rewards need code problems, agentjo_format AgentJo's calls: say so before any sampling, not as a
    run of zeros."""
    code = [name for name in weights if name in ("code", "code_strict")]
    if code and "code" not in problem.meta:
        raise R1labError(f"reward(s) {code} need a code task (humaneval, or jsonl rows with tests); "
                         f"problem {problem.id!r} has no tests")
    if "agentjo_format" in weights and "agentjo" not in problem.meta:
        raise R1labError(f"reward agentjo_format needs the agentjo task (AgentJo's own calls, with their schemas); "
                         f"problem {problem.id!r} is not one")


def safe(fn: RewardFn, completion: Completion, problem: Problem) -> tuple[float, bool]:
    """(reward, failed): never raises, and a non-finite value counts as a failure."""
    try:
        value = float(fn(completion, problem))
    except Exception:
        return 0.0, True
    return (value, False) if value == value and abs(value) != float("inf") else (0.0, True)


def safe_group(fn: GroupRewardFn, group: list[Completion], problem: Problem) -> tuple[list[float], bool]:
    try:
        values = [float(v) for v in fn(group, problem)]
        if len(values) == len(group) and all(v == v and abs(v) != float("inf") for v in values):
            return values, False
    except Exception:
        pass
    return [0.0] * len(group), True


def score(weights: dict[str, float], completions: list[Completion], problems: list[Problem], group_size: int | None = None):
    """Weighted total per completion, each named reward per completion, and the number of failures.
    Group rewards (majority, code) see contiguous groups of `group_size` completions (default: as many as
    share a problem), never mixing problems."""
    parts = {name: [] for name in weights}
    failures = 0
    for completion, problem in zip(completions, problems, strict=True):
        for name in weights:
            if name in REWARDS:
                value, failed = safe(REWARDS[name], completion, problem)
                parts[name].append(value)
                failures += failed
    size = group_size or len(completions)
    starts = [i for i in range(len(completions)) if i % size == 0 or problems[i].id != problems[i - 1].id]
    for name in weights:
        if name in GROUP_REWARDS:
            for start, end in zip(starts, starts[1:] + [len(completions)]):
                values, failed = safe_group(GROUP_REWARDS[name], completions[start:end], problems[start])
                parts[name] += values
                failures += failed
    total = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(completions))]
    for i, value in enumerate(total):           # finite parts can still sum past the largest float
        if not math.isfinite(value):
            terms = ", ".join(f"{name} {parts[name][i]} x {weights[name]}" for name in weights)
            raise R1labError(f"rewards: the weighted total of a completion is {value} ({terms}); the rewards and their "
                             "weighted sum must be finite numbers")
    return total, parts, failures
