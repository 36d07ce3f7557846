"""One GRPO step as named phases over typed records, in the order of the paper's algorithm box:

    batch = draw(run, step)                          # G completions per problem, scored (stop if rewards fail
                                                     # on too many); advantages (eq. 3)
    passes = micro_batches(run, batch)               # the rows that move the gradient, micro-batched
    stats = StepStats()
    scores = score_passes(run, batch, passes, stats) # no grad: pi_old, pi_ref, importance weights (mu > 1)
    grad_norm = update(run, batch, passes, scores, stats, step)   # mu AdamW steps (eq. 1 with eq. 2)
    row = step_metrics(run.par, batch, stats)

`Run` holds what the stage set up (models, engine, optimiser, settings); each phase reads it and its input
records and returns the next record, so a test can call any phase on its own. With mu = 1 `score_passes`
returns None and `update` scores each micro-batch from its own pass (the fusion in r1lab/algorithms/grpo.py's
docstring): the one place where pi_old can come from is `score_pass`, called by one phase or the other.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from r1lab import R1labError
from r1lab.algorithms.losses import ADVANTAGES, POLICY_LOSSES, sampler_mismatch, truncated_importance_weights
from r1lab.algorithms.prompt_pool import PromptPool, group_rates
from r1lab.algorithms.sequences import pad_batch, token_logprobs
from r1lab.config import GRPOConfig
from r1lab.distributed import Parallel, lockstep, prompt_seeds
from r1lab.hardware import autocast, device
from r1lab.metrics import reflects
from r1lab.training import zero_gradients
from r1lab.types import Problem


@dataclass
class Run:
    """What a GRPO stage set up once and every step uses."""
    cfg: GRPOConfig
    par: Parallel
    model: torch.nn.Module           # the trained model (its parameters are the optimiser's)
    tokenizer: object
    policy: torch.nn.Module          # the model as trained: a CompletionLogits, DDP-wrapped or sharded
    reference: torch.nn.Module | None   # pi_ref's CompletionLogits; None when beta = 0 or with LoRA
    engine: object                   # the sampler (r1lab/rollout/base.py Engine)
    optimizer: torch.optim.Optimizer
    scheduler: object
    template: object
    weights: dict[str, float]        # reward name -> weight
    tools: list
    problems: list[Problem]          # what training draws from, in order
    sampling: object                 # r1lab.rollout.Sampling
    mixed_precision: str             # "bf16" or "no", resolved
    importance_sampling: bool
    draws: int                       # rounds of prompts a step may draw (dynamic sampling), 1 without
    pool: PromptPool | None = None   # the prompt pool (prompt_pool): recent pass rates and the cursor; None without


class Drawn(NamedTuple):
    """One problem's group: its G completions and their rewards (total and per named reward)."""
    problem: Problem
    prompt: str
    completions: list
    totals: list[float]
    parts: dict[str, list[float]]


@dataclass
class Batch:
    """A step's groups on this process, b = G x its problems, rows contiguous by group."""
    kept: list[Drawn]
    drawn: dict                      # what was drawn: rounds, groups, tokens, failures (samples), reward (summed),
                                     # errors (each failed reward's first error, this process's)
    completions: list
    advantages: torch.Tensor         # (b,)
    advantage_metrics: dict
    prompt_ids: list[list[int]]      # (b,) the rows' prompts, tokenized
    keep: list[bool]                 # (b,) in the loss (mask_truncated drops truncated rows)
    moves: list[bool]                # (b,) adds to the gradient (with beta = 0, advantage != 0)
    batch_tokens: int                # every process's tokens in the loss: the loss's denominators
    batch_sequences: int
    reward_errors: dict = field(default_factory=dict)   # each failed reward's first error, over every process


