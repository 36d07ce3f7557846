"""Plots and report.md from a run directory's files alone (training code never calls this).

    r1lab report runs/quickstart

Reads every `metrics.jsonl` (a stage's per-step metrics) and `eval.json` under RUN_DIR and writes
PNGs: reward and accuracy over steps, response length over steps (the paper: answers get longer with
RL), reflection rate over steps (the "aha moment"), and held-out pass@1 / cons@k bars with CIs.
"""
from __future__ import annotations

import json
from pathlib import Path

from r1lab import R1labError


def _series(run: Path) -> dict[str, list[dict]]:
    found = {}
    for path in sorted(run.rglob("metrics.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            found[str(path.parent.relative_to(run)) or run.name] = rows
    return found


def _line_plot(series, keys, title, ylabel, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for stage, rows in series.items():
        for key, label in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=f"{stage}: {label}")
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _eval_bars(evals: dict[str, dict], path: Path):
    from r1lab.evaluate import model_label
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, metrics = [], []
    for where, result in evals.items():
        k = result["samples"]
        for model, s in result["models"].items():
            names.append(f"{where}\n{model_label(model)}"[-40:])
            metrics.append((s["pass@1"], s["pass@1_ci"], s[f"cons@{k}"], s[f"cons@{k}_ci"], k))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(names)), 4))
    width = 0.38
    for offset, (index, label) in zip((-width / 2, width / 2), ((0, "pass@1"), (2, "cons@k"))):
        values = [100 * m[index] for m in metrics]
        errors = [[100 * (m[index] - m[index + 1][0]) for m in metrics], [100 * (m[index + 1][1] - m[index]) for m in metrics]]
        ax.bar([i + offset for i in range(len(names))], values, width, yerr=errors, capsize=4,
               label=label if index == 0 else f"cons@{metrics[0][4]}")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("held-out score (%), 95% CI")
    ax.set_title("Held-out evaluation per stage")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str) -> Path:
    from r1lab.evaluate import format_table

    run = Path(run_dir)
    if not run.is_dir():
        raise R1labError(f"{run}: run directory not found")
    series = _series(run)
    evals = {str(p.parent.relative_to(run)) or ".": json.loads(p.read_text()) for p in sorted(run.rglob("eval.json"))}
    if not series and not evals:
        raise R1labError(f"{run}: no metrics.jsonl or eval.json found under it")
    lines = [f"# Report: {run.name}", ""]
    plots = [("reward.png", [("reward", "total reward"), ("accuracy", "accuracy")], "Reward and accuracy over training", "mean over the step's completions"),
             ("length.png", [("completion_length", "mean length")], "Response length over training", "completion length (tokens)"),
             ("reflection.png", [("reflection", "reflection rate")], "Reflection ('wait', 'let me check') over training", "share of completions")]
    if series:
        for name, keys, title, ylabel in plots:
            _line_plot(series, keys, title, ylabel, run / name)
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
        lines += ["## Last step of each stage", "", "| stage | step | reward | accuracy | length | reflection |", "|---|---|---|---|---|---|"]
        for stage, rows in series.items():
            last = rows[-1]
            lines.append(f"| {stage} | {last['step']} | {last.get('reward', float('nan')):.3f} | "
                         f"{last.get('accuracy', float('nan')):.3f} | {last.get('completion_length', float('nan')):.1f} | "
                         f"{last.get('reflection', float('nan')):.3f} |")
        lines.append("")
    if evals:
        _eval_bars(evals, run / "eval.png")
        lines += ["## Held-out evaluation", "", "![Held-out evaluation](eval.png)", ""]
        for where, result in evals.items():
            lines += [f"`{where}` — {result['task']}, {result['samples']} samples, T={result['temperature']}, "
                      f"top-p={result['top_p']}:", "", "```", format_table(result["models"], result["samples"]), "```", ""]
    (run / "report.md").write_text("\n".join(lines))
    return run / "report.md"
