import math

import pytest
import torch

from r1lab.algorithms.losses import (aggregate, clipped_surrogate, constant_groups, group_advantages, grpo_loss,
                                     importance_ratio, kl_k3, leave_one_out_advantages, sampler_mismatch, sft_loss,
                                     truncated_importance_weights)


EPS = 1e-4   # the advantage denominator's epsilon (TRL's), pinned here


def close(values, expected):
    """Equal to hand-computed values within float32 rounding (rtol 1e-6)."""
    return torch.allclose(values.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_advantages_hand_computed():
    adv, m = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    assert close(adv, [a / (0.5 + EPS) for a in (0.75, -0.25, -0.25, -0.25)])       # mean .25, unbiased std .5
    adv, _ = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert close(adv, [0.5 / (1 / math.sqrt(2) + EPS), -0.5 / (1 / math.sqrt(2) + EPS)])
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scale=False)   # Dr. GRPO: centred only, no epsilon
    assert adv.tolist() == [0.75, -0.25, -0.25, -0.25]


def test_equal_reward_groups_get_zero_and_are_counted():
    adv, m = group_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.3, 0.3]), 2)
    assert adv[:2].tolist() == [0.0, 0.0] and adv[4:].tolist() == [0.0, 0.0] and adv[2] < 0 < adv[3]
    assert m["zero_std_groups"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("G", range(2, 17))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_groups_get_exactly_zero_at_every_value(G, dtype):
    # float32 rounding made the std of [2.4] * 8 ~1e-7 and every member +0.935 (125 of these 301 values at G = 8)
    values = [k / 100 for k in range(301)]
    for scale in (True, False):
        for value in values:                                            # one group per call, as a process with one prompt
            adv, m = group_advantages(torch.full((G,), value, dtype=dtype), G, scale)
            assert adv.dtype == dtype and torch.count_nonzero(adv) == 0 and m["zero_std_groups"] == 1.0, value
        adv, m = group_advantages(torch.tensor([v for v in values for _ in range(G)], dtype=dtype), G, scale)
        assert torch.count_nonzero(adv) == 0 and m["zero_std_groups"] == 1.0


def test_groups_equal_up_to_rounding_are_constant():
    # the same sum in different orders differs in the last bit (0.6000000000000001 vs 0.6)
    parts = [0.1, 0.2, 0.3]
    rewards = torch.tensor([sum(parts), sum(reversed(parts)), 0.6, 0.6], dtype=torch.float64)
    assert len(set(rewards.tolist())) == 2
    adv, m = group_advantages(rewards, 4)
    assert adv.tolist() == [0.0] * 4 and m["zero_std_groups"] == 1.0


def test_tiny_reward_differences_do_not_become_unit_advantages():
    adv, m = group_advantages(torch.tensor([0.5, 0.5 + 1e-6], dtype=torch.float64), 2)
    # centred +-5e-7 over (std 7.07e-7 + 1e-4): +-0.00496, where an epsilon-free std gives +-0.707
    expected = 5e-7 / (1e-6 / math.sqrt(2) + EPS)
    assert adv[1].item() == pytest.approx(expected, rel=1e-6) and adv[0].item() == pytest.approx(-expected, rel=1e-6)
    assert m["zero_std_groups"] == 0.0


def test_leave_one_out_advantages_hand_computed():
    adv, m = leave_one_out_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4)
    # r_i - mean of the other three: 1 - 0, 0 - 1/3; the second group is constant: 0, counted
    assert close(adv[:4], [1.0, -1 / 3, -1 / 3, -1 / 3]) and adv[4:].tolist() == [0.0] * 4
    assert m["zero_std_groups"] == 0.5
    adv, _ = leave_one_out_advantages(torch.tensor([3.0, 1.0], dtype=torch.float64), 2)
    assert adv.tolist() == [2.0, -2.0] and adv.dtype == torch.float64
    adv, _ = leave_one_out_advantages(torch.tensor([0.1 + 0.2 + 0.3, 0.3 + 0.2 + 0.1], dtype=torch.float64), 2)
    assert adv.tolist() == [0.0, 0.0]                                              # equal up to rounding


def test_constant_groups_hand_computed():
    assert constant_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2).tolist() == [True, False, True]


