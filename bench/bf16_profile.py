"""Where a GRPO step's time goes in fp32 and in bf16, by kind of operation: why bf16 gains less a step than a matmul.

    .venv/bin/python bench/bf16_profile.py [--rows 16] [--new-tokens 64] [--completion 96] [--model smollm2-135m]

The two phases of a GRPO step, each in fp32 and in bf16, on the same inputs:
- decode: the hf engine's rollout of `rows` rows (rows / 4 prompts of ~60 tokens, 4 samples each), `new-tokens`
  tokens a row (EOS ignored), from a policy in training mode as in a GRPO step (so each rollout packs the weights
  anew); bf16 = decoding from a bf16 copy of the fp32 policy, refreshed each rollout, as `auto` samples where the
  CPU has native bf16;
- training pass: forward + backward of the log-probs (with entropy) of `rows` completions of 40-100% of
  `completion` tokens after 2 shared prompts of 100 tokens, GRPO's layout (bench/logprobs_pass.py); bf16 = autocast,
  as `mixed_precision: bf16` trains (`auto` trains in fp32: README, Precision).
Each phase runs twice to warm up, once timed, once under torch's profiler. Every operator's own (self) CPU time goes
to one kind: matmul, attention, copies and casts (with oneDNN's weight packing), other operators (elementwise,
norms, reductions, sampling); the rest of the profiled time is outside any operator (Python, autograd's engine, the
engine's bookkeeping). Prints
the matmul's own bf16 gain (1024^2), each kind's ms and bf16 gain per phase, and the gain the phase would have if
only its matmuls sped up by the plain matmul's ratio (Amdahl's bound for "bf16 = faster matmuls").
"""
from __future__ import annotations

import argparse
import time

KINDS = ("matmul", "attention", "copies and casts", "other operators", "outside operators")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::mkldnn_linear"}
COPY_OPS = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "aten::cat",
            "aten::_foreach_copy_"}


def kind(name: str) -> str:
    """The kind of a profiler event by its name (the bench's categories, KINDS)."""
    if "reorder" in name:                      # oneDNN's weight packing: a layout copy, once a rollout
        return "copies and casts"
    if name in MATMUL_OPS or name.startswith("mkldnn::") or name.startswith("aten::mkldnn_"):
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name in COPY_OPS:
        return "copies and casts"
    if name.startswith(("aten::", "prim::")):
        return "other operators"
    return "outside operators"                 # autograd's nodes, profiler and Python-level records


def by_kind(events, wall_ms: float) -> dict:
    """ms per kind from profiler `events` (name, self CPU us) over a profiled span of `wall_ms`; what no
    operator accounts for is outside operators."""
    totals = dict.fromkeys(KINDS, 0.0)
    for name, self_us in events:
        totals[kind(name)] += self_us / 1000
    totals["outside operators"] += max(0.0, wall_ms - sum(totals.values()))
    return totals


def profiled(run) -> tuple[float, dict]:
    """Wall ms of one plain run of `run` (after two warm-ups), and its ms per kind from one run under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    run()
    run()                                      # a second warm-up: the heap's first-touch page faults end (allocator.py)
    began = time.perf_counter()
    run()
    wall = 1000 * (time.perf_counter() - began)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        run()
        span = 1000 * (time.perf_counter() - began)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    return wall, by_kind(events, span)


def decode_phase(model, tokenizer, rows: int, new_tokens: int, dtype: str):
    from r1lab.rollout import Sampling
    from r1lab.rollout.hf import HFEngine

    words = "add the numbers and explain each step of the reasoning carefully before giving the final answer".split()
    prompts = [" ".join(words[i % len(words)] for i in range(k, k + 60)) for k in range(rows // 4)]
    engine = HFEngine(model, tokenizer, max_batch=rows, seed=0, decode_dtype=None if dtype == "fp32" else "bfloat16")
    engine.eos_ids = set()                                      # every row decodes all new tokens
    return lambda: engine.generate(prompts, 4, Sampling(temperature=1.0, max_new_tokens=new_tokens))


def training_phase(model, rows: int, completion: int, precision: str):
    import torch

    from r1lab.algorithms.sequences import CompletionLogits, pad_batch, token_logprobs
    from r1lab.hardware import autocast

    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (100,), generator=generator).tolist() for _ in range(2)]
    prompts = [prompts[0]] * (rows // 2) + [prompts[1]] * (rows - rows // 2)
    lengths = torch.randint(int(0.4 * completion), completion + 1, (rows,), generator=generator).tolist()
    batch = pad_batch(prompts, [torch.randint(100, 40000, (n,), generator=generator).tolist() for n in lengths],
                      0, "cpu")

    policy = CompletionLogits(model)
    policy.lookups_into_gradient = True                         # as a one-process GRPO run trains (distributed.py)

    def run():
        with autocast("bf16" if precision == "bf16" else "no"):
            logprobs, _ = token_logprobs(policy, batch, 1.0, with_entropy=True)
        logprobs.sum().backward()
        model.zero_grad(set_to_none=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--completion", type=int, default=96)
    args = parser.parse_args()
    import torch

    from r1lab.allocator import keep_freed_memory
    from r1lab.hardware import cpu_name, matmul_gflops
    from r1lab.models import load_model

    keep_freed_memory()                                         # as every training stage runs
    model, tokenizer = load_model(args.model, "float32")
    model.train()                                               # a GRPO step's policy (rollouts repack its weights)
    fp32, bf16 = (max(matmul_gflops(dtype, size=1024, seconds=0.5) for _ in range(3))
                  for dtype in (torch.float32, torch.bfloat16))
    print(f"{cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.model}, {args.rows} rows")
    print(f"matmul 1024^2: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s -> bf16 {bf16 / fp32:.2f}x")
    phases = {
        f"decode ({args.new_tokens} tokens a row)": lambda precision: decode_phase(
            model, tokenizer, args.rows, args.new_tokens, precision),
        f"training pass (completions <= {args.completion})": lambda precision: training_phase(
            model, args.rows, args.completion, precision)}
    for phase, make in phases.items():
        (fp32_wall, fp32_kinds), (bf16_wall, bf16_kinds) = (profiled(make(p)) for p in ("fp32", "bf16"))
        print(f"\n{phase}: fp32 {fp32_wall:.0f} ms, bf16 {bf16_wall:.0f} ms -> bf16 {fp32_wall / bf16_wall:.2f}x "
              f"(unprofiled runs; the kinds below are from profiled ones)")
        print(f"{'kind':>18} {'fp32 ms':>9} {'share':>6} {'bf16 ms':>9} {'bf16 gain':>10}")
        for name in KINDS:
            a, b = fp32_kinds[name], bf16_kinds[name]
            print(f"{name:>18} {a:9.0f} {a / sum(fp32_kinds.values()):6.1%} {b:9.0f} "
                  f"{(a / b if b else float('inf')):9.2f}x")
        share = fp32_kinds["matmul"] / sum(fp32_kinds.values())
        print(f"only the matmuls {bf16 / fp32:.2f}x faster (Amdahl): {1 / (1 - share + share * fp32 / bf16):.2f}x")


if __name__ == "__main__":
    main()
