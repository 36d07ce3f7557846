"""Prompt + completion batches for training, and per-token log-probs of the completions.

Layout (B rows): the prompt left-padded to P tokens, the completion right-padded to C tokens, so
every completion starts at column P and `logits_to_keep=C+1` computes the vocabulary projection for
completion positions only (prompt logits, the largest tensor of a step, are never built).
"""
from __future__ import annotations

import torch


def pad_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, device) -> dict:
    prompt_width = max(len(p) for p in prompt_ids)
    completion_width = max(1, max(len(c) for c in completion_ids))
    rows = len(prompt_ids)
    input_ids = torch.full((rows, prompt_width + completion_width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, prompt_width - len(p):prompt_width + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention[i, prompt_width - len(p):prompt_width + len(c)] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device),           # (B, P+C)
            "position_ids": positions.to(device),
            "completion_ids": input_ids[:, prompt_width:].to(device),                               # (B, C)
            "completion_mask": attention[:, prompt_width:].to(device)}                              # (B, C)


def token_logprobs(model, batch: dict, temperature: float = 1.0, with_entropy: bool = False):
    """log pi(o_t | q, o_<t) for each completion token, (B, C); and the mean entropy (no grad) if asked."""
    width = batch["completion_ids"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=width + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / temperature                                     # (B, C, V)
    logprobs = logits.gather(-1, batch["completion_ids"][..., None]).squeeze(-1) - logits.logsumexp(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            p = torch.softmax(logits, -1)
            per_token = -(p * torch.log_softmax(logits, -1)).sum(-1)                      # (B, C)
            mask = batch["completion_mask"].float()
            entropy = ((per_token * mask).sum() / mask.sum().clamp_min(1)).item()
    return logprobs, entropy
