"""Learning from competition without RL (the talk: "can we apply the competition method of learning
... without RL?"). One visible loop, rounds of expert iteration:

    r1lab train compete --model smollm2-135m --task arithmetic --rewards accuracy,format

Each round samples a group per problem as GRPO does, scores it, and trains by supervised learning
only: members above their group's mean reward are imitated (NLL), members below it are pushed down
(unlikelihood, weight `unlikelihood_weight`, 0 switches it off) at the token where each departs from every
good member (`unlikelihood_scope`, `pushed_tokens`); optionally each is weighted by its eq. 3 advantage.
No ratio, no reference model, no value model.

Groups can mix agents and prompt styles (`sources`): each extra source (a model spec, a template)
adds members to every group; each member records its source and the metrics are kept per source. Only
the policy is trained, on every member, each under the prompt its own template rendered — the policy
learns from what the others did well and badly.

Dropout is off in the policy, as in GRPO (r1lab/algorithms/grpo.py, `disable_dropout`). With `tools`
every member is an episode that may call them (r1lab/rollout/episodes.py); the tools' results are read
by the loss's later tokens but are not themselves imitated or pushed down.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
from r1lab.eta import Progress

from r1lab.algorithms.grpo import disable_dropout
from r1lab.algorithms.losses import compete_weights, sft_loss, unlikelihood_loss
from r1lab.algorithms.sequences import CompletionLogits, pad_batch, token_logprobs
from r1lab.config import CompeteConfig
from r1lab.distributed import Parallel, lockstep, prompt_seeds, state_gb
from r1lab.hardware import autocast, device
from r1lab.rewards import parse_rewards, score
from r1lab.rollout import Sampling, rollout
from r1lab.rollout.episodes import render_prompt, tokenize_episode
from r1lab.rollout.hf import HFEngine
from r1lab.runlock import release_folder
from r1lab.tasks import get_task
from r1lab.templates import get_template
from r1lab.tools import load_tools
from r1lab.training import (JsonlLog, choose_precision, end_step, finish_run, load_on_device, load_policy,
                            make_optimizer, prepare_run, restore_state, seed_everything, start_trackers)


def _encoded(tokenizer, completion) -> tuple[list[int], list[int]]:
    """Another agent's reply in the policy's vocabulary, its EOS if it ended, and its loss mask."""
    ids, mask = tokenize_episode(tokenizer, completion.text)
    end = [tokenizer.eos_token_id] if completion.finish_reason == "stop" else []
    return ids + end, mask + [1] * len(end)


def train_compete(cfg: CompeteConfig, resume: bool = False):
    par = Parallel(cfg.fsdp)
    weights, tools = parse_rewards(cfg.rewards), load_tools(cfg.tools)
    problems = get_task(cfg.task, **cfg.task_options).problems("train", cfg.rounds * cfg.prompts_per_step, cfg.seed)
    out, checkpoint = prepare_run(cfg.out, cfg, resume, write=par.is_main)       # every input read: now it writes
    precision = choose_precision(out, cfg.mixed_precision, cfg.rollout_dtype, par.is_main)
    seed_everything(cfg.seed, cfg.full_determinism)
    model, tokenizer = load_policy(cfg.model, checkpoint, "float32", cfg.lora_rank, cfg.lora_alpha, False)
    disable_dropout(model)                                   # as in GRPO (TRL: disable_dropout)
    policy_engine = HFEngine(model, tokenizer, seed=cfg.seed, decode_dtype=precision.rollout_dtype, own_copy=par.sharded)
    # (name, engine, its tokenizer, template, members per group); the policy first
    agents = [("policy", policy_engine, tokenizer, get_template(cfg.template), cfg.samples_per_prompt)]
    for i, source in enumerate(cfg.sources):
        other, other_tokenizer = load_on_device(source["model"])
        agents.append((f"{i + 1}:{source['model']}:{source.get('template', cfg.template)}",
                       HFEngine(other, other_tokenizer, seed=cfg.seed + i + 1),
                       other_tokenizer, get_template(source.get("template", cfg.template)), source.get("samples", 1)))
    group_size = sum(a[4] for a in agents)
    par.check_divides(cfg.prompts_per_step)
    policy = par.prepare(CompletionLogits(model))                           # DDP-wrapped, FSDP2-sharded or as it is
    optimizer, scheduler = make_optimizer(model, cfg.learning_rate, 0.0, 0, "constant", cfg.rounds)
    start = restore_state(checkpoint, optimizer, scheduler, policy_engine.generator, model)
    log = JsonlLog(out / "metrics.jsonl", start, start_trackers(out, cfg)) if par.is_main else None
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    model.train()

    for step in Progress(range(start, cfg.rounds), initial=start, total=cfg.rounds, desc="compete", unit="round",
                     disable=not par.is_main):
        began = time.perf_counter()
        if par.sharded:
            policy_engine.sync_weights()                    # every process at once: the rollout copy gets the new weights
        step_problems = [problems[(step * cfg.prompts_per_step + i) % len(problems)] for i in range(cfg.prompts_per_step)]
        batch_problems = par.share(step_problems)                # whole groups on each process
        seeds = par.share(prompt_seeds(cfg.seed, step, cfg.prompts_per_step))
        # 1. every agent answers every problem; members of a problem's group stay contiguous
        flat = sample_members(agents, batch_problems, seeds, sampling, tokenizer, tools, cfg.max_turns)
        completions = [c for _, _, c in flat]
        # 2. score; above the group mean -> imitate, below -> push down
        totals, parts, failures = score(weights, completions, [p for p in batch_problems for _ in range(group_size)], group_size)
        imitate, push_down = compete_weights(torch.tensor(totals), group_size, cfg.weight_by_advantage)
        grad_norm = train_round(cfg, par, policy, tokenizer, flat, imitate, push_down, group_size,
                                precision.mixed_precision, step)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # 3. metrics per source (over every process's members), checkpoint
        row = {"step": step + 1, **round_metrics(par, flat, totals, parts, failures, imitate, push_down),
               "grad_norm": grad_norm, "state_gb": state_gb(model, optimizer), "step_seconds": time.perf_counter() - began}
        if par.is_main:
            log.write(row)
        end_step(par, out, step, cfg.rounds, cfg.save_every, model, tokenizer, optimizer, scheduler, policy_engine.generator,
                 cfg.save_total_limit)
    finish_run(out, log)
    release_folder(out)
    return out / "checkpoint"


def sample_members(agents, problems, seeds, sampling, tokenizer, tools, max_turns: int) -> list[tuple]:
    """Every agent's members for every problem, (source name, prompt ids in the policy's vocabulary, completion),
    the members of a problem's group contiguous."""
    members = [[] for _ in problems]
    for agent, (name, engine, agent_tokenizer, template, n) in enumerate(agents):
        _, groups = rollout(engine, problems, template, agent_tokenizer, n, sampling, [s + agent for s in seeds],
                            tools, max_turns)
        for slot, (problem, group) in enumerate(zip(problems, groups)):
            prompt_ids = tokenizer(render_prompt(template, problem.prompt, tokenizer, tools),
                                   add_special_tokens=False)["input_ids"]
            members[slot] += [(name, prompt_ids, c) for c in group]
    return [m for group in members for m in group]


