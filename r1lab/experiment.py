"""The talk's "Is RL really needed?" as an experiment: one recipe, several seeds, one table.

    r1lab experiment is-rl-needed [--seeds 3] [--recipe recipes/is_rl_needed.yaml] [key=value ...]

Runs the recipe once per seed (`runs/<name>_seed<s>/`, each resumable), then pools the held-out
results of its eval stage: per method, pass@1 and cons@k over all (seed, problem) pairs with a
bootstrap 95% CI, and pass@1 of each seed, in the talk's layout (methods as rows). Writes
`runs/<name>/experiment.json` and `experiment.md`.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from r1lab import R1labError
from r1lab.evaluate import model_label, read_samples, slug
from r1lab.metrics import bootstrap_ci, cons_at_k
from r1lab.pipeline import load_recipe, run_recipe
from r1lab.rewards.accuracy import equivalent


def label(model: str) -> str:
    """A method's name: the stage that wrote the checkpoint, or 'base'."""
    return model_label(model) if Path(model).name == "checkpoint" else "base"


def pooled(per_seed_rows: list[list[dict]]) -> dict:
    """Pass@1 / cons@k over all (seed, problem) pairs, with CIs, and pass@1 per seed."""
    pass1 = [sum(r["correct"]) / len(r["correct"]) for rows in per_seed_rows for r in rows]
    cons = [cons_at_k(r["answers"], r["correct"], equivalent) for rows in per_seed_rows for r in rows]
    return {"pass@1": sum(pass1) / len(pass1), "pass@1_ci": bootstrap_ci(pass1), "cons": sum(cons) / len(cons),
            "cons_ci": bootstrap_ci(cons),
            "per_seed": [sum(sum(r["correct"]) / len(r["correct"]) for r in rows) / len(rows) for rows in per_seed_rows]}


def format_experiment(table: dict[str, dict], samples: int, seeds: int) -> str:
    head = f"{'method':22} {'pass@1 [95% CI]':>22} {f'cons@{samples} [95% CI]':>22}   pass@1 per seed"
    lines = [head, "-" * (len(head) + 12)]
    for method, s in table.items():
        lines.append(f"{method:22} {100 * s['pass@1']:6.1f} [{100 * s['pass@1_ci'][0]:5.1f}, {100 * s['pass@1_ci'][1]:5.1f}]  "
                     f"{100 * s['cons']:6.1f} [{100 * s['cons_ci'][0]:5.1f}, {100 * s['cons_ci'][1]:5.1f}]   "
                     + " ".join(f"{100 * v:5.1f}" for v in s["per_seed"]))
    return "\n".join(lines)


def run_experiment(recipe: str, seeds: int = 3, overrides: dict[str, str] | None = None) -> Path:
    if seeds < 1:
        raise R1labError(f"--seeds must be >= 1, got {seeds}")
    name = (yaml.safe_load(Path(recipe).read_text()) or {}).get("name", Path(recipe).stem) if Path(recipe).is_file() else None
    name = (overrides or {}).get("name", name)
    runs = []
    for seed in range(seeds):
        settings = {**(overrides or {}), "seed": str(seed), "name": f"{name}_seed{seed}"}
        print(f"=== seed {seed} ===")
        run_recipe(recipe, settings)
        runs.append(load_recipe(recipe, settings))
    evals = [next(s for s in reversed(stages) if s.kind == "eval") for stages in runs]
    samples = evals[0].config.samples
    table = {}
    for model in evals[0].config.models:
        per_seed = []
        for stage, stages in zip(evals, runs):
            same = next(m for m in stage.config.models if label(m) == label(model))
            per_seed.append(read_samples(stage.out / f"{slug(same)}.jsonl"))
        table[label(model)] = pooled(per_seed)
    out = Path(evals[0].out.parent.parent) / name
    out.mkdir(parents=True, exist_ok=True)
    text = format_experiment(table, samples, seeds)
    (out / "experiment.json").write_text(json.dumps({"recipe": recipe, "seeds": seeds, "samples": samples,
                                                     "methods": table}, indent=2))
    (out / "experiment.md").write_text(f"# Is RL really needed? ({recipe}, {seeds} seeds)\n\n```\n{text}\n```\n")
    print(text)
    return out / "experiment.md"
