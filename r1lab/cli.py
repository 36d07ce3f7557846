"""The `r1lab` command: parse arguments, load a config, call ONE function. No logic lives here.

    r1lab models                                   aliases, sources, cache
    r1lab tasks                                    task specs and reasoning-gym datasets
    r1lab generate MODEL "PROMPT" [--template r1_zero] [--n 4] [--max-new-tokens 256]
    r1lab train grpo [--config FILE] [--resume] [--OPTION VALUE ...]   (options: GRPOConfig fields)
"""
from __future__ import annotations

import argparse
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


def cmd_tasks(args) -> None:
    from r1lab.tasks.gym import dataset_names
    print("arithmetic               built in: 'Calculate 1 + 2 + 3', seeded, disjoint train/test")
    print("jsonl:<path>             your data, one JSON object per line (fields: prompt, answer, steps)")
    print("reasoning-gym:<dataset>  one of:", ", ".join(dataset_names()))


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


def cmd_train(args, extra: list[str]) -> None:
    from r1lab.algorithms.grpo import train_grpo
    from r1lab.config import GRPOConfig, load_config

    config = load_config(GRPOConfig, args.config, options_to_dict(extra))
    checkpoint = train_grpo(config, resume=args.resume)
    print(f"checkpoint: {checkpoint}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lab", description="Train reasoning LMs the DeepSeek-R1 way.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list model aliases and what is cached")
    sub.add_parser("tasks", help="list task specs")
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
    t.add_argument("stage", choices=["grpo"])
    t.add_argument("--config", help="YAML file of options (command-line options override it)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
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
            {"models": cmd_models, "tasks": cmd_tasks, "generate": cmd_generate}[args.command](args)
    except R1labError as e:
        print(f"r1lab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("r1lab: interrupted", file=sys.stderr)
        sys.exit(130)
