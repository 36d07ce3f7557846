"""bench/bf16_profile.py's split of a profile into kinds of operation (the bench itself times; this does not)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "bench" / "bf16_profile.py"
spec = importlib.util.spec_from_file_location("bf16_profile", SCRIPT)
bf16_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bf16_profile)


@pytest.mark.parametrize("name, expected", [
    ("mkldnn::_linear_pointwise", "matmul"), ("aten::mm", "matmul"), ("aten::addmm", "matmul"),
    ("aten::bmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("aten::copy_", "copies and casts"), ("mkldnn::_reorder_linear_weight", "copies and casts"),
    ("aten::_to_copy", "copies and casts"), ("aten::cat", "copies and casts"),
    ("aten::mul", "other operators"), ("aten::_fused_rms_norm", "other operators"), ("aten::fill_", "other operators"),
    ("autograd::engine::evaluate_function: MmBackward0", "outside operators"), ("MmBackward0", "outside operators"),
])
def test_kind(name, expected):
    assert bf16_profile.kind(name) == expected


def test_by_kind_sums_self_times_and_leaves_the_rest_outside():
    events = [("aten::mm", 3000.0), ("mkldnn::_linear_pointwise", 1000.0), ("aten::copy_", 500.0),
              ("aten::mul", 250.0), ("MmBackward0", 100.0)]
    totals = bf16_profile.by_kind(events, wall_ms=6.0)
    assert totals == {"matmul": 4.0, "attention": 0.0, "copies and casts": 0.5, "other operators": 0.25,
                      "outside operators": pytest.approx(1.25)}              # 0.1 of autograd + 1.15 unaccounted
    assert bf16_profile.by_kind(events, wall_ms=1.0)["outside operators"] == pytest.approx(0.1)   # never negative
