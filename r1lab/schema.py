"""How config fields are checked, with nothing of the domain imported (the layer rule): each field's type
from its annotation (an int is a float too, a bool is never an int; list[str] checks its elements), its
range (RANGES) or allowed values (CHOICES), the names the domain registers (written here, kept equal to the
registries by tests/test_config.py), reward specs, run and stage folder names, and YAML files.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import yaml

from r1lab import R1labError, is_file

RANGES = {  # field -> the interval its value must lie in; "Class.field" where one class needs another
    "steps": "[1, inf)", "rounds": "[1, inf)", "epochs": "[1, inf)", "n": "[1, inf)", "problems": "[1, inf)",
    "prompts_per_step": "[1, inf)", "samples_per_prompt": "[1, inf)", "samples": "[1, inf)",
    "batch_size": "[1, inf)", "micro_batch_size": "[1, inf)", "updates_per_batch": "[1, inf)",
    "max_new_tokens": "[1, inf)", "max_length": "[0, inf)", "max_per_prompt": "[1, inf)", "concurrency": "[1, inf)", "max_retries": "[0, inf)",
    "temperature": "[0, inf)",                    # 0 = greedy
    "GRPOConfig.temperature": "(0, inf)", "CompeteConfig.temperature": "(0, inf)",   # a greedy group has no spread
    "top_p": "(0, 1]", "vllm_gpu_memory": "(0, 1]",
    "beta": "[0, inf)", "epsilon": "(0, 1)", "epsilon_high": "(0, inf)", "unlikelihood_weight": "[0, inf)",
    "learning_rate": "(0, 1]", "weight_decay": "[0, inf)", "warmup_steps": "[0, inf)", "max_grad_norm": "(0, inf)",
    "lora_rank": "[0, inf)", "lora_alpha": "[1, inf)",
    "importance_sampling_cap": "[1, inf)", "dynamic_sampling_max_draws": "[1, inf)",
    "seed": "[0, inf)", "save_every": "[1, inf)", "sample_every": "[1, inf)", "save_total_limit": "[0, inf)",
    "validation_problems": "[0, inf)", "validate_every": "[1, inf)", "max_turns": "[1, inf)",
    "min_language_share": "[0, 1]", "max_paragraph_chars": "[1, inf)",
    "max_reward_failure_share": "[0, 1]",
    "pool_explore": "[0, 1]", "pool_easy": "[0, 1]", "pool_hard": "[0, 1]", "pool_seen": "[1, inf)",
}
CHOICES = {  # field -> its allowed values
    "lr_schedule": ("constant", "linear", "cosine"),
    "mixed_precision": ("auto", "no", "bf16"),          # auto: fp32 training (hardware.py says why)
    "rollout_dtype": ("auto", "float32", "bfloat16"),   # (r1lab/hardware.py)
    "dtype": ("float32", "bfloat16"),
    "loss_aggregation": ("sample", "token", "constant"),   # r1lab/algorithms/losses.py AGGREGATIONS
    "ratio_level": ("token", "sequence"),                   # losses.RATIO_LEVELS
    "advantage": ("grpo", "rloo"),                          # losses.ADVANTAGES
    "policy_loss": ("grpo",),                               # losses.POLICY_LOSSES
    "importance_sampling": ("auto", "on", "off"),      # auto: on when the sampler is not the trainer's computation
    "engine": ("hf", "vllm"),                               # r1lab/rollout/engines.py ENGINES
    "language": ("en", "zh"),
    "unlikelihood_scope": ("departure", "fork", "all"),
    "template": ("r1_zero", "r1_zero_think", "chat", "code", "json_cot", "agentjo"),   # r1lab/templates.py TEMPLATES
}
# The names the domain registers, written here so that this module imports nothing from the domain (the
# layer rule); tests/test_config.py checks that each list equals its registry.
AUGMENTATIONS = ("start", "goal", "hindsight")                          # r1lab/algorithms/goal_directed.py
BUILTIN_TOOLS = ("python", "calculator")                                # r1lab/tools.py BUILTINS
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")   # report_to: accelerate's tracker names (r1lab/training.py)
BUILTIN_REWARDS = ("accuracy", "accuracy_partial", "format", "format_partial", "language", "language_zh",
                   "agentjo_format", "majority", "code", "code_strict")   # r1lab/rewards REWARDS, GROUP_REWARDS
USER_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")            # package.module:function
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "none",
              dict: "a mapping like {k: v}", list: "a list like [a, b]"}
ELEMENT_NAMES = {str: "strings", int: "integers", dict: "mappings like {k: v}"}
def reward_weights(spec: str | dict) -> dict[str, float]:
    """'accuracy,format=0.5' or {'accuracy': 1, 'format': 0.5} -> {name: weight}: each name a built-in reward or
    a user's 'package.module:function' (imported by r1lab.rewards.parse_rewards, at the stage), each weight a
    finite number (a NaN or infinite weight makes every advantage NaN)."""
    if isinstance(spec, str):
        pairs = [part.strip().partition("=") for part in spec.split(",") if part.strip()]
        try:
            spec = {name.strip(): float(weight) if weight else 1.0 for name, _, weight in pairs}
        except ValueError:
            raise R1labError(f"rewards {short_repr(spec)}: weights must be numbers, as in 'accuracy,format=0.5'") from None
    if not isinstance(spec, dict) or not spec:
        raise R1labError("rewards: at least one reward is needed, as in 'accuracy,format=0.5'; valid: "
                         + ", ".join(BUILTIN_REWARDS))
    unknown = [name for name in spec if not isinstance(name, str)
               or name not in BUILTIN_REWARDS and not USER_FUNCTION.fullmatch(name)]
    if unknown:
        raise R1labError(f"unknown reward(s) {unknown}; valid rewards: {', '.join(BUILTIN_REWARDS)}, or your own "
                         "as package.module:function")
    for name, weight in spec.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise R1labError(f"rewards: the weight of {name!r} must be a finite number, got {weight!r}")
    return {name: float(weight) for name, weight in spec.items()}


def allowed_types(hint) -> tuple:
    """The types a field annotation allows: float | None -> (float, NoneType); list[str] stays list[str]."""
    if typing.get_origin(hint) in (list, dict):
        return (hint,)
    return typing.get_args(hint) or (hint,)


def has_type(value, kind) -> bool:
    """isinstance, where an int is a float too, a bool is never a number, and list[str] / dict[str, X]
    check their elements."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(kind)
    if origin is list:
        return isinstance(value, list) and all(has_type(v, typing.get_args(kind)[0]) for v in value)
    if origin is dict:
        key, item = typing.get_args(kind)
        return isinstance(value, dict) and all(has_type(k, key) and has_type(v, item) for k, v in value.items())
    return isinstance(value, kind)


