"""Checkpoints that older transformers read right, and files with the user's permissions."""
import json
import os
import stat

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from r1lab import R1labError
from r1lab.checkpoint import find_checkpoint, save_checkpoint
from r1lab.models import tiny_tokenizer

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# (rope settings of the model, file, key, the value transformers 4.x needs there)
KEYS = [
    ({"rope_theta": 100000.0}, "config.json", "rope_theta", 100000.0),
    ({"rope_theta": 100000.0}, "config.json", "rope_parameters", {"rope_theta": 100000.0, "rope_type": "default"}),
    ({"rope_theta": 100000.0}, "config.json", "rope_scaling", None),
    ({"rope_parameters": LLAMA3_ROPE}, "config.json", "rope_theta", 500000.0),
    ({"rope_parameters": LLAMA3_ROPE}, "config.json", "rope_scaling",
     {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}),
    ({"rope_theta": 100000.0}, "config.json", "model_type", "llama"),
    ({"rope_theta": 100000.0}, "config.json", "max_position_embeddings", 16384),
    ({"rope_theta": 100000.0}, "tokenizer_config.json", "tokenizer_class", "PreTrainedTokenizerFast"),
    ({"rope_theta": 100000.0}, "tokenizer_config.json", "eos_token", "<|im_end|>"),
    ({"rope_theta": 100000.0}, "tokenizer_config.json", "pad_token", "<|im_end|>"),
]


def tiny_model(tokenizer, rope: dict):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16384, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **rope)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("rope, file, key, value", KEYS)
def test_checkpoint_files_hold_the_keys_older_readers_need(rope, file, key, value, tmp_path):
    tokenizer = tiny_tokenizer()
    checkpoint = save_checkpoint(tmp_path, tiny_model(tokenizer, rope), tokenizer, {"step": 1})
    written = json.loads((checkpoint / file).read_text())
    assert written.get(key) == value, (file, key, written)


def test_transformers_reads_the_checkpoint_back_unchanged(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, {"rope_parameters": LLAMA3_ROPE})
    checkpoint = save_checkpoint(tmp_path, model, tokenizer, {"step": 1})
    assert find_checkpoint(tmp_path) == checkpoint
    again, again_tokenizer = AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    assert AutoConfig.from_pretrained(checkpoint).rope_parameters == LLAMA3_ROPE
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    text = "<think> 先算 1 + 2 😀 </think>"
    assert again_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again_tokenizer.chat_template == tokenizer.chat_template and again_tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_every_file_has_the_mode_the_users_umask_gives(umask, mode, tmp_path):
    tokenizer = tiny_tokenizer()
    previous = os.umask(umask)
    try:
        checkpoint = save_checkpoint(tmp_path, tiny_model(tokenizer, {}), tokenizer, {"step": 1})
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in checkpoint.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {mode}, modes


def test_merged_lora_equals_peft_merge_and_unload():
    """A sharded LoRA checkpoint is merged from the gathered state dict; it must be exactly peft's merge."""
    import copy

    from peft import LoraConfig, get_peft_model

    from r1lab.checkpoint import merged_lora
    from r1lab.models import load_model
    torch.manual_seed(0)
    model = get_peft_model(load_model("tiny-random")[0], LoraConfig(r=2, lora_alpha=8, target_modules="all-linear",
                                                                    task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:                        # peft starts B at 0: the merge would change nothing
            p.data.normal_()
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    got = merged_lora(model, model.state_dict())
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"],
                           model.state_dict()["base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"])


def test_a_full_disk_while_saving_is_one_error_and_the_last_checkpoint_stays(tmp_path, monkeypatch):
    import safetensors
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, {"rope_theta": 100000.0})
    first = save_checkpoint(tmp_path, model, tokenizer, {"step": 1})
    before = (first / "model.safetensors").read_bytes()

    def full(*args, **kwargs):              # safetensors' own error type, as a full disk raised it here
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(type(model), "save_pretrained", full)
    with pytest.raises(R1labError, match=r"the disk is full; the checkpoint of step 2 was not written and .*checkpoint "
                                         r"is intact: free some space and continue with --resume"):
        save_checkpoint(tmp_path, model, tokenizer, {"step": 2})
    assert not (tmp_path / ".checkpoint.tmp").exists()
    assert find_checkpoint(tmp_path) == first and (first / "model.safetensors").read_bytes() == before
    assert torch.load(first / "trainer_state.pt")["step"] == 1


def test_a_short_write_on_a_full_disk_is_the_same_error(tmp_path, monkeypatch):
    """torch.save's zip writer reports a full disk only as a short write ("unexpected pos"): the free space decides."""
    import shutil as shutil_module
    import r1lab.checkpoint as checkpoint
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, {})
    save_checkpoint(tmp_path, model, tokenizer, {"step": 1})

    def short_write(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2011147904 vs 2011147796")
    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    with pytest.raises(RuntimeError, match="unexpected pos"):          # plenty of room: not a full disk, raised as it is
        save_checkpoint(tmp_path, model, tokenizer, {"step": 2})
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    with pytest.raises(R1labError, match=r"the disk is full; the checkpoint of step 2 was not written and .*intact"):
        save_checkpoint(tmp_path, model, tokenizer, {"step": 2})
    assert not (tmp_path / ".checkpoint.tmp").exists()
