"""Cold-start data: chains of thought written from a task's reference steps (the R1 pipeline's first stage).

    r1lab data cold-start --task arithmetic --n 150 --out cold.jsonl [--template r1_zero]

Each example is the reference steps as the reasoning, then a check passage before the answer (the
talk's "Wait, wait..." reflection), so the behaviour exists for RL to reinforce:
  <think> Firstly, I would calculate 5 + 17 = 22. Then, I would calculate 22 + 25 = 47. Wait, let me
  check: 5 + 17 + 25 = 47. </think> <answer> 47 </answer>
Problems without reference steps are skipped (and counted). With `--tools calculator` (or python) each
example instead calls the tool on the problem's expression, in the format a tool-using rollout writes
(r1lab/rollout/episodes.py), so that RL with tools starts from a model that calls them:
  <think> I will compute 4821 * 77 with the calculator tool. <tool_call>{"name": "calculator", ...}</tool_call>
  <tool_response> 371217 </tool_response> The calculator gives 371217. </think> <answer> 371217 </answer>
"""
from __future__ import annotations

import json

from r1lab import R1labError
from r1lab.data import write_jsonl
from r1lab.tasks import get_task
from r1lab.templates import get_template


def cold_start_completion(problem, template) -> str:
    steps = [s.rstrip(".") for s in problem.steps if not s.startswith("The answer is")]
    check = problem.meta.get("expression")
    reflection = (f"Wait, let me check: {check} = {problem.answer}." if check
                  else f"Wait, let me check the steps again: they give {problem.answer}.")
    return template.compose(". ".join(steps) + ". " + reflection, problem.answer)


DEMO_CALLS = {"calculator": lambda expression: {"expression": expression},
              "python": lambda expression: {"code": f"print({expression})"}}


def tool_demo_completion(problem, template, tool) -> str:
    """A demonstration of computing the problem's expression (`meta["expression"]`) with `tool` (calculator
    or python): the call, the result as a rollout appends it (the tool is really run), then the answer."""
    from r1lab.tools import ToolCall, run_tool_calls, tool_turn_text

    expression = problem.meta.get("expression")
    if expression is None or tool.name not in DEMO_CALLS:
        raise R1labError(f"cold start with tools: demonstrations need a problem with an expression (arithmetic) "
                         f"and the calculator or python tool; got task problem {problem.id!r} and tool {tool.name!r}")
    call = ToolCall(tool.name, DEMO_CALLS[tool.name](expression), "call_0")
    (result,) = run_tool_calls([tool], [call])
    if result.error or result.content.strip() != str(problem.answer):
        raise R1labError(f"cold start with tools: the {tool.name} tool gave {result.content!r} for {expression}, "
                         f"not the answer {problem.answer}")
    reasoning = (f"I will compute {expression} with the {tool.name} tool. <tool_call>"
                 f"{json.dumps({'name': call.name, 'arguments': call.arguments})}</tool_call>"
                 f"{tool_turn_text(None, [result], chat=False)}The {tool.name} gives {problem.answer}.")
    return template.compose(reasoning, problem.answer)


def write_cold_start(task_spec: str, n: int, out: str, template: str = "r1_zero", seed: int = 0,
                     task_options: dict | None = None, tools: str = "") -> tuple[int, int]:
    """Write up to n examples from the task's train split; returns (written, skipped without steps).
    With `tools`, each example shows the first tool computing the answer (`tool_demo_completion`)."""
    from r1lab.tools import load_tools

    template_obj, tool_list = get_template(template), load_tools(tools)
    problems = get_task(task_spec, **(task_options or {})).problems("train", n, seed)
    rows = [{"prompt": p.prompt, "answer": p.answer,
             "completion": tool_demo_completion(p, template_obj, tool_list[0]) if tool_list
             else cold_start_completion(p, template_obj)}
            for p in problems if p.steps]
    if not rows:
        raise R1labError(f"task {task_spec!r} gave no problems with reference steps; cold-start data needs them")
    write_jsonl(out, rows)
    return len(rows), len(problems) - len(rows)
