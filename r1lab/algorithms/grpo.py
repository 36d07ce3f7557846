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
Each is a named phase in r1lab/algorithms/grpo_step.py (draw -> micro_batches -> score_passes -> update ->
step_metrics) over typed records; this module sets a run up (`setup`) and runs the loop (`train_grpo`).

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
- The prompt pool (`prompt_pool`, off by default; r1lab/algorithms/prompt_pool.py; prime-rl's easy/hard pools): per
  problem id the pass rates of its last `pool_seen` groups (the share with full accuracy when `accuracy` is a reward,
  else the mean total normalised to [0, 1]). The step's problems are the task's list in order, as without it, passing
  over the prompts solved every time or never (their groups would have no spread), except in a `pool_explore` share
  of slots drawn by a generator seeded on (seed, round): the same on every process. With dynamic sampling each round
  is drawn from the pool once the round before is in the record, and the list is walked by a cursor, not windowed per
  step. The record and the cursor are saved with each checkpoint: a resumed run draws what an uninterrupted one does.
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
completion drawn (`reward`, over the groups trained on, is then biased by the filter). With the prompt pool,
`pool_skipped` (the step's candidates passed over as set aside), `pool_saved` = pool_skipped / (pool_skipped + groups
sampled): of the groups a plain run would sample to go through the same stretch of the problem list, the share not
sampled; `pool_easy` and `pool_hard`, the prompts set aside after the step (solved every time, never solved).
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

Rewards that fail (raise, or return NaN, an infinity or no number) score 0 there: `reward_failures` counts the
step's samples with a failed reward, the progress line shows `fail=N`, each reward's first failure is printed with
its error, and failures on more than `max_reward_failure_share` of a step's samples stop the run before its update.
Live warnings (r1lab/algorithms/diagnostics.py: no learning signal, truncation, entropy or length collapse, reward
hacking, sampler mismatch), each with what to try, are printed, listed under `warnings` in the step's metrics.jsonl
row and shown as `warn=` on the progress line; they start afresh on resume.

Multi-process (accelerate; r1lab/distributed.py): each process samples whole groups for its share of
the prompts; denominators are global, metrics gathered, files written by the main process only.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from r1lab.eta import Progress

from r1lab import R1labError
from r1lab.algorithms.diagnostics import Diagnostics
from r1lab.algorithms.grpo_step import (Drawn, Run, StepStats, draw, micro_batches, score_passes, step_metrics,
                                        update)
from r1lab.algorithms.losses import constant_groups
from r1lab.algorithms.prompt_pool import PromptPool
from r1lab.algorithms.sequences import CompletionLogits
from r1lab.checkpoint import keep_best
from r1lab.config import GRPOConfig
from r1lab.distributed import Parallel, state_gb
from r1lab.rewards import parse_rewards, score
from r1lab.rewards.accuracy import accuracy
from r1lab.rollout import Sampling, rollout
from r1lab.rollout.engines import make_engine
from r1lab.runlock import release_folder
from r1lab.tasks import get_task
from r1lab.templates import get_template
from r1lab.tools import load_tools
from r1lab.training import (JsonlLog, check_world, choose_precision, end_step, finish_run, load_on_device, load_policy,
                            make_optimizer, prepare_run, restore_state, seed_everything, start_trackers)
from r1lab.types import Problem


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


def draw_groups(engine, tokenizer, template, sampling, weights, G: int, rounds, quota: int, tools=(), max_turns: int = 1,
                scored=None):
    """Sample and score G completions for each problem of each round [(problems, seeds)], in order, stopping
    once `quota` groups have unequal rewards (one round, without dynamic sampling). Returns the first
    `quota` such groups, filled up with the first all-equal ones, in draw order, and what was drawn:
    {rounds, groups, tokens, failures (samples on which a reward failed), reward (summed over every completion
    drawn), errors (each failed reward's first error)}. `scored(problems, totals, parts)`, when given, sees each
    round once it is scored, before the next is asked for (the prompt pool's record; `rounds` may be lazy)."""
    spread, equal = [], []
    drawn = {"rounds": 0, "groups": 0, "tokens": 0, "failures": 0, "reward": 0.0, "errors": {}}
    for problems, seeds in rounds:
        prompts, groups = rollout(engine, problems, template, tokenizer, G, sampling, seeds, tools, max_turns)
        completions = [c for group in groups for c in group]                    # groups contiguous
        totals, parts, failures = score(weights, completions, [p for p in problems for _ in range(G)], group_size=G,
                                        errors=drawn["errors"])
        if scored is not None:
            scored(problems, totals, parts)
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


def setup(cfg: GRPOConfig, resume: bool) -> tuple[Run, Path, Path | None, list[Problem]]:
    """Everything a step uses, checked and loaded: (run, output folder, checkpoint to resume, validation problems).
    Every input is read before the output folder is written to."""
    par = Parallel(cfg.fsdp)
    if par.sharded and cfg.engine != "hf":
        raise R1labError(f"fsdp rolls out with the hf engine only (got engine {cfg.engine!r}): the vllm engine's "
                         "weight push is not gathered from the shards yet")
    check_world(cfg, par.world, launching=False)
    template, weights, tools = get_template(cfg.template), parse_rewards(cfg.rewards), load_tools(cfg.tools)
    draws = cfg.dynamic_sampling_max_draws if cfg.dynamic_sampling else 1       # rounds of prompts per step, at most
    problems = get_task(cfg.task, **cfg.task_options).problems(
        "train", cfg.steps * draws * cfg.prompts_per_step + cfg.validation_problems, cfg.seed)
    out, checkpoint = prepare_run(cfg.out, cfg, resume, write=par.is_main)
    precision = choose_precision(out, cfg.mixed_precision, cfg.rollout_dtype, par.is_main)
    use_is, why = importance_sampling_on(cfg.importance_sampling, cfg.engine, cfg.dtype, precision)
    if par.is_main:
        print(f"importance sampling: {'on, cap ' + str(cfg.importance_sampling_cap) if use_is else 'off'} ({why})")
    seed_everything(cfg.seed, cfg.full_determinism)
    validation = problems[len(problems) - cfg.validation_problems:] if cfg.validation_problems else []
    problems = problems[:len(problems) - len(validation)]                      # what training draws from
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
        ref_model = load_on_device(cfg.model, cfg.dtype)[0].requires_grad_(False)
        reference = par.prepare_frozen(CompletionLogits(ref_model, shared_prompts))
    optimizer, scheduler = make_optimizer(model, cfg.learning_rate, cfg.weight_decay,   # the scheduler counts updates
                                          cfg.warmup_steps * cfg.updates_per_batch, cfg.lr_schedule,   # mu per step
                                          cfg.steps * cfg.updates_per_batch)
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    run = Run(cfg, par, model, tokenizer, policy, reference, engine, optimizer, scheduler, template, weights, tools,
              problems, sampling, precision.mixed_precision, use_is, draws,
              PromptPool(cfg.pool_easy, cfg.pool_hard, cfg.pool_seen, cfg.pool_explore) if cfg.prompt_pool else None)
    return run, out, checkpoint, validation


def train_grpo(cfg: GRPOConfig, resume: bool = False):
    """The RL stage's loop: per step draw -> micro-batches -> score -> update -> metrics, samples, checkpoint."""
    run, out, checkpoint, validation = setup(cfg, resume)
    par, engine = run.par, run.engine
    extras = {"prompt_pool": run.pool} if run.pool is not None else {}     # resumed with the checkpoint
    start = restore_state(checkpoint, run.optimizer, run.scheduler, engine.generator, run.model, extras)
    logs = Logs(out, start, par.is_main, bool(validation), start_trackers(out, cfg) if par.is_main else [])
    watch = Watch(par.is_main)
    run.model.train()

    def validation_accuracy():
        return validate(engine, run.tokenizer, run.template, validation, cfg.max_new_tokens, run.tools, cfg.max_turns)

    progress = Progress(range(start, cfg.steps), initial=start, total=cfg.steps, desc="grpo", unit="step", disable=not par.is_main)
    for step in progress:
        if par.sharded:
            engine.sync_weights()                           # every process at once: the rollout copy gets the new weights
        if logs.validation is not None and step % cfg.validate_every == 0:
            accuracy_now = validation_accuracy()
            logs.validation.write({"step": step, "val_accuracy": accuracy_now})
            keep_best(out, step, accuracy_now)               # checkpoint/ saved at this step: its card; best/ if best
        began = time.perf_counter()
        batch = draw(run, step, draw_groups)                               # 1-2. sample, score, advantages
        sampled = time.perf_counter()
        passes = micro_batches(run, batch)                                 # the rows that move the gradient
        stats = StepStats()
        scores = score_passes(run, batch, passes, stats)                   # 3. pi_old, pi_ref, weights (mu > 1)
        grad_norm = update(run, batch, passes, scores, stats, step)        # 4. mu AdamW steps
        trained = time.perf_counter()
        row = {"step": step + 1, **step_metrics(par, batch, stats),        # 5. metrics, samples, checkpoint
               **timing_metrics(run, batch, passes, grad_norm, began, sampled, trained)}
        watch.step(row, batch.reward_errors)                              # warnings: printed, in the row
        logs.write(step, row, batch.kept[0], cfg.sample_every)
        end_step(par, out, step, cfg.steps, cfg.save_every, run.model, run.tokenizer, run.optimizer, run.scheduler,
                 engine.generator, cfg.save_total_limit, extras)
        progress.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row.get('accuracy', 0):.2f}",
                             len=f"{row['completion_length']:.0f}", s=f"{row['step_seconds']:.1f}", **watch.postfix(row))
    if par.sharded and validation and start < cfg.steps:
        engine.sync_weights()
    if logs.validation is not None and start < cfg.steps:
        accuracy_now = validation_accuracy()
        logs.validation.write({"step": cfg.steps, "val_accuracy": accuracy_now})
        keep_best(out, cfg.steps, accuracy_now)
    finish_run(out, logs.metrics)                           # the key figures and where everything is
    release_folder(out)
    return out / "checkpoint"


