"""Can AgentJo use the model? strict_json's first-try success on held-out schemas, base against trained;
then the talk's two AgentJo snippets against the trained model (issue 19, item 7).

    .venv/bin/python examples/agentjo_eval.py runs/agentjo/grpo/checkpoint [--base smollm2-135m] [--problems 30]
        [--max-tokens 512] [--no-snippets]

Each problem is a strict_json call from the agentjo task's test split (key sets never trained on:
r1lab/tasks/agentjo.py), made with the real `agentjo.strict_json` and `llm = r1lab.llm.make_llm(model)`
(in-process, greedy, `--max-tokens` new tokens: 512 is make_llm's default, what a new user gets). The llm
is instrumented: a call succeeds on its first try when strict_json returns a dict with every requested
key (AgentJo has checked the types) after exactly one llm call. A second llm call (strict_json's retry,
or its request to repair a list) ends the call there as a failure, so a failing call costs one
generation, not strict_json's three. Printed: per model the calls, the first-try share and the mean
seconds per call; then both snippets, as in examples/agentjo_demo.py, against the trained model (exit
status 1 if Agent.run fails).
"""
import argparse                      # no `from __future__ import annotations`: AgentJo reads make_appointment's
                                     # annotations as types
import contextlib
import io
import statistics
import time

from agentjo import Agent, strict_json

from r1lab.llm import make_llm
from r1lab.tasks import get_task


class SecondCall(Exception):
    """strict_json asked the llm again: its first try failed."""


def first_try(llm, spec: dict) -> tuple[bool, float]:
    """(complete on the first try, seconds) for one strict_json call given by the task's meta."""
    calls = 0

    def counted(system_prompt: str, user_prompt: str) -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise SecondCall
        return llm(system_prompt, user_prompt)

    began = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):                  # strict_json prints each failure
            result = strict_json(spec["system_prompt"], spec["user_prompt"], spec["output_format"], llm=counted)
    except SecondCall:
        result = {}
    return set(result) == set(spec["output_format"]), time.perf_counter() - began


def measure(model: str, problems, max_tokens: int) -> dict:
    llm = make_llm(model, max_tokens=max_tokens)
    outcomes = [first_try(llm, p.meta["agentjo"]) for p in problems]
    return {"calls": len(outcomes), "first_try": sum(ok for ok, _ in outcomes) / len(outcomes),
            "seconds": statistics.mean(s for _, s in outcomes)}


def talk_snippets(model: str, max_tokens: int) -> None:
    """The talk's two snippets, unchanged but for `llm` (examples/agentjo_demo.py)."""
    llm = make_llm(model, max_tokens=max_tokens)
    res = strict_json(system_prompt="Generate 1 main category and 3 sub-categories for topic",
                      user_prompt="DeepSeek",
                      output_format={"Main Category": "Suitable for 12 year olds, type: str",
                                     "Sub-categories": "type: list"},
                      llm=llm)
    print(res)

    def make_appointment(person_name: str, start_time: str, end_time: str):
        '''Makes an appointment with person_name from start_time to end_time. Time is in xxxxH'''
        return f"Appointment made with {person_name} from {start_time} to {end_time}"

    agent = Agent(agent_name="Personal Secretary", agent_description="You are a friendly assistant.",
                  llm=llm).assign_functions([make_appointment])
    try:
        result = agent.run("Make me an appointment with Paul at 3pm, Sally at 4pm. 1 hour each")
    except KeyError as e:                  # AgentJo indexes the {} its parser returns after three failed tries
        raise SystemExit(f"Agent.run failed: KeyError {e} inside AgentJo (its parse of the model's reply failed)")
    print("Agent.run returned:", result, "| task completed:", agent.task_completed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the trained model: a checkpoint folder or any model spec")
    parser.add_argument("--base", default="smollm2-135m", help="the model it is compared with")
    parser.add_argument("--problems", type=int, default=30, help="held-out strict_json calls per model")
    parser.add_argument("--max-tokens", type=int, default=512, help="new tokens per llm call (make_llm's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-snippets", action="store_true", help="skip the talk's two snippets")
    args = parser.parse_args()

    problems = get_task("agentjo", agent_percent=0).problems("test", args.problems, args.seed)
    rows = {model: measure(model, problems, args.max_tokens) for model in (args.base, args.model)}
    print(f"\nstrict_json on {len(problems)} held-out schemas, greedy, max {args.max_tokens} new tokens")
    print(f"{'model':48} {'calls':>6} {'first try':>10} {'s/call':>7}")
    for model, row in rows.items():
        print(f"{model[-48:]:48} {row['calls']:6d} {100 * row['first_try']:9.1f}% {row['seconds']:7.1f}")
    if not args.no_snippets:
        print(f"\nThe talk's snippets against {args.model}:")
        talk_snippets(args.model, args.max_tokens)


if __name__ == "__main__":
    main()
