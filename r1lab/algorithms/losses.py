"""The GRPO objective as pure tensor math (paper eq. 1-3); tensors in, (loss, metrics) out.

Shapes: B sequences in a (micro-)batch, T completion tokens (right-padded, `mask` marks real ones).

Choices, each named and tested:
- Advantages (eq. 3) divide by the group's sample standard deviation (unbiased, as TRL and verl
  compute it) plus ADVANTAGE_EPS = 1e-4 (TRL's): two rewards 1e-6 apart get +-0.005 (verl's 1e-6
  would give +-0.29, no epsilon +-0.707), while 0/1 rewards move by only 1e-4 / std (0.04% at
  G = 16). With `scale=False` they are only centred (Dr. GRPO), no epsilon. Computed in float64,
  returned in the rewards' dtype.
- A group is constant when its rewards are equal up to rounding: max - min <= 4 machine epsilons of
  the rewards' dtype times max(1, max |r|) (float32 rounding alone gave [2.4] * 8 a std of ~1e-7
  and every member +0.935). It gets exactly 0 and is counted in `zero_std_groups`.
- Advantages, RLOO (`leave_one_out_advantages`, Ahmadian et al., 2024): r_i - mean_{j != i} r_j, no std
  scaling, constant groups 0 as above. It equals G/(G-1) times the centred reward.
- The KL term is the k3 estimator of eq. 2, per token: pi_ref/pi - log(pi_ref/pi) - 1 >= 0, computed as
  expm1(x) - x with x = log(pi_ref/pi) (exp(x) - x - 1 in float32 loses it to rounding for |x| < ~1e-3).
- Every log-ratio is clamped to +-LOG_RATIO_CLAMP = 20 before `exp` (as verl): the KL and the ratio
  stay finite, with zero gradient beyond the clamp. Padding is masked with `torch.where`, never by
  multiplying by 0, so a -inf log-prob at a pad position changes neither the loss nor any gradient.
- The clipped ratio uses `eps_low` below and `eps_high` above 1 (equal in the paper; DAPO's
  clip-higher raises eps_high).
- `importance_ratio` level "token" is eq. 1's pi_theta / pi_old per token; level "sequence" is GSPO's
  (Zheng et al., 2025): one ratio per sequence, exp(mean_t log r_t) (the geometric mean), clipped per
  sequence and shared by its tokens, the gradient flowing through the mean. The GSPO paper clips at
  eps_low 3e-4, eps_high 4e-4 (a sequence ratio moves far less than a token's) and averages over
  sequences: `mode="sample"` gives exactly its 1/G sum_i.
- Truncated importance sampling (Yao et al., 2025, "Your efficient RL framework secretly brings you
  off-policy RL training"; TRL's `vllm_importance_sampling_correction`, verl's rollout correction):
  the tokens were drawn by the sampler (a bf16 copy, vLLM), not by pi_old, so each token's surrogate is
  multiplied by w_t = min(pi_old / pi_sampler, C), detached; the KL term is not weighted (as TRL).
- Sampler mismatch (diagnostics, no gradient): mean |log pi_sampler - log pi_old| per token and, per
  sequence, sum_t k3 with r = pi_old / pi_sampler: since the tokens come from the sampler, its mean over
  sequences estimates the sequence-level KL(pi_sampler || pi_old) (>= 0 per token, low variance;
  exactly so only at top_p = 1, the sampler's log-probs being taken before top-p).
- `aggregate` turns per-token values into the loss. Its denominators are those of the WHOLE batch
  (`batch_sequences`, `batch_tokens`), so summing micro-batch losses gives the whole-batch loss:
    sample:   1/G sum_i 1/|o_i| sum_t   (the paper)
    token:    sum_i sum_t / sum_i |o_i| (DAPO)
    constant: sum_i sum_t / (G * L)     (Dr. GRPO, L = max completion length)
  The caller counts only what stays in the loss: a completion dropped by `mask_truncated` is in
  neither G nor sum |o_i| (kept in G, the effective learning rate would shrink as truncation grows).
"""
from __future__ import annotations

from typing import Callable

import torch

AGGREGATIONS = ("sample", "token", "constant")
RATIO_LEVELS = ("token", "sequence")
ADVANTAGE_EPS = 1e-4      # added to the group std (TRL's value; see the module docstring)
LOG_RATIO_CLAMP = 20.0    # |log-ratio| bound before exp (verl's)


AdvantageFn = Callable[..., tuple[torch.Tensor, dict]]   # (rewards (N*G,), group_size, scale) -> (advantages, metrics)
PolicyLossFn = Callable[..., tuple[torch.Tensor, dict]]  # grpo_loss's arguments -> (loss, metrics)
ADVANTAGES: dict[str, AdvantageFn] = {}    # GRPOConfig.advantage -> estimator
POLICY_LOSSES: dict[str, PolicyLossFn] = {}   # GRPOConfig.policy_loss -> loss; all aggregate through `aggregate`