@dataclass
class Pass:
    """One micro-batch's forward and backward."""
    rows: list[int]                  # indices into the batch
    tensors: dict                    # pad_batch's: input ids, masks, (b, C) loss mask
    loss_mask: torch.Tensor          # (b, C) the tokens in the loss: tensors' loss mask x keep
    weight: float                    # the backward's weight: the process count (DDP averages), 0 for padding


class Scores(NamedTuple):
    """A pass's no-grad log-probs: pi_old (b, C), pi_ref (b, C) or None, importance weights (b, C) or None."""
    old: torch.Tensor
    ref: torch.Tensor | None
    is_weights: torch.Tensor | None


@dataclass
class StepStats:
    """What the passes measured, summed over micro-batches: token means (name -> [sum of value x tokens, tokens]),
    the ratio's extremes (passes 2..mu) and the sampler mismatch per sequence (|log-prob difference|, k3, tokens)."""
    means: dict = field(default_factory=lambda: defaultdict(lambda: [0.0, 0]))
    extremes: dict = field(default_factory=dict)
    mismatch: tuple = field(default_factory=lambda: ([], [], []))

    def add(self, metrics: dict, tokens: int) -> None:
        for key, value in metrics.items():
            self.means[key][0] += value * tokens
            self.means[key][1] += tokens


def draw(run: Run, step: int, draw_groups) -> Batch:
    """Phase 1: this process's share of the step's problems (whole groups), G completions each, scored; with
    dynamic sampling more rounds until the quota of groups with a spread; a stop if rewards failed on too many
    samples (`check_reward_failures`); then the advantages (eq. 3 or RLOO). With the prompt pool, the rounds'
    problems come from it (`pool_draw`)."""
    cfg, par, P, G = run.cfg, run.par, run.cfg.prompts_per_step, run.cfg.samples_per_prompt
    indices = range(step * run.draws, (step + 1) * run.draws)
    if run.pool is not None:
        kept, drawn = pool_draw(run, indices, draw_groups)
    else:
        rounds = [(par.share([run.problems[(index * P + i) % len(run.problems)] for i in range(P)]),
                   par.share(prompt_seeds(cfg.seed, index, P))) for index in indices]
        kept, drawn = draw_groups(run.engine, run.tokenizer, run.template, run.sampling, run.weights, G, rounds,
                                  len(rounds[0][0]), run.tools, cfg.max_turns)
    errors = check_reward_failures(par, drawn, G, cfg.max_reward_failure_share, step)
    completions = [c for g in kept for c in g.completions]                      # b = N/W * G, groups contiguous
    rewards = torch.tensor([t for g in kept for t in g.totals])                 # (b,)
    advantages, advantage_metrics = ADVANTAGES[cfg.advantage](rewards, G, cfg.scale_rewards)   # (b,)
    prompt_ids = [run.tokenizer(g.prompt, add_special_tokens=False)["input_ids"] for g in kept for _ in range(G)]
    keep = [not (cfg.mask_truncated and c.finish_reason == "length") for c in completions]
    # with beta = 0 a row whose advantage is 0 (every row of a group with equal rewards) adds exactly 0 to eq. 1,
    # as does one with no token in the loss
    moves = [k and (cfg.beta != 0 or a != 0) for k, a in zip(keep, advantages.tolist())]
    return Batch(kept, drawn, completions, advantages, advantage_metrics, prompt_ids, keep, moves,
                 batch_tokens=par.total(sum(c.model_tokens for c, k in zip(completions, keep) if k)),
                 batch_sequences=par.total(sum(keep)), reward_errors=errors)


