"""Engines by name: `make_engine("hf" | "vllm", ...)`. The trainer names an engine and never imports one;
vLLM is imported only when asked for.
"""
from __future__ import annotations

from r1lab import R1labError
from r1lab.rollout.base import Engine

ENGINES = ("hf", "vllm")


def make_engine(name: str, model, tokenizer, seed: int = 0, max_batch: int = 64, decode_dtype: str | None = None,
                gpu_memory_utilization: float = 0.3, own_copy: bool = False) -> Engine:
    """The named engine sampling from `model` (whose weights it follows as training updates them;
    `own_copy`: the hf engine's for a model about to be sharded, see HFEngine)."""
    if name == "hf":
        from r1lab.rollout.hf import HFEngine
        return HFEngine(model, tokenizer, max_batch=max_batch, seed=seed, decode_dtype=decode_dtype, own_copy=own_copy)
    if name == "vllm":
        from r1lab.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model, tokenizer, gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    raise R1labError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
