"""The prompt pool (r1lab/algorithms/prompt_pool.py): the pure record and selection by hand, then tiny-random GRPO
runs on a 4-problem jsonl task whose reward is 1 on one problem, 0 on another and a spread on the other two."""
import json
import random
from types import SimpleNamespace

import pytest

from r1lab import R1labError
from r1lab.algorithms.grpo import train_grpo
from r1lab.algorithms.prompt_pool import PromptPool, group_rates, pass_rate
from r1lab.config import GRPOConfig, load_config
from tests.learnable import low_ids, register
from tests.test_grpo import Killed, metrics, record_rollouts


def problems(*ids):
    return [SimpleNamespace(id=i) for i in ids]


def ids(picked):
    return [p.id for p in picked]


def test_pass_rate_is_the_full_accuracy_share_or_the_normalised_total():
    assert pass_rate([2.0, 0.5, 1.5, 0.0], {"accuracy": [1.0, 0.5, 1.0, 0.0], "format": [1, 0, 0.5, 0]},
                     {"accuracy": 1.0, "format": 1.0}) == 0.5                   # 2 of 4 fully accurate
    # weights 1 and -0.5, each reward in [0, 1]: totals span [-0.5, 1], normalised (t + 0.5) / 1.5, clipped
    assert pass_rate([1.0, -0.5, 0.25, 2.0], {"a": [], "b": []}, {"a": 1.0, "b": -0.5}) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    rates = group_rates(problems("p", "q"), [1, 1, 0, 1], {"accuracy": [1, 1, 0, 1]}, {"accuracy": 1.0}, 2)
    assert rates == [("p", 1.0), ("q", 0.5)]


def test_a_prompt_solved_always_or_never_is_set_aside_and_a_mixed_one_kept():
    pool = PromptPool(easy=1.0, hard=0.0, seen=1, explore=0.0)
    stream = problems("easy", "hard", "mixed", "new")
    for problem_id, rate in (("easy", 1.0), ("hard", 0.0), ("mixed", 0.5)):
        pool.record(problem_id, rate)
    assert [pool.kind(p.id) for p in stream] == ["easy", "hard", "mixed", "new"]
    picked, skipped = pool.pick(stream, 2, random.Random(0))
    assert ids(picked) == ["mixed", "new"] and skipped == 2 and pool.cursor == 4
    picked, skipped = pool.pick(stream, 3, random.Random(0))          # the list wraps: the next epoch
    assert ids(picked) == ["mixed", "new", "mixed"] and skipped == 4 and pool.cursor == 11
    assert pool.sizes() == {"easy": 1, "hard": 1}
    assert pool.metrics(skipped, 3) == {"pool_skipped": 4, "pool_saved": 4 / 7, "pool_easy": 1, "pool_hard": 1}


def test_a_prompt_is_judged_on_its_last_seen_groups_once_it_has_them():
    pool = PromptPool(easy=0.9, hard=0.1, seen=2)
    pool.record("p", 1.0)
    assert pool.kind("p") == "new"                                    # one group of the two it is judged on
    pool.record("p", 1.0)
    assert pool.kind("p") == "easy"
    pool.record("p", 0.0)                                             # its last two: 1.0, 0.0
    assert pool.rates["p"] == [1.0, 0.0] and pool.kind("p") == "mixed"
    pool.record("p", 0.0)
    assert pool.kind("p") == "hard"


def test_every_problem_set_aside_takes_the_list_as_it_comes():
    pool = PromptPool(explore=0.0)
    for problem_id in "ab":
        pool.record(problem_id, 1.0)
    picked, skipped = pool.pick(problems("a", "b"), 3, random.Random(0))
    assert ids(picked) == ["a", "b", "a"] and skipped == 0


@pytest.mark.parametrize("explore, share", [(0.0, 0.0), (0.3, 0.3), (1.0, 1.0)])
def test_the_exploration_share_is_the_share_of_slots_drawn_whatever_the_record(explore, share):
    pool = PromptPool(explore=explore)
    pool.record("easy", 1.0)
    rng, taken = random.Random("explore"), 0
    for _ in range(4000):
        pool.cursor = 0                                               # the candidate is the set-aside one
        taken += ids(pool.pick(problems("easy", "other"), 1, rng)[0]) == ["easy"]
    assert taken / 4000 == pytest.approx(share, abs=0.025)


def test_picks_depend_on_the_seeded_rng_and_the_record_only():
    def run(noise: bool):
        pool, picked = PromptPool(explore=0.5), []
        stream = problems(*"abcdefgh")
        for index in range(20):
            if noise:
                random.random()                                       # the global stream moves: no effect
            picked += ids(pool.pick(stream, 3, random.Random(f"7/pool/{index}"))[0])
            for problem_id in picked[-3:]:
                pool.record(problem_id, 1.0 if problem_id in "abc" else 0.5)
        return picked, pool.state_dict()
    assert run(False) == run(True)
    picked, state = run(False)
    resumed = PromptPool(explore=0.5)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert resumed.state_dict() == state and any(p in "abc" for p in picked[30:])   # explored back