def pool_draw(run: Run, indices: range, draw_groups) -> tuple[list[Drawn], dict]:
    """draw_groups over rounds picked by the prompt pool (r1lab/algorithms/prompt_pool.py), one at a time: a round
    is picked once the groups before it are in the record (each round's pass rates, gathered from every process,
    update every process's pool alike). Exploration slots are drawn from random.Random on (seed, round), so every
    process picks the same problems. `drawn` gets `pool_skipped`, the candidates passed over."""
    cfg, par, P, G, skipped = run.cfg, run.par, run.cfg.prompts_per_step, run.cfg.samples_per_prompt, []

    def rounds():
        for index in indices:
            problems, passed = run.pool.pick(run.problems, P, random.Random(f"{cfg.seed}/pool/{index}"))
            skipped.append(passed)
            yield par.share(problems), par.share(prompt_seeds(cfg.seed, index, P))

    def scored(problems, totals, parts):
        for problem_id, rate in par.gather(group_rates(problems, totals, parts, run.weights, G)):
            run.pool.record(problem_id, rate)
    kept, drawn = draw_groups(run.engine, run.tokenizer, run.template, run.sampling, run.weights, G, rounds(),
                              P // par.world, run.tools, cfg.max_turns, scored)
    return kept, {**drawn, "pool_skipped": sum(skipped)}


def check_reward_failures(par, drawn: dict, G: int, max_share: float, step: int) -> dict[str, str]:
    """Each failed reward's first error this step, over every process; a stop when rewards failed on more than
    `max_share` of the samples drawn (every process's): the run would learn from zeros that mean nothing."""
    errors = {}
    for name, error in par.gather(list(drawn["errors"].items())):
        errors.setdefault(name, error)
    failed, samples = par.total(drawn["failures"]), par.total(drawn["groups"]) * G
    if failed > max_share * samples:
        raise R1labError(f"step {step + 1}: rewards failed on {failed:.0f} of {samples:.0f} samples ({failed / samples:.0%}), "
                         f"more than max_reward_failure_share {max_share}: "
                         + "; ".join(f"reward {name!r}: {error}" for name, error in errors.items())
                         + ". Fix the reward (a failure is an exception, a NaN or infinity, or no number; None is "
                           "only allowed from TRL-style rewards), or raise max_reward_failure_share")
    return errors


def micro_batches(run: Run, batch: Batch) -> list[Pass]:
    """Phase 2: the rows that get a pass (every row, or with skip_zero_advantage those that move the gradient),
    `micro_batch_size` at a time; every process runs as many passes as the one with the most. No row anywhere:
    no pass (the update then sees zero gradients)."""
    cfg, par = run.cfg, run.par
    rows_run = [i for i, m in enumerate(batch.moves) if m or not cfg.skip_zero_advantage]
    learning = par.total(len(rows_run)) > 0
    rows_run = (rows_run or [0]) if learning else []     # a zero-weight row: every process joins the all-reduce
    passes = []
    for first in range(0, len(rows_run), cfg.micro_batch_size):
        rows = rows_run[first:first + cfg.micro_batch_size]
        tensors = pad_batch([batch.prompt_ids[i] for i in rows], [batch.completions[i].token_ids for i in rows],
                            run.tokenizer.pad_token_id, device(),
                            [batch.completions[i].loss_mask for i in rows],   # tool outputs: attended, not trained
                            packed=cfg.packed)
        weight = par.world if any(batch.moves[i] for i in rows) or not cfg.skip_zero_advantage else 0.0
        keep = torch.tensor([batch.keep[i] for i in rows], device=device())[:, None]
        passes.append(Pass(rows, tensors, tensors["loss_mask"] * keep, weight))   # DDP averages: x world = the sum
    return lockstep(par, passes, lambda p: Pass(p.rows, p.tensors, p.loss_mask, 0.0)) if learning else passes


def score_pass(run: Run, batch: Batch, p: Pass, logprobs: torch.Tensor, entropy: float, stats: StepStats) -> Scores:
    """A pass's pi_old (`logprobs`, no grad), pi_ref, the sampler's mismatch with pi_old and the truncated
    importance weights; the diagnostics go to `stats` (padding passes are in no metric)."""
    cfg = run.cfg
    ref = reference_logprobs(run, p.tensors) if cfg.beta else None
    sampler = sampler_logprobs([batch.completions[r] for r in p.rows], logprobs.shape[1], device())   # (b, C)
    w, is_metrics = (truncated_importance_weights(logprobs, sampler, p.loss_mask, cfg.importance_sampling_cap)
                     if run.importance_sampling else (None, {}))                                      # (b, C)
    if p.weight:
        for values, new in zip(stats.mismatch, (*sampler_mismatch(sampler, logprobs, p.tensors["loss_mask"]),   # (b,)
                                                p.tensors["loss_mask"].sum(-1))):
            values += new.tolist()
        stats.add({"entropy": entropy}, int(p.tensors["loss_mask"].sum()))
        stats.add(is_metrics, int(p.loss_mask.sum()))
    return Scores(logprobs, ref, w)


def score_passes(run: Run, batch: Batch, passes: list[Pass], stats: StepStats) -> list[Scores] | None:
    """Phase 3: the no-grad scoring pass before the updates (mu > 1); None at mu = 1, where each update pass
    scores itself (its own detached log-probs are pi_old, exactly: the same weights and computation)."""
    if run.cfg.updates_per_batch == 1:
        return None
    with torch.no_grad(), autocast(run.mixed_precision):
        return [score_pass(run, batch, p, *token_logprobs(run.policy, p.tensors, run.cfg.temperature, True), stats)
                for p in passes]


def update(run: Run, batch: Batch, passes: list[Pass], scores: list[Scores] | None, stats: StepStats, step: int) -> float:
    """Phase 4: mu = `updates_per_batch` optimiser steps over the passes (gradients accumulated, then clipped);
    the gradient norm before clipping of the last. A NaN or infinite norm stops the run (Parallel.clip_grad_norm)."""
    cfg, par = run.cfg, run.par
    fused = scores is None
    scores = scores or [None] * len(passes)
    if cfg.updates_per_batch > 1:
        stats.extremes.update(ratio_min=float("inf"), ratio_max=float("-inf"))
    for repeat in range(cfg.updates_per_batch):
        for i, p in enumerate(passes):
            with par.sync_unless(run.policy, accumulating=i + 1 < len(passes)):
                with autocast(run.mixed_precision):
                    logprobs, entropy = token_logprobs(run.policy, p.tensors, cfg.temperature, with_entropy=fused)   # (b, C)
                    if fused:                                # mu = 1: pi_old is this pass's own log-probs
                        with torch.no_grad():
                            scores[i] = score_pass(run, batch, p, logprobs.detach(), entropy, stats)
                old, ref, is_weights = scores[i]
                loss, loss_metrics = POLICY_LOSSES[cfg.policy_loss](
                    logprobs, old, ref, batch.advantages[p.rows].to(device()), p.loss_mask, eps_low=cfg.epsilon,
                    eps_high=cfg.epsilon_high, beta=cfg.beta, mode=cfg.loss_aggregation, ratio_level=cfg.ratio_level,
                    is_weights=is_weights, batch_sequences=batch.batch_sequences, batch_tokens=batch.batch_tokens,
                    max_length=cfg.max_new_tokens)
                par.accelerator.backward(loss * p.weight)
            if p.weight:                                     # padding passes are in no metric
                record_loss(stats, loss_metrics, int(p.loss_mask.sum()), repeat)
        if not passes:                                       # what every pass would have left: zero gradients,
            zero_gradients(run.model)                        # with which AdamW still moves (momentum, decay)
        grad_norm = par.clip_grad_norm(run.policy, cfg.max_grad_norm, step + 1)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def record_loss(stats: StepStats, loss_metrics: dict, tokens: int, repeat: int) -> None:
    """The KL every pass; the clip fraction and the ratio from the second pass on (in the first the ratio is 1)."""
    stats.add({k: v for k, v in loss_metrics.items() if k == "kl"}, tokens)
    if repeat > 0:
        stats.add({k: loss_metrics[k] for k in ("clip_fraction", "ratio_mean")}, tokens)
        stats.extremes["ratio_min"] = min(stats.extremes["ratio_min"], loss_metrics.get("ratio_min", float("inf")))
        stats.extremes["ratio_max"] = max(stats.extremes["ratio_max"], loss_metrics.get("ratio_max", float("-inf")))


def reference_logprobs(run: Run, tensors: dict) -> torch.Tensor:
    """Log-probs under pi_ref: the frozen copy, or the LoRA policy with its adapters disabled."""
    with torch.no_grad():
        if run.reference is not None:
            return run.reference(tensors, run.cfg.temperature)[0]
        with run.model.disable_adapter():
            return run.policy(tensors, run.cfg.temperature)[0]


def sampler_logprobs(completions, width: int, dev) -> torch.Tensor:
    """The sampler's log-probs of the completions' tokens, right-padded with 0: (b, width)."""
    padded = torch.zeros(len(completions), width)
    for i, c in enumerate(completions):
        if len(c.logprobs) != len(c.token_ids):
            raise R1labError(f"the engine returned {len(c.logprobs)} log-probs for {len(c.token_ids)} tokens")
        padded[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
    return padded.to(dev)


def step_metrics(par, batch: Batch, stats: StepStats) -> dict:
    """Phase 5's figures over every process's samples: rewards, lengths, reflection, truncation, the passes'
    token means, the ratio's extremes and the sampler mismatch."""
    kept = batch.kept
    completions = batch.completions
    totals, lengths = par.gather([t for g in kept for t in g.totals]), par.gather([len(c.token_ids) for c in completions])
    parts = {name: par.gather([v for g in kept for v in g.parts[name]]) for name in kept[0].parts}
    texts, finished = par.gather([c.text for c in completions]), par.gather([c.finish_reason for c in completions])
    absolute, k3, tokens = (par.gather(values) for values in stats.mismatch)
    row = {"processes": par.world, "reward": sum(totals) / len(totals), "reward_std": torch.tensor(totals).std().item(),
           **{f"reward/{k}": sum(v) / len(v) for k, v in parts.items()},
           **{f"reward/{k}_std": torch.tensor(v).std().item() for k, v in parts.items()},
           "reward_failures": int(par.total(batch.drawn["failures"])),
           **{key: sum(par.gather([value])) / par.world for key, value in batch.advantage_metrics.items()},
           "completion_length": sum(lengths) / len(lengths), "completion_length_max": max(lengths),
           "reflection": sum(map(reflects, texts)) / len(texts),
           "truncated": sum(f == "length" for f in finished) / len(finished)}
    for key in sorted(set(par.gather(list(stats.means)))):     # a process that ran no row has none of its own
        count = par.total(stats.means[key][1])
        if count:
            row[key] = par.total(stats.means[key][0]) / count
    if k3:                                                     # none when no row went through the passes
        row.update(sampler_mismatch=sum(absolute) / max(sum(tokens), 1), sampler_kl=sum(k3) / len(k3))
    for key, value in stats.extremes.items():
        values = [v for v in par.gather([value]) if abs(v) != float("inf")]   # inf: no token on that process
        if values:
            row[key] = min(values) if key.endswith("_min") else max(values)
    if "accuracy" in parts:
        row["accuracy"] = row["reward/accuracy"]
    if any(c.loss_mask for c in completions):                  # episodes with tools
        row.update(episode_metrics(par, completions))
    return row


def episode_metrics(par, completions) -> dict:
    """Per episode, over every process's: model turns, tool calls, failed calls, tokens by who wrote them."""
    per_episode = {"turns": [c.turns for c in completions], "tool_calls": [len(c.tool_calls) for c in completions],
                   "tool_errors": [c.failed_calls for c in completions],
                   "tokens_model": [c.model_tokens for c in completions],
                   "tokens_tool": [len(c.token_ids) - c.model_tokens for c in completions]}
    return {key: sum(values) / len(values) for key, values in ((k, par.gather(v)) for k, v in per_episode.items())}
