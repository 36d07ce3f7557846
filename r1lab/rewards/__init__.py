"""Rule-based rewards: pure functions `fn(completion, problem) -> float`, combined by a weighted sum.

    from r1lab.rewards import parse_rewards, score
    weights = parse_rewards("accuracy,format=0.5")          # {"accuracy": 1.0, "format": 0.5}
    total, parts, failures = score(weights, completions, problems)

Extraction (the template's parse, done once when a completion is made) is separate from judging
(the functions here). A reward that raises, or returns NaN, an infinity or no number, scores 0 on that
sample and the sample is counted in `failures` (samples with at least one failed reward): one bad sample
must never stop a training run (a stage may stop when too many fail: GRPO's max_reward_failure_share).
Pass `errors={}` to `score` to learn each failed reward's first error ('ValueError: ...').

Your own reward, named 'package.module:function' in `rewards`, takes either form, told apart by its
signature (`batched`):
- r1lab's: `fn(completion, problem) -> float`, one sample at a time (r1lab.types.Completion, Problem);
- TRL's: `fn(prompts, completions, **kwargs) -> list[float | None]`, once over the whole batch, every argument
  by keyword, as TRL's GRPOTrainer calls it (`trl_columns` says what each column holds: the question, the
  completion's text, its token ids, the ground truth as both `answer` and `solution`, and the task's extra
  fields). A `None` is TRL's "not applicable": it scores 0 and is NOT a failure. If the whole call raises
  or returns the wrong count, every sample of the batch fails. (examples/trl_reward.py)
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

from r1lab import R1labError
from r1lab.schema import reward_weights, short_repr
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
BatchRewardFn = Callable[..., list]
BATCH_REWARDS: dict[str, BatchRewardFn] = {}   # users' TRL-style rewards, fn(prompts, completions, **kwargs)


def batched(fn) -> bool:
    """Whether `fn` is a TRL-style reward (it names `completions` or takes **kwargs) rather than r1lab's
    fn(completion, problem); a callable whose signature cannot be read is taken as r1lab's."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def import_reward(name: str) -> None:
    """Register a user reward named 'package.module:function': r1lab's fn(completion, problem) -> float, or
    TRL's fn(prompts, completions, **kwargs) -> list[float | None] (told apart by `batched`)."""
    import importlib

    module_name, _, function = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        where = "; is its folder on the Python path (PYTHONPATH=.)?" if isinstance(e, ModuleNotFoundError) else ""
        raise R1labError(f"reward {name!r}: cannot import it ({e}){where}") from None
    if not callable(fn):
        raise R1labError(f"reward {name!r} is not a function")
    (BATCH_REWARDS if batched(fn) else REWARDS)[name] = fn


def parse_rewards(spec: str | dict) -> dict[str, float]:
    """'accuracy,format=0.5' or {'accuracy': 1, 'format': 0.5} -> {name: weight}, checked by
    r1lab.config.reward_weights (names, finite weights); a name 'package.module:function' is your own reward,
    fn(completion, problem) -> float or TRL's fn(prompts, completions, **kwargs), imported and registered here."""
    weights = reward_weights(spec)
    for name in weights:
        if ":" in name and name not in REWARDS and name not in BATCH_REWARDS:
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


class NotANumber(Exception):
    """A reward returned something other than a finite number (or, batched, other than one per completion)."""


def reward_value(value) -> float:
    """A reward's value as a finite float; NotANumber naming it otherwise (a string is no number)."""
    try:
        number = None if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise NotANumber(f"returned {short_repr(value, 60)}, not a finite number")
    return number


def describe(error: Exception) -> str:
    """An error as one short line: 'ValueError: boom', or what a reward returned instead of a number."""
    text = str(error) if isinstance(error, NotANumber) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."


def judge(fn: RewardFn, completion: Completion, problem: Problem) -> tuple[float, str | None]:
    """(reward, None), or (0.0, the error) when fn raised or returned no finite number; never raises."""
    try:
        return reward_value(fn(completion, problem)), None
    except Exception as e:
        return 0.0, describe(e)


def safe(fn: RewardFn, completion: Completion, problem: Problem) -> tuple[float, bool]:
    """(reward, failed): never raises, and a non-finite value counts as a failure."""
    value, error = judge(fn, completion, problem)
    return value, error is not None


