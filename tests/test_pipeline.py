import json
from pathlib import Path

import pytest

from r1lab import R1labError
from r1lab.models import load_model
from r1lab.eta import clock
from r1lab.pipeline import load_recipe, run_recipe

RECIPE = """
name: tiny
runs_dir: {runs}
model: tiny-random
task: arithmetic
template: r1_zero
stages:
  - {{name: cold, kind: cold_start, n: 16}}
  - {{name: sft, kind: sft, batch_size: 8, micro_batch_size: 8, learning_rate: 1.0e-3}}
  - {{name: grpo, kind: grpo, steps: 4, save_every: 2, prompts_per_step: 2, samples_per_prompt: 2,
      micro_batch_size: 4, max_new_tokens: 8, rewards: format_partial, learning_rate: 1.0e-3}}
  - {{name: rejection, kind: rejection, problems: 3, samples_per_prompt: 2, max_new_tokens: 8}}
  - {{name: eval, kind: eval, samples: 2, problems: 3, max_new_tokens: 8}}
"""


def write_recipe(tmp_path, text=RECIPE):
    path = tmp_path / "recipe.yaml"
    path.write_text(text.format(runs=tmp_path / "runs"))
    return path


def test_recipe_runs_end_to_end_and_each_output_loads(tmp_path):
    report = run_recipe(str(write_recipe(tmp_path)))
    runs = tmp_path / "runs" / "tiny"
    assert len((runs / "cold" / "data.jsonl").read_text().splitlines()) == 16
    for stage in ("sft", "grpo"):
        model, _ = load_model(str(runs / stage / "checkpoint"))
        assert type(model).__name__ == "LlamaForCausalLM"
    summary = json.loads((runs / "rejection" / "summary.json").read_text())
    assert summary["sampled"] == 6 and summary["kept"] + sum(summary["dropped"].values()) == 6
    result = json.loads((runs / "eval" / "eval.json").read_text())
    assert list(result["models"]) == ["tiny-random", str(runs / "sft" / "checkpoint"), str(runs / "grpo" / "checkpoint")]
    assert report.is_file() and all((runs / s / ".done").exists() for s in ("cold", "sft", "grpo", "rejection", "eval"))


class Killed(Exception):
    pass


