"""The federated statistics: noisy, clipped to the declared ranges, and in the ledger."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from models.data.features import FeatureStatistics, Standardization
from privacy.ledger import BudgetExceeded, PrivacyLedger
from privacy.statistics import MissingRange, StatisticsRequest, release_statistics

BOUNDS = {"age": (0.0, 120.0)}
REQUEST = StatisticsRequest("fed", "run-1", 0.2)


def _exact(values: list[float]) -> FeatureStatistics:
    return FeatureStatistics.of_values(
        {"age": np.array(values)}, labels=["0", "1"] * (len(values) // 2), rows=len(values),
        bounds=BOUNDS,
    )  # fmt: skip


def test_site_epsilon_is_statistics_and_training_composed_independently(tmp_path):
    ledger = PrivacyLedger(tmp_path, epsilon_budget=2.0)
    released = release_statistics(ledger, _exact([30.0, 40.0] * 50), BOUNDS, ["0", "1"], REQUEST)
    sigma, sensitivity = released.noise_multiplier, ledger.releases[0].sensitivity
    assert sensitivity == pytest.approx(np.sqrt(5))  # rows, count, sum, sum of squares, labels
    q = 0.16
    plan = ledger.plan_noise("fed", "run-1", q, 7, 3)
    for r in (1, 2, 3):
        ledger.record(ledger.check(plan, q, 7, "fed", "run-1", r))
    orders = list(RDPAccountant.DEFAULT_ALPHAS)
    training = compute_rdp(q=q, noise_multiplier=plan, steps=21, orders=orders)
    gaussian = np.asarray(orders) * sensitivity**2 / (2 * sigma**2)
    expected, _ = get_privacy_spent(orders=orders, rdp=training + gaussian, delta=1e-5)
    assert ledger.spent == pytest.approx(expected, rel=1e-9)
    assert ledger.spent <= 2.0 + 1e-9  # training was planned within what the statistics left
    reloaded = PrivacyLedger(tmp_path, epsilon_budget=2.0)
    assert [r.mechanism for r in reloaded.releases] == ["gaussian", *["sampled_gaussian"] * 3]


def test_one_extreme_value_does_not_show_through_the_pooled_mean(tmp_path):
    values = [40.0] * 99 + [1e200]
    released = release_statistics(
        PrivacyLedger(tmp_path, epsilon_budget=1.0), _exact(values), BOUNDS, ["0", "1"], REQUEST
    )
    stats = released.statistics
    assert stats.total["age"] < 1e6  # clipped to 120 before summing, then noised
    scale = Standardization.from_statistics(stats, BOUNDS)
    assert 0.0 <= scale.mean["age"] <= 120.0
    assert 0.0 < scale.std["age"] <= 60.0


def test_a_column_without_a_range_and_an_empty_budget_are_refused(tmp_path):
    stats = FeatureStatistics.of_values({"weight": np.array([70.0, 80.0])}, rows=2)
    with pytest.raises(MissingRange, match="'weight'"):
        release_statistics(PrivacyLedger(tmp_path, 1.0), stats, {}, [], REQUEST)
    with pytest.raises(BudgetExceeded):
        release_statistics(
            PrivacyLedger(tmp_path, 1.0),
            _exact([1.0, 2.0]),
            BOUNDS,
            [],
            StatisticsRequest("f", "r", 0.01),
        )


def test_negative_noisy_counts_and_variances_fall_back_to_the_declared_range():
    noisy = FeatureStatistics(count={"age": -3.0}, total={"age": 5.0}, total_sq={"age": -1.0})
    scale = Standardization.from_statistics(noisy, BOUNDS)
    assert (scale.mean["age"], scale.std["age"]) == (60.0, 30.0)
