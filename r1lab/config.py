"""Stage configs: one frozen dataclass per stage kind, loaded from YAML and/or key=value overrides.

    cfg = load_config(GRPOConfig, "my.yaml", {"steps": "20"})

Every field is commented with its unit and the paper default it follows. Unknown keys are errors
that name the valid ones; impossible combinations are caught in `check()`, before any model loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from r1lab import R1labError


@dataclass(frozen=True)
class GRPOConfig:
    # what to train
    model: str = "smollm2-135m"        # model spec (alias, HF folder, .gguf, hub id)
    task: str = "arithmetic"           # task spec (see r1lab.tasks)
    task_options: dict = field(default_factory=dict)   # options of the task, e.g. {operands: 2}
    template: str = "r1_zero"          # prompt template: r1_zero (paper Table 1), chat, json_cot
    rewards: str = "accuracy,format"   # weighted sum of named rewards, 'name=weight,...' (R1-Zero: accuracy + format)
    # batch
    steps: int = 20                    # optimisation batches (each: sample, score, mu updates)
    prompts_per_step: int = 2          # problems per step
    samples_per_prompt: int = 4        # G, completions per problem (R1: 16; DeepSeekMath GRPO: 64)
    micro_batch_size: int = 8          # sequences per forward/backward pass, per device
    updates_per_batch: int = 1         # mu, optimisation passes over one sampled batch (DeepSeekMath: 1)
    # sampling
    max_new_tokens: int = 128          # completion length cap, tokens
    temperature: float = 1.0           # sampling temperature (R1-Zero: 1.0)
    top_p: float = 1.0                 # nucleus mass (R1-Zero: 1.0)
    rollout_dtype: str = "float32"     # "bfloat16": sample from a bf16 copy of the policy, refreshed each step (faster where bf16 is)
    engine: str = "hf"                 # rollout engine: hf (any device) or vllm (GPU; pip install 'r1lab[vllm]')
    vllm_gpu_memory: float = 0.3       # share of the GPU's memory vLLM may take (the trainer needs the rest)
    mask_truncated: bool = False       # drop completions that hit max_new_tokens from the loss (DAPO's overlong filter)
    # objective
    beta: float = 0.04                 # KL weight to the frozen reference (DeepSeekMath: 0.04; R1: 0.001); 0 loads no reference
    epsilon: float = 0.2               # clip range below 1 (and above, unless epsilon_high is set) (DeepSeekMath, PPO: 0.2)
    epsilon_high: float | None = None  # clip range above 1 (DAPO clip-higher: 0.28); None = epsilon
    scale_rewards: bool = True         # divide advantages by the group std (eq. 3); false = Dr. GRPO
    loss_aggregation: str = "sample"   # sample (paper), token (DAPO), constant (Dr. GRPO)
    # optimiser
    learning_rate: float = 1e-6        # AdamW peak lr (DeepSeekMath GRPO: 1e-6; R1: 3e-6); small models want more
    weight_decay: float = 0.0          # AdamW weight decay
    warmup_steps: int = 0              # linear warm-up, steps
    lr_schedule: str = "constant"      # constant, linear or cosine decay after warm-up
    max_grad_norm: float = 1.0         # gradient clipping, L2 norm
    lora_rank: int = 0                 # 0 = full fine-tuning; > 0 trains LoRA adapters (peft) on all linear layers
    lora_alpha: int = 32               # LoRA scaling numerator
    gradient_checkpointing: bool = False   # recompute activations in backward: less memory, ~35% slower
    dtype: str = "float32"             # weights dtype: float32 or bfloat16
    mixed_precision: str = "no"        # "bf16": autocast training forward/backward to bfloat16 (fp32 weights and loss math)
    # bookkeeping
    seed: int = 0                      # problems, sampling and initialisation
    save_every: int = 10               # steps between checkpoints (the last step always saves)
    sample_every: int = 5              # steps between writing example completions to samples.jsonl
    out: str = "runs/grpo"             # output directory

    def check(self) -> None:
        from r1lab.algorithms.losses import AGGREGATIONS
        from r1lab.rewards import parse_rewards
        from r1lab.templates import get_template

        get_template(self.template)
        parse_rewards(self.rewards)
        if self.samples_per_prompt < 2:
            raise R1labError(f"samples_per_prompt (G) must be >= 2 for group-relative advantages, got {self.samples_per_prompt}")
        batch = self.prompts_per_step * self.samples_per_prompt
        if batch % self.micro_batch_size:
            raise R1labError(f"prompts_per_step x samples_per_prompt = {batch} sequences does not divide into "
                             f"micro-batches of micro_batch_size = {self.micro_batch_size}")
        if self.loss_aggregation not in AGGREGATIONS:
            raise R1labError(f"loss_aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.loss_aggregation!r}")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise R1labError(f"lr_schedule must be constant, linear or cosine, got {self.lr_schedule!r}")
        for name in ("steps", "prompts_per_step", "micro_batch_size", "updates_per_batch", "max_new_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise R1labError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "bf16"):
            raise R1labError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.rollout_dtype not in ("float32", "bfloat16"):
            raise R1labError(f"rollout_dtype must be float32 or bfloat16, got {self.rollout_dtype!r}")
        if self.temperature <= 0:
            raise R1labError(f"temperature must be > 0 for RL sampling, got {self.temperature}")
        from r1lab.rollout import ENGINES
        if self.engine not in ENGINES:
            raise R1labError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not 0 < self.vllm_gpu_memory <= 1:
            raise R1labError(f"vllm_gpu_memory must be in (0, 1], got {self.vllm_gpu_memory}")


@dataclass(frozen=True)
class SFTConfig:
    model: str = "smollm2-135m"        # model spec to fine-tune
    data: str = "cold.jsonl"           # jsonl with "prompt" (the question) and "completion" (the reply in the template's format)
    template: str = "r1_zero"          # renders each prompt, as it will be at RL time
    epochs: int = 1                    # passes over the data
    batch_size: int = 8                # sequences per optimiser step
    micro_batch_size: int = 8          # sequences per forward/backward pass, per device
    learning_rate: float = 3e-5        # AdamW peak lr (measured here: 3e-5 moves SmolLM2-135M in one epoch)
    weight_decay: float = 0.0          # AdamW weight decay
    warmup_steps: int = 0              # linear warm-up, optimiser steps
    lr_schedule: str = "constant"      # constant, linear or cosine decay after warm-up
    max_grad_norm: float = 1.0         # gradient clipping, L2 norm
    lora_rank: int = 0                 # 0 = full fine-tuning; > 0 trains LoRA adapters
    lora_alpha: int = 32               # LoRA scaling numerator
    gradient_checkpointing: bool = False   # recompute activations in backward
    dtype: str = "float32"             # weights dtype
    mixed_precision: str = "no"        # "bf16" autocasts forward/backward
    seed: int = 0                      # data order
    save_every: int = 50               # optimiser steps between checkpoints (the last always saves)
    out: str = "runs/sft"              # output directory

    def check(self) -> None:
        from r1lab.templates import get_template
        get_template(self.template)
        if self.batch_size % self.micro_batch_size:
            raise R1labError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")
        for name in ("epochs", "batch_size", "micro_batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise R1labError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "bf16"):
            raise R1labError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")


@dataclass(frozen=True)
class CompeteConfig:
    """Learning from competition without RL (the talk's proposal); sampling as GRPO, training by SFT."""
    model: str = "smollm2-135m"        # the trained policy
    task: str = "arithmetic"
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"          # the policy's prompt style
    rewards: str = "accuracy,format"   # 'majority' needs no ground truth
    sources: list = field(default_factory=list)   # extra group members: [{model: SPEC, template: NAME, samples: N}]; never trained
    rounds: int = 20                   # sample-score-train rounds (expert iteration)
    prompts_per_step: int = 4          # problems per round
    samples_per_prompt: int = 4        # the policy's members per group
    micro_batch_size: int = 8          # sequences per forward/backward pass
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    weight_by_advantage: bool = False  # weight imitated / pushed-down members by |eq. 3 advantage| instead of 1
    unlikelihood_weight: float = 1.0   # weight of pushing below-average members down; 0 switches it off
    learning_rate: float = 1e-5        # AdamW lr
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"        # "bf16" autocasts training passes
    rollout_dtype: str = "float32"     # "bfloat16": sample from a bf16 copy of the policy
    seed: int = 0
    save_every: int = 10               # rounds between checkpoints (the last always saves)
    out: str = "runs/compete"

    def check(self) -> None:
        from r1lab.rewards import parse_rewards
        from r1lab.templates import get_template
        get_template(self.template)
        parse_rewards(self.rewards)
        for i, source in enumerate(self.sources):
            if not isinstance(source, dict) or "model" not in source or set(source) - {"model", "template", "samples"}:
                raise R1labError(f"sources[{i}]: expected {{model: SPEC, template: NAME, samples: N}}, got {source!r}")
            get_template(source.get("template", self.template))
        if self.samples_per_prompt + sum(s.get("samples", 1) for s in self.sources) < 2:
            raise R1labError("a group needs at least 2 members (samples_per_prompt + sources' samples)")
        for name in ("rounds", "prompts_per_step", "samples_per_prompt", "micro_batch_size", "max_new_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise R1labError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ReadabilityFilters:
    """The paper's readability filters for rejection sampling and distillation (section 2.3.3)."""
    language: str = "en"               # target language of the reasoning ("en" or "zh")
    min_language_share: float = 0.95   # reasoning must be at least this share target-language words (no mixing)
    max_paragraph_chars: int = 1200    # no paragraph (text between blank lines) longer than this
    allow_code_blocks: bool = False    # the paper filters out chains of thought with code blocks


@dataclass(frozen=True)
class RejectionConfig:
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
        from r1lab.templates import get_template
        get_template(self.template)
        readability(self.filters)
        for name in ("problems", "samples_per_prompt", "max_new_tokens", "max_per_prompt"):
            if getattr(self, name) < 1:
                raise R1labError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class DistillConfig:
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
        from r1lab.templates import get_template
        get_template(self.template)
        readability(self.filters)
        for name in ("problems", "samples_per_prompt", "max_new_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise R1labError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EvalConfig:
    models: list = field(default_factory=list)   # model specs or, in recipes, stage names / "base"
    task: str = "arithmetic"           # task spec; its test split is used
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"
    samples: int = 8                   # k samples per problem
    problems: int = 50                 # held-out problems
    temperature: float = 0.6           # the paper's evaluation temperature
    top_p: float = 0.95                # the paper's evaluation top-p
    max_new_tokens: int = 256
    seed: int = 0
    out: str = "runs/eval"

    def check(self) -> None:
        from r1lab.templates import get_template
        get_template(self.template)
        if self.samples < 1 or self.problems < 1:
            raise R1labError("samples and problems must be >= 1")


@dataclass(frozen=True)
class ColdStartConfig:
    task: str = "arithmetic"           # task whose reference steps become chains of thought
    task_options: dict = field(default_factory=dict)
    template: str = "r1_zero"          # format of the written completions
    n: int = 500                       # examples
    seed: int = 0
    out: str = "runs/cold_start"       # output directory: data.jsonl

    def check(self) -> None:
        from r1lab.templates import get_template
        get_template(self.template)
        if self.n < 1:
            raise R1labError(f"n must be >= 1, got {self.n}")


@dataclass(frozen=True)
class GoalDirectedConfig:
    data: str = "trajectories.jsonl"   # trajectories: rows with prompt, answer, completion (in recipes: a data stage)
    task: str = "arithmetic"           # the task that rewrites problems (goal, hindsight)
    template: str = "r1_zero"          # format of the trajectories and of the written rows
    augment: list = field(default_factory=lambda: ["start", "goal", "hindsight"])   # which augmentations
    out: str = "runs/goal_directed"    # output directory: data.jsonl

    def check(self) -> None:
        from r1lab.algorithms.goal_directed import AUGMENTATIONS
        from r1lab.templates import get_template
        get_template(self.template)
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
    if filters.language not in ("en", "zh"):
        raise R1labError(f"filters.language must be 'en' or 'zh', got {filters.language!r}")
    return filters


def _coerce(name: str, value, default):
    """A CLI string (or YAML value) converted to the type of the field's default."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float) or default is None:
            return float(value) if default is not None or value.lower() != "none" else None
        if isinstance(default, (dict, list)):
            parsed = yaml.safe_load(value)
            if isinstance(default, list) and isinstance(parsed, str):
                parsed = [x.strip() for x in parsed.split(",") if x.strip()]
            if not isinstance(parsed, type(default)):
                raise ValueError
            return parsed
    except ValueError:
        kind = {dict: "a mapping like {k: v}", list: "a list like [a, b]"}.get(type(default), type(default).__name__)
        raise R1labError(f"option {name}: expected {kind}, got {value!r}") from None
    return value


def read_yaml(path, what: str):
    """A YAML file's content ({} when empty); a missing file or bad YAML is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise R1labError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise R1labError(f"{path}: invalid YAML: {e}") from None


def load_config(cls, path: str | Path | None = None, overrides: dict | None = None):
    """cls built from a YAML file (optional) updated by overrides; unknown keys name the valid ones."""
    values = {}
    if path is not None:
        values = read_yaml(path, "config file")
        if not isinstance(values, dict):
            raise R1labError(f"{path}: expected a mapping of options at the top level")
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f" in {path}" if path else ""
        raise R1labError(f"unknown option(s) {unknown}{where}; valid options: {', '.join(fields)}")
    defaults = cls()
    config = cls(**{k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()})
    config.check()
    return config
