"""r1lab report: series named by their stage's folder, integer step ticks, a panel per logged metric (loss for SFT;
KL, gradient norm, learning rate and each reward component for GRPO), shares on 0-1 axes, eval bars from 0."""
import json

import pytest
from matplotlib.figure import Figure

from r1lab.report import FIGURES, line_plot, write_report

GRPO_ROW = {"reward": 0.5, "accuracy": 0.25, "completion_length": 40, "reflection": 0.1, "entropy": 2.0,
            "zero_std_groups": 0.5, "sampler_mismatch": 1e-3, "sampler_kl": 1e-5, "is_weight": 1.0, "is_capped": 0.0}
SFT_ROW = {"processes": 1, "loss": 2.0, "grad_norm": 1.5, "state_gb": 0.001, "learning_rate": 3e-5,   # sft.py's row
           "step_seconds": 0.1, "tokens_per_s": 900.0}


def write_metrics(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, **row}) + "\n" for i, row in enumerate(rows)))


@pytest.fixture
def figures(monkeypatch):
    """What each saved figure showed: file name -> {panel title: (x ticks, legend labels, y limits)}."""
    seen, real = {}, Figure.savefig

    def savefig(self, path, *args, **kwargs):
        seen[path.name] = {ax.get_title(): (list(ax.get_xticks()), ax.get_legend_handles_labels()[1], ax.get_ylim())
                           for ax in self.axes}
        return real(self, path, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_a_single_stage_directory_is_named_by_its_folder_with_integer_step_ticks(tmp_path, figures):
    run = tmp_path / "quickrun"
    write_metrics(run, [GRPO_ROW] * 3)
    text = write_report(str(run)).read_text()
    assert "| quickrun | 3 |" in text and "| . |" not in text and "nan" not in text
    assert figures["reward.png"]["Total reward"][1] == ["quickrun: total reward"]
    assert figures["reward.png"]["Accuracy"][1] == ["quickrun: accuracy"]
    assert all(float(t).is_integer() for panels in figures.values() for ticks, _, _ in panels.values() for t in ticks)


def test_diagnostics_are_plotted_only_where_logged(tmp_path, figures):
    write_metrics(tmp_path / "grpo", [GRPO_ROW, {**GRPO_ROW, "sampler_kl": 0.0}])   # 0 has no place on a log scale
    write_metrics(tmp_path / "sft", [SFT_ROW, {**SFT_ROW, "loss": 0.5}])
    text = write_report(str(tmp_path)).read_text()
    for name in ("entropy.png", "groups.png", "mismatch.png"):
        assert (tmp_path / name).stat().st_size > 5000 and f"]({name})" in text
    mismatch = figures["mismatch.png"]
    assert list(mismatch) == ["Sampler mismatch", "Importance weights and ratios", "Clipping"]
    assert mismatch["Sampler mismatch"][1] == ["grpo: mean |log p_sampler - log p_old| per token",
                                               "grpo: KL(sampler || old) per sequence"]
    assert mismatch["Importance weights and ratios"][1] == ["grpo: mean importance weight"]
    assert mismatch["Clipping"][1] == ["grpo: share of weights capped (0 throughout)"]
    assert figures["entropy.png"]["Entropy"][1] == ["grpo: entropy"]                # the sft stage logs none

    sft_only = tmp_path / "sft_only"
    write_metrics(sft_only / "sft", [SFT_ROW])
    figures.clear()
    write_report(str(sft_only))
    assert set(figures) == {"training.png"}


def test_sft_gets_its_loss_gradient_norm_and_learning_rate(tmp_path, figures):
    write_metrics(tmp_path / "sft", [SFT_ROW, {**SFT_ROW, "loss": 1.25}])
    text = write_report(str(tmp_path)).read_text()
    assert list(figures["training.png"]) == ["Loss", "Gradient norm (before clipping)", "Learning rate"]
    assert figures["training.png"]["Loss"][1] == ["sft: loss"] and figures["training.png"]["Loss"][2][0] == 0
    assert "| stage | step | loss |" in text and "| sft | 2 | 1.250 |" in text and "nan" not in text


def test_grpo_gets_kl_grad_norm_learning_rate_and_each_reward_component(tmp_path, figures):
    row = {**GRPO_ROW, "reward/accuracy": 0.25, "reward/format": 0.75, "reward/format_std": 0.4, "reward/language": 0.9,
           "kl": 0.01, "grad_norm": 0.3, "learning_rate": 1e-6, "truncated": 0.5}
    write_metrics(tmp_path / "grpo", [row, {**row, "kl": 0.02}])
    write_report(str(tmp_path))
    assert list(figures["training.png"]) == ["KL to the reference policy", "Gradient norm (before clipping)", "Learning rate"]
    reward = figures["reward.png"]
    assert list(reward) == ["Total reward", "Accuracy", "Reward component: format", "Reward component: language"]
    assert reward["Reward component: format"][1] == ["grpo: format"]
    assert list(figures["length.png"]) == ["Completion length", "Truncated completions"]


def test_axes_start_at_zero_for_shares_and_amounts_and_an_all_zero_series_is_not_magnified(tmp_path, figures):
    zero = {"reward": 0.0, "accuracy": 0.0, "kl": 0.0, "entropy": 6.2224, "completion_length": 16, "truncated": 1.0}
    write_metrics(tmp_path / "grpo", [zero, {**zero, "entropy": 6.2226}])
    write_report(str(tmp_path))
    assert figures["reward.png"]["Total reward"][2] == (0, 1) and figures["reward.png"]["Accuracy"][2] == (0, 1)
    assert figures["reward.png"]["Accuracy"][1] == ["grpo: accuracy (0 throughout)"]
    assert figures["training.png"]["KL to the reference policy"][2] == (0, 1)
    assert figures["length.png"]["Truncated completions"][2] == (0, 1.05)
    assert figures["length.png"]["Completion length"][2] == pytest.approx((0, 17.6))
    assert figures["entropy.png"]["Entropy"][2] == pytest.approx((6.2225 * 0.99, 6.2225 * 1.01))   # not magnified
    write_metrics(tmp_path / "grpo", [{"entropy": 6.2}, {"entropy": 5.0}])
    write_report(str(tmp_path))
    assert 4.9 < figures["entropy.png"]["Entropy"][2][0] < 5.0                   # its own range: the change shows

    negative = tmp_path / "negative"
    write_metrics(negative / "grpo", [{"reward": -0.5}, {"reward": 0.5}])        # a negative weight: the data's range
    write_report(str(negative))
    assert figures["reward.png"]["Total reward"][2][0] < -0.5


def test_line_plot_returns_the_panels_it_drew_and_writes_nothing_without_any(tmp_path):
    panels = dict((name, panels) for name, _, panels in FIGURES)["training.png"]
    assert line_plot({"sft": [{"step": 1, "loss": 1.0}]}, panels, "t", tmp_path / "a.png") == ["Loss"]
    assert line_plot({"sft": [{"step": 1, "other": 1.0}]}, panels, "t", tmp_path / "b.png") == []
    assert (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
    nan = [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": 1.0}, {"step": 3, "loss": float("inf")}]
    assert line_plot({"sft": nan}, panels, "t", tmp_path / "c.png") == ["Loss"]   # a NaN loss row is left out
