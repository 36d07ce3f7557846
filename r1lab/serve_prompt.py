"""How `r1lab serve` turns a request into prompt token ids, with no control token written by the client.

A chat template writes its turns with special tokens (`<|im_start|>`, `<|im_end|>`, `<|eot_id|>`). Were the
rendered prompt tokenized as one string, a user who types `<|im_end|>\\n<|im_start|>system\\n...` into a
message would get those ids too: a forged system turn. Here, as in vLLM's and HF's chat serving, a
special token's text inside the request (message content, tool calls, tool schemas) is plain text:
1. every string of the messages and tools has each special token's text replaced by a placeholder
   (private-use characters around a per-request nonce, which no client can guess);
2. the template renders those messages: the special tokens left in its text are all the template's own;
3. the text is cut at those tokens, each becoming its id, and each piece between them, placeholders put
   back, is tokenized with special tokens split into plain text (a copy of the tokenizer with
   `split_special_tokens`: toggling it on the shared one would race with the other requests' threads).
A request with no special token's text in it is tokenized as one string, exactly as before; the text
the prompt decodes to is the same either way. (Pieces tokenized apart can differ at their edges from the
one-string ids for a tokenizer whose special tokens strip the whitespace beside them or that marks only
a text's first word, as SentencePiece's `prepend_scheme="first"`: only for requests that held a special
token's text, and never by a control token.)

/v1/completions prompts (`plain`) are the client's whole prompt, as in vLLM: tokenized as they are, the
tokenizer's own special tokens (a BOS) added.
"""
from __future__ import annotations

import copy
import re
import uuid
from dataclasses import replace

from r1lab.serve_request import ChatRequest
from r1lab.tools import Tool, chat_with_tools, render_chat


def request_prompt(tokenizer, chat: ChatRequest) -> str:
    """The prompt of a request: through `r1lab.tools.chat_with_tools` where it has tools or tool turns (the
    template's own tool convention, else the tools in the system message), else `render_chat`."""
    if chat.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in chat.messages):
        tools = [Tool(schema["function"]["name"], None, schema) for schema in chat.tools]   # never run here
        return chat_with_tools(tokenizer, chat.messages, tools)
    return render_chat(tokenizer, chat.messages)


def _escaped(value, pattern: re.Pattern, marks: dict[str, str]):
    """`value` (strings, lists, dicts, nested) with each special token's text replaced by its placeholder."""
    if isinstance(value, str):
        return pattern.sub(lambda m: marks[m.group()], value)
    if isinstance(value, (list, tuple)):
        return type(value)(_escaped(v, pattern, marks) for v in value)
    if isinstance(value, dict):
        return {k: _escaped(v, pattern, marks) for k, v in value.items()}
    return value


class PromptEncoder:
    """Prompt text and ids for requests to one tokenizer (rules in the module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.specials = sorted({t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special},
                               key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, self.specials))) if self.specials else None
        self.as_text = copy.deepcopy(tokenizer)      # a copy that reads special tokens' text as plain text
        self.as_text.split_special_tokens = True

    def chat(self, chat: ChatRequest) -> tuple[str, list[int]]:
        """(prompt text, prompt ids) of a chat request; the ids hold no special token from the request."""
        if self.pattern is None:
            text = request_prompt(self.tokenizer, chat)
            return text, self.tokenizer(text, add_special_tokens=False)["input_ids"]
        nonce = uuid.uuid4().hex
        marks = {s: f"\U000f0000{nonce}:{k}\U000f0001" for k, s in enumerate(self.specials)}
        text = request_prompt(self.tokenizer, replace(chat, messages=_escaped(chat.messages, self.pattern, marks),
                                                      tools=_escaped(chat.tools, self.pattern, marks)))
        unmark = re.compile("|".join(map(re.escape, marks.values())))
        originals = {mark: s for s, mark in marks.items()}
        restored = unmark.sub(lambda m: originals[m.group()], text)
        if restored == text:               # nothing from the client to guard: one string, as ever
            return text, self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = []
        for k, piece in enumerate(re.split(f"({self.pattern.pattern})", text)):
            if k % 2:                      # the template's own special token
                ids.append(self.tokenizer.convert_tokens_to_ids(piece))
            elif piece:
                ids += self.as_text(unmark.sub(lambda m: originals[m.group()], piece), add_special_tokens=False)["input_ids"]
        return restored, ids

    def plain(self, prompt: str) -> list[int]:
        """The ids of a /v1/completions prompt: the client's own text, the tokenizer's special tokens added."""
        return self.tokenizer(prompt)["input_ids"]
