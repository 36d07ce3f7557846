"""Training batches of (prompt, completion) and the per-token log-probs of the completions.

The G completions of a group share one prompt, so the prompt is run ONCE per micro-batch and its
KV cache (with gradients) is indexed out to its completions; the completions then run on top of it.
Against running every (prompt + completion) row in full this saves (G - 1) prompt passes per group:
with the R1-Zero template's ~100-token prompt and 64-token completions, G = 4, about 45% of the
compute of a step.

The completions run on that cache in length buckets (`length_buckets`): rows of similar length
together, each bucket padded only to its own longest, so a group's one long completion does not pad the
others to its length. That is on a CPU, where a padded token costs as much as a real one; on a GPU,
where padding is cheap until the matmuls fill it, they run as one bucket (not measured there). A bucket
costs its padded tokens plus `BUCKET_OVERHEAD` for its own forward and backward: on 2 Zen 4 cores one
more bucket of 8 x 64 tokens cost SmolLM2-135M ~0.18 s with training's malloc setting (r1lab/allocator.py),
~40 tokens' worth (~0.5 s without it), and 96 beat 32 in `bench/grpo_vs_trl.py --setting realistic` (51.4
against 54.9 s a step, one run each): the split is kept for long tails. The vocabulary projection is only
computed at real completion tokens; the results are 0 at padding.

Layout: unique prompts (U, P) left-padded; completions (B, C) right-padded; `owner` (B,) maps each
completion to its prompt row. SFT's rows (one completion a prompt, nothing to share) and gradient checkpointing
(which cannot keep a cache) run each row in full instead (`shared=False`): its prompt then its completion with no
padding between them, in length buckets of the two together, each padded on the right to its longest (SFT rows of
20-100 + up to 256 tokens: 1.23x the speed of one right-padded bucket at 0.77x the memory, `bench/logprobs_pass.py
--buckets --sft --rows 8 --completion 256`; 1.25x and 0.74x against prompts and completions padded separately).

Log-probs and entropy are computed from the final hidden states and the LM head's weight one slice of the
vocabulary at a time (`chunked_logprobs`, r1lab/algorithms/head_logprobs.py), so the fp32 (B, C, V) logits are
never held whole (as Liger's and torchtune's chunked losses do): each slice's logits are recomputed in backward,
which costs one more LM-head matmul and saves B x C x V x 4 bytes of memory and the passes over it; a
micro-batch whose logits fit in `KEEP_BYTES` keeps them instead (the matmul costs more than the memory there).
Models whose logits are more than `softcap(hidden @ W.T)` (a bias, a logit scale, a LoRA-wrapped head) take
their own logits instead.

Packed (`pad_batch(..., packed=True)`, opt-in): the micro-batch runs as ONE row with no padding, each
unique prompt followed by the inputs of its completions, under an explicit (1, 1, L, L) mask: a prompt
token sees its prompt, a completion token its prompt and its own earlier tokens, nothing else; positions
restart per prompt and continue into each completion. So the prompt is still run once per group (the
shared prompt pass, without a cache: it also holds under gradient checkpointing), and the LM head runs
only at real completion tokens. Each token sees the same tokens at the same positions as in the padded
layout: the results are the same up to float summation order. The (B, C) layout stays for the losses
(packed log-probs are scattered back; 0 at padding). Sliding-window layers get the window in their mask
(a {layer type: mask} dict when full and sliding layers mix, as Gemma 2/3 and Qwen 2/3 take). Attention
implementations other than sdpa and eager (flash-attention varlen, flex), and layer types other than
full and sliding, cannot take such a mask: those models run padded, with the same results. The cost:
the mask is dense, so attention scores L x L pairs (most of them masked) where padded rows score
B x C x (P + C); fewer tokens go through the linear layers and the head. On 2 Zen 4 cores (SmolLM2-135M,
8 rows of 102-256 tokens) packed ran at 1.06x the speed of one padded bucket, length buckets at 1.23x
(bench/logprobs_pass.py --rows 8 --completion 256 --packed / --buckets): on a CPU buckets skip padding faster.
"""
from __future__ import annotations

import contextlib
import math

import torch
from transformers import DynamicCache

from r1lab.algorithms.head_logprobs import head_logprobs
from r1lab.algorithms.tied_lookup import lookups_into_gradient

