"""The RL stage: Group Relative Policy Optimisation (paper eq. 1-3), one visible loop.

    r1lab train grpo --model smollm2-135m --task arithmetic --template r1_zero --rewards accuracy,format

Each step: `prompts_per_step` problems, G = `samples_per_prompt` completions each from the current
policy (pi_old), scored by the rule-based rewards, group-normalised advantages, then mu =
`updates_per_batch` AdamW steps over the batch (micro-batched, gradients accumulated).

Deviations from the paper, and why:
- pi_old log-probs are the policy's own log-probs in the first pass over the batch (detached),
  not a separate forward pass: parameters only change after the whole batch has been seen, so they
  are exactly pi_old's, and a forward pass is saved. With mu = 1 the ratio is therefore exactly 1.
- with LoRA the reference model is the policy with adapters disabled (no second copy in memory).

Metrics: `kl` (every pass) and `entropy` (first pass) are token-weighted means over the step's
micro-batches. `clip_fraction` counts only passes 2..mu, where clipping can occur; with mu = 1 it is
not logged. `warmup_steps` is in steps: the scheduler, which counts optimiser updates, gets it x mu.
With `mask_truncated`, truncated completions are in no loss denominator (r1lab/algorithms/losses.py).

Multi-process (accelerate; r1lab/distributed.py): each process samples whole groups for its share of
the prompts; denominators are global, metrics gathered, files written by the main process only.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
from tqdm import tqdm

from r1lab.algorithms.losses import group_advantages, grpo_loss
from r1lab.algorithms.sequences import CompletionLogits, pad_batch, token_logprobs
from r1lab.checkpoint import save_checkpoint
from r1lab.config import GRPOConfig
from r1lab.distributed import Parallel, prompt_seeds
from r1lab.evaluate import reflects
from r1lab.models import load_model
from r1lab.rewards import check_rewards_fit, parse_rewards, score
from r1lab.rollout import Sampling, make_engine, rollout
from r1lab.tasks import get_task
from r1lab.templates import get_template
from r1lab.training import (JsonlLog, autocast, choose_precision, device, load_policy, make_optimizer, prepare_run, restore_state,
                            seed_everything, training_state)


def reference_logprobs(ref_model, policy, batch, temperature, shared):
    """Log-probs under pi_ref: the frozen copy, or the LoRA policy with its adapters disabled."""
    with torch.no_grad():
        if ref_model is not None:
            return token_logprobs(ref_model, batch, temperature, shared=shared)[0]
        with policy.disable_adapter():
            return token_logprobs(policy, batch, temperature, shared=shared)[0]


def train_grpo(cfg: GRPOConfig, resume: bool = False):
    par = Parallel()
    out, checkpoint = prepare_run(cfg.out, cfg, resume, write=par.is_main)
    precision = choose_precision(out, cfg.mixed_precision, cfg.rollout_dtype, par.is_main)
    seed_everything(cfg.seed)
    template, weights = get_template(cfg.template), parse_rewards(cfg.rewards)
    problems = get_task(cfg.task, **cfg.task_options).problems("train", cfg.steps * cfg.prompts_per_step, cfg.seed)
    check_rewards_fit(weights, problems[0])
    par.check_divides(cfg.prompts_per_step)
    model, tokenizer = load_policy(cfg.model, checkpoint, cfg.dtype, cfg.lora_rank, cfg.lora_alpha,
                                   cfg.gradient_checkpointing)
    ref_model = None
    if cfg.beta != 0 and cfg.lora_rank == 0:
        ref_model = load_model(cfg.model, cfg.dtype)[0].to(device()).eval().requires_grad_(False)
    optimizer, scheduler = make_optimizer(model, cfg.learning_rate, cfg.weight_decay,   # the scheduler counts updates
                                          cfg.warmup_steps * cfg.updates_per_batch, cfg.lr_schedule,   # mu per step
                                          cfg.steps * cfg.updates_per_batch)
    engine = make_engine(cfg.engine, model, tokenizer, seed=cfg.seed, max_batch=cfg.prompts_per_step * cfg.samples_per_prompt,
                         decode_dtype=precision.rollout_dtype, gpu_memory_utilization=cfg.vllm_gpu_memory)
    generator = getattr(engine, "generator", None)           # the hf engine's sampler state, saved with checkpoints
    start = restore_state(checkpoint, optimizer, scheduler, generator)
    shared_prompts = not cfg.gradient_checkpointing       # a prompt's KV cache cannot be kept under checkpointing
    policy, optimizer = par.prepare(CompletionLogits(model, shared_prompts), optimizer)   # DDP/FSDP/DeepSpeed-wrapped
    metrics_log = JsonlLog(out / "metrics.jsonl", start, tensorboard=True) if par.is_main else None
    samples_log = JsonlLog(out / "samples.jsonl", start) if par.is_main else None
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    G = cfg.samples_per_prompt
    model.train()

    progress = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="grpo", unit="step", disable=not par.is_main)
    for step in progress:
        began = time.perf_counter()
        # 1. sample G completions per problem from pi_old (this process's share of the prompts, whole groups)
        step_problems = [problems[(step * cfg.prompts_per_step + i) % len(problems)] for i in range(cfg.prompts_per_step)]
        batch_problems = par.share(step_problems)
        seeds = par.share(prompt_seeds(cfg.seed, step, cfg.prompts_per_step))
        prompts, groups = rollout(engine, batch_problems, template, tokenizer, G, sampling, seeds)
        sampled = time.perf_counter()
        completions = [c for group in groups for c in group]                         # b = N/W * G, groups contiguous
        owners = [p for p in batch_problems for _ in range(G)]
        # 2. score and normalise within groups (eq. 3)
        totals, parts, failures = score(weights, completions, owners, group_size=G)
        rewards = torch.tensor(totals)                                               # (b,)
        advantages, advantage_metrics = group_advantages(rewards, G, cfg.scale_rewards)
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(G)]
        keep = [not (cfg.mask_truncated and c.finish_reason == "length") for c in completions]
        batch_tokens = par.total(sum(len(c.token_ids) for c, k in zip(completions, keep) if k))   # whole batch, only
        batch_sequences = par.total(sum(keep))                                       # what stays in the loss
        # 3. mu optimisation passes; the first pass records pi_old (and pi_ref) per micro-batch
        old, ref = {}, {}
        weighted = defaultdict(lambda: [0.0, 0])          # metric -> [sum of value x tokens, tokens]
        for update in range(cfg.updates_per_batch):
            for start_row in range(0, len(completions), cfg.micro_batch_size):
                rows = slice(start_row, start_row + cfg.micro_batch_size)
                batch = pad_batch(prompt_ids[rows], [c.token_ids for c in completions[rows]],
                                  tokenizer.pad_token_id, device())
                batch["completion_mask"] *= torch.tensor(keep[rows], device=device())[:, None]
                with par.sync_unless(policy, accumulating=start_row + cfg.micro_batch_size < len(completions)):
                    with autocast(precision.mixed_precision):
                        logprobs, entropy = token_logprobs(policy, batch, cfg.temperature, with_entropy=update == 0)  # (b, C)
                        if update == 0:
                            old[start_row] = logprobs.detach()
                            ref[start_row] = (reference_logprobs(ref_model, model, batch, cfg.temperature, shared_prompts)
                                              if cfg.beta else None)
                    loss, loss_metrics = grpo_loss(
                        logprobs, old[start_row], ref[start_row], advantages[rows].to(device()), batch["completion_mask"],
                        eps_low=cfg.epsilon, eps_high=cfg.epsilon_high, beta=cfg.beta, mode=cfg.loss_aggregation,
                        batch_sequences=batch_sequences, batch_tokens=batch_tokens, max_length=cfg.max_new_tokens)
                    par.accelerator.backward(loss * par.world)        # DDP averages: x world gives the global sum
                tokens = int(batch["completion_mask"].sum())
                if update == 0:                          # pi_old's entropy; the ratio is exactly 1, nothing clips
                    loss_metrics = {"entropy": entropy, **loss_metrics}
                    del loss_metrics["clip_fraction"]
                for key, value in loss_metrics.items():
                    weighted[key][0] += value * tokens
                    weighted[key][1] += tokens
            grad_norm = par.accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        trained = time.perf_counter()
        # 4. metrics (over every process's samples), samples, checkpoint (main process)
        totals, lengths = par.gather(totals), par.gather([len(c.token_ids) for c in completions])
        parts = {name: par.gather(values) for name, values in parts.items()}
        texts, finished = par.gather([c.text for c in completions]), par.gather([c.finish_reason for c in completions])
        stats = {key: par.total(total) / max(par.total(tokens), 1) for key, (total, tokens) in sorted(weighted.items())}
        advantage_metrics = {key: sum(par.gather([value])) / par.world for key, value in advantage_metrics.items()}
        sampled_tokens = sum(lengths)
        row = {"step": step + 1, "processes": par.world, "reward": sum(totals) / len(totals), "reward_std": torch.tensor(totals).std().item(),
               **{f"reward/{k}": sum(v) / len(v) for k, v in parts.items()},
               **{f"reward/{k}_std": torch.tensor(v).std().item() for k, v in parts.items()},
               "reward_failures": int(par.total(failures)), **advantage_metrics,
               "completion_length": sampled_tokens / len(lengths), "completion_length_max": max(lengths),
               "reflection": sum(map(reflects, texts)) / len(texts),
               "truncated": sum(f == "length" for f in finished) / len(finished),
               **stats,
               "learning_rate": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
               "sample_tokens_per_s": sampled_tokens / (sampled - began),
               "train_tokens_per_s": cfg.updates_per_batch * (par.total(sum(map(len, prompt_ids))) + sampled_tokens) / (trained - sampled),
               "sample_seconds": sampled - began, "train_seconds": trained - sampled, "step_seconds": trained - began}
        if "accuracy" in parts:
            row["accuracy"] = row["reward/accuracy"]
        if par.is_main:
            metrics_log.write(row)
            if step % cfg.sample_every == 0:
                for c, total in zip(groups[0], totals[:G]):
                    samples_log.write({"step": step + 1, "prompt": batch_problems[0].prompt, "truth": batch_problems[0].answer,
                                       "completion": c.text, "answer": c.answer, "reward": total})
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(out, model, tokenizer, training_state(step + 1, optimizer, scheduler, generator))
        par.barrier()
        progress.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row.get('accuracy', 0):.2f}",
                             len=f"{row['completion_length']:.0f}", s=f"{row['step_seconds']:.1f}")
    return out / "checkpoint"
