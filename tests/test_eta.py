"""The recipe's remaining time: earlier runs' stage durations, matched on settings, plus the running stage's rate."""
import io
import json

from r1lab import eta
from r1lab.pipeline import run_recipe

RECIPE = """
name: {name}
runs_dir: {runs}
model: tiny-random
task: arithmetic
template: r1_zero
seed: {seed}
stages:
  - {{name: cold, kind: cold_start, n: 8}}
  - {{name: sft, kind: sft, batch_size: 8, micro_batch_size: 8, learning_rate: 1.0e-3}}
  - {{name: eval, kind: eval, samples: 1, problems: 2, max_new_tokens: 4}}
"""


def test_fingerprint_drops_the_seed_and_the_runs_own_folder(tmp_path):
    run = tmp_path / "runs" / "study_seed1"
    settings = {"seed": 1, "model": f"{run}/sft/checkpoint", "data": "other/data.jsonl", "steps": 3,
                "models": ["base", f"{run}/grpo/checkpoint"]}
    assert eta.fingerprint(settings, run) == {"model": "<run>/sft/checkpoint", "data": "other/data.jsonl", "steps": 3,
                                              "models": ["base", "<run>/grpo/checkpoint"]}


def test_previous_takes_the_latest_whole_run_with_the_same_kind_and_settings(tmp_path):
    def write(run, seconds, finished, kind="grpo", resumed=False, settings=None):
        (tmp_path / run / "grpo").mkdir(parents=True)
        (tmp_path / run / "grpo" / "timing.json").write_text(json.dumps(
            {"kind": kind, "seconds": seconds, "resumed": resumed, "finished": finished, "settings": settings or {"steps": 3}}))
    write("a", 100.0, finished=1)
    write("b", 200.0, finished=2)
    write("c", 5.0, finished=3, resumed=True)              # only the part after a resume: not an estimate
    write("d", 7.0, finished=4, kind="sft")
    write("e", 9.0, finished=5, settings={"steps": 30})
    (tmp_path / "f" / "grpo").mkdir(parents=True)
    (tmp_path / "f" / "grpo" / "timing.json").write_text("{not json")
    assert eta.previous(tmp_path, "grpo", "grpo", {"steps": 3}) == 200.0
    assert eta.previous(tmp_path, "grpo", "grpo", {"steps": 4}) is None
    assert eta.previous(tmp_path, "eval", "eval", {}) is None


def test_recipe_left_adds_the_running_stage_and_the_timed_later_ones():
    try:
        eta.set_later([60.0, None, 30.0])
        assert eta.recipe_left(30.0) == "recipe ~2m00s left + 1 untimed stage"
        assert eta.recipe_left(None) == ""                 # the running stage has no rate yet
        eta.set_later([])
        assert eta.recipe_left(5.0) == "recipe ~5s left"
    finally:
        eta.set_later(None)
    assert eta.recipe_left(30.0) == ""                     # no recipe running


def test_the_progress_line_shows_the_recipe_estimate_only_while_a_recipe_runs():
    bar = eta.Progress(total=10, file=io.StringIO())
    bar.n = 4
    bar.start_t -= 8.0                                      # 4 steps in 8 s: 12 s left in this stage
    try:
        eta.set_later([60.0])
        assert "recipe ~1m12s left" in bar.format_dict["postfix"]
    finally:
        eta.set_later(None)
    assert not bar.format_dict["postfix"]


def test_a_second_seed_sees_the_first_seeds_stage_times(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(eta, "set_later", lambda later: seen.append(later) if later is not None else None)
    for seed in (0, 1):
        path = tmp_path / f"recipe{seed}.yaml"
        path.write_text(RECIPE.format(name=f"study_seed{seed}", runs=tmp_path / "runs", seed=seed))
        run_recipe(str(path))
    first, second = seen[:3], seen[3:]
    assert first == [[None, None], [None], []]             # nothing has run before: the later stages are untimed
    timing = {s: json.loads((tmp_path / "runs" / "study_seed0" / s / "timing.json").read_text()) for s in ("cold", "sft", "eval")}
    assert timing["sft"]["settings"]["data"] == "<run>/cold/data.jsonl" and "seed" not in timing["sft"]["settings"]
    assert second == [[timing["sft"]["seconds"], timing["eval"]["seconds"]], [timing["eval"]["seconds"]], []]
