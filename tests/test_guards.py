"""Hostile input at the boundaries (issue 29): numbers, names and types checked once where they enter,
nothing written before the checks pass, one writer per run folder, workers that die with their launcher."""
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import typing

import pytest
import yaml

from r1lab import R1labError
from r1lab.cli import main
from r1lab.config import SFTConfig, load_config
from r1lab.pipeline import KINDS, load_recipe
from r1lab.rewards import parse_rewards


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    return exit.value.code, capsys.readouterr().err


def cold_data(tmp_path, n=16):
    path = tmp_path / "cold.jsonl"
    main(["data", "cold-start", "--n", str(n), "--out", str(path)])
    return path


# 1. reward weights: finite, on the command line and in a recipe
@pytest.mark.parametrize("spec", ["accuracy=inf", "accuracy=nan", "format=-inf,accuracy"])
def test_a_non_finite_reward_weight_is_refused(spec, tmp_path, capsys):
    with pytest.raises(R1labError, match="weight of .* must be a finite number"):
        parse_rewards(spec)
    code, err = run_cli(["train", "grpo", "--model", "tiny-random", "--rewards", spec, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "finite number" in err and not (tmp_path / "o").exists()


def test_rewards_whose_weighted_sum_overflows_stop_the_run_with_a_message(tmp_path, monkeypatch, capsys):
    """A finite reward of 1e308 weighted 10 sums to inf: it would make every advantage and weight NaN."""
    (tmp_path / "huge_reward.py").write_text("def huge(completion, problem):\n    return 1e308\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run_cli(["train", "grpo", "--model", "tiny-random", "--rewards", "huge_reward:huge=10", "--steps", "2",
                         "--max-new-tokens", "4", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "the weighted total of a completion is inf (huge_reward:huge 1e+308 x 10.0)" in err


def test_a_nan_gradient_stops_before_the_update_naming_the_step():
    import torch

    from r1lab.distributed import Parallel
    model = torch.nn.Linear(2, 1)
    model(torch.tensor([[math.nan, 1.0]])).sum().backward()
    before = model.weight.detach().clone()
    with pytest.raises(R1labError, match="step 7: the gradient norm is nan .* the last checkpoint is untouched"):
        Parallel().clip_grad_norm(model, 1.0, 7)
    assert torch.equal(model.weight, before)


# 3. sampling numbers on the command line
@pytest.mark.parametrize("argv", [
    ["eval", "tiny-random", "--temperature", "nan"], ["eval", "tiny-random", "--top-p", "-1"],
    ["eval", "tiny-random", "--max-new-tokens", "-1"], ["eval", "tiny-random", "--temperature", "inf"],
    ["generate", "tiny-random", "x", "--top-p", "5"], ["generate", "tiny-random", "x", "--max-new-tokens", "-5"],
    ["generate", "tiny-random", "x", "--n", "0"], ["data", "cold-start", "--n", "-3"],
    ["sandbox", "--wall-s", "inf"], ["serve", "tiny-random", "--port", "-1"], ["serve", "tiny-random", "--port", "70000"]])
def test_a_number_out_of_range_is_refused_naming_the_option_before_anything_is_written(argv, tmp_path, capsys):
    out = tmp_path / "out"
    if argv[0] in ("eval", "data"):
        argv = argv + ["--out", str(out)]
    code, err = run_cli(argv, capsys)
    option = next(a for a in argv if a.startswith("--") and a != "--out")
    assert code == 2 and f"argument {option}" in err and ("must be in" in err or "expected" in err)
    assert not out.exists()


def test_sampling_itself_refuses_what_slipped_past():
    from r1lab.rollout import Sampling
    for bad in ({"temperature": math.nan}, {"top_p": 5}, {"max_new_tokens": 0}, {"max_new_tokens": True}):
        with pytest.raises(R1labError, match="sampling"):
            Sampling(**bad)


# 5, 6, 10. recipes: types, names, YAML
def recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text).format(runs=tmp_path / "runs"))
    return path


def test_models_given_as_a_string_is_one_model_not_its_letters(tmp_path):
    stages = load_recipe(recipe(tmp_path, """
        runs_dir: {runs}
        model: tiny-random
        stages: [{{name: e, kind: eval, models: base}}]
    """))
    assert stages[0].config.models == ["tiny-random"]


@pytest.mark.parametrize("header, stage, message", [
    ("name: ../../x", "{name: a, kind: cold_start}", "recipe key 'name' must be a folder name"),
    ("name: /abs/dir", "{name: a, kind: cold_start}", "recipe key 'name' must be a folder name"),
    ("name: [x]", "{name: a, kind: cold_start}", "recipe key 'name' must be a string"),
    ("name: ok", "{name: ../../../y, kind: cold_start}", "key 'name' must be a folder name"),
    ("name: ok", "{name: [y], kind: cold_start}", "key 'name' must be a folder name"),
    ("name: ok", "{name: a, kind: [grpo]}", "unknown kind ['grpo']"),
    ("name: ok", "{name: a, kind: grpo, model: [x]}", "GRPOConfig.model must be a string"),
    ("name: ok", "{name: a, kind: grpo, model: {a: 1}}", "GRPOConfig.model must be a string"),
    ("name: ok", "{name: a, kind: sft, data: [a]}", "SFTConfig.data must be a string"),
    ("runs_dir: [x]", "{name: a, kind: cold_start}", "recipe key 'runs_dir' must be a string"),
    ("name: ok", "{name: a, kind: eval, models: [5]}", "EvalConfig.models must be a list of strings"),
    ("name: ok", "{name: a, kind: eval, models: [[base]]}", "EvalConfig.models must be a list of strings"),
    ("name: ok", "{name: a, kind: compete, sources: [{model: [x]}]}", "sources[0]: expected"),
    ("name: ok", "{name: a, kind: goal_directed, data: x.jsonl, augment: [[start]]}",
     "GoalDirectedConfig.augment must be a list of strings"),
])
def test_a_recipe_field_of_the_wrong_type_or_an_unsafe_name_is_a_one_line_error(header, stage, message, tmp_path,
                                                                               monkeypatch):
    (tmp_path / "x.jsonl").write_text('{"prompt": "p", "answer": "1", "completion": "c"}\n')
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path, f"{header}\nmodel: tiny-random\nstages: [{stage}]\n".replace("{", "{{").replace("}", "}}"))
    with pytest.raises(R1labError) as error:
        load_recipe(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages:\n  - {name: a, kind: [grpo\n")
    with pytest.raises(R1labError) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}, line ") and ", column " in str(error.value)
    assert "\n" not in str(error.value)


WRONG_VALUES = [[], ["x"], [[1]], {"a": 1}, {"a": [1]}, None, math.nan, math.inf, -1, 10 ** 30, True, "x" * 500, 1.5]


def test_random_wrong_values_in_every_field_of_every_stage_kind_give_a_message_never_a_traceback(tmp_path, monkeypatch):
    """The fuzz: each field of each stage kind, through a recipe, with values of every wrong shape."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"prompt": "p", "answer": "1", "completion": "c"}\n')
    rng = random.Random(0)
    tried = 0
    for kind, (cls, _) in KINDS.items():
        for f in dataclasses.fields(cls):
            if f.name == "out":
                continue
            for value in rng.sample(WRONG_VALUES, 6):
                stage = {"name": "s", "kind": kind, f.name: value, **({"data": "x.jsonl"} if kind in ("sft", "goal_directed")
                                                                       and f.name != "data" else {})}
                path = tmp_path / "fuzz.yaml"
                path.write_text(yaml.safe_dump({"name": "fuzz", "runs_dir": str(tmp_path / "runs"), "model": "tiny-random",
                                                "stages": [stage]}))
                tried += 1
                try:
                    load_recipe(path)
                except R1labError as e:
                    assert "\n" not in str(e) and str(e)
    assert tried > 300 and not (tmp_path / "runs").exists()


# 7. checks before writes
def test_sft_with_bad_data_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": 5}\n')
    code, err = run_cli(["train", "sft", "--model", "tiny-random", "--data", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "line 1" in err and not (tmp_path / "o").exists()


def test_grpo_with_bad_task_rows_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1", "answer": "2"}\n' * 3 + '{"prompt": 5, "answer": "2"}\n')
    code, err = run_cli(["train", "grpo", "--model", "tiny-random", "--task", f"jsonl:{bad}", "--out", str(tmp_path / "o"),
                         "--steps", "2"], capsys)
    assert code == 2 and not (tmp_path / "o").exists()


def test_eval_of_a_missing_model_leaves_no_out_folder(tmp_path, capsys):
    code, err = run_cli(["eval", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "nonexistent" in err and not (tmp_path / "o").exists()


# 8. one writer per folder; workers die with their launcher
HOLDER = "from r1lab.runlock import lock_folder; import sys, time; lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "sft"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(["train", "sft", "--model", "tiny-random", "--data", str(cold_data(tmp_path)),
                             "--out", str(out)], capsys)
        assert code == 2 and f"in use by another r1lab run (pid {holder.pid} " in err
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    main(["train", "sft", "--model", "tiny-random", "--data", str(tmp_path / "cold.jsonl"), "--batch-size", "8",
          "--out", str(out)])                          # the kernel dropped the dead holder's lock
    assert (out / "checkpoint").is_dir()


PARENT = """
import subprocess, sys, time
from r1lab.runlock import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_launched_child_dies_when_its_launcher_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):                                # the kernel delivers SIGKILL to the child at once
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its launcher")


# 9. SFT rows longer than max_length
def test_sft_skips_rows_longer_than_max_length_and_counts_them(tmp_path, capsys):
    data = cold_data(tmp_path, 16)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[0]["prompt"] = "x" * 50_000_000                 # 50 MB: skipped before it is tokenized
    rows[1]["completion"] = "1 + 1 " * 400
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from r1lab.algorithms.sft import train_sft
    cfg = load_config(SFTConfig, None, {"model": "tiny-random", "data": str(data), "max_length": 300, "batch_size": 7,
                                        "micro_batch_size": 7, "out": str(tmp_path / "o")})
    train_sft(cfg)
    assert "skipped 2 of 16 rows longer than max_length = 300 tokens" in capsys.readouterr().out
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 2     # 14 rows: 2 batches of 7
    with pytest.raises(R1labError, match="every row is longer than max_length = 5"):
        train_sft(dataclasses.replace(cfg, max_length=5, out=str(tmp_path / "o2")))


def test_every_int_field_named_max_length_has_a_range():
    hints = typing.get_type_hints(SFTConfig)
    assert hints["max_length"] is int
    with pytest.raises(R1labError, match=r"SFTConfig.max_length must be in \[0, inf\)"):
        load_config(SFTConfig, None, {"max_length": -1})
