"""User data: one JSON object per line, with configurable field names.

`jsonl:data.jsonl` holds both splits, divided by a hash of each row's prompt (`test_percent`);
`jsonl:data_{split}.jsonl` names one file per split. Rows without an answer are allowed only with
`answer_field: null` (then rewards that need no ground truth, such as majority vote, apply).
A row with a `tests` field is a code problem (see tasks/code.py); it needs no answer.
"""
from __future__ import annotations

from dataclasses import dataclass

from r1lab import R1labError
from r1lab.data import read_jsonl
from r1lab.tasks import check_split
from r1lab.tasks import split_of
from r1lab.tasks.code import jsonl_code_problem
from r1lab.types import Problem


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
        """The first n problems of the split, in file order (seed is unused: the data is fixed)."""
        check_split(split)
        per_split = "{split}" in self.path
        path = self.path.format(split=split) if per_split else self.path
        problems = []
        for number, row in read_jsonl(path):
            if "tests" in row:
                if self.prompt_field not in row:
                    raise R1labError(f"{path}, line {number}: missing field {self.prompt_field!r}")
                if per_split or split_of(str(row[self.prompt_field]), self.test_percent) == split:
                    problems.append(jsonl_code_problem(str(path), number, row, self.prompt_field))
                if n is not None and len(problems) == n:
                    break
                continue
            for key in (self.prompt_field, self.answer_field):
                if key is not None and key not in row:
                    raise R1labError(f"{path}, line {number}: missing field {key!r} (fields present: {sorted(row)})")
            prompt = str(row[self.prompt_field])
            if not per_split and split_of(prompt, self.test_percent) != split:
                continue
            steps = row.get(self.steps_field) or ()
            steps = tuple(s.strip() for s in steps.splitlines() if s.strip()) if isinstance(steps, str) else tuple(steps)
            answer = None if self.answer_field is None else str(row[self.answer_field])
            meta = {k: v for k, v in row.items() if k not in (self.prompt_field, self.answer_field, self.steps_field)}
            problems.append(Problem(id=f"{path}:{number}", prompt=prompt, answer=answer, meta=meta, steps=steps))
            if n is not None and len(problems) == n:
                break
        return problems
