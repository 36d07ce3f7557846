import pytest

from r1lab import R1labError
from r1lab.rewards import REWARDS, parse_rewards, safe, score
from r1lab.rewards.accuracy import accuracy
from r1lab.rewards.language import language_share
from r1lab.rollout import Sample, to_completion
from r1lab.tasks import get_task
from r1lab.templates import get_template
from r1lab.types import Problem


def completion(text, template="r1_zero"):
    return to_completion(Sample([], [], text, "stop"), get_template(template))


P6 = Problem("p", "Calculate 1 + 2 + 3", "6")


@pytest.mark.parametrize("text, truth, expected", [
    ("<think>1+2+3</think><answer>6</answer>", "6", 1.0),
    ("<think>x</think><answer>\\boxed{6}</answer>", "6", 1.0),
    ("<think>x</think><answer>The answer is 6</answer>", "6", 1.0),
    ("<think>x</think><answer>6.0</answer>", "6", 1.0),
    ("<think>x</think><answer>\\frac{1}{2}</answer>", "0.5", 1.0),
    ("<think>x</think><answer>1,000</answer>", "1000", 1.0),
    ("<think>x</think><answer>-4</answer>", "-4", 1.0),
    ("<think>x</think><answer>7</answer>", "6", 0.0),
    ("<think>the answer is 6</think><answer>7</answer>", "6", 0.0),   # a number in the reasoning earns nothing
    ("<think>the answer is 6</think>", "6", 0.0),
    ("6", "6", 0.0),                                                    # no answer tags: no answer
    ("<think>x</think><answer>" + "9" * 5000 + "</answer>", "6", 0.0),  # over-long answer is not judged
])
def test_accuracy(text, truth, expected):
    assert accuracy(completion(text), Problem("p", "q", truth)) == expected


def test_accuracy_json_cot():
    assert accuracy(completion('{"thought": "1+2+3", "answer": 6}', "json_cot"), P6) == 1.0


def test_accuracy_uses_reasoning_gym_scorer():
    problem = get_task("reasoning-gym:basic_arithmetic").problems("train", 1, seed=1)[0]
    right = completion(f"<think>x</think><answer>{problem.answer}</answer>")
    wrong = completion("<think>x</think><answer>123456789</answer>")
    assert accuracy(right, problem) == 1.0 and accuracy(wrong, problem) == 0.0


@pytest.mark.parametrize("reasoning, en, zh", [
    ("I think 答案 is 6", 3 / 5, 2 / 5),
    ("all english words", 1.0, 0.0),
    ("全部中文", 0.0, 1.0),
    ("5 + 17 = 22", 1.0, 1.0),          # no words in any language: nothing is mixed
    ("5 + 17 = 22, 所以 22", 0.0, 1.0),
    ("  \n", 0.0, 0.0),                 # blank reasoning: nothing earned
    (None, 0.0, 0.0),                   # no reasoning
])
def test_language_share(reasoning, en, zh):
    assert language_share(reasoning, "en") == pytest.approx(en)
    assert language_share(reasoning, "zh") == pytest.approx(zh)


def test_language_reward_reads_the_reasoning_only():
    c = completion("<think>I think so</think><answer>答案</answer>")
    assert REWARDS["language"](c, P6) == 1.0 and REWARDS["language_zh"](c, P6) == 0.0


def test_weighted_sum_reports_each_reward():
    cs = [completion("<think>x</think> <answer>6</answer>"), completion("<answer>5</answer>")]
    total, parts, failures = score({"accuracy": 1.0, "format": 0.5}, cs, [P6, P6])
    assert total == [1.5, 0.0] and parts == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0]} and failures == 0


def test_a_raising_reward_scores_zero_and_is_counted():
    def broken(c, p):
        raise RuntimeError("boom")
    assert safe(broken, completion("x"), P6) == (0.0, True)
    assert safe(lambda c, p: float("nan"), completion("x"), P6) == (0.0, True)


@pytest.mark.parametrize("spec, expected", [
    ("accuracy", {"accuracy": 1.0}),
    ("accuracy,format=0.5", {"accuracy": 1.0, "format": 0.5}),
    ({"accuracy": 2, "language": 1}, {"accuracy": 2.0, "language": 1.0}),
])
def test_parse_rewards(spec, expected):
    assert parse_rewards(spec) == expected


@pytest.mark.parametrize("spec, message", [("accurasy", "valid rewards"), ("format=x", "weights must be numbers"), ("", "at least one")])
def test_parse_rewards_errors(spec, message):
    with pytest.raises(R1labError, match=message):
        parse_rewards(spec)


@pytest.mark.parametrize("answer, truth, right", [
    ("351137028 * 991808147", "348260565083767116", False),   # GRPO found this: the question's own product
    ("3 + 1 + 19", "23", False), ("5+17+25", "47", False), ("3 \\times 4", "12", False), ("2^{10}", "1024", False),
    ("10 - 2 = 8", "8", False),
    ("348260565083767116", "348260565083767116", True), ("23", "23", True), ("-5", "-5", True), ("1,000", "1000", True),
    ("$47$", "47", True), ("x = 6", "6", True), ("1/2", "0.5", True), ("\\frac{1}{2}", "0.5", True),
])
def test_an_answer_that_is_still_a_computation_is_not_its_result(answer, truth, right):
    from r1lab.rewards.accuracy import accuracy
    from r1lab.types import Completion, Problem

    problem = Problem("p", f"Calculate {answer}", truth)
    assert accuracy(Completion(text="", template="r1_zero", answer=answer), problem) == float(right)
