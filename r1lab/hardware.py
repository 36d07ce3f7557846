"""What this machine runs fast, and the precision `auto` picks from it: for quality first, then speed.

    r1lab doctor                      # hardware, the precision auto picks and why, measured speeds
    resolve_precision("auto", dev)    # -> Precision(mixed_precision="no", rollout_dtype=..., reason)

The rule `auto` follows, and why:
- **Training passes in fp32** (`mixed_precision` auto -> "no"), on every device. Measured here: a cold
  start (SFT, 8 steps at lr 3e-5) under bf16 autocast reached 34.4 pass@1 where the same run in fp32
  reached 59.5 (3 seeds, the same 100 held-out problems and sampling seeds; docs/rl_gain.md): its updates
  move a weight by ~0.1% of its value, under bf16's resolution, so autocast trains on a partly applied
  fine-tune. GRPO and compete under bf16 autocast were never measured against fp32, so they are not
  assumed harmless. `mixed_precision: bf16` is still there, explicitly, for speed.
- **Rollouts in bf16 where the device runs it natively** (`rollout_dtype` auto -> "bfloat16", else
  "float32"): sampling is most of a CPU step and bf16 decodes ~1.5x faster on such a CPU; the sampler's
  distance from the fp32 trainer was measured small (0.007-0.009 nats a token; importance weights 1.00,
  none capped, in the rl-gain runs) and truncated importance sampling corrects it (on by `auto` exactly
  when the sampler differs). Native means: CUDA `torch.cuda.is_bf16_supported()`; CPU the `avx512_bf16`
  or `amx_bf16` flag in /proc/cpuinfo, or where no flags can be read a short measured bf16-vs-fp32 matmul
  probe (bf16 must be at least as fast). On an AVX2-only CPU bf16 is ~130x SLOWER: never picked there.
Asking for bf16 explicitly on a device without it works, but warns once with the measured slowdown.
Each stage prints the choice and writes it, with this reason, to its precision.json.
"""
from __future__ import annotations

import functools
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(dtype: torch.dtype, size: int = 512, seconds: float = 0.2) -> float:
    """Measured GFLOP/s of a (size x size) @ (size x size) matmul on the CPU in `dtype`."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b                                                      # warm-up (oneDNN picks its kernel)
    runs, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        a @ b
        runs += 1
    return 2 * size ** 3 * runs / elapsed / 1e9


def memory_gbps(megabytes: int = 256) -> float:
    """Measured memory read bandwidth (GB/s): summing a buffer larger than the caches."""
    x = torch.ones(megabytes * 2 ** 20 // 4)
    x.sum()
    began = time.perf_counter()
    for _ in range(3):
        x.sum()
    return 3 * x.numel() * 4 / (time.perf_counter() - began) / 1e9


@functools.cache
def bf16_slowdown() -> float:
    """fp32 / bf16 matmul throughput on this CPU (> 1: bf16 is slower), measured once per process."""
    return matmul_gflops(torch.float32) / matmul_gflops(torch.bfloat16, seconds=0.1)


def native_bf16(device: torch.device | str = "cpu", flags: set[str] | None | bool = False) -> tuple[bool, str]:
    """Whether `device` runs bf16 natively, and why. `flags` overrides /proc/cpuinfo (tests)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA {torch.cuda.get_device_name(device)}: bf16 {'supported' if ok else 'not supported'}"
    if device.type != "cpu":
        return False, f"{device.type}: bf16 not assumed"
    flags = cpu_flags() if flags is False else flags
    if flags is not None:
        found = [f for f in NATIVE_BF16_FLAGS if f in flags]
        if found:
            return True, f"CPU has {', '.join(found)}"
        return False, f"CPU has no {' / '.join(NATIVE_BF16_FLAGS)} (capability {torch.backends.cpu.get_cpu_capability()})"
    slowdown = bf16_slowdown()
    return slowdown <= 1.0, f"no CPU flags readable; measured bf16 matmul {1 / slowdown:.2f}x fp32"


@dataclass(frozen=True)
class Precision:
    mixed_precision: str      # "bf16" or "no": autocast of training passes
    rollout_dtype: str | None  # "bfloat16" or "float32": the sampler's copy of the policy; None: no rollouts
    reason: str               # why; printed at the start of a stage and written to its precision.json

    def describe(self) -> str:
        rollouts = f", rollouts {self.rollout_dtype}" if self.rollout_dtype else ""
        return f"precision: training {self.mixed_precision}{rollouts} ({self.reason})"


def resolve_precision(mixed_precision: str, device: torch.device | str = "cpu", rollout_dtype: str | None = "auto",
                      flags: set[str] | None | bool = False) -> Precision:
    """Turn the configs' `auto` into a concrete choice for `device`; explicit choices are kept (with a
    one-time warning when bf16 is asked for on a device without native bf16)."""
    native, why = native_bf16(device, flags)
    auto_mixed, auto_rollout = "no", ("bfloat16" if native else "float32")     # the rule: module docstring
    mixed = auto_mixed if mixed_precision == "auto" else mixed_precision
    rollout = auto_rollout if rollout_dtype == "auto" else rollout_dtype
    explicit = [name for name, value, asked in (("mixed_precision", mixed, mixed_precision),
                                                ("rollout_dtype", rollout, rollout_dtype))
                if asked != "auto" and value in ("bf16", "bfloat16")]
    if explicit and not native:
        _warn_slow_bf16(", ".join(explicit), why, torch.device(device).type)
    source = "auto" if "auto" in (mixed_precision, rollout_dtype) else "as configured"
    training = ("training fp32 (bf16 autocast measured to weaken short fine-tunes)" if mixed_precision == "auto"
                else "training as configured")
    rollouts = "" if rollout_dtype is None else "; rollouts " + (("bf16" if native else "fp32") if rollout_dtype == "auto"
                                                                 else "as configured")
    rule = f"{training}{rollouts}: " if source == "auto" else ""
    return Precision(mixed, rollout, f"{source}: {rule}{why}")


@functools.cache
def _warn_slow_bf16(fields: str, why: str, device_type: str) -> None:
    measured = f"; bf16 matmul measured {bf16_slowdown():.0f}x slower than fp32 here" if device_type == "cpu" else ""
    warnings.warn(f"{fields} asks for bf16 but {why}{measured}. Use 'auto' (or float32/no) unless you mean it.",
                  stacklevel=3)


def device() -> torch.device:
    """This process's device, the one place that decides where models run: its GPU under `accelerate launch`
    (cuda:LOCAL_RANK), else cuda, else cpu (accelerate's choice)."""
    from accelerate import PartialState
    return PartialState(cpu=not torch.cuda.is_available()).device


def autocast(mixed_precision: str):
    """bf16 autocast for training passes when asked; the loss math stays fp32 (logits are upcast)."""
    return torch.autocast(device().type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")
