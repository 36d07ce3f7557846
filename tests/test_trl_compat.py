"""For users who come from TRL: its reward-function signature (None = not applicable), failing rewards reported and
bounded (max_reward_failure_share), and its option names understood on the command line (r1lab/trl_names.py)."""
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

import r1lab.rewards as rewards
from r1lab import R1labError, schema
from r1lab.algorithms.grpo import train_grpo
from r1lab.cli import main
from r1lab.config import GRPOConfig, load_config
from r1lab.pipeline import KINDS
from r1lab.rewards import batched, parse_rewards, score, trl_columns
from r1lab.trl_names import TRL_NAMES, translate
from r1lab.types import Completion, Problem

P6, P7 = Problem("p6", "Calculate 1 + 5", "6"), Problem("p7", "Calculate 3 + 4", "7", meta={"level": 2})
NONE = Problem("open", "Say something", None)


def completion(text, ids=(1, 2), tail=""):
    return Completion(text=text, template="r1_zero", token_ids=list(ids), prompt_tail=tail)


def use(monkeypatch, **functions):
    """Register batched (TRL-style) rewards by bare name for one test."""
    for name, fn in functions.items():
        monkeypatch.setitem(rewards.BATCH_REWARDS, name, fn)
    monkeypatch.setattr(schema, "BUILTIN_REWARDS", (*schema.BUILTIN_REWARDS, *functions))


# --- the signature ----------------------------------------------------------------------------------------------

def r1lab_style(completion, problem):
    return 1.0


