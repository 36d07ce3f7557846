"""Data commands: cold-start chains of thought written from a task's reference steps.

    r1lab data cold-start --task arithmetic --n 150 --out cold.jsonl [--template r1_zero]

Each example is the reference steps as the reasoning, then a check passage before the answer (the
talk's "Wait, wait..." reflection), so the behaviour exists for RL to reinforce:
  <think> Firstly, I would calculate 5 + 17 = 22. Then, I would calculate 22 + 25 = 47. Wait, let me
  check: 5 + 17 + 25 = 47. </think> <answer> 47 </answer>
Problems without reference steps are skipped (and counted).
"""
from __future__ import annotations

import json
from pathlib import Path

from r1lab import R1labError
from r1lab.tasks import get_task
from r1lab.templates import get_template


def cold_start_completion(problem, template) -> str:
    steps = [s.rstrip(".") for s in problem.steps if not s.startswith("The answer is")]
    check = problem.meta.get("expression")
    reflection = (f"Wait, let me check: {check} = {problem.answer}." if check
                  else f"Wait, let me check the steps again: they give {problem.answer}.")
    return template.compose(". ".join(steps) + ". " + reflection, problem.answer)


def write_cold_start(task_spec: str, n: int, out: str, template: str = "r1_zero", seed: int = 0,
                     task_options: dict | None = None) -> tuple[int, int]:
    """Write up to n examples from the task's train split; returns (written, skipped without steps)."""
    template_obj = get_template(template)
    problems = get_task(task_spec, **(task_options or {})).problems("train", n, seed)
    rows = [{"prompt": p.prompt, "answer": p.answer, "completion": cold_start_completion(p, template_obj)}
            for p in problems if p.steps]
    if not rows:
        raise R1labError(f"task {task_spec!r} gave no problems with reference steps; cold-start data needs them")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    temporary.replace(path)
    return len(rows), len(problems) - len(rows)
