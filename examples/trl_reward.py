"""Reward functions written for TRL's GRPOTrainer, used by r1lab unchanged.

    PYTHONPATH=. r1lab train grpo --model tiny-random --template r1_zero --steps 2 \
        --rewards examples.trl_reward:exact_answer,examples.trl_reward:think_format=0.5

(from the repository root: PYTHONPATH=. puts `examples` on the Python path; any `package.module:function` there
works). r1lab tells TRL's signature `fn(prompts, completions, **kwargs) -> list[float | None]` from its own
`fn(completion, problem) -> float` by the function's parameters (r1lab.rewards.batched), and calls a TRL-style
reward once per batch, every argument by keyword, as TRL does:

    prompts         each problem's question (without the template around it)
    completions     each completion's text, after the prompt's tail the template opened (e.g. '<think>\\n')
    completion_ids  each completion's token ids
    answer          the ground truth (None where a task has none); the same list again as `solution`
    ...             each extra field of the task's problems (a jsonl row's other keys), as TRL passes a
                    dataset's other columns

A value of `None` is TRL's "this reward does not apply to this sample": it scores 0 and is NOT counted as a
failure. A reward that raises, or returns NaN, an infinity or no number, scores 0 and IS counted (the progress
line's `fail=`, metrics.jsonl's `reward_failures`, a warning naming the reward and its error the first time);
failures on more than `max_reward_failure_share` of a step's samples (default 0.5) stop the run.
"""
import re

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_THEN_ANSWER = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def exact_answer(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the text inside <answer>...</answer> equals the ground truth, else 0.0; None (not applicable)
    for a problem without a ground truth."""
    rewards = []
    for completion, truth in zip(completions, answer):
        if truth is None:
            rewards.append(None)
            continue
        found = ANSWER.search(completion)
        rewards.append(float(found is not None and found.group(1).strip() == str(truth).strip()))
    return rewards


def think_format(completions, **kwargs) -> list[float]:
    """1.0 for '<think>...</think> <answer>...</answer>' and nothing else, as TRL's format rewards."""
    return [float(bool(THINK_THEN_ANSWER.match(completion))) for completion in completions]
