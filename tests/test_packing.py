"""Packed training rows (issue 31 item 3): a micro-batch as one unpadded row under a block mask gives the padded
layout's log-probs, entropies, losses and gradients, in GRPO (shared prompts, zero-advantage skip) and SFT."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from r1lab.algorithms import sequences
from r1lab.algorithms.sequences import CompletionLogits, pack_rows, packed_attention, pad_batch, token_logprobs
from r1lab.config import GRPOConfig, SFTConfig, load_config
from r1lab.models import load_model
from tests.learnable import half_constant, low_ids, register

TOLERANCE = 1e-5


def rows():
    """Two groups (prompts shared by consecutive rows), completions of 1 to 11 tokens: longer than gemma3's
    test window of 8 with their prompts, so the sliding layers' window bites."""
    prompts = [[5, 6, 7, 8], [5, 6, 7, 8], [9, 10], [9, 10], [9, 10]]
    completions = [[11, 12, 13], [14], [15, 16, 17, 18, 30, 31, 32, 33, 34, 35, 36], [19, 20], [21, 22, 23]]
    return prompts, completions


def test_the_packed_row_holds_each_prompt_once_and_each_completions_inputs():
    packed = pack_rows([[5, 6], [9]], [0, 0, 1], [[11, 12, 13], [14], [15, 16]], "cpu")
    assert packed["packed_ids"].tolist() == [[5, 6, 11, 12, 9, 15]]
    assert packed["packed_positions"].tolist() == [[0, 1, 2, 3, 0, 1]]
    assert packed["packed_segment"].tolist() == [0, 0, 0, 0, 1, 1]
    assert packed["packed_branch"].tolist() == [-1, -1, 0, 0, -1, 2]
    assert packed["packed_at"].tolist() == [1, 2, 3, 1, 4, 5]       # row-major over (B, C): 3 + 1 + 2 tokens


def model_as(name: str, attention: str):
    model, _ = load_model(name)
    model.config._attn_implementation = attention
    return model


