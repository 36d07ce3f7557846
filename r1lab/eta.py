"""How long the rest of a recipe will take, shown on every stage's progress line.

The estimate adds the running stage's own remaining time (its bar's rate so far) to each later stage's duration the
last time a stage of that name and kind ran to the end, from scratch, with the same settings (the seed and the run's
own folder aside) under the same runs folder: `timing.json` in its output folder. So the seeds of an experiment after
the first, and a recipe run again, see a whole-recipe estimate; a later stage that never ran is counted as untimed,
not guessed. Measured times belong to this machine and its load at the time: a busier machine takes longer.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

_later: list[float | None] | None = None     # the later stages' estimates while a recipe runs, else None


def clock(seconds: float) -> str:
    """Elapsed time as a person reads it: 45s, 12m05s, 1h02m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fingerprint(settings: dict, run: Path, seed_key: str = "seed") -> dict:
    """A stage's settings as compared across runs: without the seed, and with this run's folder in paths written
    as <run> (a stage of another seed reads its own run's checkpoints)."""
    prefix = str(run)

    def general(value):
        if isinstance(value, (list, tuple)):
            return [general(v) for v in value]
        return value.replace(prefix, "<run>", 1) if isinstance(value, str) and value.startswith(prefix) else value
    return {k: general(v) for k, v in settings.items() if k != seed_key}


def record(out: Path, kind: str, fingerprint: dict, seconds: float, resumed: bool) -> None:
    """Write a finished stage's duration to out/timing.json (a resumed one is kept but never used as an estimate)."""
    from r1lab.data import write_atomic
    write_atomic(out / "timing.json", json.dumps({"kind": kind, "seconds": round(seconds, 1), "resumed": resumed,
                                                  "finished": time.time(), "settings": fingerprint}, default=str))


def previous(runs: Path, name: str, kind: str, fingerprint: dict) -> float | None:
    """The seconds the latest whole run of stage `name` (kind, settings) took under `runs`, or None if none did."""
    best, wanted = None, json.loads(json.dumps(fingerprint, default=str))     # as timing.json holds it
    for path in runs.glob(f"*/{name}/timing.json"):
        try:
            seen = json.loads(path.read_text())
        except (OSError, ValueError):
            continue                         # a damaged record is only a missing estimate
        if (seen.get("kind") == kind and not seen.get("resumed") and seen.get("settings") == wanted
                and (best is None or seen["finished"] > best["finished"])):
            best = seen
    return None if best is None else float(best["seconds"])


def set_later(estimates: list[float | None] | None) -> None:
    """The later stages' durations (None: untimed) while a recipe runs; None when no recipe runs."""
    global _later
    _later = estimates


def recipe_left(stage_left: float | None) -> str:
    """'recipe ~12m05s left' (+ ' + N untimed stages'), or '' outside a recipe or before the running stage has a rate."""
    if _later is None or stage_left is None:
        return ""
    untimed = sum(e is None for e in _later)
    text = f"recipe ~{clock(stage_left + sum(e for e in _later if e is not None))} left"
    return text + (f" + {untimed} untimed stage{'s' * (untimed > 1)}" if untimed else "")


class Progress(tqdm):
    """tqdm, with the recipe's remaining time after the postfix while a recipe runs."""

    @property
    def format_dict(self):
        d = super().format_dict
        done, elapsed = d["n"] - d.get("initial", 0), d["elapsed"]
        rate = d["rate"] or (done / elapsed if done > 0 and elapsed > 0 else None)
        stage_left = (d["total"] - d["n"]) / rate if rate and d["total"] else None
        extra = recipe_left(stage_left)
        if extra:
            d["postfix"] = f"{d['postfix']}, {extra}" if d["postfix"] else extra
        return d
