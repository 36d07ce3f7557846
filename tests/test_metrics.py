import pytest

from r1lab.metrics import bootstrap_ci, cons_at_k, majority, pass_at_1, pass_at_k
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
