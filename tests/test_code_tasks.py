"""Code tasks (humaneval, jsonl with tests), the `code` template and the `code`/`code_strict` rewards."""
import json
import time

import pytest

from r1lab import R1labError
from r1lab.rewards import REWARDS, check_rewards_fit, parse_rewards, score
from r1lab.rewards import code as code_rewards
from r1lab.rewards.code import job
from r1lab.sandbox import Limits, Sandbox, check_tests
from r1lab import sandbox_jail
from r1lab.tasks import get_task
from r1lab.templates import extract_program, get_template
from r1lab.types import Completion, Problem

HUMANEVAL = get_task("humaneval")
TRAIN, TEST = HUMANEVAL.problems("train"), HUMANEVAL.problems("test")


def reply(program: str, reasoning: str = "I add them.") -> Completion:
    template = get_template("code")
    text = template.compose(reasoning, program)
    thought, answer = template.parse(text)
    return Completion(text=text, template="code", reasoning=thought, answer=answer)


def test_humaneval_has_164_problems_in_disjoint_splits():
    assert len(TRAIN) + len(TEST) == 164 and len(TEST) > 20
    assert not {p.id for p in TRAIN} & {p.id for p in TEST}
    assert len(get_task("humaneval", test_percent=100).problems("test")) == 164
    with pytest.raises(R1labError, match="train split is empty"):
        get_task("humaneval", test_percent=100).problems("train")


def test_every_canonical_solution_passes_and_a_stub_fails():
    results = Sandbox(Limits(wall_s=60, cpu_s=30)).run_many([job(p, p.answer) for p in TRAIN + TEST])
    failing = [(p.id, r.errors[:1], r.status) for p, r in zip(TRAIN + TEST, results) if r.fraction != 1.0]
    assert failing == []
    first = TEST[0]
    stub = f"def {first.meta['code']['entry_point']}(*args):\n    return None\n"
    assert code_rewards.run_tests(first, stub).passed == 0


def test_humaneval_test_counts():
    """The judge's rule counts each assert of check()'s body once: 7 for HumanEval/0, 1133 in all."""
    counts = {p.id: sum(counts for _, counts in sandbox_jail.test_statements(p.meta["code"]["tests"])) for p in TRAIN + TEST}
    assert counts["HumanEval/0"] == 7 and sum(counts.values()) == 1133 and min(counts.values()) >= 1
    for p in TRAIN + TEST:
        check_tests(p.meta["code"]["tests"], p.id)


def test_code_template_extracts_the_program():
    parse = get_template("code").parse
    assert parse("<think> x </think> <answer>\n```python\ndef f():\n    return 1\n```\n</answer>") == ("x", "def f():\n    return 1")
    assert parse("<think> x </think> <answer>def f(): return 2</answer>") == ("x", "def f(): return 2")
    assert parse("<think> x </think> Here:\n```py\ndef f(): pass\n```") == ("x", "def f(): pass")   # no <answer>
    assert parse("<think> ```python\ndef f(): pass\n```") == ("```python\ndef f(): pass\n```", None)  # still thinking
    assert extract_program("```\nprint(1)\n```") == "print(1)"
    assert get_template("code").format_score(reply("def f(): pass").text, False) == 1.0


ADD = Problem("add", "Write add(a, b).", None, meta={"code": {
    "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"],
    "setup": "", "prefix": "", "entry_point": "add"}})


