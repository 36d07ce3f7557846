"""Any of reasoning-gym's procedural datasets (offline), scored by the dataset's own `score_answer`.

Train and test come from different seeds (seed and seed + 1_000_003); the generators are random, so
on a small problem space an item can occur in both. Problems carry reasoning-gym's worked solution as
`steps` where the dataset has one (`answer_cot`, e.g. gsm_symbolic), one step per non-empty line.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from r1lab import R1labError
from r1lab.tasks import check_split
from r1lab.types import Problem

TEST_SEED_OFFSET = 1_000_003


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

    def __post_init__(self):
        if self.dataset not in dataset_names():
            close = [d for d in dataset_names() if self.dataset.split("_")[0] in d][:10]
            raise R1labError(f"unknown reasoning-gym dataset {self.dataset!r}"
                             + (f"; similar: {', '.join(close)}" if close else "")
                             + " (list them all with `r1lab tasks`)")

    @property
    def name(self) -> str:
        return f"reasoning-gym:{self.dataset}"

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        import reasoning_gym
        check_split(split)
        seed = seed + (TEST_SEED_OFFSET if split == "test" else 0)
        try:
            data = reasoning_gym.create_dataset(self.dataset, size=n, seed=seed, **self.config)
        except TypeError as e:
            raise R1labError(f"reasoning-gym:{self.dataset}: bad config {self.config}: {e}") from None
        problems = []
        for i, entry in enumerate(data):
            cot = entry.get("metadata", {}).get("answer_cot") or ""
            steps = tuple(line.strip() for line in cot.splitlines() if line.strip())
            problems.append(Problem(id=f"{self.dataset}-{split}-{seed}-{i}", prompt=entry["question"],
                                    answer=str(entry["answer"]), steps=steps,
                                    meta={"reasoning_gym": self.dataset, "entry": entry}))
        return problems