def test_a_killed_recipe_finishes_without_redoing_finished_stages(tmp_path, monkeypatch):
    import r1lab.algorithms.grpo as grpo
    import r1lab.algorithms.sft as sft
    path = write_recipe(tmp_path)
    real_end = grpo.end_step

    def die_after_first_save(par, out, step, steps, save_every, *args):
        real_end(par, out, step, steps, save_every, *args)
        if (step + 1) % save_every == 0 or step + 1 == steps:
            raise Killed
    monkeypatch.setattr(grpo, "end_step", die_after_first_save)
    with pytest.raises(Killed):
        run_recipe(str(path))
    monkeypatch.setattr(grpo, "end_step", real_end)
    sft_calls = []
    monkeypatch.setattr(sft, "train_sft", lambda *a, **k: sft_calls.append(1))
    run_recipe(str(path))
    runs = tmp_path / "runs" / "tiny"
    assert not sft_calls
    assert [json.loads(line)["step"] for line in (runs / "grpo" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (runs / "eval" / ".done").exists()


@pytest.mark.parametrize("edit, message", [
    (("kind: sft,", "kind: sfft,"), r"recipe.yaml, stage 'sft': unknown kind 'sfft'"),
    (("{name: sft, kind: sft, batch_size", "{name: sft, kind: sft, batch_sise"), r"stage 'sft': unknown option\(s\) \['batch_sise'\]"),
    (("kind: sft,", "kind: sft, data: nope.jsonl,"), r"stage 'sft', key 'data': nope.jsonl is neither"),
    (("kind: sft,", "kind: sft, model: cold,"), r"key 'model': stage 'cold' produces data"),
    (("samples_per_prompt: 2,\n", "samples_per_prompt: 1,\n"), r"stage 'grpo': samples_per_prompt \(G\) must be >= 2"),
    (("kind: sft,", "kind: sft, model: grpo,"), r"stage 'sft', key 'model': stage 'grpo' comes later in the recipe"),
    (("micro_batch_size: 8, learning_rate: 1.0e-3", "micro_batch_size: 8, learning_rate: -1"), r"stage 'sft': SFTConfig.learning_rate must be in \(0, 1\]"),
])
def test_bad_recipes_fail_at_load_naming_file_stage_and_key(tmp_path, edit, message):
    path = write_recipe(tmp_path, RECIPE.replace(*edit))
    with pytest.raises(R1labError, match=message):
        load_recipe(path)


def test_a_stage_finished_with_other_settings_stops_until_allowed_then_it_and_what_reads_it_rerun(tmp_path, capsys):
    path = write_recipe(tmp_path)
    run_recipe(str(path))
    runs = tmp_path / "runs" / "tiny"
    finished = {s: (runs / s / ".done").stat().st_mtime_ns for s in ("cold", "sft", "grpo", "rejection", "eval")}
    with pytest.raises(R1labError, match=r"stage 'grpo': finished earlier with other settings \(steps: 4 -> 6\).*"
                                         r"--allow-config-change"):
        run_recipe(str(path), {"grpo.steps": "6"})
    run_recipe(str(path), {"grpo.steps": "6"}, allow_config_change=True)
    out = capsys.readouterr().out
    assert "continuing with changed settings: steps: 4 -> 6" in out and "[eval] reads 'grpo'" in out
    assert "[grpo] grpo -> " in out and "(stage 3 of 5, recipe time so far " in out   # where the recipe stands
    steps = [json.loads(line)["step"] for line in (runs / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]                                    # continued from its checkpoint
    now = {s: (runs / s / ".done").stat().st_mtime_ns for s in finished}
    assert [s for s in finished if now[s] != finished[s]] == ["grpo", "rejection", "eval"]   # what reads grpo is redone
    run_recipe(str(path), {"grpo.steps": "6", "grpo.save_every": "3"})   # how often it saves is not a setting
    assert {s: (runs / s / ".done").stat().st_mtime_ns for s in finished} == now
    (runs / "eval" / "earlier.jsonl").write_text("{}\n")
    run_recipe(str(path), {"grpo.steps": "6", "eval.max_new_tokens": "6"}, allow_config_change=True)
    assert not (runs / "eval" / "earlier.jsonl").exists()                # not training: redone afresh, nothing mixed in


def test_clock_reads_as_a_person_would():
    assert [clock(s) for s in (0, 59.9, 60, 725, 3599, 3600, 3720)] == ["0s", "59s", "1m00s", "12m05s", "59m59s",
                                                                          "1h00m", "1h02m"]


def test_overrides(tmp_path):
    path = write_recipe(tmp_path)
    stages = load_recipe(path, {"grpo.steps": "7", "task_options": "{operands: 2}"})
    grpo = next(s for s in stages if s.name == "grpo")
    assert grpo.config.steps == 7 and grpo.config.task_options == {"operands": 2}
    with pytest.raises(R1labError, match="no stage named 'grpp'"):
        load_recipe(path, {"grpp.steps": "7"})


@pytest.mark.parametrize("path", sorted(Path("recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(path):
    assert load_recipe(path)


def test_sigkill_in_the_middle_of_a_stage_then_rerun_finishes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    text = RECIPE.replace("steps: 4, save_every: 2", "steps: 60, save_every: 3")
    path = write_recipe(tmp_path, text)
    runs = tmp_path / "runs" / "tiny"
    command = [sys.executable, "-m", "r1lab", "run", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (runs / "grpo" / "checkpoint").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (runs / "grpo" / ".done").exists(), "the kill should land inside the GRPO stage"
    sft_done = (runs / "sft" / ".done").stat().st_mtime_ns
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert (runs / "sft" / ".done").stat().st_mtime_ns == sft_done            # not redone
    steps = [json.loads(line)["step"] for line in (runs / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))
    assert all((runs / s / ".done").exists() for s in ("cold", "sft", "grpo", "rejection", "eval"))


SMALL = """
name: np
runs_dir: {runs}
model: tiny-random
stages:
  - {{name: cold, kind: cold_start, n: 8}}
  - {{name: sft, kind: sft, batch_size: 4, micro_batch_size: 2, mixed_precision: "no"}}
  - {{name: eval, kind: eval, samples: 1, problems: 2, max_new_tokens: 4}}
"""


def test_num_processes_launches_each_training_stage_with_its_config_and_runs_the_rest_here(tmp_path, monkeypatch):
    """The launched command, run here in one process: its YAML config is the stage's, it resumes, and the
    stages around it run in this process as without --num-processes."""
    import subprocess

    from r1lab.cli import main
    launched = []

    def call(command, **options):
        argv = command[command.index("r1lab") + 1:]
        config = argv[argv.index("--config") + 1]
        launched.append((command[command.index("--num_processes") + 1], argv[:2], "--resume" in argv,
                         Path(config).read_text()))
        main(argv)
        return 0
    monkeypatch.setattr(subprocess, "call", call)
    path = write_recipe(tmp_path, SMALL)
    run_recipe(str(path), num_processes=2)
    runs = tmp_path / "runs" / "np"
    (processes, command, resume, config), = launched
    assert (processes, command, resume) == ("2", ["train", "sft"], True)
    assert f"out: {runs / 'sft'}" in config and f"data: {runs / 'cold' / 'data.jsonl'}" in config
    assert json.loads((runs / "eval" / "eval.json").read_text())["models"].keys() == {"tiny-random", str(runs / "sft" / "checkpoint")}
    run_recipe(str(path), num_processes=2)                                  # finished: nothing launched again
    assert len(launched) == 1


def test_num_processes_that_a_training_stage_cannot_use_fail_before_anything_runs(tmp_path):
    path = write_recipe(tmp_path, SMALL)
    with pytest.raises(R1labError, match=r"stage 'sft': batch_size = 4 must divide by --num-processes 3"):
        run_recipe(str(path), num_processes=3)
    text = SMALL + "  - {{name: grpo, kind: grpo, model: sft, steps: 1, dynamic_sampling: true}}\n"
    with pytest.raises(R1labError, match=r"stage 'grpo': dynamic_sampling runs in one process"):
        run_recipe(str(write_recipe(tmp_path, text)), num_processes=2)
    with pytest.raises(R1labError, match="--num-processes must be >= 1"):
        run_recipe(str(path), num_processes=0)
    assert not (tmp_path / "runs").exists()
