"""Which checkpoints a run keeps (save_total_limit, checkpoint-<step>/, best/), the model card in each, the
eval's template from the run's settings, and the lines a stage ends with."""
import json
import os

import pytest
import torch
import yaml

from r1lab import R1labError, __version__
from r1lab.checkpoint import checkpoint_step, find_checkpoint, keep_best, model_card, numbered_checkpoints, save_checkpoint
from r1lab.cold_start import write_cold_start
from r1lab.config import NOT_SETTINGS, CompeteConfig, GRPOConfig, SFTConfig, load_config
from r1lab.evaluate import default_template
from r1lab.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def save(out, tiny, step: int, keep=0, value: float = 0.0):
    """A checkpoint after `step` whose embedding is filled with `value` (which save it was, read back)."""
    model, tokenizer = tiny
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(value)
    return save_checkpoint(out, model, tokenizer, {"step": step}, keep=keep, card=model_card(out, step, 10))


def embedding(folder) -> float:
    return load_model(str(folder))[0].get_input_embeddings().weight[0, 0].item()


def grpo_run(tmp_path, template="r1_zero"):
    out = tmp_path / "run" / "grpo"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({**vars(GRPOConfig(model="org/base-model", template=template))}))
    return out


@pytest.mark.parametrize("cls", [SFTConfig, GRPOConfig, CompeteConfig])
def test_save_total_limit_keeps_no_numbered_folder_by_default_and_is_not_a_setting(cls):
    assert cls().save_total_limit == 0 and "save_total_limit" in NOT_SETTINGS
    assert load_config(cls, None, {"save_total_limit": "3"}).save_total_limit == 3
    with pytest.raises(R1labError, match=r"^\w+Config.save_total_limit must be in \[0, inf\), got -1$"):
        load_config(cls, None, {"save_total_limit": "-1"})


def test_numbered_checkpoints_are_hard_links_and_only_the_newest_are_kept(tmp_path, tiny):
    for step in (2, 4, 6):
        save(tmp_path, tiny, step, keep=2, value=step)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint" and checkpoint_step(tmp_path / "checkpoint") == 6
    latest, numbered = tmp_path / "checkpoint" / "model.safetensors", tmp_path / "checkpoint-6" / "model.safetensors"
    assert os.stat(latest).st_ino == os.stat(numbered).st_ino                  # one copy on disk
    assert embedding(tmp_path / "checkpoint-4") == 4 and embedding(tmp_path / "checkpoint") == 6
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]    # no temporary folder left


@pytest.mark.parametrize("keep, kept", [(0, []), (3, ["checkpoint-1", "checkpoint-2", "checkpoint-3"])])
def test_zero_writes_no_numbered_folder_and_a_limit_keeps_up_to_that_many(tmp_path, tiny, keep, kept):
    for step in (1, 2, 3):
        save(tmp_path, tiny, step, keep=keep)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == kept


def test_zero_leaves_the_numbered_folders_of_an_earlier_setting_alone(tmp_path, tiny):
    save(tmp_path, tiny, 1, keep=1)
    save(tmp_path, tiny, 2, keep=0)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == ["checkpoint-1"]


def test_the_best_validation_is_kept_as_best_and_survives_later_saves(tmp_path, tiny):
    out = grpo_run(tmp_path)
    save(out, tiny, 5, value=5)
    assert not keep_best(out, 0, 0.9)                     # step 0: the base model, no checkpoint of it
    assert keep_best(out, 5, 0.5)
    save(out, tiny, 10, value=10)
    assert not keep_best(out, 10, 0.5)                    # a tie keeps the earlier (transformers' rule)
    assert json.loads((out / "best" / "best.json").read_text()) == {"step": 5, "val_accuracy": 0.5}
    assert embedding(out / "best") == 5 and embedding(out / "checkpoint") == 10
    assert "at step 10: **0.5000**" in (out / "checkpoint" / "README.md").read_text()
    assert "at step 5: **0.5000**" in (out / "best" / "README.md").read_text()
    save(out, tiny, 15, value=15)
    assert keep_best(out, 15, 0.75) and embedding(out / "best") == 15
    assert "kept as best/" in (out / "best" / "README.md").read_text()


