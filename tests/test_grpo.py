import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lab import R1labError
from r1lab.algorithms.grpo import disable_dropout, importance_sampling_on, train_grpo
from r1lab.config import GRPOConfig, load_config
from r1lab.hardware import Precision
from r1lab.models import load_model
from tests.learnable import half_constant, low_ids, odd, register

TINY = dict(model="tiny-random", prompts_per_step=2, samples_per_prompt=4, micro_batch_size=4,
            max_new_tokens=12, beta=0.04, learning_rate=1e-3)
FP32 = dict(mixed_precision="no", rollout_dtype="float32")      # the sampler is the trainer's own computation


def config(tmp_path, **overrides):
    return load_config(GRPOConfig, None, {**TINY, "out": str(tmp_path / "run"), **overrides})


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def always_one(completion, problem):
    return 1.0


@pytest.fixture(autouse=True)
def learnable_reward(monkeypatch):
    register(monkeypatch, low_ids, always_one, half_constant)


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


def test_full_determinism_turns_on_deterministic_kernels(tmp_path):
    """TRL's `full_determinism`: what made the resume and skip tests exact on a GPU (docs/gpu.md)."""
    torch.use_deterministic_algorithms(False)
    train_grpo(config(tmp_path, steps=1, full_determinism=True))
    assert torch.are_deterministic_algorithms_enabled()


class Killed(Exception):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    settings = dict(steps=4, save_every=2, rewards="low_ids,accuracy", updates_per_batch=2)
    straight = train_grpo(config(tmp_path / "a", **settings))

    import r1lab.algorithms.grpo as grpo
    real_end, saves = grpo.end_step, []

    def save_then_die(par, out, step, steps, save_every, *args):
        real_end(par, out, step, steps, save_every, *args)
        if (step + 1) % save_every == 0 or step + 1 == steps:           # it saved: the kill comes right after
            saves.append(1)
            raise Killed
    monkeypatch.setattr(grpo, "end_step", save_then_die)
    with pytest.raises(Killed):
        train_grpo(config(tmp_path / "b", **settings))
    monkeypatch.setattr(grpo, "end_step", real_end)
    with pytest.raises(R1labError, match="--resume"):
        train_grpo(config(tmp_path / "b", **settings))
    resumed = train_grpo(config(tmp_path / "b", **settings), resume=True)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
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


def test_metrics_also_go_to_tensorboard_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    out = train_grpo(config(tmp_path, steps=1, rewards="low_ids", report_to="tensorboard")).parent
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
    from r1lab.algorithms import losses
    real_loss, calls = losses.grpo_loss, []

    def grpo_loss(logprobs, old, ref, advantages, mask, **kwargs):
        loss, m = real_loss(logprobs, old, ref, advantages, mask, **kwargs)
        calls.append({"loss": loss.item(), "metrics": m, "tokens": int(mask.sum()), "advantages": advantages.tolist(),
                      "kept": mask.any(-1).tolist(), **kwargs})
        return loss, m
    monkeypatch.setitem(losses.POLICY_LOSSES, "grpo", grpo_loss)
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
    # the ratio's statistics, second pass only; in the first, pi_old (the scoring pass) is the same computation
    assert row["ratio_mean"] == pytest.approx(token_mean(calls[4:], "ratio_mean"), rel=1e-6)
    assert row["ratio_min"] == min(c["metrics"]["ratio_min"] for c in calls[4:] if "ratio_min" in c["metrics"])
    assert row["ratio_max"] == max(c["metrics"]["ratio_max"] for c in calls[4:] if "ratio_max" in c["metrics"])
    assert row["ratio_min"] < 1 < row["ratio_max"]
    first = [c["metrics"] for c in calls[:4] if "ratio_min" in c["metrics"]]
    assert first and all(m["ratio_min"] == pytest.approx(1, abs=1e-6) == m["ratio_max"] for m in first)


def test_clip_fraction_and_ratio_are_absent_with_one_update_per_batch(tmp_path):
    row = metrics(train_grpo(config(tmp_path, steps=1, rewards="low_ids", updates_per_batch=1)).parent)[0]
    assert "kl" in row and not {"clip_fraction", "ratio_mean", "ratio_min", "ratio_max"} & set(row)   # the ratio is 1


