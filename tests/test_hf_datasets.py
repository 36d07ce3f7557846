"""Hugging Face `datasets` as a task source (r1lab/tasks/hf.py), and conversational `messages` rows for SFT.
Every dataset is a small local file or folder made here: no hub access is needed or tried."""
import json

import pytest

datasets = pytest.importorskip("datasets")
pandas = pytest.importorskip("pandas")

from r1lab import R1labError
from r1lab.tasks import get_task
from r1lab.tasks.hf import parse_answer
from r1lab.templates import get_template

GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
               "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "A shop sells 40 boxes of 25 pens each. How many pens does it sell?",
     "answer": "It sells 40 * 25 = <<40*25=1000>>1000 pens.\n#### 1,000"},
] + [{"question": f"Sam has {k} apples and buys {k + 1} more. How many apples does Sam have?",
      "answer": f"Sam has {k} + {k + 1} = <<{k}+{k + 1}={2 * k + 1}>>{2 * k + 1} apples.\n#### {2 * k + 1}"}
     for k in range(1, 40)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """load_dataset writes Arrow copies of data files into its cache: a temporary one here, not the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def gsm8k_parquet(tmp_path):
    path = tmp_path / "gsm8k.parquet"
    pandas.DataFrame(GSM8K).to_parquet(path)
    return path


def test_gsm8k_answers_give_the_number_and_the_rationale_without_calculator_notes():
    answer, steps = parse_answer(GSM8K[0]["answer"], "here", "answer")
    assert answer == "72"
    assert steps == ("Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert parse_answer(GSM8K[1]["answer"], "here", "answer") == ("1000", ("It sells 40 * 25 = 1000 pens.",))
    assert parse_answer("Add them.\n#### -3.5", "here", "answer") == ("-3.5", ("Add them.",))


def test_boxed_solutions_give_the_last_box_and_plain_answers_stay_as_they_are():
    assert parse_answer("So $x = 2$.\nHence $\\boxed{\\frac{1}{2}}$.", "here", "solution") == \
        ("\\frac{1}{2}", ("So $x = 2$.", "Hence $\\boxed{\\frac{1}{2}}$."))
    assert parse_answer("42", "here", "answer") == ("42", ())
    with pytest.raises(R1labError, match="here: field 'answer' has a '####' line with no answer"):
        parse_answer("Steps.\n####", "here", "answer")


def test_a_gsm8k_shaped_parquet_needs_no_options_and_splits_leak_free(gsm8k_parquet):
    task = get_task(f"hf:{gsm8k_parquet}")
    train, test = task.problems("train"), task.problems("test")
    assert len(train) + len(test) == len(GSM8K) and test                     # one split only: divided by hash
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    by_prompt = {p.prompt: p for p in train + test}
    natalia = by_prompt[GSM8K[0]["question"]]
    assert natalia.answer == "72" and natalia.steps[0] == "Natalia sold 48/2 = 24 clips in May."
    assert by_prompt[GSM8K[1]["question"]].answer == "1000" and natalia.meta == {}
    assert len(task.problems("train", 3)) == 3 and len({p.id for p in train + test}) == len(GSM8K)


def test_cold_start_from_gsm8k_puts_the_rationale_in_the_reasoning_and_only_the_number_in_the_answer(
        gsm8k_parquet, tmp_path):
    from r1lab.cold_start import write_cold_start
    written, skipped = write_cold_start(f"hf:{gsm8k_parquet}", 50, str(tmp_path / "cold.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "cold.jsonl").read_text().splitlines()]
    assert written == len(rows) > 0 and skipped == 0
    template = get_template("r1_zero")
    for row in rows:
        reasoning, answer = template.parse(row["completion"])
        assert answer == row["answer"] and answer.lstrip("-").isdigit()
        assert "<<" not in reasoning and "####" not in row["completion"]
    natalia = next(row for row in rows if row["prompt"] == GSM8K[0]["question"])
    assert "Natalia sold 48/2 = 24 clips in May" in template.parse(natalia["completion"])[0]


def test_a_gsm8k_shaped_local_parquet_trains_with_one_flag(gsm8k_parquet, tmp_path):
    from r1lab.cli import main
    out = tmp_path / "run"
    main(["train", "grpo", "--model", "tiny-random", "--task", f"hf:{gsm8k_parquet}", "--steps", "1",
          "--max-new-tokens", "8", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1] and (out / "checkpoint").is_dir()


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json", "arrow", "save_to_disk", "folder"])
def test_every_local_source_gives_the_same_problems(tmp_path, kind):
    rows = [{"problem": f"What is {k} squared?", "solution": f"{k} times {k} is $\\boxed{{{k * k}}}$."}
            for k in range(30)]
    frame = pandas.DataFrame(rows)
    path = tmp_path / f"data.{kind}"
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "arrow":
        datasets.Dataset.from_pandas(frame).to_parquet(tmp_path / "x.parquet")
        datasets.load_dataset("parquet", data_files=str(tmp_path / "x.parquet"), cache_dir=str(tmp_path / "c"))
        path = next((tmp_path / "c").rglob("*.arrow"))                         # an Arrow file as datasets writes it
    elif kind == "save_to_disk":
        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    else:                                                                      # a folder of data files: train.*, test.*
        path.mkdir()
        frame[:20].to_parquet(path / "train.parquet")
        frame[20:].to_parquet(path / "test.parquet")
    task = get_task(f"hf:{path}")
    problems = task.problems("train") + task.problems("test")
    assert sorted(p.answer for p in problems) == sorted(str(k * k) for k in range(30))
    solutions = {row["problem"]: row["solution"] for row in rows}
    assert all(p.steps == (solutions[p.prompt],) for p in problems)            # a one-line solution: one step
    if kind == "folder":                                                       # the dataset's own splits
        assert {p.answer for p in task.problems("test")} == {str(k * k) for k in range(20, 30)}


def test_a_dataset_dict_uses_its_own_splits_and_the_split_options(tmp_path):
    rows = lambda ks: datasets.Dataset.from_list([{"prompt": f"q{k}", "answer": k} for k in ks])
    datasets.DatasetDict({"train": rows(range(10)), "validation": rows(range(10, 15)),
                          "test": rows(range(15, 20))}).save_to_disk(str(tmp_path / "saved"))
    spec = f"hf:{tmp_path / 'saved'}"
    assert [p.answer for p in get_task(spec).problems("test")] == [str(k) for k in range(15, 20)]
    assert [p.answer for p in get_task(spec, test_split="validation").problems("test")] == [str(k) for k in range(10, 15)]
    assert [p.answer for p in get_task(spec, split="validation").problems("train")] == [str(k) for k in range(10, 15)]
    assert get_task(spec).problems("train")[0].id == f"{tmp_path / 'saved'}:train:0"
    with pytest.raises(R1labError, match=r"no split 'dev'; its splits: \['test', 'train', 'validation'\]; "
                                         r"choose one with --task-options '\{split: NAME\}'"):
        get_task(spec, split="dev").problems("train")
    with pytest.raises(R1labError, match="option test_split 'dev' is not a split"):
        get_task(spec, test_split="dev").problems("test")
    with pytest.raises(R1labError, match="split and test_split are both 'train'"):
        get_task(spec, test_split="train").problems("test")


def test_columns_map_through_options_and_a_separate_solution_column_gives_the_steps(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{k}", "solution": f"Step one.\nStep two gives {k}.",
                                        "answer": str(k), "q": f"other {k}"}) + "\n" for k in range(20)))
    problem = next(iter(get_task(f"hf:{path}").problems("train", 1)))
    assert problem.prompt.startswith("p") and problem.steps == ("Step one.", f"Step two gives {problem.answer}.")
    mapped = get_task(f"hf:{path}", prompt_field="q", answer_field="answer", steps_field=None).problems("train", 1)[0]
    assert mapped.prompt.startswith("other ") and mapped.steps == ()
    assert get_task(f"hf:{path}", answer_field=None).problems("train", 1)[0].answer is None


def test_errors_list_the_columns_and_name_the_option_that_fixes_them(tmp_path):
    path = tmp_path / "odd.csv"
    pandas.DataFrame({"input": ["a", "b"], "target": ["1", "2"]}).to_csv(path, index=False)
    with pytest.raises(R1labError, match=r"no prompt or answer column among its columns \['input', 'target'\] .*"
                                         r"--task-options '\{prompt_field: <column>, answer_field: <column>\}'"):
        get_task(f"hf:{path}").problems("train")
    with pytest.raises(R1labError, match=r"option prompt_field 'question' is not a column; its columns: \['input', 'target'\]"):
        get_task(f"hf:{path}", prompt_field="question").problems("train")
    assert get_task(f"hf:{path}", prompt_field="input", answer_field="target", test_percent=50).problems("train")
    (tmp_path / "typed.jsonl").write_text('{"prompt": "a", "answer": [1, 2]}\n')
    with pytest.raises(R1labError, match=r"typed.jsonl \(train split, row 0\): field 'answer' must be a string or number, got a list"):
        get_task(f"hf:{tmp_path / 'typed.jsonl'}").problems("train")


@pytest.mark.parametrize("spec, message", [
    ("hf:missing/data.parquet", r"hf:missing/data.parquet: missing/data.parquet: no such file or folder"),
    ("hf:./nowhere", r"no such file or folder"),
    ("hf:{tmp}/notes.txt", r"is not a data file r1lab reads; expected one ending in .parquet"),
    ("hf:{tmp}/broken.parquet", r"could not load it \(.*\); expected a data file"),
    ("hf:{tmp}/broken.parquet:main", r"a configuration \(:main\) belongs to a hub dataset or a data folder"),
])
def test_bad_sources_are_one_error_naming_the_spec(tmp_path, spec, message):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(R1labError, match=message):
        get_task(spec.format(tmp=tmp_path)).problems("train")


def test_jsonl_missing_field_error_names_the_option(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "2 + 2?", "answer": "4"}\n')
    with pytest.raises(R1labError, match=r"q.jsonl, line 1: missing field 'prompt' .*"
                                         r"--task-options '\{prompt_field: question\}'"):
        get_task(f"jsonl:{tmp_path / 'q.jsonl'}").problems("train")
    (tmp_path / "a.jsonl").write_text('{"prompt": "2 + 2?", "solution": "4"}\n')
    with pytest.raises(R1labError, match=r"missing field 'answer' .*'\{answer_field: solution\}', or '\{answer_field: null\}'"):
        get_task(f"jsonl:{tmp_path / 'a.jsonl'}").problems("train")


def test_sft_trains_one_step_on_messages_rows(tmp_path):
    from r1lab.algorithms.sft import load_pairs, train_sft
    from r1lab.config import SFTConfig, load_config
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {k} + 1?"},
                                                     {"role": "assistant", "content": f"<think> {k} + 1 </think> "
                                                                                      f"<answer> {k + 1} </answer>"}]}) + "\n"
                            for k in range(4)))
    assert load_pairs(str(data))[0] == ("What is 0 + 1?", "", "<think> 0 + 1 </think> <answer> 1 </answer>")
    cfg = load_config(SFTConfig, None, {"model": "tiny-random", "data": str(data), "batch_size": 4,
                                        "micro_batch_size": 4, "out": str(tmp_path / "sft")})
    train_sft(cfg)
    assert len((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("row, message", [
    ({"messages": "hi"}, r"line 2: field 'messages' must be a list of \{role, content\} objects"),
    ({"messages": [{"content": "hi"}]}, r"line 2: field 'messages', item 0: expected an object with a string 'role'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
     r"line 2: field 'messages', item 1 \(assistant\): 'content' must be a string"),
    ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "yo"}]},
     r"line 2: field 'messages' must be one user turn then one assistant turn, got roles \['system', 'user', 'assistant'\]"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"line 2: field 'messages' .*got roles \['user'\]"),
    ({"messages": [], "prompt": "hi"}, r"line 2: a row has either 'messages' or 'prompt' and 'completion', not both"),
    ({"text": "hi"}, r"line 2: field 'prompt' must be a string \(or give the row as 'messages'"),
])
def test_malformed_messages_rows_are_one_error_naming_file_line_and_field(tmp_path, row, message):
    from r1lab.algorithms.sft import load_pairs
    data = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(R1labError, match=r"chat.jsonl, " + message):
        load_pairs(str(data))


def test_a_hub_id_that_cannot_be_reached_is_one_error_naming_the_spec(tmp_path):
    """Offline (HF_HUB_OFFLINE=1, read when datasets is imported: a fresh process) and not cached."""
    import os
    import subprocess
    import sys
    code = ("from r1lab.tasks import get_task\n"
            "from r1lab import R1labError\n"
            "try:\n    get_task('hf:openai/gsm8k:main').problems('train', 2)\n"
            "except R1labError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("hf:openai/gsm8k:main: could not load it (") and "a hub id (with network access" in out
