"""Decoding speed of the hf engine against this machine's roofline, fast path against the model's own layers.

    .venv/bin/python bench/decode_roofline.py [--rows 16 64] [--new-tokens 64] [--dtype float32] [--malloc keep|system]

SmolLM2-135M, `rows` sequences (prompts of 60 tokens, 4 samples each, as GRPO groups them), every row
decoding `new-tokens` tokens (EOS ignored, so the row count stays fixed). Roofline for `rows`: the lower
of the bandwidth bound (rows x measured read bandwidth / bytes of weights read per step) and the compute
bound (measured peak matmul FLOP/s / (2 x parameters) tokens per second), both measured here first.
Breakdown per token step: forward (model calls after the prefill), sampling (`sample_tokens`), the rest
(prefill, bookkeeping). Each path is timed on its second identical call: the first packs the weights and grows the
heap to the batch's size (its pages faulted in: ~350 ms of a ~2 s call at 16 rows), which a GRPO run pays in its first
steps only (r1lab/allocator.py; docs/speed.md, session 19). The peak matmul rate is the best of three 0.5 s windows
(one 1 s window moved the compute bound by +-7% between runs). `--malloc keep` (the default) sets glibc's malloc as every training stage
does, so as a GRPO rollout decodes (r1lab/allocator.py); `system` leaves it as it is (eval, serving).
"eager" is the same loop with the model's own nn.Linear layers and DynamicCache;
"unfused" is the fast path with q/k/v and gate/up as separate matmuls (no FusedPack), which also leaves out the lean
decode step (r1lab/rollout/lean_decode.py: it needs the fused packs), so each token runs the model's own forward.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch


def measure(engine, prompts: list[str], n: int, new_tokens: int) -> dict:
    from r1lab.rollout import Sampling, hf

    clock = {"forward": 0.0, "sampling": 0.0, "calls": 0}

    def before(module, args, kwargs):
        clock["started"] = time.perf_counter()

    def after(module, args, kwargs, output):
        clock["calls"] += 1
        if clock["calls"] > 1:                                  # the first call is the prefill
            clock["forward"] += time.perf_counter() - clock["started"]

    from r1lab.rollout.lean_decode import LeanDecoder
    lean_step = LeanDecoder.step

    def timed_step(self, *args):                               # a decode step that bypasses the model's forward
        began = time.perf_counter()
        logits = lean_step(self, *args)
        clock["forward"] += time.perf_counter() - began
        return logits

    original = hf.sample_tokens

    def timed_sampling(*args):
        began = time.perf_counter()
        chosen = original(*args)
        clock["sampling"] += time.perf_counter() - began
        return chosen

    hooks = [engine.model.register_forward_pre_hook(before, with_kwargs=True),
             engine.model.register_forward_hook(after, with_kwargs=True)]
    hf.sample_tokens, LeanDecoder.step = timed_sampling, timed_step
    try:
        began = time.perf_counter()
        groups = engine.generate(prompts, n, Sampling(temperature=1.0, max_new_tokens=new_tokens))
        total = time.perf_counter() - began
    finally:
        hf.sample_tokens, LeanDecoder.step = original, lean_step
        for hook in hooks:
            hook.remove()
    tokens = sum(len(s.token_ids) for g in groups for s in g)
    steps = new_tokens - 1
    return {"tokens_per_s": tokens / total, "forward_ms": 1000 * clock["forward"] / steps,
            "sampling_ms": 1000 * clock["sampling"] / new_tokens,
            "rest_ms": 1000 * (total - clock["forward"] - clock["sampling"]) / new_tokens, "seconds": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--malloc", default="keep", choices=["keep", "system"],
                        help="glibc's malloc as a training stage sets it (keep) or as it is (system)")
    args = parser.parse_args()
    if args.malloc == "keep":
        from r1lab.allocator import keep_freed_memory
        keep_freed_memory()

    from r1lab.hardware import cpu_name, matmul_gflops, memory_gbps
    from r1lab.models import load_model
    from r1lab.rollout import decoding, hf
    from r1lab.rollout.hf import HFEngine

    model, tokenizer = load_model("smollm2-135m", args.dtype)
    model.eval()
    dtype = getattr(torch, args.dtype)
    peak, bandwidth = max(matmul_gflops(dtype, size=1024, seconds=0.5) for _ in range(3)), memory_gbps()
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = params * dtype.itemsize
    print(f"{cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; smollm2-135m {args.dtype}, {params / 1e6:.1f}M parameters; malloc {args.malloc}")
    print(f"measured: matmul {peak:.0f} GFLOP/s, memory read {bandwidth:.1f} GB/s -> compute bound "
          f"{peak * 1e9 / (2 * params):.0f} tok/s")
    torch.manual_seed(0)
    words = "add the numbers and explain each step of the reasoning carefully before giving the final answer".split()
    print(f"{'rows':>5} {'path':>6} {'tok/s':>7} {'roofline':>9} {'fraction':>9} {'forward ms':>11} {'sampling ms':>12} "
          f"{'rest ms':>8}")
    for rows in args.rows:
        prompts = [" ".join(words[i % len(words)] for i in range(k, k + 60)) for k in range(rows // 4)]
        roofline = min(rows * bandwidth * 1e9 / weight_bytes, peak * 1e9 / (2 * params))
        for path in ("eager", "unfused", "fast"):
            engine = HFEngine(model, tokenizer, max_batch=rows, seed=0)
            engine.eos_ids = set()                             # every row decodes all new tokens
            with contextlib.ExitStack() as stack:
                if path == "eager":
                    from transformers import DynamicCache
                    stack.enter_context(_patched(hf, "packed_linears", lambda *a: contextlib.nullcontext()))
                    stack.enter_context(_patched(hf, "GrowingCache", DynamicCache))
                if path == "unfused":                          # the fast path, q/k/v and gate/up as separate matmuls
                    stack.enter_context(_patched(decoding, "FUSED", ()))
                measure(engine, prompts, 4, args.new_tokens)   # warm-up: the same call, so packs and heap are warm
                r = measure(engine, prompts, 4, args.new_tokens)
            print(f"{rows:5d} {path:>6} {r['tokens_per_s']:7.0f} {roofline:9.0f} {r['tokens_per_s'] / roofline:9.1%} "
                  f"{r['forward_ms']:11.1f} {r['sampling_ms']:12.1f} {r['rest_ms']:8.1f}")


@contextlib.contextmanager
def _patched(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


if __name__ == "__main__":
    main()
