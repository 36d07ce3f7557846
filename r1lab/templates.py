"""Prompt templates: render a question into a prompt, parse a reply into (reasoning, answer).

- `r1_zero`: the DeepSeek-R1-Zero template (paper Table 1), verbatim, as plain text for any model.
- `r1_zero_think`: the same with `<think>` opened at the end of the prompt, as TinyZero does for small base
  models: the base starts inside its reasoning instead of having to find the tag (docs/r1_zero.md).
- `chat`: the model's own chat template, the same instructions as the system message.
- `code`: the R1 template for programs: reasoning in `<think>`, the program in `<answer>` (a fenced
  ```python block or plain code); the parsed answer is the program. A reply with no `<answer>` block
  but a fenced block after its reasoning gives that block as the program (the format reward stays 0).
- `json_cot`: the talk's question "why not chain of thought with JSON output fields - Thought, then
  Answer?": the reply is a JSON object {"thought": ..., "answer": ...}.
- `agentjo`: AgentJo's own llm calls (tasks/agentjo.py): the question is JSON {"system": ..., "user": ...},
  rendered with the model's chat template as `r1lab.llm.make_llm` sends it; the reply is read as make_llm
  hands it to AgentJo (a `<think>` block split off) and carries no reasoning of its own. Its format: the
  reply is one `{...}` object (strict_json) or one ```yaml block (parse_yaml) and nothing else; whether
  AgentJo parses it is the reward `agentjo_format`, which knows the schema.

Parsing rules (the same for `r1_zero` and `chat`), chosen so that a reward can only be earned by the
answer the model committed to:
- the reasoning is the text between `<think>` and the first `</think>` after it; a reply that starts
  without `<think>` but has `</think>` (some prompts end in `<think>`) reasons up to `</think>`;
- an unclosed `<think>` means the reply never left its reasoning: no answer;
- the answer is the FIRST complete `<answer>...</answer>` after the reasoning; an `<answer>` inside
  `<think>` is ignored, later answer blocks are ignored (and cost the format reward);
- an `<answer>` without `</answer>` is no answer: a truncated reply must not be graded.

A prompt that ends by opening `<think>` (the chat templates of DeepSeek-R1-Distill, QwQ, Qwen3) puts
the reply inside the reasoning. The parser and the format reward then both read `prompt_tail(prompt)`
plus the reply (carried as `Completion.prompt_tail`), so `2+2=4</think> <answer>4</answer>` has the
full format there, and a reply that never closes its reasoning parses as reasoning with no answer.
The format needs non-blank reasoning and answer (`<think> </think>` is not reasoning).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from r1lab import R1labError

R1_ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)
JSON_COT_INSTRUCTION = (
    "The user asks a question, and the Assistant solves it. Reply with a JSON object only, with two "
    'fields: "thought" (the reasoning process, step by step) and "answer" (the final answer only), '
    'i.e., {"thought": "reasoning process here", "answer": "answer here"}.'
)
CODE_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks for a program, and the Assistant writes it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the program. The reasoning process and the program are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer>\n```python\n"
    "program here\n```\n</answer>."
)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_FENCED = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|$)", re.S)
_EXACT = re.compile(r"\s*<think>\s*\S.*?</think>\s*<answer>\s*\S.*?</answer>\s*", re.S)


@dataclass(frozen=True)
class Template:
    name: str
    render: Callable[[str, object], str]          # (question, tokenizer) -> prompt text
    parse: Callable[[str], tuple[str | None, str | None]]   # reply -> (reasoning, answer)
    format_score: Callable[[str, bool], float]    # (reply, partial_credit) -> [0, 1]
    compose: Callable[[str, str], str]            # (reasoning, answer) -> a reply in this format
    stop: tuple[str, ...]                         # stop strings for sampling (besides EOS)
    instruction: str = ""                         # the instructions the prompt gives (the system message of chat ones)
    chat: bool = True                             # rendered through the model's chat template (r1_zero: plain text)


def _bos(tokenizer) -> str:
    """The BOS token's text where the tokenizer opens every text with it (Gemma, Llama 3), else ''. Prompts are
    tokenized without special tokens everywhere, so a plain-text prompt carries it itself, as chat templates
    do (without `<bos>` Gemma 3 270M answers the r1_zero prompt with repeated `<h2>`)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return tokenizer.bos_token if bos_id is not None and tokenizer("1")["input_ids"][:1] == [bos_id] else ""


