"""Engines behind the protocol: make_engine, and the vLLM engine's adapter, checked against a stand-in
for the `vllm` package with the current API's shape (vLLM itself needs a CUDA GPU; README says what was
run where)."""
import os
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from r1lab import R1labError
from r1lab.algorithms.grpo import train_grpo
from r1lab.config import GRPOConfig, load_config
from r1lab.models import load_model
from r1lab.rollout import Sampling
from r1lab.rollout.engines import make_engine
from tests.learnable import low_ids  # noqa: F401 - importable reward for the config


@dataclass
class Logprob:
    logprob: float


class FakeLLM:
    """The current vLLM `LLM` API's shape, as the engine may use it: the model is reached only through
    `apply_model` (a function run on the worker's model, whose `load_weights` takes (name, tensor) pairs);
    sleep(level)/wake_up(tags) discard and restore the weights and the KV cache, and using either while it
    sleeps fails as on a GPU. No `llm_engine.model_executor...` chain: reaching into it fails. Records what
    the engine asks; 'samples' tokens from a seeded generator per request."""
    instances = []

    def __init__(self, model, **options):
        assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"    # external_launcher needs the engine in-process
        self.folder, self.options, self.loaded, self.resets, self.calls, self.events = model, options, [], 0, [], []
        self.asleep = set()
        self.model = types.SimpleNamespace(load_weights=self._load_weights)
        FakeLLM.instances.append(self)

    def _load_weights(self, weights):
        if "weights" in self.asleep:
            raise RuntimeError("load_weights while the weights sleep")
        self.loaded.extend((name, tensor.clone()) for name, tensor in weights)
        self.events.append("load")
        return {name for name, _ in weights}

    def apply_model(self, func):
        return [func(self.model)]

    def sleep(self, level=1):
        assert self.options["enable_sleep_mode"] and level == 2
        self.asleep = {"weights", "kv_cache"}
        self.events.append("sleep")

    def wake_up(self, tags=None):
        self.asleep -= set(tags or ("weights", "kv_cache"))
        self.events.append(f"wake {','.join(tags or ['all'])}")

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, requests, params, use_tqdm=False):
        if self.asleep:
            raise RuntimeError(f"generate while {sorted(self.asleep)} sleep")
        self.calls.append((requests, params))
        self.events.append("generate")
        outputs = []
        for request, p in zip(requests, params):
            g = torch.Generator().manual_seed(p.seed if p.seed is not None else 0)
            ids = torch.randint(0, 300, (p.max_tokens,), generator=g).tolist()
            output = types.SimpleNamespace(token_ids=ids, text=" ".join(map(str, ids)), finish_reason="length",
                                           logprobs=[{t: Logprob(-1.5)} for t in ids])
            outputs.append(types.SimpleNamespace(outputs=[output]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_sleep_mode_available=lambda: True)   # as on CUDA
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(name, "")                      # restored afterwards
        monkeypatch.delenv(name)
    FakeLLM.instances.clear()
    return module


def test_unknown_engine_is_named():
    model, tokenizer = load_model("tiny-random")
    with pytest.raises(R1labError, match="valid engines: hf, vllm"):
        make_engine("sglang", model, tokenizer)
    with pytest.raises(R1labError, match="engine must be one of"):
        load_config(GRPOConfig, None, {"engine": "sglang"})


def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    model, tokenizer = load_model("tiny-random")
    with pytest.raises(R1labError, match=r"pip install 'r1lab\[vllm\]'"):
        make_engine("vllm", model, tokenizer)


def test_vllm_engine_adapts_outputs_seeds_and_weights(fake_vllm):
    model, tokenizer = load_model("tiny-random")
    engine = make_engine("vllm", model, tokenizer, seed=3)
    llm = FakeLLM.instances[0]
    assert llm.options["logprobs_mode"] == "processed_logprobs" and llm.options["enable_sleep_mode"]
    assert llm.options["distributed_executor_backend"] == "external_launcher"
    assert llm.events == ["sleep"]                                      # the GPU is the trainer's until a rollout
    sampling = Sampling(temperature=0.7, top_p=1.0, max_new_tokens=5, stop=("</answer>",))
    groups = engine.generate(["a", "b"], 3, sampling, seeds=[11, 12])
    assert [len(g) for g in groups] == [3, 3] and groups[0][0].logprobs == [-1.5] * 5
    _, params = llm.calls[0]
    assert [p.seed for p in params] == [(s * 1_000_003 + j) % 2**63 for s in (11, 12) for j in range(3)]
    assert params[0].stop == ["</answer>"] and params[0].include_stop_str_in_output and params[0].logprobs == 0
    # batching does not change what a prompt gets: the same seed gives the same sample alone
    alone = engine.generate(["b"], 3, sampling, seeds=[12])
    assert [s.token_ids for s in alone[0]] == [s.token_ids for s in groups[1]]
    # before every generate: weights woken, the policy's weights loaded, KV cache woken; asleep again after
    assert llm.events == ["sleep"] + ["wake weights", "load", "wake kv_cache", "generate", "sleep"] * 2
    assert {name for name, _ in llm.loaded} == set(model.state_dict()) and llm.resets == 2
    with pytest.warns(UserWarning, match="after top-p"):
        engine.generate(["a"], 1, Sampling(temperature=0.7, top_p=0.9, max_new_tokens=2))
    with pytest.raises(R1labError, match="does not stream"):
        engine.generate(["a"], 1, sampling, watch=lambda k, t: True)


def test_vllm_engine_without_sleep_mode_keeps_its_memory(fake_vllm, monkeypatch):
    monkeypatch.setattr(sys.modules["vllm.platforms"].current_platform, "is_sleep_mode_available", lambda: False)
    model, tokenizer = load_model("tiny-random")
    make_engine("vllm", model, tokenizer).generate(["a"], 2, Sampling(max_new_tokens=3))
    llm = FakeLLM.instances[0]
    assert not llm.options["enable_sleep_mode"] and llm.events == ["load", "generate"]


def test_grpo_with_the_vllm_engine_pushes_updated_weights_each_step(fake_vllm, tmp_path):
    cfg = load_config(GRPOConfig, None, {"model": "tiny-random", "engine": "vllm", "steps": 2, "prompts_per_step": 2,
                                         "samples_per_prompt": 4, "micro_batch_size": 8, "max_new_tokens": 6, "beta": 0.0,
                                         "learning_rate": 1e-2, "rewards": "tests.learnable:low_ids", "out": str(tmp_path / "run")})
    train_grpo(cfg)
    llm = FakeLLM.instances[0]
    pushes = len(llm.loaded) // len(load_model("tiny-random")[0].state_dict())
    assert pushes == 2 and len(llm.calls) == 2
    first, second = dict(llm.loaded[:len(llm.loaded) // 2]), dict(llm.loaded[len(llm.loaded) // 2:])
    assert any(not torch.equal(first[k], second[k]) for k in first)      # step 2 sampled from the updated policy


def short_context_model(max_position_embeddings: int):
    """tiny-random with a context of `max_position_embeddings` tokens (same weights)."""
    from transformers import LlamaForCausalLM
    model, tokenizer = load_model("tiny-random")
    config = model.config.to_dict() | {"max_position_embeddings": max_position_embeddings}
    short = LlamaForCausalLM(type(model.config).from_dict(config))
    short.load_state_dict(model.state_dict())
    return short, tokenizer


def test_prompt_plus_max_new_tokens_beyond_the_context_fails_before_sampling():
    from r1lab.rollout import rollout
    from r1lab.rollout.hf import HFEngine
    from r1lab.templates import get_template
    from r1lab.types import Problem

    template, problems = get_template("chat"), [Problem("a", "1+1", "2"), Problem("b", "What is 12 + 30 + 7?", "49")]
    _, tokenizer = load_model("tiny-random")
    longest = max(len(tokenizer(template.render(p.prompt, tokenizer), add_special_tokens=False)["input_ids"]) for p in problems)
    model, tokenizer = short_context_model(longest + 8)            # room for 8 new tokens after the longest prompt
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    engine = HFEngine(model, tokenizer, seed=0)
    with pytest.raises(R1labError, match=rf"prompt of {longest} tokens \+ max_new_tokens 9 = {longest + 9} .*"
                                         rf"max_position_embeddings {longest + 8}"):
        rollout(engine, problems, template, tokenizer, 2, Sampling(max_new_tokens=9))
    with pytest.raises(R1labError, match=f"max_position_embeddings {longest + 8}"):   # serve and llm() call generate
        engine.generate(["x" * (longest + 8)], 1, Sampling(max_new_tokens=1))
    assert calls == []                                                                # nothing was sampled
    _, groups = rollout(engine, problems, template, tokenizer, 2, Sampling(max_new_tokens=8))   # exactly full fits
    assert calls and all(len(c.token_ids) <= 8 for g in groups for c in g)


def test_fast_decoding_matches_the_models_own_layers_and_follows_weight_updates(monkeypatch):
    """Packed oneDNN linears + the growing KV cache against eager layers + DynamicCache: the same greedy
    tokens, sampled log-probs within 1e-4; after an in-place weight update the packs are rebuilt."""
    import contextlib

    from transformers import DynamicCache

    from r1lab.rollout import decoding, hf
    from r1lab.rollout.hf import HFEngine
    model, tokenizer = load_model("tiny-random")
    model.eval()                                   # as in eval and serving, where packs are kept between calls
    prompts = ["Calculate 1 + 2", "What is 12 + 30 + 7?"]
    engine = HFEngine(model, tokenizer, max_batch=8, seed=0)        # kept: its packs must follow the weights

    def both(sampling, seeds=None):
        fast = engine.generate(prompts, 3, sampling, seeds=seeds)
        with monkeypatch.context() as m:
            m.setattr(hf, "packed_linears", lambda *a: contextlib.nullcontext())
            m.setattr(hf, "GrowingCache", DynamicCache)
            slow = HFEngine(model, tokenizer, max_batch=8, seed=0).generate(prompts, 3, sampling, seeds=seeds)
        return [s for g in fast for s in g], [s for g in slow for s in g]

    packing = decoding._packs_correctly(8)          # oneDNN packing verified on this CPU (else the model's own linears)
    if packing:
        with torch.no_grad():
            probe = torch.randn(2, 64)
            linear = model.model.layers[0].mlp.up_proj
            assert torch.allclose(decoding.PackedLinear(linear, 8)(probe), linear(probe), atol=1e-5)
    for _ in range(2):
        fast, slow = both(Sampling(temperature=0, max_new_tokens=24))
        assert [s.token_ids for s in fast] == [s.token_ids for s in slow]
        fast, slow = both(Sampling(temperature=1.0, max_new_tokens=24), seeds=[5, 6])
        assert [s.token_ids for s in fast] == [s.token_ids for s in slow]
        assert max(abs(a - b) for f, s in zip(fast, slow) for a, b in zip(f.logprobs, s.logprobs)) < 1e-4
        fused = [p for p in engine._packs.values() if isinstance(p, decoding.FusedPack)]
        if packing:                                              # kept for the next call: q/k/v and gate/up fused
            assert engine._packs and len(fused) == 2 * len(model.model.layers)
        else:                                                    # the fallback: no pack at all
            assert not engine._packs
        with torch.no_grad():                                    # a training step: weights change in place
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    model.train()                                  # a policy being trained: its packs are not kept
    both(Sampling(temperature=0, max_new_tokens=4))
    assert not engine._packs


def test_the_lean_decode_step_is_the_models_own_step():
    """r1lab/rollout/lean_decode.py against the model's forward, from the same left-padded prefill: the same
    logits at every step; it applies only inside packed_linears and only to Llama."""
    from r1lab.rollout import decoding
    from r1lab.rollout.decoding import GrowingCache, packed_linears
    from r1lab.rollout.lean_decode import LeanDecoder
    model, _ = load_model("tiny-random")
    model.eval()
    if not decoding._packs_correctly(4):
        pytest.skip("no oneDNN packing on this CPU: the lean step never runs here")
    assert LeanDecoder.of(model) is None                                  # the model's own layers: no packs
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (4, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = mask[2, :7] = 0                                          # left padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), packed_linears(model, 4, {}):
        lean = LeanDecoder.of(model)
        assert lean is not None
        caches, tokens = [GrowingCache(), GrowingCache()], torch.tensor([5, 6, 7, 8])
        for cache in caches:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        position = positions[:, -1] + 1
        for _ in range(6):
            mask = torch.cat([mask, mask.new_ones(4, 1)], dim=1)
            mine = lean.step(tokens, mask, position, caches[0])
            theirs = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position[:, None],
                           cache=caches[1], use_cache=True).logits[:, -1]
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
            tokens, position = theirs.argmax(-1), position + 1
    gemma, _ = load_model("tiny-random-gemma3")
    with packed_linears(gemma.eval(), 4, {}):
        assert LeanDecoder.of(gemma) is None                               # another architecture: its own forward


def test_growing_cache_equals_the_dynamic_cache_through_repeat_and_select():
    from transformers import DynamicCache

    from r1lab.rollout.decoding import GrowingCache
    model, _ = load_model("tiny-random")
    ids = torch.randint(3, 500, (2, 7))
    outputs = []
    for cache in (DynamicCache(), GrowingCache()):
        with torch.no_grad():
            model(input_ids=ids, cache=cache, use_cache=True)
            cache.batch_repeat_interleave(3)
            steps = []
            for t in range(70):                                   # past the first room (7 + 64)
                if t == 10:
                    cache.batch_select_indices(torch.tensor([0, 2, 5]))
                rows = cache.layers[0].keys.shape[0]
                out = model(input_ids=torch.full((rows, 1), 3 + t), cache=cache, use_cache=True,
                            position_ids=torch.full((rows, 1), 7 + t))
                steps.append(out.logits[:, -1])
        outputs.append(steps)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*outputs))


def test_where_packing_is_unavailable_decoding_falls_back_to_the_models_own_linears(monkeypatch):
    """The other branch of the test above, forced on any CPU: no pack is made and the tokens are the same."""
    from r1lab.rollout import decoding
    from r1lab.rollout.hf import HFEngine
    model, tokenizer = load_model("tiny-random")
    model.eval()
    greedy = Sampling(temperature=0, max_new_tokens=12)
    expected = [s.token_ids for s in HFEngine(model, tokenizer, seed=0).generate(["Calculate 1 + 2"], 1, greedy)[0]]
    monkeypatch.setattr(decoding, "_PROBED", {})
    monkeypatch.setattr(decoding, "_packs_correctly", lambda rows: False)
    engine = HFEngine(model, tokenizer, seed=0)
    assert [s.token_ids for s in engine.generate(["Calculate 1 + 2"], 1, greedy)[0]] == expected
    assert not engine._packs


def test_gpu_decoding_leaves_out_cudnn_attention_and_restores_it():
    """cuDNN's attention plans anew for every key length (every token): decoding on a GPU leaves it out (docs/gpu.md)."""
    from r1lab.rollout.hf import decode_attention
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with decode_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with decode_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