def train_round(cfg, par, policy, tokenizer, flat, imitate, push_down, group_size: int, mixed_precision: str,
                step: int) -> float:
    """Accumulate the round's gradient: imitate the members above their group's mean, push down those below;
    the gradient norm before clipping (0 when no member anywhere is above or below: no update at all)."""
    # the policy's own samples train on their sampled ids; other agents' text is re-encoded (vocabularies differ);
    # (ids, loss mask): a tool's results in an episode are read, not learned
    targets = [(c.token_ids, c.loss_mask or [1] * len(c.token_ids)) if name == "policy" else
               _encoded(tokenizer, c) for name, _, c in flat]
    shared = (shared_prefixes([ids for ids, _ in targets], imitate, group_size) if cfg.unlikelihood_scope != "all"
              else [0] * len(flat))                # per member: the tokens it shares with a member imitated
    active = [i for i in range(len(flat)) if imitate[i] > 0 or push_down[i] > 0]
    batch_tokens = par.total(sum(sum(targets[i][1]) for i in active))            # the whole batch's
    learning = par.total(len(active)) > 0     # no member anywhere above or below its mean: no update at all
    active = (active or [0]) if learning else []   # a zero-weight row: every process joins the all-reduce
    micro = [(active[first:first + cfg.micro_batch_size], par.world)           # DDP averages: x world = the sum
             for first in range(0, len(active), cfg.micro_batch_size)]
    if learning:                                   # as many passes on each process, the extra ones weight 0
        micro = lockstep(par, micro, lambda first: (first[0], 0.0))
    for index, (rows, weight) in enumerate(micro):
        batch = pad_batch([flat[i][1] for i in rows], [targets[i][0] for i in rows], tokenizer.pad_token_id, device(),
                          [targets[i][1] for i in rows])
        with par.sync_unless(policy, accumulating=index + 1 < len(micro)):
            with autocast(mixed_precision):
                logprobs, _ = token_logprobs(policy, batch)                                # (b, C)
            mask = batch["loss_mask"]
            loss = sft_loss(logprobs, mask, imitate[rows].to(device()), batch_tokens)
            if cfg.unlikelihood_weight:
                pushed = pushed_tokens(mask, torch.tensor([shared[i] for i in rows], device=device()),
                                       cfg.unlikelihood_scope)                                    # (b, C)
                loss = loss + cfg.unlikelihood_weight * unlikelihood_loss(logprobs, pushed, push_down[rows].to(device()),
                                                                          batch_tokens)
            par.accelerator.backward(loss * weight)
    return par.clip_grad_norm(policy, cfg.max_grad_norm, step + 1) if learning else 0.0