def judge_group(fn: GroupRewardFn, group: list[Completion], problem: Problem) -> tuple[list[float], str | None]:
    """A group reward's values, or zeros and the error (the whole group fails together)."""
    try:
        values = list(fn(group, problem))
        if len(values) != len(group):
            raise NotANumber(f"returned {len(values)} values for a group of {len(group)}")
        return [reward_value(v) for v in values], None
    except Exception as e:
        return [0.0] * len(group), describe(e)


def trl_columns(completions: list[Completion], problems: list[Problem]) -> dict[str, list]:
    """The keyword arguments a TRL-style reward gets, one list entry per completion, as TRL passes a dataset's
    columns: `prompts` (each problem's question, without the template), `completions` (the text after the prompt:
    the prompt's tail the template opened, e.g. '<think>\n', then what the model wrote, as r1lab's own rewards
    read it), `completion_ids` (the token ids), `answer` and `solution` (the ground truth; None where a task has
    none), and each extra field of the task (Problem.meta, e.g. a jsonl row's other keys) every problem has."""
    columns = {"prompts": [p.prompt for p in problems], "completions": [c.prompt_tail + c.text for c in completions],
               "completion_ids": [list(c.token_ids) for c in completions],
               "answer": [p.answer for p in problems], "solution": [p.answer for p in problems]}
    shared = set.intersection(*(set(p.meta) for p in problems)) if problems else set()
    for key in sorted(shared - set(columns)):
        columns[key] = [p.meta[key] for p in problems]
    return columns


def judge_batch(fn: BatchRewardFn, completions: list[Completion], problems: list[Problem]) -> tuple[list[float], list]:
    """A TRL-style reward over the batch: (values, each sample's error or None). A None value is TRL's "not
    applicable": 0, and no failure. A function without **kwargs gets only the columns it names."""
    n, columns = len(completions), trl_columns(completions, problems)
    parameters = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        columns = {k: v for k, v in columns.items() if k in parameters}
    try:
        result = fn(**columns)
        sequence = hasattr(result, "__len__") and not isinstance(result, (str, bytes, dict))   # list, tuple, array
        values = list(result) if sequence else None
        if values is None or len(values) != n:
            raise NotANumber(f"returned {short_repr(result, 60)}, not a list of {n} rewards (one per completion)")
    except Exception as e:
        return [0.0] * n, [describe(e)] * n
    results, errors = [], []
    for value in values:
        try:
            results.append(0.0 if value is None else reward_value(value))
            errors.append(None)
        except NotANumber as e:
            results.append(0.0)
            errors.append(describe(e))
    return results, errors


def score(weights: dict[str, float], completions: list[Completion], problems: list[Problem], group_size: int | None = None,
          errors: dict[str, str] | None = None):
    """Weighted total per completion, each named reward per completion, and the number of samples on which at least
    one reward failed (it scored 0 there). Group rewards (majority, code) see contiguous groups of `group_size`
    completions (default: as many as share a problem), never mixing problems; TRL-style rewards see the whole
    batch at once. `errors`, when given, gets each failed reward's first error in this call, by name."""
    if len(completions) != len(problems):
        raise ValueError(f"score: {len(completions)} completions for {len(problems)} problems")
    size = group_size or len(completions)
    starts = [i for i in range(len(completions)) if i % size == 0 or problems[i].id != problems[i - 1].id]
    parts, failed = {}, [False] * len(completions)
    for name in weights:
        if name in REWARDS:
            judged = [judge(REWARDS[name], c, p) for c, p in zip(completions, problems)]
            values, found = [v for v, _ in judged], [e for _, e in judged]
        elif name in GROUP_REWARDS:
            values, found = [], []
            for start, end in zip(starts, starts[1:] + [len(completions)]):
                group_values, error = judge_group(GROUP_REWARDS[name], completions[start:end], problems[start])
                values, found = values + group_values, found + [error] * (end - start)
        elif name in BATCH_REWARDS:
            values, found = judge_batch(BATCH_REWARDS[name], completions, problems)
        else:
            raise R1labError(f"reward {name!r} is not registered (parse_rewards imports users' rewards)")
        parts[name] = values
        for i, error in enumerate(found):
            if error is not None:
                failed[i] = True
                if errors is not None:
                    errors.setdefault(name, error)
    total = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(completions))]
    for i, value in enumerate(total):           # finite parts can still sum past the largest float
        if not math.isfinite(value):
            terms = ", ".join(f"{name} {parts[name][i]} x {weights[name]}" for name in weights)
            raise R1labError(f"rewards: the weighted total of a completion is {value} ({terms}); the rewards and their "
                             "weighted sum must be finite numbers")
    return total, parts, sum(failed)