def test_truncated_importance_weights_hand_computed():
    # pi_old / pi_sampler per token: .5/.25 = 2, .25/.5 = .5, .9/.3 = 3 -> capped at 2; the pad's huge ratio is ignored
    old = torch.log(torch.tensor([[0.5, 0.25], [0.9, 0.9]]))
    sampler = torch.log(torch.tensor([[0.25, 0.5], [0.3, 1e-9]]))
    w, m = truncated_importance_weights(old, sampler, torch.tensor([[1, 1], [1, 0]]), cap=2.0)
    assert close(w, [[2.0, 0.5], [2.0, 0.0]])
    assert m["is_weight"] == pytest.approx((2 + 0.5 + 2) / 3, rel=1e-6) and m["is_capped"] == pytest.approx(1 / 3)
    w, m = truncated_importance_weights(old, sampler, torch.tensor([[1, 1], [1, 0]]), cap=1.5)
    assert close(w, [[1.5, 0.5], [1.5, 0.0]]) and m["is_capped"] == pytest.approx(2 / 3)


def test_importance_weights_multiply_the_surrogate_but_not_the_kl():
    # ratio 1, A = 1, weights 2 and .5, beta .1: per token -w + .1 kl; mean over the sequence's two tokens
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    loss, _ = grpo_loss(logp, logp, ref, torch.tensor([1.0]), torch.ones(1, 2), beta=0.1, is_weights=torch.tensor([[2.0, 0.5]]),
                        batch_sequences=1, batch_tokens=2, max_length=2)
    kl = 0.5 - math.log(0.5) - 1
    assert loss.item() == pytest.approx(((-2 + 0.1 * kl) + (-0.5 + 0.1 * kl)) / 2, rel=1e-6)


def test_sampler_mismatch_hand_computed():
    # log pi_old - log pi_sampler = log 2, log .5 on sequence 0; 0 on sequence 1's one real token (its pad is ignored)
    sampler = torch.log(torch.tensor([[0.25, 0.5], [0.3, 1e-9]]))
    old = torch.log(torch.tensor([[0.5, 0.25], [0.3, 0.9]]))
    absolute, k3 = sampler_mismatch(sampler, old, torch.tensor([[1, 1], [1, 0]]))
    assert close(absolute, [2 * math.log(2), 0.0])
    assert close(k3, [(2 - math.log(2) - 1) + (0.5 + math.log(2) - 1), 0.0])   # r - log r - 1 at r = 2 and r = 1/2
    absolute, k3 = sampler_mismatch(old, old, torch.ones(2, 2))
    assert absolute.tolist() == [0.0, 0.0] and k3.tolist() == [0.0, 0.0]


def test_k3_kl_hand_computed():
    kl = kl_k3(torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25, 0.25])))
    assert kl[0].item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl[1].item() == pytest.approx(0.0)


def test_k3_kl_keeps_small_differences_in_float32():
    # x = 1e-4: x^2/2 + x^3/6 = 5.00017e-9; exp(x) - x - 1 in float32 gives 0 or a multiple of 1.2e-7
    kl = kl_k3(torch.zeros(1), torch.tensor([1e-4]))
    assert kl.dtype == torch.float32 and kl.item() == pytest.approx(1e-8 / 2 + 1e-12 / 6, rel=1e-3)


def test_k3_kl_clamps_the_log_ratio_at_20():
    kl = kl_k3(torch.tensor([-100.0, float("-inf"), 0.0]), torch.tensor([0.0, 0.0, -100.0]))
    assert kl.tolist() == pytest.approx([math.exp(20) - 21, math.exp(20) - 21, math.exp(-20) + 19], rel=1e-6)


@pytest.mark.parametrize("ratio, adv, eps_high, value, clipped", [
    (1.5, 1.0, 0.2, 1.2, True), (1.5, -1.0, 0.2, -1.5, False), (0.5, 1.0, 0.2, 0.5, False),
    (0.5, -1.0, 0.2, -0.8, True), (1.5, 1.0, 0.28, 1.28, True), (1.0, 2.0, 0.2, 2.0, False),
])
def test_clipped_surrogate_hand_computed(ratio, adv, eps_high, value, clipped):
    s, c = clipped_surrogate(torch.tensor([[ratio]]), torch.tensor([adv]), 0.2, eps_high)
    assert s.item() == pytest.approx(value) and c.item() == clipped


