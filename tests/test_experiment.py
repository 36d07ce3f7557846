import json

import pytest

from r1lab import R1labError
from r1lab.cli import main
from r1lab.experiment import label, paired_gain, pooled, run_experiment

TINY = """
name: tiny_exp
runs_dir: {runs}
model: tiny-random
task: arithmetic
stages:
  - {{name: cold, kind: cold_start, n: 8}}
  - {{name: sft, kind: sft, model: base, data: cold, batch_size: 8, micro_batch_size: 8}}
  - {{name: compete_majority, kind: compete, model: sft, rewards: "majority,format_partial", rounds: 1,
      prompts_per_step: 2, samples_per_prompt: 2, max_new_tokens: 6}}
  - {{name: cold_small, kind: cold_start, n: 2}}
  - {{name: goal, kind: goal_directed, data: cold_small}}
  - {{name: goal_sft, kind: sft, model: base, data: goal, batch_size: 4, micro_batch_size: 4}}
  - {{name: eval, kind: eval, models: [base, sft, compete_majority], samples: 2, problems: 3, max_new_tokens: 6}}
  - {{name: eval_goal, kind: eval, models: [goal_sft, sft], samples: 2, problems: 3, max_new_tokens: 6}}
"""


def test_pooled_hand_computed():
    seed0 = [{"correct": [1, 0], "answers": ["6", "7"], "format": [1, 1]}, {"correct": [1, 1], "answers": ["3", "3"], "format": [0, 1]}]
    seed1 = [{"correct": [0, 0], "answers": ["1", None], "format": [0, 0]}]
    result = pooled([seed0, seed1])
    assert result["pass@1"] == (0.5 + 1 + 0) / 3 and result["cons"] == (1 + 1 + 0) / 3
    assert result["format"] == (1 + 0.5 + 0) / 3
    assert result["per_seed"] == [0.75, 0.0]
    assert label("runs/x_seed0/compete/checkpoint") == "compete" and label("smollm2-135m") == "base"
    # seeds, then problems, resampled: seed 1 twice (p = 1/4) gives 0; seed 0 twice with its problems' pass@1 (.5, 1)
    # resampled gives 1 with p = 1/64 < 2.5%, .875 with p = 1/16: the interval is [0, .875]
    assert result["pass@1_ci"] == (0.0, 0.875)


def test_paired_gain_matches_rows_by_problem_within_each_seed():
    start = [[{"id": "a", "correct": [0, 0]}, {"id": "b", "correct": [1, 0]}], [{"id": "c", "correct": [0, 1]}]]
    after = [[{"id": "b", "correct": [1, 1]}, {"id": "a", "correct": [1, 0]}], [{"id": "c", "correct": [1, 1]}]]
    gain = paired_gain(after, start)
    assert gain["pass@1"] == (1 + 0.5 + 1) / 3 - (0 + 0.5 + 0.5) / 3                  # differences +.5, +.5, +.5
    assert gain["pass@1_ci"] == (0.5, 0.5)


def test_experiment_runs_each_seed_and_pools_the_table(tmp_path, capsys):
    recipe = tmp_path / "exp.yaml"
    recipe.write_text(TINY.format(runs=tmp_path / "runs"))
    main(["experiment", "is-rl-needed", "--seeds", "2", "--recipe", str(recipe)])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "tiny_exp" / "experiment.json").read_text())
    assert list(result["methods"]) == ["base", "sft", "compete_majority", "goal_sft"]    # over both eval stages
    assert all(len(m["per_seed"]) == 2 for m in result["methods"].values())
    assert (tmp_path / "runs" / "tiny_exp_seed1" / "eval" / "eval.json").is_file()
    assert "compete_majority" in printed and "cons@2" in printed and "format [95% CI]" in printed and "cluster bootstrap" in printed
    gains = result["gains"]                 # each trained method against the evaluated checkpoint it started from
    assert {m: g["start"] for m, g in gains.items()} == {"sft": "base", "compete_majority": "sft", "goal_sft": "base"}
    sft, base = (result["methods"][m]["pass@1"] for m in ("sft", "base"))
    assert gains["sft"]["pass@1"] == pytest.approx(sft - base)
    assert gains["sft"]["pass@1_ci"][0] <= gains["sft"]["pass@1"] <= gains["sft"]["pass@1_ci"][1]
    goal_sft = result["methods"]["goal_sft"]["pass@1"]          # the two trained from the base, against each other
    assert list(result["versus"]) == ["sft - goal_sft"] and "same start, paired" in printed
    assert result["versus"]["sft - goal_sft"]["pass@1"] == pytest.approx(sft - goal_sft)


def test_eval_stages_that_would_not_pair_are_refused_naming_them(tmp_path):
    recipe = tmp_path / "exp.yaml"
    recipe.write_text(TINY.format(runs=tmp_path / "runs").replace("models: [goal_sft, sft], samples: 2",
                                                                  "models: [goal_sft, sft], samples: 3"))
    with pytest.raises(R1labError, match=r"eval stages 'eval' and 'eval_goal' differ \(samples: 2 / 3\)"):
        run_experiment(str(recipe), seeds=1)
    assert not (tmp_path / "runs").exists()                 # refused before any stage ran


@pytest.mark.parametrize("argv", [["rl-gain", "--seeds", "2", "name=x", "sft.mixed_precision=no"],
                                  ["rl-gain", "name=x", "--seeds", "2", "sft.mixed_precision=no"],
                                  ["rl-gain", "name=x", "sft.mixed_precision=no", "--seeds", "2"]])
def test_overrides_are_taken_before_or_after_options(monkeypatch, argv):
    """argparse leaves positionals that follow an option over; `experiment` (and `run`) take them as overrides."""
    import r1lab.experiment
    calls = []
    monkeypatch.setattr(r1lab.experiment, "run_experiment", lambda *args: calls.append(args) or "done")
    main(["experiment", *argv])
    assert calls == [("recipes/rl_gain.yaml", 2, {"name": "x", "sft.mixed_precision": "no"})]


def test_a_recipe_edited_while_it_runs_pools_the_stages_that_ran(tmp_path, monkeypatch):
    """The table is made from the stages each seed ran, not from the file as it reads afterwards (an arm and its
    eval stage appended mid-run once made pooling divide by zero); an eval file without rows is refused by name."""
    import r1lab.experiment as experiment
    recipe = tmp_path / "exp.yaml"
    text = TINY.format(runs=tmp_path / "runs")
    recipe.write_text(text)
    real = experiment.run_recipe

    def run_then_edit(path, overrides):
        out = real(path, overrides)
        recipe.write_text(text + "  - {name: sft2, kind: sft, model: base, data: cold}\n"
                                 "  - {name: eval_more, kind: eval, models: [sft2], samples: 2, problems: 3, max_new_tokens: 6}\n")
        return out
    monkeypatch.setattr(experiment, "run_recipe", run_then_edit)
    result = json.loads(run_experiment(str(recipe), seeds=1).with_suffix(".json").read_text())
    assert list(result["methods"]) == ["base", "sft", "compete_majority", "goal_sft"]
    with pytest.raises(R1labError, match=r"eval_more/.*no eval rows \(was its eval stage run\?\)"):
        experiment.eval_rows(tmp_path / "runs" / "tiny_exp_seed0" / "eval_more" / "sft2.jsonl")
