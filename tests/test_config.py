"""Config validation: one checker driven by the field types and the RANGES / CHOICES tables."""
import dataclasses
import re
import typing

import pytest

from r1lab import R1labError
from r1lab import schema
from r1lab.cli import main
from r1lab.config import (ColdStartConfig, CompeteConfig, DistillConfig, EvalConfig, GoalDirectedConfig, GRPOConfig,
                          ReadabilityFilters, RejectionConfig, SFTConfig, load_config, readability)

STAGES = [GRPOConfig, SFTConfig, CompeteConfig, RejectionConfig, DistillConfig, EvalConfig, ColdStartConfig,
          GoalDirectedConfig]
WRONG = {str: [5], int: ["abc", True, 1.5], float: ["abc", True], bool: [1, "maybe"], dict: [[1]], list: [{"a": 1}],
         float | None: ["abc"], list[str]: [{"a": 1}, [5], [["base"]]], list[dict]: [{"a": 1}, ["x"], [[1]]]}   # values of the wrong type, as a recipe (typed) or the command line (strings) gives them


def build(cls, **values):
    """cls through its usual door: load_config for stages, readability() for the filters mapping."""
    return readability(values) if cls is ReadabilityFilters else load_config(cls, None, values)


def fields(cls):
    return [(f.name, typing.get_type_hints(cls)[f.name]) for f in dataclasses.fields(cls)]


