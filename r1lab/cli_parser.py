"""The `r1lab` command line's parser: every command's arguments, and each stage's options generated from its
config dataclass (grouped by the comment lines in r1lab/config.py, each with its comment and default), so
the help cannot drift from the code. Numbers are range-checked as they are parsed (`number`)."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing

import yaml

EXPERIMENTS = {"is-rl-needed": "recipes/is_rl_needed.yaml",   # the talk's table
               "rl-gain": "recipes/rl_gain.yaml",              # GRPO's paired gain over its cold start
               "r1-zero": "recipes/r1_zero.yaml",              # RL from a base model alone, paired against it
               "compete": "recipes/compete.yaml"}              # competition without RL, paired against its cold start


def number(kind, interval: str):
    """An argparse type: `kind` (int or float) in `interval` (as config.RANGES writes them, e.g. '(0, 1]');
    NaN and infinities are refused unless the interval allows inf."""
    def parse(text: str):
        from r1lab.schema import in_range
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not in_range(value, interval) or (kind is float and value != value):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT, SEED, UNIT, NONNEG = number(int, "[1, inf)"), number(int, "[0, inf)"), number(float, "(0, 1]"), number(float, "[0, 1e6]")


def find_parser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser | None:
    """The parser of a command path (['train', 'grpo'], ['eval']), or None where a name is no command."""
    for name in path:
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands or name not in commands[0].choices:
            return None
        parser = commands[0].choices[name]
    return parser


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """A parser's options spelt with two dashes ('--samples-per-prompt', ...)."""
    return [o for action in parser._actions for o in action.option_strings if o.startswith("--")]


def yaml_mapping(text: str) -> dict:
    """An option's YAML mapping, e.g. '{operands: 2}'."""
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping like '{{operands: 2}}', got {text!r}")
    return value


def config_fields(cls) -> tuple[str, list[tuple[str | None, str, str]]]:
    """(docstring, [(group, field, comment)]) of a config dataclass, read from its source (r1lab/config.py):
    a field's comment starts at the end of its line and goes on in comment lines right below it, further
    in; a comment line at the fields' indentation heads the fields below it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {}                                   # line -> (text, column, alone on its line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            column = token.start[1]
            comments[token.start[0]] = (token.string.lstrip("#").strip(), column, not token.line[:column].strip())
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {s.lineno: s for s in node.body if isinstance(s, ast.AnnAssign) and s.target.id in names}
    rows, group, last = [], None, -1               # last: the last line of the latest field's comment
    for line in range(node.lineno + 1, node.end_lineno + 1):
        text, column, alone = comments.get(line, ("", 0, False))
        if line in fields:
            field = fields[line]
            rows.append([group, field.target.id, " ".join(comments[k][0] for k in range(line, field.end_lineno + 1)
                                                         if k in comments and not comments[k][2])])
            last = field.end_lineno
        elif alone and column == node.body[0].col_offset:
            group = text
        elif alone and rows and line == last + 1:
            rows[-1][2], last = f"{rows[-1][2]} {text}", line
    return ast.get_docstring(node) or "", [tuple(row) for row in rows]


def _shown(value) -> str:
    """A default as it is written on the command line."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    return str(value)


THREADS_HELP = ("torch CPU threads (default: the cores other processes leave free, chosen again between training "
                "steps; r1lab/threads.py)")