def by_kind(completion, problem):
    """1 on the easy problem, 0 on the hard one, the share of low token ids (a spread) on the others."""
    return {"easy": 1.0, "hard": 0.0}.get(problem.meta["kind"], low_ids(completion, problem))


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    register(monkeypatch, by_kind)
    rows = [{"prompt": f"Question {i}", "answer": str(i), "kind": kind}
            for i, kind in enumerate(["easy", "hard", "mixed", "mixed"])]
    for split in ("train", "test"):
        (tmp_path / f"d_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"jsonl:{tmp_path}/d_{{split}}.jsonl"


def config(tmp_path, task, **overrides):
    settings = dict(model="tiny-random", task=task, rewards="by_kind", steps=4, prompts_per_step=2,
                    samples_per_prompt=4, micro_batch_size=4, max_new_tokens=12, learning_rate=1e-3,
                    prompt_pool=True, pool_explore=0.0, out=str(tmp_path / "run"))
    return load_config(GRPOConfig, None, {**settings, **overrides})


def kinds(rounds):
    return [[p.meta["kind"] + p.id[-1] for p in r] for r in rounds]   # e.g. "mixed3": the kind and the line


E_H, M_M = ["easy1", "hard2"], ["mixed3", "mixed4"]


def test_a_grpo_run_sets_aside_and_logs_what_it_saved(tmp_path, dataset, monkeypatch):
    rounds = record_rollouts(monkeypatch)
    rows = metrics(train_grpo(config(tmp_path, dataset)).parent)
    assert kinds(rounds) == [E_H, M_M, M_M, M_M]                      # a plain run: E_H, M_M, E_H, M_M
    assert [r["pool_skipped"] for r in rows] == [0, 0, 2, 2]
    assert [r["pool_saved"] for r in rows] == [0, 0, 0.5, 0.5]        # 2 passed over, 2 sampled
    assert [(r["pool_easy"], r["pool_hard"]) for r in rows] == [(1, 1)] * 4
    assert all("zero_std_groups" in r for r in rows) and rows[0]["zero_std_groups"] == 1


def test_with_explore_1_the_pool_changes_nothing(tmp_path, dataset, monkeypatch):
    rounds = record_rollouts(monkeypatch)
    pooled = metrics(train_grpo(config(tmp_path / "pool", dataset, pool_explore=1.0)).parent)
    plain = metrics(train_grpo(config(tmp_path / "plain", dataset, prompt_pool=False)).parent)
    assert kinds(rounds[:4]) == kinds(rounds[4:]) == [E_H, M_M, E_H, M_M]
    for key in ("reward", "kl", "grad_norm", "completion_length"):
        assert [r[key] for r in pooled] == [r[key] for r in plain], key
    assert all(r["pool_skipped"] == 0 for r in pooled) and "pool_skipped" not in plain[0]


def test_a_resumed_run_draws_what_an_uninterrupted_one_does(tmp_path, dataset, monkeypatch):
    import r1lab.algorithms.grpo as grpo
    rounds = record_rollouts(monkeypatch)
    train_grpo(config(tmp_path / "a", dataset, save_every=2))
    straight = kinds(rounds)
    rounds.clear()
    real_end = grpo.end_step

    def save_then_die(par, out, step, steps, save_every, *args):
        real_end(par, out, step, steps, save_every, *args)
        if step + 1 == 2:
            raise Killed
    monkeypatch.setattr(grpo, "end_step", save_then_die)
    with pytest.raises(Killed):
        train_grpo(config(tmp_path / "b", dataset, save_every=2))
    monkeypatch.setattr(grpo, "end_step", real_end)
    train_grpo(config(tmp_path / "b", dataset, save_every=2), resume=True)
    assert kinds(rounds) == straight == [E_H, M_M, M_M, M_M]          # without the record: E_H again at step 3
    assert [r["pool_skipped"] for r in metrics(tmp_path / "b" / "run")] == [0, 0, 2, 2]


def test_with_dynamic_sampling_each_round_draws_from_the_pool(tmp_path, dataset, monkeypatch):
    rounds = record_rollouts(monkeypatch)
    rows = metrics(train_grpo(config(tmp_path, dataset, steps=2, dynamic_sampling=True,
                                     dynamic_sampling_max_draws=3)).parent)
    # step 1: E_H has no spread, a second round; step 2: the record sets E_H aside, one round fills the step
    assert kinds(rounds) == [E_H, M_M, M_M]
    assert [r["dynamic_draws"] for r in rows] == [2, 1] and [r["pool_skipped"] for r in rows] == [0, 2]


def test_pool_settings_are_checked():
    assert GRPOConfig().prompt_pool is False
    with pytest.raises(R1labError, match="pool_hard .* must be below pool_easy"):
        load_config(GRPOConfig, None, {"prompt_pool": "true", "pool_easy": "0.5", "pool_hard": "0.5"})
    for name, value in (("pool_explore", "1.5"), ("pool_easy", "-0.1"), ("pool_seen", "0")):
        with pytest.raises(R1labError, match=rf"GRPOConfig.{name} must be in"):
            load_config(GRPOConfig, None, {name: value})