def test_token_ratio_is_exp_of_the_log_ratio_clamped_at_20():
    r = importance_ratio(torch.tensor([[math.log(1.5), 100.0]]), torch.zeros(1, 2), torch.ones(1, 2))
    assert close(r, [[1.5, math.exp(20)]])


def test_sequence_ratio_is_the_geometric_mean_over_real_tokens():
    # GSPO: sequence 0 has token ratios 2 and 1/8 -> exp((log 2 - log 8) / 2) = 1/2 on both tokens; sequence 1 has one
    # real token of ratio 3 and a pad whose log-ratio (7) must not count
    logp = torch.tensor([[math.log(2), -math.log(8)], [math.log(3), 7.0]])
    r = importance_ratio(logp, torch.zeros(2, 2), torch.tensor([[1, 1], [1, 0]]), level="sequence")
    assert close(r, [[0.5, 0.5], [3.0, 3.0]])


def test_sequence_level_loss_hand_computed():
    # GSPO, eps 3e-4 / 4e-4: ratio 1/2 clips at 1 - 3e-4 for A = -1 (min(-0.5, -0.9997) = -0.9997), ratio 3 at 1 + 4e-4
    # for A = +1; mode "sample" averages the per-sequence values: loss = -(-0.9997 + 1.0004) / 2, every token clipped
    logp = torch.tensor([[math.log(2), -math.log(8)], [math.log(3), 0.0]], dtype=torch.float64)
    adv = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    loss, m = grpo_loss(logp, torch.zeros_like(logp), None, adv, torch.tensor([[1, 1], [1, 0]]), beta=0.0,
                        eps_low=3e-4, eps_high=4e-4, ratio_level="sequence", batch_sequences=2, batch_tokens=3, max_length=2)
    assert loss.item() == pytest.approx(-(-(1 - 3e-4) + (1 + 4e-4)) / 2, rel=1e-9)
    assert m["clip_fraction"] == 1.0 and m["ratio_min"] == pytest.approx(0.5) and m["ratio_max"] == pytest.approx(3.0)
    assert m["ratio_mean"] == pytest.approx((0.5 + 0.5 + 3) / 3, rel=1e-6)


def test_sequence_level_gradient_flows_through_the_mean_log_ratio():
    # one sequence of 2 tokens, A = 1, no clip (eps large): loss = -exp(mean_t (logp_t - old_t)), d/dlogp_t = -s / 2
    logp = torch.tensor([[0.1, 0.3]], dtype=torch.float64, requires_grad=True)
    loss, _ = grpo_loss(logp, torch.zeros(1, 2, dtype=torch.float64), None, torch.tensor([1.0], dtype=torch.float64),
                        torch.ones(1, 2), beta=0.0, eps_low=0.9, eps_high=10.0, ratio_level="sequence",
                        batch_sequences=1, batch_tokens=2, max_length=2)
    loss.backward()
    assert loss.item() == pytest.approx(-math.exp(0.2), abs=1e-12)
    assert logp.grad[0].tolist() == pytest.approx([-math.exp(0.2) / 2] * 2, abs=1e-12)


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("mode, expected", [("sample", (2 + 4) / 2), ("token", 10 / 4), ("constant", 10 / (2 * 3))])
def test_aggregation_modes_hand_computed(mode, expected):
    assert aggregate(VALUES, MASK, mode, batch_sequences=2, batch_tokens=4, max_length=3).item() == pytest.approx(expected)


def test_grpo_loss_hand_computed_with_kl():
    # one sequence of two tokens, ratio 1, advantage 1, beta .1; kl per token from pi=.5, ref=.25
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    loss, m = grpo_loss(logp, logp, ref, torch.tensor([1.0]), torch.ones(1, 2), beta=0.1,
                        batch_sequences=1, batch_tokens=2, max_length=2)
    kl = 0.5 - math.log(0.5) - 1
    assert loss.item() == pytest.approx(-(1 - 0.1 * kl)) and m["kl"] == pytest.approx(kl)
    assert (m["ratio_mean"], m["ratio_min"], m["ratio_max"], m["clip_fraction"]) == (1.0, 1.0, 1.0, 0.0)


