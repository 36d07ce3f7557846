"""Multi-turn rollouts with tools: the model reasons, calls a tool, reads its result and goes on.

An episode is prompt -> model turn -> (tool call -> tool result -> model turn)* -> the final answer.
A model turn ends when the model completes a call (`</tool_call>` is a stop string); the call is parsed
(r1lab/tools.py), run, and its result appended to the episode, and the model is sampled again on the whole
episode so far, as token ids (the ids it sampled are kept exactly: re-tokenising its text could change them).

- Tools are described in the prompt: through the model's own chat template where it renders `tools=`
  (and then its tool messages carry the results), else with the fallback format of r1lab/tools.py:
  the schemas in the system text, calls as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  results inline as `<tool_response>...</tool_response>` (SmolLM2's template, and the plain R1-Zero one).
- One token budget per episode, `sampling.max_new_tokens`, counts the model's tokens and the tools'
  results: the episode's tensors in training are no wider than a single-turn completion's; a result that
  does not fit ends the episode ("length"). `max_turns` model turns at most.
- Turns are batched: every episode that made a call continues in the same next generate call, the calls of
  a turn run concurrently, and an episode that answered without a call leaves the batch.
- A tool's output cannot forge the structure the rewards read: the template's tags in it are escaped.
- The result is a `Completion` whose tokens are the whole episode after the prompt; `loss_mask` is 1 on
  the model's tokens and 0 on the tools' (their log-probs are 0 and never enter a loss), `tool_calls` and
  `turns` say what happened. Rewards see the whole episode's text.
"""
from __future__ import annotations

import dataclasses
import re

from r1lab.rollout.base import Engine, Sample, Sampling, to_completion
from r1lab.templates import R1_ZERO_INSTRUCTION, TAGS, Template, prompt_tail
from r1lab.types import Completion, Problem

TOOL_NOTE = ("While reasoning, the assistant may call a tool; its result comes back in <tool_response> "
             "</tool_response> tags and the reasoning goes on from there.")
RESULT_CHARS = 1000            # a tool's output is cut to this many characters
TOOL_RESPONSE = re.compile(r"\n?<tool_response>\n.*?\n</tool_response>\n?", re.S)   # the fallback format's results


def render_prompt(template: Template, question: str, tokenizer, tools) -> str:
    """The template's prompt for `question`, with the tools described (chat templates: as the chat template
    does it, r1lab/tools.py's fallback otherwise; R1-Zero: the fallback text after the paper's instruction)."""
    if not tools:
        return template.render(question, tokenizer)
    from r1lab.tools import chat_with_tools, tools_instruction

    if not template.chat:
        return f"{R1_ZERO_INSTRUCTION} {TOOL_NOTE}\n{tools_instruction(tools)}\nUser: {question}. Assistant:"
    messages = [{"role": "system", "content": f"{template.instruction} {TOOL_NOTE}"}, {"role": "user", "content": question}]
    return chat_with_tools(tokenizer, messages, tools)