def register(table: dict, name: str):
    """A decorator that files a function in a registry under `name`: a new advantage estimator or policy
    loss (CISPO, REINFORCE++, ...) is one registered function and its test."""
    def add(fn):
        table[name] = fn
        return fn
    return add


def constant_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) bool: which groups of rewards (N*G,), groups contiguous, are equal up to rounding (module docstring)."""
    grouped = rewards.double().view(-1, group_size)                          # (N, G)
    tolerance = 4 * torch.finfo(rewards.dtype).eps * grouped.abs().amax(1).clamp_min(1)
    return grouped.amax(1) - grouped.amin(1) <= tolerance


@register(ADVANTAGES, "grpo")
def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> tuple[torch.Tensor, dict]:
    """Eq. 3 on rewards (N*G,), groups contiguous. Returns advantages (N*G,) in the rewards' dtype, and metrics."""
    grouped = rewards.double().view(-1, group_size)                          # (N, G)
    constant = constant_groups(rewards, group_size)                          # (N,)
    centred = grouped - grouped.mean(dim=1, keepdim=True)                    # (N, G)
    if scale and group_size > 1:
        centred = centred / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_EPS)
    advantages = torch.where(constant[:, None], 0.0, centred)
    return advantages.reshape(-1).to(rewards.dtype), {"zero_std_groups": constant.double().mean().item()}


@register(ADVANTAGES, "rloo")
def leave_one_out_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> tuple[torch.Tensor, dict]:
    """RLOO on rewards (N*G,), groups contiguous: r_i - mean of the group's other rewards, (N*G,). RLOO has no std
    scaling: `scale` (the registry's shared signature) is not read."""
    grouped = rewards.double().view(-1, group_size)                          # (N, G)
    constant = constant_groups(rewards, group_size)                          # (N,)
    others = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)     # (N, G)
    advantages = torch.where(constant[:, None], 0.0, grouped - others)
    return advantages.reshape(-1).to(rewards.dtype), {"zero_std_groups": constant.double().mean().item()}


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Eq. 2 per token, (B, T): r - log r - 1 with r = pi_ref / pi_theta, log r clamped to +-20."""
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)     # (B, T)
    return torch.expm1(log_ratio) - log_ratio          # = r - log r - 1, without float32's cancellation near r = 1


def importance_ratio(logprobs, old_logprobs, mask, level: str = "token") -> torch.Tensor:
    """pi_theta / pi_old, (B, T): per token, or GSPO's per sequence exp(mean_t log r_t) repeated over its
    tokens. Log-probs must be finite at pads (grpo_loss zeroes them); the log-ratio is clamped to +-20."""
    log_ratio = logprobs - old_logprobs                                      # (B, T)
    if level == "sequence":
        real = mask.bool()
        mean = torch.where(real, log_ratio, 0.0).sum(-1) / real.sum(-1).clamp_min(1)   # (B,)
        log_ratio = mean[:, None].expand_as(log_ratio)                       # (B, T)
    elif level != "token":
        raise ValueError(f"unknown ratio level {level!r}; valid: {', '.join(RATIO_LEVELS)}")
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def clipped_surrogate(ratio, advantages, eps_low: float, eps_high: float):
    """Per-token min(r A, clip(r, 1-eps_low, 1+eps_high) A) from ratios (B, T) and advantages (B,), and where
    the clip was active."""
    advantages = advantages[:, None]                                         # (B, 1)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    return torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, batch_sequences: int, batch_tokens: int,
              max_length: int) -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar with whole-batch denominators (see module docstring)."""
    masked = torch.where(mask.bool(), values, 0.0)                           # (B, T)
    if mode == "sample":
        per_sequence = masked.sum(-1) / mask.sum(-1).clamp_min(1)            # (B,)
        return per_sequence.sum() / max(batch_sequences, 1)
    if mode == "token":
        return masked.sum() / max(batch_tokens, 1)
    if mode == "constant":
        return masked.sum() / (max(batch_sequences, 1) * max_length)
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


