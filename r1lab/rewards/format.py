"""Format: does the reply follow its template's structure? (R1-Zero's format reward.)

`r1_zero`/`chat`: exactly `<think> ... </think> <answer> ... </answer>`; `json_cot`: one JSON object
with "thought" and "answer". The partial variant gives credit per correct element (see templates.py).
What is judged is the text the parser reads: the prompt's tail the reply continues plus the reply
(`Completion.prompt_tail`: `<think>` where the chat template opens the reasoning, as R1-Distill's does).
"""
from __future__ import annotations

from r1lab.templates import get_template
from r1lab.types import Completion, Problem


def format_strict(completion: Completion, problem: Problem) -> float:
    return get_template(completion.template).format_score(completion.prompt_tail + completion.text, False)


def format_partial(completion: Completion, problem: Problem) -> float:
    return get_template(completion.template).format_score(completion.prompt_tail + completion.text, True)
