"""Stage configs: one frozen dataclass per stage kind, loaded from YAML and/or key=value overrides.

    cfg = load_config(GRPOConfig, "my.yaml", {"steps": "20"})

Every field is commented with its unit and the paper default it follows. Unknown keys are errors
that name the valid ones. Every field is checked by one mechanism, `check_fields` (r1lab/schema.py): its
type from the annotation and, where RANGES or CHOICES name it, its range or allowed values. Impossible
combinations of fields are caught in each class's `check()`; both run in `load_config`, before any model
loads. Nothing of the domain is imported here: what needs a registry (a user's reward module, a tool's
schema) is checked by the stage that uses it, before it writes anything.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from r1lab import R1labError
from r1lab.schema import (AUGMENTATIONS, CHOICES, TYPE_NAMES, as_field_type, has_type, check_fields, read_yaml,
                          reward_weights, short_repr)

NOT_SETTINGS = ("out", "save_every", "sample_every",   # where and how often a stage writes, and what it
                "validation_problems", "validate_every",   # measures on the side: never change its checkpoints;
                "fsdp",                                    # how the processes hold the parameters: the same training
                "skip_zero_advantage",                     # which rows with a zero gradient get a pass: the same
                "packed",                                  # one unpadded row per micro-batch: the same sums
                "save_total_limit", "report_to")           # which checkpoints are kept, where metrics are also sent


@dataclass(frozen=True)
class GRPOConfig:
    INPUTS: ClassVar[tuple] = ("model", "task", "rewards", "tools")   # what check_inputs reads (r1lab/training.py)
    # what to train
    model: str = "smollm2-135m"        # model spec (alias, HF folder, .gguf, hub id)
    task: str = "arithmetic"           # task spec (see r1lab.tasks)
    task_options: dict = field(default_factory=dict)   # options of the task, e.g. {operands: 2}
    template: str = "r1_zero"          # prompt template: r1_zero (paper Table 1), chat, json_cot
    rewards: str = "accuracy,format"   # weighted sum of named rewards, 'name=weight,...' (R1-Zero: accuracy + format)
    max_reward_failure_share: float = 0.5   # share of a step's samples, 0-1: stop the run when rewards fail (raise,
                                            # NaN, no number) on more of them; 1 = never stop
    # batch
    steps: int = 20                    # optimisation batches (each: sample, score, mu updates)
    prompts_per_step: int = 2          # problems per step
    samples_per_prompt: int = 4        # G, completions per problem (R1: 16; DeepSeekMath GRPO: 64)
    micro_batch_size: int = 8          # sequences per forward/backward pass, per device
    packed: bool = False               # run a micro-batch as one row, no padding (prompts still once per group); the
                                       # same results up to float summation order (r1lab/algorithms/sequences.py)
    updates_per_batch: int = 1         # mu, optimisation passes over one sampled batch (DeepSeekMath: 1)
    # sampling
    max_new_tokens: int = 128          # completion length cap, tokens
    temperature: float = 1.0           # sampling temperature (R1-Zero: 1.0)
    top_p: float = 1.0                 # nucleus mass (R1-Zero: 1.0)
    rollout_dtype: str = "auto"        # "bfloat16": sample from a bf16 copy of the policy, refreshed each step; auto: bf16 where native
    engine: str = "hf"                 # rollout engine: hf (any device) or vllm (GPU; pip install 'r1lab[vllm]')
    vllm_gpu_memory: float = 0.3       # share of the GPU's memory vLLM may take (the trainer needs the rest)
    mask_truncated: bool = False       # drop completions that hit max_new_tokens from the loss (DAPO's overlong filter)
    tools: str = ""                    # tools the model may call while it reasons: python,calculator,package.module:function
                                       # (r1lab/tools.py); each completion is then an episode, tool outputs out of the loss
    max_turns: int = 4                 # with tools: model turns per episode at most (max_new_tokens bounds the episode)
    dynamic_sampling: bool = False     # DAPO: draw more prompts until prompts_per_step groups have unequal rewards
    dynamic_sampling_max_draws: int = 3   # rounds of prompts_per_step fresh prompts per step at most, the first included;
                                          # then the step trains on what it has (verl's DAPO scripts: 10, then an error)
    prompt_pool: bool = False          # set aside prompts whose last groups were solved every time or never; not in the
                                       # paper (r1lab/algorithms/prompt_pool.py); with dynamic_sampling each round draws from it
    pool_explore: float = 0.1          # share of each round's prompts, 0-1, taken in order whatever their record (1 = plain)
    pool_easy: float = 1.0             # pass rate, 0-1: a recent mean at least this sets a prompt aside as solved every time
    pool_hard: float = 0.0             # pass rate, 0-1: a recent mean at most this sets a prompt aside as never solved
    pool_seen: int = 1                 # groups: a prompt is judged on the mean of its last pool_seen groups, once it has them
    # objective
    beta: float = 0.04                 # KL weight to the frozen reference (DeepSeekMath: 0.04; R1: 0.001); 0 loads no reference
    epsilon: float = 0.2               # clip range below 1 (and above, unless epsilon_high is set) (DeepSeekMath, PPO: 0.2)
    epsilon_high: float | None = None  # clip range above 1 (DAPO clip-higher: 0.28); None = epsilon
    scale_rewards: bool = True         # divide advantages by the group std (eq. 3); false = Dr. GRPO (grpo advantages only)
    advantage: str = "grpo"            # grpo: eq. 3; rloo: r_i - mean of the group's others, no std (Ahmadian et al., 2024)
    policy_loss: str = "grpo"          # grpo: eq. 1's clipped surrogate with eq. 2's k3 KL (r1lab/algorithms/losses.py)
    loss_aggregation: str = "sample"   # sample (paper), token (DAPO), constant (Dr. GRPO)
    skip_zero_advantage: bool = True   # with beta = 0, no pass for rows whose advantage is 0 (groups of equal rewards):
                                       # their gradient is exactly 0; entropy and mismatch then cover the rows trained
    ratio_level: str = "token"         # token (eq. 1) or sequence (GSPO: one geometric-mean ratio per sequence;
                                       # its paper clips at epsilon 3e-4, epsilon_high 4e-4)
    importance_sampling: str = "auto"  # truncated IS weight min(pi_old/pi_sampler, C) per token: on, off, auto (on when the
                                       # sampler differs from the trainer: vllm, rollout_dtype != dtype, bf16 autocast)
    importance_sampling_cap: float = 2.0   # C, a ratio (the TIS blog's and TRL's while it truncated per token: 2;
                                           # TRL's default is now sequence-level masking at 3)
    # optimiser
    learning_rate: float = 1e-6        # AdamW peak lr (DeepSeekMath GRPO: 1e-6; R1: 3e-6); small models want more
    weight_decay: float = 0.0          # AdamW weight decay
    warmup_steps: int = 0              # linear warm-up, steps
    lr_schedule: str = "constant"      # constant, linear or cosine decay after warm-up
    max_grad_norm: float = 1.0         # gradient clipping, L2 norm
    lora_rank: int = 0                 # 0 = full fine-tuning; > 0 trains LoRA adapters (peft) on all linear layers
    lora_alpha: int = 32               # LoRA scaling numerator
    gradient_checkpointing: bool = False   # recompute activations in backward: less memory, ~35% slower
    fsdp: bool = False                 # shard parameters, gradients and optimiser state over the processes (FSDP2)
    dtype: str = "float32"             # weights dtype: float32 or bfloat16
    mixed_precision: str = "auto"      # "bf16": autocast training passes (fp32 weights, loss math); auto: fp32 (bf16 rollouts: rollout_dtype)
    # bookkeeping
    seed: int = 0                      # problems, sampling and initialisation
    full_determinism: bool = False     # deterministic kernels (torch.use_deterministic_algorithms): on a GPU, runs and resumes
                                       # repeat bit for bit, a little slower (transformers/TRL name); CPU runs already do
    save_every: int = 10               # steps between checkpoints (the last step always saves)
    save_total_limit: int = 0          # checkpoint-<step>/ folders kept, the newest, beside checkpoint/ (the latest, which
                                       # resume reads); 0 = none: each holds the optimiser state too (r1lab/checkpoint.py)
    report_to: str = "none"            # trackers the metrics also go to: tensorboard, wandb, trackio, mlflow, or a comma
                                       # list (accelerate's tracker classes; pip install 'r1lab[trackers]')
    sample_every: int = 5              # steps between writing example completions to samples.jsonl
    validation_problems: int = 0       # train-split problems kept out of training, scored greedily (validation.jsonl)
    validate_every: int = 5            # steps between validations (also before the first step and after the last)
    out: str = "runs/grpo"             # output directory

    def check(self) -> None:
        reward_weights(self.rewards)
        if self.samples_per_prompt < 2:
            raise R1labError(f"samples_per_prompt (G) must be >= 2 for group-relative advantages, got {self.samples_per_prompt}")
        batch = self.prompts_per_step * self.samples_per_prompt
        if batch % self.micro_batch_size:
            raise R1labError(f"prompts_per_step x samples_per_prompt = {batch} sequences does not divide into "
                             f"micro-batches of micro_batch_size = {self.micro_batch_size}")
        if self.prompt_pool and self.pool_hard >= self.pool_easy:
            raise R1labError(f"pool_hard ({self.pool_hard}) must be below pool_easy ({self.pool_easy}): every prompt "
                             "would be set aside")


@dataclass(frozen=True)
class SFTConfig:
    INPUTS: ClassVar[tuple] = ("model", "data", "tools")
    model: str = "smollm2-135m"        # model spec to fine-tune
    data: str = "cold.jsonl"           # jsonl with "prompt" (the question) and "completion" (the reply in the template's format)
    template: str = "r1_zero"          # renders each prompt, as it will be at RL time
    tools: str = ""                    # tools described in each prompt, as at RL time; <tool_response> blocks stay out of the loss
    epochs: int = 1                    # passes over the data
    batch_size: int = 8                # sequences per optimiser step
    micro_batch_size: int = 8          # sequences per forward/backward pass, per device
    packed: bool = False               # run a micro-batch as one row, no padding: the same results up to float
                                       # summation order (r1lab/algorithms/sequences.py)
    max_length: int = 0                # tokens per row (prompt + completion) at most; longer rows are skipped and
                                       # counted (TRL's max_length truncates instead); 0 = the model's context
    learning_rate: float = 3e-5        # AdamW peak lr (measured here: 3e-5 moves SmolLM2-135M in one epoch)
    weight_decay: float = 0.0          # AdamW weight decay
    warmup_steps: int = 0              # linear warm-up, optimiser steps
    lr_schedule: str = "constant"      # constant, linear or cosine decay after warm-up
    max_grad_norm: float = 1.0         # gradient clipping, L2 norm
    lora_rank: int = 0                 # 0 = full fine-tuning; > 0 trains LoRA adapters
    lora_alpha: int = 32               # LoRA scaling numerator
    gradient_checkpointing: bool = False   # recompute activations in backward
    fsdp: bool = False                 # shard parameters, gradients and optimiser state over the processes (FSDP2)
    dtype: str = "float32"             # weights dtype
    mixed_precision: str = "auto"      # "bf16" autocasts forward/backward; auto: fp32 (bf16 autocast measured to weaken short fine-tunes)
    seed: int = 0                      # data order
    full_determinism: bool = False     # deterministic kernels (torch.use_deterministic_algorithms): on a GPU, runs and resumes
                                       # repeat bit for bit, a little slower (transformers/TRL name); CPU runs already do
    save_every: int = 50               # optimiser steps between checkpoints (the last always saves)
    save_total_limit: int = 0          # checkpoint-<step>/ folders kept, the newest, beside checkpoint/ (the latest, which
                                       # resume reads); 0 = none: each holds the optimiser state too (r1lab/checkpoint.py)
    report_to: str = "none"            # trackers the metrics also go to: tensorboard, wandb, trackio, mlflow, or a comma
                                       # list (accelerate's tracker classes; pip install 'r1lab[trackers]')
    out: str = "runs/sft"              # output directory

    def check(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise R1labError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")


@dataclass(frozen=True)
class CompeteConfig:
    """Learning from competition without RL (the talk's proposal); sampling as GRPO, training by SFT."""
    INPUTS: ClassVar[tuple] = ("model", "sources", "task", "rewards", "tools")
    model: str = "smollm2-135m"        # the trained policy
    task: str = "arithmetic"
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"          # the policy's prompt style
    rewards: str = "accuracy,format"   # 'majority' needs no ground truth
    sources: list[dict] = field(default_factory=list)   # extra group members: [{model: SPEC, template: NAME, samples: N}]; never trained
    rounds: int = 20                   # sample-score-train rounds (expert iteration)
    prompts_per_step: int = 4          # problems per round
    samples_per_prompt: int = 4        # the policy's members per group
    micro_batch_size: int = 8          # sequences per forward/backward pass
    max_new_tokens: int = 128
    tools: str = ""                    # tools the members may call while they reason (r1lab/tools.py); "" = none
    max_turns: int = 4                 # with tools: model turns per episode at most
    temperature: float = 1.0
    top_p: float = 1.0
    weight_by_advantage: bool = False  # weight imitated / pushed-down members by |eq. 3 advantage| instead of 1
    unlikelihood_weight: float = 1.0   # weight of pushing below-average members down; 0 switches it off
    unlikelihood_scope: str = "fork"   # fork: push down only the first token where a member departs from every
                                       # above-average member of its group; departure: that token and all after it
                                       # (measured to collapse: docs/compete.md); all: every token
    learning_rate: float = 1e-5        # AdamW lr
    max_grad_norm: float = 1.0
    lora_rank: int = 0                 # 0 = full fine-tuning; > 0 trains LoRA adapters (peft) on all linear layers
    lora_alpha: int = 32               # LoRA scaling numerator
    mixed_precision: str = "auto"      # "bf16" autocasts training passes; auto: fp32 (bf16 rollouts: rollout_dtype)
    rollout_dtype: str = "auto"        # "bfloat16": sample from a bf16 copy of the policy; auto: bf16 where native
    fsdp: bool = False                 # shard parameters, gradients and optimiser state over the processes (FSDP2)
    seed: int = 0
    full_determinism: bool = False     # deterministic kernels (torch.use_deterministic_algorithms): on a GPU, runs and resumes
                                       # repeat bit for bit, a little slower (transformers/TRL name); CPU runs already do
    save_every: int = 10               # rounds between checkpoints (the last always saves)
    save_total_limit: int = 0          # checkpoint-<step>/ folders kept, the newest, beside checkpoint/ (the latest, which
                                       # resume reads); 0 = none: each holds the optimiser state too (r1lab/checkpoint.py)
    report_to: str = "none"            # trackers the metrics also go to: tensorboard, wandb, trackio, mlflow, or a comma
                                       # list (accelerate's tracker classes; pip install 'r1lab[trackers]')
    out: str = "runs/compete"

    def check(self) -> None:
        reward_weights(self.rewards)
        for i, source in enumerate(self.sources):
            expected = f"CompeteConfig.sources[{i}]: expected {{model: SPEC, template: NAME, samples: N}}"
            if "model" not in source or set(source) - {"model", "template", "samples"}:
                raise R1labError(f"{expected}, got {short_repr(source)}")
            for key, kind in (("model", str), ("template", str), ("samples", int)):
                if key in source and not has_type(source[key], kind):
                    raise R1labError(f"{expected}; {key} must be {TYPE_NAMES[kind]}, got {short_repr(source[key])}")
            if source.get("samples", 1) < 1:
                raise R1labError(f"{expected}; samples must be >= 1, got {source['samples']}")
            if source.get("template", self.template) not in CHOICES["template"]:
                raise R1labError(f"{expected}; template must be one of {', '.join(CHOICES['template'])}, "
                                 f"got {short_repr(source['template'])}")
        if self.samples_per_prompt + sum(s.get("samples", 1) for s in self.sources) < 2:
            raise R1labError("a group needs at least 2 members (samples_per_prompt + sources' samples)")


@dataclass(frozen=True)
class ReadabilityFilters:
    """The paper's readability filters for rejection sampling and distillation (section 2.3.3)."""
    language: str = "en"               # target language of the reasoning ("en" or "zh")
    min_language_share: float = 0.95   # reasoning must be at least this share target-language words (no mixing)
    max_paragraph_chars: int = 1200    # no paragraph (text between blank lines) longer than this
    allow_code_blocks: bool = False    # the paper filters out chains of thought with code blocks


@dataclass(frozen=True)
class RejectionConfig:
    INPUTS: ClassVar[tuple] = ("model", "task")
    model: str = "smollm2-135m"        # the checkpoint to sample from (in recipes: the previous stage's)
    task: str = "arithmetic"           # task spec; its train split is sampled
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"          # prompt template (and format of the kept completions)
    problems: int = 200                # train problems to sample
    samples_per_prompt: int = 4        # k completions per problem
    temperature: float = 0.6           # R1's sampling temperature
    top_p: float = 0.95                # R1's nucleus mass
    max_new_tokens: int = 256          # completion length cap, tokens
    max_per_prompt: int = 1            # keep at most this many distinct correct completions per problem
    filters: dict = field(default_factory=dict)   # ReadabilityFilters fields, e.g. {max_paragraph_chars: 800}
    seed: int = 0                      # problems and sampling
    out: str = "runs/rejection"        # output directory: data.jsonl, summary.json

    def check(self) -> None:
        readability(self.filters)


@dataclass(frozen=True)
class DistillConfig:
    INPUTS: ClassVar[tuple] = ("teacher", "task")
    teacher: str = "smollm2-135m"      # a model spec, or an OpenAI-compatible base URL (http...; key from api_key_env)
    teacher_model: str = "deepseek-reasoner"   # model name sent to an endpoint
    api_key_env: str = "OPENAI_API_KEY"        # environment variable holding the endpoint's key
    task: str = "arithmetic"           # task spec; its train split is given to the teacher
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"          # format of the written traces (and the local teacher's prompt)
    problems: int = 200                # train problems
    samples_per_prompt: int = 1        # traces requested per problem
    temperature: float = 0.6           # R1's sampling temperature
    top_p: float = 0.95                # R1's nucleus mass
    max_new_tokens: int = 1024         # per trace
    concurrency: int = 8               # endpoint requests in flight at once
    max_retries: int = 5               # per request, on 429/5xx/connection errors, exponential backoff
    filters: dict = field(default_factory=dict)   # ReadabilityFilters fields
    seed: int = 0
    out: str = "runs/distill"          # output directory: teacher.jsonl (resumable cache), data.jsonl, summary.json

    def check(self) -> None:
        readability(self.filters)


@dataclass(frozen=True)
class EvalConfig:
    INPUTS: ClassVar[tuple] = ("models", "task", "tools")
    models: list[str] = field(default_factory=list)   # model specs or, in recipes, stage names / "base"
    task: str = "arithmetic"           # task spec; its test split is used
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"
    samples: int = 8                   # k samples per problem
    problems: int = 50                 # held-out problems
    temperature: float = 0.6           # the paper's evaluation temperature
    top_p: float = 0.95                # the paper's evaluation top-p
    max_new_tokens: int = 256
    tools: str = ""                    # tools the model may call (r1lab/tools.py), e.g. python,calculator; "" = none
    max_turns: int = 4                 # with tools: model turns per episode at most
    seed: int = 0
    out: str = "runs/eval"

    def check(self) -> None:
        """Nothing beyond each field's own check (check_fields)."""


@dataclass(frozen=True)
class ColdStartConfig:
    INPUTS: ClassVar[tuple] = ("task", "tools")
    task: str = "arithmetic"           # task whose reference steps become chains of thought
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"          # format of the written completions
    n: int = 500                       # examples
    tools: str = ""                    # calculator or python: each example computes the answer with that tool
    seed: int = 0
    out: str = "runs/cold_start"       # output directory: data.jsonl

    def check(self) -> None:
        """Nothing beyond each field's own check (check_fields)."""


@dataclass(frozen=True)
class GoalDirectedConfig:
    INPUTS: ClassVar[tuple] = ("data", "task")
    data: str = "trajectories.jsonl"   # trajectories: rows with prompt, answer, completion (in recipes: a data stage)
    task: str = "arithmetic"           # the task that rewrites problems (goal, hindsight)
    template: str = "r1_zero"          # format of the trajectories and of the written rows
    augment: list[str] = field(default_factory=lambda: ["start", "goal", "hindsight"])   # which augmentations
    out: str = "runs/goal_directed"    # output directory: data.jsonl

    def check(self) -> None:
        unknown = set(self.augment) - set(AUGMENTATIONS)
        if unknown or not self.augment:
            raise R1labError(f"augment must be a non-empty list of {', '.join(AUGMENTATIONS)}, got {self.augment}")


def readability(values: dict) -> ReadabilityFilters:
    """ReadabilityFilters from a mapping; unknown keys name the valid ones."""
    valid = [f.name for f in dataclasses.fields(ReadabilityFilters)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise R1labError(f"unknown filter option(s) {unknown}; valid: {', '.join(valid)}")
    filters = ReadabilityFilters(**values)
    check_fields(filters)
    return filters


def settings(config) -> dict:
    """The fields that can change a stage's results (all but NOT_SETTINGS): what a resumed run and a
    finished stage's `.done` are compared on."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_SETTINGS}


def changed_settings(recorded: dict, config) -> list[str]:
    """'key: old -> new' for each setting of config that differs from the recorded ones (a key the record
    lacks, from an older r1lab, counts as its default)."""
    old = {**settings(type(config)()), **recorded}
    return [f"{k}: {old[k]} -> {v}" for k, v in settings(config).items() if old[k] != v]


def load_config(cls, path: str | Path | None = None, overrides: dict | None = None, rename=None):
    """cls built from a YAML file (optional) updated by overrides (command-line strings, parsed as the
    fields' types), then checked: unknown keys name the valid ones. `rename(values, path)`: the file's keys
    as this config's (the CLI passes TRL's names through r1lab/trl_names.py)."""
    values = {}
    if path is not None:
        values = read_yaml(path, "config file")
        if not isinstance(values, dict):
            raise R1labError(f"{path}: expected a mapping of options at the top level")
        if rename is not None:
            values = rename(values, path)
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f" in {path}" if path else ""
        raise R1labError(f"unknown option(s) {unknown}{where}; valid options: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    config = cls(**{k: as_field_type(v, hints[k]) for k, v in values.items()})
    check_fields(config)
    config.check()
    return config