def _system_user(system: str, user: str, tokenizer) -> str:
    """The model's chat template; plain 'System/User/Assistant' text for models without one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{_bos(tokenizer)}{system}\n\nUser: {user}\nAssistant:"


def prompt_tail(prompt: str) -> str:
    """The end of `prompt` that a reply continues: `<think>` and the whitespace after it where the prompt
    ends by opening the reasoning, else ''."""
    end = prompt.rstrip()
    return prompt[len(end) - len("<think>"):] if end.endswith("<think>") else ""


def parse_tags(text: str) -> tuple[str | None, str | None]:
    """(reasoning, answer) from a `<think>`/`<answer>` reply; rules in the module docstring."""
    opened = text.find("<think>")
    closed = text.find("</think>", opened + 1 if opened >= 0 else 0)
    if closed >= 0:
        start = opened + len("<think>") if 0 <= opened < closed else 0
        reasoning, rest = text[start:closed].strip(), text[closed + len("</think>"):]
    elif opened >= 0:
        return text[opened + len("<think>"):].strip(), None
    else:
        reasoning, rest = None, text
    match = _ANSWER.search(rest)
    return reasoning, (match.group(1).strip() if match else None)


def tags_format_score(text: str, partial: bool = False) -> float:
    """1 for exactly `<think>..</think> <answer>..</answer>` (each tag once, nothing around, parts not blank);
    with partial credit, 0.4 for each whole block: its two tags once each, in order, around non-blank text.
    Credit per block, not per tag: a base model paid per tag learned `<answer> </answer>`, then `</think>
    </answer>`, and nothing else (docs/r1_zero.md)."""
    if all(text.count(tag) == 1 for tag in TAGS) and _EXACT.fullmatch(text):
        return 1.0
    return 0.4 * (_whole_block(text, "<think>", "</think>") + _whole_block(text, "<answer>", "</answer>")) if partial else 0.0


def _whole_block(text: str, opening: str, closing: str) -> bool:
    start, end = text.find(opening), text.find(closing)
    return (text.count(opening) == 1 and text.count(closing) == 1 and start < end
            and bool(text[start + len(opening):end].strip()))


def compose_tags(reasoning: str, answer: str) -> str:
    return f"<think> {reasoning} </think> <answer> {answer} </answer>"


def extract_program(answer: str) -> str:
    """The program in an answer: the first fenced code block's content, else the answer itself."""
    match = _FENCED.search(answer)
    return (match.group(1) if match else answer).strip("\n")


def parse_code(text: str) -> tuple[str | None, str | None]:
    """(reasoning, program): the `<answer>` block's program, else a fenced block after the reasoning."""
    reasoning, answer = parse_tags(text)
    if answer is None and not (text.find("<think>") >= 0 > text.find("</think>")):
        rest = text[text.find("</think>") + len("</think>"):] if "</think>" in text else text
        answer = extract_program(rest) if _FENCED.search(rest) else None
    return reasoning, None if answer is None else extract_program(answer)


def _json_objects(text: str, max_tries: int = 32):
    """JSON objects found in text, scanning from each '{' (bounded, so hostile input stays cheap)."""
    decoder, position = json.JSONDecoder(), 0
    for _ in range(max_tries):
        position = text.find("{", position)
        if position < 0:
            return
        try:
            obj, end = decoder.raw_decode(text, position)
        except ValueError:
            position += 1
            continue
        if isinstance(obj, dict):
            yield obj, position, end
        position = end


