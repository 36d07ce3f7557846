"""A transformers rollout engine with its own decoding loop (KV cache, shared prompt prefill).

Why not `model.generate`: on a 2-core CPU, generate spends most of its time outside the model
(logits processors, stopping criteria, stop-string matching); this loop does only what sampling
needs, and things generate does not:
- the prompt is prefilled once and its KV cache copied to its n samples;
- finished sequences leave the batch (their cache rows are dropped), so the remaining ones run faster;
- the KV cache grows in place and, on a CPU, the linear layers run as prepacked oneDNN matmuls
  (rollout/decoding.py): the decode step's skinny matmuls were most of its time;
- stop strings are looked for only after a token that can end one (its text holds a stop string's
  last character), not by decoding every row's tail at every token.
Log-probs are those of softmax(logits / temperature) before top-p truncation, the distribution the
trainer recomputes (TRL and verl make the same choice).

`decode_dtype="bfloat16"` samples from a bf16 copy of the policy, refreshed from the policy's weights at
every `generate` call (as RL frameworks roll out in bf16 while training in fp32; while the policy trains, the
copy holds no weights between calls); on CPUs with bf16
units (AVX-512 bf16, as here) decoding is much faster (see bench/grpo_vs_trl.py). The trainer recomputes
all log-probs with its own weights; the sampler's own log-probs (`Sample.logprobs`) enter the loss only
through GRPO's truncated importance weights min(pi_old / pi_sampler, C) (algorithms/grpo.py).
"""
from __future__ import annotations

import contextlib
import copy

import torch

from r1lab.rollout import Sample, Sampling, check_context
from r1lab.rollout.decoding import GrowingCache, packed_linears
from r1lab.rollout.lean_decode import LeanDecoder
from r1lab.distributed import is_sharded