def add_stage_parser(stages, kind: str, cls, output: str) -> None:
    """`r1lab train KIND`: its options are the config fields, grouped and explained as in config.py."""
    from r1lab.schema import CHOICES, allowed_types
    docstring, rows = config_fields(cls)
    defaults, hints = cls(), typing.get_type_hints(cls)
    metavars = {int: "N", float: "X", str: "TEXT", bool: "BOOL", dict: "YAML", list: "LIST", type(None): "none"}
    p = stages.add_parser(kind, help=f"writes {output}" + (f"; {docstring.splitlines()[0]}" if docstring else ""),
                          description=f"Run one {kind} stage ({cls.__name__}, r1lab/config.py); it writes {output} "
                                      f"under --out. {docstring}".strip(),
                          usage=f"r1lab train {kind} [--config FILE] [--OPTION VALUE ...]", allow_abbrev=False,
                          epilog="Values: BOOL true/false; LIST a,b,c or a YAML list; YAML a mapping like '{key: value}'. "
                                 "Options given here override those of --config.")
    run = p.add_argument_group("running")
    run.add_argument("--config", metavar="FILE", help="YAML file of options (the options below override it)")
    run.add_argument("--threads", type=COUNT, metavar="N", help=THREADS_HELP)
    if output == "checkpoint/":
        run.add_argument("--resume", action="store_true", help="continue from --out's last checkpoint")
        run.add_argument("--allow-config-change", action="store_true",
                         help="with --resume: continue even if settings differ from the checkpoint's (the new ones apply)")
        run.add_argument("--num-processes", type=int, metavar="N",
                         help="data-parallel processes (one per GPU; on CPUs over gloo), via accelerate launch")
    p.set_defaults(resume=False, allow_config_change=False, num_processes=None, command_parser=p)
    groups = {}
    for group, name, comment in rows:
        if group not in groups:
            groups[group] = p.add_argument_group(group or f"{kind} options")
        kinds = [typing.get_origin(k) or k for k in allowed_types(hints[name])]
        metavar = "{" + ",".join(CHOICES[name]) + "}" if name in CHOICES else "|".join(metavars[k] for k in kinds)
        text = f"{comment} (default: {_shown(getattr(defaults, name))})".lstrip()
        groups[group].add_argument(f"--{name.replace('_', '-')}", dest=f"set.{name}", metavar=metavar,
                                   default=argparse.SUPPRESS, help=text.replace("%", "%%"))


