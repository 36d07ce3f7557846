"""Built-in arithmetic: the talk's "Calculate 1 + 2 + 3", generalised, with a reference solution.

Each problem is a random expression (seeded) with `operands` numbers in [low, high], operators drawn
from `operators` (any of "+-*"), and with probability `parentheses` one parenthesised group. The
reference steps follow the talk's goal-directed examples, one step per operation in evaluation order
(parentheses first, then *, then + and - left to right):
    "Firstly, I would calculate 1 + 2 = 3", "Then, I would calculate 3 + 3 = 6", "The answer is 6".

Train and test are disjoint by construction: an expression's split is a hash of its polynomial in its
numbers (`expression_split`), so no seed or size can put a test expression into train, nor a reordering
or regrouping of one ("3 + 1 + 2" when "1 + 2 + 3" is a test problem). The problems rewritten from a
trajectory (goal-state shift, hindsight relabelling) are held to the same split.
"""
from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from r1lab import R1labError
from r1lab.tasks.base import check_split, split_of
from r1lab.types import Problem

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def polynomial(node: ast.expr) -> dict[tuple[int, ...], int]:
    """An expression's syntax tree as a polynomial in its numbers, each number an unknown: {the sorted numbers
    of a product: its coefficient}. Order, grouping and cancellation are gone: "1 + 2 * 3", "3 * 2 + 1" and
    "(2 * 3 + 1) + 4 - 4" all give {(1,): 1, (2, 3): 1}; for a chain of "+" it is the multiset of operands."""
    if isinstance(node, ast.Constant):
        return {(node.value,): 1}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return {m: -c for m, c in polynomial(node.operand).items()}
    left, right = polynomial(node.left), polynomial(node.right)
    if isinstance(node.op, ast.Mult):
        pairs = [(tuple(sorted(m + n)), c * d) for m, c in left.items() for n, d in right.items()]
    else:
        sign = 1 if isinstance(node.op, ast.Add) else -1
        pairs = [*left.items(), *((m, sign * c) for m, c in right.items())]
    terms: dict[tuple[int, ...], int] = {}
    for monomial, coefficient in pairs:
        terms[monomial] = terms.get(monomial, 0) + coefficient
    return {m: c for m, c in terms.items() if c}


def expression_split(expression: str, test_percent: int) -> str:
    """The split of an arithmetic expression: a hash of its polynomial, so that every reordering and
    regrouping of the same numbers is in the same split (the only notion of split for arithmetic)."""
    return split_of(repr(sorted(polynomial(ast.parse(expression, mode="eval").body).items())), test_percent)


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


_CALCULATION = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def parse_calculation(step: str) -> tuple[int, str, int, int] | None:
    """(a, op, b, c) of a step that computes exactly one 'a op b = c' (three numbers in the step), else None."""
    match = _CALCULATION.search(step)
    if not match or len(re.findall(r"\d+", step)) != 3:
        return None
    a, op, b, c = match.groups()
    return int(a), op, int(b), int(c)


def expressions_from_steps(steps: list[str]) -> list[tuple[int, str, int]] | None:
    """What each calculation step of a trajectory has computed, as (step index, expression, value), rebuilt from the
    steps alone: an operand equal to an earlier, not yet used result is that result (latest first),
    any other operand is a number of the problem. None if a step's arithmetic is wrong.

    "1 + 2 = 3", "3 + 3 = 6" -> [(0, "1 + 2", 3), (1, "1 + 2 + 3", 6)]."""
    results: list[tuple[str, int, int]] = []      # (expression, value, precedence of its top operator)
    built = []
    for index, step in enumerate(steps):
        calculation = parse_calculation(step)
        if calculation is None:
            continue
        a, op, b, c = calculation
        if _APPLY[op](a, b) != c:
            return None
        operands = []
        for value, right in ((a, False), (b, True)):
            found = next((i for i in range(len(results) - 1, -1, -1) if results[i][1] == value), None)
            text, _, precedence = results.pop(found) if found is not None else (str(value), value, 3)
            weaker = precedence < _PRECEDENCE[op] or (right and op == "-" and precedence == _PRECEDENCE[op])
            operands.append(f"({text})" if weaker else text)
        results.append((f"{operands[0]} {op} {operands[1]}", c, _PRECEDENCE[op]))
        built.append((index, results[-1][0], c))
    return built


@dataclass(frozen=True)
class Arithmetic:
    operands: int = 3           # numbers per expression (>= 2)
    low: int = 1                # smallest operand
    high: int = 30              # largest operand
    operators: str = "+"        # operators to draw from, any of "+-*"
    parentheses: float = 0.0    # probability that an expression has one parenthesised group (needs >= 3 operands)
    test_percent: int = 10      # share of all expressions that belong to the test split, by a hash of their polynomial

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
            if expression not in found and expression_split(expression, self.test_percent) == split:
                found[expression] = make_problem(items)
        if len(found) < n:
            raise R1labError(f"arithmetic: asked for {n} {split} problems but this configuration only "
                             f"yielded {len(found)} distinct ones; widen low/high or add operands")
        return list(found.values())

    # Goal-directed fine-tuning (the talk's proposals), problems rewritten from a trajectory's own steps.

    def _rewritten(self, steps: list[str]) -> list[tuple[int, Problem]]:
        """For each calculation step (its index), the problem whose answer is its result; empty if the
        arithmetic is wrong."""
        return [(i, Problem(id=e, prompt=f"Calculate {e}", answer=str(v), meta={"task": "arithmetic", "expression": e}))
                for i, e, v in (expressions_from_steps(steps) or [])]

    def _train(self, problem: Problem) -> bool:
        return expression_split(problem.meta["expression"], self.test_percent) == "train"

    def goal_problems(self, steps: list[str]) -> list[tuple[int, Problem]]:
        """Goal-state shift: for each calculation step before the last (its index), the problem whose answer
        is its result ("Firstly, I would calculate 1 + 2 = 3" -> "Calculate 1 + 2", answer 3), leaving out
        those in the test split. Empty if the arithmetic is wrong."""
        return [(i, p) for i, p in self._rewritten(steps)[:-1] if self._train(p)]

    def hindsight_problem(self, steps: list[str]) -> Problem | None:
        """Hindsight relabelling: the problem the trajectory did solve ("1 + 2 = 3", "3 + 2 = 5" -> "Calculate 1 + 2 + 2");
        None if its arithmetic is wrong or that problem is in the test split."""
        problems = self._rewritten(steps)
        return problems[-1][1] if problems and self._train(problems[-1][1]) else None