def timing_metrics(run: Run, batch, passes, grad_norm: float, began: float, sampled: float, trained: float) -> dict:
    """The step's optimiser figures, the share of rows that went through the passes, speeds and seconds."""
    par, cfg = run.par, run.cfg
    ran = [i for p in passes if p.weight for i in p.rows]            # the rows that went through the passes
    trained_tokens = par.total(sum(len(batch.prompt_ids[i]) + len(batch.completions[i].token_ids) for i in ran))
    row = {"rows_trained": par.total(len(ran)) / par.total(len(batch.completions))}
    if cfg.dynamic_sampling:
        drawn, G = batch.drawn, cfg.samples_per_prompt
        row.update(dynamic_draws=drawn["rounds"], dynamic_filtered=1 - len(batch.kept) / drawn["groups"],
                   reward_drawn=drawn["reward"] / (drawn["groups"] * G))
    if run.pool is not None:
        row.update(run.pool.metrics(batch.drawn["pool_skipped"], int(par.total(batch.drawn["groups"]))))
    return {**row, "learning_rate": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
            "state_gb": state_gb(run.model, run.optimizer),
            "sample_tokens_per_s": par.total(batch.drawn["tokens"]) / (sampled - began),
            "train_tokens_per_s": cfg.updates_per_batch * trained_tokens / (trained - sampled),
            "sample_seconds": sampled - began, "train_seconds": trained - sampled, "step_seconds": trained - began,
            "threads": par.threads.threads, "cpu_others": par.threads.others}


