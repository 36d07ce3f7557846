"""The RL stage: Group Relative Policy Optimisation (paper eq. 1-3), one visible loop.

    r1lab train grpo --model smollm2-135m --task arithmetic --template r1_zero --rewards accuracy,format

Each step:
1. sample G = `samples_per_prompt` completions for each of `prompts_per_step` problems from the
   sampler (the policy, its bf16 copy, or vLLM); with `dynamic_sampling` (DAPO), more rounds of fresh
   problems until `prompts_per_step` groups have unequal rewards;
2. score them with the rule-based rewards; group advantages (eq. 3, or RLOO's leave-one-out);
3. a no-grad scoring pass over the micro-batches: pi_old, pi_ref, the entropy, the sampler mismatch
   and the truncated importance weights;
4. mu = `updates_per_batch` AdamW steps over the batch (micro-batched, gradients accumulated).

Choices and deviations from the paper, and why:
- pi_old's log-probs come from the scoring pass, a separate no-grad forward in the same precision as
  the update passes, so the mismatch and the importance weights, which need pi_old, are known before
  the first update. With mu = 1 that pass would compute exactly what the one update pass computes
  (the same weights and computation; measured bitwise equal here in fp32 and bf16), so it is fused
  into it: pi_old is the update pass's own log-probs, detached, and the ratio is exactly 1. That saves
  a forward pass per step (about a quarter of the training time at mu = 1).
- Dropout is off in the policy (as TRL's `disable_dropout`): with it, pi_theta and pi_old of the same
  weights differ token by token, so the ratio measures noise, not policy change. The saved checkpoint's
  config says dropout 0 too. (The built-in models have no dropout; this matters for others.)
- Truncated importance sampling (`importance_sampling`): the tokens are drawn by the sampler, whose
  log-probs differ from the trainer's wherever it is another computation (a bf16 copy while training
  in fp32 or under autocast, vLLM); with mu = 1 the PPO ratio is 1 and corrects none of it. Each
  token's surrogate is weighted by min(pi_old / pi_sampler, C) (r1lab/algorithms/losses.py); `auto`
  turns it on exactly when the sampler differs from the trainer, and the choice is printed.
- Dynamic sampling (DAPO, `dynamic_sampling`): rounds of `prompts_per_step` fresh problems (step s
  draws rounds s x max_draws + r) are sampled until `prompts_per_step` groups have unequal rewards or
  `dynamic_sampling_max_draws` rounds were drawn. The step trains on the first such groups; at the cap
  it is filled up with the first all-equal groups drawn (they add only the KL term), so every step
  trains on `prompts_per_step` groups (verl's DAPO stops with an error at its cap instead). One
  process only: several would stop drawing at different rounds.
- With LoRA the reference model is the policy with adapters disabled (no second copy in memory).
- Rows that add nothing to the gradient get no pass (`skip_zero_advantage`, on by default): with beta = 0
  a row whose advantage is 0 (every row of a group whose rewards are all equal: early in R1-Zero
  training, most groups) contributes exactly 0 to eq. 1, as does a row with no token in the loss. The
  loss denominators still count them, so the update is the same up to float summation order (a test);
  only the passes are fewer. A step where no row anywhere moves the gradient runs no pass and steps the
  optimiser on zero gradients, as the full passes would have (AdamW's momentum and decay still move).
  Several processes run as many passes each as the one with the most, the extra ones zero-weight:
  every sharded forward gathers from all processes, and DDP is kept in the same lockstep. TRL (1.x)
  runs every row.

Metrics: `kl` (every pass) is a token mean over the step's micro-batches. `clip_fraction` and the ratio's
`ratio_mean`, `ratio_min`, `ratio_max` cover passes 2..mu only (in the first the ratio is 1): with mu = 1
they are not logged. From the scoring pass, over every sampled token: `entropy`, `sampler_mismatch`
(mean |log pi_sampler - log pi_old| per token), `sampler_kl` (mean over sequences of sum_t k3, an
estimate of KL(pi_sampler || pi_old) per sequence); with importance sampling on, over the tokens in the
loss: `is_weight` (mean weight), `is_capped` (share of tokens cut to the cap). `zero_std_groups` is over
the groups trained on; with dynamic sampling `dynamic_draws` (rounds) and `dynamic_filtered` (share of
the drawn groups left out) say what was filtered, and `reward_drawn` is the mean reward over every
completion drawn (`reward`, over the groups trained on, is then biased by the filter).
`rows_trained` is the share of the step's rows that went through the passes (the others added exactly
nothing); entropy and sampler mismatch cover those rows. `state_gb` is the parameters and optimiser
state the main process holds (its shards under fsdp).
`warmup_steps` is in steps: the scheduler, which counts optimiser updates, gets it x mu.
Validation (`validation_problems` > 0): that many train-split problems, drawn after the training ones
(so disjoint from them and from the test split), are answered greedily every `validate_every` steps,
before the first and after the last; their accuracy goes to `validation.jsonl` (step = updates done).
The per-step training reward over a few fresh prompts mostly measures which prompts were drawn; this
is the learning curve on fixed problems.
With `mask_truncated`, truncated completions are in no loss denominator (r1lab/algorithms/losses.py).
With `tools` (`--tools python,calculator`), each completion is an episode in which the model calls them
mid-reasoning (r1lab/rollout/episodes.py): its tensors hold the tools' results, which the later tokens
attend to (`completion_mask`), but every loss, entropy, mismatch and token count covers only the tokens the
model wrote (`loss_mask`). Rewards read the whole episode. Per episode: `turns`, `tool_calls`,
`tool_errors`, `tokens_model`, `tokens_tool`.

Multi-process (accelerate; r1lab/distributed.py): each process samples whole groups for its share of
the prompts; denominators are global, metrics gathered, files written by the main process only.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import NamedTuple

import torch
from tqdm import tqdm

from r1lab import R1labError
from r1lab.algorithms.losses import (ADVANTAGES, POLICY_LOSSES, constant_groups, sampler_mismatch,
                                     truncated_importance_weights)
from r1lab.algorithms.sequences import CompletionLogits, pad_batch, token_logprobs
from r1lab.config import GRPOConfig
from r1lab.distributed import Parallel, prompt_seeds, state_gb
from r1lab.metrics import reflects
from r1lab.models import load_model
from r1lab.rewards import parse_rewards, score
from r1lab.rewards.accuracy import accuracy
from r1lab.rollout import Sampling, rollout
from r1lab.rollout.engines import make_engine
from r1lab.tasks import get_task
from r1lab.templates import get_template
from r1lab.tools import load_tools
from r1lab.runlock import release_folder
from r1lab.training import (JsonlLog, autocast, choose_precision, device, load_policy, make_optimizer, prepare_run, restore_state,
                            save_step, seed_everything, zero_gradients)
from r1lab.types import Problem


class Drawn(NamedTuple):
    """One problem's group: its G completions and their rewards (total and per named reward)."""
    problem: Problem
    prompt: str
    completions: list
    totals: list[float]
    parts: dict[str, list[float]]


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off: every nn.Dropout's p, every float module attribute named *dropout* (e.g. Llama's
    `attention_dropout`, read in forward) and the config's *dropout / *pdrop fields."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name, value in (config.to_dict().items() if config is not None else ()):
        if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float):
            setattr(config, name, 0.0)


