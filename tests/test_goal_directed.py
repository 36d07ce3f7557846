import json

import pytest

from r1lab import R1labError
from r1lab.algorithms.goal_directed import Trajectory, augment, goal_shifts, hindsight, split_steps, start_shifts, to_row, write_goal_directed
from r1lab.tasks import get_task
from r1lab.templates import get_template

ARITHMETIC = get_task("arithmetic")
TALK = Trajectory("Calculate 1 + 2 + 3", "6", ("Firstly, I would calculate 1 + 2 = 3", "Then, I would calculate 3 + 3 = 6",
                                            "The answer is 6"))


def view(example):
    """The talk's slide layout: prompt lines, completion lines."""
    return ["Question: " + example.prompt, *example.prefix_steps], list(example.completion_steps)


def test_start_state_shift_is_the_talks_slide():
    assert [view(e) for e in start_shifts(TALK)[:3]] == [
        (["Question: Calculate 1 + 2 + 3"],
         ["Firstly, I would calculate 1 + 2 = 3", "Then, I would calculate 3 + 3 = 6", "The answer is 6"]),
        (["Question: Calculate 1 + 2 + 3", "Firstly, I would calculate 1 + 2 = 3"],
         ["Then, I would calculate 3 + 3 = 6", "The answer is 6"]),
        (["Question: Calculate 1 + 2 + 3", "Firstly, I would calculate 1 + 2 = 3", "Then, I would calculate 3 + 3 = 6"],
         ["The answer is 6"]),
    ]


def test_goal_state_shift_is_the_talks_slide():
    [shifted] = goal_shifts(TALK, ARITHMETIC)
    assert shifted.prompt == "Calculate 1 + 2" and shifted.answer == "3"
    assert view(start_shifts(shifted)[1]) == (["Question: Calculate 1 + 2", "Firstly, I would calculate 1 + 2 = 3"],
                                              ["The answer is 3"])


def test_hindsight_relabelling_is_the_talks_slide():
    wrong = Trajectory("Calculate 1 + 2 + 3", "5", ("Firstly, I would calculate 1 + 2 = 3",
                                                   "Then, I would calculate 3 + 2 = 5", "The answer is 5"))
    relabelled = hindsight(wrong, ARITHMETIC)
    assert relabelled.prompt == "Calculate 1 + 2 + 2" and relabelled.answer == "5" and relabelled.steps == wrong.steps
    assert [e.augmentation for e in augment(wrong, False, ARITHMETIC, ("start", "goal", "hindsight"))] == ["hindsight"]


def test_wrong_arithmetic_cannot_be_relabelled():
    bad = Trajectory("Calculate 1 + 2 + 3", "7", ("Firstly, I would calculate 1 + 2 = 4", "Then, I would calculate 4 + 3 = 7"))
    assert hindsight(bad, ARITHMETIC) is None


def test_rewriting_never_emits_a_test_problem():
    from r1lab.tasks.arithmetic import Arithmetic, expression_split, make_problem
    for p in Arithmetic().problems("test", 200):
        a, b, c = map(int, p.meta["expression"].split(" + "))
        for items in ([a, "+", b, "+", c], [c, "+", b, "+", a]):         # the test problem, and a reordering of it
            wrong = Trajectory("Calculate 1 + 1 + 1", p.answer, make_problem(items).steps)
            assert hindsight(wrong, ARITHMETIC) is None and augment(wrong, False, ARITHMETIC, ("hindsight",)) == []
    relabelled = [hindsight(Trajectory("Calculate 1 + 1 + 1", p.answer, p.steps), ARITHMETIC)
                  for p in Arithmetic().problems("train", 50)]
    assert [r.prompt for r in relabelled] == [p.prompt for p in Arithmetic().problems("train", 50)]
    shifted = [s for p in Arithmetic(operands=4).problems("train", 200)
               for s in goal_shifts(Trajectory(p.prompt, p.answer, p.steps), ARITHMETIC)]
    assert len(shifted) > 200 and all(expression_split(s.prompt.removeprefix("Calculate "), 10) == "train" for s in shifted)


def test_other_tasks_say_they_cannot_rewrite():
    gym = get_task("reasoning-gym:basic_arithmetic")
    with pytest.raises(R1labError, match="goal-state shift is not supported"):
        goal_shifts(TALK, gym)
    assert len(augment(TALK, True, gym, ("start",))) == 4


def test_split_steps_by_lines_or_sentences():
    assert split_steps("a = 1\nb = 2") == ("a = 1", "b = 2")
    assert split_steps("First this. Then that! Done?") == ("First this.", "Then that!", "Done?")


def test_rows_put_the_steps_in_the_prefix(tmp_path):
    row = to_row(start_shifts(TALK)[1], get_template("r1_zero"))
    assert row["prefix"] == "<think> Firstly, I would calculate 1 + 2 = 3"
    assert row["completion"] == "Then, I would calculate 3 + 3 = 6 The answer is 6 </think> <answer> 6 </answer>"


@pytest.mark.parametrize("lines", [[], ['{"prompt": "Calculate 1 + 2", "answer": "3", "completion": "no tags at all"}']])
def test_no_examples_is_an_error_naming_the_input(tmp_path, lines):
    source = tmp_path / "trajectories.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(R1labError, match=r"trajectories.jsonl: no examples"):
        write_goal_directed(str(source), str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_command_writes_augmented_rows(tmp_path):
    from r1lab.cli import main
    from r1lab.cold_start import write_cold_start
    write_cold_start("arithmetic", 5, str(tmp_path / "cold.jsonl"))
    main(["data", "goal-directed", str(tmp_path / "cold.jsonl"), "--out", str(tmp_path / "gd.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "gd.jsonl").read_text().splitlines()]
    kinds = {r["augmentation"] for r in rows}
    assert {"original", "start", "goal", "goal+start"} <= kinds and len(rows) > 5 * 4
