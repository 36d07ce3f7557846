"""Atomic, resumable checkpoints in Hugging Face format.

`<out>/checkpoint/` holds a model that plain transformers loads (`from_pretrained`), its tokenizer,
and `trainer_state.pt` (optimiser, scheduler, RNG states, step). With LoRA the saved model is the
merged one and the adapter sits in `checkpoint/adapter/` for resuming.

Writing goes to `.checkpoint.tmp`, then the old checkpoint is renamed away and the new one renamed
into place: a SIGKILL at any moment leaves either the previous or the new checkpoint complete
(`find_checkpoint` also looks at `.checkpoint.old`, the only one left if the kill fell between renames).
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch

STATE = "trainer_state.pt"


def save_checkpoint(out: Path, model, tokenizer, state: dict) -> Path:
    out = Path(out)
    temporary, final, old = out / ".checkpoint.tmp", out / "checkpoint", out / ".checkpoint.old"
    shutil.rmtree(temporary, ignore_errors=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(temporary / "adapter")
        copy.deepcopy(model).merge_and_unload().save_pretrained(temporary)
    else:
        model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    torch.save(state, temporary / STATE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(temporary, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: Path) -> Path | None:
    for name in ("checkpoint", ".checkpoint.old"):
        if (Path(out) / name / STATE).is_file():
            return Path(out) / name
    return None


def load_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / STATE, weights_only=False, map_location="cpu")   # every rank, no GPU 0
