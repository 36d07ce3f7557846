"""Step speed with another process on the cores: torch's default threads against r1lab's choice.

    .venv/bin/python bench/contention.py [--competitor python|torch] [--reps 3]

The workload is a small GRPO step on SmolLM2-135M in fp32: sample 8 rows x 24 new tokens (r1lab's decode
path), then one forward + backward over 8 rows of 128 tokens. It runs in its own process per setting, quiet
and beside a competitor: `python`, a 1-thread busy loop (a browser tab, a test run); `torch`, a second
2-thread torch process doing matmuls (a second training run). Settings: torch's default thread count,
1 thread, the default count with OMP_WAIT_POLICY=PASSIVE, and r1lab's `auto` (r1lab/threads.py: the
governor reads the load and picks). Prints seconds (median of `reps` after a warm-up) and each setting's
loaded/quiet ratio against the quiet default, with the CPU. Run it with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {"default threads": {}, "1 thread": {"R1LAB_THREADS": "1"},
            "default + OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "auto (r1lab)": {"R1LAB_AUTO": "1"}}
COMPETITORS = {"python": "while True: pass",
               "torch": "import torch\nx = torch.randn(512, 512)\nwhile True: x = torch.tanh(x @ x)"}


def workload(reps: int) -> dict:
    import torch

    from r1lab.models import load_model
    from r1lab.rollout.base import Sampling
    from r1lab.rollout.engines import make_engine
    from r1lab.threads import ThreadGovernor

    governor = ThreadGovernor() if os.environ.get("R1LAB_AUTO") or os.environ.get("R1LAB_THREADS") else None
    model, tokenizer = load_model("smollm2-135m")
    engine = make_engine("hf", model, tokenizer, seed=0, decode_dtype="float32")
    prompt = [tokenizer("Calculate 12 + 7 + 30. Show your work.")["input_ids"]]
    batch = torch.randint(100, 40000, (8, 128))
    times = []
    for rep in range(reps + 1):
        if governor is not None:
            governor.adjust()
        began = time.perf_counter()
        engine.generate(prompt, 8, Sampling(temperature=1.0, max_new_tokens=24))
        model(batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)
        if rep:                                    # the first is the warm-up
            times.append(time.perf_counter() - began)
    return {"seconds": statistics.median(times), "threads": torch.get_num_threads()}


def run_setting(env: dict, reps: int, competitor: str | None) -> dict:
    rival = subprocess.Popen([sys.executable, "-c", COMPETITORS[competitor]]) if competitor else None
    try:
        if rival:
            time.sleep(1.0)                         # let it take its core
        out = subprocess.run([sys.executable, __file__, "--worker", str(reps)], env={**os.environ, **env},
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if rival:
            rival.kill()
            rival.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="python")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(workload(args.worker)))
        return
    import torch

    from r1lab.hardware import cpu_flags, cpu_name
    simd = " ".join(sorted(f for f in (cpu_flags() or ()) if f.startswith(("avx512_bf16", "amx"))))
    print(f"cpu: {cpu_name()} ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"
          f"{', ' + simd if simd else ''}), torch {torch.__version__}; competitor: {args.competitor}; load average "
          f"before: {os.getloadavg()[0]:.2f} (should be ~0: nothing else running)")
    quiet_default = None
    print(f"{'setting':36s} {'quiet s':>8s} {'loaded s':>9s} {'threads q/l':>11s} {'loaded/quiet default':>21s}")
    for name, env in SETTINGS.items():
        quiet = run_setting(env, args.reps, None)
        loaded = run_setting(env, args.reps, args.competitor)
        quiet_default = quiet_default or quiet["seconds"]
        print(f"{name:36s} {quiet['seconds']:8.2f} {loaded['seconds']:9.2f} {quiet['threads']:>5d}/{loaded['threads']:<5d} "
              f"{loaded['seconds'] / quiet_default:20.2f}x", flush=True)


if __name__ == "__main__":
    main()
