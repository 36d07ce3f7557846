"""Evaluation as the paper reports it: k samples per problem, pass@1, cons@k and the talk's behaviours.

    r1lab eval smollm2-135m runs/x/grpo/checkpoint --task arithmetic --samples 8 --problems 50

Per model: pass@1 and cons@k with bootstrap CIs, pass@k, the mean task score, format rate, mean/median
response length (the model's tokens), reflection rate (share of responses whose reasoning has a marker such as
"wait"), and language-mixing rate (share whose reasoning mixes scripts). A sample is correct only with
full marks (`rewards.accuracy.is_correct`), the same for pass@1, pass@k and cons@k; a task's partial
credit (reasoning-gym) shows only in the score column. All models see the same problems, and each
problem samples from its own random stream, seeded by (seed, problem id), so the samples do not depend
on batching or on where an interrupted eval resumed. Each problem's samples are appended to
`<out>/<model>.jsonl` as they finish, after a first line with the settings they were sampled with; an
interrupted eval resumes by problem, and resuming with other settings is refused, naming them.
`<out>/eval.json` holds the summary table. With `tools` (r1lab/tools.py) each sample is an episode in which
the model may call them (r1lab/rollout/episodes.py); tool calls and failed calls per sample are reported.
A model that is an r1lab checkpoint folder gets its figures in its model card too (a section per task), and
without a template given, `default_template` takes the one its run was trained with (its config.yaml).
"""
from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

from r1lab.eta import Progress

from r1lab import R1labError
from r1lab.checkpoint import set_card_section
from r1lab.data import resume_appending, write_atomic
from r1lab.metrics import REFLECTION_MARKERS, bootstrap_ci, cons_at_k, pass_at_1, pass_at_k, reflects
from r1lab.rewards import score
from r1lab.rewards.accuracy import equivalent, is_correct
from r1lab.rewards.language import language_share
from r1lab.schema import read_yaml

def mixes_languages(reasoning: str | None) -> bool:
    return 0.0 < language_share(reasoning, "en") < 1.0 and language_share(reasoning, "zh") > 0.0


def default_template(models: list[str], task: str) -> str:
    """The template to evaluate `models` with when none is given: the one their runs were trained with (the
    settings record config.yaml beside a checkpoint folder: checkpoint/, checkpoint-N/, best/), else code for
    humaneval and r1_zero for the rest. Checkpoints trained with different templates are an error: give one."""
    found = {}
    for model in models:
        record = Path(model).parent / "config.yaml"
        if Path(model).is_dir() and record.is_file():
            settings = read_yaml(record, "settings record")
            if isinstance(settings, dict) and isinstance(settings.get("template"), str):
                found[model] = settings["template"]
    if len(set(found.values())) > 1:
        raise R1labError(f"--template: the models were trained with different templates "
                         f"({', '.join(f'{m}: {t}' for m, t in found.items())}); choose one with --template")
    if found:
        return next(iter(found.values()))
    return "code" if task == "humaneval" else "r1_zero"


def card_figures(model: str, result: dict, summary: dict) -> None:
    """An r1lab checkpoint's model card gets this eval's figures, a section per task (nothing for other models;
    a folder that cannot be written keeps its card: eval.json holds the figures)."""
    samples, task = result["samples"], result["task"]
    text = (f"## Evaluation: {task}\n\npass@1 **{summary['pass@1']:.4f}** (95% CI {summary['pass@1_ci'][0]:.4f}-"
            f"{summary['pass@1_ci'][1]:.4f}), cons@{samples} {summary[f'cons@{samples}']:.4f}, pass@{samples} "
            f"{summary[f'pass@{samples}']:.4f}, format {summary['format']:.4f}, mean length {summary['length_mean']:.1f} "
            f"tokens; {summary['problems']} held-out problems, {samples} samples each, template {result['template']}, "
            f"T={result['temperature']}, top-p={result['top_p']} (r1lab eval).")
    if Path(model).is_dir():
        try:
            set_card_section(Path(model), f"eval:{slug(task)}", text)
        except OSError:
            pass


def model_label(model: str) -> str:
    """A short name for a model: the run stage that wrote a checkpoint, else the spec itself."""
    path = Path(model)
    return path.parent.name if path.name == "checkpoint" and path.parent.name else model


def slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip("/"))[-80:]


def problem_seed(seed: int, problem_id: str) -> int:
    """The seed of one problem's random stream: its samples do not depend on its batch or on resuming."""
    return random.Random(f"eval/{seed}/{problem_id}").getrandbits(62)