def importance_sampling_on(choice: str, engine: str, dtype: str, precision) -> tuple[bool, str]:
    """Whether each token's surrogate is weighted by min(pi_old / pi_sampler, C), and why. `auto`: on when
    the sampler is another computation than the trainer's: another engine, rollouts in another dtype than
    the weights, or training under bf16 autocast (its norms and softmax run in fp32, a bf16 copy's in bf16)."""
    differences = [f"{engine} engine"] if engine != "hf" else []
    if precision.rollout_dtype != dtype:
        differences.append(f"rollouts {precision.rollout_dtype}, weights {dtype}")
    if precision.mixed_precision == "bf16":
        differences.append("training under bf16 autocast")
    if choice != "auto":
        return choice == "on", "as configured"
    if differences:
        return True, "auto: the sampler differs from the trainer: " + ", ".join(differences)
    return False, f"auto: the sampler is the trainer's own {dtype} computation"


def reference_logprobs(reference, model, policy, batch, temperature):
    """Log-probs under pi_ref: the frozen copy (a CompletionLogits), or the LoRA policy (`model`, trained as
    `policy`) with its adapters disabled."""
    with torch.no_grad():
        if reference is not None:
            return reference(batch, temperature)[0]
        with model.disable_adapter():
            return policy(batch, temperature)[0]