def test_a_validation_at_a_step_without_a_checkpoint_changes_nothing(tmp_path, tiny):
    out = grpo_run(tmp_path)
    save(out, tiny, 10)
    before = (out / "checkpoint" / "README.md").read_text()
    assert not keep_best(out, 5, 1.0) and not (out / "best").exists()
    assert (out / "checkpoint" / "README.md").read_text() == before


def test_the_model_card_names_base_stage_task_rewards_steps_figures_version_and_date(tmp_path, tiny):
    out = grpo_run(tmp_path)
    (out / "metrics.jsonl").write_text('{"step": 3, "reward": 0.25, "accuracy": 0.125}\n')
    (out / "validation.jsonl").write_text('{"step": 0, "val_accuracy": 0.1}\n')
    card = (save(out, tiny, 3) / "README.md").read_text()
    assert card.startswith("---\nbase_model: org/base-model\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [r1lab, grpo, reasoning]\n")
    for text in ("| base model | `org/base-model` |", "| stage | grpo |", "| task | `arithmetic` |",
                 "| rewards | accuracy,format |", "| steps | 3 of 10 |", f"| r1lab | {__version__} |", "| date | 20",
                 "Last training step (3): reward 0.25, accuracy 0.125", "Validation accuracy (greedy) at step 0: **0.1000**"):
        assert text in card, text


def test_a_checkpoint_without_a_settings_record_has_no_card(tmp_path, tiny):
    assert not (save(tmp_path, tiny, 1) / "README.md").exists()


def test_eval_reads_the_template_from_the_runs_settings(tmp_path, tiny):
    out = grpo_run(tmp_path, template="chat")
    for folder in ("checkpoint", "checkpoint-4", "best"):
        (out / folder).mkdir()
        assert default_template([str(out / folder)], "arithmetic") == "chat"
    assert default_template(["tiny-random", str(out / "checkpoint")], "arithmetic") == "chat"
    assert default_template(["tiny-random"], "arithmetic") == "r1_zero"
    assert default_template(["tiny-random"], "humaneval") == "code"
    other = grpo_run(tmp_path / "b", template="json_cot")
    (other / "checkpoint").mkdir()
    with pytest.raises(R1labError, match=r"^--template: the models were trained with different templates .*chat.*json_cot"):
        default_template([str(out / "checkpoint"), str(other / "checkpoint")], "arithmetic")


def test_sft_keeps_numbered_checkpoints_writes_cards_and_ends_with_its_figures_and_files(tmp_path, capfd):
    from r1lab.algorithms.sft import train_sft
    from r1lab.evaluate import evaluate
    write_cold_start("arithmetic", 16, str(tmp_path / "cold.jsonl"))
    out = tmp_path / "sft"
    cfg = load_config(SFTConfig, None, {"model": "tiny-random", "data": str(tmp_path / "cold.jsonl"), "batch_size": "4",
                                        "micro_batch_size": "4", "save_every": "1", "save_total_limit": "2",
                                        "template": "chat", "out": str(out)})
    checkpoint = train_sft(cfg)
    assert [p.name for p in numbered_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]
    assert checkpoint_step(checkpoint) == 4
    card = (checkpoint / "README.md").read_text()
    assert "| stage | sft |" in card and "| steps | 4 of 4 |" in card and "Last training step (4): loss" in card
    printed = capfd.readouterr()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"{out}: finished at step 4: loss {last['loss']:.4g}" in printed.out
    for line in (f"metrics     {out / 'metrics.jsonl'}", f"checkpoint  {out / 'checkpoint'}",
                 "kept        checkpoint-3, checkpoint-4", f"r1lab report {out}"):
        assert line in printed.out, line
    assert "loss=" in printed.err and "Writing model shards" not in printed.err   # transformers' bars stay quiet
    evaluate([str(checkpoint)], "arithmetic", samples=2, problems=2, template=default_template([str(checkpoint)], "x"),
             max_new_tokens=4, out=str(tmp_path / "eval"))
    card = (checkpoint / "README.md").read_text()
    assert "## Evaluation: arithmetic" in card and "template chat" in card and "2 held-out problems" in card
    assert "## Evaluation" not in (out / "checkpoint-4" / "README.md").read_text()   # its own file, not the link's


def test_quiet_transformers_turns_the_bars_off_and_back(tmp_path):
    from transformers.utils import logging
    from r1lab.training import quiet_transformers
    assert logging.is_progress_bar_enabled()
    with quiet_transformers():
        assert not logging.is_progress_bar_enabled()
    assert logging.is_progress_bar_enabled()
