"""The command line: help generated from the configs, close-name suggestions, no output for a stage
that cannot start, the serve options."""
import dataclasses
import re
from dataclasses import dataclass, field

import pytest

from r1lab.cli import main
from r1lab.cli_parser import config_fields
from r1lab.pipeline import KINDS


def help_text(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())          # argparse wraps lines: compare words


@dataclass(frozen=True)
class Example:
    """An example stage."""
    name: str = "a"                    # what it is called
    # sizes
    count: int = 3                     # items, per step (paper: 16)
    ratio: float | None = None         # share of the rest; None = all,
                                       # except when count is 0
    tags: list = field(default_factory=lambda: ["x", "y"])
    # bookkeeping
    out: str = "runs/example"          # output directory

    def check(self) -> None:
        # a comment in a method is nobody's help
        pass


def test_config_fields_reads_groups_comments_and_continuations():
    assert config_fields(Example) == ("An example stage.", [
        (None, "name", "what it is called"),
        ("sizes", "count", "items, per step (paper: 16)"),
        ("sizes", "ratio", "share of the rest; None = all, except when count is 0"),
        ("sizes", "tags", ""),
        ("bookkeeping", "out", "output directory")])


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_stage_kind_lists_its_options_grouped_with_default_and_comment(kind, capsys):
    cls = KINDS[kind][0]
    text = help_text(capsys, ["train", kind])
    _, rows = config_fields(cls)
    assert {f.name for f in dataclasses.fields(cls)} == {name for _, name, _ in rows}      # every field
    for group, name, comment in rows:
        option = f"--{name.replace('_', '-')}"
        squashed = re.escape("".join(comment.split()))        # argparse may also break a line after a hyphen
        # between them the metavar: a type, or the choices ({r1_zero,r1_zero_think,chat,...})
        assert re.search(rf"{option}[^-]\S{{0,60}}?{squashed}\(default:", "".join(text.split())), (kind, name)
        if group:
            assert f"{group}: " in text
    assert f"r1lab train {kind} [--config FILE]" in text


def test_grpo_help_shows_units_paper_defaults_and_groups(capsys):
    text = help_text(capsys, ["train", "grpo"])
    assert "batch: --steps N" in text
    assert "--samples-per-prompt N G, completions per problem (R1: 16; DeepSeekMath GRPO: 64) (default: 4)" in text
    assert "--loss-aggregation {sample,token,constant}" in text and "(default: 1e-06)" in text
    assert "objective: --beta X KL weight to the frozen reference" in text


@pytest.mark.parametrize("argv, expected", [
    (["serve"], ["(default: 8000)", "(default: 127.0.0.1)", "model spec: an alias", "--served-model-name NAME",
                 "--max-prompt-tokens N", "(default: 256)", "--threads N"]),
    (["generate"], ["the question, as the template's user text", "(default: 0.6)", "(default: r1_zero)"]),
    (["eval"], ["MODEL [MODEL ...]", "one or more; each a model spec", "(default: 8)", "(default: runs/eval)"]),
    (["report"], ["a run directory (runs/NAME, holding one folder per stage)"]),
])
def test_commands_explain_positionals_and_show_defaults(argv, expected, capsys):
    text = help_text(capsys, argv)
    assert all(e in text for e in expected), [e for e in expected if e not in text]


@pytest.mark.parametrize("argv, suggestion", [
    (["train", "grpo", "--sample-per-prompt", "3"], "did you mean --samples-per-prompt?"),
    (["train", "grpo", "--samples", "3"], "did you mean --samples-per-prompt?"),
    (["train", "sft", "--learnig-rate=1e-5"], "did you mean --learning-rate?"),
    (["serve", "tiny-random", "--prot", "80"], "did you mean --port?"),
    (["eval", "tiny-random", "--sample", "3"], "did you mean --samples?"),
])
def test_an_unknown_option_suggests_the_closest_name(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().endswith(suggestion)


@pytest.mark.parametrize("argv", [
    ["train", "grpo", "--model", "tiny-random", "--task", "nope"],
    ["train", "grpo", "--model", "smollm2"],
    ["train", "grpo", "--model", "runs/nope/checkpoint"],
    ["train", "grpo", "--model", "tiny-random", "--rewards", "code,format"],
    ["train", "sft", "--model", "tiny-random", "--data", "missing.jsonl"],
    ["train", "compete", "--model", "tiny-random", "--task-options", "{digits: 9}"],
    ["train", "distill", "--teacher", "nope"],
    ["train", "cold_start", "--task", "nope"],
])
def test_a_stage_that_cannot_start_leaves_no_out_folder(argv, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(out)])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("r1lab: error: ")
    assert not out.exists()


def test_train_runs_any_stage_kind_and_takes_either_spelling(tmp_path):
    main(["train", "cold_start", "--n", "3", "--task_options", "{operands: 2}", "--out", str(tmp_path / "cold")])
    assert len((tmp_path / "cold" / "data.jsonl").read_text().splitlines()) == 3


def test_serve_options_reach_the_server(monkeypatch):
    calls = []
    monkeypatch.setattr("r1lab.serve.serve", lambda *args: calls.append(args))
    main(["serve", "runs/x/checkpoint", "--served-model-name", "r1-tiny", "--threads", "2", "--max-prompt-tokens", "900",
          "--max-queue", "5", "--max-tokens", "100", "--port", "9000"])
    (model, host, port, key, served, threads, limits), = calls
    assert (model, host, port, key, served, threads) == ("runs/x/checkpoint", "127.0.0.1", 9000, None, "r1-tiny", 2)
    assert (limits.max_prompt_tokens, limits.max_queue, limits.max_tokens) == (900, 5, 100)


def test_num_processes_relaunches_the_stage_with_its_options(monkeypatch, tmp_path):
    import subprocess
    commands = []
    monkeypatch.setattr(subprocess, "call", lambda command, **options: commands.append(command) or 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "grpo", "--model", "tiny-random", "--prompts_per_step", "4", "--beta=-0", "--num-processes", "2",
              "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 0 and not (tmp_path / "o").exists()
    command = commands[0]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("r1lab"):] == ["r1lab", "train", "grpo", "--model=tiny-random", "--prompts-per-step=4",
                                                 "--beta=-0", f"--out={tmp_path / 'o'}"]
