"""AgentJo's formats as a rule reward: does AgentJo's own parser turn the reply into a complete dict?

`agentjo_format` gives the reply (the template's parsed answer: for the `agentjo` template, the reply
without a `<think>` block, as `r1lab.llm.make_llm` hands it over) to the parser the problem's call uses,
AgentJo's own `strict_json` or `parse_yaml` (tasks/agentjo.py), for one try, through an llm that only
replays the reply. It is 1 when that returns a dict with exactly the requested keys, whose values passed
AgentJo's own type checks and conversions (str, int, float, bool, list, dict, dict with keys, Enum), and,
for Agent's subtask query, whose "Equipped Function Name" is one of the agent's functions; else 0.
`agentjo_score`, the task's score (the `accuracy` reward and evaluation), asks for more where the task
knows the answer: the expected function (subtask query) and the action's arguments (inputs query; text
compared without case or surrounding space, numbers by value). strict_json calls have no ground truth
beyond the format: there the two agree. No partial credit: `strict_json` either returns the dict or retries.

Why AgentJo's parser and not ours: a reward that re-implemented it would drift from what users run. What
is ours: calling it with one try, and treating a second llm call inside that try as a failure
(`strict_json` asks the llm to rewrite a malformed list) — the reply alone must do. AgentJo's printed
complaints are swallowed. A reply over MAX_REPLY_CHARS is not parsed (bounded time).
"""
from __future__ import annotations

import contextlib
import io

from r1lab.types import Completion, Problem

MAX_REPLY_CHARS = 20_000


class _SecondCall(Exception):
    """The parser asked the llm again within its one try."""


def agentjo_parse(problem: Problem, reply: str) -> dict:
    """What AgentJo's parser for the problem's call returns for `reply` on its first try ({} on failure)."""
    from agentjo import parse_yaml, strict_json

    spec = problem.meta["agentjo"]
    calls = []

    def replay(system_prompt: str, user_prompt: str) -> str:
        calls.append(system_prompt)
        if len(calls) > 1:
            raise _SecondCall
        return reply

    parse = strict_json if spec["kind"] == "strict_json" else parse_yaml
    with contextlib.redirect_stdout(io.StringIO()):            # strict_json prints every failure
        try:
            return parse("", "", spec["output_format"], llm=replay, num_tries=1)
        except _SecondCall:
            return {}


def complete(problem: Problem, parsed: dict) -> bool:
    """Exactly the requested keys (AgentJo checked their types) and, for a subtask query, a valid function."""
    spec = problem.meta["agentjo"]
    if not isinstance(parsed, dict) or set(parsed) != set(spec["output_format"]):
        return False
    return "choices" not in spec or parsed["Equipped Function Name"] in spec["choices"]


def _parsed(problem: Problem, reply: str | None) -> dict | None:
    if reply is None or len(reply) > MAX_REPLY_CHARS:
        return None
    parsed = agentjo_parse(problem, reply)
    return parsed if complete(problem, parsed) else None


def agentjo_format(completion: Completion, problem: Problem) -> float:
    return float(_parsed(problem, completion.answer) is not None)


def _same(value, expected) -> bool:
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == float(expected)
    return str(value).strip().casefold() == str(expected).strip().casefold()


def agentjo_score(problem: Problem, reply: str) -> float:
    """1 for a complete dict with, where the task knows them, the expected function or arguments; else 0."""
    parsed = _parsed(problem, reply)
    expected = problem.meta["agentjo"].get("expected")
    if parsed is None:
        return 0.0
    if isinstance(expected, dict):
        return float(all(_same(parsed[key], value) for key, value in expected.items()))
    return float(expected is None or parsed["Equipped Function Name"] == expected)