def loop_grpo(logp, old, ref, adv, mask, eps, beta, level="token", weights=None):
    """Eq. 1 written as the paper reads: 1/G sum_i 1/|o_i| sum_t [w_t min(...) - beta KL]; GSPO's ratio is
    one per sequence, exp(1/|o_i| sum_t log r_t)."""
    total = 0.0
    for i in range(len(logp)):
        n = int(sum(mask[i]))
        sequence_ratio = math.exp(sum(logp[i][t] - old[i][t] for t in range(n)) / n)
        inner = 0.0
        for t in range(n):
            r = math.exp(logp[i][t] - old[i][t]) if level == "token" else sequence_ratio
            surrogate = min(r * adv[i], max(min(r, 1 + eps), 1 - eps) * adv[i])
            q = math.exp(ref[i][t] - logp[i][t])
            inner += (weights[i][t] if weights else 1.0) * surrogate - beta * (q - math.log(q) - 1)
        total += inner / n
    return -total / len(logp)


def random_batch(seed=0, B=6, T=5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("weighted", [False, True])
def test_vectorised_matches_plain_loop(level, weighted):
    logp, old, ref, adv, mask = random_batch()
    weights = 0.5 + torch.rand(logp.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    loss, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.04, ratio_level=level, is_weights=weights if weighted else None,
                        batch_sequences=6, batch_tokens=int(mask.sum()), max_length=5)
    expected = loop_grpo(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.04, level,
                         weights.tolist() if weighted else None)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["sample", "token", "constant"])
def test_micro_batches_with_accumulation_give_the_whole_batch_gradient(mode, level):
    logp, old, ref, adv, mask = random_batch(seed=1)
    weights = 0.5 + torch.rand(logp.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kwargs = dict(beta=0.04, mode=mode, batch_sequences=6, batch_tokens=int(mask.sum()), max_length=5, eps_high=0.28,
                  ratio_level=level)
    whole = logp.clone().requires_grad_(True)
    grpo_loss(whole, old, ref, adv, mask, is_weights=weights, **kwargs)[0].backward()
    split = logp.clone().requires_grad_(True)
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
        grpo_loss(split[rows], old[rows], ref[rows], adv[rows], mask[rows], is_weights=weights[rows], **kwargs)[0].backward()
    assert torch.allclose(whole.grad, split.grad, atol=1e-12)


def test_sft_loss_hand_computed():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 1.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    assert sft_loss(logp, mask).item() == pytest.approx((math.log(2) + math.log(4) + math.log(2)) / 3)
    weighted = sft_loss(logp, mask, weights=torch.tensor([2.0, 0.0]))
    assert weighted.item() == pytest.approx(2 * (math.log(2) + math.log(4)) / 3)


def test_compete_weights_hand_computed():
    from r1lab.algorithms.losses import compete_weights
    imitate, push = compete_weights(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.5, 0.5]), 4)
    assert imitate.tolist() == [1, 0, 0, 0, 1, 1, 0, 0] and push.tolist() == [0, 1, 1, 1, 0, 0, 1, 1]
    imitate, push = compete_weights(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 3.0]), 4, by_advantage=True)
    a = 0.75 / (0.5 + EPS)                                                        # eq. 3: [1, -1/3, -1/3, -1/3] * a
    assert close(imitate, [a, 0, 0, 0, 0, 0, 0, 0]) and close(push, [0, a / 3, a / 3, a / 3, 0, 0, 0, 0])


@pytest.mark.parametrize("G", [2, 3, 8, 16])
def test_compete_imitates_nobody_in_groups_equal_up_to_rounding(G):
    from r1lab.algorithms.losses import compete_weights
    for k in range(301):                                   # float32, as the trainer builds them from reward sums
        for by_advantage in (False, True):
            imitate, push = compete_weights(torch.full((G,), k / 100), G, by_advantage)
            assert torch.count_nonzero(imitate) == 0 and torch.count_nonzero(push) == 0, k / 100
    imitate, push = compete_weights(torch.tensor([0.1 + 0.2 + 0.3, 0.3 + 0.2 + 0.1], dtype=torch.float64), 2)
    assert imitate.tolist() == [0, 0] and push.tolist() == [0, 0]


