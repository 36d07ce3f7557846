import math

import pytest
import torch

from r1lab.algorithms.losses import aggregate, clipped_surrogate, group_advantages, grpo_loss, kl_k3, sft_loss


def test_advantages_hand_computed():
    adv, m = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]))        # mean .25, unbiased std .5
    adv, _ = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert torch.allclose(adv, torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]))
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scale=False)   # Dr. GRPO: centred only
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_equal_reward_groups_get_zero_and_are_counted():
    adv, m = group_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.3, 0.3]), 2)
    assert adv[:2].tolist() == [0.0, 0.0] and adv[4:].tolist() == [0.0, 0.0] and adv[2] < 0 < adv[3]
    assert m["zero_std_groups"] == pytest.approx(2 / 3)


def test_k3_kl_hand_computed():
    kl = kl_k3(torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25, 0.25])))
    assert kl[0].item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl[1].item() == pytest.approx(0.0)


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
    assert torch.allclose(imitate, torch.tensor([1.5, 0, 0, 0, 0, 0, 0, 0]))      # eq. 3: [1.5, -.5, -.5, -.5]
    assert torch.allclose(push, torch.tensor([0, 0.5, 0.5, 0.5, 0, 0, 0, 0]))     # equal-reward group: nothing


def test_unlikelihood_hand_computed():
    from r1lab.algorithms.losses import unlikelihood_loss
    logp = torch.log(torch.tensor([[0.5, 0.75], [0.9, 0.9]]))
    loss = unlikelihood_loss(logp, torch.tensor([[1, 1], [1, 0]]), torch.tensor([1.0, 0.0]), batch_tokens=3)
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(0.25)) / 3)
