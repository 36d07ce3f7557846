import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lab import R1labError
from r1lab.algorithms.grpo import train_grpo
from r1lab.config import GRPOConfig, load_config
from r1lab.models import load_model
from r1lab.rewards import REWARDS
from tests.learnable import low_ids

TINY = dict(model="tiny-random", prompts_per_step=2, samples_per_prompt=4, micro_batch_size=4,
            max_new_tokens=12, beta=0.04, learning_rate=1e-3)


def config(tmp_path, **overrides):
    return load_config(GRPOConfig, None, {**TINY, "out": str(tmp_path / "run"), **overrides})


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def learnable_reward(monkeypatch):
    monkeypatch.setitem(REWARDS, "low_ids", low_ids)


def test_smoke_parameters_change_and_files_appear(tmp_path):
    checkpoint = train_grpo(config(tmp_path, steps=2, rewards="low_ids", updates_per_batch=2))
    before, _ = load_model("tiny-random")
    after = load_file(checkpoint / "model.safetensors")
    assert any(not torch.equal(before.state_dict()[k], after[k]) for k in after)
    rows = metrics(checkpoint.parent)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "kl", "clip_fraction", "entropy", "grad_norm", "completion_length", "truncated",
                "zero_std_groups", "sample_tokens_per_s", "train_tokens_per_s", "learning_rate"):
        assert key in rows[0]
    assert (checkpoint.parent / "samples.jsonl").read_text()


def test_reward_rises_on_a_learnable_reward(tmp_path):
    out = train_grpo(config(tmp_path, steps=30, rewards="low_ids", beta=0.0, learning_rate=1e-2,
                            prompts_per_step=4, samples_per_prompt=8, micro_batch_size=16, save_every=100)).parent
    rewards = [r["reward"] for r in metrics(out)]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards


def test_lora_trains_adapters_and_uses_the_base_as_reference(tmp_path):
    checkpoint = train_grpo(config(tmp_path, steps=1, lora_rank=4, rewards="low_ids"))
    assert (checkpoint / "adapter" / "adapter_config.json").is_file()
    model, _ = load_model(str(checkpoint))              # the merged model loads in plain transformers
    assert type(model).__name__ == "LlamaForCausalLM"
    assert metrics(checkpoint.parent)[0]["kl"] == pytest.approx(0.0, abs=1e-6)   # first step: policy == base


class Killed(Exception):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    settings = dict(steps=4, save_every=2, rewards="low_ids,accuracy", updates_per_batch=2)
    straight = train_grpo(config(tmp_path / "a", **settings))

    import r1lab.algorithms.grpo as grpo
    real_save, saves = grpo.save_checkpoint, []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        raise Killed
    monkeypatch.setattr(grpo, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_grpo(config(tmp_path / "b", **settings))
    monkeypatch.setattr(grpo, "save_checkpoint", real_save)
    with pytest.raises(R1labError, match="--resume"):
        train_grpo(config(tmp_path / "b", **settings))
    resumed = train_grpo(config(tmp_path / "b", **settings), resume=True)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["step"] for r in metrics(resumed.parent)] == [1, 2, 3, 4]


@pytest.mark.parametrize("overrides, message", [
    ({"samples_per_prompt": "1"}, "must be >= 2"),
    ({"prompts_per_step": "3", "samples_per_prompt": "4", "micro_batch_size": "8"}, "does not divide"),
    ({"stepz": "3"}, "valid options: model"),
    ({"steps": "many"}, "option steps: expected int"),
    ({"rewards": "acuracy"}, "unknown reward"),
    ({"loss_aggregation": "mean"}, "loss_aggregation must be one of"),
])
def test_bad_configs_fail_before_any_model_loads(overrides, message):
    with pytest.raises(R1labError, match=message):
        load_config(GRPOConfig, None, overrides)


def test_yaml_config_and_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nbeta: 0.0\ntask_options: {operands: 2}\n")
    cfg = load_config(GRPOConfig, path, {"steps": "9"})
    assert cfg.steps == 9 and cfg.beta == 0.0 and cfg.task_options == {"operands": 2}
    path.write_text("bogus: 1\n")
    with pytest.raises(R1labError, match=r"c.yaml; valid options"):
        load_config(GRPOConfig, path)


def test_metrics_also_go_to_tensorboard_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    out = train_grpo(config(tmp_path, steps=1, rewards="low_ids")).parent
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
