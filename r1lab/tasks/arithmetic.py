"""Built-in arithmetic: the talk's "Calculate 1 + 2 + 3", generalised, with a reference solution.

Each problem is a random expression (seeded) with `operands` numbers in [low, high], operators drawn
from `operators` (any of "+-*"), and with probability `parentheses` one parenthesised group. The
reference steps follow the talk's goal-directed examples, one step per operation in evaluation order
(parentheses first, then *, then + and - left to right):
    "Firstly, I would calculate 1 + 2 = 3", "Then, I would calculate 3 + 3 = 6", "The answer is 6".

Train and test are disjoint by construction: an expression's split is a hash of its text, so no
seed or size can put a test expression into train.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from r1lab import R1labError
from r1lab.tasks import check_split
from r1lab.types import Problem

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def split_of(expression: str, test_percent: int) -> str:
    bucket = int(hashlib.sha256(expression.encode()).hexdigest(), 16) % 100
    return "test" if bucket < test_percent else "train"


def render(items: list) -> str:
    """Infix text of a flat item list [number, op, number, ...] whose numbers may be nested groups."""
    return " ".join(f"({render(x)})" if isinstance(x, list) else str(x) for x in items)


def solve(items: list, calculations: list[str]) -> int:
    """Evaluate items in the order a person would, appending 'a op b = c' for each operation."""
    items = [solve(x, calculations) if isinstance(x, list) else x for x in items]
    for level in ("*", "+-"):
        i = 1
        while i < len(items):
            if items[i] in level:
                a, op, b = items[i - 1], items[i], items[i + 1]
                c = _APPLY[op](a, b)
                calculations.append(f"{a} {op} {b} = {c}")
                items[i - 1:i + 2] = [c]
            else:
                i += 2
    return items[0]


def reference_steps(calculations: list[str], answer: int) -> tuple[str, ...]:
    """The talk's wording: 'Firstly, I would calculate ...', 'Then, I would calculate ...', 'The answer is N'."""
    lead = ["Firstly"] + ["Then"] * (len(calculations) - 1)
    return tuple(f"{w}, I would calculate {c}" for w, c in zip(lead, calculations)) + (f"The answer is {answer}",)


def make_problem(items: list) -> Problem:
    calculations: list[str] = []
    value = solve(items, calculations)
    expression = render(items)
    return Problem(id=expression, prompt=f"Calculate {expression}", answer=str(value),
                   meta={"task": "arithmetic", "expression": expression},
                   steps=reference_steps(calculations, value))


@dataclass(frozen=True)
class Arithmetic:
    operands: int = 3           # numbers per expression (>= 2)
    low: int = 1                # smallest operand
    high: int = 30              # largest operand
    operators: str = "+"        # operators to draw from, any of "+-*"
    parentheses: float = 0.0    # probability that an expression has one parenthesised group (needs >= 3 operands)
    test_percent: int = 10      # share of all expressions that belong to the test split, by hash

    name = "arithmetic"

    def __post_init__(self):
        if self.operands < 2:
            raise R1labError(f"arithmetic: operands must be >= 2, got {self.operands}")
        if self.low > self.high:
            raise R1labError(f"arithmetic: low ({self.low}) must be <= high ({self.high})")
        if not self.operators or set(self.operators) - set(_APPLY):
            raise R1labError(f"arithmetic: operators must be a non-empty subset of '+-*', got {self.operators!r}")
        if not 0 < self.test_percent < 100:
            raise R1labError(f"arithmetic: test_percent must be in 1..99, got {self.test_percent}")

    def _random_items(self, rng: random.Random) -> list:
        items: list = []
        for i in range(self.operands):
            if i:
                items.append(rng.choice(self.operators))
            items.append(rng.randint(self.low, self.high))
        if self.operands >= 3 and rng.random() < self.parentheses:
            size = rng.randint(2, self.operands - 1)          # operands in the group, never the whole expression
            start = rng.randint(0, self.operands - size)
            items[2 * start:2 * (start + size) - 1] = [items[2 * start:2 * (start + size) - 1]]
        return items

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        check_split(split)
        rng = random.Random(f"arithmetic-{seed}-{split}")
        found: dict[str, Problem] = {}
        for _ in range(200 * n + 1000):
            if len(found) == n:
                break
            items = self._random_items(rng)
            expression = render(items)
            if expression not in found and split_of(expression, self.test_percent) == split:
                found[expression] = make_problem(items)
        if len(found) < n:
            raise R1labError(f"arithmetic: asked for {n} {split} problems but this configuration only "
                             f"yielded {len(found)} distinct ones; widen low/high or add operands")
        return list(found.values())
