"""Hugging Face `datasets` as a task source: `hf:NAME_OR_PATH[:CONFIG]`.

    r1lab train grpo --task hf:openai/gsm8k:main          # a hub id and its config (network, or the HF cache offline)
    r1lab train grpo --task hf:data/gsm8k.parquet         # a data file: .parquet, .json, .jsonl, .csv or .arrow
    r1lab train grpo --task hf:data/saved --task-options '{prompt_field: q, answer_field: a}'   # a save_to_disk folder

NAME_OR_PATH is, in this order: a local data file, a folder written by `save_to_disk`, a folder of data
files (`load_dataset(folder)`: files named train.* and test.* are its splits), else a hub id. A path that
does not exist but looks like one (a data file's extension, a leading . / ~) is an error at once, not a
hub look-up. CONFIG is the hub dataset's (or data folder's) configuration, e.g. gsm8k's `main`.

Columns (task options): `prompt_field`, `answer_field` and `steps_field` name them; by default the first
present of prompt/question/problem, answer/solution, and steps/solution (when not the answer) — GSM8K,
TRL-style prompt/answer and MATH-style problem/solution work with no options. No fit is an error listing
the columns and the option that fixes it. `answer_field: null` gives problems without answers.
Splits: the dataset's own `split` ("train") and `test_split` (default: "test" where there is one); a
dataset with no test split is divided by a hash of each prompt (`test_percent`, tasks/base.py split_of).
Answers: GSM8K's "... <<48/2=24>>24 ...\\n#### 1,000" gives the answer "1000" and the rationale lines, the
calculator annotations removed, as reference steps (cold start puts the rationale in the reasoning and only
the number in <answer>); a solution with \\boxed{...} gives the last box's content as the answer and the
solution's lines as steps. Rows are read in the dataset's order (seed is unused: the data is fixed).
Unlike jsonl, other columns are not kept in `meta`: rewards read meta keys ("code", "agentjo"), and a
dataset's own column of that name must not turn a math problem into a code one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from r1lab import R1labError
from r1lab.tasks.base import check_split, split_of
from r1lab.tasks.jsonl import ANSWER_NAMES, NUMBER, PROMPT_NAMES, TEXT, row_field, steps_of
from r1lab.types import Problem

FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}
STEPS_NAMES = ("steps", "solution")
GSM8K_FINAL = re.compile(r"^####[ \t]*(.*?)\s*$", re.M)           # "#### 72", the last line of a GSM8K answer
CALCULATOR = re.compile(r"<<[^<>\n]*>>")                           # GSM8K's calculator annotations, "<<48/2=24>>"
COMMA_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")   # "1,000": the commas go


def source_and_config(dataset: str) -> tuple[str, str | None]:
    """`NAME_OR_PATH[:CONFIG]` -> (name or path, config); an existing path is taken whole, colons and all."""
    if Path(dataset).expanduser().exists() or ":" not in dataset:
        return dataset, None
    source, _, config = dataset.rpartition(":")
    return source, config or None


def load_splits(dataset: str) -> dict:
    """{split name: datasets.Dataset} of `NAME_OR_PATH[:CONFIG]`; any failure is one error naming the spec."""
    import datasets

    source, config = source_and_config(dataset)
    path, spec = Path(source).expanduser(), f"hf:{dataset}"
    saved = path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())
    if config and (path.is_file() or saved):
        raise R1labError(f"{spec}: a configuration (:{config}) belongs to a hub dataset or a data folder; "
                         f"{source} is a {'file' if path.is_file() else 'save_to_disk folder'} and has none")
    if path.is_file() and path.suffix.lower() not in FILE_BUILDERS:
        raise R1labError(f"{spec}: {source} is not a data file r1lab reads; expected one ending in "
                         f"{', '.join(FILE_BUILDERS)}, a save_to_disk folder, a data folder or a hub id")
    if not path.exists() and (source.startswith((".", "/", "~")) or path.suffix.lower() in FILE_BUILDERS):
        raise R1labError(f"{spec}: {source}: no such file or folder")
    try:
        if path.is_file():
            loaded = datasets.load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path))
        elif saved:
            loaded = datasets.load_from_disk(str(path))
        else:                                                          # a data folder or a hub id
            loaded = datasets.load_dataset(str(path) if path.is_dir() else source, config)
    except Exception as e:                               # datasets raises many kinds; each is about the user's input
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise R1labError(f"{spec}: could not load it ({type(e).__name__}: {reason}); expected a data file "
                         f"({', '.join(FILE_BUILDERS)}), a save_to_disk folder, a data folder, or a hub id (with "
                         "network access, or cached and HF_HUB_OFFLINE=1) with its :CONFIG if it has several") from None
    return {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in text (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, first = 0, start + len("\\boxed{")
    for i in range(first - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[first:i].strip()
    return None


def lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def parse_answer(text: str, where: str, field: str) -> tuple[str, tuple[str, ...]]:
    """(answer, reference steps) of an answer text: GSM8K's "rationale\\n#### 42", a \\boxed{} solution, or as it is."""
    finals = list(GSM8K_FINAL.finditer(text))
    if finals:
        final = finals[-1].group(1)
        if not final:
            raise R1labError(f"{where}: field {field!r} has a '####' line with no answer after it")
        final = final.replace(",", "") if COMMA_NUMBER.fullmatch(final) else final
        return final, lines(CALCULATOR.sub("", text[:finals[-1].start()]))
    boxed = last_boxed(text)
    if boxed:
        return boxed, lines(text)
    return text, ()