def test_unlikelihood_hand_computed():
    from r1lab.algorithms.losses import unlikelihood_loss
    logp = torch.log(torch.tensor([[0.5, 0.75], [0.9, 0.9]]))
    loss = unlikelihood_loss(logp, torch.tensor([[1, 1], [1, 0]]), torch.tensor([1.0, 0.0]), batch_tokens=3)
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.25)) / 3)


def test_unlikelihood_hand_computed_ignores_minus_inf_padding():
    from r1lab.algorithms.losses import unlikelihood_loss
    logp = torch.log(torch.tensor([[0.5, 0.75], [0.9, 0.9]])).requires_grad_(True)
    padded = torch.where(torch.tensor([[False, False], [False, True]]), float("-inf"), logp.detach()).requires_grad_(True)
    mask, weights = torch.tensor([[1, 1], [1, 0]]), torch.tensor([1.0, 2.0])
    clean, dirty = unlikelihood_loss(logp, mask, weights, 3), unlikelihood_loss(padded, mask, weights, 3)
    assert clean.item() == pytest.approx((-math.log(0.5) - math.log(0.25) - 2 * math.log(0.1)) / 3)
    assert dirty.item() == pytest.approx(clean.item(), abs=1e-7)
    clean.backward(), dirty.backward()
    assert padded.grad[1, 1].item() == 0.0 and torch.allclose(padded.grad, logp.grad.masked_fill(mask == 0, 0))


PAD = (1, 4)      # random_batch's row 1 has 3 tokens: position 4 is padding


@pytest.mark.parametrize("where", ["logp", "logp+old", "ref", "old"])
@pytest.mark.parametrize("mode", ["sample", "token", "constant"])
def test_minus_inf_log_prob_at_padding_leaves_loss_and_gradients_finite(where, mode):
    logp, old, ref, adv, mask = random_batch(seed=2)
    kwargs = dict(beta=0.04, mode=mode, batch_sequences=6, batch_tokens=int(mask.sum()), max_length=5)
    clean = logp.clone().requires_grad_(True)
    loss, m = grpo_loss(clean, old, ref, adv, mask, **kwargs)
    loss.backward()
    inf_logp, inf_old, inf_ref = logp.clone(), old.clone(), ref.clone()
    for name, tensor in (("logp", inf_logp), ("old", inf_old), ("ref", inf_ref)):
        if name in where.split("+"):
            tensor[PAD] = float("-inf")
    dirty = inf_logp.requires_grad_(True)
    loss_inf, m_inf = grpo_loss(dirty, inf_old, inf_ref, adv, mask, **kwargs)
    loss_inf.backward()
    assert torch.isfinite(loss_inf) and torch.isfinite(dirty.grad).all()
    assert loss_inf.item() == pytest.approx(loss.item(), abs=1e-12) and m_inf == pytest.approx(m, abs=1e-12)
    assert dirty.grad[PAD].item() == 0.0 and torch.allclose(dirty.grad, clean.grad.masked_fill(mask == 0, 0), atol=1e-12)


def test_sft_loss_ignores_minus_inf_padding():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 1.0]]))
    logp[1, 1] = float("-inf")
    logp.requires_grad_(True)
    loss = sft_loss(logp, torch.tensor([[1, 1], [1, 0]]), weights=torch.tensor([1.0, 2.0]))
    loss.backward()
    assert loss.item() == pytest.approx((math.log(2) + math.log(4) + 2 * math.log(2)) / 3)
    assert close(logp.grad, [[-1 / 3, -1 / 3], [-2 / 3, 0.0]])


def test_aggregate_ignores_non_finite_padding():
    values = VALUES.clone()
    values[1, 2] = float("inf")
    for mode, expected in [("sample", (2 + 4) / 2), ("token", 10 / 4), ("constant", 10 / (2 * 3))]:
        assert aggregate(values, MASK, mode, batch_sequences=2, batch_tokens=4, max_length=3).item() == pytest.approx(expected)
