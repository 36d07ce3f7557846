"""`auto` precision from the hardware, with the capabilities mocked (so any CPU runs these tests)."""
import warnings

import pytest
import torch

from r1lab import hardware
from r1lab.hardware import native_bf16, resolve_precision

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}
ZEN4 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16"}


@pytest.mark.parametrize("flags, native", [(AVX2_ONLY, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True), (set(), False)])
def test_cpu_native_bf16_from_flags(flags, native):
    assert native_bf16("cpu", flags)[0] is native


def test_auto_never_picks_bf16_without_native_support():
    chosen = resolve_precision("auto", "cpu", "auto", flags=AVX2_ONLY)
    assert (chosen.mixed_precision, chosen.rollout_dtype) == ("no", "float32")
    assert "avx512_bf16" in chosen.reason and chosen.reason.startswith("auto")


def test_auto_trains_in_fp32_and_samples_in_bf16_where_native():
    """The quality rule (r1lab/hardware.py): bf16 autocast was measured to weaken short fine-tunes, so auto
    trains in fp32 on every device; the sampler's copy is bf16 where the device runs it natively."""
    chosen = resolve_precision("auto", "cpu", "auto", flags=ZEN4)
    assert (chosen.mixed_precision, chosen.rollout_dtype) == ("no", "bfloat16")
    assert "avx512_bf16" in chosen.describe() and "training fp32" in chosen.reason
    mixed = resolve_precision("bf16", "cpu", "auto", flags=ZEN4)          # one explicit, one auto: each said as it is
    assert mixed.reason.startswith("auto: training as configured; rollouts bf16: ") and "training fp32" not in mixed.reason


def test_explicit_choices_are_kept_and_bf16_without_support_warns_once(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda: 130.0)
    hardware._warn_slow_bf16.cache_clear()
    with pytest.warns(UserWarning, match="130x slower"):
        chosen = resolve_precision("bf16", "cpu", "float32", flags=AVX2_ONLY)
    assert (chosen.mixed_precision, chosen.rollout_dtype) == ("bf16", "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_precision("bf16", "cpu", "float32", flags=AVX2_ONLY)       # once only
        resolve_precision("no", "cpu", "float32", flags=AVX2_ONLY)         # fp32 never warns
        resolve_precision("bf16", "cpu", "bfloat16", flags=ZEN4)           # native: no warning


def test_without_readable_flags_the_measured_probe_decides(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda: 130.0)
    assert resolve_precision("auto", "cpu", flags=None).mixed_precision == "no"
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda: 0.4)
    assert resolve_precision("auto", "cpu", flags=None).rollout_dtype == "bfloat16"


def test_cuda_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Old GPU")
    assert resolve_precision("auto", "cuda").mixed_precision == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda", "auto").rollout_dtype == "bfloat16"


def test_measurements_are_positive():
    assert hardware.matmul_gflops(torch.float32, size=64, seconds=0.01) > 0
    assert hardware.memory_gbps(megabytes=8) > 0


@pytest.mark.parametrize("flags, training, rollouts", [(AVX2_ONLY, "no", "float32"), (ZEN4, "no", "bfloat16")])
def test_stages_resolve_auto_from_the_hardware_and_record_it(tmp_path, monkeypatch, capsys, flags, training, rollouts):
    """Whichever CPU runs this: with AVX2-only flags the default GRPO and SFT stages never pick bf16."""
    import json

    from r1lab.cli import main
    from r1lab.cold_start import write_cold_start
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    main(["train", "grpo", "--model", "tiny-random", "--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
          "--micro-batch-size", "4", "--max-new-tokens", "8", "--out", str(tmp_path / "grpo")])
    chosen = json.loads((tmp_path / "grpo" / "precision.json").read_text())
    assert (chosen["mixed_precision"], chosen["rollout_dtype"]) == (training, rollouts)
    assert chosen["reason"].startswith("auto") and f"precision: training {training}, rollouts {rollouts}" in capsys.readouterr().out
    write_cold_start("arithmetic", 8, str(tmp_path / "cold.jsonl"))
    main(["train", "sft", "--model", "tiny-random", "--data", str(tmp_path / "cold.jsonl"), "--out", str(tmp_path / "sft")])
    chosen = json.loads((tmp_path / "sft" / "precision.json").read_text())
    assert (chosen["mixed_precision"], chosen["rollout_dtype"]) == (training, None)


def test_doctor_prints_the_choice_and_the_measurements(capsys):
    from r1lab.cli import main
    main(["doctor"])
    out = capsys.readouterr().out
    assert "precision: training" in out and "GFLOP/s" in out and "GB/s" in out and "sandbox isolation" in out
