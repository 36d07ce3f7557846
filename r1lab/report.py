"""Plots and report.md from a run directory's files alone (training code never calls this).

    r1lab report runs/quickstart

Reads what the stages under RUN_DIR wrote: each `metrics.jsonl` (a training stage's per-step metrics)
with its `validation.jsonl`, each `eval.json`, and the data files and checkpoints, and writes report.md
beside PNGs: the optimisation (loss, KL, gradient norm, learning rate), the reward and each of its
components, accuracy, response length (the paper: answers get longer with RL), reflection rate (the
"aha moment"), the RL diagnostics (policy entropy; the share of groups whose rewards are all equal,
which carry no signal; the sampler's mismatch with the trainer, the importance weights and ratios),
and held-out pass@1 / cons@k bars with CIs. A panel is drawn only when some stage logged its metric,
and a figure only when it has a panel. Series are named by their stage's folder (the run's own folder
when RUN_DIR is a single stage); stages are listed in folder-name order (a run records no stage order).
Shares (accuracy, format, truncation) are drawn on a 0-1 axis and amounts (length, KL, norms) on one
from 0, so a flat or all-zero series reads as what it is, not as noise around a magnified axis.

A metrics file's last line cut short (a run killed mid-write) is left out, as training drops it on
resume; a bad line anywhere else is an error naming the file and line. Only files are read: nothing
here imports the training or evaluation code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from r1lab import R1labError
from r1lab.data import read_jsonl

# A figure: (file, title, panels); a panel: (title, [(key, label)], y label, scale). Scales: "share" (a value in
# [0, 1]: axis 0 to 1), "zero" (an amount: axis from 0), "free" (the data's own range: entropy near 6.2, weights
# near 1), "log". A share or amount with values outside its range gets the data's range instead.
FIGURES = [
    ("training.png", "Optimisation", [
        ("Loss", [("loss", "loss")], "loss", "zero"),
        ("KL to the reference policy", [("kl", "k3 KL per token")], "nats", "zero"),
        ("Gradient norm (before clipping)", [("grad_norm", "gradient L2 norm")], "norm", "zero"),
        ("Learning rate", [("learning_rate", "learning rate")], "learning rate (log scale)", "log")]),   # stages differ 30x
    ("reward.png", "Reward and accuracy over training", [
        ("Total reward", [("reward", "total reward"), ("reward_drawn", "total reward, every group drawn")],
         "mean over the step's completions", "zero"),
        ("Accuracy", [("accuracy", "accuracy")], "share correct", "share")]),       # + one panel per component
    ("validation.png", "Validation accuracy (greedy, fixed held-out train-split problems)", [
        ("Validation accuracy", [("val_accuracy", "validation accuracy")], "share correct", "share")]),
    ("length.png", "Response length over training", [
        ("Completion length", [("completion_length", "mean length"), ("completion_length_max", "longest")],
         "tokens", "zero"),
        ("Truncated completions", [("truncated", "share that hit max_new_tokens")], "share of completions", "share")]),
    ("reflection.png", "Reflection ('wait', 'let me check') over training", [
        ("Reflection rate", [("reflection", "reflection rate")], "share of completions", "share")]),
    ("entropy.png", "Policy entropy over training", [
        ("Entropy", [("entropy", "entropy")], "nats per sampled token", "free")]),
    ("groups.png", "Groups without signal (all rewards equal)", [
        ("Groups and rows", [("zero_std_groups", "share of the trained groups with equal rewards"),
                             ("dynamic_filtered", "share of drawn groups filtered out"),
                             ("rows_trained", "share of rows run through the passes")], "share", "share")]),
    ("mismatch.png", "Sampler vs trainer, importance weights and ratios", [
        ("Sampler mismatch", [("sampler_mismatch", "mean |log p_sampler - log p_old| per token"),
                              ("sampler_kl", "KL(sampler || old) per sequence")], "nats (log scale)", "log"),
        ("Importance weights and ratios", [("is_weight", "mean importance weight"), ("ratio_mean", "ratio mean"),
                                           ("ratio_min", "ratio min"), ("ratio_max", "ratio max")], "weight / ratio", "free"),
        ("Clipping", [("is_capped", "share of weights capped"), ("clip_fraction", "share of tokens clipped")],
         "share of tokens", "zero")]),
]
# The last-step table's columns: key, heading, format; a column only when some stage logged it.
COLUMNS = [("loss", "loss", ".3f"), ("reward", "reward", ".3f"), ("accuracy", "accuracy", ".3f"),
           ("val_accuracy", "validation accuracy", ".3f"), ("completion_length", "length", ".1f"),
           ("reflection", "reflection", ".3f")]
OUTPUTS = ("data.jsonl", "metrics.jsonl", "eval.json", "checkpoint")          # what a stage leaves in its folder


def _name(folder: Path, run: Path) -> str:
    """A stage folder's name: its path relative to the run, or the run's own name for the run itself."""
    relative = folder.relative_to(run)
    return run.name if relative == Path(".") else str(relative)


def _rows(path: Path) -> list[dict]:
    """A jsonl file's rows. A last line that is not whole JSON (a kill mid-write) is dropped; a whole one kept
    even without its newline (a file written by hand); a bad line before it is read_jsonl's error (file, line)."""
    rows = [row for _, row in read_jsonl(path, torn_tail=True)]
    try:
        last = json.loads(path.read_bytes().rsplit(b"\n", 1)[-1])
    except ValueError:                                       # torn, empty, or not UTF-8
        return rows
    return rows + [last] if isinstance(last, dict) else rows