def outside(interval: str, integer: bool) -> list:
    """Values just outside an interval such as '(0, 1]' or '[1, inf)'."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    step = 1 if integer else 0.5
    values = [low if interval[0] == "(" else low - step] + ([high if interval[-1] == ")" else high + step]
                                                             if high != float("inf") else [])
    return [int(v) for v in values] if integer else values


@pytest.mark.parametrize("cls", STAGES + [ReadabilityFilters], ids=lambda c: c.__name__)
def test_every_field_rejects_a_wrong_type_and_an_out_of_range_value_naming_class_and_field(cls):
    build(cls)                                                            # the defaults are valid
    for name, kind in fields(cls):
        for value in WRONG[kind]:
            with pytest.raises(R1labError, match=rf"{cls.__name__}\.{name} must be "):
                build(cls, **{name: value})
        interval = schema.RANGES.get(f"{cls.__name__}.{name}", schema.RANGES.get(name))
        for value in outside(interval, kind is int) if interval else []:
            with pytest.raises(R1labError, match=rf"{cls.__name__}\.{name} must be in {re.escape(interval)}"):
                build(cls, **{name: value})
        for value in [f"not-a-{name}"] if name in schema.CHOICES else []:
            with pytest.raises(R1labError, match=rf"{cls.__name__}\.{name} must be one of"):
                build(cls, **{name: value})


@pytest.mark.parametrize("cls", STAGES + [ReadabilityFilters], ids=lambda c: c.__name__)
def test_every_number_has_a_range(cls):
    for name, kind in fields(cls):
        if kind in (int, float, float | None):
            assert f"{cls.__name__}.{name}" in schema.RANGES or name in schema.RANGES, name


@pytest.mark.parametrize("cls, values, message", [
    (GRPOConfig, {"learning_rate": "-1"}, r"GRPOConfig.learning_rate must be in \(0, 1\], got -1.0"),
    (GRPOConfig, {"beta": -1}, r"GRPOConfig.beta must be in \[0, inf\)"),
    (GRPOConfig, {"top_p": "0"}, r"GRPOConfig.top_p must be in \(0, 1\]"),
    (GRPOConfig, {"top_p": 1.5}, r"GRPOConfig.top_p must be in \(0, 1\]"),
    (GRPOConfig, {"temperature": 0}, r"GRPOConfig.temperature must be in \(0, inf\)"),
    (GRPOConfig, {"steps": "abc"}, r"GRPOConfig.steps must be an integer, got 'abc'"),
    (GRPOConfig, {"steps": True}, r"GRPOConfig.steps must be an integer, got True"),
    (GRPOConfig, {"mask_truncated": 1}, r"GRPOConfig.mask_truncated must be true or false, got 1"),
    (GRPOConfig, {"epsilon_high": "abc"}, r"GRPOConfig.epsilon_high must be a number or none, got 'abc'"),
    (GRPOConfig, {"learning_rate": "nan"}, r"GRPOConfig.learning_rate must be in"),
    (SFTConfig, {"lr_schedule": "cosin"}, r"SFTConfig.lr_schedule must be one of constant, linear, cosine, got 'cosin'"),
    (CompeteConfig, {"mixed_precision": "fp16"}, r"CompeteConfig.mixed_precision must be one of auto, no, bf16"),
    (EvalConfig, {"temperature": -0.1}, r"EvalConfig.temperature must be in \[0, inf\)"),
])
def test_bad_values_the_review_found(cls, values, message):
    with pytest.raises(R1labError, match=message):
        load_config(cls, None, values)


def test_command_line_strings_become_the_field_types_and_yaml_values_stay_typed(tmp_path):
    cfg = load_config(GRPOConfig, None, {"steps": "7", "learning_rate": "1e-5", "epsilon_high": "none",
                                         "mask_truncated": "true", "task_options": "{operands: 2}"})
    assert (cfg.steps, cfg.learning_rate, cfg.epsilon_high, cfg.mask_truncated, cfg.task_options) == (7, 1e-5, None, True, {"operands": 2})
    assert load_config(EvalConfig, None, {"models": "base,sft"}).models == ["base", "sft"]
    (tmp_path / "c.yaml").write_text("learning_rate: 1\nepsilon_high: 0.28\nscale_rewards: false\n")
    cfg = load_config(GRPOConfig, tmp_path / "c.yaml", {"steps": "3"})
    assert type(cfg.learning_rate) is float and (cfg.learning_rate, cfg.epsilon_high, cfg.scale_rewards, cfg.steps) == (1.0, 0.28, False, 3)


def test_cross_field_checks_stay(tmp_path):
    with pytest.raises(R1labError, match=r"samples_per_prompt \(G\) must be >= 2"):
        load_config(GRPOConfig, None, {"samples_per_prompt": "1"})
    with pytest.raises(R1labError, match="batch_size .16. must be a multiple of micro_batch_size .5."):
        load_config(SFTConfig, None, {"batch_size": "16", "micro_batch_size": "5"})


@pytest.mark.parametrize("argv, message", [
    (["--num-processes", "0"], "--num-processes must be >= 1, got 0"),
    (["--allow-config-change"], "--allow-config-change continues a run: give it with --resume"),
])
def test_train_options_that_were_silently_accepted(tmp_path, monkeypatch, capsys, argv, message):
    import r1lab.algorithms.sft as sft
    monkeypatch.setattr(sft, "train_sft", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(SystemExit) as exit:
        main(["train", "sft", *argv, "--data", "x.jsonl", "--out", str(tmp_path / "o")])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_the_names_config_writes_down_equal_the_registries_they_stand_for():
    """config.py imports nothing from the domain (the layer rule), so it lists the registered names itself."""
    from r1lab.algorithms.goal_directed import AUGMENTATIONS
    from r1lab.algorithms.losses import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES, RATIO_LEVELS
    from r1lab.rewards import GROUP_REWARDS, REWARDS
    from r1lab.rollout.engines import ENGINES
    from r1lab.templates import TEMPLATES
    from r1lab.tools import BUILTINS
    assert schema.CHOICES["loss_aggregation"] == AGGREGATIONS and schema.CHOICES["ratio_level"] == RATIO_LEVELS
    assert set(schema.CHOICES["advantage"]) == set(ADVANTAGES)
    assert set(schema.CHOICES["policy_loss"]) == set(POLICY_LOSSES)
    assert schema.CHOICES["engine"] == ENGINES and set(schema.CHOICES["template"]) == set(TEMPLATES)
    assert schema.AUGMENTATIONS == AUGMENTATIONS and set(schema.BUILTIN_TOOLS) == set(BUILTINS)
    assert set(schema.BUILTIN_REWARDS) == {name for name in {**REWARDS, **GROUP_REWARDS} if ":" not in name}
