"""The training pass's log-probs: chunked over the vocabulary (r1lab's default) against whole (B, C, V) logits;
with --packed, padded rows against one packed row (both chunked), completions of 40% to 100% of --completion;
with --buckets, all rows padded to the longest against length buckets (r1lab's default), the same lengths;
with --buckets --sft, SFT's layout instead: each row its own prompt (20 to 100 tokens) then its completion, run
whole (no prompt pass shared).

    .venv/bin/python bench/logprobs_pass.py [--rows 16] [--completion 96] [--precision fp32|bf16] [--packed | --buckets [--sft]]

SmolLM2-135M, `rows` completions sharing 2 prompts (GRPO's layout), one forward + backward of
sum(log-probs) with entropy, as GRPO's first pass does. Each mode runs in its own process so its peak
memory (max RSS) is its own; seconds are the median of 3 passes after a warm-up. Prints the hardware.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one_mode(mode: str, rows: int, completion: int, precision: str, sft: bool = False) -> dict:
    import torch

    from r1lab.algorithms import sequences
    from r1lab.algorithms.sequences import pad_batch, token_logprobs
    from r1lab.models import load_model
    from r1lab.hardware import autocast

    model, _ = load_model("smollm2-135m")
    if mode == "whole":
        sequences.lm_head = lambda model: None
    if mode != "buckets":                                  # every other mode pads all rows to the longest
        sequences.BUCKET_OVERHEAD = 10 ** 9
    torch.manual_seed(0)
    prompts = [torch.randint(100, 40000, (100,)).tolist()] * (rows // 2) + [torch.randint(100, 40000, (100,)).tolist()] * (rows - rows // 2)
    if sft:                                                # SFT: a prompt of its own per row, 20 to 100 tokens
        prompts = [torch.randint(100, 40000, (n,)).tolist() for n in torch.randint(20, 101, (rows,)).tolist()]
    varied = mode in ("padded", "packed", "buckets")    # the quickstart's spread: 40 to 96 of 96 tokens
    lengths = torch.randint(int(0.4 * completion), completion + 1, (rows,)).tolist() if varied else [completion] * rows
    completions = [torch.randint(100, 40000, (n,)).tolist() for n in lengths]
    batch = pad_batch(prompts, completions, 0, "cpu", packed=mode == "packed")
    times = []
    for _ in range(4):
        began = time.perf_counter()
        with autocast("bf16" if precision == "bf16" else "no"):
            logprobs, _ = token_logprobs(model, batch, 1.0, with_entropy=True, shared=not sft)
        logprobs.sum().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    seconds = statistics.median(times[1:])
    return {"seconds": seconds, "tokens_per_s": (sum(map(len, prompts)) + sum(lengths)) / seconds,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--completion", type=int, default=96)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--packed", action="store_true",
                        help="padded against packed rows, completions of varied length")
    parser.add_argument("--buckets", action="store_true",
                        help="padded to the longest against length buckets, completions of varied length")
    parser.add_argument("--sft", action="store_true", help="with --buckets: SFT's rows, each its own prompt, run whole")
    parser.add_argument("--only", choices=["chunked", "whole", "padded", "packed", "buckets"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(one_mode(args.only, args.rows, args.completion, args.precision, args.sft)))
        return
    from r1lab.hardware import cpu_name
    import torch
    print(f"{cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
          f"smollm2-135m, {args.rows} rows x ({'20-' * args.sft}100 prompt + {'up to ' * (args.packed or args.buckets)}"
          f"{args.completion} completion) tokens{', SFT rows' * args.sft}, {args.precision}")
    results = {}
    modes = ("padded", "packed") if args.packed else ("padded", "buckets") if args.buckets else ("whole", "chunked")
    for mode in modes:
        done = subprocess.run([sys.executable, __file__, "--only", mode, "--rows", str(args.rows), "--completion",
                               str(args.completion), "--precision", args.precision, *["--sft"] * args.sft],
                              capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(line[7:])
        r = results[mode]
        print(f"{mode:8} {r['seconds']:7.2f} s/pass {r['tokens_per_s']:8.0f} tok/s {r['peak_gb']:6.2f} GB peak")
    (old, w), (new, c) = ((mode, results[mode]) for mode in modes)
    print(f"{new} vs {old}: {w['seconds'] / c['seconds']:.2f}x speed, {c['peak_gb'] / w['peak_gb']:.2f}x peak memory")


if __name__ == "__main__":
    main()