@pytest.mark.parametrize("name", ["tiny-random", "tiny-random-gemma3"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("shared", [True, False])
def test_packed_logprobs_entropies_and_gradients_equal_the_padded(name, attention, shared):
    model = model_as(name, attention)
    padded, packed = (pad_batch(*rows(), pad_id=0, device="cpu", packed=p) for p in (False, True))
    real = padded["completion_mask"].bool()
    results = []
    for batch in (padded, packed):
        model.zero_grad()
        logprobs, entropy = CompletionLogits(model, shared)(batch, 0.7, with_entropy=True)     # (B, C)
        (torch.where(real, logprobs, 0.0).sum() / real.sum()).backward()     # a token mean, as the losses take
        results.append((logprobs, entropy, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (lp_a, ent_a, grad_a), (lp_b, ent_b, grad_b) = results
    assert (lp_a[real] - lp_b[real]).abs().max() < TOLERANCE
    assert (ent_a[real] - ent_b[real]).abs().max() < TOLERANCE
    assert (grad_a - grad_b).abs().max() < TOLERANCE and grad_a.abs().max() > 1e-2
    assert lp_b[~real].eq(0).all()                                      # padding: 0, no model output


def test_sliding_layers_get_their_window_and_full_layers_none():
    model = model_as("tiny-random-gemma3", "sdpa")
    masks = packed_attention(model, pad_batch(*rows(), pad_id=0, device="cpu", packed=True))
    assert set(masks) == {"sliding_attention", "full_attention"}
    full, sliding = masks["full_attention"][0, 0], masks["sliding_attention"][0, 0]   # (L, L)
    assert full.sum() > sliding.sum() and not (sliding & ~full).any()
    assert isinstance(packed_attention(model_as("tiny-random", "sdpa"), pad_batch(*rows(), 0, "cpu", packed=True)),
                      torch.Tensor)


def test_a_model_that_cannot_take_the_mask_runs_padded_with_the_same_results(monkeypatch):
    model = model_as("tiny-random", "sdpa")
    padded, packed = (pad_batch(*rows(), pad_id=0, device="cpu", packed=p) for p in (False, True))
    model.config._attn_implementation = "flash_attention_2"
    assert packed_attention(model, packed) is None
    model.config._attn_implementation = "sdpa"
    monkeypatch.setattr(sequences, "packed_attention", lambda model, batch: None)
    assert torch.equal(token_logprobs(model, packed)[0], token_logprobs(model, padded)[0])


def test_a_model_with_its_own_logits_keeps_them_when_packed(monkeypatch):
    """No plain LM head (a bias, a logit scale, LoRA): the model's own logits at the packed positions."""
    model = model_as("tiny-random", "sdpa")
    padded, packed = (pad_batch(*rows(), pad_id=0, device="cpu", packed=p) for p in (False, True))
    expected = token_logprobs(model, padded)[0]
    monkeypatch.setattr(sequences, "lm_head", lambda model: None)
    real = padded["completion_mask"].bool()
    assert (token_logprobs(model, packed)[0][real] - expected[real]).abs().max() < TOLERANCE


class Recorded:
    """Stands in for the optimiser and the scheduler: keeps each step's gradients, changes no parameter."""
    def __init__(self, model):
        self.model, self.grads = model, []

    def step(self):
        self.grads.append(torch.cat([p.grad.flatten() for p in self.model.parameters() if p.grad is not None]))

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


@pytest.mark.parametrize("settings", [dict(beta=0.04, updates_per_batch=2, rewards="low_ids"),
                                      dict(beta=0.0, updates_per_batch=1, rewards="half_constant")])
def test_a_grpo_step_packed_has_the_padded_losses_and_gradients(tmp_path, monkeypatch, settings):
    """The same drawn batch (completions cut to 3..9 tokens, so micro-batches mix lengths) through the step's
    phases, padded then packed: the same loss per pass, gradient per update, norm and token metrics."""
    from r1lab.algorithms import grpo_step, losses
    from r1lab.algorithms.grpo import draw_groups, setup
    register(monkeypatch, low_ids, half_constant)
    cfg = load_config(GRPOConfig, None, dict(model="tiny-random", prompts_per_step=4, samples_per_prompt=4,
                                             micro_batch_size=4, max_new_tokens=12, mixed_precision="no",
                                             rollout_dtype="float32", out=str(tmp_path / "run"), **settings))
    run = setup(cfg, False)[0]
    run.optimizer, run.scheduler = Recorded(run.model), type("NoSchedule", (), {"step": lambda self: None})()
    batch = grpo_step.draw(run, 0, draw_groups)
    for j, c in enumerate(batch.completions):
        c.token_ids, c.logprobs = c.token_ids[:3 + 2 * (j % 4)], c.logprobs[:3 + 2 * (j % 4)]
    real_loss, loss_values = losses.POLICY_LOSSES["grpo"], []

    def recorded_loss(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        loss_values.append(loss.item())
        return loss, metrics
    monkeypatch.setitem(losses.POLICY_LOSSES, "grpo", recorded_loss)
    real_outputs, packed_forwards = sequences._outputs_packed, []
    monkeypatch.setattr(sequences, "_outputs_packed", lambda *args: packed_forwards.append(1) or real_outputs(*args))
    outcomes = []
    for packed in (False, True):
        run.cfg = dataclasses.replace(cfg, packed=packed)
        assert len(packed_forwards) == 0
        loss_values.clear()
        run.optimizer.grads = []
        passes = grpo_step.micro_batches(run, batch)
        stats = grpo_step.StepStats()
        scores = grpo_step.score_passes(run, batch, passes, stats)
        norm = grpo_step.update(run, batch, passes, scores, stats, 0)
        outcomes.append((loss_values[:], run.optimizer.grads, norm, {k: v[0] / v[1] for k, v in stats.means.items()},
                         len(passes)))
    (loss_a, grads_a, norm_a, means_a, n_a), (loss_b, grads_b, norm_b, means_b, n_b) = outcomes
    assert n_a == n_b > 0 and len(grads_a) == len(grads_b) == cfg.updates_per_batch
    assert len(packed_forwards) >= n_b * cfg.updates_per_batch                # the packed passes ran packed
    if cfg.beta == 0:
        assert n_a < len(batch.completions) // cfg.micro_batch_size          # the zero-advantage skip kept working
    assert max(abs(a - b) for a, b in zip(loss_a, loss_b)) < TOLERANCE
    assert all((a - b).abs().max() < TOLERANCE for a, b in zip(grads_a, grads_b))
    assert abs(norm_a - norm_b) < TOLERANCE and norm_a > 0
    assert means_a.keys() == means_b.keys() and all(abs(means_a[k] - means_b[k]) < TOLERANCE for k in means_a)


def test_grpo_trains_end_to_end_packed(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from r1lab.algorithms.grpo import train_grpo
    register(monkeypatch, low_ids)
    cfg = load_config(GRPOConfig, None, dict(model="tiny-random", steps=2, prompts_per_step=2, samples_per_prompt=4,
                                             micro_batch_size=4, max_new_tokens=12, rewards="low_ids",
                                             learning_rate=1e-3, packed=True, out=str(tmp_path / "run")))
    checkpoint = train_grpo(cfg)
    after, before = load_file(checkpoint / "model.safetensors"), load_model("tiny-random")[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after)
    rows = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0 and "kl" in r for r in rows)


def sft_rows(path: Path) -> str:
    """SFT data whose completions differ in length (1 to 15 words)."""
    path.write_text("".join(json.dumps({"prompt": f"say {n} words", "completion": " ".join(["word"] * n)}) + "\n"
                            for n in range(1, 16, 2)))
    return str(path)


def test_an_sft_step_packed_has_the_padded_loss_and_gradient(tmp_path):
    """SFT's micro-batch (distinct prompts, each row run whole: shared=False) as train_sft builds it."""
    from r1lab.algorithms.losses import sft_loss
    from r1lab.algorithms.sft import load_pairs, tokenize_pairs
    from r1lab.templates import get_template
    model, tokenizer = load_model("tiny-random")
    pairs = load_pairs(sft_rows(tmp_path / "d.jsonl"))
    examples, _ = tokenize_pairs(pairs, tokenizer, get_template("r1_zero"), [], 512)
    batch_tokens = sum(sum(mask) for _, _, mask in examples)
    results = []
    for packed in (False, True):
        model.zero_grad()
        tensors = pad_batch([p for p, _, _ in examples], [c for _, c, _ in examples], tokenizer.pad_token_id, "cpu",
                            [m for _, _, m in examples], packed=packed)
        loss = sft_loss(token_logprobs(CompletionLogits(model, shared=False), tensors)[0], tensors["loss_mask"],
                        batch_tokens=batch_tokens)
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert abs(results[0][0] - results[1][0]) < TOLERANCE
    assert (results[0][1] - results[1][1]).abs().max() < TOLERANCE and results[0][1].abs().max() > 1e-3


def test_sft_trains_end_to_end_packed_with_the_padded_first_loss(tmp_path):
    from r1lab.algorithms.sft import train_sft
    data = sft_rows(tmp_path / "d.jsonl")
    losses = []
    for packed in (False, True):
        cfg = load_config(SFTConfig, None, dict(model="tiny-random", data=data, epochs=2, batch_size=4,
                                                micro_batch_size=2, learning_rate=3e-3, packed=packed,
                                                out=str(tmp_path / f"sft{packed}")))
        checkpoint = train_sft(cfg)
        lines = (checkpoint.parent / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(line)["loss"] for line in lines])
    assert len(losses[1]) == 4 and losses[1][-1] < losses[1][0]
    assert abs(losses[0][0] - losses[1][0]) < TOLERANCE                  # the same weights: the same first loss
