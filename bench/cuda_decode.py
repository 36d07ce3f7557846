"""Decoding speed on the device torch picks (a GPU where there is one): r1lab's hf engine against `model.generate`.

    python bench/cuda_decode.py [--model smollm2-135m | FOLDER] [--random-weights] [--rows 8 16] [--new-tokens 64]

Both decode `rows` sequences (prompts of ~60 tokens, 4 samples each, as GRPO groups them) for `new-tokens` tokens
each, EOS ignored (so the row count stays fixed), T = 1, top-p 1 (the GRPO rollout's sampling). Prints tokens/s and
milliseconds per token step for each, their ratio, then a profile of one engine call: the ops with the most CPU
time and the most device time, so the gap has a name. `--random-weights` builds the model from FOLDER's config with
random weights (the speed is the same; a machine without the weights can run it: carry config.json and the
tokenizer files only).
"""
from __future__ import annotations

import argparse
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_seconds(engine, prompts: list[str], new_tokens: int) -> float:
    from r1lab.rollout import Sampling
    synchronize(engine.model.device)
    began = time.perf_counter()
    engine.generate(prompts, 4, Sampling(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens))
    synchronize(engine.model.device)
    return time.perf_counter() - began


def generate_seconds(model, tokenizer, prompts: list[str], new_tokens: int) -> float:
    batch = tokenizer([p for p in prompts for _ in range(4)], return_tensors="pt", padding=True).to(model.device)
    synchronize(model.device)
    began = time.perf_counter()
    model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
    synchronize(model.device)
    return time.perf_counter() - began


def load(spec: str, random_weights: bool, dtype: torch.dtype, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    if random_weights:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    else:
        from r1lab.models import load_model
        model, tokenizer = load_model(spec, str(dtype).removeprefix("torch."))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--profile-steps", type=int, default=8, help="new tokens of the profiled engine call (0: none)")
    args = parser.parse_args()

    from r1lab.rollout.hf import HFEngine
    from r1lab.training import device as pick_device

    device = pick_device()
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {device}: {name}; torch {torch.__version__}; {args.model}{' (random weights)' * args.random_weights}")
    words = "add the numbers and explain each step of the reasoning carefully before giving the final answer".split()
    print(f"{'dtype':>9} {'rows':>5} {'engine tok/s':>13} {'generate tok/s':>15} {'engine ms/step':>15} "
          f"{'generate ms/step':>17} {'engine / generate':>18}")
    for dtype_name in args.dtypes:
        model, tokenizer = load(args.model, args.random_weights, getattr(torch, dtype_name), device)
        for rows in args.rows:
            prompts = [" ".join(words[i % len(words)] for i in range(k, k + 60)) for k in range(rows // 4)]
            engine = HFEngine(model, tokenizer, max_batch=rows, seed=0)
            engine.eos_ids = set()                                 # every row decodes all new tokens
            engine_seconds(engine, prompts[:1], 4)                 # warm-up
            generate_seconds(model, tokenizer, prompts[:1], 4)
            ours = engine_seconds(engine, prompts, args.new_tokens)
            theirs = generate_seconds(model, tokenizer, prompts, args.new_tokens)
            tokens = rows * args.new_tokens
            print(f"{dtype_name:>9} {rows:5d} {tokens / ours:13.0f} {tokens / theirs:15.0f} "
                  f"{1000 * ours / args.new_tokens:15.1f} {1000 * theirs / args.new_tokens:17.1f} {theirs / ours:17.2f}x")
        if args.profile_steps:
            activities = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with torch.profiler.profile(activities=activities) as prof:
                engine_seconds(engine, prompts, args.profile_steps)
            table = prof.key_averages()
            print(f"\nprofile of one engine call ({dtype_name}, {rows} rows, {args.profile_steps} new tokens), "
                  f"by self CPU time:")
            print(table.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50))
            if device.type == "cuda":
                print("by device time:")
                print(table.table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=50))
        del model, engine


if __name__ == "__main__":
    main()
