"""helpers.core.stats: BCa bootstrap with percentile fallback, paired intervals, QWK and its CI, stratified means."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from helpers.core import stats


def test_bootstrap_ci_is_scipy_bca_and_reports_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1.0, 1.0, 40), rng.normal(1.0, 1.0, 400)
    iv = stats.bootstrap_ci(small, n_boot=1000, seed=3)
    assert iv.estimate == pytest.approx(small.mean()) and iv.low < iv.estimate < iv.high
    assert iv.n == 40 and iv.method == "BCa" and iv.level == 0.95
    ref = sps.bootstrap((small,), np.mean, n_resamples=1000, method="BCa", random_state=np.random.default_rng(3))
    assert (iv.low, iv.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert stats.bootstrap_ci(small, n_boot=1000, seed=3) == iv  # seeded
    assert stats.bootstrap_ci(small, n_boot=1000, seed=4) != iv
    wide, narrow = iv, stats.bootstrap_ci(large, n_boot=1000, seed=3)
    assert narrow.high - narrow.low < wide.high - wide.low
    med = stats.bootstrap_ci(small, n_boot=500, stat=np.median)
    assert med.estimate == pytest.approx(np.median(small)) and med.low <= med.estimate <= med.high


def test_degenerate_samples_fall_back_and_say_so():
    same = stats.bootstrap_ci([0.0] * 16, n_boot=200)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and same.method == "degenerate"
    rare = stats.bootstrap_ci([0.0] * 15 + [1.0], n_boot=500)  # BCa's acceleration is defined; interval is finite
    assert math.isfinite(rare.low) and rare.low <= rare.estimate <= rare.high
    empty, one = stats.bootstrap_ci([]), stats.bootstrap_ci([2.0])
    assert math.isnan(empty.estimate) and empty.n == 0
    assert one.estimate == 2.0 and math.isnan(one.low) and one.n == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="NaN"):
        stats.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence level"):
        stats.bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="n_boot"):
        stats.bootstrap_ci([1.0, 2.0], n_boot=10)
    with pytest.raises(ValueError, match="method"):
        stats.bootstrap_ci([1.0, 2.0, 3.0], method="bca")
    with pytest.raises(ValueError, match="same length"):
        stats.paired_bootstrap_ci([1, 2], [1])
    with pytest.raises(ValueError, match="outside the score range"):
        stats.qwk([0, 1, 5], [0, 1, 2], 0, 3)


def test_paired_interval_resamples_pairs():
    rng = np.random.default_rng(2)
    b = rng.normal(0.0, 1.0, 60)
    a = b + 0.5 + rng.normal(0.0, 0.1, 60)
    d = stats.paired_bootstrap_ci(a, b, n_boot=1000)
    assert d.estimate == pytest.approx(np.mean(a - b)) and 0 < d.low < d.estimate < d.high and d.n == 60
    assert d.high - d.low < 0.1  # pairing removes the between-item spread (sd 1) that an unpaired CI would carry
    rev = stats.paired_bootstrap_ci(b, a, n_boot=1000)
    assert rev.estimate < 0 and rev.high < 0


def test_qwk_ci_and_stratified_mean():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 80)
    good = np.clip(t + rng.integers(-1, 2, 80), 0, 3)
    noise = rng.integers(0, 4, 80)
    g, n = stats.qwk_ci(t, good, 0, 3, n_boot=400), stats.qwk_ci(t, noise, 0, 3, n_boot=400)
    assert g.estimate == pytest.approx(stats.qwk(t, good, 0, 3)) and g.low < g.estimate < g.high
    assert g.low > n.high  # a clearly better scorer has a disjoint interval at n=80
    assert len(g.draws) == 400
    mean = stats.stratified_mean_ci([g, n])
    assert mean.estimate == pytest.approx((g.estimate + n.estimate) / 2) and mean.n == 160
    assert mean.low < mean.estimate < mean.high
    with pytest.raises(ValueError, match="n_boot"):
        stats.stratified_mean_ci([g, stats.qwk_ci(t, noise, 0, 3, n_boot=300)])


def test_paired_qwk_diff_is_paired_and_matches_the_point_difference():
    from helpers.core.stats import paired_qwk_diff, paired_qwk_diff_items, qwk, qwk_ci

    rng = np.random.default_rng(0)
    g = rng.integers(0, 4, 120)
    a = np.clip(g + rng.integers(-1, 2, 120), 0, 3)  # close to gold
    b = np.where(rng.random(120) < 0.5, a, rng.integers(0, 4, 120))  # a with half the answers randomised
    d = paired_qwk_diff(g, a, b, 0, 3, n_boot=1000, seed=0)
    assert d.estimate == pytest.approx(qwk(g, a, 0, 3) - qwk(g, b, 0, 3))
    assert 0 < d.low < d.estimate < d.high and d.draws.shape == (1000,)
    assert paired_qwk_diff(g, a, a, 0, 3, n_boot=200).method == "degenerate"
    # pairing matters: the paired interval is narrower than one from independent resamples of the two conditions
    ia, ib = qwk_ci(g, a, 0, 3, n_boot=1000, seed=1), qwk_ci(g, b, 0, 3, n_boot=1000, seed=2)
    indep = np.quantile(ia.draws - ib.draws, [0.025, 0.975])
    assert d.high - d.low < indep[1] - indep[0]
    # across items: the mean of the items' differences, resampled within items
    m = paired_qwk_diff_items([(g[:60], a[:60], b[:60], 0, 3), (g[60:], b[60:], a[60:], 0, 3)], n_boot=500)
    d1 = qwk(g[:60], a[:60], 0, 3) - qwk(g[:60], b[:60], 0, 3)
    d2 = qwk(g[60:], b[60:], 0, 3) - qwk(g[60:], a[60:], 0, 3)
    assert m.estimate == pytest.approx((d1 + d2) / 2) and m.low < m.estimate < m.high and m.n == 120
    with pytest.raises(ValueError, match="same responses"):
        paired_qwk_diff(g, a[:10], b, 0, 3)
    with pytest.raises(ValueError, match="at least one"):
        paired_qwk_diff_items([])