def tokenize_episode(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of an episode written as text (cold-start demonstrations): the fallback format's
    `<tool_response>` blocks are tokenized on their own, as a rollout appends them, and masked out (0)."""
    ids, mask, position = [], [], 0
    for match in [*TOOL_RESPONSE.finditer(text), None]:
        end = match.start() if match else len(text)
        for piece, own in ((text[position:end], 1), (match.group(0) if match else "", 0)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids, mask = ids + piece_ids, mask + [own] * len(piece_ids)
        position = match.end() if match else len(text)
    return ids, mask


def escape_tags(text: str, tags=TAGS + ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")) -> str:
    """`text` with the tags that structure a reply written `&lt;answer&gt;`: a tool's output cannot close
    the reasoning, give the answer or fake a result."""
    for tag in tags:
        text = text.replace(tag, tag.replace("<", "&lt;").replace(">", "&gt;"))
    return text


class Episode:
    """One sample's growing episode: token ids after the prompt, who wrote each, the sampler's log-probs."""

    def __init__(self, prompt_ids: list[int], seed: int | None):
        self.prompt_ids, self.seed = prompt_ids, seed
        self.ids, self.mask, self.logprobs = [], [], []
        self.calls, self.turns, self.finish = [], 0, "length"

    def add(self, ids: list[int], logprobs: list[float] | None) -> None:
        """Append the model's tokens (with their log-probs) or a tool result's (None: outside the loss)."""
        self.ids += ids
        self.mask += [1 if logprobs is not None else 0] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)

    def completion(self, template: Template, tokenizer, tail: str) -> Completion:
        sample = Sample(self.ids, self.logprobs, tokenizer.decode(self.ids, skip_special_tokens=True), self.finish)
        completion = to_completion(sample, template, tail)
        completion.loss_mask, completion.tool_calls, completion.turns = self.mask, self.calls, self.turns
        return completion


def run_episodes(engine: Engine, prompts: list[str], tokenizer, n: int, sampling: Sampling, tools,
                 max_turns: int, native: bool, seeds: list[int] | None = None) -> list[Episode]:
    """n episodes per prompt, prompt by prompt. The first turn is the single-turn rollout itself (one
    prefill per prompt, the same seeds): an episode without a call is exactly what `rollout` samples."""
    from r1lab.tools import TOOL_CALL_STOP, parse_tool_calls, run_tool_calls, tool_turn_text

    sampling = Sampling(sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                        tuple(dict.fromkeys(sampling.stop + (TOOL_CALL_STOP,))))
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    episodes = [Episode(ids[k // n], None if seeds is None else (seeds[k // n] * 1_000_003 + k % n) % 2**63)
                for k in range(len(ids) * n)]
    active = list(range(len(episodes)))
    for turn in range(max_turns):
        if turn == 0:
            samples = [s for group in _generate(engine, prompts, n, sampling, seeds) for s in group]
        else:
            budget = max(sampling.max_new_tokens - len(episodes[k].ids) for k in active)
            inputs = [episodes[k].prompt_ids + episodes[k].ids for k in active]
            turn_seeds = None if seeds is None else [(episodes[k].seed * 31 + turn) % 2**63 for k in active]
            turn_sampling = Sampling(sampling.temperature, sampling.top_p, budget, sampling.stop)
            samples = [group[0] for group in _generate(engine, inputs, 1, turn_sampling, turn_seeds)]
        calling = []
        for k, sample in zip(active, samples):
            episode = episodes[k]
            room = sampling.max_new_tokens - len(episode.ids)          # a shared call may run past this row's budget
            episode.add(sample.token_ids[:room], sample.logprobs[:room])
            episode.turns += 1
            episode.finish = "length" if len(sample.token_ids) > room else sample.finish_reason
            if episode.finish == "stop" and sample.text.rstrip().endswith(TOOL_CALL_STOP) and turn + 1 < max_turns:
                calling.append((k, *parse_tool_calls(sample.text)))
        results = run_tool_calls(tools, [call for _, calls, _ in calling for call in calls], max_chars=RESULT_CHARS)
        active = []
        for k, calls, failed in calling:                                # failed: calls that did not parse
            mine, results = failed + results[:len(calls)], results[len(calls):]
            answered = [dataclasses.replace(r, content=escape_tags(r.content)) for r in mine]
            arguments = [None] * len(failed) + [c.arguments for c in calls]
            episodes[k].calls += [{"name": r.name, "arguments": a, "content": r.content, "error": r.error}
                                  for r, a in zip(answered, arguments)]
            reply = tokenizer(tool_turn_text(tokenizer, answered, chat=native), add_special_tokens=False)["input_ids"]
            if len(episodes[k].ids) + len(reply) >= sampling.max_new_tokens:
                episodes[k].finish = "length"                           # no room for the result and a reply to it
                continue
            episodes[k].add(reply, None)
            active.append(k)
        if not active:
            break
    return episodes


def _generate(engine: Engine, inputs, n: int, sampling: Sampling, seeds) -> list[list[Sample]]:
    return engine.generate(inputs, n, sampling, seeds=seeds) if seeds is not None else engine.generate(inputs, n, sampling)


def rollout_with_tools(engine: Engine, problems: list[Problem], template: Template, tokenizer, n: int,
                       sampling: Sampling, tools, max_turns: int, seeds=None) -> tuple[list[str], list[list[Completion]]]:
    """`rollout` (r1lab/rollout/__init__.py) for episodes with `tools`: (prompts, episodes per problem)."""
    prompts = [render_prompt(template, p.prompt, tokenizer, tools) for p in problems]
    sampling = Sampling(sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                        tuple(dict.fromkeys(sampling.stop + template.stop)))
    from r1lab.tools import renders_tools, tool_schemas

    native = template.chat and renders_tools(tokenizer, tool_schemas(tools))
    episodes = run_episodes(engine, prompts, tokenizer, n, sampling, tools, max_turns, native, seeds)
    return prompts, [[e.completion(template, tokenizer, prompt_tail(prompt)) for e in episodes[i * n:(i + 1) * n]]
                     for i, prompt in enumerate(prompts)]