NUCLEUS_CANDIDATES = 1024      # the top-p nucleus is looked for among the k most likely tokens first
CDF_BLOCK = 1024               # vocabulary block of the two-level inverse CDF


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities sorted descending with those outside the top-p nucleus zeroed, their ids), both (B, K).
    Exact: the K = 1024 most likely tokens are sorted first, the whole vocabulary only for rows whose
    nucleus is not inside them (their mass < top_p); a full sort of a 49k vocabulary costs ~10x more."""
    top, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)             # (B, K)
    if top.shape[-1] < probs.shape[-1] and bool((top.double().sum(-1) <= top_p).any()):
        top, order = probs.sort(dim=-1, descending=True)                                     # (B, V)
    before = top.double().cumsum(-1) - top                                                   # mass of the more likely
    return top.masked_fill(before > top_p, 0.0), order


def sample_tokens(logprobs: torch.Tensor, top_p: float, generator) -> torch.Tensor:
    """Draw one id per row from log-probs (B, V), restricted to the top-p nucleus. Returns (B,).
    `generator`: one torch.Generator for the batch, or a list with one per row (seeded rollouts).

    Inverse-CDF sampling with one float64 uniform per row, in two levels: the block (of CDF_BLOCK
    tokens) from the cumulative float64 sums of the blocks, then the token from the cumulative sum inside
    that block. An exact draw that touches the vocabulary once in float32 instead of a float64 cumulative
    sum over all of it."""
    probs, order = logprobs.exp(), None                                                      # (B, V)
    if top_p < 1.0:
        probs, order = nucleus(probs, top_p)
    rows, width = probs.shape
    blocks = torch.nn.functional.pad(probs, (0, (-width) % CDF_BLOCK)).view(rows, -1, CDF_BLOCK)   # (B, nb, block)
    block_cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)                              # (B, nb)
    if isinstance(generator, list):
        u = torch.cat([torch.rand(1, 1, generator=g, dtype=torch.float64, device=probs.device) for g in generator])
    else:
        u = torch.rand(rows, 1, generator=generator, dtype=torch.float64, device=probs.device)
    u = u * block_cdf[:, -1:]                                                                # (B, 1)
    block = torch.searchsorted(block_cdf, u, right=True).clamp_max(block_cdf.shape[1] - 1)   # (B, 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp_min(0)), 0.0)      # (B, 1)
    inside = blocks.gather(1, block[..., None].expand(-1, -1, CDF_BLOCK)).squeeze(1).double().cumsum(-1) + before
    chosen = (block * CDF_BLOCK + torch.searchsorted(inside, u, right=True).clamp_max(CDF_BLOCK - 1)).clamp_max(width - 1)
    return (chosen if order is None else order.gather(-1, chosen)).squeeze(-1)


def decode_attention(device: torch.device):
    """On a GPU, attention without cuDNN's kernel while decoding: torch's SDPA picks it for bf16 on recent GPUs,
    and it plans anew for every key length, i.e. at every token (measured on an H200: bf16 decode 2.5x slower
    than fp32, docs/gpu.md). Flash / memory-efficient attention have no such cost. Elsewhere, torch's choice."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class HFEngine:
    def __init__(self, model, tokenizer, max_batch: int = 64, seed: int = 0, decode_dtype: str | None = None,
                 own_copy: bool = False):
        """`own_copy`: decode from a copy of the model made now, before it is sharded (FSDP2), whose weights
        every process refreshes together with `sync_weights` (r1lab/distributed.py)."""
        self.policy, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.decode_dtype = getattr(torch, decode_dtype) if decode_dtype else None
        self.model = model
        if own_copy:
            self.model = copy.deepcopy(model).to(self.decode_dtype or next(model.parameters()).dtype).requires_grad_(False)
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        extra = getattr(model.generation_config, "eos_token_id", None)
        self.eos_ids |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
        self._packs, self._stop_enders = {}, {}      # packed weights between calls; stop strings -> token ids

    def _refresh_decoder(self) -> None:
        """Point `self.model` at a copy of the policy in decode_dtype, with the policy's current weights
        (a sharded policy's copy is refreshed by `sync_weights` instead: it takes every process)."""
        if self.model is self.policy:
            if self.decode_dtype in (None, next(self.policy.parameters()).dtype):
                return                                   # decodes from the policy itself
            self.model = copy.deepcopy(self.policy).to(self.decode_dtype).requires_grad_(False)
        if not is_sharded(self.policy):
            self.sync_weights()

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Copy the policy's current weights into the decoding copy; with a sharded policy every process
        calls this at once (each parameter is gathered from all of them)."""
        from torch.distributed.tensor import DTensor
        for mine, theirs in zip(self.model.parameters(), self.policy.parameters(), strict=True):
            full = theirs.full_tensor() if isinstance(theirs, DTensor) else theirs
            if mine.shape != full.shape:                 # dropped after the last rollout (`_drop_decoder_weights`)
                mine.data = torch.empty_like(full, dtype=mine.dtype)
            mine.copy_(full)

    @torch.no_grad()
    def _drop_decoder_weights(self) -> None:
        """Free a decoding copy's weights until the next `generate` refills them: while a policy is trained its
        copy is refreshed at every call anyway, so between rollouts it would only add a model's worth of memory
        to the training pass (SmolLM2-135M's bf16 copy: 0.27 GB). A sharded policy's copy is kept: it is
        refreshed by every process together (`sync_weights`)."""
        if self.model is not self.policy and not is_sharded(self.policy):
            for weight in self.model.parameters():
                weight.data = weight.data.new_empty(0)

    def generate(self, prompts: list[str], n: int, sampling: Sampling, watch=None, seeds=None) -> list[list[Sample]]:
        """n samples per prompt. `watch(k, tokens)`, if given, sees sample k's (= prompt * n + j) tokens
        after each new one and returns False to drop it (finish_reason "cancelled"): streaming, and
        freeing a disconnected client's rows. `seeds` (one per prompt) give each sample its own random
        stream, so what is drawn does not depend on which prompts share a batch (or a process). A prompt
        given as token ids is taken as it is (a tool-using episode goes on from the exact ids it sampled)."""
        ids = [p if isinstance(p, list) else self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        check_context(self.policy, list(map(len, ids)), sampling.max_new_tokens)
        self._refresh_decoder()
        per_chunk = max(1, self.max_batch // n)
        samples: list[Sample] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with (packed_linears(self.model, min(self.max_batch, len(ids) * n), self._packs),
                  decode_attention(self.model.device)):
                for start in range(0, len(ids), per_chunk):
                    chunk_seeds = None if seeds is None else seeds[start:start + per_chunk]
                    samples += self._generate_chunk(ids[start:start + per_chunk], n, sampling, watch, start * n, chunk_seeds)
        finally:
            self.model.train(was_training)
            if self.policy.training:         # a policy being trained changes its weights after every rollout:
                self._packs.clear()          # its packs would be stale, and they hold a copy of its weights
                self._drop_decoder_weights()  # so would a decoding copy's
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _enders(self, stop: tuple[str, ...]) -> set[int]:
        """Ids of the tokens whose text holds the last character of a stop string: only they can end one."""
        if stop not in self._stop_enders:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._stop_enders[stop] = {i for i, text in enumerate(texts)                   # (or part of a character)
                                       if "\ufffd" in text or any(s[-1] in text for s in stop if s)}
        return self._stop_enders[stop]

    def _stopped(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        if tokens[-1] in self.eos_ids:
            return True
        if not stop or tokens[-1] not in self._enders(stop):
            return False
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    @torch.no_grad()
    def _generate_chunk(self, prompt_ids: list[list[int]], n: int, s: Sampling, watch=None, offset: int = 0,
                        seeds=None) -> list[Sample]:
        device = self.model.device
        generators = None if seeds is None else [torch.Generator(device=device).manual_seed((seed * 1_000_003 + j) % 2**63)
                                                 for seed in seeds for j in range(n)]
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.tokenizer.pad_token_id, device=device)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long, device=device)
        for row, p in enumerate(prompt_ids):                                   # left padding
            input_ids[row, width - len(p):] = torch.tensor(p, device=device)
            mask[row, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)                         # (P, W)
        cache = GrowingCache()
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(n)                                       # one prefill per prompt
        logits = out.logits[:, -1].repeat_interleave(n, 0)                     # (B, V), B = P * n
        mask = mask.repeat_interleave(n, 0)                                    # (B, W)
        next_position = positions[:, -1].repeat_interleave(n, 0) + 1          # (B,)
        rows = list(range(len(prompt_ids) * n))                                # output row of each batch row
        lean = LeanDecoder.of(self.model)                                      # None: the model's own forward
        tokens = [[] for _ in rows]
        logprobs = [[] for _ in rows]
        finish = ["length"] * len(rows)
        for step in range(s.max_new_tokens):
            if s.temperature > 0:
                step_logprobs = torch.log_softmax(logits.float() / s.temperature, dim=-1)   # (b, V)
                generator = self.generator if generators is None else [generators[row] for row in rows]
                chosen = sample_tokens(step_logprobs, s.top_p, generator)                 # (b,)
            else:
                step_logprobs = torch.log_softmax(logits.float(), dim=-1)
                chosen = step_logprobs.argmax(-1)
            chosen_logprobs = step_logprobs.gather(-1, chosen[:, None]).squeeze(-1).tolist()
            keep = []
            for j, (row, token) in enumerate(zip(rows, chosen.tolist())):
                tokens[row].append(token)
                logprobs[row].append(chosen_logprobs[j])
                wanted = watch is None or watch(offset + row, tokens[row])
                if self._stopped(tokens[row], s.stop):
                    finish[row] = "stop"
                elif not wanted:
                    finish[row] = "cancelled"
                else:
                    keep.append(j)
            if not keep or step == s.max_new_tokens - 1:
                break
            if len(keep) < len(rows):                                          # drop finished rows
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_position, chosen = mask[index], next_position[index], chosen[index]
                rows = [rows[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            if lean is not None:
                logits = lean.step(chosen, mask, next_position, cache)
            else:
                logits = self.model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position[:, None],
                                    cache=cache, use_cache=True).logits[:, -1]
            next_position = next_position + 1
        return [Sample(t, lp, self.tokenizer.decode(t, skip_special_tokens=True), f)
                for t, lp, f in zip(tokens, logprobs, finish)]
