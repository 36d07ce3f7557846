"""Training batches of (prompt, completion) and the per-token log-probs of the completions.

The G completions of a group share one prompt, so the prompt is run ONCE per micro-batch and its
KV cache (with gradients) is indexed out to its completions; the completions then run on top of it.
Against running every (prompt + completion) row in full this saves (G - 1) prompt passes per group:
with the R1-Zero template's ~100-token prompt and 64-token completions, G = 4, about 45% of the
compute of a step. The vocabulary projection is only computed at completion positions.

Layout: unique prompts (U, P) left-padded; completions (B, C) right-padded; `owner` (B,) maps each
completion to its prompt row. With gradient checkpointing (which cannot keep a cache) each row runs
in full instead (`shared=False`).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache


def pad_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, device) -> dict:
    """Tensors for rows of (prompt, completion); consecutive rows with equal prompts share one prompt row."""
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
    for i, c in enumerate(completion_ids):
        completions[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, :len(c)] = 1
    return {"prompt_ids": prompts.to(device), "prompt_mask": prompt_mask.to(device),                   # (U, P)
            "owner": torch.tensor(owner, device=device),                                                # (B,)
            "completion_ids": completions.to(device), "completion_mask": completion_mask.to(device)}  # (B, C)


def _logits_shared(model, batch: dict) -> torch.Tensor:
    """Completion-position logits (B, C, V): prompts once, their cache indexed out to the completions."""
    positions = (batch["prompt_mask"].cumsum(-1) - 1).clamp(min=0)                                # (U, P)
    cache = DynamicCache()
    prefill = model(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], position_ids=positions,
                    cache=cache, use_cache=True, logits_to_keep=1)
    owner = batch["owner"]
    cache.batch_select_indices(owner)
    first = prefill.logits[:, -1][owner]                                                            # (B, V)
    completion_ids = batch["completion_ids"][:, :-1]                                               # (B, C-1) inputs
    if completion_ids.shape[1] == 0:
        return first[:, None]
    mask = torch.cat([batch["prompt_mask"][owner], batch["completion_mask"][:, :-1]], dim=1)      # (B, P+C-1)
    start = batch["prompt_mask"].sum(-1)[owner]                                                     # (B,)
    rest = model(input_ids=completion_ids, attention_mask=mask, cache=cache, use_cache=True,
                 position_ids=start[:, None] + torch.arange(completion_ids.shape[1], device=start.device))
    return torch.cat([first[:, None], rest.logits], dim=1)                                          # (B, C, V)


def _logits_full(model, batch: dict) -> torch.Tensor:
    """Completion-position logits (B, C, V), each row run as prompt + completion (no cache)."""
    owner, width = batch["owner"], batch["completion_ids"].shape[1]
    input_ids = torch.cat([batch["prompt_ids"][owner], batch["completion_ids"]], dim=1)           # (B, P+C)
    mask = torch.cat([batch["prompt_mask"][owner], batch["completion_mask"]], dim=1)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=width + 1, use_cache=False)
    return out.logits[:, :-1]


class CompletionLogits(torch.nn.Module):
    """A causal LM as one module whose forward gives a batch's completion-position logits (B, C, V):
    one call per micro-batch even when the prompt and completions run separately, as DDP/FSDP expect."""

    def __init__(self, model, shared: bool = True):
        super().__init__()
        self.model, self.shared = model, shared

    def forward(self, batch: dict) -> torch.Tensor:
        return (_logits_shared if self.shared else _logits_full)(self.model, batch)


def token_logprobs(model, batch: dict, temperature: float = 1.0, with_entropy: bool = False, shared: bool = True):
    """log pi(o_t | q, o_<t) for each completion token, (B, C); and the mean entropy (no grad) if asked.
    `model` is a causal LM, or a (wrapped) CompletionLogits, whose own `shared` then applies."""
    logits = model(batch) if not hasattr(model, "config") else (_logits_shared if shared else _logits_full)(model, batch)
    logits = logits.float() / temperature                                                           # (B, C, V)
    logprobs = logits.gather(-1, batch["completion_ids"][..., None]).squeeze(-1) - logits.logsumexp(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            per_token = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)       # (B, C)
            mask = batch["completion_mask"].float()
            entropy = ((per_token * mask).sum() / mask.sum().clamp_min(1)).item()
    return logprobs, entropy
