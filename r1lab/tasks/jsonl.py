"""User data: one JSON object per line, with configurable field names.

`jsonl:data.jsonl` holds both splits, divided by a hash of each row's prompt (`test_percent`);
`jsonl:data_{split}.jsonl` names one file per split. Rows without an answer are allowed only with
`answer_field: null` (then rewards that need no ground truth, such as majority vote, apply).
A row with a `tests` field is a code problem (see tasks/code.py); it needs no answer.

Field types (JSON): the prompt is a string; the answer a string or a number (kept as its text, e.g.
"2.5"), never a list or object (whose Python text, "['2', '3']", no reply would match); steps a list of
strings or one string; a code row's tests, entry_point, setup, prefix and answer (a reference program)
strings. Any other type is an error naming the file, the line, the field and the type expected; a
missing prompt or answer field also names the option that points at yours (`--task-options '{prompt_field: question}'`).
"""
from __future__ import annotations

from dataclasses import dataclass

from r1lab import R1labError
from r1lab.data import read_jsonl
from r1lab.tasks.base import check_split, split_of
from r1lab.tasks.code import jsonl_code_problem
from r1lab.types import Problem

TEXT, NUMBER = (str,), (int, float)      # exact JSON types (a bool is not a number here)


def json_kind(value) -> str:
    """What a JSON value is, in the words of an error message."""
    names = {str: "a string", bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), "null")


PROMPT_NAMES, ANSWER_NAMES = ("prompt", "question", "problem"), ("answer", "solution")   # usual field names


def naming_hint(option: str, present) -> str:
    """How to name the field a task reads: e.g. "name yours with --task-options '{prompt_field: question}'",
    with a present field of a usual name where there is one."""
    usual = {"prompt_field": PROMPT_NAMES, "answer_field": ANSWER_NAMES}.get(option, ())
    guess = next((name for name in usual if name in present), "<field>")
    return f"name yours with --task-options '{{{option}: {guess}}}'" + \
        (", or '{answer_field: null}' for rows without one" if option == "answer_field" else "")


def row_field(row: dict, key: str, where: str, kinds: tuple, expected: str, default=None, option: str = ""):
    """row[key] if its JSON type is one of `kinds`; absent or null gives `default` (None: required). A missing
    field that a task option names (`option`, e.g. prompt_field) is an error that says how to set it."""
    value = row.get(key)
    if value is None and default is not None:
        return default
    if value is None and key not in row:
        hint = f"; {naming_hint(option, row)}" if option else ""
        raise R1labError(f"{where}: missing field {key!r} ({expected}; fields present: {sorted(row)}){hint}")
    if type(value) not in kinds:
        raise R1labError(f"{where}: field {key!r} must be {expected}, got {json_kind(value)}")
    return value


def steps_of(row: dict, key: str, where: str) -> tuple[str, ...]:
    expected = "a list of strings or one string (a step a line)"
    steps = row_field(row, key, where, (str, list), expected, default=())
    if isinstance(steps, str):
        return tuple(s.strip() for s in steps.splitlines() if s.strip())
    if not all(type(s) is str for s in steps):
        kind = next(json_kind(s) for s in steps if type(s) is not str)
        raise R1labError(f"{where}: field {key!r} must be {expected}, got a list holding {kind}")
    return tuple(steps)


@dataclass(frozen=True)
class JsonlTask:
    path: str
    prompt_field: str = "prompt"
    answer_field: str | None = "answer"
    steps_field: str = "steps"        # optional: a list of strings, or one string split into lines
    test_percent: int = 10            # used when the path has no {split}

    @property
    def name(self) -> str:
        return f"jsonl:{self.path}"

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The first n problems of the split, in file order (seed is unused: the data is fixed). Every
        field read is type-checked: an error names the file, the line, the field and what was expected."""
        check_split(split)
        per_split = "{split}" in self.path
        path = self.path.format(split=split) if per_split else self.path
        problems = []
        for number, row in read_jsonl(path):               # every row is checked, whichever its split
            problem = self.problem(f"{path}, line {number}", f"{path}:{number}", row)
            if per_split or split_of(problem.prompt, self.test_percent) == split:
                problems.append(problem)
            if n is not None and len(problems) == n:
                break
        return problems

    def problem(self, where: str, id: str, row: dict) -> Problem:
        prompt = row_field(row, self.prompt_field, where, TEXT, "a string", option="prompt_field")
        if "tests" in row:
            return self.code_problem(where, id, prompt, row)
        answer = None if self.answer_field is None else \
            str(row_field(row, self.answer_field, where, TEXT + NUMBER, "a string or number", option="answer_field"))
        meta = {k: v for k, v in row.items() if k not in (self.prompt_field, self.answer_field, self.steps_field)}
        return Problem(id=id, prompt=prompt, answer=answer, meta=meta, steps=steps_of(row, self.steps_field, where))

    def code_problem(self, where: str, id: str, prompt: str, row: dict) -> Problem:
        """A row with `tests` (tasks/code.py checks what the code fields mean; here, their JSON types)."""
        tests = row_field(row, "tests", where, (str, list),
                          "a list of strings (assert statements) or one string of test code")
        code = {key: row_field(row, key, where, TEXT, f"a string ({what}) or absent", default="")
                for key, what in (("entry_point", "a function name"), ("setup", "Python code"),
                                  ("prefix", "Python code"))}
        reference = None if self.answer_field is None else \
            row_field(row, self.answer_field, where, TEXT, "a string (a reference program) or absent", default="") or None
        return jsonl_code_problem(where, id, prompt, tests, reference=reference, **code)
