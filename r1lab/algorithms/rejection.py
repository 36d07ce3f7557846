"""Rejection sampling (paper section 2.3.3): sample k per prompt, keep what is correct and readable.

    r1lab train rejection --model runs/x/grpo/checkpoint --task arithmetic --samples-per-prompt 4

A completion is kept when its answer is correct, it has reasoning, and it passes each readability
filter, each a named function with its threshold in the config (`ReadabilityFilters`): no language
mixing in the reasoning (the `language` reward's share, so the two agree: reasoning with no words,
such as `5 + 17 = 22`, mixes nothing), no overly long paragraph, no code block. Duplicates (same
text) are dropped, and at most `max_per_prompt` completions are kept per problem. Writes
`data.jsonl` (prompt, answer, completion: ready for the SFT stage) and `summary.json`, which counts
why each dropped sample was dropped (the first failing check, in the order below).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from r1lab.config import ReadabilityFilters, RejectionConfig, readability
from r1lab.rewards.accuracy import accuracy
from r1lab.rewards.language import language_share
from r1lab.types import Completion, Problem

_CODE_BLOCK = re.compile(r"```|^(?: {4}|\t)\S", re.M)


def no_language_mixing(c: Completion, f: ReadabilityFilters) -> bool:
    return language_share(c.reasoning, f.language) >= f.min_language_share   # the language reward's own share


def no_long_paragraphs(c: Completion, f: ReadabilityFilters) -> bool:
    return all(len(p) <= f.max_paragraph_chars for p in re.split(r"\n\s*\n", c.text))


def no_code_blocks(c: Completion, f: ReadabilityFilters) -> bool:
    return f.allow_code_blocks or not _CODE_BLOCK.search(c.text)


CHECKS = {  # name -> keep?; the first failing one is the recorded reason
    "no_answer": lambda c, p, f: c.answer is not None,
    "incorrect": lambda c, p, f: accuracy(c, p) >= 1.0,
    "no_reasoning": lambda c, p, f: bool((c.reasoning or "").strip()),
    "language_mixing": lambda c, p, f: no_language_mixing(c, f),
    "long_paragraph": lambda c, p, f: no_long_paragraphs(c, f),
    "code_block": lambda c, p, f: no_code_blocks(c, f),
}


def rejection_reason(c: Completion, p: Problem, f: ReadabilityFilters) -> str | None:
    """None if the completion is kept, else the name of the first check it fails."""
    return next((name for name, keep in CHECKS.items() if not keep(c, p, f)), None)


def select(groups: list[list[Completion]], problems: list[Problem], f: ReadabilityFilters,
           max_per_prompt: int) -> tuple[list[dict], Counter]:
    """Kept rows (prompt, answer, completion) and the count of each drop reason."""
    rows, reasons = [], Counter()
    for problem, group in zip(problems, groups, strict=True):
        seen = set()
        for c in group:
            reason = rejection_reason(c, problem, f)
            key = " ".join(c.text.split())
            if reason is None and key in seen:
                reason = "duplicate"
            elif reason is None and len(seen) >= max_per_prompt:
                reason = "over_max_per_prompt"
            if reason:
                reasons[reason] += 1
                continue
            seen.add(key)
            rows.append({"prompt": problem.prompt, "answer": problem.answer, "completion": c.text.strip()})
    return rows, reasons


def write_data(out: Path, rows: list[dict], summary: dict) -> Path:
    """data.jsonl and summary.json, each written to a temporary file and renamed (never half-written)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("data.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
                       ("summary.json", json.dumps(summary, indent=2))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        temporary.replace(out / name)
    return out / "data.jsonl"


def run_rejection(cfg: RejectionConfig) -> Path:
    from r1lab.rollout import Sampling, rollout_all
    from r1lab.rollout.hf import HFEngine
    from r1lab.tasks import get_task
    from r1lab.templates import get_template
    from r1lab.training import load_on_device

    filters = readability(cfg.filters)
    problems = get_task(cfg.task, **cfg.task_options).problems("train", cfg.problems, cfg.seed)
    model, tokenizer = load_on_device(cfg.model)
    engine = HFEngine(model, tokenizer, seed=cfg.seed)
    template = get_template(cfg.template)
    groups = rollout_all(engine, problems, template, tokenizer, cfg.samples_per_prompt,
                         Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens), desc="rejection sampling")
    rows, reasons = select(groups, problems, filters, cfg.max_per_prompt)
    summary = {"sampled": len(problems) * cfg.samples_per_prompt, "kept": len(rows), "dropped": dict(reasons)}
    print(f"rejection sampling: kept {len(rows)} of {summary['sampled']}; dropped: {dict(reasons)}")
    return write_data(Path(cfg.out), rows, summary)