@register(POLICY_LOSSES, "grpo")
def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, *, eps_low: float = 0.2,
              eps_high: float | None = None, beta: float = 0.04, mode: str = "sample", ratio_level: str = "token",
              is_weights: torch.Tensor | None = None, batch_sequences: int, batch_tokens: int,
              max_length: int) -> tuple[torch.Tensor, dict]:
    """Negative eq. 1 for a (micro-)batch. logprobs/old/ref: (B, T); advantages: (B,); mask: (B, T);
    is_weights: (B, T) truncated importance weights on the surrogate, or None.

    ref_logprobs may be None only when beta == 0 (no reference model is loaded then). Metrics: the
    clip fraction and the ratio's mean (token means), min and max, over the real tokens."""
    real = mask.bool()                                                       # (B, T)
    logprobs, old_logprobs = torch.where(real, logprobs, 0.0), torch.where(real, old_logprobs, 0.0)   # pads never reach exp
    ratio = importance_ratio(logprobs, old_logprobs, real, ratio_level)     # (B, T)
    surrogate, clipped = clipped_surrogate(ratio, advantages, eps_low, eps_low if eps_high is None else eps_high)
    if is_weights is not None:
        surrogate = surrogate * is_weights.detach()
    per_token = -surrogate
    tokens = real.sum().clamp_min(1)
    seen = ratio.detach()[real]                                              # (n,) the real tokens' ratios
    metrics = {"clip_fraction": ((clipped & real).sum() / tokens).item(), "ratio_mean": (seen.sum() / tokens).item()}
    if seen.numel():
        metrics.update(ratio_min=seen.min().item(), ratio_max=seen.max().item())
    if beta != 0:
        kl = kl_k3(logprobs, torch.where(real, ref_logprobs, 0.0))
        per_token = per_token + beta * kl
        metrics["kl"] = (torch.where(real, kl.detach(), 0.0).sum() / tokens).item()
    loss = aggregate(per_token, mask, mode, batch_sequences, batch_tokens, max_length)
    return loss, metrics


def truncated_importance_weights(old_logprobs, sampler_logprobs, mask, cap: float) -> tuple[torch.Tensor, dict]:
    """w_t = min(pi_old / pi_sampler, cap) per token, (B, T), 0 at pads; metrics over the real tokens:
    `is_weight` (mean w) and `is_capped` (share of tokens whose weight was cut to the cap)."""
    real = mask.bool()                                                       # (B, T)
    log_ratio = torch.where(real, old_logprobs - sampler_logprobs, 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    raw = torch.exp(log_ratio)                                               # (B, T)
    weights = torch.where(real, raw.clamp(max=cap), 0.0)
    tokens = real.sum().clamp_min(1)
    capped = ((raw > cap) & real).sum() / tokens
    return weights, {"is_weight": (weights.sum() / tokens).item(), "is_capped": capped.item()}


def sampler_mismatch(sampler_logprobs, old_logprobs, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence (B,): sum_t |log pi_sampler - log pi_old| and sum_t k3 (r = pi_old / pi_sampler) over
    its real tokens; divided by the tokens and by the sequences they give the step's two mismatch metrics."""
    real = mask.bool()                                                       # (B, T)
    sampler, old = (torch.where(real, x.double(), 0.0) for x in (sampler_logprobs, old_logprobs))   # k3 ~ d^2 / 2: float64
    absolute = (old - sampler).abs().sum(-1)                                 # (B,), pads are 0 - 0
    k3 = torch.where(real, kl_k3(sampler, old), 0.0).sum(-1)                 # (B,)
    return absolute, k3


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None,
             batch_tokens: int | None = None) -> torch.Tensor:
    """Negative log-likelihood of the masked tokens, (B, T) -> scalar, mean over the batch's tokens.
    `weights` (B,) scales each sequence; `batch_tokens` is the whole batch's token count (accumulation)."""
    per_token = torch.where(mask.bool(), -logprobs, 0.0)                     # (B, T)
    if weights is not None:
        per_token = per_token * weights[:, None]
    return per_token.sum() / (batch_tokens if batch_tokens is not None else mask.sum().clamp_min(1))


def compete_weights(rewards: torch.Tensor, group_size: int, by_advantage: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Learning from competition without RL: which members of each group to imitate and which to push down.

    rewards (N*G,), groups contiguous. A member above its group's mean is imitated, one below it is
    pushed down; groups equal up to rounding (see `group_advantages`) teach nothing. Weights are 1, or
    with `by_advantage` the member's eq. 3 advantage (|A| for the pushed-down).
    Returns (imitate (N*G,), push_down (N*G,)), both >= 0."""
    advantages, _ = group_advantages(rewards, group_size, scale=True)
    if by_advantage:
        return advantages.clamp(min=0), (-advantages).clamp(min=0)
    return (advantages > 0).to(rewards.dtype), (advantages < 0).to(rewards.dtype)


def unlikelihood_loss(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, batch_tokens: int) -> torch.Tensor:
    """-log(1 - pi(o_t)) on the masked tokens of pushed-down sequences (Welleck et al., 2019), (B, T) -> scalar,
    each sequence scaled by weights (B,), summed over the whole batch's `batch_tokens`."""
    probs = torch.where(mask.bool(), logprobs, float("-inf")).exp().clamp(max=1 - 1e-6)   # (B, T), 0 at pads
    per_token = -torch.log1p(-probs) * weights[:, None]
    return per_token.sum() / max(batch_tokens, 1)
