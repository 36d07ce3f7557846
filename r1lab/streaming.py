"""The reply of a chat model as DeepSeek's API gives it: reasoning apart from the answer, whole or streamed.

The message (`split_reasoning`) is read from the prompt's tail and the reply, so that a chat template
that opens `<think>` (DeepSeek-R1-Distill, QwQ, Qwen3) puts the reply inside the reasoning, as
`r1lab.templates` does:
- a reply that opens with `<think>` reasons up to its first `</think>` (`parse_tags`' reasoning), which
  comes back as `reasoning_content`, as in DeepSeek's API; unclosed, it is all reasoning and no answer;
- the answer (`content`) is what follows, without `<answer>` tags and nothing after the first `</answer>`
  (for `<think>..</think> <answer>..</answer>` it is `parse_tags`' answer); a reply that does not open with
  `<think>` is all answer. (Unlike `parse_tags`, text before a `</think>` that no `<think>` opened stays
  answer: that rule could only be applied once the reply is complete, and nothing could stream.)
Streaming (`ReplyStream`) sends each new token's text as soon as it can no longer change; the deltas of
each field joined are exactly the non-streamed message.

Tool calls (`split_reply`, `reply_message`, where the request has tools): a reply whose text from its
first `<tool_call>` to its last `</tool_call>` is nothing but well-formed `<tool_call>{json}</tool_call>`
blocks (`r1lab.tools.parse_tool_calls`; whitespace between; arguments strict JSON, without the NaN or
Infinity that Python's json reads) calls them; its reasoning and answer are read
from the text before the first call (a call inside an unclosed `<think>` ends the reasoning), and what
follows the last call (a stop string's overshoot) is dropped. A malformed call is no call: the reply is
plain text, as without tools. Streamed, the text from a `<tool_call>` on is held back until the reply is
complete (only then is it known to be a call), and the calls come in the last deltas, whole.
"""
from __future__ import annotations

import json
import re
import uuid

from r1lab.templates import TAGS, split_reasoning
from r1lab.tools import TOOL_CALL_START, TOOL_CALL_STOP, ToolCall, parse_tool_calls

_BLOCK = re.compile(re.escape(TOOL_CALL_START) + ".*?" + re.escape(TOOL_CALL_STOP), re.S)


def split_reply(text: str, tools: bool = False) -> tuple[str | None, str, list[ToolCall]]:
    """(reasoning, answer, tool calls) of a whole reply, the prompt's tail in front; with `tools`, calls
    are read as the module docstring says (without, or for a malformed call: `split_reasoning`, [])."""
    start = text.find(TOOL_CALL_START) if tools else -1
    if start >= 0 and (end := text.rfind(TOOL_CALL_STOP)) > start:
        calls = _calls(text[start:end + len(TOOL_CALL_STOP)])
        if calls:
            return (*split_reasoning(text[:start]), calls)
    return (*split_reasoning(text), [])


def _calls(blocks: str) -> list[ToolCall]:
    """The calls of `blocks` when it is nothing but well-formed call blocks and whitespace, else []."""
    calls, bad = parse_tool_calls(blocks)
    if bad or len(calls) != blocks.count(TOOL_CALL_START) or _BLOCK.sub("", blocks).strip():
        return []
    try:
        json.dumps([c.arguments for c in calls], allow_nan=False)
    except (ValueError, RecursionError):       # NaN / Infinity: not JSON
        return []
    return calls


def openai_tool_calls(calls: list[ToolCall]) -> list[dict]:
    """Calls in OpenAI's shape: a fresh id each (`call_` and 24 hex digits), the arguments a JSON string."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False, allow_nan=False)}}
            for c in calls]


def reply_message(text: str, tools: bool = False) -> dict:
    """The assistant message of a whole reply (tail in front, stop strings trimmed): content, DeepSeek's
    reasoning_content and, for a tool call, OpenAI's tool_calls, with the content None when no text came before."""
    reasoning, content, calls = split_reply(text, tools)
    if not calls:
        return {"role": "assistant", "content": content, "reasoning_content": reasoning}
    return {"role": "assistant", "content": content or None, "reasoning_content": reasoning,
            "tool_calls": openai_tool_calls(calls)}


def trim_stop(text: str, stop: tuple[str, ...]) -> str:
    """OpenAI semantics: the stop sequence is not part of the reply."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def _unfinished(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that a marker (a tag, a stop string) starts with but is longer than."""
    for k in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(len(m) > k and m.startswith(text[-k:]) for m in markers):
            return k
    return 0


class ReplyStream:
    """One streamed reply: its token ids in, message deltas out; joined, the deltas of each field are
    `split_reply(tail + reply, tools)` of the whole reply (`reply_message`'s fields, the call ids aside).

    Text: incremental detokenisation, as vLLM and TGI do it. New tokens are decoded together with the
    tokens before them (from `prefix`; some tokenizers drop the space in front of a token decoded alone),
    and the text past what `prefix:read` decodes to is new. A decode that ends in U+FFFD is a multi-byte
    character still unfinished: nothing is read until the next token completes it.
    Message: `split_reasoning` of the text so far, less the end that may still change (a partial tag or
    stop string like `</thi`; trailing whitespace, which the strip drops until a word follows) and, with
    tools, less all from a `<tool_call>` on. Each field's delta extends what was sent; nothing sent is
    ever taken back.
    """

    def __init__(self, tokenizer, tail: str = "", stop: tuple[str, ...] = (), tools: bool = False):
        self.tokenizer, self.tail, self.stop, self.tools = tokenizer, tail, stop, tools
        self.markers = TAGS + stop + ((TOOL_CALL_START,) if tools else ())
        self.text, self.prefix, self.read = "", 0, 0
        self.sent = {"reasoning_content": "", "content": ""}
        self.calls: list[dict] = []      # after `finish`: the reply's tool calls, in OpenAI's shape

    def add(self, ids: list[int]) -> list[dict]:
        """Deltas after the reply's token ids so far (all of them, not only the new ones)."""
        before = self.tokenizer.decode(ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix, self.read = self.read, len(ids)
        text = self.tail + trim_stop(self.text, self.stop)
        if self.tools and TOOL_CALL_START in text:       # perhaps a call: held back until the reply is complete
            text = text[:text.index(TOOL_CALL_START)]
        return self._deltas(*split_reasoning(text[:len(text) - _unfinished(text, self.markers)]))

    def finish(self, text: str) -> list[dict]:
        """The last deltas, from the whole reply's text (as the engine decoded it); then a delta per tool call
        (OpenAI's streaming shape, the arguments in one piece), the calls kept in `calls`."""
        reasoning, content, calls = split_reply(self.tail + trim_stop(text, self.stop), self.tools)
        self.calls = openai_tool_calls(calls)
        calls = [{"tool_calls": [{"index": k, **call}]} for k, call in enumerate(self.calls)]
        return self._deltas(reasoning, content) + calls

    def _deltas(self, reasoning: str | None, content: str) -> list[dict]:
        deltas = []
        for key, value in (("reasoning_content", reasoning or ""), ("content", content)):
            if len(value) > len(self.sent[key]) and value.startswith(self.sent[key]):
                deltas.append({key: value[len(self.sent[key]):]})
                self.sent[key] = value
        return deltas