def _series(run: Path) -> dict[str, list[dict]]:
    """Each stage's rows: its metrics.jsonl, then its validation.jsonl (rows of step and val_accuracy)."""
    found = {}
    for path in sorted(run.rglob("metrics.jsonl")):
        rows = _rows(path)
        if path.with_name("validation.jsonl").exists():
            rows += _rows(path.with_name("validation.jsonl"))
        if rows:
            found[_name(path.parent, run)] = rows
    return found


def _evals(run: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(run.rglob("eval.json")):
        try:
            found[_name(path.parent, run)] = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise R1labError(f"{path}: not a readable eval.json ({e}); rerun the eval stage to rewrite it") from None
    return found


def _stage_outputs(run: Path) -> dict[str, list[str]]:
    """Each stage folder's outputs in words, e.g. {'cold_start': ['data.jsonl, 150 rows']}: a run of data stages
    only (a recipe of just cold_start) still gets a report that says what it made."""
    found: dict[Path, list[str]] = {}
    for output in OUTPUTS:
        for path in run.rglob(output):
            if path.is_dir() != (output == "checkpoint"):
                continue
            if output == "data.jsonl":
                with path.open("rb") as f:
                    words = f"data.jsonl, {sum(1 for line in f if line.strip())} rows"
            else:
                words = "checkpoint/" if output == "checkpoint" else output
            found.setdefault(path.parent, []).append(words)
    return {_name(folder, run): found[folder] for folder in sorted(found)}


def _figures(series: dict[str, list[dict]]) -> list:
    """FIGURES with a panel per reward component the stages logged (`reward/<name>`; accuracy has its own)."""
    names = sorted({k[len("reward/"):] for rows in series.values() for r in rows for k in r
                    if k.startswith("reward/") and not k.endswith("_std")} - {"accuracy"})
    components = [(f"Reward component: {n}", [(f"reward/{n}", n)], "mean over the step's completions", "share")
                  for n in names]
    return [(file, title, panels + components if file == "reward.png" else panels) for file, title, panels in FIGURES]


def _points(rows: list[dict], key: str, log: bool) -> list[tuple]:
    """(step, value) of the rows that logged `key` as a finite number (a positive one on a log scale)."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return [(r["step"], r[key]) for r in rows if number(r.get("step")) and number(r.get(key)) and (r[key] > 0 or not log)]


def _set_scale(ax, values: list[float], scale: str) -> None:
    """The y axis for a panel's values: log, 0-1 for shares, from 0 for amounts, else the data's range but
    at least +-1% around it; an all-zero series gets 0-1, not matplotlib's +-0.04 around 0."""
    if scale == "log":
        ax.set_yscale("log")
        return
    ax.ticklabel_format(axis="y", useOffset=False)          # entropy 6.2225 reads as such, not "+6.222" and .0005
    low, high = min(values), max(values)
    if low == high == 0:
        ax.set_ylim(0, 1)
    elif scale == "share" and 0 <= low and high <= 1:
        ax.set_ylim(0, 1.05)
    elif scale in ("share", "zero") and low >= 0:
        ax.set_ylim(0, 1.1 * high)
    elif high - low < 0.02 * abs(low + high) / 2:            # entropy 6.2224 -> 6.2226 is flat, not a cliff: +-1%
        middle = (low + high) / 2
        ax.set_ylim(middle - 0.01 * abs(middle), middle + 0.01 * abs(middle))


def line_plot(series: dict[str, list[dict]], panels: list, title: str, path: Path) -> list[str]:
    """A figure of the panels whose keys some stage logged, one line per stage and key; the titles of the
    panels drawn, [] (and no file written) when there are none."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    drawn = []
    for panel_title, keys, ylabel, scale in panels:
        lines = [(f"{stage}: {label}" + (" (0 throughout)" if not any(y for _, y in points) else ""), points, index)
                 for index, (key, label) in enumerate(keys) for stage, rows in series.items()
                 if (points := _points(rows, key, scale == "log"))]
        if lines:
            drawn.append((panel_title, lines, ylabel, scale))
    if not drawn:
        return []
    fig, axes = plt.subplots(len(drawn), 1, figsize=(7, 0.4 + 3 * len(drawn)), squeeze=False)
    for ax, (panel_title, lines, ylabel, scale) in zip(axes[:, 0], drawn):
        for label, points, index in lines:                   # a marker and dash per key: equal series stay visible
            ax.plot(*zip(*points), marker="os^Dv"[index % 5], markersize=4, linestyle=("-", "--", ":", "-.")[index % 4],
                    label=label)
        _set_scale(ax, [y for _, points, _ in lines for _, y in points], scale)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [panel_title for panel_title, *_ in drawn]


def _model_label(model: str) -> str:
    """A short name for a model: the run stage that wrote a checkpoint, else the spec itself."""
    path = Path(model)
    return path.parent.name if path.name == "checkpoint" and path.parent.name else model


def _eval_bars(evals: dict[str, dict], path: Path) -> None:
    """pass@1 and cons@k bars with their 95% CIs, one pair per (eval, model), on a 0-based percent axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, metrics = [], []
    for where, result in evals.items():
        k = result["samples"]
        for model, s in result["models"].items():
            names.append(f"{where}\n{_model_label(model)}"[-40:])
            metrics.append((s["pass@1"], s["pass@1_ci"], s[f"cons@{k}"], s[f"cons@{k}_ci"], k))
    top = min(105, max(10, 1.2 * max(100 * max(m[1][1], m[3][1], m[0], m[2]) for m in metrics)))   # no ticks below 0
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(names)) + 1, 4))
    width = 0.38
    for offset, (index, label) in zip((-width / 2, width / 2), ((0, "pass@1"), (2, f"cons@{metrics[0][4]}"))):
        xs, values = [i + offset for i in range(len(names))], [100 * m[index] for m in metrics]
        errors = [[100 * max(0, m[index] - m[index + 1][0]) for m in metrics],
                  [100 * max(0, m[index + 1][1] - m[index]) for m in metrics]]
        color = ax.bar(xs, values, width, yerr=errors, capsize=4, label=label).patches[0].get_facecolor()
        for x, value, high in zip(xs, values, errors[1]):     # the score in its bar, over the CI line, or above a short one
            inside = value >= 0.1 * top
            ax.text(x, value / 2 if inside else value + high + 0.01 * top, f"{value:.1f}", ha="center", zorder=3,
                    va="center" if inside else "bottom", fontsize=8, color="white" if inside else "black",
                    bbox=dict(facecolor=color, edgecolor="none", pad=1) if inside else None)
    ax.set_ylim(0, top)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("held-out score (%), 95% CI")
    ax.set_title("Held-out evaluation per stage")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))      # beside the axes: a bar near 100% stays visible
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _eval_table(result: dict) -> list[str]:
    """An eval.json's models as a markdown table (the columns `r1lab eval` prints), percentages with 95% CIs."""
    k, tools = result["samples"], bool(result.get("tools"))
    pct = lambda s, key: f"{100 * s[key]:.1f}" if key in s else "-"
    ci = lambda s, key: f"{pct(s, key)} [{100 * s[key + '_ci'][0]:.1f}, {100 * s[key + '_ci'][1]:.1f}]"
    head = ["model", "pass@1 %", f"cons@{k} %", f"pass@{k} %", "score %", "format %", "length mean", "length median",
            "reflection %", "language mixing %"] + (["tool calls", "failed calls"] if tools else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, s in result["models"].items():
        cells = [f"`{model}`", ci(s, "pass@1"), ci(s, f"cons@{k}"), pct(s, f"pass@{k}"), pct(s, "score"), pct(s, "format"),
                 f"{s['length_mean']:.1f}", f"{s['length_median']:.1f}", pct(s, "reflection"), pct(s, "language_mixing")]
        cells += [f"{s.get('tool_calls', 0):.2f}", f"{s.get('tool_errors', 0):.2f}"] if tools else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _last_steps(series: dict[str, list[dict]]) -> list[str]:
    """A table of each stage's last step: the columns some stage logged, '-' where this one did not."""
    last = {}
    for stage, rows in series.items():
        training = [r for r in rows if "val_accuracy" not in r] or rows
        validation = [r for r in rows if "val_accuracy" in r]
        last[stage] = {**training[-1], **({"val_accuracy": validation[-1]["val_accuracy"]} if validation else {})}
    columns = [c for c in COLUMNS if any(isinstance(row.get(c[0]), (int, float)) for row in last.values())]
    lines = ["| stage | step |" + "".join(f" {head} |" for _, head, _ in columns), "|---|---|" + "---|" * len(columns)]
    for stage, row in last.items():
        cells = [format(row[key], spec) if isinstance(row.get(key), (int, float)) else "-" for key, _, spec in columns]
        lines.append(f"| {stage} | {row.get('step', '-')} |" + "".join(f" {c} |" for c in cells))
    return lines


def write_report(run_dir: str) -> Path:
    """report.md and its PNGs in RUN_DIR, from the files its stages wrote; the report's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise R1labError(f"{run}: run directory not found")
    outputs = _stage_outputs(run)
    if not outputs:
        raise R1labError(f"{run}: no stage output ({', '.join(OUTPUTS)}) found under it; is it a run directory?")
    series, evals = _series(run), _evals(run)
    lines = [f"# Report: {run.name}", "", "## What each stage wrote", ""]
    lines += [f"- `{stage}`: {'; '.join(words)}" for stage, words in outputs.items()] + [""]
    for name, title, panels in _figures(series) if series else []:
        if line_plot(series, panels, title, run / name):
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if series:
        lines += ["## Last step of each stage", "", *_last_steps(series), ""]
    if evals:
        _eval_bars(evals, run / "eval.png")
        lines += ["## Held-out evaluation", "", "![Held-out evaluation](eval.png)", ""]
        for where, result in evals.items():
            lines += [f"`{where}` — {result['task']}, {result['samples']} samples, T={result['temperature']}, "
                      f"top-p={result['top_p']}:", "", *_eval_table(result), ""]
    (run / "report.md").write_text("\n".join(lines))
    return run / "report.md"
