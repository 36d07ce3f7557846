import math

import pytest
import torch

from r1lab.algorithms.losses import aggregate, clipped_surrogate, group_advantages, grpo_loss, kl_k3, sft_loss


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


def test_k3_kl_hand_computed():
    kl = kl_k3(torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25, 0.25])))
    assert kl[0].item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl[1].item() == pytest.approx(0.0)


def test_k3_kl_clamps_the_log_ratio_at_20():
    kl = kl_k3(torch.tensor([-100.0, float("-inf"), 0.0]), torch.tensor([0.0, 0.0, -100.0]))
    assert kl.tolist() == pytest.approx([math.exp(20) - 21, math.exp(20) - 21, math.exp(-20) + 19], rel=1e-6)


@pytest.mark.parametrize("ratio, adv, eps_high, value, clipped", [
    (1.5, 1.0, 0.2, 1.2, True), (1.5, -1.0, 0.2, -1.5, False), (0.5, 1.0, 0.2, 0.5, False),
    (0.5, -1.0, 0.2, -0.8, True), (1.5, 1.0, 0.28, 1.28, True), (1.0, 2.0, 0.2, 2.0, False),
])
def test_clipped_surrogate_hand_computed(ratio, adv, eps_high, value, clipped):
    s, c = clipped_surrogate(torch.tensor([[math.log(ratio)]]), torch.zeros(1, 1), torch.tensor([adv]), 0.2, eps_high)
    assert s.item() == pytest.approx(value) and c.item() == clipped


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


def loop_grpo(logp, old, ref, adv, mask, eps, beta):
    """Eq. 1 written as the paper reads: 1/G sum_i 1/|o_i| sum_t [min(...) - beta KL]."""
    total = 0.0
    for i in range(len(logp)):
        n = int(sum(mask[i]))
        inner = 0.0
        for t in range(n):
            r = math.exp(logp[i][t] - old[i][t])
            surrogate = min(r * adv[i], max(min(r, 1 + eps), 1 - eps) * adv[i])
            q = math.exp(ref[i][t] - logp[i][t])
            inner += surrogate - beta * (q - math.log(q) - 1)
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


def test_vectorised_matches_plain_loop():
    logp, old, ref, adv, mask = random_batch()
    loss, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.04, batch_sequences=6, batch_tokens=int(mask.sum()), max_length=5)
    assert loss.item() == pytest.approx(loop_grpo(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.04), abs=1e-12)


@pytest.mark.parametrize("mode", ["sample", "token", "constant"])
def test_micro_batches_with_accumulation_give_the_whole_batch_gradient(mode):
    logp, old, ref, adv, mask = random_batch(seed=1)
    kwargs = dict(beta=0.04, mode=mode, batch_sequences=6, batch_tokens=int(mask.sum()), max_length=5, eps_high=0.28)
    whole = logp.clone().requires_grad_(True)
    grpo_loss(whole, old, ref, adv, mask, **kwargs)[0].backward()
    split = logp.clone().requires_grad_(True)
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
        grpo_loss(split[rows], old[rows], ref[rows], adv[rows], mask[rows], **kwargs)[0].backward()
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
