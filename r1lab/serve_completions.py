"""`POST /v1/completions` of `r1lab serve`: OpenAI's completions API for plain prompts (no chat template),
the one lm-evaluation-harness's `local-completions` model calls for generation tasks.

Fields: model, prompt (a string, a list of strings, a list of token ids or a list of such lists; at most
`max_prompts`), max_tokens (default 16, as OpenAI's), temperature, top_p, n, stop, seed, as in
/v1/chat/completions (`serve_request.sampling_fields`). A string prompt is the client's whole prompt,
tokenized as it is (serve_prompt.PromptEncoder.plain); token ids are taken as they are.
The reply has OpenAI's shape: `choices[i]` = {index, text, finish_reason, logprobs} for prompt i // n,
sample i % n, then `usage`. The text is the raw continuation (no reasoning split), the user's stop strings
trimmed; with `echo: true` the prompt's text comes first. `logprobs: k` (0..20) adds OpenAI's legacy
logprobs object (tokens, token_logprobs, top_logprobs with the k most likely tokens and the chosen one,
text_offset) for the sampled tokens, and with `echo` for the prompt's tokens too: the model's own
log-probabilities from one scoring pass over prompt + completion (r1lab/serve_logprobs.py). That is what
lm-evaluation-harness's `local-completions` sends for its log-likelihood tasks (`echo`, `logprobs: 1`,
`max_tokens: 1`, token-id prompts).

Refused with a 400 naming the field, never ignored: `stream` (stream through /v1/chat/completions),
`suffix`, and `best_of` other than n.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from functools import partial

from r1lab.rollout import Sampling
from r1lab.serve_batch import Batcher, answer
from r1lab.serve_logprobs import openai_logprobs, score
from r1lab.serve_prompt import PromptEncoder
from r1lab.serve_request import (APIError, Limits, check_prompt, checked_string, json_body, number, read_body, refuse,
                                 sampling_fields)
from r1lab.streaming import trim_stop

MAX_LOGPROBS = 20        # top tokens per position, as vLLM's default limit (OpenAI's legacy API: 5)
SHAPE = "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids"


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list            # each a string or a list of token ids
    n: int
    sampling: Sampling
    stop: tuple[str, ...]    # the user's stop strings, trimmed from the text
    seed: int | None
    logprobs: int | None     # how many top tokens per position, or None: no logprobs object
    echo: bool


def _token_ids(value, vocab: int) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in value)


def parse_completion(raw: bytes, served: str, limits: Limits, vocab: int) -> CompletionRequest:
    """The request in a body, or an APIError naming the field."""
    body = json_body(raw, served)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) or _token_ids(prompt, vocab) else prompt
    if not isinstance(prompts, list) or not prompts:
        raise APIError(400, SHAPE, param="prompt")
    if len(prompts) > limits.max_prompts:
        raise APIError(400, f"{len(prompts)} prompts; the limit is {limits.max_prompts}", param="prompt")
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            checked_string(p, f"prompt[{i}]")
        elif not _token_ids(p, vocab):
            raise APIError(400, f"{SHAPE} (token ids in [0, {vocab})); prompt[{i}] is not", param="prompt")
    n, sampling, stop, seed = sampling_fields(body, limits, min(16, limits.max_tokens))
    refuse(body, stream=(None, False), suffix=(None,), best_of=(None, n))
    logprobs = None if body.get("logprobs") is None else number(body, "logprobs", None, int, 0, MAX_LOGPROBS)
    echo = body.get("echo")
    if echo not in (None, False, True):
        raise APIError(400, f"'echo' must be true or false, got {json.dumps(echo)[:40]}", param="echo")
    return CompletionRequest(prompts, n, sampling, stop, seed, logprobs, bool(echo))


async def complete(request, batcher: Batcher, encoder: PromptEncoder, served: str, limits: Limits,
                   context: int | None) -> dict:
    """The reply to a /v1/completions request (its usage kept in request.state for the access log)."""
    job = parse_completion(await read_body(request, limits), served, limits, len(encoder.tokenizer))
    ids = [await asyncio.to_thread(encoder.plain, p) if isinstance(p, str) else p for p in job.prompts]
    for i, prompt in enumerate(ids):
        if not prompt:
            raise APIError(400, f"prompt[{i}] is empty: it has no tokens", param="prompt")
        check_prompt(len(prompt), job.sampling.max_new_tokens, limits, context, param="prompt")
    usage = request.state.usage = {"prompt_tokens": sum(map(len, ids))}
    batcher.check_room(len(ids), limits.max_queue)
    groups = await answer(request.receive, batcher, ids, job.n, job.sampling, job.seed)
    usage["completion_tokens"] = sum(len(s.token_ids) for group in groups for s in group)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    choices = []
    for i, group in enumerate(groups):
        head = (job.prompts[i] if isinstance(job.prompts[i], str) else encoder.tokenizer.decode(ids[i])) if job.echo else ""
        for j, s in enumerate(group):
            choices.append({"index": i * job.n + j, "text": head + trim_stop(s.text, job.stop),
                            "finish_reason": s.finish_reason, "logprobs": None})
            if job.logprobs is not None:
                tokens = ids[i] + s.token_ids
                scored = await asyncio.wrap_future(batcher.call(partial(score, batcher.engine.policy, tokens, job.logprobs)))
                choices[-1]["logprobs"] = openai_logprobs(encoder.tokenizer, tokens, scored, first=0 if job.echo else len(ids[i]))
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": served,
            "choices": choices, "usage": usage}
