import pytest

from r1lab.metrics import (bootstrap_ci, cluster_bootstrap_ci, cons_at_k, majority, paired_cluster_bootstrap_ci, pass_at_1,
                           pass_at_k)
from r1lab.rewards.accuracy import equivalent


def test_pass_at_1_is_mean_of_means():
    assert pass_at_1([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]) == pytest.approx((0.5 + 1 + 0) / 3)


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25), (4, 1, 2, 1 - 3 / 6), (4, 0, 2, 0.0), (4, 3, 2, 1.0), (5, 2, 3, 1 - 1 / 10), (8, 8, 8, 1.0),
])
def test_pass_at_k_unbiased_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_majority_groups_equivalent_answers_and_breaks_ties_by_first_appearance():
    assert majority(["6", "6.0", "7", "\\frac{12}{2}"], equivalent) == 0      # 6, 6.0 and 12/2 are one answer
    assert majority(["7", "6", "6", "7"], equivalent) == 0                      # tie: the first to appear
    assert majority([None, "5", None], equivalent) == 1                         # no answer, no vote
    assert majority([None, None], equivalent) is None


def test_cons_at_k():
    assert cons_at_k(["6", "7", "6.0"], [1, 0, 1], equivalent) == 1.0
    assert cons_at_k(["7", "7", "6"], [0, 0, 1], equivalent) == 0.0
    assert cons_at_k([None, None], [0, 0], equivalent) == 0.0


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 5
    lo, hi = bootstrap_ci(values)
    assert lo < sum(values) / len(values) < hi and 0 <= lo and hi <= 1
    assert bootstrap_ci(values) == (lo, hi)
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)


def test_cluster_bootstrap_degenerate_cases_by_hand():
    assert cluster_bootstrap_ci([[0.5] * 4, [0.5] * 7]) == (0.5, 0.5)
    # one seed, problems [0, 1]: a resample's mean is 0, .5 or 1 with probabilities 1/4, 1/2, 1/4 -> the 95% interval is [0, 1]
    assert cluster_bootstrap_ci([[0.0, 1.0]]) == (0.0, 1.0)
    # two seeds, each constant within: only the seeds vary; means 0, .5, 1 with probabilities 1/4, 1/2, 1/4
    assert cluster_bootstrap_ci([[0.0] * 10, [1.0] * 10]) == (0.0, 1.0)


def test_between_seed_variance_widens_the_interval_over_the_naive_one():
    seeds = [[0.0] * 10, [1.0] * 10]
    naive_low, naive_high = bootstrap_ci([v for rows in seeds for v in rows])     # 20 "independent" pairs: about [.3, .7]
    assert naive_high - naive_low < 0.5 < cluster_bootstrap_ci(seeds)[1] - cluster_bootstrap_ci(seeds)[0]
    # seeds that agree add nothing: the cluster interval is then about the naive one
    agreeing = [[1.0, 0.0] * 10] * 3
    low, high = cluster_bootstrap_ci(agreeing)
    naive_low, naive_high = bootstrap_ci([v for rows in agreeing for v in rows])
    assert low < 0.5 < high and abs((high - low) - (naive_high - naive_low)) < 0.1

def test_the_cluster_bootstrap_is_its_seed_alone():
    """Reproducible from its seed whatever the global RNG did in between, and the seed is really used."""
    import random
    tables = [[(i * 7 % 5) / 4 for i in range(10)], [(i * 3 % 4) / 3 for i in range(10)], [0.2] * 10]
    random.seed(1)
    first = cluster_bootstrap_ci(tables, seed=3)
    random.seed(2)
    random.random()
    assert cluster_bootstrap_ci(tables, seed=3) == first
    assert cluster_bootstrap_ci(tables, seed=4) != first


def test_paired_cluster_bootstrap_cancels_what_the_problems_share():
    # problem difficulties vary widely, but model a is exactly .5 above b on every (seed, problem): the interval is [.5, .5]
    b = [[0.0, 0.25, 0.5], [0.5, 0.0, 0.25]]
    a = [[x + 0.5 for x in rows] for rows in b]
    assert paired_cluster_bootstrap_ci(a, b) == (0.5, 0.5)
    unpaired = [cluster_bootstrap_ci(a), cluster_bootstrap_ci(b)]
    assert unpaired[0][0] - unpaired[1][1] < 0.5                         # unpaired, the intervals overlap far more
    assert paired_cluster_bootstrap_ci([[1.0, 0.0]], [[0.0, 0.0]]) == (0.0, 1.0)   # differences [1, 0]: as above
    with pytest.raises(ValueError, match="same seeds and problems"):
        paired_cluster_bootstrap_ci([[1.0, 0.0]], [[0.0]])
