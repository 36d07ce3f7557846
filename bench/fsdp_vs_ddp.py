"""Sharded (FSDP2) against data-parallel (DDP) SFT on N processes: state held, peak memory, time, loss.

    .venv/bin/python bench/fsdp_vs_ddp.py [--processes 2] [--model smollm2-135m]

Each mode runs `r1lab train sft` (fp32, 32 cold-start examples, batches of 8, micro-batches of 4, one
thread per process) in N processes started by torch.distributed.run; each process reports its peak
RSS. Printed per mode: parameters + optimiser state per process (`state_gb`), peak RSS per process,
median seconds a step after the first, and the last loss (the same in both modes up to float order).
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
from pathlib import Path


def worker(argv: list[str]) -> None:
    """One process of a run: the r1lab command, then its peak RSS."""
    from r1lab.cli import main
    main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print("PEAK " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "peak_gb": peak}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    from r1lab.cold_start import write_cold_start
    from r1lab.hardware import cpu_name
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "cold.jsonl"
        write_cold_start("arithmetic", 32, str(data), "r1_zero", 0)
        print(f"{cpu_name()}; {args.model}, SFT fp32, {args.processes} processes x 1 thread")
        print(f"{'':6}{'state GB/process':>18}{'peak RSS GB/process':>22}{'s/step':>9}{'last loss':>12}")
        for fsdp in ("false", "true"):
            out = Path(folder) / f"fsdp_{fsdp}"
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes), __file__,
                       "--worker", "train", "sft", "--model", args.model, "--data", str(data), "--batch-size", "8",
                       "--micro-batch-size", "4", "--mixed-precision", "no", "--fsdp", fsdp, "--out", str(out)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            peaks = [json.loads(line[5:])["peak_gb"] for line in done.stdout.splitlines() if line.startswith("PEAK ")]
            if done.returncode or not peaks:
                sys.exit(f"fsdp {fsdp} failed:\n{done.stderr[-3000:]}")
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            print(f"{'FSDP2' if fsdp == 'true' else 'DDP':6}{rows[-1]['state_gb']:18.2f}"
                  f"{'-'.join(f'{p:.2f}' for p in sorted(peaks)):>22}"
                  f"{statistics.median(r['step_seconds'] for r in rows[1:]):9.2f}{rows[-1]['loss']:12.5f}")


if __name__ == "__main__":
    main()
