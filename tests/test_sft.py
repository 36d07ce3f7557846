import json

import pytest
import torch


from r1lab import R1labError
from r1lab.algorithms.sft import train_sft
from r1lab.config import SFTConfig, load_config
from r1lab.data import write_cold_start
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
