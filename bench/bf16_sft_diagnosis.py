"""Why a bf16-autocast cold start ends weaker than an fp32 one (README, rl-gain section).

    .venv/bin/python bench/bf16_sft_diagnosis.py        (after `r1lab experiment rl-gain --seeds 1` and
                                                       `... rl-gain name=rl_gain_fp32sft sft.mixed_precision=no --seeds 1`)

On the cold start's own examples (training data, not held-out problems):
1. one SFT step (AdamW, the recipe's lr, clip 1) from the base weights with fp32 and with bf16-autocast
   gradients: the gradients' cosine, and the next batch's loss of both updated models under an fp32 and
   an autocast forward;
2. both trained checkpoints: their loss over all examples under each forward, and the share of their
   changed matrix weights whose bf16 value changes (what a bf16 copy, as autocast multiplies with, sees).
"""
from __future__ import annotations

import argparse
import copy
import random

import torch

from r1lab.algorithms.losses import sft_loss
from r1lab.algorithms.sequences import pad_batch, token_logprobs
from r1lab.algorithms.sft import load_pairs
from r1lab.models import load_model
from r1lab.rollout.episodes import render_prompt, tokenize_episode
from r1lab.templates import get_template


def batches_of(pairs, tokenizer, template, indices, size=8) -> list[dict]:
    """Padded SFT batches of the examples at `indices`, as train_sft builds them."""
    out = []
    for first in range(0, len(indices), size):
        prompts, completions, masks = [], [], []
        for i in indices[first:first + size]:
            prompt, prefix, completion = pairs[i]
            ids, mask = tokenize_episode(tokenizer, completion)
            prompts.append(tokenizer(render_prompt(template, prompt, tokenizer, []) + prefix, add_special_tokens=False)["input_ids"])
            completions.append(ids + [tokenizer.eos_token_id])
            masks.append(mask + [1])
        out.append(pad_batch(prompts, completions, tokenizer.pad_token_id, "cpu", masks))
    return out


def loss(model, batches: list[dict], bf16: bool) -> torch.Tensor:
    """The token-mean SFT loss over `batches`, under an fp32 or a bf16-autocast forward."""
    tokens = sum(int(b["loss_mask"].sum()) for b in batches)
    total = 0.0
    for b in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logprobs, _ = token_logprobs(model, b, shared=False)
        total = total + sft_loss(logprobs, b["loss_mask"], batch_tokens=tokens)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/rl_gain_seed0/cold/data.jsonl")
    parser.add_argument("--bf16-checkpoint", default="runs/rl_gain_seed0/sft/checkpoint")
    parser.add_argument("--fp32-checkpoint", default="runs/rl_gain_fp32sft_seed0/sft/checkpoint")
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    args = parser.parse_args()
    base, tokenizer = load_model("smollm2-135m")
    template, pairs = get_template("chat"), load_pairs(args.data)
    order = random.Random(0).sample(range(len(pairs)), len(pairs))          # train_sft's first epoch order
    first, second = batches_of(pairs, tokenizer, template, order[:8]), batches_of(pairs, tokenizer, template, order[8:16])

    gradients = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        model = copy.deepcopy(base).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
        loss(model, first, bf16).backward()
        gradients[name] = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            print(f"one {name} step: next batch's loss, fp32 forward {loss(model, second, False).item():.4f}, "
                  f"autocast forward {loss(model, second, True).item():.4f}")
    a, b = gradients["fp32"], gradients["bf16"]
    print(f"first step's gradients, fp32 against bf16 autocast: cosine {(a @ b / (a.norm() * b.norm())).item():.5f}")

    everything = batches_of(pairs, tokenizer, template, list(range(len(pairs))))
    reference = dict(base.named_parameters())
    with torch.no_grad():
        print(f"base: loss over the {len(pairs)} examples, fp32 {loss(base, everything, False).item():.4f}, "
              f"autocast {loss(base, everything, True).item():.4f}")
        for name, path in (("trained in fp32", args.fp32_checkpoint), ("trained under bf16 autocast", args.bf16_checkpoint)):
            model, _ = load_model(path)
            changed = seen = 0
            relative = []
            for key, p in model.named_parameters():
                if p.dim() < 2:
                    continue
                moved = p != reference[key]
                changed += int(moved.sum())
                seen += int(((p.bfloat16() != reference[key].bfloat16()) & moved).sum())
                relative.append(((p - reference[key]).abs() / reference[key].abs().clamp_min(1e-12))[moved].median().item())
            print(f"{name}: loss fp32 {loss(model, everything, False).item():.4f}, autocast "
                  f"{loss(model, everything, True).item():.4f}; {seen / changed:.1%} of the changed matrix weights change "
                  f"their bf16 value; median relative change {sorted(relative)[len(relative) // 2]:.2e}")


if __name__ == "__main__":
    main()