class Watch:
    """What a run tells its user as it goes: each reward's first failure with its error, and the diagnostics'
    warnings (r1lab/algorithms/diagnostics.py), each printed (main process) and listed under `warnings` in the
    step's metrics row; the progress line's `fail=` (samples with a failed reward) and `warn=` (checks now held)."""

    def __init__(self, main: bool):
        self.main, self.diagnostics, self.warned = main, Diagnostics(), set()

    def step(self, row: dict, reward_errors: dict[str, str]) -> None:
        lines = [f"reward {name!r} failed ({error}); where it fails it scores 0 and the sample counts in reward_failures"
                 for name, error in reward_errors.items() if name not in self.warned]
        self.warned |= set(reward_errors)
        lines += [alert.message for alert in self.diagnostics.check(row)]
        if lines:
            row["warnings"] = lines
        for line in lines if self.main else ():
            Progress.write(f"r1lab: warning: step {row['step']}: {line}", file=sys.stderr)

    def postfix(self, row: dict) -> dict:
        active = self.diagnostics.active
        return {**({"fail": row["reward_failures"]} if row["reward_failures"] else {}),
                **({"warn": ",".join(active)} if active else {})}


class Logs:
    """The main process's metrics.jsonl, samples.jsonl and validation.jsonl (None elsewhere), resumed at `start`."""

    def __init__(self, out: Path, start: int, main: bool, validating: bool, trackers: list = ()):
        self.metrics = JsonlLog(out / "metrics.jsonl", start, trackers) if main else None
        self.samples = JsonlLog(out / "samples.jsonl", start) if main else None
        self.validation = JsonlLog(out / "validation.jsonl", start - 1, trackers) if main and validating else None

    def write(self, step: int, row: dict, first: Drawn, sample_every: int) -> None:
        if self.metrics is None:
            return
        self.metrics.write(row)
        if step % sample_every == 0:
            for c, total in zip(first.completions, first.totals):
                self.samples.write({"step": step + 1, "prompt": first.problem.prompt, "truth": first.problem.answer,
                                    "completion": c.text, "answer": c.answer, "reward": total})
