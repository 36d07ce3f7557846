"""A recipe as an experiment: run once per seed, one pooled table (the talk's "Is RL really needed?",
GRPO's gain over its cold start).

    r1lab experiment is-rl-needed [--seeds 3] [--recipe recipes/is_rl_needed.yaml] [key=value ...]
    r1lab experiment rl-gain [--seeds 3]                  (recipes/rl_gain.yaml)
    r1lab experiment r1-zero | compete [--seeds 3]        (recipes/r1_zero.yaml, recipes/compete.yaml)

Runs the recipe once per seed (`runs/<name>_seed<s>/`, each resumable), then pools the held-out
results of its eval stage: per method, pass@1 and cons@k over all (seed, problem) pairs and pass@1 of
each seed, in the talk's layout (methods as rows); and each trained method's gain over the checkpoint
it started from (its stage's `model`, when that is evaluated too), paired on (seed, problem): an eval
stage samples every model on the same problems with the same per-problem seeds (and so do several eval
stages with equal settings: an arm added later brings its own, the earlier results stay); and, paired the same way,
each pair of trained methods that started from the same checkpoint (`versus`: compete against GRPO). Writes
`runs/<name>/experiment.json` and `experiment.md`.

CIs are 95% cluster-bootstrap intervals (r1lab/metrics.py): seeds resampled, then problems within
each seed, so the variance between training seeds is in them (resampling (seed, problem) pairs as
independent leaves it out, and with seeds that disagree gives intervals that are far too narrow).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from r1lab import R1labError
from r1lab.config import settings
from r1lab.evaluate import model_label, read_samples, slug
from r1lab.metrics import cluster_bootstrap_ci, cons_at_k, paired_cluster_bootstrap_ci
from r1lab.pipeline import load_recipe, run_recipe
from r1lab.rewards.accuracy import equivalent


def label(model: str) -> str:
    """A method's name: the stage that wrote the checkpoint, or 'base'."""
    return model_label(model) if Path(model).name == "checkpoint" else "base"


def pass1(row: dict) -> float:
    return sum(row["correct"]) / len(row["correct"])


def pooled(per_seed_rows: list[list[dict]]) -> dict:
    """Pass@1 / cons@k / the strict format rate over all (seed, problem) pairs, with cluster-bootstrap CIs,
    and pass@1 per seed."""
    pass1s = [[pass1(r) for r in rows] for rows in per_seed_rows]
    formats = [[sum(r["format"]) / len(r["format"]) for r in rows] for rows in per_seed_rows]
    cons = [[cons_at_k(r["answers"], r["correct"], equivalent) for r in rows] for rows in per_seed_rows]
    mean = lambda table: sum(map(sum, table)) / sum(map(len, table))   # noqa: E731
    return {"pass@1": mean(pass1s), "pass@1_ci": cluster_bootstrap_ci(pass1s), "cons": mean(cons),
            "cons_ci": cluster_bootstrap_ci(cons), "format": mean(formats), "format_ci": cluster_bootstrap_ci(formats),
            "per_seed": [sum(rows) / len(rows) for rows in pass1s]}


def paired_gain(per_seed_rows: list[list[dict]], start_rows: list[list[dict]]) -> dict:
    """Pass@1 of a method minus its start's, problem by problem within each seed (rows matched by problem id):
    the mean difference and its paired cluster-bootstrap CI."""
    method, start = [], []
    for rows, before in zip(per_seed_rows, start_rows, strict=True):
        before = {r["id"]: r for r in before}
        method.append([pass1(r) for r in rows])
        start.append([pass1(before[r["id"]]) for r in rows])
    gain = sum(map(sum, method)) / sum(map(len, method)) - sum(map(sum, start)) / sum(map(len, start))
    return {"pass@1": gain, "pass@1_ci": paired_cluster_bootstrap_ci(method, start)}


def siblings(gains: dict[str, dict], rows: dict[str, list]) -> dict[str, dict]:
    """Each pair of trained methods that started from the same checkpoint, paired the same way: 'A - B' ->
    A's pass@1 minus B's (e.g. competition without RL against GRPO, both over the cold start)."""
    methods = list(gains)
    return {f"{a} - {b}": paired_gain(rows[a], rows[b]) for i, a in enumerate(methods) for b in methods[i + 1:]
            if gains[a]["start"] == gains[b]["start"]}


