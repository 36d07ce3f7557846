"""Token log-probabilities for `r1lab serve`'s /v1/completions (`logprobs`, `echo`): what
lm-evaluation-harness's log-likelihood tasks (multiple choice, perplexity) read from a server.

`score(model, ids, top)` runs the token ids once through the model (no cache, no sampling) and gives, at
each position after the first, the log-probability of the token there and the `top` most likely tokens:
the model's own distribution (temperature 1, no top-p), as vLLM's default (`raw_logprobs`) and OpenAI's
legacy completions report them, whatever the request sampled with. The scoring pass uses the served
policy itself, not a lower-precision decoding copy. The head is applied a chunk of positions at a time
(sequences.CHUNK_BYTES), so a 262k-token vocabulary never holds a whole prompt's logits.

`openai_logprobs` lays the result out as OpenAI's legacy `logprobs` object: `tokens`, `token_logprobs`
(null for a prompt's first token, which nothing predicts), `top_logprobs` (a dict token -> log-prob per
position, null at the first) and `text_offset` (each token's start in the choice's text).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from r1lab.algorithms.sequences import CHUNK_BYTES, head_logits, lm_head


@dataclass(frozen=True)
class Scored:
    token_logprobs: list[float]               # ids[1:]'s log-probs, one per position after the first
    top: list[list[tuple[int, float]]]        # per position after the first: the `top` (id, log-prob), best first


@torch.no_grad()
def score(model, ids: list[int], top: int = 0) -> Scored:
    """log p(ids[t] | ids[:t]) for t >= 1, and the `top` most likely ids at each such t."""
    inputs = torch.tensor([ids], device=model.device)
    head, was_training = lm_head(model), model.training
    model.eval()
    try:
        if head is None:                                                   # logits as the model computes them
            outputs = model(input_ids=inputs, use_cache=False).logits[0, :-1]                      # (L-1, V)
        else:                                                              # hidden states; the head per chunk
            outputs = model.get_decoder()(input_ids=inputs, use_cache=False).last_hidden_state[0, :-1]  # (L-1, H)
    finally:
        model.train(was_training)
    targets = inputs[0, 1:]
    chunk = max(1, CHUNK_BYTES // (4 * (outputs.shape[-1] if head is None else head[0].shape[0])))
    chosen, best = [], []
    for i in range(0, len(ids) - 1, chunk):
        part = outputs[i:i + chunk]
        logits = part.float() if head is None else head_logits(part, *head)                          # (n, V)
        logprobs = logits.log_softmax(-1)
        chosen += logprobs.gather(-1, targets[i:i + chunk, None]).squeeze(-1).tolist()
        values, indices = logprobs.topk(top, dim=-1)
        best += [list(zip(row_ids, row_values)) for row_ids, row_values in zip(indices.tolist(), values.tolist())]
    return Scored(chosen, best)


def openai_logprobs(tokenizer, ids: list[int], scored: Scored, first: int) -> dict:
    """OpenAI's legacy logprobs object for ids[first:] (with `echo`, first = 0: the prompt's tokens too; the
    prompt's first token gets nulls). `scored` is `score(model, ids, top)`; each position's `top_logprobs` holds
    its top tokens and the chosen one (so up to top + 1, as OpenAI's); `text_offset` counts from ids[first]'s
    text, the start of the choice's text."""
    tokens = [tokenizer.decode([t]) for t in ids[first:]]
    token_logprobs, top_logprobs = ([None], [None]) if first == 0 else ([], [])
    for t in range(max(first, 1), len(ids)):
        value = scored.token_logprobs[t - 1]
        token_logprobs.append(value)
        pairs = [*scored.top[t - 1], (ids[t], value)]
        top_logprobs.append({tokenizer.decode([i]): v for i, v in reversed(pairs)})   # a text twice: the best stays
    starts, at = [], 0
    for text in tokens:
        starts.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": starts}