def round_metrics(par, flat, totals, parts, failures, imitate, push_down) -> dict:
    """Rewards overall, per named reward and per source, over every process's members."""
    completions = [c for _, _, c in flat]
    totals, names = par.gather(totals), par.gather([name for name, _, _ in flat])
    parts = {name: par.gather(values) for name, values in parts.items()}
    lengths = par.gather([c.model_tokens for c in completions])
    by_source = defaultdict(list)
    for name, total in zip(names, totals):
        by_source[name].append(total)
    row = {"processes": par.world, "reward": sum(totals) / len(totals),
           **{f"reward/{k}": sum(v) / len(v) for k, v in parts.items()},
           **{f"source/{k}/reward": sum(v) / len(v) for k, v in by_source.items()},
           "imitated": int(par.total((imitate > 0).sum().item())), "pushed_down": int(par.total((push_down > 0).sum().item())),
           "reward_failures": int(par.total(failures)), "completion_length": sum(lengths) / len(lengths)}
    if "accuracy" in parts:
        row["accuracy"] = row["reward/accuracy"]
    return row


def pushed_tokens(mask: torch.Tensor, shared: torch.Tensor, scope: str) -> torch.Tensor:
    """Which tokens of pushed-down members unlikelihood acts on, (b, C) from the loss mask and each member's
    shared prefix length (b,): all (every token), departure (from the first token it does not share with a good
    member on), fork (that first token only: the choice that set it apart; what follows was written from a
    prefix already chosen, and holds the format tokens a bad member shares with good ones at other positions)."""
    position = torch.arange(mask.shape[1], device=mask.device)[None, :]
    if scope == "all":
        return mask
    return mask * (position >= shared[:, None] if scope == "departure" else position == shared[:, None])


def shared_prefixes(ids: list[list[int]], imitate: torch.Tensor, group_size: int) -> list[int]:
    """Per member, groups contiguous: how many of its first tokens it shares with the longest-matching member
    of its group that is imitated (0 when none is). Unlikelihood then starts where a below-average member
    departs from every good one: the format and first steps it has in common with them are not pushed down."""
    shared = []
    for i, mine in enumerate(ids):
        start = i - i % group_size
        good = [ids[j] for j in range(start, start + group_size) if j != i and imitate[j] > 0]
        shared.append(max((next((k for k, (a, b) in enumerate(zip(mine, other)) if a != b), min(len(mine), len(other)))
                           for other in good), default=0))
    return shared