def format_experiment(table: dict[str, dict], samples: int, seeds: int, gains: dict[str, dict],
                      versus: dict[str, dict] | None = None) -> str:
    head = (f"{'method':22} {'pass@1 [95% CI]':>22} {f'cons@{samples} [95% CI]':>22} {'format [95% CI]':>22}   "
            "pass@1 per seed")
    lines = [head, "-" * (len(head) + 12)]
    for method, s in table.items():
        lines.append(f"{method:22} {100 * s['pass@1']:6.1f} [{100 * s['pass@1_ci'][0]:5.1f}, {100 * s['pass@1_ci'][1]:5.1f}]  "
                     f"{100 * s['cons']:6.1f} [{100 * s['cons_ci'][0]:5.1f}, {100 * s['cons_ci'][1]:5.1f}]  "
                     f"{100 * s['format']:6.1f} [{100 * s['format_ci'][0]:5.1f}, {100 * s['format_ci'][1]:5.1f}]   "
                     + " ".join(f"{100 * v:5.1f}" for v in s["per_seed"]))
    if gains:
        lines += ["", f"{'method':22} {'started from':22} {'pass@1 gain [95% CI], paired':>30}", "-" * 76]
        lines += [f"{method:22} {g['start']:22} {100 * g['pass@1']:+9.1f} [{100 * g['pass@1_ci'][0]:+6.1f}, "
                  f"{100 * g['pass@1_ci'][1]:+6.1f}]" for method, g in gains.items()]
    if versus:
        lines += ["", f"{'same start, paired':45} {'pass@1 difference [95% CI]':>30}", "-" * 76]
        lines += [f"{pair:45} {100 * v['pass@1']:+9.1f} [{100 * v['pass@1_ci'][0]:+6.1f}, {100 * v['pass@1_ci'][1]:+6.1f}]"
                  for pair, v in versus.items()]
    lines.append(f"\n95% CIs: cluster bootstrap over {seeds} seed(s), then problems within each seed.")
    return "\n".join(lines)


def samples_file(stage, method: str) -> Path:
    """The eval stage's samples of a method (its model's samples file in this seed's run)."""
    return next(stage.out / f"{slug(m)}.jsonl" for m in stage.config.models if label(m) == method)


def eval_rows(path: Path) -> list[dict]:
    """An eval file's rows; one with none (its eval never ran) is refused by name rather than pooled."""
    rows = read_samples(path)
    if not rows:
        raise R1labError(f"{path}: no eval rows (was its eval stage run?); run the recipe's eval stages, then again")
    return rows


def check_pairable(recipe: str, evals: list) -> None:
    """A recipe's eval stages sample the same problems with the same per-problem seeds (all settings but the
    models equal), so their methods can be compared problem by problem: e.g. an arm added later with its own
    eval stage, leaving the first one's results as they are."""
    first = {k: v for k, v in settings(evals[0].config).items() if k != "models"}
    for stage in evals[1:]:
        other = {k: v for k, v in settings(stage.config).items() if k != "models"}
        differ = [f"{k}: {first[k]!r} / {other[k]!r}" for k in first if first[k] != other[k]]
        if differ:
            raise R1labError(f"{recipe}: eval stages {evals[0].name!r} and {stage.name!r} differ ({'; '.join(differ)}): "
                             "their methods would not be paired; give every eval stage the same settings but models")


def run_experiment(recipe: str, seeds: int = 3, overrides: dict[str, str] | None = None) -> Path:
    if seeds < 1:
        raise R1labError(f"--seeds must be >= 1, got {seeds}")
    name = (yaml.safe_load(Path(recipe).read_text()) or {}).get("name", Path(recipe).stem) if Path(recipe).is_file() else None
    name = (overrides or {}).get("name", name)
    first = [s for s in load_recipe(recipe, {**(overrides or {}), "seed": "0", "name": f"{name}_seed0"}) if s.kind == "eval"]
    if not first:
        raise R1labError(f"{recipe}: an experiment needs an eval stage (the held-out table is made from it)")
    check_pairable(recipe, first)                 # before any training
    runs = []
    for seed in range(seeds):
        per_seed = {**(overrides or {}), "seed": str(seed), "name": f"{name}_seed{seed}"}
        print(f"=== seed {seed} ===")
        runs.append(load_recipe(recipe, per_seed))   # the stages as run (the file may change while they run)
        run_recipe(recipe, per_seed)
    evals = [[s for s in stages if s.kind == "eval"] for stages in runs]      # per seed, in recipe order
    samples = evals[0][0].config.samples
    rows = {}                                     # method -> its eval rows, per seed (the first eval stage naming it)
    for number, stage in enumerate(evals[0]):
        for method in map(label, stage.config.models):
            if method not in rows:
                rows[method] = [eval_rows(samples_file(seed_evals[number], method)) for seed_evals in evals]
    table = {method: pooled(per_seed) for method, per_seed in rows.items()}
    starts = {s.name: label(s.config.model) for s in runs[0] if s.kind in ("sft", "grpo", "compete")}
    gains = {method: {"start": starts[method], **paired_gain(rows[method], rows[starts[method]])}
             for method in rows if starts.get(method) in rows}
    versus = siblings(gains, rows)
    out = Path(evals[0][0].out.parent.parent) / name
    out.mkdir(parents=True, exist_ok=True)
    text = format_experiment(table, samples, seeds, gains, versus)
    (out / "experiment.json").write_text(json.dumps({"recipe": recipe, "seeds": seeds, "samples": samples,
                                                     "methods": table, "gains": gains, "versus": versus}, indent=2))
    (out / "experiment.md").write_text(f"# {name} ({recipe}, {seeds} seeds)\n\n```\n{text}\n```\n")
    print(text)
    return out / "experiment.md"
