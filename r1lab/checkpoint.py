"""Atomic, resumable checkpoints in Hugging Face format.

`<out>/checkpoint/` holds a model that plain transformers loads (`from_pretrained`), its tokenizer,
and `trainer_state.pt` (optimiser, scheduler, RNG states, step). With LoRA the saved model is the
merged one and the adapter sits in `checkpoint/adapter/` for resuming. A sharded (FSDP2) model is saved
from its gathered full state dict (r1lab/training.py `save_step`), a LoRA one merged by `merged_lora`.

Writing goes to `.checkpoint.tmp`, then the old checkpoint is renamed away and the new one renamed
into place: a SIGKILL at any moment leaves either the previous or the new checkpoint complete
(`find_checkpoint` also looks at `.checkpoint.old`, the only one left if the kill fell between renames).

Older readers: transformers 5 writes `rope_parameters` and the tokenizer class `TokenizersBackend`;
transformers 4.x reads neither (its tokenizer fails to load, and its model loads without an error but
with the default rope_theta 10000, so a model trained at 100000 answers wrongly). `for_older_readers`
writes what 4.x needs beside them: `rope_theta` (and `rope_scaling` for non-default rope types) and the
tokenizer class `PreTrainedTokenizerFast`, which transformers 5 reads as before. Tried by hand with
transformers 4.57 in a separate environment: the tokenizer loads, the logits equal transformers 5's.
Weights are written by transformers with mode 0600; they get the mode the user's umask gives config.json.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path

import torch

STATE = "trainer_state.pt"
OLDER_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}   # transformers 5 name -> one 4.x knows


def save_checkpoint(out: Path, model, tokenizer, state: dict, weights: dict | None = None) -> Path:
    """Write `<out>/checkpoint` atomically; `weights`: the full state dict to save instead of the model's own
    (a sharded model's, gathered)."""
    out = Path(out)
    temporary, final, old = out / ".checkpoint.tmp", out / "checkpoint", out / ".checkpoint.old"
    shutil.rmtree(temporary, ignore_errors=True)
    if hasattr(model, "peft_config") and weights is not None:            # sharded LoRA: from the gathered weights
        model.save_pretrained(temporary / "adapter", state_dict=weights)
        model.get_base_model().save_pretrained(temporary, state_dict=merged_lora(model, weights))
    elif hasattr(model, "peft_config"):
        model.save_pretrained(temporary / "adapter")
        copy.deepcopy(model).merge_and_unload().save_pretrained(temporary)
    else:
        model.save_pretrained(temporary, state_dict=weights)
    tokenizer.save_pretrained(temporary)
    for_older_readers(temporary)
    torch.save(state, temporary / STATE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(temporary, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def merged_lora(model, weights: dict) -> dict:
    """A LoRA model's full state dict (`weights`, peft's names) merged into its base model's: each adapted
    weight W + scaling x B @ A, names as the base model's (what peft's merge_and_unload gives, without the
    whole model in one place)."""
    scaling = {name: module.scaling["default"] for name, module in model.named_modules()
               if isinstance(getattr(module, "scaling", None), dict)}
    merged = {}
    for name, value in weights.items():
        if ".lora_" in name:
            continue
        stem = name.removesuffix(".base_layer.weight")
        if stem != name and stem in scaling:
            a, b = weights[f"{stem}.lora_A.default.weight"], weights[f"{stem}.lora_B.default.weight"]
            value = (value.float() + scaling[stem] * (b.float() @ a.float())).to(value.dtype)
        merged[name.removeprefix("base_model.model.").replace(".base_layer.", ".")] = value
    return merged


def for_older_readers(folder: Path) -> None:
    """Add to a `save_pretrained` folder what transformers 4.x needs to read it right, and give its files
    the mode of config.json (the user's umask); see the module docstring."""
    folder = Path(folder)
    config_file, tokenizer_file = folder / "config.json", folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tokenizer_file.is_file():
        tokenizer = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        if tokenizer.get("tokenizer_class") in OLDER_TOKENIZER_CLASSES:
            tokenizer["tokenizer_class"] = OLDER_TOKENIZER_CLASSES[tokenizer["tokenizer_class"]]
            tokenizer_file.write_text(json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    mode = stat.S_IMODE(config_file.stat().st_mode)
    for path in folder.rglob("*"):                       # the LoRA adapter's files too
        if path.is_file():
            path.chmod(mode)


def find_checkpoint(out: Path) -> Path | None:
    for name in ("checkpoint", ".checkpoint.old"):
        if (Path(out) / name / STATE).is_file():
            return Path(out) / name
    return None


def load_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / STATE, weights_only=False, map_location="cpu")   # every rank, no GPU 0