def test_warmup_is_counted_in_steps_not_optimiser_updates(tmp_path):
    out = train_grpo(config(tmp_path, steps=3, rewards="low_ids", updates_per_batch=2, warmup_steps=2)).parent
    # 2 warm-up steps = 4 updates at 1/4, 2/4, 3/4, 4/4 of the lr; the row logs the lr after the step's updates
    assert [r["learning_rate"] for r in metrics(out)] == pytest.approx([0.75e-3, 1e-3, 1e-3], rel=1e-9)


def test_the_fused_optimiser_takes_the_steps_plain_adamw_takes():
    from r1lab.training import fusable, make_optimizer
    torch.manual_seed(0)
    mine, plain = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    plain.load_state_dict(mine.state_dict())
    optimizer, _ = make_optimizer(mine, 1e-2, 0.1, 0, "constant", 3)
    reference = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    assert optimizer.defaults["fused"]
    for _ in range(3):
        x = torch.randn(5, 8)
        for model, opt in ((mine, optimizer), (plain, reference)):
            model(x).square().sum().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(mine.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not fusable([]) and not fusable([torch.zeros(2, dtype=torch.long)])


@pytest.mark.parametrize("mode", ["sample", "constant"])
def test_mask_truncated_divides_by_the_sequences_left_in_the_loss(tmp_path, monkeypatch, mode):
    shaped_rollouts(monkeypatch)
    calls = record_losses(monkeypatch)
    settings = dict(steps=1, rewards="low_ids", beta=0.0, mask_truncated=True, loss_aggregation=mode,
                    importance_sampling="off")        # weights on the tokens would change the hand-computed loss
    train_grpo(config(tmp_path / "skip", **settings))   # the truncated rows get no pass, the denominators count them
    skipping = calls[:]
    calls.clear()
    train_grpo(config(tmp_path, skip_zero_advantage=False, **settings))
    assert all(all(c["kept"]) for c in skipping) and len(skipping) == 1
    assert skipping[0]["loss"] == pytest.approx(sum(c["loss"] for c in calls), rel=1e-6)
    # 2 groups of 4, members 1 and 3 stopped: 4 of 8 sequences stay in the loss, with 5 + 9 tokens per group
    assert [(c["batch_sequences"], c["batch_tokens"]) for c in calls] == [(4, 28), (4, 28)]
    # the ratio is 1 and beta 0: each kept token's loss is -A_i, so the whole-batch loss is -sum A_i / 4 over the kept
    # sequences (sample), or -sum A_i |o_i| / (4 * 12) (constant, L = max_new_tokens = 12)
    kept = [(a, n) for c in calls for a, k, n in zip(c["advantages"], c["kept"], [3, 5, 7, 9]) if k]
    assert [n for _, n in kept] == [5, 9, 5, 9]
    expected = -sum(a for a, _ in kept) / 4 if mode == "sample" else -sum(a * n for a, n in kept) / (4 * 12)
    assert sum(c["loss"] for c in calls) == pytest.approx(expected, rel=1e-6)


def test_sampler_and_trainer_agree_when_they_share_dtype_and_weights(tmp_path):
    row = metrics(train_grpo(config(tmp_path, steps=1, rewards="low_ids", **FP32)).parent)[0]
    assert row["sampler_mismatch"] < 1e-5 and 0 <= row["sampler_kl"] < 1e-5
    assert "is_weight" not in row                                   # auto: off, nothing to correct


def test_a_bf16_sampler_is_measured_and_corrected(tmp_path, monkeypatch):
    calls = record_losses(monkeypatch)
    row = metrics(train_grpo(config(tmp_path, steps=1, rewards="low_ids", mixed_precision="no",
                                    rollout_dtype="bfloat16")).parent)[0]
    assert row["sampler_mismatch"] > 1e-4 and row["sampler_kl"] > 0          # a bf16 copy samples, fp32 trains
    weights = torch.cat([c["is_weights"][c["is_weights"] > 0] for c in calls])
    assert row["is_weight"] == pytest.approx(weights.mean().item(), rel=1e-5) and 0.5 < row["is_weight"] < 1.5
    assert weights.max() <= 2.0 and 0 <= row["is_capped"] < 0.1 and len(set(weights.tolist())) > 1


@pytest.mark.parametrize("choice, engine, dtype, mixed, rollout, on", [
    ("auto", "hf", "float32", "no", "float32", False),       # the sampler is the policy itself
    ("auto", "hf", "bfloat16", "no", "bfloat16", False),
    ("auto", "hf", "float32", "no", "bfloat16", True),        # a bf16 copy samples, fp32 trains
    ("auto", "hf", "float32", "bf16", "bfloat16", True),      # bf16 autocast trains (fp32 norms), a bf16 copy samples
    ("auto", "hf", "float32", "bf16", "float32", True),
    ("auto", "vllm", "float32", "no", "float32", True),
    ("off", "vllm", "float32", "bf16", "bfloat16", False),
    ("on", "hf", "float32", "no", "float32", True),
])
def test_importance_sampling_auto_is_on_exactly_when_the_sampler_differs(choice, engine, dtype, mixed, rollout, on):
    chosen, why = importance_sampling_on(choice, engine, dtype, Precision(mixed, rollout, "test"))
    assert chosen == on and (choice != "auto" or why.startswith("auto"))


def record_rollouts(monkeypatch) -> list[list]:
    """The problems of every rollout call of a run, in order."""
    import r1lab.algorithms.grpo as grpo
    real_rollout, problems = grpo.rollout, []

    def rollout(engine, batch_problems, *args, **kwargs):
        problems.append(list(batch_problems))
        return real_rollout(engine, batch_problems, *args, **kwargs)
    monkeypatch.setattr(grpo, "rollout", rollout)
    return problems


def test_dynamic_sampling_stops_at_the_cap_and_trains_on_what_it_has(tmp_path, monkeypatch):
    rounds, calls = record_rollouts(monkeypatch), record_losses(monkeypatch)
    rows = metrics(train_grpo(config(tmp_path, steps=2, rewards="always_one", dynamic_sampling=True,
                                     dynamic_sampling_max_draws=3)).parent)
    assert len(rounds) == 6 and len({p.id for r in rounds for p in r}) == 12      # 3 rounds a step, fresh problems
    for row in rows:                     # 6 groups drawn, none with a spread: the first 2 are trained on (KL only)
        assert row["dynamic_draws"] == 3 and row["dynamic_filtered"] == pytest.approx(4 / 6) and row["zero_std_groups"] == 1
        assert row["reward"] == row["reward_drawn"] == 1.0
    assert [len(c["advantages"]) for c in calls] == [4, 4, 4, 4] and not any(a for c in calls for a in c["advantages"])


def test_dynamic_sampling_trains_only_on_groups_with_a_spread(tmp_path, monkeypatch):
    rounds = record_rollouts(monkeypatch)
    rows = metrics(train_grpo(config(tmp_path, steps=4, rewards="half_constant", dynamic_sampling=True,
                                     dynamic_sampling_max_draws=5)).parent)
    for row in rows:
        step_rounds, rounds = rounds[:row["dynamic_draws"]], rounds[row["dynamic_draws"]:]
        spread = [sum(map(odd, r)) for r in step_rounds]
        assert sum(spread[:-1]) < 2 <= sum(spread)                   # stopped at the first round that filled the step
        assert row["zero_std_groups"] == 0 and row["dynamic_filtered"] == pytest.approx(1 - 2 / (2 * len(step_rounds)))
    assert not rounds and any(r["dynamic_draws"] > 1 for r in rows)
    assert "dynamic_draws" not in metrics(train_grpo(config(tmp_path / "plain", steps=1, rewards="low_ids")).parent)[0]


def test_dynamic_sampling_is_refused_with_several_processes(tmp_path, monkeypatch):
    import r1lab.algorithms.grpo as grpo

    class TwoProcesses(grpo.Parallel):
        def __init__(self, fsdp: bool = False):
            super().__init__(fsdp)
            self.world = 2
    monkeypatch.setattr(grpo, "Parallel", TwoProcesses)
    with pytest.raises(R1labError, match="dynamic_sampling runs in one process"):
        train_grpo(config(tmp_path, dynamic_sampling=True))


@pytest.mark.parametrize("mu", [1, 2])
def test_rows_whose_gradient_is_zero_get_no_pass_and_the_update_is_the_same(tmp_path, monkeypatch, mu):
    """beta = 0: every row of a group with equal rewards has advantage 0 and adds exactly nothing to eq. 1.
    Without their passes the parameters are the same, with weight decay on and a step where no row moves
    the gradient at all (AdamW must still see zero gradients there: its momentum and decay move weights)."""
    settings = dict(steps=8, prompts_per_step=2, micro_batch_size=2, rewards="half_constant", beta=0.0, learning_rate=1e-2,
                    weight_decay=0.1, updates_per_batch=mu, **FP32)
    calls = record_losses(monkeypatch)
    skipped = train_grpo(config(tmp_path / "skip", **settings))
    skipped_calls = calls[:]
    calls.clear()
    full = train_grpo(config(tmp_path / "full", skip_zero_advantage=False, **settings))
    shares = [row["rows_trained"] for row in metrics(skipped.parent)]
    assert 0 in shares and any(0 < s < 1 for s in shares), shares            # the run has both kinds of step
    assert all(row["rows_trained"] == 1 for row in metrics(full.parent))
    assert all(a != 0 for c in skipped_calls for a in c["advantages"])
    assert len(skipped_calls) == sum(shares) * 8 // 2 * mu < len(calls)      # micro-batches of 2 rows, mu passes
    a, b = load_file(skipped / "model.safetensors"), load_file(full / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert any(not torch.equal(a[k], load_model("tiny-random")[0].state_dict()[k]) for k in a)


def test_rloo_advantages_and_sequence_ratios_reach_the_loss(tmp_path, monkeypatch):
    calls = record_losses(monkeypatch)
    out = train_grpo(config(tmp_path, steps=1, rewards="low_ids", advantage="rloo", ratio_level="sequence",
                            updates_per_batch=2, epsilon=3e-4, epsilon_high=4e-4)).parent
    rewards = [json.loads(line)["reward"] for line in (out / "samples.jsonl").read_text().splitlines()]   # group 0
    expected = [r - (sum(rewards) - r) / 3 for r in rewards]
    assert calls[0]["advantages"] == pytest.approx(expected, rel=1e-5, abs=1e-6) and calls[0]["ratio_level"] == "sequence"
    assert metrics(out)[0]["clip_fraction"] > 0                   # GSPO's clip range is tiny


def with_dropout(loader, loaded: list):
    """`loader` whose models get attention dropout 0.5 (the built-in models have none)."""
    def load(*args, **kwargs):
        model, tokenizer = loader(*args, **kwargs)
        for module in model.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = 0.5
        loaded.append(model)
        return model, tokenizer
    return load


def test_grpo_trains_the_policy_without_dropout(tmp_path, monkeypatch):
    import r1lab.algorithms.grpo as grpo
    loaded = []
    monkeypatch.setattr(grpo, "load_policy", with_dropout(grpo.load_policy, loaded))
    train_grpo(config(tmp_path, steps=1, rewards="low_ids"))
    assert [m.attention_dropout for m in loaded[0].modules() if hasattr(m, "attention_dropout")] == [0.0, 0.0]


def test_disable_dropout_zeroes_every_dropout():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32))   # pdrop 0.1: nn.Dropout
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=2, vocab_size=50, attention_dropout=0.5))   # read in forward
    ids = torch.arange(20)[None]
    for model in (gpt2, llama):
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)
        disable_dropout(model)
        assert torch.equal(model(ids).logits, model(ids).logits)                 # training mode, yet deterministic
        assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert any(isinstance(m, torch.nn.Dropout) for m in gpt2.modules())
    assert (gpt2.config.resid_pdrop, gpt2.config.attn_pdrop, gpt2.config.embd_pdrop) == (0, 0, 0)
    assert llama.config.attention_dropout == 0


def test_validation_problems_are_held_out_of_training_and_scored_greedily(tmp_path):
    """validation.jsonl has the greedy accuracy before the first step, every validate_every steps and after
    the last; its problems are never trained on; `r1lab report` plots it."""
    from r1lab.cli import main
    from r1lab.tasks import get_task
    out = tmp_path / "run"
    main(["train", "grpo", "--model", "tiny-random", "--steps", "3", "--prompts-per-step", "2", "--samples-per-prompt", "2",
          "--micro-batch-size", "4", "--max-new-tokens", "8", "--validation-problems", "5", "--validate-every", "2",
          "--sample-every", "1", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3] and all(0.0 <= r["val_accuracy"] <= 1.0 for r in rows)
    held_out = {p.prompt for p in get_task("arithmetic").problems("train", 3 * 2 + 5, 0)[-5:]}
    trained = {json.loads(line)["prompt"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert trained and not trained & held_out
    main(["report", str(out)])
    assert (out / "validation.png").exists()
