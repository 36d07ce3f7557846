"""Supervised fine-tuning on (prompt, completion) pairs: cold start, rejection-sampling SFT, distillation.

    r1lab data cold-start --task arithmetic --n 150 --out cold.jsonl
    r1lab train sft --model smollm2-135m --data cold.jsonl --template chat

The loss is on completion tokens only (the prompt is rendered with the template, as at RL time), a
token mean over each optimiser batch. With `tools` the prompt describes them as at RL time, and the
tools' results in a completion (`<tool_response>` blocks) are read but not learned (rollout/episodes.py).
Each batch is cut into micro-batches of similar length (sorted within the batch) so little padding is
paid for. Same checkpoint, resume and metrics files as GRPO.
Multi-process (accelerate): each process takes a contiguous share of every batch; the token count in
the loss's denominator is the whole batch's, so the update equals the one-process update.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from r1lab.eta import Progress

from r1lab import R1labError
from r1lab.algorithms.losses import sft_loss
from r1lab.algorithms.sequences import CompletionLogits, pad_batch, token_logprobs
from r1lab.config import SFTConfig
from r1lab.data import read_jsonl
from r1lab.distributed import Parallel, state_gb
from r1lab.hardware import autocast, device
from r1lab.rollout.episodes import render_prompt, tokenize_episode
from r1lab.runlock import release_folder
from r1lab.templates import get_template
from r1lab.tools import load_tools
from r1lab.training import (JsonlLog, choose_precision, end_step, finish_run, load_policy, make_optimizer,
                            prepare_run, restore_state, seed_everything, start_trackers)


def load_pairs(path: str) -> list[tuple[str, str, str]]:
    """(prompt, prefix, completion) rows; `prefix` (optional) is reply text given in the prompt, with no loss.
    A row is {"prompt", "completion"[, "prefix"]} or conversational (TRL's format), {"messages": [{"role": "user",
    "content": ...}, {"role": "assistant", "content": ...}]}: the user turn is the prompt, the assistant's the
    completion. Only that single exchange: a system turn or earlier turns are an error, not dropped, because the
    template renders the prompt as one user turn, and a reply to context the model is not shown teaches guessing."""
    pairs = []
    for number, row in read_jsonl(path):
        where = f"{path}, line {number}"
        if "messages" in row:
            if {"prompt", "completion", "prefix"} & set(row):
                raise R1labError(f"{where}: a row has either 'messages' or 'prompt' and 'completion', not both")
            turns = row["messages"]
            if not isinstance(turns, list):
                raise R1labError(f"{where}: field 'messages' must be a list of {{role, content}} objects")
            for i, turn in enumerate(turns):
                if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
                    raise R1labError(f"{where}: field 'messages', item {i}: expected an object with a string 'role'")
                if not isinstance(turn.get("content"), str):
                    raise R1labError(f"{where}: field 'messages', item {i} ({turn['role']}): 'content' must be a string")
            roles = [turn["role"] for turn in turns]
            if roles != ["user", "assistant"]:
                raise R1labError(f"{where}: field 'messages' must be one user turn then one assistant turn, got roles "
                                 f"{roles}; r1lab trains single exchanges (the template gives the system prompt)")
            pairs.append((turns[0]["content"], "", turns[1]["content"]))
            continue
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str):
                raise R1labError(f"{where}: field {key!r} must be a string"
                                 + ("" if key in row else " (or give the row as 'messages': [user turn, assistant turn])"))
        if not isinstance(row.get("prefix", ""), str):
            raise R1labError(f"{where}: field 'prefix' must be a string")
        pairs.append((row["prompt"], row.get("prefix", ""), row["completion"]))
    if not pairs:
        raise R1labError(f"{path}: no rows{why_empty(path)}")
    return pairs


def why_empty(path) -> str:
    """What the rejection or distillation stage that wrote an empty data file dropped (its summary.json), if it did."""
    summary = Path(path).with_name("summary.json")
    try:
        kept = json.loads(summary.read_text())
        return (f": the stage that wrote it kept none of its {kept['sampled']} samples (dropped: {kept['dropped']}); "
                "a stronger model, more problems or samples, or looser filters would keep some")
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def context_length(model) -> int:
    """The longest sequence the model was trained on (its position limit); 1M tokens when it names none."""
    return int(getattr(model.config, "max_position_embeddings", None) or 2 ** 20)


def tokenize_pairs(pairs, tokenizer, template, tools, max_length: int):
    """([(prompt ids, completion ids + EOS, completion loss mask)], rows skipped as longer than `max_length`
    tokens). A row whose text alone proves it too long (more characters than `max_length` tokens of the
    vocabulary's longest could cover) is skipped before it is tokenized: a 50 MB row costs nothing."""
    longest = max(len(token) for token in tokenizer.get_vocab())            # characters one token covers, at most
    examples, skipped = [], 0
    for prompt, prefix, completion in pairs:
        if len(prompt) + len(prefix) + len(completion) > max_length * longest:
            skipped += 1
            continue
        ids, mask = tokenize_episode(tokenizer, (" " if prefix else "") + completion)
        prompt_ids = tokenizer(render_prompt(template, prompt, tokenizer, tools) + prefix,
                               add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(ids) + 1 > max_length:
            skipped += 1
            continue
        examples.append((prompt_ids, ids + [tokenizer.eos_token_id], mask + [1]))
    return examples, skipped


def train_sft(cfg: SFTConfig, resume: bool = False):
    par = Parallel(cfg.fsdp)
    pairs, template, tools = load_pairs(cfg.data), get_template(cfg.template), load_tools(cfg.tools)
    out, checkpoint = prepare_run(cfg.out, cfg, resume, write=par.is_main)       # every input read: now it writes
    precision = choose_precision(out, cfg.mixed_precision, None, par.is_main)
    seed_everything(cfg.seed, cfg.full_determinism)
    model, tokenizer = load_policy(cfg.model, checkpoint, cfg.dtype, cfg.lora_rank, cfg.lora_alpha,
                                   cfg.gradient_checkpointing)
    max_length = cfg.max_length or context_length(model)
    examples, too_long = tokenize_pairs(pairs, tokenizer, template, tools, max_length)
    if too_long and par.is_main:
        print(f"sft: skipped {too_long} of {len(pairs)} rows longer than max_length = {max_length} tokens")
    if not examples:
        raise R1labError(f"{cfg.data}: every row is longer than max_length = {max_length} tokens (prompt and completion)")
    order = [i for epoch in range(cfg.epochs) for i in random.Random(cfg.seed + epoch).sample(range(len(examples)), len(examples))]
    steps = len(order) // cfg.batch_size
    if steps == 0:
        raise R1labError(f"{cfg.data}: {len(examples)} examples x {cfg.epochs} epochs is less than one batch of {cfg.batch_size}")
    par.check_divides(cfg.batch_size, "batch_size")
    policy = par.prepare(CompletionLogits(model, shared=False))                 # DDP-wrapped, FSDP2-sharded or as it is
    optimizer, scheduler = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.warmup_steps, cfg.lr_schedule, steps)
    start = restore_state(checkpoint, optimizer, scheduler, None, model)
    log = JsonlLog(out / "metrics.jsonl", start, start_trackers(out, cfg)) if par.is_main else None
    model.train()
    progress = Progress(range(start, steps), initial=start, total=steps, desc="sft", unit="step", disable=not par.is_main)
    for step in progress:
        began = time.perf_counter()
        batch = sorted((examples[i] for i in order[step * cfg.batch_size:(step + 1) * cfg.batch_size]),
                       key=lambda e: len(e[0]) + len(e[1]))                     # similar lengths share a micro-batch
        batch_tokens = sum(sum(mask) for _, _, mask in batch)                   # the whole batch's, on every process
        batch = par.share(batch, "batch_size")
        total = 0.0
        for first in range(0, len(batch), cfg.micro_batch_size):
            rows = batch[first:first + cfg.micro_batch_size]
            tensors = pad_batch([p for p, _, _ in rows], [c for _, c, _ in rows], tokenizer.pad_token_id, device(),
                                [m for _, _, m in rows], packed=cfg.packed)
            with par.sync_unless(policy, accumulating=first + cfg.micro_batch_size < len(batch)):
                with autocast(precision.mixed_precision):
                    logprobs, _ = token_logprobs(policy, tensors)               # (b, C)
                loss = sft_loss(logprobs, tensors["loss_mask"], batch_tokens=batch_tokens)
                par.accelerator.backward(loss * par.world)                      # DDP averages: x world gives the sum
            total += loss.item()
        total = par.total(total)
        grad_norm = par.clip_grad_norm(policy, cfg.max_grad_norm, step + 1)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - began
        tokens = par.total(sum(len(p) + len(c) for p, c, _ in batch))
        if par.is_main:
            log.write({"step": step + 1, "processes": par.world, "loss": total, "grad_norm": grad_norm,
                       "state_gb": state_gb(model, optimizer),
                       "learning_rate": scheduler.get_last_lr()[0], "step_seconds": seconds,
                       "tokens_per_s": tokens / seconds})
        end_step(par, out, step, steps, cfg.save_every, model, tokenizer, optimizer, scheduler, None, cfg.save_total_limit)
        progress.set_postfix(loss=f"{total:.4f}", s=f"{seconds:.1f}")
    finish_run(out, log)
    release_folder(out)
    return out / "checkpoint"
