import pytest
import torch

from r1lab import R1labError
from r1lab.cli import main
from r1lab.models import check_spec, load_model, smollm2_folder
from r1lab.rollout import Sampling
from r1lab.rollout.hf import HFEngine


def test_tiny_random_is_small_and_identical_each_time():
    a, tokenizer = load_model("tiny-random")
    b, _ = load_model("tiny-random")
    assert len(tokenizer) <= 512 and sum(p.numel() for p in a.parameters()) < 200_000
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    text = "Calculate 12 + 5 - 3"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    samples = HFEngine(a, tokenizer).generate(["Calculate 1 + 2"], 4, Sampling(max_new_tokens=32))
    assert len(samples[0]) == 4 and all(1 <= len(s.token_ids) <= 32 for s in samples[0])


def test_save_and_reload_round_trip(tmp_path):
    model, tokenizer = load_model("tiny-random")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path))
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(R1labError, match="pass the local folder"):
        load_model("someone/some-model-that-is-not-here")


def test_folder_without_config_and_missing_gguf(tmp_path):
    with pytest.raises(R1labError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(R1labError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))


@pytest.mark.parametrize("spec, error", [
    ("smollm2", "unknown model 'smollm2'; did you mean smollm2-135m?"),
    ("tiny_random", "did you mean tiny-random?"),
    ("gemma3", "unknown model 'gemma3'; did you mean gemma3-270m?"),
    ("runs/nope/checkpoint", "runs/nope/checkpoint: no such folder"),
    ("./checkpoint", "no such folder"),
    ("tests/nope", "tests/nope: no such folder"),              # tests/ is a folder here: a path, not owner/name
])
def test_a_spec_that_is_no_alias_and_no_folder_fails_at_once_without_the_hub(spec, error, monkeypatch):
    monkeypatch.setattr("r1lab.models._from_hub", lambda *a: pytest.fail("asked the hub"))
    with pytest.raises(R1labError, match=error.replace("?", r"\?")):
        load_model(spec)


def test_only_owner_name_ids_go_to_the_hub(tmp_path):
    assert check_spec("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub" and check_spec("tiny-random") == "alias"
    assert check_spec("gemma3-270m") == check_spec("tiny-random-gemma3") == "alias"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert check_spec(str(tmp_path / "model")) == "folder"


def test_cli_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "tiny-random", "hi", "--template", "nope"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("r1lab: error: unknown template")


@pytest.mark.slow
def test_embedded_model_converts_once_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("R1LAB_CACHE", str(tmp_path))
    folder = smollm2_folder()
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob(".*tmp*"))
    model, tokenizer = load_model("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and tokenizer.eos_token == "<|im_end|>"
    out = HFEngine(model, tokenizer).generate([tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello"}], add_generation_prompt=True, tokenize=False)], 1,
        Sampling(temperature=0, max_new_tokens=8))
    assert out[0][0].text.strip()


def test_models_load_without_hub_kernels(tmp_path):
    """transformers kernelizes by default (plain from_pretrained: use_kernels True), fetching layer kernels from
    Hub repositories on CUDA, which fails offline (found on the first GPU run); r1lab's loads turn it off."""
    from transformers import AutoModelForCausalLM
    model, tokenizer = load_model("tiny-random")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).use_kernels       # the library's default
    assert not model.use_kernels and not load_model(str(tmp_path))[0].use_kernels
