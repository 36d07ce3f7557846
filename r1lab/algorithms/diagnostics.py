"""Live warnings for a GRPO run: fed each step's metrics row, says what looks wrong and what to do about it.

    watch = Diagnostics()
    for row in rows:                              # the rows metrics.jsonl gets (r1lab/algorithms/grpo_step.py)
        for alert in watch.check(row):            # Alert(code, message): print it, log it under "warnings"
            print(alert.message)
    watch.active                                  # codes whose condition holds now (the progress line's warn=)

Pure: no model, no config, no files; hand-written synthetic rows test it (tests/test_diagnostics.py).
Each check is a condition on the rows seen so far (CHECKS, thresholds in the constants below). A warning is
given once when its condition has held for its `patience` consecutive steps, and again only after the
condition cleared for a step: a run that stays stuck is told once, not every step. A row without a check's
metric (e.g. no entropy when no row was trained) counts as the condition not holding.

The checks, and why each is worth a line:
- no_signal: >= 90% of groups have all-equal rewards (`zero_std_groups`) for 3 steps: their advantages are 0
  (eq. 3), so those steps learn nothing but the KL term. The usual R1-Zero start on a model that cannot yet
  earn the reward.
- truncation: >= 50% of completions hit max_new_tokens (`truncated`) for 3 steps: their answers are cut off,
  so accuracy and format read 0 whatever the reasoning.
- entropy_collapse: the policy's token entropy (`entropy`, nats per token) below 0.05 and below a quarter of the
  first step's for 3 steps: the G samples of a group become the same text, groups become all-equal and learning
  stops. A fall, not a level: a cold start on templated traces begins near 0.05 (gemma3-270m's: 0.06-0.09) with
  most tokens fixed by the template and the few that matter (the numbers) still varied, and groups still spread.
- length_collapse: the mean completion length below a quarter of the first step's for 3 steps (and the
  first step's at least 8 tokens): the policy found a short reply that scores, usually no reasoning at all.
- reward_hacking: over the last 5 steps against the 5 before them, the format reward rose by >= 0.1 while
  accuracy fell by >= 0.1: the policy learns the tags, not the task.
- sampler_mismatch: the sampler's log-probs differ from the trainer's by more than 0.1 per token on average
  (`sampler_mismatch`) for 3 steps: the updates are off-policy by more than precision noise (~0.01).
(A NaN or infinite loss is no warning: it stops the run, Parallel.clip_grad_norm.)
"""
from __future__ import annotations

from typing import Callable, NamedTuple

NO_SIGNAL_SHARE = 0.9              # share of groups whose rewards are all equal
TRUNCATED_SHARE = 0.5              # share of completions that hit max_new_tokens
ENTROPY_FLOOR = 0.05               # nats per token
ENTROPY_FALL = 0.25                # of the first step's entropy
LENGTH_SHARE = 0.25                # of the first step's mean completion length
LENGTH_MIN_FIRST = 8               # tokens: shorter first steps are not judged
HACK_WINDOW = 5                    # steps in each of the two windows compared
HACK_FORMAT_RISE = 0.1             # format reward, mean over a window
HACK_ACCURACY_FALL = 0.1           # accuracy, mean over a window
MISMATCH_BOUND = 0.1               # mean |log pi_sampler - log pi_old| per token
PATIENCE = 3                       # consecutive steps a condition must hold


class Alert(NamedTuple):
    code: str                      # the check's name (CHECKS), shown on the progress line
    message: str                   # one line: what was seen, then what to try


def first_key(row: dict, *keys: str):
    """The value of the first of `keys` the row has (format or format_partial, ...), or None."""
    return next((row[k] for k in keys if isinstance(row.get(k), (int, float))), None)


def mean(values: list[float]) -> float:
    """The arithmetic mean of a non-empty list."""
    return sum(values) / len(values)


def no_signal(rows: list[dict]) -> str | None:
    """The latest step's share of all-equal groups at NO_SIGNAL_SHARE or above."""
    share = rows[-1].get("zero_std_groups")
    if share is None or share < NO_SIGNAL_SHARE:
        return None
    return (f"no learning signal: every group's rewards are equal in {share:.0%} of groups (advantage 0) for "
            f"{PATIENCE} steps; try a cold start "
            "(r1lab run recipes/quickstart.yaml), an easier task, format_partial, more samples_per_prompt, or "
            "dynamic_sampling")


def truncation(rows: list[dict]) -> str | None:
    """The latest step's share of truncated completions at TRUNCATED_SHARE or above."""
    share = rows[-1].get("truncated")
    if share is None or share < TRUNCATED_SHARE:
        return None
    return (f"truncation: {share:.0%} of completions hit max_new_tokens for {PATIENCE} steps, cut off before their "
            "answer; raise "
            "max_new_tokens, or set mask_truncated (DAPO's overlong filter) to keep them out of the loss")


