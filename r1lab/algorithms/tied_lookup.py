"""The input embedding's gradient added into its tied LM head's gradient in place, row by row.

Why: where the input embedding and the LM head share one weight (SmolLM2, Gemma 3), autograd's embedding
backward makes a dense (V, H) gradient, zero-filled, for every lookup (the shared prompt pass and each length
bucket), and adds it to the head's: gemma3-270m's is 671 MB in fp32, made at the end of backward beside the
head's own, which set the training pass's peak. A sparse lookup gradient (`nn.Embedding(sparse=True)`) does not
help by itself: autograd adds it to the head's dense one out of place (the dense one arrives first), a new 671 MB.

How: during a training forward the embedding looks its rows up (sparse) in an alias of the weight made by
`IntoGradient`, whose backward adds the rows' sparse gradients into `weight.grad` in place. The head's
gradient reaches `weight.grad` first, through autograd as always (its accumulation runs as soon as the head's
backward is done); were it later, autograd would add it to what is there, so the sum is the same either way.
Only for one process: DDP and FSDP reduce a weight's gradient when autograd has accumulated it, before the
lookups' rows are added.
"""
from __future__ import annotations

import contextlib

import torch


class IntoGradient(torch.autograd.Function):
    """An alias of `weight`'s value in forward; in backward, the gradient it receives added into `weight.grad`.
    `anchor` (a scalar that requires grad) puts the alias in the graph. The weight comes in a tuple, so it is not
    an input autograd sees: as one, its gradient accumulation would wait for this backward, the last of the pass."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, anchor: torch.Tensor, weight: tuple[torch.nn.Parameter]) -> torch.Tensor:
        ctx.weight = weight[0]
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.add_(grad)                                    # dense += sparse rows: in place
        return None, None, None


def tied_lookup(model) -> torch.nn.Embedding | None:
    """The model's input embedding when its weight is the LM head's and is trained, else None."""
    lookup, head = model.get_input_embeddings(), model.get_output_embeddings()
    if (isinstance(lookup, torch.nn.Embedding) and head is not None and lookup.weight is getattr(head, "weight", None)
            and lookup.weight.requires_grad):
        return lookup
    return None


@contextlib.contextmanager
def lookups_into_gradient(model):
    """Within the block, a tied, trained embedding's lookups add their gradient into the weight's `.grad` in place
    (the module docstring); elsewhere, or with gradients off, nothing changes."""
    lookup = tied_lookup(model) if torch.is_grad_enabled() else None
    if lookup is None:
        yield
        return
    weight, sparse = lookup.weight, lookup.sparse
    anchor = torch.zeros((), device=weight.device, requires_grad=True)
    del lookup._parameters["weight"]
    lookup.weight, lookup.sparse = IntoGradient.apply(weight.detach(), anchor, (weight,)), True
    try:
        yield
    finally:
        del lookup.weight
        lookup._parameters["weight"], lookup.sparse = weight, sparse
