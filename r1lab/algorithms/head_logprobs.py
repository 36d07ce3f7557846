"""Log-probs and entropies of N tokens straight from the final hidden states and the LM head's weight, one
slice of the vocabulary at a time, with a backward of its own: the (N, V) logits are never held whole, and
the head's weight gradient is written once, slice by slice.

Why not autograd over token chunks: each chunk's backward makes a (V, H) weight gradient and adds it to the
running one, so a pass of N tokens in chunks of n allocates, fills and adds N / n such matrices. For
gemma3-270m (262k x 640: 671 MB) and 400 tokens in 32-token chunks that is 13 fresh 671 MB blocks and ~35 GB
of memory traffic a pass, and the blocks fragment the heap (docs/speed.md). Slicing the vocabulary instead,
every token's logsumexp is known after the forward (one number a token), so the backward can recompute one
slice's logits for all tokens, turn them into d(loss)/d(logits) and write that slice's rows of the weight
gradient in one matmul (Liger's and Apple's cut cross-entropy do the same for cross-entropy on GPUs).

Math, per token t with x = softcap(h W^T) / T (softcap(z) = c tanh(z / c), or z without a cap):
    logprob_t = x[t, id_t] - lse_t,     lse_t = logsumexp_j x[t, j],     entropy_t = lse_t - sum_j p[t, j] x[t, j]
    d logprob_t / d x[t, j] = 1[j = id_t] - p[t, j],     p = exp(x - lse)
and over slices s of the vocabulary, with lse_s and H_s the slice's own logsumexp and entropy and w_s = exp(lse_s - lse):
    lse = logsumexp_s lse_s,     entropy = sum_s w_s (H_s - log w_s)
(a sum of non-negative terms: lse - sum p x would cancel in fp32). The entropy carries no gradient (as in
`logprobs_from_logits`).
Matmuls run in the autocast dtype where autocast is on (as `hidden @ weight.T` would), everything else in fp32.
"""
from __future__ import annotations

import torch

SLICE_BYTES = 32 * 2 ** 20      # fp32 logits per vocabulary slice: 400 tokens x 21k vocabulary rows


def matmul_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype `hidden @ weight.T` runs in here: autocast's where it is on for the tensor's device."""
    kind = tensor.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else tensor.dtype


def slice_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float, softcap: float | None):
    """(x, capped) for one vocabulary slice: x = softcap(hidden @ weight.T) / T in fp32 (n, s); and the capped
    logits divided by the cap, tanh(z / c), which backward needs (None without a cap)."""
    logits = (hidden @ weight.T).float()
    capped = None
    if softcap:
        capped = torch.tanh(logits / softcap)
        logits = capped * softcap
    return logits.div_(temperature), capped                                 # in place: one (n, s) block fewer


def in_slice(ids: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(whether each id is in the slice [start, start + width), (N,); its column there, clamped into it, (N, 1))."""
    return (ids >= start) & (ids < start + width), (ids - start).clamp(0, width - 1)[:, None]


class HeadLogprobs(torch.autograd.Function):
    """(log-probs (N,), entropies (N,) or None) of `ids` (N,) under softcap(hidden (N, H) @ weight (V, H).T) / T."""

    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature: float, softcap: float | None, with_entropy: bool, rows: int):
        dtype = matmul_dtype(hidden)
        h = hidden.to(dtype)
        lses, entropies, target = [], [], torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, weight.shape[0], rows):
                x, _ = slice_logits(h, weight[start:start + rows].to(dtype), temperature, softcap)    # (N, s)
                lses.append(x.logsumexp(-1))
                inside, column = in_slice(ids, start, x.shape[1])
                picked = x.gather(-1, column).squeeze(-1)
                target = torch.where(inside, picked, target)
                if with_entropy:
                    own = x - lses[-1][:, None]                                       # log of the slice's own softmax
                    entropies.append(-(own.exp() * own).sum(-1))
        per_slice = torch.stack(lses)                                                             # (S, N)
        lse = per_slice.logsumexp(0)                                                              # (N,)
        entropy = None
        if with_entropy:                    # H = sum_s w_s (H_s - log w_s), w_s = exp(lse_s - lse): no cancellation
            share = per_slice - lse
            entropy = (share.exp() * (torch.stack(entropies) - share)).sum(0)
        ctx.save_for_backward(hidden, weight, ids, lse)
        ctx.settings = (temperature, softcap, rows, dtype)
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return target - lse, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, ids, lse = ctx.saved_tensors
        temperature, softcap, rows, dtype = ctx.settings
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        h = hidden.to(dtype)
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32) if want_hidden else None
        grad_weight = torch.empty_like(weight) if want_weight else None
        g = grad_logprobs.float()
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, weight.shape[0], rows):
                w = weight[start:start + rows].to(dtype)
                x, capped = slice_logits(h, w, temperature, softcap)                                # (N, s)
                grad_x = x.sub_(lse[:, None]).exp_().mul_(-g[:, None])                            # -g p, in x's place
                inside, column = in_slice(ids, start, x.shape[1])
                grad_x.scatter_add_(1, column, torch.where(inside, g, 0.0)[:, None])               # + g 1[j = id]
                grad_z = grad_x.div_(temperature)
                if capped is not None:
                    grad_z.mul_(1 - capped * capped)                                               # d c tanh(z/c) / dz
                grad_z = grad_z.to(dtype)
                same = dtype == torch.float32 == weight.dtype          # matmuls straight into the fp32 gradients
                if want_hidden:
                    if same:
                        grad_hidden.addmm_(grad_z, w)
                    else:
                        grad_hidden += grad_z @ w
                if want_weight:
                    if same:
                        torch.mm(grad_z.T, h, out=grad_weight[start:start + rows])    # rows of (V, H): contiguous
                    else:
                        grad_weight[start:start + rows] = grad_z.T @ h
        grad_hidden = grad_hidden.to(hidden.dtype) if want_hidden else None
        return grad_hidden, grad_weight, None, None, None, None, None


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                  softcap: float | None = None, with_entropy: bool = False, rows: int | None = None):
    """HeadLogprobs for hidden (N, H), weight (V, H), ids (N,); `rows` vocabulary rows a slice (default: fp32
    logits of SLICE_BYTES a slice)."""
    rows = rows or max(1, SLICE_BYTES // (4 * max(1, hidden.shape[0])))
    return HeadLogprobs.apply(hidden, weight, ids, temperature, softcap, with_entropy, rows)
