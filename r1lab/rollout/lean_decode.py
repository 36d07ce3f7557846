"""A Llama decode step in a few ops a layer, on the weights `packed_linears` packed.

Why: at 8 rows a SmolLM2-135M decode step (fp32, 2 Zen 4 cores) spent ~27 ms in the model's forward, of which
~15 ms in its matmuls; the rest, ~380 us a layer, was the model's modules: some 60 small ops and their Python.
The same math for one new token (`F.rms_norm`; q/k/v as one matmul; rotary on q and k together; SDPA on the
key/value heads, each query head group as rows, so no key/value is repeated; gate/up as one matmul) took 22
against 27 ms a step at 8 rows and 29 against 34 at 16, logits within 1e-4 of the model's own
(bench/decode_roofline.py, tests/test_engines.py).

When: a decode step (one new token a row) inside `packed_linears`, whose packs it uses (no second copy of
the weights), for a model of type llama whose q/k/v and gate/up were fused. Otherwise `LeanDecoder.of`
returns None and the engine calls the model itself, as it always does for the prefill (which fills the cache).
Rotary embeddings come from the model's own rotary module, so every rope variant it knows is the same here.
In bf16 (`auto`'s rollouts on a CPU with native bf16) `F.rms_norm` rounds once where the model's norm rounds
twice: over 24 steps of SmolLM2-135M the KL from the fp32 logits was 0.00110 here against 0.00103 for the
model's own bf16 forward.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half

from r1lab.rollout.decoding import FusedPack, FusedSlice, PackedLinear


class Layer(NamedTuple):
    attention_norm: torch.Tensor      # (H,) RMSNorm weights
    qkv: FusedPack                    # H -> (heads + 2 kv heads) x head dim
    out: PackedLinear                 # heads x head dim -> H
    mlp_norm: torch.Tensor
    gate_up: FusedPack                # H -> 2 x intermediate
    down: PackedLinear                # intermediate -> H


class LeanDecoder:
    def __init__(self, model, layers: list[Layer]):
        config = model.config
        self.layers, self.model = layers, model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden, self.eps = config.hidden_size, config.rms_norm_eps

    @classmethod
    def of(cls, model) -> LeanDecoder | None:
        """The lean step for `model` as `packed_linears` left it, or None where it does not apply."""
        config = model.config
        if (getattr(config, "model_type", None) != "llama" or getattr(config, "hidden_act", "silu") != "silu"
                or getattr(config, "pretraining_tp", 1) != 1 or not isinstance(model.lm_head, PackedLinear)):
            return None
        layers = []
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            if not (isinstance(attention.q_proj, FusedSlice) and isinstance(mlp.gate_proj, FusedSlice)
                    and isinstance(attention.o_proj, PackedLinear) and isinstance(mlp.down_proj, PackedLinear)):
                return None
            layers.append(Layer(layer.input_layernorm.weight, attention.q_proj.pack, attention.o_proj,
                                layer.post_attention_layernorm.weight, mlp.gate_proj.pack, mlp.down_proj))
        return cls(model, layers)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """Logits (B, V) of the next token after `ids` (B,) at `positions` (B,); `mask` (B, T) covers the cache
        and the new token; each layer's key and value are appended to `cache` (the prefill's)."""
        rows, heads, kv, d = ids.shape[0], self.heads, self.kv_heads, self.head_dim
        inner = self.model.model
        h = inner.embed_tokens(ids)                                                       # (B, H)
        cos, sin = inner.rotary_emb(h[:, None], positions[:, None])                      # (B, 1, D)
        cos, sin = cos[:, None], sin[:, None]                                             # (B, 1, 1, D)
        seen = mask.bool()[:, None, None, :]                                              # (B, 1, 1, T)
        for layer, cached in zip(self.layers, cache.layers):
            qkv = layer.qkv.output(F.rms_norm(h, (self.hidden,), layer.attention_norm, self.eps))
            qkv = qkv.view(rows, heads + 2 * kv, 1, d)
            qk, v = qkv[:, :heads + kv], qkv[:, heads + kv:]                              # (B, heads + kv, 1, D)
            qk = qk * cos + rotate_half(qk) * sin                                        # rotary, q and k at once
            keys, values = cached.update(qk[:, heads:], v)                                # (B, kv, T, D)
            queries = qk[:, :heads].reshape(rows, kv, heads // kv, d)                     # a kv head's queries as rows
            attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=seen)
            h = h + layer.out(attended.reshape(rows, heads * d))
            gate_up = layer.gate_up.output(F.rms_norm(h, (self.hidden,), layer.mlp_norm, self.eps))
            gate, up = gate_up.chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        return self.model.lm_head(F.rms_norm(h, (self.hidden,), inner.norm.weight, self.eps))
