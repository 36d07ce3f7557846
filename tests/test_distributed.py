"""Data parallel (DDP) and sharded (FSDP2) training: two gloo processes end with the parameters of one
process that saw the same global batch (r1lab/distributed.py says why this holds: whole groups,
per-prompt random streams, global loss denominators)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
GRPO = ["train", "grpo", "--model", "tiny-random", "--steps", "3", "--prompts-per-step", "4", "--samples-per-prompt", "4",
        "--micro-batch-size", "4", "--max-new-tokens", "12", "--learning-rate", "1e-2", "--beta", "0.04",
        "--updates-per-batch", "2", "--loss-aggregation", "token", "--rewards", "tests.learnable:low_ids",
        "--mixed-precision", "no", "--rollout-dtype", "float32"]   # fp32: equal up to summation order on every CPU


def accelerate(processes: int) -> list[str]:
    """`accelerate launch` with N processes: torchrun (--multi_gpu) even on CPUs, where they use gloo."""
    return [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if processes > 1 else []),
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(processes: int, args: list[str], out: Path) -> Path:
    command = [*accelerate(processes), "-m", "r1lab", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "checkpoint"


def assert_same_parameters(a: Path, b: Path, changed_from=None):
    """Within 1e-4: 1% of one Adam step at lr 1e-2 (Adam magnifies float noise in near-zero gradients;
    a loss missing the world-size factor is off by 5e-2)."""
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    worst = max((first[k] - second[k]).abs().max().item() for k in first)
    assert worst < 1e-4, f"parameters differ by up to {worst}"
    if changed_from is not None:
        assert any(not torch.equal(changed_from[k], first[k]) for k in first), "training did not move the parameters"


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_in_grpo(tmp_path):
    from r1lab.models import load_model
    one = launch(1, GRPO, tmp_path / "one")
    two = launch(2, GRPO, tmp_path / "two")
    assert_same_parameters(one, two, changed_from=load_model("tiny-random")[0].state_dict())
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert (a["processes"], b["processes"]) == (1, 2)
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-9)          # the same completions were sampled
        assert a["completion_length"] == b["completion_length"]
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-8)
    assert not (tmp_path / "two" / "checkpoint" / "rank1").exists()


@pytest.mark.slow
def test_processes_that_skip_different_rows_still_match_one_that_skips_none(tmp_path):
    """beta = 0 and a reward that leaves about half the groups all-equal: each process leaves out its own
    zero-advantage rows, so the processes run different numbers of passes (one with no row runs a
    zero-weight row; sharded, each pads to the most). The parameters are one process's with every row."""
    args = [{"0.04": "0", "tests.learnable:low_ids": "tests.learnable:half_constant"}.get(a, a) for a in GRPO]
    args += ["--steps", "4", "--weight-decay", "0.1"]
    one = launch(1, args + ["--skip-zero-advantage", "false"], tmp_path / "one")
    assert all(row["rows_trained"] == 1 for row in rows(tmp_path / "one"))
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp", "true"])):
        assert_same_parameters(one, launch(2, args + extra, tmp_path / name))
        shares = [row["rows_trained"] for row in rows(tmp_path / name)]
        assert any(0 < share < 1 for share in shares), shares