def test_code_reward_is_the_fraction_of_tests_and_strict_is_all_or_nothing():
    group = [reply("def add(a, b):\n    return a + b"),          # all 4
             reply("def add(a, b):\n    return a + b if a > 0 else 7"),   # add(1,2) and add(2,2) pass: 2 of 4
             reply("def add(a, b):\n    raise ValueError"),       # crashes
             Completion(text="no program", template="code"),       # no answer at all
             reply("import sys\nsys.exit(0)")]                    # exits before the tests
    weights = parse_rewards("code,code_strict=0.5")
    total, parts, failures = score(weights, group, [ADD] * len(group), group_size=len(group))
    assert parts["code"] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert parts["code_strict"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert total[0] == 1.5 and failures == 0


def test_a_hanging_program_scores_zero_quickly(monkeypatch):
    monkeypatch.setattr(code_rewards, "sandbox", lambda: Sandbox(Limits(wall_s=2, cpu_s=1)))
    started = time.monotonic()
    values = code_rewards.code_reward([reply("def add(a, b):\n    while True:\n        pass")] * 4, ADD)
    assert values == [0.0] * 4 and time.monotonic() - started < 8


def test_accuracy_on_a_code_problem_runs_the_tests():
    assert REWARDS["accuracy"](reply("def add(a, b):\n    return a + b"), ADD) == 1.0
    assert REWARDS["accuracy"](reply("def add(a, b):\n    return 3"), ADD) == 0.0


def test_group_rewards_never_mix_problems():
    other = Problem("mul", "Write add(a, b) that multiplies.", None, meta={"code": {
        "tests": ["assert add(2, 3) == 6"], "setup": "", "prefix": "", "entry_point": "add"}})
    group = [reply("def add(a, b):\n    return a * b")] * 2
    _, parts, _ = score({"code": 1.0}, group, [ADD, other])     # no group_size: one group per problem
    assert parts["code"] == [0.5, 1.0]


def test_code_rewards_on_a_non_code_task_are_refused():
    with pytest.raises(R1labError, match="need a code task"):
        check_rewards_fit(parse_rewards("code,format"), get_task("arithmetic").problems("train", 1, 0)[0])


def test_jsonl_code_problems(tmp_path):
    path = tmp_path / "code_{split}.jsonl"
    rows = [{"prompt": "Write square(x).", "tests": ["assert square(3) == 9"], "entry_point": "square"},
            {"prompt": "Write cube(x).", "tests": "assert cube(2) == 8\nassert cube(1) == 1", "answer": "def cube(x):\n    return x ** 3"}]
    for split in ("train", "test"):
        (tmp_path / f"code_{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    problems = get_task(f"jsonl:{path}").problems("test")
    assert [p.meta["code"]["entry_point"] for p in problems] == ["square", ""]
    assert code_rewards.run_tests(problems[1], problems[1].answer).passed == 2
    (tmp_path / "bad_test.jsonl").write_text(json.dumps({"prompt": "p", "tests": ["assert ("]}) + "\n")
    with pytest.raises(R1labError, match=r"line 1: tests\[0\] is not valid Python"):
        get_task(f"jsonl:{tmp_path / 'bad_{split}.jsonl'}").problems("test")


HUMANEVAL_ROW = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(3) == 6\ncheck(double)"
MBPP_ROW = ["assert double(1) == 2", "assert double(0) == 0", "assert double(-2) == -4"]


@pytest.mark.parametrize("tests, program, reward", [
    (HUMANEVAL_ROW, "def double(x):\n    return 2 * x", 1.0),
    (HUMANEVAL_ROW, "def double(x):\n    return 0", 0.0),      # the call check(double) is the test, not the def
    (HUMANEVAL_ROW, "x = 1", 0.0),
    (MBPP_ROW, "def double(x):\n    return 2 * x", 1.0),
    (MBPP_ROW, "def double(x):\n    return 0", 1 / 3),
], ids=["humaneval-right", "humaneval-wrong", "humaneval-no-function", "mbpp-right", "mbpp-wrong"])
def test_jsonl_code_rows_in_humaneval_and_mbpp_format(tmp_path, tests, program, reward):
    (tmp_path / "rows_test.jsonl").write_text(json.dumps({"prompt": "Write double(x).", "tests": tests}) + "\n")
    problem, = get_task(f"jsonl:{tmp_path / 'rows_{split}.jsonl'}").problems("test")
    assert code_rewards.code_reward([reply(program)], problem) == [pytest.approx(reward)]


@pytest.mark.parametrize("tests", [
    "def check(candidate):\n    assert candidate(1) == 2",       # HumanEval's check() without the call
    ["assert True"],
    ["x = double(1)", "print(x)"],
], ids=["check-never-called", "assert-true", "no-assert"])
def test_a_jsonl_code_row_without_an_assertion_that_runs_is_refused(tmp_path, tests):
    rows = [{"prompt": "Write double(x).", "tests": MBPP_ROW}, {"prompt": "Write double(x) again.", "tests": tests}]
    (tmp_path / "rows_test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(R1labError, match=r"rows_test.jsonl, line 2: no test that runs an assertion"):
        get_task(f"jsonl:{tmp_path / 'rows_{split}.jsonl'}").problems("test")


def test_a_check_that_never_calls_the_candidate_earns_nothing(tmp_path):
    """Issue 29: `check(candidate)` asserting only `1 == 1` gave a program returning None reward 1.0."""
    row = {"prompt": "Write add(a, b).", "entry_point": "add",
           "tests": "def check(candidate):\n    assert 1 == 1\ncheck(candidate)"}
    (tmp_path / "rows_test.jsonl").write_text(json.dumps(row) + "\n")
    problem, = get_task(f"jsonl:{tmp_path / 'rows_{split}.jsonl'}").problems("test")
    group = [reply("def add(a, b):\n    return None"), reply("def add(a, b):\n    return a + b")]
    assert code_rewards.code_reward(group, problem) == [0.0, 0.0]
    assert code_rewards.code_strict_reward(group, problem) == [0.0, 0.0]
    assert "never called the entry point 'add'" in code_rewards.run_tests(problem, group[0].answer).errors[0]


@pytest.mark.parametrize("fields, message", [
    ({"tests": 5}, r"field 'tests' must be a list of strings \(assert statements\) or one string of test code, got a number"),
    ({"tests": []}, r"field 'tests' must be a non-empty list of strings"),
    ({"tests": ["assert f(1) == 1", 3]}, r"field 'tests' must be a non-empty list of strings"),
    ({"entry_point": ["f"]}, r"field 'entry_point' must be a string \(a function name\) or absent, got a list"),
    ({"entry_point": "my f"}, r"field 'entry_point' must be a Python function name, got 'my f'"),
    ({"setup": 1}, r"field 'setup' must be a string \(Python code\) or absent, got a number"),
    ({"setup": "def ("}, r"field 'setup' is not valid Python"),
    ({"setup": "x = " + "-" * 100000 + "1"}, r"field 'setup' is nested too deeply"),
    ({"prefix": {"a": 1}}, r"field 'prefix' must be a string \(Python code\) or absent, got an object"),
    ({"answer": ["def f(x): return x"]}, r"field 'answer' must be a string \(a reference program\) or absent, got a list"),
    ({"prompt": None}, r"field 'prompt' must be a string, got null"),
])
def test_jsonl_code_fields_of_the_wrong_type_name_file_line_and_field(tmp_path, fields, message):
    rows = [{"prompt": "Write f(x).", "tests": ["assert f(1) == 1"]}, {"prompt": "Write f(x) again.", "tests": ["assert f(1) == 1"], **fields}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(R1labError, match=r"rows.jsonl, line 2: " + message) as error:
        get_task(f"jsonl:{tmp_path / 'rows.jsonl'}").problems("train")
    assert "\n" not in str(error.value)


def test_cli_trains_grpo_on_humaneval_with_code_rewards(tmp_path, capsys):
    from r1lab.cli import main
    main(["train", "grpo", "--model", "tiny-random", "--task", "humaneval", "--rewards", "code,format",
          "--template", "code", "--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--micro-batch-size", "4",
          "--max-new-tokens", "16", "--out", str(tmp_path / "run")])
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and "reward/code" in row and row["reward_failures"] == 0
    main(["sandbox", "--test", "assert True"])
    assert "sandbox isolation:" in capsys.readouterr().out
