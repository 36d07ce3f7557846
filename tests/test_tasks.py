import json
import random
import re

import pytest

from r1lab import R1labError
from r1lab.tasks import get_task
from r1lab.tasks.arithmetic import Arithmetic, expression_split


def test_arithmetic_reference_steps_follow_the_talk():
    from r1lab.tasks.arithmetic import make_problem
    problem = make_problem([1, "+", 2, "+", 3])
    assert problem.prompt == "Calculate 1 + 2 + 3" and problem.answer == "6"
    assert problem.steps == ("Firstly, I would calculate 1 + 2 = 3", "Then, I would calculate 3 + 3 = 6", "The answer is 6")


def test_arithmetic_precedence_and_parentheses():
    from r1lab.tasks.arithmetic import make_problem
    p = make_problem([2, "+", [3, "-", 1], "*", 4])
    assert p.prompt == "Calculate 2 + (3 - 1) * 4" and p.answer == "10"
    assert p.steps[:3] == ("Firstly, I would calculate 3 - 1 = 2", "Then, I would calculate 2 * 4 = 8",
                           "Then, I would calculate 2 + 8 = 10")


def test_arithmetic_answers_are_right():
    for p in Arithmetic(operands=4, operators="+-*", parentheses=0.5).problems("train", 200, seed=3):
        assert int(p.answer) == eval(p.meta["expression"])


def test_arithmetic_is_seeded():
    a, b = Arithmetic().problems("train", 50, seed=1), Arithmetic().problems("train", 50, seed=1)
    assert a == b and a != Arithmetic().problems("train", 50, seed=2)


def test_train_and_test_are_disjoint_by_construction():
    task = Arithmetic(operands=2, high=30)
    train = {p.prompt for seed in range(3) for p in task.problems("train", 300, seed)}
    test = {p.prompt for seed in range(3) for p in task.problems("test", 60, seed)}
    assert train and test and not train & test
    assert all(expression_split(p.removeprefix("Calculate "), 10) == "test" for p in test)


STAND_INS = [random.Random(n).getrandbits(64) for n in range(1000)]


def fingerprint(expression: str) -> int:
    """The expression's value with each number replaced by a fixed random stand-in: equal for reorderings and
    regroupings of the same numbers ("1 + 2 + 3", "3 + (2 + 1)"), different (but with negligible chance) otherwise."""
    return eval(re.sub(r"\d+", lambda m: str(STAND_INS[int(m.group())]), expression))


@pytest.mark.parametrize("options, train_n, test_n", [
    ({}, 2000, 200),                                              # the default, "a + b + c" with 1..30
    ({"operands": 2}, 600, 60),
    ({"operators": "*", "high": 12}, 1000, 100),
    ({"operands": 4, "operators": "+-*", "parentheses": 0.5}, 2000, 200),
])
def test_no_train_problem_is_a_reordering_of_a_test_problem(options, train_n, test_n):
    task = Arithmetic(**options)
    for seed in (0, 1):
        train = {fingerprint(p.meta["expression"]) for p in task.problems("train", train_n, seed)}
        test = {fingerprint(p.meta["expression"]) for p in task.problems("test", test_n, seed)}
        assert len(test) > test_n / 10 and not train & test


def test_too_small_problem_space_is_a_clear_error():
    with pytest.raises(R1labError, match="only yielded"):
        Arithmetic(operands=2, low=1, high=2).problems("train", 50)


def test_unknown_task_and_option():
    with pytest.raises(R1labError, match="unknown task"):
        get_task("gsm8k")
    with pytest.raises(R1labError, match="valid options: operands"):
        get_task("arithmetic", operand=3)
    with pytest.raises(R1labError, match="unknown reasoning-gym dataset"):
        get_task("reasoning-gym:no_such_set")


def test_reasoning_gym_steps_from_worked_solutions():
    problems = get_task("reasoning-gym:gsm_symbolic").problems("train", 2, seed=0)
    assert len(problems) == 2 and problems[0].steps and problems[0].answer


def test_reasoning_gym_test_split_is_disjoint_from_train_by_question():
    task = get_task("reasoning-gym:tower_of_hanoi")              # 90 distinct questions in all
    train = {p.prompt for p in task.problems("train", 2000, seed=0)}
    test = [p.prompt for p in task.problems("test", 4, seed=0)]
    assert len(set(test)) == len(test) and not train & set(test)
    count = task.distinct_test_questions()
    assert 4 <= count < 90
    with pytest.raises(R1labError, match=rf"tower_of_hanoi: asked for 50 test problems.* only {count} distinct"):
        task.problems("test", 50, seed=0)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_task_with_custom_fields(tmp_path):
    path = write(tmp_path / "d.jsonl", [json.dumps({"q": f"question {i}", "a": str(i), "steps": "s1\ns2"}) for i in range(50)])
    task = get_task(f"jsonl:{path}", prompt_field="q", answer_field="a")
    train, test = task.problems("train", None), task.problems("test", None)
    assert len(train) + len(test) == 50 and not {p.prompt for p in train} & {p.prompt for p in test}
    assert train[0].steps == ("s1", "s2")