def read_samples(path: Path, settings: dict | None = None) -> list[dict]:
    """The per-problem rows of an eval file (after its first line, the settings they were sampled with).
    Given `settings`, a file sampled with others is refused, naming the changes: adding to it would mix them."""
    lines = resume_appending(path)
    if not lines:
        return []
    recorded = lines[0].get("settings")
    settings = json.loads(json.dumps(settings))                 # as the file holds them (tuples as lists)
    if settings is not None and recorded != settings:
        if recorded is None:
            raise R1labError(f"{path} records no settings (an older r1lab wrote it); delete it or use another --out")
        changed = [f"{key} {recorded.get(key)} -> {settings.get(key)}" for key in dict.fromkeys([*settings, *recorded])
                   if recorded.get(key) != settings.get(key)]
        raise R1labError(f"{path} was sampled with other settings: {', '.join(changed)}; to start over delete it, "
                         "or use another --out")
    return lines[1:]


def score_group(problem, group) -> dict:
    """One problem's row: its samples, each one's task score (partial credit kept) and whether it is correct."""
    _, parts, _ = score({"accuracy_partial": 1.0, "format": 1.0}, group, [problem] * len(group))
    return {"id": problem.id, "prompt": problem.prompt, "truth": problem.answer, "answers": [c.answer for c in group],
            "correct": [float(is_correct(s)) for s in parts["accuracy_partial"]], "score": parts["accuracy_partial"],
            "format": parts["format"], "lengths": [c.model_tokens for c in group], "texts": [c.text for c in group],
            "reasonings": [c.reasoning for c in group], "tool_calls": [len(c.tool_calls) for c in group],
            "tool_errors": [c.failed_calls for c in group]}


def sample_model(model_spec: str, problems, template, samples: int, sampling, seed: int, path: Path,
                 batch_problems: int, settings: dict, dtype: str = "float32", tools=(), max_turns: int = 4) -> list[dict]:
    """Rows (one per problem) of k samples each, resuming from the rows already in `path` if it was
    sampled with the same `settings` (everything that decides the samples)."""
    from r1lab.rollout import rollout
    from r1lab.rollout.hf import HFEngine
    from r1lab.training import load_on_device

    done = {r["id"]: r for r in read_samples(path, settings)}
    todo = [p for p in problems if p.id not in done]
    if todo:
        model, tokenizer = load_on_device(model_spec, dtype)
        engine = HFEngine(model, tokenizer, max_batch=batch_problems * samples)
        with path.open("a") as f, Progress(total=len(problems), initial=len(problems) - len(todo), desc=f"eval {model_spec}",
                                        unit="problem") as bar:
            if f.tell() == 0:
                f.write(json.dumps({"settings": settings}) + "\n")
            for start in range(0, len(todo), batch_problems):
                chunk = todo[start:start + batch_problems]
                _, groups = rollout(engine, chunk, template, tokenizer, samples, sampling,
                                    [problem_seed(seed, p.id) for p in chunk], tools, max_turns)
                for problem, group in zip(chunk, groups):
                    row = score_group(problem, group)
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    done[problem.id] = row
                bar.update(len(chunk))
    return [done[p.id] for p in problems]


def summarise(rows: list[dict], samples: int, markers=REFLECTION_MARKERS, seed: int = 0) -> dict:
    """The table row for one model from its per-problem rows."""
    per_problem_pass1 = [sum(r["correct"]) / len(r["correct"]) for r in rows]
    per_problem_cons = [cons_at_k(r["answers"], r["correct"], equivalent) for r in rows]
    texts = [t for r in rows for t in r["texts"]]
    reasonings = [x for r in rows for x in r["reasonings"]]
    lengths = [n for r in rows for n in r["lengths"]]
    return {
        "problems": len(rows), "samples": samples,
        "pass@1": pass_at_1([r["correct"] for r in rows]), "pass@1_ci": bootstrap_ci(per_problem_pass1, seed=seed),
        f"cons@{samples}": sum(per_problem_cons) / len(rows), f"cons@{samples}_ci": bootstrap_ci(per_problem_cons, seed=seed),
        f"pass@{samples}": sum(pass_at_k(len(r["correct"]), int(sum(r["correct"])), samples)
                               for r in rows) / len(rows),
        "score": statistics.mean(statistics.mean(r["score"]) for r in rows),
        "format": sum(f for r in rows for f in r["format"]) / len(texts),
        "length_mean": statistics.mean(lengths), "length_median": statistics.median(lengths),
        "reflection": sum(reflects(r or t, markers) for r, t in zip(reasonings, texts)) / len(texts),
        "language_mixing": sum(mixes_languages(r) for r in reasonings) / len(texts),
        "tool_calls": sum(n for r in rows for n in r.get("tool_calls", [])) / len(texts),
        "tool_errors": sum(n for r in rows for n in r.get("tool_errors", [])) / len(texts),
    }