def build_parser(stages: bool = True) -> argparse.ArgumentParser:
    """The command line; `stages=False` leaves out the per-stage options of `train` (they import the configs,
    and torch with them: a second that other commands do without)."""
    parser = argparse.ArgumentParser(prog="r1lab", description="Train reasoning LMs the DeepSeek-R1 way.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, **kwargs):
        p = sub.add_parser(name, allow_abbrev=False, **kwargs)
        p.set_defaults(command_parser=p)
        return p
    model_help = ("model spec: an alias (smollm2-135m, tiny-random; `r1lab models`), a Hugging Face folder such as "
                  "runs/NAME/grpo/checkpoint, a .gguf file, or a hub id owner/name")
    command("models", help="list model aliases and what is cached")
    command("doctor", help="this machine: hardware, the precision 'auto' picks and why, measured speeds, sandbox"
            ).add_argument("--threads", type=COUNT, metavar="N", help=THREADS_HELP)
    tasks = command("tasks", help="list task specs; with SPEC, how many distinct test items it has")
    tasks.add_argument("spec", nargs="?", help="a reasoning-gym task spec, e.g. reasoning-gym:tower_of_hanoi")
    g = command("generate", help="sample completions for one prompt", description="Sample completions for one "
                "question, rendered with a template, and show each with its parsed answer.")
    g.add_argument("model", help=model_help)
    g.add_argument("prompt", help="the question, as the template's user text (e.g. 'Calculate 1 + 2')")
    g.add_argument("--template", default="r1_zero",
                   help="prompt template: r1_zero, r1_zero_think, chat, code, json_cot (default: %(default)s)")
    g.add_argument("--n", type=COUNT, default=1, help="completions to sample (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=COUNT, default=256,
                   help="completion length cap, tokens (default: %(default)s)")
    g.add_argument("--temperature", type=NONNEG, default=0.6,
                   help="sampling temperature (0: greedy; R1: 0.6) (default: %(default)s)")
    g.add_argument("--top-p", type=UNIT, default=0.95, help="nucleus mass (R1: 0.95) (default: %(default)s)")
    g.add_argument("--seed", type=SEED, default=0, help="sampling seed (default: %(default)s)")
    g.add_argument("--threads", type=COUNT, metavar="N", help=THREADS_HELP)
    t = command("train", help="run one stage of any kind; `r1lab train KIND --help` lists its options",
                description="Run one stage on its own, as a recipe would. Its options are the fields of its "
                            "config (r1lab/config.py); `r1lab train KIND --help` lists them with units and defaults.")
    kinds = t.add_subparsers(dest="stage", required=True, metavar="KIND")
    if stages:
        from r1lab.pipeline import KINDS
        for kind, (cls, output) in KINDS.items():
            add_stage_parser(kinds, kind, cls, {"data": "data.jsonl", "checkpoint": "checkpoint/", "eval": "eval.json"}[output])
    add_eval_parser(command("eval", help="pass@1, cons@k, length, reflection and language mixing for models",
                            description="Sample k completions per held-out problem from each model and report the table."),
                    model_help)
    add_other_parsers(command, model_help)
    return parser


def add_eval_parser(e: argparse.ArgumentParser, model_help: str) -> None:
    """`r1lab eval`'s arguments: the models, the task, the paper's sampling settings."""
    e.add_argument("models", nargs="+", metavar="MODEL", help=f"one or more; each a {model_help}")
    e.add_argument("--task", default="arithmetic",
                   help="task spec (`r1lab tasks`); its test split is used (default: %(default)s)")
    e.add_argument("--samples", type=COUNT, default=8, help="k samples per problem (default: %(default)s)")
    e.add_argument("--problems", type=COUNT, default=50, help="held-out problems (default: %(default)s)")
    e.add_argument("--template", help="prompt template (default: the one the checkpoint's run was trained with, from "
                   "its config.yaml; else code for humaneval, r1_zero otherwise)")
    e.add_argument("--temperature", type=NONNEG, default=0.6,
                   help="sampling temperature (the paper's evaluation: 0.6) (default: %(default)s)")
    e.add_argument("--top-p", type=UNIT, default=0.95,
                   help="nucleus mass (the paper's evaluation: 0.95) (default: %(default)s)")
    e.add_argument("--max-new-tokens", type=COUNT, default=256,
                   help="completion length cap, tokens (default: %(default)s)")
    e.add_argument("--seed", type=SEED, default=0, help="problems and sampling (default: %(default)s)")
    e.add_argument("--threads", type=COUNT, metavar="N", help=THREADS_HELP)
    e.add_argument("--task-options", type=yaml_mapping, default={}, metavar="YAML",
                   help="options of the task, e.g. '{operands: 2, low: 100000, high: 999999999, operators: \"*\"}'")
    e.add_argument("--tools", default="", help="tools the model may call while it reasons: python,calculator,"
                   "package.module:function (default: none)")
    e.add_argument("--max-turns", type=COUNT, default=4, help="with --tools: model turns per episode (default: %(default)s)")
    e.add_argument("--out", default="runs/eval",
                   help="folder for eval.json and the per-model samples (resumable) (default: %(default)s)")
    from r1lab.metrics import REFLECTION_MARKERS
    e.add_argument("--reflection-markers", default=",".join(REFLECTION_MARKERS),
                   help="comma-separated phrases that count as reflection in the reasoning (default: %(default)s)")


def add_other_parsers(command, model_help: str) -> None:
    """run, serve, experiment, data, sandbox and report."""
    u = command("run", help="run a recipe (YAML): its stages in order, resuming finished ones")
    u.add_argument("recipe", help="a recipe file, e.g. recipes/r1.yaml")
    u.add_argument("overrides", nargs="*", help="key=value or stage.key=value")
    u.add_argument("--allow-config-change", action="store_true",
                   help="rerun finished stages whose settings changed (training continues from its checkpoint)")
    u.add_argument("--num-processes", type=int, metavar="N",
                   help="run each training stage (sft, grpo, compete) data-parallel in N processes (one per GPU; on "
                        "CPUs over gloo), via accelerate launch; the other stages run in this process")
    u.add_argument("--threads", type=COUNT, metavar="N", help=THREADS_HELP)
    v = command("serve", help="OpenAI-compatible API and chat page for a model (reasoning_content split out)",
                description="Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/models), with "
                            "a chat page at /, /health and /metrics.")
    v.add_argument("model", help=model_help)
    v.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface) (default: %(default)s)")
    v.add_argument("--port", type=number(int, "[0, 65535]"), default=8000, help="port to listen on (default: %(default)s)")
    v.add_argument("--served-model-name", metavar="NAME", help="the model id clients send (default: MODEL as given)")
    v.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' (default: no key)")
    v.add_argument("--max-tokens", type=COUNT, default=2048,
                   help="the largest max_tokens a request may ask for (default: %(default)s)")
    v.add_argument("--max-prompt-tokens", type=COUNT, metavar="N",
                   help="refuse longer prompts with a 400 (default: only the model's context bounds them)")
    v.add_argument("--max-queue", type=COUNT, default=256,
                   help="requests waiting or running; past it, a 429 (default: %(default)s)")
    v.add_argument("--threads", type=COUNT, metavar="N", help="torch CPU threads (default: the cores other processes "
                   "leave free at start)")
    x = command("experiment", help="a recipe over several seeds, pooled: is-rl-needed (the talk's table), rl-gain, r1-zero, compete")
    x.add_argument("which", choices=list(EXPERIMENTS), help="the experiment (its recipe: " +
                   ", ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()) + ")")
    x.add_argument("overrides", nargs="*", help="key=value or stage.key=value, for every seed")
    x.add_argument("--seeds", type=COUNT, default=3, help="seeds to run (default: %(default)s)")
    x.add_argument("--recipe", help="another recipe to run per seed (default: the experiment's)")
    x.add_argument("--threads", type=COUNT, metavar="N", help=THREADS_HELP)
    d = command("data", help="write training data")
    d.add_argument("kind", choices=["cold-start", "goal-directed"], help="what to write")
    d.add_argument("source", nargs="?", help="goal-directed: input jsonl of trajectories (prompt, answer, completion)")
    d.add_argument("--augment", default="start,goal,hindsight",
                   help="goal-directed: start, goal, hindsight (default: %(default)s)")
    d.add_argument("--task", default="arithmetic", help="task spec (default: %(default)s)")
    d.add_argument("--n", type=COUNT, default=500, help="cold-start: examples (default: %(default)s)")
    d.add_argument("--out", required=True, help="the jsonl file to write")
    d.add_argument("--template", default="r1_zero", help="format of the written completions (default: %(default)s)")
    d.add_argument("--seed", type=SEED, default=0, help="problem order (default: %(default)s)")
    d.add_argument("--task-options", type=yaml_mapping, default={}, metavar="YAML", help="options of the task")
    d.add_argument("--tools", default="", help="cold-start: calculator or python, to show that tool computing "
                   "each answer (default: none)")
    b = command("sandbox", help="show what the code sandbox enforces here; optionally run a program")
    b.add_argument("program", nargs="?", help="a Python file to run")
    b.add_argument("--test", action="append", default=[], help="an assert statement (repeatable)")
    b.add_argument("--wall-s", type=number(float, "(0, 3600]"), default=10.0, help="wall-clock limit, seconds (default: %(default)s)")
    r = command("report", help="plots and report.md from a run directory's metrics files",
                description="Read the metrics files under a run directory and write report.md with plots beside them.")
    r.add_argument("run_dir", help="a run directory (runs/NAME, holding one folder per stage) or one stage's folder")