def trl_style(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def trl_no_prompts(completions, **kwargs):
    return [1.0] * len(completions)


def trl_kwargs_only(**kwargs):
    return [1.0] * len(kwargs["completions"])


def trl_named_columns(completions, solution):
    return [1.0] * len(completions)


@pytest.mark.parametrize("fn, is_batched", [(r1lab_style, False), (lambda c, p: 0.0, False), (trl_style, True),
                                            (trl_no_prompts, True), (trl_kwargs_only, True), (trl_named_columns, True),
                                            (len, False)])
def test_the_signature_tells_trl_rewards_from_r1labs(fn, is_batched):
    assert batched(fn) is is_batched


def test_a_trl_reward_gets_trls_columns_by_keyword():
    cs = [completion("x</think> <answer>6</answer>", ids=(5, 6), tail="<think>\n"), completion("y", ids=(7,))]
    assert trl_columns(cs, [P6, P7]) == {
        "prompts": ["Calculate 1 + 5", "Calculate 3 + 4"],
        "completions": ["<think>\nx</think> <answer>6</answer>", "y"],
        "completion_ids": [[5, 6], [7]], "answer": ["6", "7"], "solution": ["6", "7"]}   # level: not on every problem
    assert trl_columns(cs, [P7, P7])["level"] == [2, 2]


def test_none_is_not_applicable_zero_and_no_failure_nan_is_a_failure(monkeypatch):
    seen = {}

    def judged(prompts, completions, answer, **kwargs):
        seen.update(kwargs, prompts=prompts)
        return [None if truth is None else 1.0 if truth in text else float("nan")
                for text, truth in zip(completions, answer)]
    use(monkeypatch, judged=judged)
    errors = {}
    total, parts, failures = score({"judged": 2.0}, [completion("6"), completion("5"), completion("hi")],
                                   [P6, P7, NONE], errors=errors)
    assert parts == {"judged": [1.0, 0.0, 0.0]} and total == [2.0, 0.0, 0.0]
    assert failures == 1 and errors == {"judged": "returned nan, not a finite number"}
    assert seen["solution"] == ["6", "7", None] and seen["completion_ids"] == [[1, 2]] * 3


def test_a_trl_reward_that_raises_or_miscounts_fails_on_every_sample(monkeypatch):
    def raises(prompts, completions, **kwargs):
        raise ValueError("no solution column")
    use(monkeypatch, raises=raises, short=lambda completions, **kw: [1.0], word=lambda completions, **kw: "1.0")
    cs, ps = [completion("6"), completion("7")], [P6, P7]
    for name, error in (("raises", "ValueError: no solution column"),
                        ("short", "returned [1.0], not a list of 2 rewards (one per completion)"),
                        ("word", "returned '1.0', not a list of 2 rewards (one per completion)")):
        errors = {}
        assert score({name: 1.0}, cs, ps, errors=errors) == ([0.0, 0.0], {name: [0.0, 0.0]}, 2)
        assert errors == {name: error}


def test_failures_count_samples_not_failed_calls(monkeypatch):
    """Two rewards failing on the same sample count it once; a string is no number."""
    monkeypatch.setitem(rewards.REWARDS, "text", lambda c, p: "1" if c.text == "a" else 1.0)
    monkeypatch.setitem(rewards.REWARDS, "boom", lambda c, p: 1 / 0 if c.text == "a" else 0.5)
    errors = {}
    total, parts, failures = score({"text": 1.0, "boom": 1.0}, [completion("a"), completion("b")], [P6, P6],
                                   errors=errors)
    assert total == [0.0, 1.5] and failures == 1
    assert errors == {"text": "returned '1', not a finite number", "boom": "ZeroDivisionError: division by zero"}


def test_the_example_file_is_imported_as_trl_rewards_and_scores_by_hand(monkeypatch):
    monkeypatch.setattr(rewards, "BATCH_REWARDS", {})
    weights = parse_rewards("examples.trl_reward:exact_answer,examples.trl_reward:think_format=0.5")
    assert set(rewards.BATCH_REWARDS) == set(weights)
    cs = [completion("<think>1+5</think> <answer>6</answer>"), completion("<answer>6</answer>"),
          completion("x</think><answer>7</answer>", tail="<think>"), completion("<think>?</think><answer>1</answer>")]
    total, parts, failures = score(weights, cs, [P6, P6, P7, NONE])
    assert parts == {"examples.trl_reward:exact_answer": [1.0, 1.0, 1.0, 0.0],        # None: no ground truth
                     "examples.trl_reward:think_format": [1.0, 0.0, 1.0, 1.0]}
    assert total == [1.5, 1.0, 1.5, 0.5] and failures == 0


def test_a_reward_module_off_the_path_says_how_to_put_it_there():
    with pytest.raises(R1labError, match=r"cannot import it .*PYTHONPATH=\."):
        parse_rewards("nowhere_module:fn")


# --- failing rewards in a GRPO run ------------------------------------------------------------------------------

TINY = dict(model="tiny-random", prompts_per_step=2, samples_per_prompt=4, micro_batch_size=8, max_new_tokens=6,
            beta=0.0, mixed_precision="no", rollout_dtype="float32")


def run(tmp_path, **overrides):
    out = train_grpo(load_config(GRPOConfig, None, {**TINY, "out": str(tmp_path / "run"), **overrides})).parent
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def first_half_nan(completions, **kwargs):
    """NaN for the first half of the batch (4 of a step's 8 samples), 1 for the rest."""
    return [math.nan if i < len(completions) // 2 else 1.0 for i in range(len(completions))]


@pytest.mark.parametrize("share, stops", [(0.5, False), (0.4, True)])
def test_a_run_stops_when_rewards_fail_on_more_than_the_allowed_share(tmp_path, monkeypatch, capsys, share, stops):
    use(monkeypatch, first_half_nan=first_half_nan)
    if stops:
        with pytest.raises(R1labError, match=r"step 1: rewards failed on 4 of 8 samples \(50%\), more than "
                                             r"max_reward_failure_share 0.4: reward 'first_half_nan': returned nan"):
            run(tmp_path, steps=2, rewards="first_half_nan", max_reward_failure_share=share)
        return
    rows = run(tmp_path, steps=2, rewards="first_half_nan", max_reward_failure_share=share)
    assert [r["reward_failures"] for r in rows] == [4, 4]
    err = capsys.readouterr().err
    message = "reward 'first_half_nan' failed (returned nan, not a finite number)"
    assert err.count(message) == 1 and "fail=4" in err                      # the first time only; the progress line
    assert any(message in w for w in rows[0]["warnings"]) and not any(message in w for w in rows[1].get("warnings", []))


def test_the_failure_share_option_is_range_checked():
    with pytest.raises(R1labError, match=r"GRPOConfig.max_reward_failure_share must be in \[0, 1\], got 1.5"):
        load_config(GRPOConfig, None, {"max_reward_failure_share": "1.5"})


# --- TRL's option names -----------------------------------------------------------------------------------------

GRPO_OPTIONS = {"--samples-per-prompt", "--max-new-tokens", "--updates-per-batch", "--loss-aggregation", "--out",
                "--micro-batch-size", "--mixed-precision", "--engine", "--scale-rewards", "--steps", "--model"}
SFT_OPTIONS = {"--epochs", "--max-length", "--micro-batch-size", "--batch-size", "--out"}


@pytest.mark.parametrize("argv, kind, options, expected, note", [
    (["--num-generations", "8"], "grpo", GRPO_OPTIONS, ["--samples-per-prompt=8"],
     "--num-generations is TRL's name; r1lab calls it --samples-per-prompt"),
    (["--max-completion-length=64"], "grpo", GRPO_OPTIONS, ["--max-new-tokens=64"], "r1lab calls it --max-new-tokens"),
    (["--num-iterations", "2"], "grpo", GRPO_OPTIONS, ["--updates-per-batch=2"], "r1lab calls it --updates-per-batch"),
    (["--loss-type", "grpo"], "grpo", GRPO_OPTIONS, ["--loss-aggregation=sample"], "(TRL's grpo is r1lab's sample)"),
    (["--loss-type=dapo"], "grpo", GRPO_OPTIONS, ["--loss-aggregation=token"], "(TRL's dapo is r1lab's token)"),
    (["--loss-type", "dr_grpo"], "grpo", GRPO_OPTIONS, ["--loss-aggregation=constant"], "TRL's dr_grpo is r1lab's constant"),
    (["--per-device-train-batch-size", "4"], "sft", SFT_OPTIONS, ["--micro-batch-size=4"], "r1lab calls it --micro-batch-size"),
    (["--output-dir", "runs/x"], "grpo", GRPO_OPTIONS, ["--out=runs/x"], "--output-dir is TRL's name; r1lab calls it --out"),
    (["--bf16", "--model", "m"], "grpo", GRPO_OPTIONS, ["--mixed-precision=bf16", "--model", "m"],
     "r1lab calls it --mixed-precision (TRL's true is r1lab's bf16)"),
    (["--bf16", "False"], "grpo", GRPO_OPTIONS, ["--mixed-precision=no"], "TRL's False is r1lab's no"),
    (["--use-vllm"], "grpo", GRPO_OPTIONS, ["--engine=vllm"], "--use-vllm is TRL's name; r1lab calls it --engine"),
    (["--use-vllm=false"], "grpo", GRPO_OPTIONS, ["--engine=hf"], "TRL's false is r1lab's hf"),
    (["--scale-rewards", "group"], "grpo", GRPO_OPTIONS, ["--scale-rewards=true"], "--scale-rewards group: TRL's group"),
    (["--max-steps", "30"], "grpo", GRPO_OPTIONS, ["--steps=30"], "r1lab calls it --steps"),
    (["--num-train-epochs", "3"], "sft", SFT_OPTIONS, ["--epochs=3"], "r1lab calls it --epochs"),
    (["--max-seq-length", "512"], "sft", SFT_OPTIONS, ["--max-length=512"], "TRL truncates"),
])
def test_trl_names_work_as_aliases_with_a_note(argv, kind, options, expected, note):
    out, notes = translate(argv, options, kind, f"r1lab train {kind}")
    assert out == expected and len(notes) == 1 and note in notes[0]


@pytest.mark.parametrize("argv", [["--scale-rewards", "false"], ["--loss-aggregation", "token"], ["--steps", "3"],
                                  ["--max-length", "9"]])
def test_r1labs_own_options_are_left_alone(argv):
    assert translate(argv, GRPO_OPTIONS | SFT_OPTIONS, "grpo", "r1lab train grpo") == (argv, [])


@pytest.mark.parametrize("argv, kind, options, message", [
    (["--gradient-accumulation-steps", "4"], "grpo", GRPO_OPTIONS,
     "--gradient-accumulation-steps is TRL's name; r1lab derives it: a step's --prompts-per-step x --samples-per-prompt"),
    (["--gradient-accumulation-steps", "4"], "sft", SFT_OPTIONS, "r1lab derives it: --batch-size sequences per optimiser"),
    (["--report-to", "wandb"], "eval", {"--out"}, "--report-to is TRL's name; only r1lab's training stages"),
    (["--max-prompt-length", "512"], "grpo", GRPO_OPTIONS, "r1lab never truncates prompts"),
    (["--num-train-epochs", "1"], "grpo", GRPO_OPTIONS, "only r1lab's SFT has epochs; GRPO runs --steps"),
    (["--max-steps", "1"], "sft", SFT_OPTIONS, "count --steps (grpo), --rounds (compete) or --epochs (sft)"),
    (["--fp16"], "grpo", GRPO_OPTIONS, "--mixed-precision bf16"),
    (["--loss-type", "bnpo"], "grpo", GRPO_OPTIONS, "--loss-type bnpo: TRL's value has no counterpart in r1lab's "
     "--loss-aggregation (TRL -> r1lab: grpo -> sample, dapo -> token, dr_grpo -> constant)"),
    (["--scale-rewards", "batch"], "grpo", GRPO_OPTIONS, "TRL -> r1lab: group -> true, none -> false"),
    (["--num-generations", "4"], "eval", {"--samples", "--out"},
     "--num-generations is TRL's name for r1lab's --samples-per-prompt, which r1lab eval has not"),
])
def test_trl_names_without_a_counterpart_say_what_r1lab_does_instead(argv, kind, options, message):
    with pytest.raises(R1labError, match=re.escape(message)):
        translate(argv, options, kind, f"r1lab {kind}" if kind == "eval" else f"r1lab train {kind}")


def test_every_alias_names_a_field_of_the_stages_it_is_for():
    fields = {kind: {f.name for f in dataclasses.fields(cls)} for kind, (cls, _) in KINDS.items()}
    for name, rows in TRL_NAMES.items():
        for row in rows:
            if row.ours is not None:
                assert any(row.ours in fields[k] for k in row.kinds or fields), (name, row.ours)
            assert row.ours is not None or row.note, name


def test_the_command_line_takes_trl_names_and_notes_them(monkeypatch, tmp_path, capsys):
    configs = []
    monkeypatch.setattr("r1lab.algorithms.grpo.train_grpo", lambda config, resume: configs.append(config) or "done")
    main(["train", "grpo", "--model", "tiny-random", "--num-generations", "8", "--loss-type", "dapo", "--bf16",
          "--use-vllm", "false", "--output-dir", str(tmp_path / "o"), "--per-device-train-batch-size", "8"])
    config, = configs
    assert (config.samples_per_prompt, config.loss_aggregation, config.mixed_precision, config.engine, config.out,
            config.micro_batch_size) == (8, "token", "bf16", "hf", str(tmp_path / "o"), 8)
    err = capsys.readouterr().err
    assert "r1lab: note: --num-generations is TRL's name; r1lab calls it --samples-per-prompt\n" in err
    assert "r1lab: note: --output-dir is TRL's name; r1lab calls it --out\n" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "grpo", "--gradient-accumulation-steps", "4"], "r1lab derives it"),
    (["train", "grpo", "--num-train-epochs", "1"], "GRPO runs --steps"),
    (["eval", "m", "--num-generations", "4"], "r1lab's --samples-per-prompt, which r1lab eval has not"),
])
def test_the_command_line_never_suggests_a_wrong_name_for_a_trl_one(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "did you mean" not in err


def test_trl_keys_in_a_config_file_are_read_as_r1labs(tmp_path, capsys):
    config = tmp_path / "grpo.yaml"
    config.write_text("model_name_or_path: tiny-random\nnum_generations: 2\nmax_completion_length: 4\nmax_steps: 1\n"
                      "prompts_per_step: 2\nmicro_batch_size: 4\nbf16: false\nloss_type: dapo\n")
    main(["train", "grpo", "--config", str(config), "--out", str(tmp_path / "o")])
    recorded = (tmp_path / "o" / "config.yaml").read_text()
    for line in ("samples_per_prompt: 2", "max_new_tokens: 4", "steps: 1", "mixed_precision: 'no'", "loss_aggregation: token"):
        assert line in recorded
    err = capsys.readouterr().err
    assert f"{config}: num_generations is TRL's name; r1lab calls it samples_per_prompt" in err
    assert "TRL's false is r1lab's no" in err and "TRL's dapo is r1lab's token" in err


def test_trl_keys_in_a_recipe_stage_are_read_as_r1labs(tmp_path):
    from r1lab.pipeline import load_recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nruns_dir: {tmp_path}\nmodel: tiny-random\nstages:\n"
                      "  - {name: g, kind: grpo, num_generations: 4, num_iterations: 2, max_steps: 3}\n"
                      f"  - {{name: s, kind: sft, model: base, data: {tmp_path / 'd.jsonl'}, num_train_epochs: 2}}\n")
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    grpo, sft = (stage.config for stage in load_recipe(recipe))
    assert (grpo.samples_per_prompt, grpo.updates_per_batch, grpo.steps, sft.epochs) == (4, 2, 3, 2)


@pytest.mark.parametrize("stage, message", [
    ("{name: g, kind: grpo, top_k: 50}", "top_k is TRL's name; not built: r1lab samples with --temperature"),
    ("{name: g, kind: grpo, num_generations: 4, samples_per_prompt: 8}", "both num_generations (TRL's name) and samples_per_prompt"),
    ("{name: g, kind: grpo, loss_type: bnpo}", "TRL's value has no counterpart"),
    ("{name: c, kind: compete, num_train_epochs: 2}", "only r1lab's SFT has epochs"),
])
def test_a_trl_key_with_no_counterpart_names_the_file_and_stage(tmp_path, stage, message):
    from r1lab.pipeline import load_recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nruns_dir: {tmp_path}\nmodel: tiny-random\nstages:\n  - {stage}\n")
    with pytest.raises(R1labError, match=re.escape(message)) as error:
        load_recipe(recipe)
    assert str(recipe) in str(error.value)
