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
    ({"steps": "many"}, r"GRPOConfig.steps must be an integer, got 'many'"),
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


def shaped_rollouts(monkeypatch):
    """Member j of each group keeps 3 + 2j tokens and finishes by "stop" if j is odd, "length" if even:
    micro-batches then hold different numbers of tokens, and mask_truncated drops half of each group."""
    import r1lab.algorithms.grpo as grpo
    real_rollout = grpo.rollout

    def rollout(*args, **kwargs):
        prompts, groups = real_rollout(*args, **kwargs)
        for group in groups:
            for j, c in enumerate(group):
                c.token_ids, c.logprobs = c.token_ids[:3 + 2 * j], c.logprobs[:3 + 2 * j]
                c.finish_reason = "stop" if j % 2 else "length"
        return prompts, groups
    monkeypatch.setattr(grpo, "rollout", rollout)


def record_losses(monkeypatch) -> list[dict]:
    """Every grpo_loss call of a run: its loss, metrics, tokens in the loss, advantages and keyword arguments."""
    import r1lab.algorithms.grpo as grpo
    real_loss, calls = grpo.grpo_loss, []

    def grpo_loss(logprobs, old, ref, advantages, mask, **kwargs):
        loss, m = real_loss(logprobs, old, ref, advantages, mask, **kwargs)
        calls.append({"loss": loss.item(), "metrics": m, "tokens": int(mask.sum()), "advantages": advantages.tolist(),
                      "kept": mask.any(-1).tolist(), **kwargs})
        return loss, m
    monkeypatch.setattr(grpo, "grpo_loss", grpo_loss)
    return calls


def token_mean(calls, key):
    return sum(c["metrics"][key] * c["tokens"] for c in calls) / sum(c["tokens"] for c in calls)


def test_kl_and_clip_fraction_are_token_weighted_and_clipping_skips_the_first_pass(tmp_path, monkeypatch):
    shaped_rollouts(monkeypatch)
    calls = record_losses(monkeypatch)
    out = train_grpo(config(tmp_path, steps=1, rewards="low_ids", updates_per_batch=2, micro_batch_size=2,
                            learning_rate=5e-2)).parent
    row = metrics(out)[0]
    assert len(calls) == 8                                          # mu = 2 passes of 4 micro-batches
    assert len({c["tokens"] for c in calls[:4]}) > 1                # micro-batches of different sizes
    assert row["kl"] == pytest.approx(token_mean(calls, "kl"), rel=1e-6)
    assert row["clip_fraction"] == pytest.approx(token_mean(calls[4:], "clip_fraction"), rel=1e-6)   # second pass only
    assert row["clip_fraction"] > 0 and all(c["metrics"]["clip_fraction"] == 0 for c in calls[:4])


def test_clip_fraction_is_absent_with_one_update_per_batch(tmp_path):
    row = metrics(train_grpo(config(tmp_path, steps=1, rewards="low_ids", updates_per_batch=1)).parent)[0]
    assert "clip_fraction" not in row and "kl" in row            # with mu = 1 the ratio is exactly 1: nothing can clip


def test_warmup_is_counted_in_steps_not_optimiser_updates(tmp_path):
    out = train_grpo(config(tmp_path, steps=3, rewards="low_ids", updates_per_batch=2, warmup_steps=2)).parent
    # 2 warm-up steps = 4 updates at 1/4, 2/4, 3/4, 4/4 of the lr; the row logs the lr after the step's updates
    assert [r["learning_rate"] for r in metrics(out)] == pytest.approx([0.75e-3, 1e-3, 1e-3], rel=1e-9)


@pytest.mark.parametrize("mode", ["sample", "constant"])
def test_mask_truncated_divides_by_the_sequences_left_in_the_loss(tmp_path, monkeypatch, mode):
    shaped_rollouts(monkeypatch)
    calls = record_losses(monkeypatch)
    train_grpo(config(tmp_path, steps=1, rewards="low_ids", beta=0.0, mask_truncated=True, loss_aggregation=mode))
    # 2 groups of 4, members 1 and 3 stopped: 4 of 8 sequences stay in the loss, with 5 + 9 tokens per group
    assert [(c["batch_sequences"], c["batch_tokens"]) for c in calls] == [(4, 28), (4, 28)]
    # the ratio is 1 and beta 0: each kept token's loss is -A_i, so the whole-batch loss is -sum A_i / 4 over the kept
    # sequences (sample), or -sum A_i |o_i| / (4 * 12) (constant, L = max_new_tokens = 12)
    kept = [(a, n) for c in calls for a, k, n in zip(c["advantages"], c["kept"], [3, 5, 7, 9]) if k]
    assert [n for _, n in kept] == [5, 9, 5, 9]
    expected = -sum(a for a, _ in kept) / 4 if mode == "sample" else -sum(a * n for a, n in kept) / (4 * 12)
    assert sum(c["loss"] for c in calls) == pytest.approx(expected, rel=1e-6)
