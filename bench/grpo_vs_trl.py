"""GRPO speed and memory: r1lab against TRL's GRPOTrainer, same model, prompts, settings and precision.

    .venv/bin/pip install -r bench/requirements.txt      # TRL, for the bench only
    .venv/bin/python bench/grpo_vs_trl.py --steps 6 [--precision auto|fp32|bf16] [--setting small|realistic]
        [--micro-batch N] [--gradient-checkpointing] [--only r1lab|trl]      (r1lab's memory options; one trainer)
        [--every-row]          (one more r1lab run with skip_zero_advantage off: what skipping rows saves)
        [--model HF_FOLDER --template chat]    (e.g. a cold-started checkpoint, whose groups have a reward spread)
        [--trl-keeps-freed-memory]   (TRL under the malloc setting r1lab's training applies, r1lab/allocator.py)
    .venv/bin/python bench/grpo_vs_trl.py --engine vllm ...     (GPU: r1lab rolls out with vLLM; TRL with its own generate)

Each trainer runs in its own process (one after the other) so peak memory (max RSS) is its own.
Settings, equal for both: smollm2-135m (or `--model`, an HF folder), arithmetic problems in the R1-Zero
template (or `--template`), `small`: 2 prompts
x G = 4 completions a step, <= 64 new tokens; `realistic`: 8 prompts x G = 8, <= 256 new tokens;
temperature 1, beta 0, lr 1e-6, accuracy + format reward, one optimisation pass per batch, the whole
batch as one micro-batch (small) or micro-batches of 16 (realistic). Precision, the same for both:
fp32, or bf16 (r1lab: autocast training + bf16 rollouts; TRL: `bf16=True`, on the CPU too); `auto`
runs r1lab's `auto` (its own choice of training and rollout precision on this hardware) against TRL at
`auto`'s training precision. TRL keeps its own defaults otherwise (gradient
checkpointing on); `--gradient-checkpointing` turns it on for r1lab too, `--micro-batch` sets r1lab's
micro-batch (neither changes the update, only memory and speed). r1lab runs no pass for the rows whose
gradient is exactly zero (beta 0: the rows of groups with equal rewards; `skip_zero_advantage`, on by
default; TRL runs every row): `equal groups` is the share of such groups (TRL's `frac_reward_zero_std`
for TRL), `rows run` the share of rows r1lab put through its passes, and `--every-row` adds an r1lab
run with the skipping off. Seconds per step are medians over the steps after the first. The decode
roofline fraction is r1lab's sampling tokens/s over the roofline of bench/decode_roofline.py at the
step's rows.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r1lab.allocator import LARGEST

SETTINGS = {"small": {"prompts": 2, "G": 4, "new_tokens": 64, "micro_batch": 8},
            "realistic": {"prompts": 8, "G": 8, "new_tokens": 256, "micro_batch": 16}}
LR = 1e-6
KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(LARGEST), "MALLOC_TOP_PAD_": str(LARGEST)}


def peak_gb() -> float:
    """Peak memory of this process: GPU memory allocated by torch where a GPU is used, else max RSS."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1024 ** 3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def run_r1lab(steps: int, precision: str, setting: dict, engine: str = "hf", checkpointing: bool = False,
              every_row: bool = False) -> dict:
    from r1lab.algorithms.grpo import train_grpo
    from r1lab.config import GRPOConfig
    with tempfile.TemporaryDirectory() as folder:      # the run's ~1.6 GB checkpoint is gone once measured
        out = Path(folder) / "run"
        train_grpo(GRPOConfig(model=setting["model"], task="arithmetic", template=setting["template"],
                              rewards="accuracy,format",
                              steps=steps, prompts_per_step=setting["prompts"], samples_per_prompt=setting["G"],
                              micro_batch_size=setting["micro_batch"], max_new_tokens=setting["new_tokens"],
                              temperature=1.0, beta=0.0, learning_rate=LR, save_every=10_000,
                              mixed_precision={"bf16": "bf16", "auto": "auto"}.get(precision, "no"),
                              rollout_dtype={"bf16": "bfloat16", "auto": "auto"}.get(precision, "float32"), engine=engine,
                              gradient_checkpointing=checkpointing, skip_zero_advantage=not every_row, out=str(out)))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return {"seconds_per_step": statistics.median(r["step_seconds"] for r in rows),
            "sample_tokens_per_s": statistics.median(r["sample_tokens_per_s"] for r in rows),
            "train_tokens_per_s": statistics.median(r["train_tokens_per_s"] for r in rows),
            "completion_length": statistics.mean(r["completion_length"] for r in rows), "peak_gb": peak_gb(),
            "equal_groups": statistics.mean(r["zero_std_groups"] for r in rows),
            "rows_run": statistics.mean(r["rows_trained"] for r in rows)}