def entropy_collapse(rows: list[dict]) -> str | None:
    """The latest step's token entropy below ENTROPY_FLOOR and below ENTROPY_FALL of the first step's that has one."""
    first = next((r["entropy"] for r in rows if isinstance(r.get("entropy"), (int, float))), None)
    entropy = rows[-1].get("entropy")
    if entropy is None or entropy >= ENTROPY_FLOOR or entropy >= ENTROPY_FALL * first:
        return None
    return (f"entropy collapse: {entropy:.3f} nats per token for {PATIENCE} steps, from {first:.3f} at the first step; "
            "a group's samples are nearly the same text; raise "
            "temperature, lower learning_rate, raise beta, use clip-higher (epsilon_high 0.28), or a shorter cold start")


def length_collapse(rows: list[dict]) -> str | None:
    """The latest step's mean completion length below LENGTH_SHARE of the first step's."""
    first, now = rows[0].get("completion_length"), rows[-1].get("completion_length")
    if first is None or now is None or first < LENGTH_MIN_FIRST or now >= LENGTH_SHARE * first:
        return None
    return (f"response-length collapse: completions average {now:.0f} tokens for {PATIENCE} steps, from {first:.0f} "
            "at the first step; "
            "read samples.jsonl for a short reply that scores, then lower learning_rate, raise beta, or weight accuracy "
            "over format")


def reward_hacking(rows: list[dict]) -> str | None:
    """Format up and accuracy down, the last HACK_WINDOW steps against the HACK_WINDOW before them."""
    if len(rows) < 2 * HACK_WINDOW:
        return None
    windows = rows[-2 * HACK_WINDOW:-HACK_WINDOW], rows[-HACK_WINDOW:]
    fmt = [[first_key(r, "reward/format", "reward/format_partial") for r in w] for w in windows]
    acc = [[first_key(r, "reward/accuracy", "reward/accuracy_partial") for r in w] for w in windows]
    if any(v is None for w in fmt + acc for v in w):
        return None
    rise, fall = mean(fmt[1]) - mean(fmt[0]), mean(acc[0]) - mean(acc[1])
    if rise < HACK_FORMAT_RISE - 1e-9 or fall < HACK_ACCURACY_FALL - 1e-9:     # 0.3 - 0.2 is 0.0999... in floats
        return None
    return (f"reward hacking? over the last {HACK_WINDOW} steps format rose by {rise:.2f} while accuracy fell by "
            f"{fall:.2f}; read samples.jsonl, then weight format lower (rewards accuracy,format=0.2) or lower learning_rate")


def sampler_mismatch(rows: list[dict]) -> str | None:
    """The latest step's mean per-token sampler mismatch beyond MISMATCH_BOUND."""
    mismatch = rows[-1].get("sampler_mismatch")
    if mismatch is None or mismatch <= MISMATCH_BOUND:
        return None
    return (f"sampler mismatch: the sampler's log-probs differ from the trainer's by {mismatch:.3f} per token for "
            f"{PATIENCE} steps; set "
            "importance_sampling on, rollout_dtype float32 (or mixed_precision as the rollouts), and with vllm check "
            "its weights follow the policy's")


CHECKS: dict[str, tuple[Callable[[list[dict]], str | None], int]] = {   # code -> (condition, patience in steps)
    "no_signal": (no_signal, PATIENCE),
    "truncation": (truncation, PATIENCE),
    "entropy_collapse": (entropy_collapse, PATIENCE),
    "length_collapse": (length_collapse, PATIENCE),
    "reward_hacking": (reward_hacking, 1),            # windowed already
    "sampler_mismatch": (sampler_mismatch, PATIENCE),
}


class Diagnostics:
    """The rows seen so far and, per check, for how many consecutive steps its condition has held."""

    def __init__(self, checks: dict = CHECKS):
        self.checks = checks
        self.rows: list[dict] = []
        self.held = {code: 0 for code in checks}

    @property
    def active(self) -> list[str]:
        """The checks whose condition has held for their patience, up to the latest row."""
        return [code for code, (_, patience) in self.checks.items() if self.held[code] >= patience]

    def check(self, row: dict) -> list[Alert]:
        """Add a step's metrics row; the warnings it triggers (each check's once per stretch of held steps)."""
        self.rows.append(row)
        alerts = []
        for code, (condition, patience) in self.checks.items():
            message = condition(self.rows)
            self.held[code] = self.held[code] + 1 if message else 0
            if self.held[code] == patience:
                alerts.append(Alert(code, message))
        return alerts
