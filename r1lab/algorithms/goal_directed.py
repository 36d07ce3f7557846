"""Goal-directed fine-tuning (the talk's proposal, after "Learning, Fast and Slow"): one verified
trajectory A -> B -> C becomes many SFT examples (A -> B, A -> C, B -> C).

    r1lab data goal-directed IN.jsonl --out OUT.jsonl [--task arithmetic] [--augment start,goal,hindsight]

- start: start-state shift. The first k reasoning steps move into the prompt (as a `prefix`, no loss),
  the rest is the completion, for k = 0 .. n.
- goal: goal-state shift. Cut after the k-th calculation and re-define the problem so that its result
  is the answer ("Calculate 1 + 2 + 3" -> "Calculate 1 + 2", "The answer is 3"); then start shifts of that.
- hindsight: a trajectory whose answer is wrong becomes a correct example for the problem it did solve
  ("1 + 2 + 3" computed as "3 + 2 = 5" -> an example for "1 + 2 + 2"), if its arithmetic is right.
Steps are the reasoning's lines, or its sentences when it is one line. Rewriting a problem (goal,
hindsight) is a task method: `arithmetic` has it, and never returns a problem of its test split (nor a
reordering of one); other tasks fail with a plain message. Input that gives no example is an error.
Rows are {prompt, answer, prefix, completion, augmentation}: the SFT stage trains on completion only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from r1lab import R1labError
from r1lab.data import read_jsonl, write_jsonl
from r1lab.rewards.accuracy import equivalent
from r1lab.templates import Template, get_template

AUGMENTATIONS = ("start", "goal", "hindsight")


@dataclass(frozen=True)
class Trajectory:
    prompt: str
    answer: str
    steps: tuple[str, ...]           # reasoning steps, in order


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    prefix_steps: tuple[str, ...]    # steps given in the prompt
    completion_steps: tuple[str, ...]   # steps to learn
    augmentation: str


def split_steps(reasoning: str) -> tuple[str, ...]:
    lines = [line.strip() for line in reasoning.splitlines() if line.strip()]
    if len(lines) > 1:
        return tuple(lines)
    return tuple(s.strip() for s in re.split(r"(?<=[.!?])\s+", reasoning.strip()) if s.strip())


def start_shifts(t: Trajectory, kind: str = "start") -> list[Example]:
    """k = 0 .. n steps moved into the prompt (k = 0 is the trajectory itself)."""
    return [Example(t.prompt, t.answer, t.steps[:k], t.steps[k:], kind if k else "original")
            for k in range(len(t.steps) + 1)]


def goal_shifts(t: Trajectory, task) -> list[Trajectory]:
    """One trajectory per intermediate calculation, re-defined so its result is the answer."""
    if not hasattr(task, "goal_problems"):
        raise R1labError(f"task {task.name!r} cannot rewrite problems, so goal-state shift is not supported; "
                         "use --augment start")
    return [Trajectory(p.prompt, p.answer, t.steps[:index + 1] + (f"The answer is {p.answer}",))
            for index, p in task.goal_problems(list(t.steps))]


def hindsight(t: Trajectory, task) -> Trajectory | None:
    if not hasattr(task, "hindsight_problem"):
        raise R1labError(f"task {task.name!r} cannot rewrite problems, so hindsight relabelling is not supported; "
                         "use --augment start")
    problem = task.hindsight_problem(list(t.steps))
    if problem is None or not equivalent(t.answer, problem.answer):
        return None
    return Trajectory(problem.prompt, problem.answer, t.steps)


def augment(t: Trajectory, correct: bool, task, kinds: tuple[str, ...]) -> list[Example]:
    """All examples from one trajectory: correct ones are shifted, wrong ones only relabelled."""
    if not correct:
        relabelled = hindsight(t, task) if "hindsight" in kinds else None
        return [] if relabelled is None else [Example(relabelled.prompt, relabelled.answer, (), relabelled.steps, "hindsight")]
    examples = start_shifts(t) if "start" in kinds else [Example(t.prompt, t.answer, (), t.steps, "original")]
    if "goal" in kinds:
        for shifted in goal_shifts(t, task):
            examples += [Example(e.prompt, e.answer, e.prefix_steps, e.completion_steps, "goal" + ("+start" if e.prefix_steps else ""))
                         for e in (start_shifts(shifted) if "start" in kinds else [Example(shifted.prompt, shifted.answer, (), shifted.steps, "goal")])]
    return examples


def to_row(e: Example, template: Template) -> dict:
    """An SFT row: the prefix ends where the prompt's steps end inside the template's reply."""
    full = template.compose(" ".join(e.prefix_steps + e.completion_steps), e.answer)
    cut = full.index(e.prefix_steps[-1]) + len(e.prefix_steps[-1]) if e.prefix_steps else 0
    return {"prompt": e.prompt, "answer": e.answer, "prefix": full[:cut], "completion": full[cut:].lstrip(),
            "augmentation": e.augmentation}


def write_goal_directed(source: str, out: str, task_spec: str = "arithmetic", template: str = "r1_zero",
                        kinds: tuple[str, ...] = AUGMENTATIONS) -> dict:
    """Read trajectories (prompt, answer, completion rows), write augmented rows; counts per augmentation."""
    from r1lab.tasks import get_task

    unknown = set(kinds) - set(AUGMENTATIONS)
    if unknown:
        raise R1labError(f"unknown augmentation(s) {sorted(unknown)}; valid: {', '.join(AUGMENTATIONS)}")
    task, template_obj = get_task(task_spec), get_template(template)
    rows, trajectories = [], read_jsonl(source)
    for number, row in trajectories:
        for key in ("prompt", "answer", "completion"):
            if not isinstance(row.get(key), str):
                raise R1labError(f"{source}, line {number}: field {key!r} must be a string")
        reasoning, answer = template_obj.parse(row["completion"])
        if not reasoning or answer is None:
            continue
        correct = equivalent(answer, row["answer"])
        rows += [to_row(e, template_obj) for e in augment(Trajectory(row["prompt"], answer, split_steps(reasoning)),
                                                          correct, task, kinds)]
    if not rows:
        raise R1labError(f"{source}: no examples from its {len(trajectories)} rows; each needs a completion in the "
                         f"{template} template's format with a right answer (or, for hindsight, right arithmetic)")
    write_jsonl(out, rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["augmentation"]] = counts.get(r["augmentation"], 0) + 1
    return counts