def trl_precision(precision: str) -> str:
    """TRL's precision for ours: `auto` is r1lab's training precision on this hardware (TRL samples with the
    weights it trains, so r1lab's bf16 sampler under `auto` has no TRL counterpart)."""
    if precision != "auto":
        return precision
    from r1lab.hardware import resolve_precision
    from r1lab.training import device
    return "bf16" if resolve_precision("auto", device()).mixed_precision == "bf16" else "fp32"


def run_trl(steps: int, precision: str, setting: dict) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lab.models import smollm2_folder
    from r1lab.rewards import score
    from r1lab.rollout import Sample, to_completion
    from r1lab.tasks import get_task
    from r1lab.templates import get_template

    folder = smollm2_folder() if setting["model"] == "smollm2-135m" else setting["model"]
    tokenizer, template = AutoTokenizer.from_pretrained(folder), get_template(setting["template"])
    problems = get_task("arithmetic").problems("train", steps * setting["prompts"], 0)
    by_prompt = {template.render(p.prompt, tokenizer): p for p in problems}     # as r1lab renders them

    def reward(prompts, completions, **kwargs):
        done = [to_completion(Sample([], [], c, "stop"), template) for c in completions]
        return score({"accuracy": 1.0, "format": 1.0}, done, [by_prompt[p] for p in prompts])[0]

    stamps, lengths, equal = [], [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])
                equal.append(logs.get("frac_reward_zero_std", float("nan")))

    import torch
    scratch = tempfile.TemporaryDirectory()               # TRL's output_dir, removed when this process ends
    args = GRPOConfig(output_dir=scratch.name, use_cpu=not torch.cuda.is_available(), bf16=precision == "bf16",
                      per_device_train_batch_size=setting["prompts"] * setting["G"], num_generations=setting["G"],
                      gradient_accumulation_steps=1, max_completion_length=setting["new_tokens"], temperature=1.0, beta=0.0,
                      learning_rate=LR, max_steps=steps, logging_steps=1, report_to=[], save_strategy="no",
                      loss_type="grpo", seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(folder, use_kernels=False), processing_class=tokenizer,
                          reward_funcs=reward, args=args, callbacks=[Clock()],
                          train_dataset=Dataset.from_list([{"prompt": k} for k in by_prompt]))
    stamps.append(time.perf_counter())
    trainer.train()
    seconds = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))
    length = statistics.mean(lengths[1:]) if len(lengths) > 1 else float("nan")
    return {"seconds_per_step": seconds, "sample_tokens_per_s": float("nan"), "train_tokens_per_s": float("nan"),
            "completion_length": length, "peak_gb": peak_gb(),
            "equal_groups": statistics.mean(equal[1:]) if len(equal) > 1 else float("nan"), "rows_run": 1.0}


