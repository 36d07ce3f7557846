"""A transformers rollout engine with its own decoding loop (KV cache, shared prompt prefill).

Why not `model.generate`: on a 2-core CPU, generate spends most of its time outside the model
(logits processors, stopping criteria, stop-string matching); this loop does only what sampling
needs, and two things generate does not:
- the prompt is prefilled once and its KV cache copied to its n samples;
- finished sequences leave the batch (their cache rows are dropped), so the remaining ones run faster.
Log-probs are those of softmax(logits / temperature) before top-p truncation, the distribution the
trainer recomputes (TRL and verl make the same choice).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from r1lab.rollout import Sample, Sampling


def sample_tokens(logprobs: torch.Tensor, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one id per row from log-probs (B, V), restricted to the top-p nucleus. Returns (B,)."""
    if top_p >= 1.0:
        return torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
    sorted_logprobs, order = logprobs.sort(dim=-1, descending=True)       # (B, V)
    probs = sorted_logprobs.exp()
    outside = probs.cumsum(-1) - probs > top_p                            # mass before this token already >= top_p
    choice = torch.multinomial(probs.masked_fill(outside, 0.0), 1, generator=generator)  # (B, 1)
    return order.gather(-1, choice).squeeze(-1)


class HFEngine:
    def __init__(self, model, tokenizer, max_batch: int = 64, seed: int = 0):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        extra = getattr(model.generation_config, "eos_token_id", None)
        self.eos_ids |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])

    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[Sample]]:
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        per_chunk = max(1, self.max_batch // n)
        samples: list[Sample] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(ids), per_chunk):
                samples += self._generate_chunk(ids[start:start + per_chunk], n, sampling)
        finally:
            self.model.train(was_training)
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _stopped(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        if tokens[-1] in self.eos_ids:
            return True
        if not stop:
            return False
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    @torch.no_grad()
    def _generate_chunk(self, prompt_ids: list[list[int]], n: int, s: Sampling) -> list[Sample]:
        device = self.model.device
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.tokenizer.pad_token_id, device=device)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long, device=device)
        for row, p in enumerate(prompt_ids):                                   # left padding
            input_ids[row, width - len(p):] = torch.tensor(p, device=device)
            mask[row, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)                         # (P, W)
        cache = DynamicCache()
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(n)                                       # one prefill per prompt
        logits = out.logits[:, -1].repeat_interleave(n, 0)                     # (B, V), B = P * n
        mask = mask.repeat_interleave(n, 0)                                    # (B, W)
        next_position = positions[:, -1].repeat_interleave(n, 0) + 1          # (B,)
        rows = list(range(len(prompt_ids) * n))                                # output row of each batch row
        tokens = [[] for _ in rows]
        logprobs = [[] for _ in rows]
        finish = ["length"] * len(rows)
        for step in range(s.max_new_tokens):
            if s.temperature > 0:
                step_logprobs = torch.log_softmax(logits.float() / s.temperature, dim=-1)   # (b, V)
                chosen = sample_tokens(step_logprobs, s.top_p, self.generator)            # (b,)
            else:
                step_logprobs = torch.log_softmax(logits.float(), dim=-1)
                chosen = step_logprobs.argmax(-1)
            chosen_logprobs = step_logprobs.gather(-1, chosen[:, None]).squeeze(-1).tolist()
            keep = []
            for j, (row, token) in enumerate(zip(rows, chosen.tolist())):
                tokens[row].append(token)
                logprobs[row].append(chosen_logprobs[j])
                if self._stopped(tokens[row], s.stop):
                    finish[row] = "stop"
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
            out = self.model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position[:, None],
                             cache=cache, use_cache=True)
            logits = out.logits[:, -1]
            next_position = next_position + 1
        return [Sample(t, lp, self.tokenizer.decode(t, skip_special_tokens=True), f)
                for t, lp, f in zip(tokens, logprobs, finish)]
