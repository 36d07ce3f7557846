"""The GRPO objective as pure tensor math (paper eq. 1-3); tensors in, (loss, metrics) out.

Shapes: B sequences in a (micro-)batch, T completion tokens (right-padded, `mask` marks real ones).

Choices, each named and tested:
- Advantages (eq. 3) divide by the group's sample standard deviation (unbiased, as TRL and verl
  compute it); with `scale=False` they are only centred (Dr. GRPO). A group whose rewards are all
  equal gets exactly 0, with no epsilon in the denominator, and is counted.
- The KL term is the k3 estimator of eq. 2, per token: pi_ref/pi - log(pi_ref/pi) - 1 >= 0.
- The clipped ratio uses `eps_low` below and `eps_high` above 1 (equal in the paper; DAPO's
  clip-higher raises eps_high).
- `aggregate` turns per-token values into the loss. Its denominators are those of the WHOLE batch
  (`batch_sequences`, `batch_tokens`), so summing micro-batch losses gives the whole-batch loss:
    sample:   1/G sum_i 1/|o_i| sum_t   (the paper)
    token:    sum_i sum_t / sum_i |o_i| (DAPO)
    constant: sum_i sum_t / (G * L)     (Dr. GRPO, L = max completion length)
"""
from __future__ import annotations

import torch

AGGREGATIONS = ("sample", "token", "constant")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> tuple[torch.Tensor, dict]:
    """Eq. 3 on rewards (N*G,), groups contiguous. Returns advantages (N*G,) and metrics."""
    grouped = rewards.view(-1, group_size)                                   # (N, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
    constant = std.squeeze(1) == 0                                           # (N,)
    if scale:
        centred = torch.where(std > 0, centred / std.clamp_min(torch.finfo(std.dtype).tiny), torch.zeros_like(centred))
    advantages = torch.where(constant[:, None], torch.zeros_like(centred), centred)
    return advantages.reshape(-1), {"zero_std_groups": constant.float().mean().item()}


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Eq. 2 per token, (B, T): r - log r - 1 with r = pi_ref / pi_theta."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def clipped_surrogate(logprobs, old_logprobs, advantages, eps_low: float, eps_high: float):
    """Per-token min(r A, clip(r, 1-eps_low, 1+eps_high) A), (B, T), and where the clip was active."""
    ratio = torch.exp(logprobs - old_logprobs)                               # (B, T)
    advantages = advantages[:, None]                                         # (B, 1)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    return torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, batch_sequences: int, batch_tokens: int,
              max_length: int) -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar with whole-batch denominators (see module docstring)."""
    mask = mask.to(values.dtype)
    if mode == "sample":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp_min(1)   # (B,)
        return per_sequence.sum() / batch_sequences
    if mode == "token":
        return (values * mask).sum() / max(batch_tokens, 1)
    if mode == "constant":
        return (values * mask).sum() / (batch_sequences * max_length)
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, *, eps_low: float = 0.2,
              eps_high: float | None = None, beta: float = 0.04, mode: str = "sample",
              batch_sequences: int, batch_tokens: int, max_length: int) -> tuple[torch.Tensor, dict]:
    """Negative eq. 1 for a (micro-)batch. logprobs/old/ref: (B, T); advantages: (B,); mask: (B, T).

    ref_logprobs may be None only when beta == 0 (no reference model is loaded then)."""
    surrogate, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, eps_low,
                                           eps_low if eps_high is None else eps_high)
    per_token = -surrogate
    mask_f = mask.to(logprobs.dtype)
    tokens = mask_f.sum().clamp_min(1)
    metrics = {"clip_fraction": ((clipped.to(mask_f.dtype) * mask_f).sum() / tokens).item()}
    if beta != 0:
        kl = kl_k3(logprobs, ref_logprobs)
        per_token = per_token + beta * kl
        metrics["kl"] = ((kl.detach() * mask_f).sum() / tokens).item()
    loss = aggregate(per_token, mask, mode, batch_sequences, batch_tokens, max_length)
    return loss, metrics


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None,
             batch_tokens: int | None = None) -> torch.Tensor:
    """Negative log-likelihood of the masked tokens, (B, T) -> scalar, mean over the batch's tokens.
    `weights` (B,) scales each sequence; `batch_tokens` is the whole batch's token count (accumulation)."""
    per_token = -logprobs * mask.to(logprobs.dtype)
    if weights is not None:
        per_token = per_token * weights[:, None]
    return per_token.sum() / (batch_tokens if batch_tokens is not None else mask.sum().clamp_min(1))


def compete_weights(rewards: torch.Tensor, group_size: int, by_advantage: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Learning from competition without RL: which members of each group to imitate and which to push down.

    rewards (N*G,), groups contiguous. A member above its group's mean is imitated, one below it is
    pushed down; equal-reward groups teach nothing. Weights are 1, or with `by_advantage` the member's
    eq. 3 advantage (|A| for the pushed-down). Returns (imitate (N*G,), push_down (N*G,)), both >= 0."""
    advantages, _ = group_advantages(rewards, group_size, scale=True)
    if by_advantage:
        return advantages.clamp(min=0), (-advantages).clamp(min=0)
    return (advantages > 0).to(rewards.dtype), (advantages < 0).to(rewards.dtype)


def unlikelihood_loss(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, batch_tokens: int) -> torch.Tensor:
    """-log(1 - pi(o_t)) on the masked tokens of pushed-down sequences (Welleck et al., 2019), (B, T) -> scalar,
    each sequence scaled by weights (B,), summed over the whole batch's `batch_tokens`."""
    probs = logprobs.exp().clamp(max=1 - 1e-6)
    per_token = -torch.log1p(-probs) * mask.to(logprobs.dtype) * weights[:, None]
    return per_token.sum() / max(batch_tokens, 1)