@dataclass(frozen=True)
class HFDataset:
    dataset: str                        # NAME_OR_PATH[:CONFIG]
    prompt_field: str = "auto"          # column of the question; auto: the first of prompt, question, problem
    answer_field: str | None = "auto"   # column of the answer; auto: answer, else solution; null: no answers
    steps_field: str | None = "auto"    # column of reference steps; auto: steps, else solution (not the answer's)
    split: str = "train"                # the dataset's split that is r1lab's train split
    test_split: str | None = None       # the dataset's split that is r1lab's test split; default "test" if it has one
    test_percent: int = 10              # with no test split: share of `split`'s prompts held out, by a hash

    def __post_init__(self):
        if not 0 < self.test_percent < 100:
            raise R1labError(f"{self.name}: option test_percent must be in 1..99, got {self.test_percent!r}")

    @property
    def name(self) -> str:
        return f"hf:{self.dataset}"

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The first n problems of the split, in the dataset's order. Each field read is type-checked: an
        error names the dataset, split, row and column and what was expected."""
        check_split(split)
        splits = load_splits(self.dataset)
        source, divided = self.source_split(splits, split)
        data = splits[source]
        prompt, answer, steps = self.columns(data.column_names)
        problems = []
        for index, row in enumerate(data.select_columns([c for c in dict.fromkeys((prompt, answer, steps)) if c])):
            problem = self.problem(f"{self.name} ({source} split, row {index})", f"{self.dataset}:{source}:{index}",
                                   row, prompt, answer, steps)
            if not divided or split_of(problem.prompt, self.test_percent) == split:
                problems.append(problem)
            if n is not None and len(problems) == n:
                break
        return problems

    def source_split(self, splits: dict, split: str) -> tuple[str, bool]:
        """(the dataset's split that gives r1lab's `split`, whether it is divided by hash with the other)."""
        names = sorted(splits)
        if self.split not in splits:
            raise R1labError(f"{self.name}: no split {self.split!r}; its splits: {names}; choose one with "
                             "--task-options '{split: NAME}'")
        test = self.test_split or ("test" if "test" in splits else None)
        if test is not None and test not in splits:
            raise R1labError(f"{self.name}: option test_split {test!r} is not a split; its splits: {names}")
        if test == self.split:
            raise R1labError(f"{self.name}: split and test_split are both {test!r}; a test split must hold other rows")
        if test is None:
            return self.split, True
        return (self.split if split == "train" else test), False

    def columns(self, present: list[str]) -> tuple[str, str | None, str | None]:
        """(prompt, answer, steps) columns: the options' names, checked, or the usual ones found."""
        def pick(option: str, usual: tuple, exclude=None) -> str | None:
            chosen = getattr(self, option)
            if chosen is None:
                return None
            if chosen != "auto":
                if chosen not in present:
                    raise R1labError(f"{self.name}: option {option} {chosen!r} is not a column; its columns: {present}")
                return chosen
            return next((c for c in usual if c in present and c != exclude), None)
        prompt, answer = pick("prompt_field", PROMPT_NAMES), pick("answer_field", ANSWER_NAMES)
        missing = [option for option, column in (("prompt_field", prompt), ("answer_field", answer))
                   if column is None and getattr(self, option) is not None]
        if missing:
            usual = {"prompt_field": PROMPT_NAMES, "answer_field": ANSWER_NAMES}
            what = " or ".join(option.removesuffix("_field") for option in missing)
            looked = "; ".join(", ".join(usual[option]) for option in missing)
            raise R1labError(f"{self.name}: no {what} column among its columns {present} (looked for {looked}); name "
                             "them with --task-options '{prompt_field: <column>, answer_field: <column>}' "
                             "(answer_field: null for a task without answers)")
        return prompt, answer, pick("steps_field", STEPS_NAMES, exclude=answer)

    def problem(self, where: str, id: str, row: dict, prompt_field: str, answer_field: str | None,
                steps_field: str | None) -> Problem:
        prompt = row_field(row, prompt_field, where, TEXT, "a string")
        answer, steps = None, ()
        if answer_field is not None:
            value = row_field(row, answer_field, where, TEXT + NUMBER, "a string or number")
            answer, steps = parse_answer(value, where, answer_field) if isinstance(value, str) else (str(value), ())
        if steps_field is not None:
            steps = steps_of(row, steps_field, where) or steps
        return Problem(id=id, prompt=prompt, answer=answer, steps=steps)
