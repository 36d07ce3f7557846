"""The prompt pool (`prompt_pool`): no rollouts spent on prompts that cannot teach. Pure Python, no torch.

    pool = PromptPool(easy=1.0, hard=0.0, seen=1, explore=0.1)
    problems, skipped = pool.pick(run_problems, prompts_per_step, random.Random(f"{seed}/pool/{round_index}"))
    ... sample and score a group per problem ...
    pool.record(problem.id, pass_rate(totals, parts, weights))

With beta = 0 a group whose G rewards are all equal has advantage 0 everywhere and adds nothing to eq. 1; with
binary accuracy that is every group of a prompt the policy solves every time or never. The pool keeps, per problem
id, the pass rates of its last `seen` groups (`record`), and the step's problems are taken from the task's problem
list in order, as a plain run takes them (a cursor; the list wraps, so a prompt recurs once per epoch), passing over
the ones set aside: seen at least `seen` times with a mean recent pass rate >= `easy` (solved every time) or
<= `hard` (never solved). Never-seen prompts, prompts seen fewer than `seen` times and those in between are drawn.
Each slot of a round is, with probability `explore`, an exploration slot that takes the next problem whatever its
record (how a set-aside prompt can come back: its record is then renewed); with explore = 1 the pool changes
nothing and the problems are exactly a plain run's. Which slots explore is drawn from the `rng` the caller seeds
on (seed, round), never from a global stream: every process picks the same problems, and a resumed run the same
as an uninterrupted one once the record and cursor (`state_dict`) are restored.

The pass rate (`pass_rate`) of a group: with the `accuracy` reward among the rewards, the share of the group with
full accuracy (accuracy >= 1); otherwise the mean of the total reward normalised to [0, 1] on the assumption that
each named reward lies in [0, 1] (the built-in ones do): (total - sum of the negative weights) / sum of |weights|,
clipped. A group with equal rewards strictly inside (0, 1) is therefore kept: the pool sets aside the prompts
solved every time and never (prime-rl's easy and hard pools), not every group without spread.

Differences from the references, and why: prime-rl's buffer moves prompts between easy / normal / hard pools by
the last rollout's average reward and samples a configured share from each; here a set-aside prompt is drawn only
through the exploration share, and the order stays the task's (reproducible, and explore = 1 is a plain run).
DAPO's dynamic sampling (r1lab/algorithms/grpo.py) samples the groups and then drops the ones without spread; the
pool avoids sampling the prompts that had none before, and combines with it (each round is drawn from the pool).
When every problem is set aside, the slots take the problems as they come (as exploration) rather than stop.
"""
from __future__ import annotations

import random


def pass_rate(totals: list[float], parts: dict[str, list[float]], weights: dict[str, float]) -> float:
    """One group's pass rate in [0, 1]: the share with full accuracy when `accuracy` is a reward, else the mean
    normalised total (each reward assumed in [0, 1]; see the module docstring)."""
    if "accuracy" in parts:
        return sum(value >= 1.0 for value in parts["accuracy"]) / len(parts["accuracy"])
    low, span = sum(min(w, 0.0) for w in weights.values()), sum(abs(w) for w in weights.values())
    if span == 0:
        return 0.0
    return sum(min(1.0, max(0.0, (total - low) / span)) for total in totals) / len(totals)


def group_rates(problems: list, totals: list[float], parts: dict[str, list[float]], weights: dict[str, float],
                G: int) -> list[tuple[str, float]]:
    """(problem id, pass rate) for each group of a scored round: rows contiguous by group, G per problem."""
    return [(problem.id, pass_rate(totals[i * G:(i + 1) * G], {k: v[i * G:(i + 1) * G] for k, v in parts.items()},
                                   weights))
            for i, problem in enumerate(problems)]


class PromptPool:
    """Recent pass rates per problem id and the cursor into the problem list; `pick` draws a round from them."""

    def __init__(self, easy: float = 1.0, hard: float = 0.0, seen: int = 1, explore: float = 0.1):
        self.easy, self.hard, self.seen, self.explore = easy, hard, seen, explore
        self.rates: dict[str, list[float]] = {}      # id -> its last `seen` groups' pass rates, oldest first
        self.cursor = 0                               # candidates taken or passed over so far (the list wraps)

    def kind(self, problem_id: str) -> str:
        """new (seen fewer than `seen` times), easy, hard or mixed, by the mean of its recent pass rates."""
        recent = self.rates.get(problem_id, [])
        if len(recent) < self.seen:
            return "new"
        rate = sum(recent) / len(recent)
        return "easy" if rate >= self.easy else "hard" if rate <= self.hard else "mixed"

    def set_aside(self, problem_id: str) -> bool:
        return self.kind(problem_id) in ("easy", "hard")

    def record(self, problem_id: str, rate: float) -> None:
        """A group of this problem was scored: its pass rate joins the record (the last `seen` are kept)."""
        self.rates[problem_id] = (self.rates.get(problem_id, []) + [rate])[-self.seen:]

    def pick(self, problems: list, count: int, rng: random.Random) -> tuple[list, int]:
        """`count` problems from `problems` (any objects with an `id`) at the cursor, and how many candidates were
        passed over as set aside. Each slot draws rng.random() once: below `explore`, it takes the next candidate
        whatever its record; else the first not set aside within one lap of the list (none: the next candidate,
        and the round's remaining slots take the list as it comes)."""
        chosen, skipped, lap, exhausted = [], 0, len(problems), False
        for _ in range(count):
            explore = rng.random() < self.explore or exhausted
            passed = 0
            while not explore and passed < lap and self.set_aside(problems[(self.cursor + passed) % lap].id):
                passed += 1
            if passed == lap:                          # every problem is set aside
                exhausted, passed = True, 0
            skipped += passed
            chosen.append(problems[(self.cursor + passed) % lap])
            self.cursor += passed + 1
        return chosen, skipped

    def sizes(self) -> dict[str, int]:
        """How many problems are set aside now, as solved every time and as never solved."""
        kinds = [self.kind(problem_id) for problem_id in self.rates]
        return {"easy": kinds.count("easy"), "hard": kinds.count("hard")}

    def metrics(self, skipped: int, sampled: int) -> dict:
        """A step's figures: `pool_skipped` candidates passed over, `pool_saved` = skipped / (skipped + sampled),
        the share of the groups a plain run would have sampled to cover the same stretch of the problem list that
        were not sampled, and the sizes of the set-aside sets after the step's groups were recorded."""
        sizes = self.sizes()
        return {"pool_skipped": skipped, "pool_saved": skipped / max(skipped + sampled, 1),
                "pool_easy": sizes["easy"], "pool_hard": sizes["hard"]}

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "rates": {k: list(v) for k, v in self.rates.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.cursor, self.rates = state["cursor"], {k: list(v) for k, v in state["rates"].items()}