CHUNK_BYTES = 32 * 2 ** 20      # fp32 logits per chunk of positions, no gradient (serve_logprobs): 170 x 49k
KEEP_BYTES = 128 * 2 ** 20      # a micro-batch's fp32 logits up to this size are kept for backward, not recomputed
BUCKET_OVERHEAD = 96           # what one more length bucket must save, in padded tokens: its forward and backward cost


def pad_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, device,
              loss_masks: list[list[int]] | None = None, packed: bool = False) -> dict:
    """Tensors for rows of (prompt, completion); consecutive rows with equal prompts share one prompt row.

    Two masks over the completions, (B, C): `completion_mask` (1 on every real token: what attention sees)
    and `loss_mask` (1 on the tokens the model wrote: what losses, entropies and mismatches count). They
    differ in tool-using episodes, whose tool outputs are read by the later tokens but were not sampled
    (`loss_masks`, one list per completion, 1 = the model's token; an empty list or None: all 1).
    `packed`: also the one-row layout the forward then runs (`pack_rows`)."""
    unique, owner = [], []
    for p in prompt_ids:
        if not unique or unique[-1] != p:
            unique.append(p)
        owner.append(len(unique) - 1)
    prompt_width, completion_width = max(map(len, unique)), max(1, max(map(len, completion_ids)))
    prompts = torch.full((len(unique), prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompts)
    for i, p in enumerate(unique):
        prompts[i, prompt_width - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[i, prompt_width - len(p):] = 1
    completions = torch.full((len(completion_ids), completion_width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros_like(completions)
    loss_mask = torch.zeros_like(completions)
    for i, c in enumerate(completion_ids):
        completions[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, :len(c)] = 1
        own = loss_masks[i] if loss_masks and loss_masks[i] else [1] * len(c)
        if len(own) != len(c):
            raise ValueError(f"row {i}: loss mask of {len(own)} for {len(c)} tokens")
        loss_mask[i, :len(c)] = torch.tensor(own, dtype=torch.long)
    return {"prompt_ids": prompts.to(device), "prompt_mask": prompt_mask.to(device),                   # (U, P)
            "owner": torch.tensor(owner, device=device),                                                # (B,)
            "completion_ids": completions.to(device), "completion_mask": completion_mask.to(device),  # (B, C)
            "loss_mask": loss_mask.to(device),                                                          # (B, C)
            **(pack_rows(unique, owner, completion_ids, device) if packed else {})}


def pack_rows(unique: list[list[int]], owner: list[int], completion_ids: list[list[int]], device) -> dict:
    """One row of L tokens, no padding: each unique prompt, then the inputs of its completions (all but their
    last token). `packed_segment` (L,) is the prompt a token belongs to, `packed_branch` (L,) its completion
    (-1 on prompt tokens); `packed_at` (N,) is, for each real completion token in (B, C) row-major order, the
    position whose output predicts it (the prompt's last token for a completion's first)."""
    ids, positions, segment, branch, at = [], [], [], [], []
    for u, prompt in enumerate(unique):
        ids += prompt
        positions += range(len(prompt))
        segment += [u] * len(prompt)
        branch += [-1] * len(prompt)
        last = len(ids) - 1
        for i in (i for i, o in enumerate(owner) if o == u):                  # owners ascend: row-major order
            c = completion_ids[i]
            at += ([last] if c else []) + list(range(len(ids), len(ids) + len(c) - 1))
            ids += c[:-1]
            positions += range(len(prompt), len(prompt) + len(c) - 1)
            segment += [u] * (len(c) - 1)
            branch += [i] * (len(c) - 1)
    as_long = lambda values: torch.tensor(values, dtype=torch.long, device=device)
    return {"packed_ids": as_long([ids]), "packed_positions": as_long([positions]),                   # (1, L)
            "packed_segment": as_long(segment), "packed_branch": as_long(branch),                     # (L,)
            "packed_at": as_long(at)}                                                                   # (N,)


def lm_head(model) -> tuple[torch.Tensor, float | None] | None:
    """(weight (V, H), softcap) when the model's logits are exactly softcap(hidden @ weight.T), else None."""
    config, head = model.config, model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in ("logit_scale", "logits_scaling")):
        return None
    return head.weight, getattr(config, "final_logit_softcapping", None)


def _run(model, chunked: bool, keep: int | torch.Tensor = 0, **inputs) -> torch.Tensor:
    """The final hidden states (chunked: the head is applied later) or logits at the last `keep` positions (0: all),
    or at the positions `keep` (a 1-D tensor) names."""
    if chunked:
        hidden = model.get_decoder()(**inputs).last_hidden_state
        return hidden[:, keep] if torch.is_tensor(keep) else hidden[:, -keep:] if keep else hidden
    return model(**inputs, logits_to_keep=keep).logits


def length_buckets(lengths: list[int], overhead: float) -> list[list[int]]:
    """The rows (indices into `lengths`) in buckets of similar length, each to be padded to its longest: of the
    splits of the rows sorted by length, the one with the fewest padded tokens plus `overhead` a bucket, by
    dynamic programming over the cut points. One bucket when lengths are alike or `overhead` is infinite."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)              # longest first
    cost, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):                       # cost[end]: the best split of the first `end` rows
        for start in range(end):                               # its last bucket: order[start:end], longest first
            candidate = cost[start] + (end - start) * lengths[order[start]] + overhead
            if candidate < cost[end]:
                cost[end], cut[end] = candidate, start
    buckets, end = [], len(order)
    while end:
        buckets.append(order[cut[end]:end])
        end = cut[end]
    return buckets[::-1]


def bucket_overhead(device: torch.device) -> float:
    """A length bucket's cost in padded tokens: `BUCKET_OVERHEAD` on a CPU; infinite (one bucket) on a GPU."""
    return BUCKET_OVERHEAD if device.type == "cpu" else math.inf


def _outputs_shared(model, batch: dict, chunked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (N, H or V) at the real completion tokens and their places (N,) in the flattened (B, C): prompts
    once, their cache indexed out to the completions, which run in length buckets, each padded to its longest."""
    positions = (batch["prompt_mask"].cumsum(-1) - 1).clamp(min=0)                                # (U, P)
    cache = DynamicCache()
    prefill = _run(model, chunked, 1, input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"],
                   position_ids=positions, cache=cache, use_cache=True)
    prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]                        # (U, heads, P, d) each
    starts = batch["prompt_mask"].sum(-1)                                                          # (U,)
    completion_mask, width = batch["completion_mask"], batch["completion_ids"].shape[1]
    lengths = completion_mask.sum(-1)                                                              # (B,)
    outputs, places = [], []
    for bucket in length_buckets(lengths.tolist(), bucket_overhead(lengths.device)):
        rows = torch.tensor(bucket, device=lengths.device)
        owner, span = batch["owner"][rows], max(1, int(lengths[rows].max()))
        out = prefill[owner, -1:]                                  # (b, 1, H|V): predicts each completion's first token
        if span > 1:
            inputs = batch["completion_ids"][rows, :span - 1]                                       # (b, span-1)
            mask = torch.cat([batch["prompt_mask"][owner], completion_mask[rows, :span - 1]], dim=1)
            kv = DynamicCache(ddp_cache_data=[(keys[owner], values[owner]) if keys is not None else (None, None)
                                              for keys, values in prompt_kv])     # an empty layer stays empty
            rest = _run(model, chunked, input_ids=inputs, attention_mask=mask, cache=kv, use_cache=True,
                        position_ids=starts[owner][:, None] + torch.arange(span - 1, device=rows.device))
            out = torch.cat([out, rest], dim=1)                                                     # (b, span, H|V)
        real = completion_mask[rows, :span].bool()
        outputs.append(out[real])
        places.append((rows[:, None] * width + torch.arange(span, device=rows.device))[real])
    return torch.cat(outputs), torch.cat(places)


def _outputs_full(model, batch: dict, chunked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (N, H or V) at the real completion tokens and their places (N,) in the flattened (B, C), each row
    run as its prompt then its completion (no cache), in length buckets of prompt + completion, each padded on the
    right to its longest: no padding between a short prompt and its completion (SFT's rows, one prompt each)."""
    owner, width = batch["owner"], batch["completion_ids"].shape[1]
    prompt_width = batch["prompt_ids"].shape[1]
    prompt_lengths, lengths = batch["prompt_mask"].sum(-1)[owner], batch["completion_mask"].sum(-1)      # (B,)
    totals = prompt_lengths + lengths
    outputs, places = [], []
    for bucket in length_buckets(totals.tolist(), bucket_overhead(lengths.device)):
        rows = torch.tensor(bucket, device=lengths.device)
        span, longest = int(totals[rows].max()), max(1, int(lengths[rows].max()))
        at = torch.arange(span, device=rows.device)                                                 # (L,)
        starts = prompt_lengths[rows][:, None]                                                      # (b, 1)
        prompt_at = (prompt_width - starts + at).clamp(max=prompt_width - 1)        # the left-padded prompt's columns
        prompt_tokens = batch["prompt_ids"][owner[rows]].gather(1, prompt_at)
        completion_tokens = batch["completion_ids"][rows].gather(1, (at - starts).clamp(0, width - 1))
        inputs = torch.where(at < starts, prompt_tokens, completion_tokens)                        # (b, L)
        first = max(0, int(starts.min()) - 1)                     # the earliest output predicting a completion token
        out = _run(model, chunked, torch.arange(first, span, device=rows.device), input_ids=inputs,
                   attention_mask=(at < totals[rows][:, None]).long(), position_ids=at.expand(len(bucket), -1),
                   use_cache=False)                                                          # (b, L - first, H|V)
        predicting = (starts - 1 - first + torch.arange(longest, device=rows.device)).clamp(0, out.shape[1] - 1)
        out = out.gather(1, predicting[..., None].expand(-1, -1, out.shape[-1]))                   # (b, longest, H|V)
        real = batch["completion_mask"][rows, :longest].bool()
        outputs.append(out[real])
        places.append((rows[:, None] * width + torch.arange(longest, device=rows.device))[real])
    return torch.cat(outputs), torch.cat(places)


def _places(real: torch.Tensor) -> torch.Tensor:
    """The places (N,) of the True entries of `real` (B, C) in the flattened (B, C), row-major."""
    return real.flatten().nonzero().squeeze(1)


def packed_attention(model, batch: dict):
    """The packed row's attention mask, (1, 1, L, L) (bool for sdpa, additive for eager), or {layer type: mask}
    when full and sliding-window layers mix; None when the model cannot take one (then it runs padded)."""
    config = model.config
    kinds = set(getattr(config, "layer_types", None)
                or ["sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"])
    if config._attn_implementation not in ("sdpa", "eager") or not kinds <= {"full_attention", "sliding_attention"}:
        return None
    segment, branch, pos = batch["packed_segment"], batch["packed_branch"], batch["packed_positions"][0]   # (L,)
    sees = ((segment[:, None] == segment[None, :]) & (pos[None, :] <= pos[:, None])
            & ((branch[None, :] == -1) | (branch[None, :] == branch[:, None])))              # (L, L) query, key
    masks = {kind: sees & (pos[None, :] > pos[:, None] - config.sliding_window) if kind == "sliding_attention"
             else sees for kind in kinds}                                  # transformers' window: key > query - window
    for kind, mask in masks.items():
        if config._attn_implementation == "eager":                       # eager adds the mask to the scores
            lowest = torch.finfo(model.dtype).min
            mask = torch.zeros(mask.shape, dtype=model.dtype, device=mask.device).masked_fill(~mask, lowest)
        masks[kind] = mask[None, None]                                                                  # (1, 1, L, L)
    return masks if len(masks) > 1 else masks.popitem()[1]


def _outputs_packed(model, batch: dict, chunked: bool, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (N, H or V) at `packed_at`, the one packed row run once under `mask`, and their completion tokens'
    places (N,) in the flattened (B, C)."""
    inputs = dict(input_ids=batch["packed_ids"], position_ids=batch["packed_positions"], attention_mask=mask,
                  use_cache=False)
    places = _places(batch["completion_mask"].bool())
    if chunked:
        return model.get_decoder()(**inputs).last_hidden_state[0, batch["packed_at"]], places
    return model(**inputs, logits_to_keep=batch["packed_at"]).logits[0], places


def logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / temperature) at `ids`, (N,), from logits (N, V); and each row's entropy (N,),
    without gradient, if asked."""
    logits = logits.float() / temperature                                                           # (N, V)
    normaliser = logits.logsumexp(-1)                                                               # (N,)
    logprobs = logits.gather(-1, ids[:, None]).squeeze(-1) - normaliser
    if not with_entropy:
        return logprobs, None
    with torch.no_grad():
        entropy = normaliser - (torch.softmax(logits, -1) * logits).sum(-1)                         # (N,)
    return logprobs, entropy


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """softcap(hidden @ weight.T) in fp32, (n, V): the logits `lm_head` describes, for a chunk of positions."""
    logits = (hidden @ weight.T).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                     softcap: float | None = None, with_entropy: bool = False, rows: int | None = None,
                     keep_bytes: int = KEEP_BYTES):
    """`logprobs_from_logits(softcap(hidden @ weight.T), ...)` for hidden (N, H), weight (V, H), ids (N,), one slice
    of `rows` vocabulary rows at a time, recomputed in backward (r1lab/algorithms/head_logprobs.py). Logits of
    `keep_bytes` or less in all (a small micro-batch: 512 tokens of a 49k vocabulary are 100 MB) are computed at
    once and kept instead: the head's matmul in backward cost more than the memory (a GRPO training pass of
    SmolLM2-135M, 8 x 64 tokens, on 2 Zen 4 cores: 3.40 against 3.69 s, +0.1 GB peak)."""
    if hidden.shape[0] * weight.shape[0] * 4 <= keep_bytes:
        return logprobs_from_logits(head_logits(hidden, weight, softcap), ids, temperature, with_entropy)
    return head_logprobs(hidden, weight, ids, temperature, softcap, with_entropy, rows)


class CompletionLogits(torch.nn.Module):
    """A causal LM as one module whose forward gives a batch's completion-token log-probs (B, C) and
    per-token entropies: one call per micro-batch, as DDP/FSDP expect, even when the prompt and the
    completions run separately."""

    def __init__(self, model, shared: bool = True):
        super().__init__()
        self.model, self.shared = model, shared
        self.lookups_into_gradient = False      # one process: a tied embedding's gradient added in place (tied_lookup.py)

    def forward(self, batch: dict, temperature: float = 1.0, with_entropy: bool = False):
        """Log-probs (B, C) of the completion tokens and their entropies (B, C) if asked; 0 at padding."""
        with lookups_into_gradient(self.model) if self.lookups_into_gradient else contextlib.nullcontext():
            return self._forward(batch, temperature, with_entropy)

    def _forward(self, batch: dict, temperature: float, with_entropy: bool):
        head = lm_head(self.model)
        mask = packed_attention(self.model, batch) if "packed_ids" in batch else None
        if mask is not None:
            outputs, places = _outputs_packed(self.model, batch, head is not None, mask)            # (N, H|V), (N,)
        else:
            outputs, places = (_outputs_shared if self.shared else _outputs_full)(self.model, batch, head is not None)
        shape = batch["completion_ids"].shape                                                       # (B, C)
        ids = batch["completion_ids"].flatten()[places]                                             # (N,)
        if head is None:
            logprobs, entropy = logprobs_from_logits(outputs, ids, temperature, with_entropy)
        else:
            logprobs, entropy = chunked_logprobs(outputs, head[0], ids, temperature, head[1], with_entropy)
        at = (places // shape[1], places % shape[1])
        in_place = lambda values: values.new_zeros(shape).index_put(at, values)      # a new tensor, not a view (FSDP2)
        return in_place(logprobs), None if entropy is None else in_place(entropy)


def token_logprobs(model, batch: dict, temperature: float = 1.0, with_entropy: bool = False, shared: bool = True):
    """log pi(o_t | q, o_<t) for each completion token, (B, C); and the mean entropy over the completion
    tokens (no grad) if asked. `model` is a causal LM, or a (wrapped) CompletionLogits, whose own `shared` applies."""
    policy = model if not hasattr(model, "config") else CompletionLogits(model, shared)
    logprobs, entropy = policy(batch, temperature, with_entropy)
    if entropy is not None:
        mask = batch.get("loss_mask", batch["completion_mask"]).bool()
        entropy = (torch.where(mask, entropy, 0.0).sum() / mask.sum().clamp_min(1)).item()
    return logprobs, entropy