@pytest.mark.slow
def test_prompts_that_do_not_divide_among_processes_are_refused(tmp_path):
    command = [*accelerate(2), "-m", "r1lab", *GRPO,
               "--prompts-per-step", "3", "--micro-batch-size", "3", "--out", str(tmp_path / "x")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "must divide by the number of processes (2)" in done.stderr


@pytest.mark.slow
def test_two_processes_match_one_in_sft_and_compete(tmp_path):
    from r1lab.cold_start import write_cold_start
    data = tmp_path / "cold.jsonl"
    write_cold_start("arithmetic", 16, str(data), "r1_zero", 0)
    sft = ["train", "sft", "--model", "tiny-random", "--data", str(data), "--batch-size", "8", "--micro-batch-size", "2",
           "--learning-rate", "1e-3", "--mixed-precision", "no"]
    assert_same_parameters(launch(1, sft, tmp_path / "sft1"), launch(2, sft, tmp_path / "sft2"))
    assert rows(tmp_path / "sft1")[-1]["loss"] == pytest.approx(rows(tmp_path / "sft2")[-1]["loss"], rel=1e-5)
    assert_same_parameters(tmp_path / "sft1" / "checkpoint", launch(2, sft + ["--fsdp", "true"], tmp_path / "sft2_sharded"))
    compete = ["train", "compete", "--model", "tiny-random", "--rounds", "2", "--prompts-per-step", "4",
               "--samples-per-prompt", "4", "--micro-batch-size", "4", "--max-new-tokens", "12", "--learning-rate", "1e-2",
               "--rewards", "tests.learnable:low_ids", "--mixed-precision", "no", "--rollout-dtype", "float32"]
    one, two = launch(1, compete, tmp_path / "c1"), launch(2, compete, tmp_path / "c2")
    assert_same_parameters(one, two)
    assert [r["imitated"] for r in rows(tmp_path / "c1")] == [r["imitated"] for r in rows(tmp_path / "c2")]
    assert_same_parameters(one, launch(2, compete + ["--fsdp", "true"], tmp_path / "c2_sharded"))


@pytest.mark.slow
def test_a_recipe_runs_its_training_stage_in_two_processes_and_the_rest_in_one(tmp_path):
    """`r1lab run RECIPE --num-processes 2`: the SFT stage in 2 gloo processes, cold start and eval here;
    run again, every finished stage is skipped."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
name: np2
runs_dir: {tmp_path / 'runs'}
model: tiny-random
stages:
  - {{name: cold, kind: cold_start, n: 8}}
  - {{name: sft, kind: sft, batch_size: 4, micro_batch_size: 2, learning_rate: 1.0e-3, mixed_precision: "no"}}
  - {{name: eval, kind: eval, samples: 1, problems: 2, max_new_tokens: 4}}
""")
    command = [sys.executable, "-m", "r1lab", "run", str(recipe), "--num-processes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = tmp_path / "runs" / "np2"
    assert [row["processes"] for row in rows(runs / "sft")] == [2, 2]
    assert json.loads((runs / "eval" / "eval.json").read_text())["models"].keys() == {"tiny-random", str(runs / "sft" / "checkpoint")}
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("finished earlier, skipped") == 3


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, r"FSDP version 1; r1lab shards with FSDP2 only"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, r"DeepSpeed.*use FSDP2"),
])
def test_fsdp1_and_deepspeed_are_refused_even_where_accelerate_would_fall_back_to_ddp(monkeypatch, env, message):
    """On CPUs accelerate runs an FSDP config as DDP without a word; r1lab reads the launcher's environment."""
    from r1lab import R1labError
    from r1lab.distributed import Parallel
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(R1labError, match=message):
        Parallel()


def test_accelerates_fsdp2_config_means_r1lab_shards(monkeypatch):
    from r1lab.distributed import sharding_from_launcher
    assert not sharding_from_launcher()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert sharding_from_launcher()


@pytest.mark.slow
def test_two_sharded_processes_match_one_in_grpo_and_resume_either_way(tmp_path):
    """FSDP2 on 2 gloo processes: the same parameters, rewards and KL as one unsharded process (beta > 0, so
    the reference model is sharded too; mu = 2, so the scoring pass runs through the sharded module). A
    checkpoint moves between sharded and unsharded runs: 2 steps in one kind, the 3rd resumed in the other."""
    from r1lab.models import load_model
    fsdp, two_steps = ["--fsdp", "true"], ["--steps", "2"]
    resume = ["--steps", "3", "--resume", "--allow-config-change"]
    one = launch(1, GRPO, tmp_path / "one")
    two = launch(2, GRPO + fsdp, tmp_path / "two")
    assert_same_parameters(one, two, changed_from=load_model("tiny-random")[0].state_dict())
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert (a["processes"], b["processes"]) == (1, 2)
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-9)          # the rollout copy had the same weights
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-8)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert b["state_gb"] == pytest.approx(a["state_gb"] / 2, rel=0.01)  # each process holds half the state
    assert load_file(two / "model.safetensors").keys() == load_file(one / "model.safetensors").keys()   # tied: once
    launch(2, GRPO + fsdp + two_steps, tmp_path / "sharded_then_not")
    assert_same_parameters(one, launch(1, GRPO + resume, tmp_path / "sharded_then_not"))
    launch(1, GRPO + two_steps, tmp_path / "not_then_sharded")
    assert_same_parameters(one, launch(2, GRPO + fsdp + resume, tmp_path / "not_then_sharded"))
    assert_same_parameters(one, launch(1, GRPO + fsdp, tmp_path / "one_sharded"))    # a process group of one


@pytest.mark.slow
def test_lora_sharded_over_two_processes_matches_one_process(tmp_path):
    """LoRA under FSDP2 (beta > 0: pi_ref is the sharded policy with its adapters disabled): the merged
    model and the adapter as one unsharded process trains them."""
    lora = GRPO + ["--lora-rank", "4"]
    one, two = launch(1, lora, tmp_path / "one"), launch(2, lora + ["--fsdp", "true"], tmp_path / "two")
    assert_same_parameters(one, two)
    a, b = (load_file(folder / "adapter" / "adapter_model.safetensors") for folder in (one, two))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.slow
def test_fsdp_with_the_vllm_engine_is_refused(tmp_path):
    command = [sys.executable, "-m", "r1lab", *GRPO, "--fsdp", "true", "--engine", "vllm", "--out", str(tmp_path / "x")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "fsdp rolls out with the hf engine only" in done.stderr
