"""`r1lab doctor`: this machine as r1lab sees it: the hardware, the precision `auto` picks and why, measured
speeds, and what the code sandbox enforces here."""
from __future__ import annotations

import torch

from r1lab.hardware import (cpu_flags, cpu_name, device, matmul_gflops, memory_gbps, resolve_precision)
from r1lab.sandbox import Sandbox
from r1lab.threads import ThreadGovernor


def doctor_report() -> str:
    """What `r1lab doctor` prints: the hardware, what `auto` picks, the sandbox mode, measured speeds."""
    dev = device()
    flags = cpu_flags() or set()
    simd = sorted(f for f in flags if f.startswith(("avx", "amx")))
    lines = [f"cpu: {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}",
             ThreadGovernor().describe(),
             f"cpu flags: {' '.join(simd) or 'unknown'}",
             f"device: {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
             f"torch {torch.__version__}",
             resolve_precision("auto", dev).describe()]
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16, seconds=0.1)
    lines += [f"cpu matmul 512x512: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.2f}x)",
              f"cpu memory read: {memory_gbps():.1f} GB/s",
              Sandbox().describe()]
    return "\n".join(lines)
