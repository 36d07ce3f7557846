import json

import torch
from safetensors.torch import load_file

from r1lab.algorithms.compete import train_compete
from r1lab.config import CompeteConfig, GRPOConfig, load_config
from r1lab.models import load_model
from r1lab.rewards import score
from r1lab.rewards.majority import majority_reward
from tests.learnable import register
from r1lab.rollout import Sample, to_completion
from r1lab.templates import get_template
from r1lab.types import Problem


def c(answer):
    return to_completion(Sample([], [], f"<think> x </think> <answer> {answer} </answer>" if answer else "nothing", "stop"),
                         get_template("r1_zero"))


def test_majority_reward_needs_no_ground_truth():
    problem = Problem("p", "Calculate something", None)
    assert majority_reward([c("6"), c("6.0"), c("7"), c(None)], problem) == [1.0, 1.0, 0.0, 0.0]
    assert majority_reward([c(None), c(None)], problem) == [0.0, 0.0]


def test_majority_is_scored_per_group():
    problems = [Problem("a", "q", None)] * 3 + [Problem("b", "q", None)] * 3
    total, parts, failures = score({"majority": 1.0}, [c("1"), c("1"), c("2"), c("5"), c("4"), c("4")], problems, group_size=3)
    assert total == [1, 1, 0, 0, 1, 1] and failures == 0


def low_ids(completion, problem):
    return sum(t < 258 for t in completion.token_ids) / max(1, len(completion.token_ids))


def test_compete_learns_and_only_the_policy_changes(tmp_path, monkeypatch):
    register(monkeypatch, low_ids)
    cfg = load_config(CompeteConfig, None, {
        "model": "tiny-random", "rewards": "low_ids", "rounds": 25, "prompts_per_step": 4, "samples_per_prompt": 6,
        "micro_batch_size": 16, "max_new_tokens": 12, "learning_rate": 1e-2, "save_every": 100,
        "sources": [{"model": "tiny-random", "template": "chat", "samples": 2}], "out": str(tmp_path / "c")})
    checkpoint = train_compete(cfg)
    rows = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    policy = [r["source/policy/reward"] for r in rows]
    assert sum(policy[-5:]) / 5 > sum(policy[:5]) / 5 + 0.15, policy
    assert all("source/1:tiny-random:chat/reward" in r and r["imitated"] > 0 for r in rows)
    other = [r["source/1:tiny-random:chat/reward"] for r in rows]
    assert abs(sum(other[-5:]) / 5 - sum(other[:5]) / 5) < 0.15       # the other agent is never trained
    before, _ = load_model("tiny-random")
    after = load_file(checkpoint / "model.safetensors")
    assert not torch.equal(before.state_dict()["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_grpo_accepts_majority_without_answers(tmp_path):
    cfg = load_config(GRPOConfig, None, {"rewards": "majority,format", "task": f"jsonl:{tmp_path}/d.jsonl"})
    assert cfg.rewards == "majority,format"


def test_compete_trains_the_policy_without_dropout(tmp_path, monkeypatch):
    import r1lab.algorithms.compete as compete
    from tests.test_grpo import with_dropout
    loaded = []
    monkeypatch.setattr(compete, "load_policy", with_dropout(compete.load_policy, loaded))
    register(monkeypatch, low_ids)
    train_compete(load_config(CompeteConfig, None, {"model": "tiny-random", "rewards": "low_ids", "rounds": 1,
                                                    "prompts_per_step": 2, "max_new_tokens": 6, "out": str(tmp_path / "c")}))
    assert [m.attention_dropout for m in loaded[0].modules() if hasattr(m, "attention_dropout")] == [0.0, 0.0]


def test_unlikelihood_starts_where_a_bad_member_departs_from_every_good_one():
    """Hand-computed: in group 1 the good member is [1, 2, 3, 4]; [1, 2, 5, 6] shares 2 tokens with it and
    [7, 8] none; group 2 has no member imitated, so nothing is shared there."""
    from r1lab.algorithms.compete import shared_prefixes
    ids = [[1, 2, 3, 4], [1, 2, 5, 6], [7, 8], [1, 2, 3], [1, 9], [1, 2]]
    imitate = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert shared_prefixes(ids, imitate, 3) == [0, 2, 0, 0, 0, 0]
    imitate = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])        # two good members: the longer match counts
    assert shared_prefixes([[1, 2, 3, 4], [7, 8, 1], [7, 8, 9]], imitate[:3], 3) == [0, 2, 0]


def test_pushed_tokens_by_scope_hand_computed():
    from r1lab.algorithms.compete import pushed_tokens
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]])      # row 3: a tool result (0) first
    shared = torch.tensor([2, 0, 1])
    assert pushed_tokens(mask, shared, "all").tolist() == mask.tolist()
    assert pushed_tokens(mask, shared, "departure").tolist() == [[0, 0, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]]
    assert pushed_tokens(mask, shared, "fork").tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]]


def test_compete_with_lora_trains_adapters_only_and_resumes(tmp_path, monkeypatch):
    register(monkeypatch, low_ids)
    values = {"model": "tiny-random", "rewards": "low_ids", "rounds": 2, "prompts_per_step": 2, "samples_per_prompt": 4,
              "micro_batch_size": 8, "max_new_tokens": 6, "learning_rate": 1e-2, "save_every": 1, "lora_rank": 4,
              "out": str(tmp_path / "c")}
    checkpoint = train_compete(load_config(CompeteConfig, None, {**values, "rounds": 1}))
    assert (checkpoint / "adapter" / "adapter_config.json").is_file()
    merged, _ = load_model(str(checkpoint))                  # the merged model loads in plain transformers
    before, _ = load_model("tiny-random")
    changed = [k for k, v in before.state_dict().items() if not torch.equal(v, merged.state_dict()[k])]
    assert changed and all("proj" in k for k in changed)     # only the linear layers the adapters sit on moved
    from r1lab.training import accept_settings
    accept_settings(tmp_path / "c", load_config(CompeteConfig, None, values))   # as --allow-config-change does
    train_compete(load_config(CompeteConfig, None, values), resume=True)       # continues from the adapter
    rounds = [json.loads(line)["step"] for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]
