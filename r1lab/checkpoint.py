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

Kept folders (transformers' names): with `save_total_limit` (`keep`) each save also puts the same files in
`checkpoint-<step>/` (hard links, so no second copy on disk; a copy where the file system has none), and only
the newest `keep` of those stay; `checkpoint/` is always the latest and the only one resume reads. 0 (the
default; transformers' default keeps all) writes and removes no numbered folder: a numbered folder outlives
the next save and holds the optimiser state too (three times the weights in fp32), so keeping them is opt-in,
and a run resumed with 0 leaves those an earlier setting kept alone. `keep_best` keeps the checkpoint with the
best validation accuracy as `best/` (GRPO with validation_problems > 0). Each folder is renamed into place whole.

Each checkpoint has a model card, README.md (`model_card`), written with it: base model, stage, task or data,
rewards, steps, the last figures and the validation accuracy known, the r1lab version and the date. Sections
of it that are learnt later (the validation at the checkpoint's own step, an `r1lab eval` of it) are
replaced in place by `set_card_section`, each file through a rename (a hard-linked copy keeps its own).
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
import re
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from r1lab import R1labError, __version__
from r1lab.data import write_atomic

STATE = "trainer_state.pt"
CARD = "README.md"                   # the model card, as the Hugging Face Hub reads it
OLDER_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}   # transformers 5 name -> one 4.x knows


def save_checkpoint(out: Path, model, tokenizer, state: dict, weights: dict | None = None, keep: int = 0,
                    card: str | None = None) -> Path:
    """Write `<out>/checkpoint` atomically, `card` as its README.md; `weights`: the full state dict to save instead
    of the model's own (a sharded model's, gathered). With `keep` > 0 the same files go to `checkpoint-<step>/`
    too, and only the newest `keep` numbered folders stay."""
    out = Path(out)
    temporary = out / ".checkpoint.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write_folder(temporary, model, tokenizer, state, weights, card)
    except Exception as e:
        full = disk_full(e, out)
        shutil.rmtree(temporary, ignore_errors=True)
        if not full:
            raise
        kept = find_checkpoint(out)
        raise R1labError(f"{out}: the disk is full; the checkpoint of step {state.get('step')} was not written "
                         + (f"and {kept} is intact: free some space and continue with --resume (recipes resume on "
                            "their own)" if kept else "and there is no earlier one: free some space and start again")
                         ) from None
    if keep:
        numbered = out / f"checkpoint-{state['step']}"
        install(linked_copy(temporary, out / f".{numbered.name}.tmp"), numbered)
    final = install(temporary, out / "checkpoint")
    if keep:
        for folder in numbered_checkpoints(out)[:-keep]:
            shutil.rmtree(folder)
    return final


FULL_BELOW = 256 * 2**20              # bytes free under which a failed write is taken for a full disk


def disk_full(error: Exception, folder: Path) -> bool:
    """Whether a failed write was the disk filling up. Each writer says it its own way: the OS error (ENOSPC),
    safetensors its own error type with the OS text, torch.save's zip writer only "unexpected pos" (a short
    write, seen on 2026-12-04); so the free space left, looked at before the partial files are removed, decides
    too."""
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


def write_folder(folder: Path, model, tokenizer, state: dict, weights: dict | None, card: str | None) -> None:
    """A checkpoint's files in `folder`: weights (merged, with the adapter beside them, for LoRA), tokenizer,
    card, the trainer state."""
    if hasattr(model, "peft_config") and weights is not None:            # sharded LoRA: from the gathered weights
        model.save_pretrained(folder / "adapter", state_dict=weights)
        model.get_base_model().save_pretrained(folder, state_dict=merged_lora(model, weights))
    elif hasattr(model, "peft_config"):
        model.save_pretrained(folder / "adapter")
        copy.deepcopy(model).merge_and_unload().save_pretrained(folder)
    else:
        model.save_pretrained(folder, state_dict=weights)
    tokenizer.save_pretrained(folder)
    if card is not None:
        (folder / CARD).write_text(card, encoding="utf-8")
    for_older_readers(folder)
    torch.save(state, folder / STATE)


def install(folder: Path, final: Path) -> Path:
    """Rename the complete `folder` to `final`; the one there before is first renamed to `.<name>.old`, then
    removed: a kill at any moment leaves one of them whole (`find_checkpoint` looks at `.checkpoint.old` too)."""
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(folder, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def linked_copy(source: Path, target: Path) -> Path:
    """`source`'s tree at `target`, each file a hard link (no disk used; checkpoint files are never written
    again in place), or a copy where the file system cannot link."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=link)
    return target


def numbered_checkpoints(out: Path) -> list[Path]:
    """`<out>/checkpoint-<step>/` folders, oldest step first."""
    found = [(int(p.name.split("-")[1]), p) for p in Path(out).glob("checkpoint-*")
             if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return [p for _, p in sorted(found)]


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


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step a checkpoint was saved after (None without one); memory-mapped: its tensors are not read."""
    path = Path(checkpoint) / STATE
    return torch.load(path, weights_only=False, map_location="cpu", mmap=True)["step"] if path.is_file() else None


def keep_best(out: Path, step: int, accuracy: float) -> bool:
    """After a validation at `step` (updates done), on the main process: when `<out>/checkpoint` was saved at
    that step, its model card (and checkpoint-<step>/'s) gets the accuracy, and if it beats the one `best/` was
    kept for (strictly, as transformers' best model: the earlier wins a tie) the checkpoint is kept as
    `<out>/best/` (hard links; `best/best.json` says step and accuracy); True when it was. A validation at a
    step that saved no checkpoint (step 0, or validate_every not dividing save_every) changes nothing."""
    out, text = Path(out), f"Validation accuracy (greedy) at step {step}: **{accuracy:.4f}**"
    if checkpoint_step(out / "checkpoint") != step:
        return False
    for folder in (out / "checkpoint", out / f"checkpoint-{step}"):
        set_card_section(folder, "validation", f"## Validation\n\n{text}")
    record = out / "best" / "best.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8"))["val_accuracy"] >= accuracy:
        return False
    temporary = linked_copy(out / "checkpoint", out / ".best.tmp")
    (temporary / "best.json").write_text(json.dumps({"step": step, "val_accuracy": accuracy}) + "\n", encoding="utf-8")
    set_card_section(temporary, "validation", f"## Validation\n\n{text}; the best of this run's validations, kept as best/")
    install(temporary, out / "best")
    return True


def model_card(out: Path, step: int, total: int | None = None) -> str | None:
    """The model card of the checkpoint `<out>` saves after `step` of `total`, from the settings it was trained
    with (`<out>/config.yaml`; None without it) and the last rows of its metrics.jsonl and validation.jsonl."""
    from r1lab.config import CompeteConfig, GRPOConfig, SFTConfig
    out = Path(out)
    if not (out / "config.yaml").is_file():
        return None
    settings = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}
    kinds = {"grpo": GRPOConfig, "sft": SFTConfig, "compete": CompeteConfig}     # the class whose fields these are
    kind = min(kinds, key=lambda k: len(set(settings) ^ {f.name for f in dataclasses.fields(kinds[k])}))
    model = str(settings.get("model", ""))
    hub = re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not Path(model).exists()
    facts = [("base model", f"`{model}`"), ("stage", kind),
             ("data", f"`{settings['data']}`") if "data" in settings else
             ("task", f"`{settings.get('task')}` {settings.get('task_options') or ''}".rstrip()),
             ("template", settings.get("template")), ("rewards", settings.get("rewards")), ("epochs", settings.get("epochs")),
             ("steps", f"{step} of {total}" if total else step), ("r1lab", __version__),
             ("date", datetime.now(timezone.utc).date().isoformat())]
    last = last_row(out / "metrics.jsonl")
    figures = [f"{key} {last[key]:.4g}" for key in ("loss", "reward", "accuracy", "completion_length")
               if isinstance(last.get(key), (int, float))]
    validation = last_row(out / "validation.jsonl")
    lines = ["---", *([f"base_model: {model}"] if hub else []), "library_name: transformers",
             "pipeline_tag: text-generation", f"tags: [r1lab, {kind}, reasoning]", "---", "",
             f"# {'/'.join(out.resolve().parts[-2:])}: {kind} checkpoint after step {step}", "", "Trained with r1lab "
             "(DeepSeek-R1-style reasoning training).", "", "| | |", "|---|---|",
             *[f"| {name} | {value} |" for name, value in facts if value not in (None, "")], ""]
    if figures:
        lines += [f"Last training step ({last.get('step')}): {', '.join(figures)}.", ""]
    if "val_accuracy" in validation:
        lines += section("validation", f"## Validation\n\nValidation accuracy (greedy) at step {validation['step']}: "
                                       f"**{validation['val_accuracy']:.4f}**").splitlines() + [""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              'model = AutoModelForCausalLM.from_pretrained("PATH")', 'tokenizer = AutoTokenizer.from_pretrained("PATH")',
              "```", "", f"Held-out figures: `r1lab eval PATH --task {settings.get('task', 'TASK')}`.", ""]
    return "\n".join(lines)


def section(name: str, text: str) -> str:
    return f"<!-- r1lab:{name} -->\n{text}\n<!-- /r1lab:{name} -->"


def set_card_section(folder: Path, name: str, text: str) -> bool:
    """Put `text` in the model card of `folder` as its section `name`, replacing the one there, else before
    `## Use`; written through a rename. False (nothing written) without an r1lab card there."""
    path = Path(folder) / CARD
    if not path.is_file() or "Trained with r1lab" not in (card := path.read_text(encoding="utf-8")):
        return False
    block = section(name, text)
    pattern = re.compile(re.escape(f"<!-- r1lab:{name} -->") + ".*?" + re.escape(f"<!-- /r1lab:{name} -->"), re.S)
    if pattern.search(card):
        card = pattern.sub(lambda _: block, card)
    else:
        card = card.replace("## Use\n", f"{block}\n\n## Use\n", 1) if "## Use\n" in card else f"{card}\n{block}\n"
    write_atomic(path, card)
    return True


def last_row(path: Path) -> dict:
    """The last whole row of a jsonl file r1lab appends to ({} when there is none): its tail only is read."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
        lines = f.read().split(b"\n")
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            return row
    return {}