def type_name(kind) -> str:
    """'a string', 'a list of strings like [a, b]', ... for error messages."""
    if typing.get_origin(kind) is list:
        return f"a list of {ELEMENT_NAMES[typing.get_args(kind)[0]]} like [a, b]"
    if typing.get_origin(kind) is dict:
        return "a mapping like {k: v}"
    return TYPE_NAMES[kind]


def in_range(value, interval: str) -> bool:
    """value in an interval written like '(0, 1]' or '[1, inf)'; NaN is in none."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


def check_fields(config) -> None:
    """Every field has its annotated type and lies in its RANGES / CHOICES entry; the error names the
    class, the field and what was expected."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, kinds, where = getattr(config, f.name), allowed_types(hints[f.name]), f"{type(config).__name__}.{f.name}"
        interval = RANGES.get(where, RANGES.get(f.name))
        if not any(has_type(value, kind) for kind in kinds):
            raise R1labError(_wrong_type(where, kinds, value))
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise R1labError(f"{where} must be one of {', '.join(CHOICES[f.name])}, got {short_repr(value)}")
        if interval and value is not None and not in_range(value, interval):
            raise R1labError(f"{where} must be in {interval}, got {short_repr(value)}")
        if f.name == "tools" and value:
            for item in (part.strip() for part in value.split(",") if part.strip()):
                if item not in BUILTIN_TOOLS and not USER_FUNCTION.fullmatch(item):
                    raise R1labError(f"{where}: unknown tool {item!r}; valid built-ins: {', '.join(BUILTIN_TOOLS)}; "
                                     "or a user tool as module:function")
        if f.name == "report_to":
            report_targets(value, where)


def report_targets(spec: str, where: str = "report_to") -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' -> []: the trackers a training stage reports to."""
    names = list(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    if names == ["none"]:
        return []
    if not names or [name for name in names if name not in TRACKERS]:
        raise R1labError(f"{where} must be none, or one or more of {', '.join(TRACKERS)} separated by commas, "
                         f"got {short_repr(spec)}")
    return names


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def folder_name(name, where: str) -> str:
    """A run or stage name, which becomes one folder under its root: letters, digits, '.', '_', '-', starting
    with a letter or digit (so no '..', no '/', no absolute path: nothing is written outside the root)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise R1labError(f"{where} must be a folder name (letters, digits, '.', '_', '-'; starting with a letter or "
                         f"digit; at most 128 characters), got {short_repr(name)}")
    return name


def _wrong_type(where: str, kinds: tuple, value) -> str:
    return f"{where} must be {' or '.join(type_name(k) for k in kinds)}, got {short_repr(value)}"


def field_value(cls, key: str, value):
    """`value` parsed as field `key` of config class `cls` (as a command-line string is) and checked against
    its annotation: for the fields a recipe reads before the whole config is built."""
    hint = typing.get_type_hints(cls)[key]
    value = as_field_type(value, hint)
    if not any(has_type(value, kind) for kind in allowed_types(hint)):
        raise R1labError(_wrong_type(f"{cls.__name__}.{key}", allowed_types(hint), value))
    return value


def short_repr(value, limit: int = 80) -> str:
    """repr cut to `limit` characters: an error message stays one readable line whatever was given."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def as_field_type(value, hint):
    """A command-line string parsed as the field's type (YAML values are typed already; an int given for
    a float becomes a float). A string that does not parse is left as it is, for check_fields to name."""
    kinds = allowed_types(hint)
    if float in kinds and has_type(value, float):
        return float(value)
    if not isinstance(value, str) or str in kinds:
        return value
    text = value.strip().lower()
    if type(None) in kinds and text in ("none", "null"):
        return None
    try:
        if bool in kinds:
            return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[text]
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
        parsed = yaml.safe_load(value)
        if any(k is list or typing.get_origin(k) is list for k in kinds) and isinstance(parsed, str):   # a,b,c
            parsed = [x.strip() for x in parsed.split(",") if x.strip()]
        return parsed
    except (KeyError, ValueError, yaml.YAMLError):
        return value


def read_yaml(path, what: str):
    """A YAML file's content ({} when empty); a missing file or bad YAML is an error naming the file."""
    path = Path(path)
    if not is_file(path):
        raise R1labError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise R1labError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise R1labError(f"{path}{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise R1labError(f"{path}: invalid YAML: nested too deeply") from None
