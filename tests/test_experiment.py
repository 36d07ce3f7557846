import json

from r1lab.cli import main
from r1lab.experiment import label, pooled

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
  - {{name: eval, kind: eval, models: [base, sft, compete_majority, goal_sft], samples: 2, problems: 3, max_new_tokens: 6}}
"""


def test_pooled_hand_computed():
    seed0 = [{"correct": [1, 0], "answers": ["6", "7"]}, {"correct": [1, 1], "answers": ["3", "3"]}]
    seed1 = [{"correct": [0, 0], "answers": ["1", None]}]
    result = pooled([seed0, seed1])
    assert result["pass@1"] == (0.5 + 1 + 0) / 3 and result["cons"] == (1 + 1 + 0) / 3
    assert result["per_seed"] == [0.75, 0.0]
    assert label("runs/x_seed0/compete/checkpoint") == "compete" and label("smollm2-135m") == "base"


def test_experiment_runs_each_seed_and_pools_the_table(tmp_path, capsys):
    recipe = tmp_path / "exp.yaml"
    recipe.write_text(TINY.format(runs=tmp_path / "runs"))
    main(["experiment", "is-rl-needed", "--seeds", "2", "--recipe", str(recipe)])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "tiny_exp" / "experiment.json").read_text())
    assert list(result["methods"]) == ["base", "sft", "compete_majority", "goal_sft"]
    assert all(len(m["per_seed"]) == 2 for m in result["methods"].values())
    assert (tmp_path / "runs" / "tiny_exp_seed1" / "eval" / "eval.json").is_file()
    assert "compete_majority" in printed and "cons@2" in printed
