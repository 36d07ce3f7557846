"""Every command that runs a model puts it where `device()` says (through `load_on_device` or, for a trained
policy, `load_policy`), so on a GPU machine none of them silently stays on the CPU. Checked with `device`
answering a fresh torch.device object each time and `Module.to` recording the models moved to one of those
very objects: a model placed anywhere else, or without asking, is not counted (this runs on any machine)."""
import pytest
import torch

import r1lab.training as training
from r1lab.config import CompeteConfig, DistillConfig, RejectionConfig, load_config


@pytest.fixture
def asked(monkeypatch):
    """The class names of the models moved to a device that device() answered, in order."""
    answers, moved, real_device, real_to = [], [], training.device, torch.nn.Module.to

    def spy():
        answers.append(torch.device(real_device().type))        # a new object: recognised by identity below
        return answers[-1]

    def to(module, *args, **kwargs):
        if any(arg is answer for arg in args for answer in answers) and hasattr(module, "generate"):
            moved.append(type(module).__name__)
        return real_to(module, *args, **kwargs)
    monkeypatch.setattr(training, "device", spy)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moved


def test_load_on_device_moves_the_model_to_the_chosen_device_in_eval_mode(asked):
    model, tokenizer = training.load_on_device("tiny-random")
    assert asked == ["LlamaForCausalLM"] and not model.training and model.device.type == training.device().type
    assert tokenizer.pad_token is not None


def test_eval_generate_and_llm_ask_for_the_device(asked, tmp_path):
    from r1lab.cli import main
    from r1lab.evaluate import evaluate
    from r1lab.llm import make_llm

    evaluate(["tiny-random"], "arithmetic", samples=1, problems=1, max_new_tokens=4, out=str(tmp_path / "eval"))
    assert len(asked) == 1
    main(["generate", "tiny-random", "Calculate 1 + 2", "--max-new-tokens", "4"])
    assert len(asked) == 2
    make_llm("tiny-random", max_tokens=4)("You answer.", "Calculate 1 + 2")
    assert len(asked) == 3


def test_rejection_and_a_local_distill_teacher_ask_for_the_device(asked, tmp_path):
    from r1lab.algorithms.distill import run_distill
    from r1lab.algorithms.rejection import run_rejection

    small = {"problems": 1, "samples_per_prompt": 1, "max_new_tokens": 4}
    run_rejection(load_config(RejectionConfig, None, {"model": "tiny-random", "out": str(tmp_path / "r"), **small}))
    assert len(asked) == 1
    run_distill(load_config(DistillConfig, None, {"teacher": "tiny-random", "out": str(tmp_path / "d"), **small}))
    assert len(asked) == 2


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
    assert len(asked) == 1 and len(served) == 1


def test_compete_loads_its_other_sources_on_the_device(asked, tmp_path):
    from r1lab.algorithms.compete import train_compete

    cfg = load_config(CompeteConfig, None, {
        "model": "tiny-random", "sources": [{"model": "tiny-random", "samples": 1}], "rounds": 1, "prompts_per_step": 1,
        "samples_per_prompt": 1, "micro_batch_size": 2, "max_new_tokens": 4, "rewards": "format",
        "mixed_precision": "no", "rollout_dtype": "float32", "out": str(tmp_path / "c")})
    train_compete(cfg)
    assert len(asked) == 2          # the policy (load_policy) and the other source (load_on_device)
