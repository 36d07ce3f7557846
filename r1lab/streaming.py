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
"""
from __future__ import annotations

from r1lab.templates import TAGS, parse_tags


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a whole reply, the prompt's tail in front; rules in the module docstring."""
    if not text.lstrip().startswith("<think>"):
        return None, _answer(text)
    reasoning, _ = parse_tags(text)
    closed = text.find("</think>")
    return reasoning, _answer(text[closed + len("</think>"):]) if closed >= 0 else ""


def _answer(rest: str) -> str:
    return rest.split("</answer>", 1)[0].replace("<answer>", "").strip()


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
    `split_reasoning(tail + reply)` of the whole reply.

    Text: incremental detokenisation, as vLLM and TGI do it. New tokens are decoded together with the
    tokens before them (from `prefix`; some tokenizers drop the space in front of a token decoded alone),
    and the text past what `prefix:read` decodes to is new. A decode that ends in U+FFFD is a multi-byte
    character still unfinished: nothing is read until the next token completes it.
    Message: `split_reasoning` of the text so far, less the end that may still change (a partial tag or
    stop string like `</thi`; trailing whitespace, which the strip drops until a word follows). Each field's
    delta extends what was sent; nothing sent is ever taken back.
    """

    def __init__(self, tokenizer, tail: str = "", stop: tuple[str, ...] = ()):
        self.tokenizer, self.tail, self.stop = tokenizer, tail, stop
        self.markers = TAGS + stop
        self.text, self.prefix, self.read = "", 0, 0
        self.sent = {"reasoning_content": "", "content": ""}

    def add(self, ids: list[int]) -> list[dict]:
        """Deltas after the reply's token ids so far (all of them, not only the new ones)."""
        before = self.tokenizer.decode(ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix, self.read = self.read, len(ids)
        text = self.tail + trim_stop(self.text, self.stop)
        return self._deltas(text[:len(text) - _unfinished(text, self.markers)])

    def finish(self, text: str) -> list[dict]:
        """The last deltas, from the whole reply's text (as the engine decoded it)."""
        return self._deltas(self.tail + trim_stop(text, self.stop))

    def _deltas(self, text: str) -> list[dict]:
        reasoning, content = split_reasoning(text)
        deltas = []
        for key, value in (("reasoning_content", reasoning or ""), ("content", content)):
            if len(value) > len(self.sent[key]) and value.startswith(self.sent[key]):
                deltas.append({key: value[len(self.sent[key]):]})
                self.sent[key] = value
        return deltas
