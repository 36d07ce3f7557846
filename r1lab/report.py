"""Plots and report.md from a run directory's files alone (training code never calls this).

    r1lab report runs/quickstart

Reads every `metrics.jsonl` (a stage's per-step metrics) and `eval.json` under RUN_DIR and writes
PNGs: reward and accuracy over steps, response length over steps (the paper: answers get longer with
RL), reflection rate over steps (the "aha moment"), the RL diagnostics (policy entropy; the share of
groups whose rewards are all equal, which carry no signal; the sampler's mismatch with the trainer
and the importance weights and ratios), and held-out pass@1 / cons@k bars with CIs. A diagnostic
plot is written only when some stage logged its metrics. Series are named by their stage's folder
(the run's own folder when RUN_DIR is a single stage).
"""
from __future__ import annotations

import json
from pathlib import Path

from r1lab import R1labError

# file, title, panels: (keys with labels, y label, log scale)
PLOTS = [
    ("reward.png", "Reward and accuracy over training",
     [([("reward", "total reward"), ("accuracy", "accuracy"), ("reward_drawn", "total reward, every group drawn")],
       "mean over the step's completions", False)]),
    ("validation.png", "Validation accuracy over training (greedy, fixed held-out train-split problems)",
     [([("val_accuracy", "validation accuracy")], "share correct", False)]),
    ("length.png", "Response length over training",
     [([("completion_length", "mean length")], "completion length (tokens)", False)]),
    ("reflection.png", "Reflection ('wait', 'let me check') over training",
     [([("reflection", "reflection rate")], "share of completions", False)]),
    ("entropy.png", "Policy entropy over training", [([("entropy", "entropy")], "nats per sampled token", False)]),
    ("groups.png", "Groups without signal (all rewards equal)",
     [([("zero_std_groups", "share of the trained groups"), ("dynamic_filtered", "share of drawn groups filtered out"),
        ("rows_trained", "share of rows run through the passes")], "share", False)]),
    ("mismatch.png", "Sampler vs trainer, importance weights and ratios",
     [([("sampler_mismatch", "mean |log p_sampler - log p_old| per token"), ("sampler_kl", "KL(sampler || old) per sequence")],
       "nats (log scale)", True),
      ([("is_weight", "mean importance weight"), ("is_capped", "share of weights capped"), ("ratio_mean", "ratio mean"),
        ("ratio_min", "ratio min"), ("ratio_max", "ratio max")], "weight / ratio", False)]),
]


def _name(path: Path, run: Path) -> str:
    """A file's stage: its folder relative to the run, or the run's own name for a file directly in it."""
    folder = path.parent.relative_to(run)
    return run.name if folder == Path(".") else str(folder)


def _series(run: Path) -> dict[str, list[dict]]:
    """Each stage's rows: its metrics.jsonl, then its validation.jsonl (rows of step and val_accuracy)."""
    found = {}
    for path in sorted(run.rglob("metrics.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        validation = path.with_name("validation.jsonl")
        if validation.exists():
            rows += [json.loads(line) for line in validation.read_text().splitlines() if line.strip()]
        if rows:
            found[_name(path, run)] = rows
    return found


def _line_plot(series, panels, title, path) -> bool:
    """One figure with a panel per (keys, y label, log) entry; False (nothing written) when no series has a key."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not any(key in r for rows in series.values() for r in rows for keys, _, _ in panels for key, _ in keys):
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 4 * len(panels)), squeeze=False)
    for ax, (keys, ylabel, log) in zip(axes[:, 0], panels):
        for stage, rows in series.items():
            for key, label in keys:
                points = [(r["step"], r[key]) for r in rows if key in r and (r[key] > 0 or not log)]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=f"{stage}: {label}")
        if log:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)      # entropy 6.2225 reads as such, not "+6.222" and .0005
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
    evals = {_name(p, run): json.loads(p.read_text()) for p in sorted(run.rglob("eval.json"))}
    if not series and not evals:
        raise R1labError(f"{run}: no metrics.jsonl or eval.json found under it")
    lines = [f"# Report: {run.name}", ""]
    if series:
        for name, title, panels in PLOTS:
            if _line_plot(series, panels, title, run / name):
                lines += [f"## {title}", "", f"![{title}]({name})", ""]
        lines += ["## Last step of each stage", "", "| stage | step | reward | accuracy | length | reflection |", "|---|---|---|---|---|---|"]
        for stage, rows in series.items():
            last = next((r for r in reversed(rows) if "val_accuracy" not in r), rows[-1])
            lines.append(f"| {stage} | {last['step']} | {last.get('reward', float('nan')):.3f} | "
                         f"{last.get('accuracy', float('nan')):.3f} | {last.get('completion_length', float('nan')):.1f} | "
                         f"{last.get('reflection', float('nan')):.3f} |")
        lines.append("")
    if evals:
        _eval_bars(evals, run / "eval.png")
        lines += ["## Held-out evaluation", "", "![Held-out evaluation](eval.png)", ""]
        for where, result in evals.items():
            lines += [f"`{where}` — {result['task']}, {result['samples']} samples, T={result['temperature']}, "
                      f"top-p={result['top_p']}:", "", "```", format_table(result["models"], result["samples"], bool(result.get("tools"))), "```", ""]
    (run / "report.md").write_text("\n".join(lines))
    return run / "report.md"