def sampler_logprobs(completions, width: int, dev) -> torch.Tensor:
    """The sampler's log-probs of the completions' tokens, right-padded with 0: (b, width)."""
    padded = torch.zeros(len(completions), width)
    for i, c in enumerate(completions):
        if len(c.logprobs) != len(c.token_ids):
            raise R1labError(f"the engine returned {len(c.logprobs)} log-probs for {len(c.token_ids)} tokens")
        padded[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
    return padded.to(dev)


def draw_groups(engine, tokenizer, template, sampling, weights, G: int, rounds, quota: int, tools=(), max_turns: int = 1):
    """Sample and score G completions for each problem of each round [(problems, seeds)], in order, stopping
    once `quota` groups have unequal rewards (one round, without dynamic sampling). Returns the first
    `quota` such groups, filled up with the first all-equal ones, in draw order, and what was drawn:
    {rounds, groups, tokens, failures, reward (summed over every completion drawn)}."""
    spread, equal, drawn = [], [], {"rounds": 0, "groups": 0, "tokens": 0, "failures": 0, "reward": 0.0}
    for problems, seeds in rounds:
        prompts, groups = rollout(engine, problems, template, tokenizer, G, sampling, seeds, tools, max_turns)
        completions = [c for group in groups for c in group]                    # groups contiguous
        totals, parts, failures = score(weights, completions, [p for p in problems for _ in range(G)], group_size=G)
        constant = constant_groups(torch.tensor(totals), G).tolist()            # (N,) as the advantages see them
        for i, (problem, prompt, group) in enumerate(zip(problems, prompts, groups)):
            rows = slice(i * G, (i + 1) * G)
            kept = (drawn["groups"], Drawn(problem, prompt, group, totals[rows], {k: v[rows] for k, v in parts.items()}))
            (equal if constant[i] else spread).append(kept)
            drawn["groups"] += 1
        drawn["rounds"] += 1
        drawn["tokens"] += sum(c.model_tokens for c in completions)
        drawn["failures"] += failures
        drawn["reward"] += sum(totals)
        if len(spread) >= quota:
            break
    chosen = sorted(spread[:quota] + equal[:max(0, quota - len(spread))], key=lambda pair: pair[0])
    return [group for _, group in chosen], drawn


def validate(engine, tokenizer, template, problems: list[Problem], max_new_tokens: int, tools=(), max_turns: int = 1) -> float:
    """Greedy accuracy of the current policy on fixed held-out problems (the `accuracy` reward, 1 = correct)."""
    _, groups = rollout(engine, problems, template, tokenizer, 1, Sampling(0.0, 1.0, max_new_tokens),
                        tools=tools, max_turns=max_turns)
    return sum(accuracy(group[0], problem) >= 1.0 for group, problem in zip(groups, problems)) / len(problems)


def accumulate(means: dict, metrics: dict, tokens: int) -> None:
    """Add a micro-batch's token means to `means` (name -> [sum of value x tokens, tokens])."""
    for key, value in metrics.items():
        means[key][0] += value * tokens
        means[key][1] += tokens


def step_metrics(par, kept: list[Drawn], drawn: dict, advantage_metrics: dict, means: dict, extremes: dict,
                 mismatch: tuple[list, list, list]) -> dict:
    """The step's metrics over every process's samples: rewards, lengths, reflection, truncation, the
    token means of the passes (`means`: name -> [sum of value x tokens, tokens]), the ratio's extremes and
    the sampler mismatch (`mismatch`: per sequence, summed |log-prob difference|, summed k3, tokens)."""
    completions = [c for g in kept for c in g.completions]
    totals, lengths = par.gather([t for g in kept for t in g.totals]), par.gather([len(c.token_ids) for c in completions])
    parts = {name: par.gather([v for g in kept for v in g.parts[name]]) for name in kept[0].parts}
    texts, finished = par.gather([c.text for c in completions]), par.gather([c.finish_reason for c in completions])
    absolute, k3, tokens = (par.gather(values) for values in mismatch)
    row = {"processes": par.world, "reward": sum(totals) / len(totals), "reward_std": torch.tensor(totals).std().item(),
           **{f"reward/{k}": sum(v) / len(v) for k, v in parts.items()},
           **{f"reward/{k}_std": torch.tensor(v).std().item() for k, v in parts.items()},
           "reward_failures": int(par.total(drawn["failures"])),
           **{key: sum(par.gather([value])) / par.world for key, value in advantage_metrics.items()},
           "completion_length": sum(lengths) / len(lengths), "completion_length_max": max(lengths),
           "reflection": sum(map(reflects, texts)) / len(texts),
           "truncated": sum(f == "length" for f in finished) / len(finished)}
    for key in sorted(set(par.gather(list(means)))):     # a process that ran no row has none of its own
        count = par.total(means[key][1])
        if count:
            row[key] = par.total(means[key][0]) / count
    if k3:                                               # none when no row went through the passes
        row.update(sampler_mismatch=sum(absolute) / max(sum(tokens), 1), sampler_kl=sum(k3) / len(k3))
    for key, value in extremes.items():
        values = [v for v in par.gather([value]) if abs(v) != float("inf")]   # inf: no token on that process
        if values:
            row[key] = min(values) if key.endswith("_min") else max(values)
    if "accuracy" in parts:
        row["accuracy"] = row["reward/accuracy"]
    if any(c.loss_mask for c in completions):            # episodes with tools
        row.update(episode_metrics(par, completions))
    return row


def episode_metrics(par, completions) -> dict:
    """Per episode, over every process's: model turns, tool calls, failed calls, tokens by who wrote them."""
    per_episode = {"turns": [c.turns for c in completions], "tool_calls": [len(c.tool_calls) for c in completions],
                   "tool_errors": [c.failed_calls for c in completions],
                   "tokens_model": [c.model_tokens for c in completions],
                   "tokens_tool": [len(c.token_ids) - c.model_tokens for c in completions]}
    return {key: sum(values) / len(values) for key, values in ((k, par.gather(v)) for k, v in per_episode.items())}


def train_grpo(cfg: GRPOConfig, resume: bool = False):
    par = Parallel(cfg.fsdp)
    if par.sharded and cfg.engine != "hf":
        raise R1labError(f"fsdp rolls out with the hf engine only (got engine {cfg.engine!r}): the vllm engine's "
                         "weight push is not gathered from the shards yet")
    if cfg.dynamic_sampling and par.world > 1:
        raise R1labError(f"dynamic_sampling runs in one process (got {par.world}): each process would stop drawing at "
                         "a different round; use --num-processes 1 or dynamic_sampling false")
    template, weights, tools = get_template(cfg.template), parse_rewards(cfg.rewards), load_tools(cfg.tools)
    draws = cfg.dynamic_sampling_max_draws if cfg.dynamic_sampling else 1       # rounds of prompts per step, at most
    problems = get_task(cfg.task, **cfg.task_options).problems(
        "train", cfg.steps * draws * cfg.prompts_per_step + cfg.validation_problems, cfg.seed)
    out, checkpoint = prepare_run(cfg.out, cfg, resume, write=par.is_main)       # every input read: now it writes
    precision = choose_precision(out, cfg.mixed_precision, cfg.rollout_dtype, par.is_main)
    use_is, why = importance_sampling_on(cfg.importance_sampling, cfg.engine, cfg.dtype, precision)
    if par.is_main:
        print(f"importance sampling: {'on, cap ' + str(cfg.importance_sampling_cap) if use_is else 'off'} ({why})")
    seed_everything(cfg.seed)
    validation = problems[len(problems) - cfg.validation_problems:] if cfg.validation_problems else []
    problems = problems[:len(problems) - len(validation)]                      # what training draws from
    par.check_divides(cfg.prompts_per_step)
    model, tokenizer = load_policy(cfg.model, checkpoint, cfg.dtype, cfg.lora_rank, cfg.lora_alpha,
                                   cfg.gradient_checkpointing)
    disable_dropout(model)
    engine = make_engine(cfg.engine, model, tokenizer, seed=cfg.seed, max_batch=cfg.prompts_per_step * cfg.samples_per_prompt,
                         decode_dtype=precision.rollout_dtype, gpu_memory_utilization=cfg.vllm_gpu_memory,
                         own_copy=par.sharded)          # sharded: the engine decodes from its own full copy
    shared_prompts = not cfg.gradient_checkpointing       # a prompt's KV cache cannot be kept under checkpointing
    policy = par.prepare(CompletionLogits(model, shared_prompts))              # DDP-wrapped, FSDP2-sharded or as it is
    reference = None                                      # pi_ref; with LoRA, the policy without its adapters
    if cfg.beta != 0 and cfg.lora_rank == 0:
        ref_model = load_model(cfg.model, cfg.dtype)[0].to(device()).eval().requires_grad_(False)
        reference = par.prepare_frozen(CompletionLogits(ref_model, shared_prompts))
    optimizer, scheduler = make_optimizer(model, cfg.learning_rate, cfg.weight_decay,   # the scheduler counts updates
                                          cfg.warmup_steps * cfg.updates_per_batch, cfg.lr_schedule,   # mu per step
                                          cfg.steps * cfg.updates_per_batch)
    generator = engine.generator                             # the sampler's RNG (None for vLLM), saved with checkpoints
    start = restore_state(checkpoint, optimizer, scheduler, generator, model)
    metrics_log = JsonlLog(out / "metrics.jsonl", start, tensorboard=True) if par.is_main else None
    samples_log = JsonlLog(out / "samples.jsonl", start) if par.is_main else None
    validation_log = JsonlLog(out / "validation.jsonl", start - 1) if par.is_main and validation else None
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    G, P = cfg.samples_per_prompt, cfg.prompts_per_step
    model.train()

    progress = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="grpo", unit="step", disable=not par.is_main)
    for step in progress:
        if par.sharded:
            engine.sync_weights()                           # every process at once: the rollout copy gets the new weights
        if validation_log is not None and step % cfg.validate_every == 0:
            validation_log.write({"step": step, "val_accuracy": validate(engine, tokenizer, template, validation,
                                                                         cfg.max_new_tokens, tools, cfg.max_turns)})
        began = time.perf_counter()
        # 1. sample G completions per problem (this process's share of the prompts, whole groups) and score them;
        #    with dynamic sampling, more rounds of fresh problems until P groups have unequal rewards
        rounds = [(par.share([problems[(index * P + i) % len(problems)] for i in range(P)]),
                   par.share(prompt_seeds(cfg.seed, index, P))) for index in range(step * draws, (step + 1) * draws)]
        kept, drawn = draw_groups(engine, tokenizer, template, sampling, weights, G, rounds, len(rounds[0][0]),
                                  tools, cfg.max_turns)
        sampled = time.perf_counter()
        completions = [c for g in kept for c in g.completions]                      # b = N/W * G, groups contiguous
        # 2. advantages within groups (eq. 3, or RLOO)
        rewards = torch.tensor([t for g in kept for t in g.totals])                 # (b,)
        advantages, advantage_metrics = ADVANTAGES[cfg.advantage](rewards, G, cfg.scale_rewards)   # (b,)
        prompt_ids = [tokenizer(g.prompt, add_special_tokens=False)["input_ids"] for g in kept for _ in range(G)]
        keep = [not (cfg.mask_truncated and c.finish_reason == "length") for c in completions]
        batch_tokens = par.total(sum(c.model_tokens for c, k in zip(completions, keep) if k))   # whole batch, only
        batch_sequences = par.total(sum(keep))                                       # what stays in the loss
        # rows that move the gradient: with beta = 0, one whose advantage is 0 (every row of a group with equal
        # rewards) adds exactly 0, as does one with no token in the loss; skip_zero_advantage runs no pass for them
        moves = [k and (cfg.beta != 0 or a != 0) for k, a in zip(keep, advantages.tolist())]
        run = [i for i, m in enumerate(moves) if m or not cfg.skip_zero_advantage]
        learning = par.total(len(run)) > 0          # no row anywhere: no pass; the update sees zero gradients
        run = (run or [0]) if learning else []      # a zero-weight row: every process joins the all-reduce
        micro = []                                  # (rows, batch, loss mask (b, C), weight), built once
        for first in range(0, len(run), cfg.micro_batch_size):
            rows = run[first:first + cfg.micro_batch_size]
            batch = pad_batch([prompt_ids[i] for i in rows], [completions[i].token_ids for i in rows], tokenizer.pad_token_id,
                              device(), [completions[i].loss_mask for i in rows])   # tool outputs: attended, not trained
            weight = par.world if any(moves[i] for i in rows) or not cfg.skip_zero_advantage else 0.0
            micro.append((rows, batch, batch["loss_mask"] * torch.tensor([keep[i] for i in rows], device=device())[:, None],
                          weight))                  # DDP averages: x world gives the global sum; padding: 0
        if par.world > 1 and learning:              # a sharded forward gathers from every process: as many
            micro += [micro[0][:3] + (0.0,)] * (par.most(len(micro)) - len(micro))   # passes on each, extras weight 0
        # 3. scoring, no grad: pi_old, pi_ref, entropy, the sampler's mismatch with pi_old, the importance weights.
        #    A pass of its own before the updates; with mu = 1 it rides on the update pass instead (see the docstring)
        means = defaultdict(lambda: [0.0, 0])        # metric -> [sum of value x tokens, tokens]
        mismatch, scored, fused = ([], [], []), {}, cfg.updates_per_batch == 1

        def score_micro_batch(i: int, logprobs: torch.Tensor, entropy: float) -> None:
            rows, batch, loss_mask, weight = micro[i]
            ref = reference_logprobs(reference, model, policy, batch, cfg.temperature) if cfg.beta else None
            sampler = sampler_logprobs([completions[r] for r in rows], logprobs.shape[1], device())              # (b, C)
            w, is_metrics = (truncated_importance_weights(logprobs, sampler, loss_mask, cfg.importance_sampling_cap)
                             if use_is else (None, {}))                                                   # (b, C)
            scored[i] = (logprobs, ref, w)
            if weight:                                   # padding passes are in no metric
                for values, new in zip(mismatch, (*sampler_mismatch(sampler, logprobs, batch["loss_mask"]),   # (b,)
                                                  batch["loss_mask"].sum(-1))):
                    values += new.tolist()
                accumulate(means, {"entropy": entropy}, int(batch["loss_mask"].sum()))
                accumulate(means, is_metrics, int(loss_mask.sum()))

        if not fused:
            with torch.no_grad(), autocast(precision.mixed_precision):
                for i, (rows, batch, loss_mask, weight) in enumerate(micro):
                    score_micro_batch(i, *token_logprobs(policy, batch, cfg.temperature, True))
        # 4. mu update passes over the micro-batches
        extremes = {"ratio_min": float("inf"), "ratio_max": float("-inf")} if cfg.updates_per_batch > 1 else {}
        for update in range(cfg.updates_per_batch):
            for i, (rows, batch, loss_mask, weight) in enumerate(micro):
                with par.sync_unless(policy, accumulating=i + 1 < len(micro)):
                    with autocast(precision.mixed_precision):
                        logprobs, entropy = token_logprobs(policy, batch, cfg.temperature, with_entropy=fused)       # (b, C)
                        if fused:
                            with torch.no_grad():
                                score_micro_batch(i, logprobs.detach(), entropy)
                    old, ref, is_weights = scored[i]
                    loss, loss_metrics = POLICY_LOSSES[cfg.policy_loss](
                        logprobs, old, ref, advantages[rows].to(device()), loss_mask, eps_low=cfg.epsilon,
                        eps_high=cfg.epsilon_high, beta=cfg.beta, mode=cfg.loss_aggregation, ratio_level=cfg.ratio_level,
                        is_weights=is_weights, batch_sequences=batch_sequences, batch_tokens=batch_tokens,
                        max_length=cfg.max_new_tokens)
                    par.accelerator.backward(loss * weight)
                if not weight:                                  # padding passes are in no metric
                    continue
                tokens = int(loss_mask.sum())
                accumulate(means, {k: v for k, v in loss_metrics.items() if k == "kl"}, tokens)
                if update > 0:                                  # in the first pass the ratio is 1: nothing to see
                    accumulate(means, {k: loss_metrics[k] for k in ("clip_fraction", "ratio_mean")}, tokens)
                    extremes["ratio_min"] = min(extremes["ratio_min"], loss_metrics.get("ratio_min", float("inf")))
                    extremes["ratio_max"] = max(extremes["ratio_max"], loss_metrics.get("ratio_max", float("-inf")))
            if not learning:                                    # what every pass would have left: zero gradients,
                zero_gradients(model)                           # with which AdamW still moves (momentum, decay)
            grad_norm = par.clip_grad_norm(policy, cfg.max_grad_norm, step + 1)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        trained = time.perf_counter()
        # 5. metrics (over every process's samples), samples, checkpoint (main process)
        row = {"step": step + 1, **step_metrics(par, kept, drawn, advantage_metrics, means, extremes, mismatch)}
        if cfg.dynamic_sampling:
            row.update(dynamic_draws=drawn["rounds"], dynamic_filtered=1 - len(kept) / drawn["groups"],
                       reward_drawn=drawn["reward"] / (drawn["groups"] * G))
        ran = [i for rows, _, _, weight in micro if weight for i in rows]        # the rows that went through the passes
        trained_tokens = par.total(sum(len(prompt_ids[i]) + len(completions[i].token_ids) for i in ran))
        row["rows_trained"] = par.total(len(ran)) / par.total(len(completions))
        row.update({"learning_rate": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "state_gb": state_gb(model, optimizer),
                    "sample_tokens_per_s": par.total(drawn["tokens"]) / (sampled - began),
                    "train_tokens_per_s": cfg.updates_per_batch * trained_tokens / (trained - sampled),
                    "sample_seconds": sampled - began, "train_seconds": trained - sampled, "step_seconds": trained - began})
        if par.is_main:
            metrics_log.write(row)
            if step % cfg.sample_every == 0:
                first = kept[0]
                for c, total in zip(first.completions, first.totals):
                    samples_log.write({"step": step + 1, "prompt": first.problem.prompt, "truth": first.problem.answer,
                                       "completion": c.text, "answer": c.answer, "reward": total})
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_step(par, out, model, tokenizer, step + 1, optimizer, scheduler, generator)
        par.barrier()
        progress.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row.get('accuracy', 0):.2f}",
                             len=f"{row['completion_length']:.0f}", s=f"{row['step_seconds']:.1f}")
    if par.sharded and validation and start < cfg.steps:
        engine.sync_weights()
    if validation_log is not None and start < cfg.steps:
        accuracy_now = validate(engine, tokenizer, template, validation, cfg.max_new_tokens, tools, cfg.max_turns)
        validation_log.write({"step": cfg.steps, "val_accuracy": accuracy_now})
        print(f"validation accuracy after {cfg.steps} steps: {accuracy_now:.3f}")
    release_folder(out)
    return out / "checkpoint"