def _json_field(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    return None if value is None or isinstance(value, (dict, list)) else str(value).strip()


def parse_json(text: str) -> tuple[str | None, str | None]:
    """(thought, answer) from the first JSON object in the reply that has an "answer" field."""
    for obj, _, _ in _json_objects(text):
        if "answer" in obj:
            return _json_field(obj, "thought"), _json_field(obj, "answer")
    return None, None


def json_format_score(text: str, partial: bool = False) -> float:
    """1 if the reply is one JSON object with string/number "thought" and "answer" and nothing else;
    with partial credit, 0.5 if such an object is embedded in other text."""
    for obj, start, end in _json_objects(text):
        if _json_field(obj, "thought") is not None and _json_field(obj, "answer") is not None:
            if not text[:start].strip() and not text[end:].strip():
                return 1.0
            return 0.5 if partial else 0.0
    return 0.0


_AGENTJO_REPLY = re.compile(r"\{.*\}|```yaml\n.*```", re.S)


def agentjo_messages(question: str) -> tuple[str, str]:
    """(system, user) of an `agentjo` question, JSON {"system": ..., "user": ...}."""
    try:
        messages = json.loads(question)
        return str(messages["system"]), str(messages["user"])
    except (ValueError, KeyError, TypeError):
        raise R1labError(f"template 'agentjo' expects a question that is JSON {{\"system\": ..., \"user\": ...}} "
                         f"(task 'agentjo'), got {question[:80]!r}") from None


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a whole reply, the prompt's tail in front; rules in r1lab/streaming.py's docstring."""
    if not text.lstrip().startswith("<think>"):
        return None, _answer(text)
    reasoning, _ = parse_tags(text)
    closed = text.find("</think>")
    return reasoning, _answer(text[closed + len("</think>"):]) if closed >= 0 else ""


def _answer(rest: str) -> str:
    return rest.split("</answer>", 1)[0].replace("<answer>", "").strip()


def split_reply(text: str) -> tuple[str | None, str]:
    """(reasoning, reply) as r1lab.llm.make_llm splits a reply for AgentJo."""
    return split_reasoning(text)


def agentjo_format_score(text: str, partial: bool = False) -> float:
    """1 if the reply is one {...} object or one ```yaml block and nothing else; with partial credit,
    0.5 if such a block is embedded in other text."""
    reply = split_reply(text)[1]
    if _AGENTJO_REPLY.fullmatch(reply):
        return 1.0
    return 0.5 if partial and _AGENTJO_REPLY.search(reply) else 0.0


TEMPLATES = {
    "r1_zero": Template(
        "r1_zero", lambda question, tokenizer: f"{_bos(tokenizer)}{R1_ZERO_INSTRUCTION} User: {question}. Assistant:",
        parse_tags, tags_format_score, compose_tags, ("</answer>",), R1_ZERO_INSTRUCTION, chat=False),
    "r1_zero_think": Template(      # the same, with the reply's <think> already opened (TinyZero's way for small bases)
        "r1_zero_think", lambda question, tokenizer: f"{_bos(tokenizer)}{R1_ZERO_INSTRUCTION} User: {question}. Assistant: <think>",
        parse_tags, tags_format_score, compose_tags, ("</answer>",), R1_ZERO_INSTRUCTION, chat=False),
    "chat": Template(
        "chat", lambda question, tokenizer: _system_user(R1_ZERO_INSTRUCTION, question, tokenizer),
        parse_tags, tags_format_score, compose_tags, ("</answer>",), R1_ZERO_INSTRUCTION),
    "code": Template(
        "code", lambda question, tokenizer: _system_user(CODE_INSTRUCTION, question, tokenizer),
        parse_code, tags_format_score,
        lambda reasoning, program: compose_tags(reasoning, f"\n```python\n{program}\n```\n"), ("</answer>",),
        CODE_INSTRUCTION),
    "json_cot": Template(
        "json_cot", lambda question, tokenizer: _system_user(JSON_COT_INSTRUCTION, question, tokenizer),
        parse_json, json_format_score,
        lambda reasoning, answer: json.dumps({"thought": reasoning, "answer": answer}, ensure_ascii=False), (),
        JSON_COT_INSTRUCTION),
    "agentjo": Template(
        "agentjo", lambda question, tokenizer: _system_user(*agentjo_messages(question), tokenizer),
        split_reply, agentjo_format_score, lambda reasoning, reply: reply, ()),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise R1labError(f"unknown template {name!r}; valid templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]
