"""Live GRPO warnings (r1lab/algorithms/diagnostics.py) on hand-written metrics rows, and one run that gets one."""
import json
from pathlib import Path

import pytest

from r1lab.algorithms.diagnostics import Diagnostics
from r1lab.cli import main


def feed(rows: list[dict]) -> list[list[str]]:
    """The codes of the warnings each row triggers, row by row."""
    watch = Diagnostics()
    return [[alert.code for alert in watch.check(row)] for row in rows]


def test_no_signal_warns_once_after_three_steps_at_90_percent_and_again_after_it_cleared():
    shares = [1.0, 0.95, 0.9, 1.0, 1.0, 0.5, 0.9, 0.9, 0.9]
    assert feed([{"zero_std_groups": s} for s in shares]) == [[], [], ["no_signal"], [], [], [], [], [], ["no_signal"]]


def test_a_step_below_the_threshold_breaks_the_streak():
    assert feed([{"zero_std_groups": s} for s in [0.9, 0.9, 0.89, 0.9, 0.9]]) == [[]] * 5


def test_the_no_signal_warning_says_what_to_try():
    watch = Diagnostics()
    alerts = [alert for _ in range(3) for alert in watch.check({"zero_std_groups": 1.0})]
    assert alerts[0].message == (
        "no learning signal: every group's rewards are equal in 100% of groups (advantage 0) for 3 steps; try a cold "
        "start (r1lab run recipes/quickstart.yaml), an easier task, format_partial, more samples_per_prompt, or "
        "dynamic_sampling")
    assert watch.active == ["no_signal"]
    watch.check({"zero_std_groups": 0.0})
    assert watch.active == []


@pytest.mark.parametrize("key, values, fires", [
    ("truncated", [0.5, 0.6, 0.5], True), ("truncated", [0.5, 0.49, 0.5], False),
    ("entropy", [0.3, 0.04, 0.01, 0.049], True), ("entropy", [0.3, 0.04, 0.05, 0.04], False),
    ("sampler_mismatch", [0.2, 0.11, 0.5], True), ("sampler_mismatch", [0.2, 0.1, 0.5], False),
])
def test_each_threshold_must_hold_three_steps_running(key, values, fires):
    code = {"truncated": "truncation", "entropy": "entropy_collapse", "sampler_mismatch": "sampler_mismatch"}[key]
    assert feed([{key: v} for v in values])[-1] == ([code] if fires else [])


def test_entropy_collapse_is_a_fall_from_the_first_step_not_a_low_level():
    """A cold start on templated traces begins near the floor (gemma3-270m's rl-gain runs: 0.06-0.09, then 0.02-0.05
    with groups still spread in 29 of 30 steps): below 0.05 warns only once below a quarter of the first step's."""
    assert feed([{"entropy": e} for e in [0.08, 0.03, 0.025, 0.021]])[-1] == []
    assert feed([{"entropy": e} for e in [0.08, 0.019, 0.015, 0.01]])[-1] == ["entropy_collapse"]
    assert feed([{}, {"entropy": 0.08}, {"entropy": 0.019}, {"entropy": 0.015}, {"entropy": 0.01}])[-1] == \
        ["entropy_collapse"]                                       # the first step with an entropy is the reference
    watch = Diagnostics()
    message = [a.message for e in [3.0, 0.04, 0.03, 0.02] for a in watch.check({"entropy": e})][0]
    assert message.startswith("entropy collapse: 0.020 nats per token for 3 steps, from 3.000 at the first step;")


def test_a_missing_metric_counts_as_the_condition_not_holding():
    """No entropy is logged when no row was trained: that step neither warns nor continues a streak."""
    assert feed([{"entropy": 1.0}, {"entropy": 0.01}, {"entropy": 0.01}, {}, {"entropy": 0.01}]) == [[]] * 5


def test_length_collapse_is_measured_against_the_first_step():
    lengths = [40, 30, 9.9, 9.9, 9.9]                                 # a quarter of 40 is 10
    assert feed([{"completion_length": n} for n in lengths])[-1] == ["length_collapse"]
    assert feed([{"completion_length": n} for n in [40, 10, 10, 10]])[-1] == []
    assert feed([{"completion_length": n} for n in [6, 1, 1, 1]])[-1] == []   # too short at the start to judge


def hacking_rows(fmt_before, fmt_after, acc_before, acc_after, fmt_key="reward/format", acc_key="reward/accuracy"):
    return ([{fmt_key: fmt_before, acc_key: acc_before}] * 5 + [{fmt_key: fmt_after, acc_key: acc_after}] * 5)


@pytest.mark.parametrize("rows, fires", [
    (hacking_rows(0.2, 0.4, 0.5, 0.3), True),                        # format +0.2, accuracy -0.2
    (hacking_rows(0.2, 0.3, 0.5, 0.4), True),                        # exactly +0.1 and -0.1
    (hacking_rows(0.2, 0.4, 0.5, 0.5), False),                       # format rose, accuracy held
    (hacking_rows(0.2, 0.2, 0.5, 0.1), False),                       # accuracy fell alone
    (hacking_rows(0.2, 0.4, 0.5, 0.3, "reward/format_partial", "reward/accuracy_partial"), True),
    (hacking_rows(0.2, 0.4, 0.5, 0.3)[1:], False),                   # fewer than two windows of 5 steps
])
def test_reward_hacking_compares_the_last_five_steps_with_the_five_before(rows, fires):
    assert feed(rows)[-1] == (["reward_hacking"] if fires else [])


def test_a_run_whose_reward_no_sample_earns_warns_within_its_first_steps(tmp_path, capsys):
    """The README's first command on the tiny random model: it never earns accuracy or format, so every group is
    all-equal from the start."""
    out = tmp_path / "run"
    main(["train", "grpo", "--model", "tiny-random", "--task", "arithmetic", "--template", "r1_zero", "--rewards",
          "accuracy,format", "--steps", "3", "--prompts-per-step", "2", "--samples-per-prompt", "4",
          "--micro-batch-size", "8", "--max-new-tokens", "8", "--beta", "0", "--out", str(out)])
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["zero_std_groups"] for r in rows] == [1.0, 1.0, 1.0] and "warnings" not in rows[0]
    assert any(w.startswith("no learning signal") for w in rows[2]["warnings"])
    err = capsys.readouterr().err
    assert "r1lab: warning: step 3: no learning signal: every group's rewards are equal" in err
    assert "warn=no_signal" in err                                      # the progress line
