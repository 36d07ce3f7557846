"""Any of reasoning-gym's procedural datasets (offline), scored by the dataset's own `score_answer`.

Train and test are the items of one seeded stream (reasoning-gym builds item i from Random(seed + i)),
divided by a hash of the question text (`test_percent`), so no question is in both splits whatever the
seeds and sizes. A test split holds each question once; a train split may repeat one (a small problem
space is then trained on for several epochs). A dataset with few distinct questions says so when asked
for more test problems than it has (`distinct_test_questions`). Problems carry reasoning-gym's worked
solution as `steps` where the dataset has one (`answer_cot`, e.g. gsm_symbolic), one step per non-empty line.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from r1lab import R1labError
from r1lab.tasks.base import check_split, split_of
from r1lab.types import Problem


def dataset_names() -> list[str]:
    from reasoning_gym.factory import DATASETS
    return sorted(DATASETS)


def score_gym(problem: Problem, answer: str) -> float:
    import reasoning_gym
    return float(reasoning_gym.get_score_answer_fn(problem.meta["reasoning_gym"])(answer, problem.meta["entry"]))


@dataclass(frozen=True)
class ReasoningGym:
    dataset: str
    config: dict = field(default_factory=dict)   # keyword arguments for reasoning_gym.create_dataset
    test_percent: int = 10                       # share of all questions in the test split, by a hash of the text

    def __post_init__(self):
        if self.dataset not in dataset_names():
            close = [d for d in dataset_names() if self.dataset.split("_")[0] in d][:10]
            raise R1labError(f"unknown reasoning-gym dataset {self.dataset!r}"
                             + (f"; similar: {', '.join(close)}" if close else "")
                             + " (list them all with `r1lab tasks`)")
        if not 0 < self.test_percent < 100:
            raise R1labError(f"{self.name}: test_percent must be in 1..99, got {self.test_percent}")

    @property
    def name(self) -> str:
        return f"reasoning-gym:{self.dataset}"

    def _items(self, split: str, draws: int, seed: int):
        """(index, entry) of each of the stream's first `draws` items whose question is in `split`."""
        import reasoning_gym
        try:
            data = reasoning_gym.create_dataset(self.dataset, size=draws, seed=seed, **self.config)
        except TypeError as e:
            raise R1labError(f"{self.name}: bad config {self.config}: {e}") from None
        for i in range(draws):
            entry = data[i]
            if split_of(entry["question"], self.test_percent) == split:
                yield i, entry

    def distinct_test_questions(self, draws: int = 2000, seed: int = 0) -> int:
        """How many distinct questions the test split has among the stream's first `draws` items: for a small
        problem space, the most test problems there are; near draws * test_percent / 100, a larger space."""
        return len({entry["question"] for _, entry in self._items("test", draws, seed)})

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        draws = 1000 + 1000 * n // min(self.test_percent, 100 - self.test_percent)   # 10x what the smaller split needs
        found: dict = {}
        for i, entry in self._items(split, draws, seed):
            cot = entry.get("metadata", {}).get("answer_cot") or ""
            steps = tuple(line.strip() for line in cot.splitlines() if line.strip())
            problem = Problem(id=f"{self.dataset}-{seed}-{i}", prompt=entry["question"], answer=str(entry["answer"]),
                              steps=steps, meta={"reasoning_gym": self.dataset, "entry": entry})
            found.setdefault(entry["question"] if split == "test" else i, problem)
            if len(found) == n:
                break
        if len(found) < n:
            what = "distinct test questions" if split == "test" else "train items"
            raise R1labError(f"{self.name}: asked for {n} {split} problems, but the first {draws} items hold only "
                             f"{len(found)} {what}; ask for fewer, or change test_percent")
        return list(found.values())