def test_jsonl_per_split_files(tmp_path):
    write(tmp_path / "d_train.jsonl", ['{"prompt": "a", "answer": "1"}'])
    write(tmp_path / "d_test.jsonl", ['{"prompt": "b", "answer": "2"}'])
    task = get_task(f"jsonl:{tmp_path}/d_{{split}}.jsonl")
    assert [p.prompt for p in task.problems("train")] == ["a"] and [p.prompt for p in task.problems("test")] == ["b"]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "answer": "1"}', "{not json"], r"d.jsonl, line 2: invalid JSON"),
    (['{"prompt": "a", "answer": "1"}', '{"prompt": "b"}'], r"line 2: missing field 'answer'"),
    (['[1, 2]'], r"line 1: expected a JSON object"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, lines, message):
    path = write(tmp_path / "d.jsonl", lines)
    with pytest.raises(R1labError, match=message):
        get_task(f"jsonl:{path}").problems("train")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "a", "answer": ["2", "3"]}, r"line 2: field 'answer' must be a string or number, got a list"),
    ({"prompt": "a", "answer": {"x": 1}}, r"line 2: field 'answer' must be a string or number, got an object"),
    ({"prompt": "a", "answer": None}, r"line 2: field 'answer' must be a string or number, got null"),
    ({"prompt": "a", "answer": True}, r"line 2: field 'answer' must be a string or number, got true/false"),
    ({"prompt": ["a"], "answer": "1"}, r"line 2: field 'prompt' must be a string, got a list"),
    ({"prompt": 7, "answer": "1"}, r"line 2: field 'prompt' must be a string, got a number"),
    ({"answer": "1"}, r"line 2: missing field 'prompt' \(a string; fields present: \['answer'\]\)"),
    ({"prompt": "a", "answer": "1", "steps": {"s": 1}}, r"line 2: field 'steps' must be a list of strings or one string"),
    ({"prompt": "a", "answer": "1", "steps": ["s1", 2]}, r"line 2: field 'steps' .* got a list holding a number"),
])
def test_jsonl_fields_of_the_wrong_type_name_file_line_field_and_type(tmp_path, row, message):
    path = write(tmp_path / "d.jsonl", ['{"prompt": "fine", "answer": "1"}', json.dumps(row)])
    for split in ("train", "test"):                          # every row is checked, whichever its split
        with pytest.raises(R1labError, match=f"d.jsonl, {message}") as error:
            get_task(f"jsonl:{path}").problems(split)
        assert "\n" not in str(error.value)


def test_jsonl_numbers_are_answers_as_text(tmp_path):
    path = write(tmp_path / "d.jsonl", [json.dumps({"prompt": f"q{i}", "answer": a, "steps": None})
                                        for i, a in enumerate([7, 2.5, -1, "x"])])
    problems = get_task(f"jsonl:{path}", test_percent=1).problems("train")
    assert [p.answer for p in problems] == ["7", "2.5", "-1", "x"] and problems[0].steps == ()


@pytest.mark.parametrize("line, message", [
    ("[" * 100000 + "]" * 100000, r"d.jsonl, line 2: JSON nested too deeply"),     # a RecursionError before
    ('{"prompt": "a", "answer": ' + "1" * 5000 + "}", r"d.jsonl, line 2: JSON Python cannot read \(Exceeds the limit"),
])
def test_jsonl_rows_python_cannot_read_are_errors_naming_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "d.jsonl", ['{"prompt": "a", "answer": "1"}', line])
    with pytest.raises(R1labError, match=message) as error:
        get_task(f"jsonl:{path}").problems("train")
    assert "\n" not in str(error.value)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(R1labError, match="file not found"):
        get_task(f"jsonl:{tmp_path}/nope.jsonl").problems("train")


def test_jsonl_without_answers(tmp_path):
    path = write(tmp_path / "d.jsonl", ['{"prompt": "a"}'] * 3)
    problems = get_task(f"jsonl:{path}", answer_field=None, test_percent=1).problems("train")
    assert problems and problems[0].answer is None


def test_a_split_without_problems_is_an_error_naming_task_and_split(tmp_path):
    empty = write(tmp_path / "empty.jsonl", [])
    with pytest.raises(R1labError, match=r"jsonl:.*empty.jsonl.* no train problems"):
        get_task(f"jsonl:{empty}").problems("train")
    one = write(tmp_path / "one.jsonl", ['{"prompt": "a", "answer": "1"}'])       # "a" falls in the train split
    assert len(get_task(f"jsonl:{one}").problems("train")) == 1
    with pytest.raises(R1labError, match=r"jsonl:.*one.jsonl.* no test problems"):
        get_task(f"jsonl:{one}").problems("test")


def test_tasks_command_counts_a_datasets_distinct_test_questions(capsys):
    from r1lab.cli import main
    main(["tasks", "reasoning-gym:tower_of_hanoi"])
    assert re.search(r"tower_of_hanoi: \d+ distinct test questions", capsys.readouterr().out)
