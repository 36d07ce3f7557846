import json

import pytest

from r1lab import R1labError
from r1lab.cli import main
from r1lab.evaluate import evaluate, mixes_languages, reflects, summarise
from r1lab.tasks import get_task
from r1lab.types import Completion
from r1lab.report import write_report


def test_reflection_and_language_mixing_markers():
    assert reflects("Wait, wait. Let me check") and reflects("I should double-check") and not reflects("awaited")
    assert mixes_languages("I think 答案 is 6") and not mixes_languages("all English") and not mixes_languages(None)


def test_summarise_hand_computed():
    rows = [{"correct": [1, 0], "score": [1, 0.5], "answers": ["6", "7"], "format": [1, 1], "lengths": [10, 20],
             "texts": ["wait", "x"], "reasonings": ["wait", "x"]},
            {"correct": [1, 1], "score": [1, 1], "answers": ["3", "3.0"], "format": [0, 1], "lengths": [30, 40],
             "texts": ["a", "b"], "reasonings": ["a", "b"]}]
    s = summarise(rows, 2)
    assert s["pass@1"] == 0.75 and s["cons@2"] == 1.0 and s["pass@2"] == 1.0   # tie on problem 1: first answer "6"
    assert s["score"] == (0.75 + 1) / 2
    assert s["format"] == 0.75 and s["length_mean"] == 25 and s["length_median"] == 25 and s["reflection"] == 0.25


def test_eval_cli_prints_the_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "tiny-random", "--task", "arithmetic", "--samples", "3", "--problems", "4",
            "--max-new-tokens", "8", "--out", str(out)]
    main(args)
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "cons@3" in printed and "tiny-random" in printed
    result = json.loads((out / "eval.json").read_text())
    assert result["models"]["tiny-random"]["problems"] == 4
    whole = (out / "tiny-random.jsonl").read_text()
    (out / "tiny-random.jsonl").write_text("".join(whole.splitlines(keepends=True)[:2]))   # as if killed early
    main(args)
    again = json.loads((out / "eval.json").read_text())["models"]["tiny-random"]
    assert again["problems"] == 4 and (out / "tiny-random.jsonl").read_text() == whole   # the same samples


TINY = {"models": ["tiny-random"], "task_spec": "arithmetic", "samples": 2, "problems": 4, "max_new_tokens": 6}


def test_samples_do_not_depend_on_batching(tmp_path):
    for batch in (1, 4):
        evaluate(**TINY, out=str(tmp_path / str(batch)), batch_problems=batch)
    assert (tmp_path / "1" / "tiny-random.jsonl").read_text() == (tmp_path / "4" / "tiny-random.jsonl").read_text()


def test_resuming_with_other_settings_is_refused(tmp_path):
    evaluate(**TINY, out=str(tmp_path))
    with pytest.raises(R1labError, match=r"tiny-random.jsonl was sampled with other settings: samples 2 -> 3, "
                                         r"temperature 0.6 -> 1.0"):
        evaluate(**{**TINY, "samples": 3}, temperature=1.0, out=str(tmp_path))
    with pytest.raises(R1labError, match=r"task_options \{\} -> \{'high': 9\}"):
        evaluate(**TINY, task_options={"high": 9}, out=str(tmp_path))


def test_a_test_split_without_problems_is_an_error(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text('{"prompt": "a", "answer": "1"}\n')                  # its only row falls in the train split
    with pytest.raises(R1labError, match="no test problems"):
        evaluate(**{**TINY, "task_spec": f"jsonl:{data}"}, out=str(tmp_path))


def test_partial_credit_is_a_score_column_never_a_correct_answer():
    from r1lab.evaluate import score_group
    from r1lab.rewards import REWARDS
    problem = get_task("reasoning-gym:chain_sum").problems("test", 1)[0]

    def reply(answer):
        return Completion(f"<think>x</think> <answer>{answer}</answer>", "r1_zero", "x", answer)
    partial, right, wrong = reply(problem.answer + " 0 1 2"), reply(problem.answer), reply("nonsense")
    credit = len(problem.answer) / len(problem.answer + " 0 1 2")
    assert REWARDS["accuracy"](partial, problem) == 0.0 and REWARDS["accuracy_partial"](partial, problem) == credit
    row = score_group(problem, [partial, right, wrong])
    assert row["correct"] == [0.0, 1.0, 0.0] and row["score"] == [credit, 1.0, 0.0]
    s = summarise([{**score_group(problem, [partial, partial]), "lengths": [1, 1]}], 2)
    assert s["pass@1"] == s["pass@2"] == s["cons@2"] == 0.0 and s["score"] == credit


def test_report_writes_plots_and_markdown(tmp_path):
    stage = tmp_path / "grpo"
    stage.mkdir()
    stage.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "reward": i / 10, "accuracy": i / 20, "completion_length": 50 + i, "reflection": 0.1})
        + "\n" for i in range(1, 6)))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({
        "task": "arithmetic", "samples": 4, "temperature": 0.6, "top_p": 0.95,
        "models": {"base": {"pass@1": 0.2, "pass@1_ci": [0.1, 0.3], "cons@4": 0.25, "cons@4_ci": [0.1, 0.4],
                            "pass@4": 0.4, "format": 0.5, "length_mean": 30, "length_median": 28,
                            "reflection": 0.0, "language_mixing": 0.0}}}))
    report = write_report(str(tmp_path))
    for name in ("reward.png", "length.png", "reflection.png", "eval.png"):
        assert (tmp_path / name).stat().st_size > 5000
    text = report.read_text()
    assert "![Reward and accuracy over training](reward.png)" in text and "cons@4" in text


def test_a_torn_last_line_is_cut_before_the_eval_resumes(tmp_path):
    """A kill mid-write leaves half a row: resuming drops it and appends whole rows after it."""
    from r1lab.evaluate import read_samples
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"settings": {"samples": 2}}) + "\n" + json.dumps({"id": "a"}) + "\n" + '{"id": "b", "cor')
    assert read_samples(path, {"samples": 2}) == [{"id": "a"}]
    with path.open("a") as f:
        f.write(json.dumps({"id": "c"}) + "\n")
    assert [r["id"] for r in read_samples(path, {"samples": 2})] == ["a", "c"]