def decode_roofline(rows: int) -> float:
    """The decode roofline (tokens/s) of smollm2-135m in fp32 at `rows` rows, measured here (bench/decode_roofline.py)."""
    import torch

    from r1lab.hardware import matmul_gflops, memory_gbps
    params = 134_515_008
    return min(rows * memory_gbps() * 1e9 / (4 * params), matmul_gflops(torch.float32, 1024, 1.0) * 1e9 / (2 * params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--setting", default="small", choices=list(SETTINGS))
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="r1lab's rollout engine")
    parser.add_argument("--micro-batch", type=int, help="r1lab's micro-batch (default: the setting's; TRL's is the whole batch)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="r1lab recomputes activations in backward too, as TRL does by default (less memory, slower)")
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m or an HF folder both trainers load")
    parser.add_argument("--template", default="r1_zero", help="r1lab's prompt template, rendered the same for both")
    parser.add_argument("--every-row", action="store_true",
                        help="also run r1lab with skip_zero_advantage off (with --only r1lab: only that way)")
    parser.add_argument("--only", choices=["r1lab", "trl"], help="run one trainer and print its figures as JSON")
    parser.add_argument("--trl-keeps-freed-memory", action="store_true",
                        help="run TRL with glibc's malloc set as r1lab's training sets it (MALLOC_MMAP_MAX_=0, trim "
                             "threshold and top pad at 2 GiB): what TRL gets from the same setting")
    args = parser.parse_args()
    setting = {**SETTINGS[args.setting], **({"micro_batch": args.micro_batch} if args.micro_batch else {}),
               "model": args.model, "template": args.template}
    if args.only:
        result = (run_r1lab(args.steps, args.precision, setting, args.engine, args.gradient_checkpointing, args.every_row)
                  if args.only == "r1lab"
                  else run_trl(args.steps, trl_precision(args.precision), setting))
        print("RESULT " + json.dumps(result))
        return
    import torch

    from r1lab.hardware import cpu_name
    results = {}
    for name in ("trl", "r1lab", *(["r1lab, every row"] if args.every_row else [])):
        command = [sys.executable, __file__, "--only", name.split(",")[0], "--steps", str(args.steps), "--precision",
                   args.precision, "--setting", args.setting, "--engine", args.engine, "--model", args.model,
                   "--template", args.template,
                   *(["--gradient-checkpointing"] if args.gradient_checkpointing else []),
                   *(["--micro-batch", str(args.micro_batch)] if args.micro_batch else []),
                   *(["--every-row"] if name.endswith("every row") else [])]
        env = dict(os.environ, **(KEEP_FREED if name == "trl" and args.trl_keeps_freed_memory else {}))
        output = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((l for l in output.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{output.stderr[-3000:]}")
        results[name] = json.loads(line[7:])
    rows = setting["prompts"] * setting["G"]
    roofline = decode_roofline(rows) if args.precision == "fp32" and not torch.cuda.is_available() else float("nan")
    print(f"{cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"GRPO, {args.model}, template {args.template}, {args.setting}: {setting['prompts']} prompts x {setting['G']} completions, "
          f"<= {setting['new_tokens']} new tokens, beta 0, {args.steps} steps (median after the first)"
          + (f", precision {args.precision} (both)" if args.precision != "auto"
             else f", precision: r1lab auto, TRL {trl_precision('auto')}") + f", r1lab engine {args.engine}"
          + f", r1lab micro-batch {setting['micro_batch']}" + (", r1lab with gradient checkpointing" if args.gradient_checkpointing else "")
          + (", TRL with r1lab's malloc setting" if args.trl_keeps_freed_memory else ""))
    print(f"{'':18}{'s/step':>8}{'gen tok/s':>11}{'roofline':>10}{'train tok/s':>13}{'mean len':>10}{'peak GB':>9}"
          f"{'equal groups':>14}{'rows run':>10}")
    for name, r in results.items():
        fraction = r["sample_tokens_per_s"] / roofline
        print(f"{name:18}{r['seconds_per_step']:8.2f}{r['sample_tokens_per_s']:11.1f}"
              f"{(f'{fraction:.0%}' if fraction == fraction else '-'):>10}{r['train_tokens_per_s']:13.1f}"
              f"{r['completion_length']:10.1f}{r['peak_gb']:9.2f}{r['equal_groups']:14.0%}{r['rows_run']:10.0%}")
    t = results["trl"]
    for name, o in list(results.items())[1:]:
        print(f"{name} steps/s vs TRL: {t['seconds_per_step'] / o['seconds_per_step']:.2f}x; "
              f"peak memory {name}/TRL: {o['peak_gb'] / t['peak_gb']:.2f}")


if __name__ == "__main__":
    main()
