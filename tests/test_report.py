"""r1lab report: series named by their stage's folder, integer step ticks, RL diagnostics plotted when logged."""
import json

import pytest
from matplotlib.figure import Figure

from r1lab.report import write_report

GRPO_ROW = {"reward": 0.5, "accuracy": 0.25, "completion_length": 40, "reflection": 0.1, "entropy": 2.0,
            "zero_std_groups": 0.5, "sampler_mismatch": 1e-3, "sampler_kl": 1e-5, "is_weight": 1.0, "is_capped": 0.0}


def write_metrics(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, **row}) + "\n" for i, row in enumerate(rows)))


@pytest.fixture
def figures(monkeypatch):
    """What each saved figure showed: file name -> (x ticks, legend labels) of every panel."""
    seen, real = {}, Figure.savefig

    def savefig(self, path, *args, **kwargs):
        seen[path.name] = [(list(ax.get_xticks()), ax.get_legend_handles_labels()[1]) for ax in self.axes]
        return real(self, path, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_a_single_stage_directory_is_named_by_its_folder_with_integer_step_ticks(tmp_path, figures):
    run = tmp_path / "quickrun"
    write_metrics(run, [GRPO_ROW] * 3)
    text = write_report(str(run)).read_text()
    assert "| quickrun | 3 |" in text and "| . |" not in text
    ticks, labels = figures["reward.png"][0]
    assert labels == ["quickrun: total reward", "quickrun: accuracy"]
    assert ticks and all(float(t).is_integer() for panel in figures.values() for ticks, _ in panel for t in ticks)


def test_diagnostics_are_plotted_only_where_logged(tmp_path, figures):
    write_metrics(tmp_path / "grpo", [GRPO_ROW, {**GRPO_ROW, "sampler_kl": 0.0}])   # 0 has no place on a log scale
    write_metrics(tmp_path / "sft", [{"loss": 1.0}, {"loss": 0.5}])
    text = write_report(str(tmp_path)).read_text()
    for name in ("entropy.png", "groups.png", "mismatch.png"):
        assert (tmp_path / name).stat().st_size > 5000 and f"]({name})" in text
    (mismatch, mismatch_labels), (weights, weight_labels) = figures["mismatch.png"]
    assert mismatch_labels == ["grpo: mean |log p_sampler - log p_old| per token", "grpo: KL(sampler || old) per sequence"]
    assert weight_labels == ["grpo: mean importance weight", "grpo: share of weights capped"]
    assert figures["entropy.png"][0][1] == ["grpo: entropy"]                    # the sft stage logs none

    sft_only = tmp_path / "sft_only"
    write_metrics(sft_only / "sft", [{"loss": 1.0}])
    figures.clear()
    write_report(str(sft_only))
    assert not {"entropy.png", "groups.png", "mismatch.png"} & set(figures)
