"""Every command that runs a model asks `r1lab.training.device()` where to run it (through
`load_on_device`), so on a GPU machine none of them silently stays on the CPU. Checked with `device`
wrapped by a spy that records who asked (it answers as `device` does, so this runs on any machine)."""
import sys

import pytest

import r1lab.training as training
from r1lab.config import CompeteConfig, DistillConfig, RejectionConfig, load_config


@pytest.fixture
def asked(monkeypatch):
    """The names of the functions that called device(), in order."""
    callers, real = [], training.device

    def spy():
        callers.append(sys._getframe(1).f_code.co_name)
        return real()
    monkeypatch.setattr(training, "device", spy)
    return callers


def test_load_on_device_moves_the_model_to_the_chosen_device_in_eval_mode(asked):
    model, tokenizer = training.load_on_device("tiny-random")
    assert asked == ["load_on_device"] and not model.training and model.device.type == training.device().type
    assert tokenizer.pad_token is not None


def test_eval_generate_and_llm_ask_for_the_device(asked, tmp_path):
    from r1lab.cli import main
    from r1lab.evaluate import evaluate
    from r1lab.llm import make_llm

    evaluate(["tiny-random"], "arithmetic", samples=1, problems=1, max_new_tokens=4, out=str(tmp_path / "eval"))
    assert asked.count("load_on_device") == 1
    main(["generate", "tiny-random", "Calculate 1 + 2", "--max-new-tokens", "4"])
    assert asked.count("load_on_device") == 2
    make_llm("tiny-random", max_tokens=4)("You answer.", "Calculate 1 + 2")
    assert asked.count("load_on_device") == 3


def test_rejection_and_a_local_distill_teacher_ask_for_the_device(asked, tmp_path):
    from r1lab.algorithms.distill import run_distill
    from r1lab.algorithms.rejection import run_rejection

    small = {"problems": 1, "samples_per_prompt": 1, "max_new_tokens": 4}
    run_rejection(load_config(RejectionConfig, None, {"model": "tiny-random", "out": str(tmp_path / "r"), **small}))
    assert asked.count("load_on_device") == 1
    run_distill(load_config(DistillConfig, None, {"teacher": "tiny-random", "out": str(tmp_path / "d"), **small}))
    assert asked.count("load_on_device") == 2


def test_serve_asks_for_the_device(asked, monkeypatch):
    import uvicorn

    from r1lab.serve import serve
    served = []

    class Server:                                         # stands in for uvicorn's: returns at once
        def __init__(self, config):
            served.append(config.app)

        def run(self, sockets):
            sockets[0].close()
    monkeypatch.setattr(uvicorn, "Server", Server)
    serve("tiny-random", port=0)
    assert asked.count("load_on_device") == 1 and len(served) == 1


def test_compete_loads_its_other_sources_on_the_device(asked, tmp_path):
    from r1lab.algorithms.compete import train_compete

    cfg = load_config(CompeteConfig, None, {
        "model": "tiny-random", "sources": [{"model": "tiny-random", "samples": 1}], "rounds": 1, "prompts_per_step": 1,
        "samples_per_prompt": 1, "micro_batch_size": 2, "max_new_tokens": 4, "rewards": "format",
        "mixed_precision": "no", "rollout_dtype": "float32", "out": str(tmp_path / "c")})
    train_compete(cfg)
    assert asked.count("load_on_device") == 1          # the source; the policy goes through load_policy
    assert "load_policy" in asked
