import json

import pytest
import torch


from r1lab import R1labError
from r1lab.algorithms.sft import train_sft
from r1lab.config import SFTConfig, load_config
from r1lab.cold_start import write_cold_start
from r1lab.models import load_model
from r1lab.templates import get_template


def test_cold_start_examples_have_steps_reflection_and_the_format(tmp_path):
    written, skipped = write_cold_start("arithmetic", 20, str(tmp_path / "cold.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "cold.jsonl").read_text().splitlines()]
    assert written == 20 and skipped == 0 and len(rows) == 20
    template = get_template("r1_zero")
    for row in rows:
        reasoning, answer = template.parse(row["completion"])
        assert answer == row["answer"] and reasoning.startswith("Firstly, I would calculate")
        assert "Wait, let me check" in reasoning and template.format_score(row["completion"], False) == 1.0


def test_sft_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    write_cold_start("arithmetic", 32, str(tmp_path / "cold.jsonl"))
    cfg = load_config(SFTConfig, None, {"model": "tiny-random", "data": str(tmp_path / "cold.jsonl"), "epochs": 4,
                                        "batch_size": 8, "micro_batch_size": 4, "learning_rate": 3e-3,
                                        "out": str(tmp_path / "sft")})
    checkpoint = train_sft(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 16 and losses[-1] < 0.6 * losses[0]
    model, _ = load_model(str(checkpoint))
    before, _ = load_model("tiny-random")
    assert not torch.equal(model.state_dict()["model.embed_tokens.weight"], before.state_dict()["model.embed_tokens.weight"])


def test_sft_data_errors_name_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    cfg = load_config(SFTConfig, None, {"model": "tiny-random", "data": str(tmp_path / "bad.jsonl"), "out": str(tmp_path / "o")})
    with pytest.raises(R1labError, match=r"bad.jsonl, line 2: field 'completion'"):
        train_sft(cfg)


def test_non_utf8_data_is_one_error_naming_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    cfg = load_config(SFTConfig, None, {"model": "tiny-random", "data": str(tmp_path / "bad.jsonl"), "out": str(tmp_path / "o")})
    with pytest.raises(R1labError, match=r"bad.jsonl, line 2: not UTF-8 text"):
        train_sft(cfg)


def sft_cli(tmp_path, *options):
    from r1lab.cli import main
    main(["train", "sft", "--model", "tiny-random", "--data", str(tmp_path / "cold.jsonl"), "--batch_size", "8",
          "--micro_batch_size", "8", "--out", str(tmp_path / "sft"), *options])


def test_resume_with_changed_settings_stops_naming_them_until_allowed_then_applies_them(tmp_path, capsys):
    write_cold_start("arithmetic", 16, str(tmp_path / "cold.jsonl"))
    sft_cli(tmp_path, "--learning_rate", "1e-3", "--save_every", "1")                      # 2 steps
    with (tmp_path / "sft" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')                                                          # a write cut by a kill
    with pytest.raises(SystemExit) as exit:
        sft_cli(tmp_path, "--learning_rate", "2e-3", "--epochs", "2", "--resume")
    error = capsys.readouterr().err
    assert exit.value.code == 2 and "epochs: 1 -> 2" in error and "learning_rate: 0.001 -> 0.002" in error
    assert "--allow-config-change" in error and "save_every" not in error                 # where/how often it saves: not a setting
    sft_cli(tmp_path, "--learning_rate", "2e-3", "--epochs", "2", "--resume", "--allow-config-change")
    assert "continuing with changed settings: epochs: 1 -> 2; learning_rate: 0.001 -> 0.002" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["learning_rate"] for r in rows] == [1e-3, 1e-3, 2e-3, 2e-3]                 # the new lr applies, not the saved one
    assert "learning_rate: 0.002" in (tmp_path / "sft" / "config.yaml").read_text()


def test_resumed_metrics_drop_a_torn_last_line_and_are_rewritten_atomically(tmp_path, monkeypatch):
    from pathlib import Path

    from r1lab.training import JsonlLog
    path = tmp_path / "metrics.jsonl"
    whole = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.0}\n'
    path.write_text(whole + '{"step": 4, "lo')
    JsonlLog(path, resume_step=3)
    assert path.read_text() == whole
    real_write = Path.write_text

    def cut_short(self, text, *args, **kwargs):                                             # a kill in the middle of the write
        real_write(self, text[:10], *args, **kwargs)
        raise OSError("killed")
    with monkeypatch.context() as patch, pytest.raises(OSError, match="killed"):
        patch.setattr(Path, "write_text", cut_short)
        JsonlLog(path, resume_step=2)
    assert path.read_text() == whole                                                         # the old file, whole
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(R1labError, match=r"metrics.jsonl, line 2: invalid JSON"):
        JsonlLog(path, resume_step=3)


def test_sft_with_gradient_checkpointing_takes_the_same_steps(tmp_path):
    """Recomputed activations (`gradient_checkpointing: true`) change memory and time, not the update."""
    write_cold_start("arithmetic", 16, str(tmp_path / "cold.jsonl"))
    losses = []
    for checkpointing in (False, True):
        out = tmp_path / f"sft_{checkpointing}"
        train_sft(load_config(SFTConfig, None, {"model": "tiny-random", "data": str(tmp_path / "cold.jsonl"),
                                                "batch_size": 8, "micro_batch_size": 4, "learning_rate": 3e-3,
                                                "gradient_checkpointing": checkpointing, "out": str(out)}))
        losses.append([json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()])
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-4)
