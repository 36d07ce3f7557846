"""What makes the hf engine's decode step fast on a CPU: a KV cache that does not concatenate, and
prepacked oneDNN matmuls.

Measured on SmolLM2-135M (bench/decode_roofline.py), a decode step at 16 rows spent most of its time
in skinny matmuls that MKL runs far below the memory bandwidth (`F.linear`, 4-16 GB/s), and a growing
share in `torch.cat` of the whole KV cache at every token. So:
- `GrowingCache`: a DynamicCache whose layers write each new key/value into preallocated room
  (doubling when full) and hand attention a view, instead of concatenating the cache every token.
  Same values, same interface (batch_repeat_interleave / batch_select_indices for the engine).
  Sliding-window layers (Gemma 3's local layers) keep their whole history too: the model's own mask
  applies the window, so the values are the same (tests/test_gemma3.py against generate, whose
  cache drops what the window leaves), at the memory cost of the history past the window.
- `packed_linears(model, rows)`: for the duration of a rollout, every `nn.Linear` of the model is
  replaced by a `PackedLinear` (siblings that read the same input, q/k/v and gate/up, by one `FusedPack`)
  whose weight oneDNN has reordered for `rows`-row inputs
  (`torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise`, the kernels torch.compile's CPU
  backend uses). Packing is done once per weight version (`tensor._version`: a training step changes
  it), so eval and serving pack once. CPU only; where oneDNN is unavailable, the ops are missing, or
  a packed layer does not reproduce `F.linear` on a probe input, the model's own layers are used.
"""
from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A cache layer whose keys/values (B, H, T, D) are a view of preallocated room (B, H, capacity, D)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.room_keys = self.room_values = None
        length = self.get_seq_length()
        need = length + key_states.shape[-2]
        if self.room_keys is None or need > self.room_keys.shape[-2]:
            size = (*key_states.shape[:-2], max(need + 64, 2 * need), key_states.shape[-1])
            keys, values = key_states.new_empty(size), value_states.new_empty(size)
            if length:
                keys[..., :length, :], values[..., :length, :] = self.keys, self.values
            self.room_keys, self.room_values = keys, values
        self.room_keys[..., length:need, :] = key_states
        self.room_values[..., length:need, :] = value_states
        self._view(need)
        return self.keys, self.values

    def _view(self, length: int) -> None:
        self.keys, self.values = self.room_keys[..., :length, :], self.room_values[..., :length, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if length := self.get_seq_length():
            self.room_keys = self.room_keys.repeat_interleave(repeats, dim=0)
            self.room_values = self.room_values.repeat_interleave(repeats, dim=0)
            self._view(length)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if length := self.get_seq_length():
            self.room_keys, self.room_values = self.room_keys[indices], self.room_values[indices]
            self._view(length)


class GrowingCache(DynamicCache):
    """DynamicCache made of GrowingLayers (one per decoder layer, created as the model fills them)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


class PackedLinear(torch.nn.Module):
    """`linear`'s function with its weight prepacked by oneDNN for `rows`-row inputs (any row count works)."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__()
        self.linear, self.version = linear, linear.weight._version
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.linear.bias is None else self.linear.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")


class FusedPack(torch.nn.Module):
    """Sibling linears applied to the same input (attention's q/k/v, the MLP's gate/up) as ONE prepacked
    matmul over their stacked weights: a decode step's skinny matmuls cost mostly their call and their
    pass over the input, so three become one. The first member called with an input computes every
    member's output; the others, called with that same tensor, take their slice of it."""

    def __init__(self, linears: list[torch.nn.Linear], rows: int):
        super().__init__()
        self.linears, self.versions = linears, [lin.weight._version for lin in linears]
        weight = torch.cat([lin.weight.detach() for lin in linears])
        self.bias = None if all(lin.bias is None for lin in linears) else torch.cat(
            [lin.bias.detach() if lin.bias is not None else weight.new_zeros(lin.out_features) for lin in linears])
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        ends = torch.tensor([lin.out_features for lin in linears]).cumsum(0).tolist()
        self.bounds = list(zip([0] + ends[:-1], ends))           # each member's columns of the fused output
        self.last_input, self.last_output = None, None

    def current(self, linears: list[torch.nn.Linear]) -> bool:
        return self.linears == linears and self.versions == [lin.weight._version for lin in linears]

    def output(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.last_input:
            self.last_input = x
            self.last_output = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return self.last_output

    def forget(self) -> None:
        self.last_input = self.last_output = None


class FusedSlice(torch.nn.Module):
    """One member of a FusedPack: its columns of the fused output. (The pack does not hold its members: no
    reference cycle, so a pack is freed as soon as it is dropped, not at the next garbage collection.)"""

    def __init__(self, pack: FusedPack, start: int, end: int):
        super().__init__()
        self.__dict__["pack"] = pack           # not a submodule
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pack.output(x)[..., self.start:self.end]


FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))   # siblings that read the same input (Llama, Qwen, Mistral, Gemma 3)


@torch.no_grad()
def _packs_correctly(rows: int) -> bool:
    """Whether prepacked oneDNN linears exist here and reproduce F.linear (probed once per process)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        probe = torch.nn.Linear(64, 48).eval()
        x = torch.randn(3, 2, 64)
        return torch.allclose(PackedLinear(probe, rows)(x), probe(x), atol=1e-4)
    except (RuntimeError, AttributeError):
        return False


_PROBED: dict[int, bool] = {}


def _linears(model: torch.nn.Module):
    """(parent, name, linear) for every plain nn.Linear in the model ."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear:
                yield parent, name, child


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int, packs: dict):
    """Within the block, the model's plain nn.Linear layers run as PackedLinear (CPU, fp32 or bf16; not
    under LoRA, whose layers call their base layer's attributes).
    Siblings that read the same input (`FUSED`) run as one FusedPack.
    `packs` keeps the packed weights between calls: {id(linear): PackedLinear, (id(parent), names): FusedPack},
    repacked when a weight's version changed (a training step, a refreshed bf16 copy)."""
    dtype = next(model.parameters()).dtype
    usable = next(model.parameters()).device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
    if usable and rows not in _PROBED:
        _PROBED[rows] = _packs_correctly(rows)
    if not usable or not _PROBED[rows] or any(hasattr(m, "lora_A") for m in model.modules()):
        yield
        return
    swapped, fused = [], []
    for parent in list(model.modules()):
        children = parent._modules
        for names in FUSED:
            linears = [children.get(name) for name in names]
            if all(type(lin) is torch.nn.Linear for lin in linears) and len({lin.in_features for lin in linears}) == 1:
                pack = packs.get((id(parent), names))
                if pack is None or not pack.current(linears):
                    pack = packs[(id(parent), names)] = FusedPack(linears, rows)
                for name, linear, (start, end) in zip(names, linears, pack.bounds):
                    children[name] = FusedSlice(pack, start, end)
                    swapped.append((parent, name, linear))
                fused.append(pack)
    for parent, name, linear in list(_linears(model)):
        pack = packs.get(id(linear))
        if pack is None or pack.linear is not linear or pack.version != linear.weight._version:
            pack = packs[id(linear)] = PackedLinear(linear, rows)
        parent._modules[name] = pack
        swapped.append((parent, name, linear))
    try:
        yield
    finally:
        for parent, name, linear in swapped:
            parent._modules[name] = linear
        for pack in fused:
            pack.forget()