def format_table(summary: dict[str, dict], samples: int, tools: bool = False) -> str:
    """Models as rows, metrics as columns (the talk's "Is RL really needed?" layout), CIs in brackets;
    with `tools`, tool calls and failed calls per sample too. An eval.json written before the score
    column existed shows '-' there."""
    head = (f"{'model':36} {'pass@1':>20} {f'cons@{samples}':>20} {f'pass@{samples}':>8} {'score':>7} {'format':>7} "
            f"{'len mean':>8} {'len med':>7} {'reflect':>7} {'mixing':>7}" + (f" {'calls':>6} {'failed':>6}" if tools else ""))
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        p, c = s["pass@1_ci"], s[f"cons@{samples}_ci"]
        score = f"{100 * s['score']:7.1f}" if "score" in s else f"{'-':>7}"
        lines.append(f"{name[-36:]:36} {100 * s['pass@1']:6.1f} [{100 * p[0]:5.1f},{100 * p[1]:5.1f}] "
                     f"{100 * s[f'cons@{samples}']:6.1f} [{100 * c[0]:5.1f},{100 * c[1]:5.1f}] "
                     f"{100 * s[f'pass@{samples}']:8.1f} {score} {100 * s['format']:7.1f} {s['length_mean']:8.1f} "
                     f"{s['length_median']:7.1f} {100 * s['reflection']:7.1f} {100 * s['language_mixing']:7.1f}"
                     + (f" {s.get('tool_calls', 0):6.2f} {s.get('tool_errors', 0):6.2f}" if tools else ""))
    return "\n".join(lines)


def evaluate(models: list[str], task_spec: str, samples: int = 8, problems: int = 50, template: str = "r1_zero",
             temperature: float = 0.6, top_p: float = 0.95, max_new_tokens: int = 256, seed: int = 0,
             out: str = "runs/eval", task_options: dict | None = None, batch_problems: int = 8,
             markers=REFLECTION_MARKERS, tools: str = "", max_turns: int = 4) -> dict:
    from r1lab.rollout import Sampling
    from r1lab.tasks import get_task
    from r1lab.templates import get_template
    from r1lab.tools import load_tools

    from r1lab.models import check_spec
    from r1lab.runlock import lock_folder, release_folder

    template_obj, tool_list = get_template(template), load_tools(tools)
    test = get_task(task_spec, **(task_options or {})).problems("test", problems, seed)
    sampling = Sampling(temperature, top_p, max_new_tokens)
    for model in models:
        check_spec(model)            # every input checked before the output folder is made
    out_dir = Path(out)
    lock_folder(out_dir)             # one writer: the per-model sample files are appended to (resumable)
    settings = {"task": task_spec, "task_options": task_options or {}, "template": template, "samples": samples,
                "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
                **({"tools": tools, "max_turns": max_turns} if tools else {})}
    summary = {}
    for model in models:
        rows = sample_model(model, test, template_obj, samples, sampling, seed, out_dir / f"{slug(model)}.jsonl",
                            batch_problems, {"model": model, **settings}, tools=tool_list, max_turns=max_turns)
        summary[model] = summarise(rows, samples, markers, seed)
    result = {**settings, "models": summary}
    write_atomic(out_dir / "eval.json", json.dumps(result, indent=2))
    for model in models:
        card_figures(model, result, summary[model])
    release_folder(out_dir)
    return result


def run_eval(cfg) -> dict:
    """The recipe's eval stage (an EvalConfig): evaluate, print the table, return the result."""
    result = evaluate(cfg.models, cfg.task, cfg.samples, cfg.problems, cfg.template, cfg.temperature, cfg.top_p,
                      cfg.max_new_tokens, cfg.seed, cfg.out, cfg.task_options, tools=cfg.tools, max_turns=cfg.max_turns)
    print(format_table(result["models"], cfg.samples, tools=bool(cfg.tools)))
    return result
