"""Uncertainty and agreement: the collection's one statistics module.

Every interval is a :class:`Interval` carrying the point estimate, the bounds, the method that produced them and
the ``n`` behind them. Bootstrap intervals come from :func:`scipy.stats.bootstrap`: BCa where it is defined, a
percentile interval where it is not (a degenerate sample, e.g. all values equal, has no BCa acceleration; scipy
warns and returns NaN there, and we fall back; the method used is recorded). Resampling is over items (prompts,
documents, responses); paired versions resample the pairs together.

* :func:`bootstrap_ci`, :func:`paired_bootstrap_ci`: any statistic of one sample / of paired differences.
* :func:`qwk`, :func:`qwk_ci`: quadratic weighted kappa over an item's full score range, and its paired CI.
* :func:`stratified_mean_ci`: the mean over strata (e.g. items) of statistics with independent bootstrap draws.
* :func:`paired_qwk_diff`, :func:`paired_qwk_diff_items`: QWK(a) - QWK(b) of two conditions scored on the same
  responses (the responses resampled together), on one item or averaged over items (resampling within items).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Interval", "bootstrap_ci", "paired_bootstrap_ci", "paired_qwk_diff", "paired_qwk_diff_items", "qwk",
           "qwk_ci", "stratified_mean_ci"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval and the ``n`` (resampled units) behind it."""

    estimate: float
    low: float
    high: float
    n: int
    method: str = "BCa"
    level: float = 0.95
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self, prefix: str = "") -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "draws"}
        return {f"{prefix}{k}": v for k, v in d.items()}

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n}, {self.method})"


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r} (e.g. 0.95).")


def _scipy_bootstrap(data: tuple, statistic: Callable, *, paired: bool, n_boot: int, level: float, seed: int,
                     method: str):
    """scipy.stats.bootstrap with BCa -> percentile fallback. Returns (low, high, method, draws)."""
    from scipy import stats

    if method not in ("BCa", "percentile", "basic"):
        raise ValueError(f"method must be 'BCa', 'percentile' or 'basic', got {method!r}.")
    for m in dict.fromkeys((method, "percentile")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning / RuntimeWarning: handled by the fallback
            res = stats.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=level, method=m,
                                  paired=paired, vectorized=True, random_state=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        draws = np.asarray(res.bootstrap_distribution)
        if np.all(draws == draws.flat[0]):  # every resample gives the same value: a zero-width interval
            return float(draws.flat[0]), float(draws.flat[0]), "degenerate", draws
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi, m, draws
    return lo, hi, "percentile", draws


def _vectorize(stat: Callable) -> Callable:
    def f(x, axis=-1):
        try:
            return np.asarray(stat(x, axis=axis), dtype=float)
        except TypeError:
            return np.apply_along_axis(lambda r: float(stat(r)), axis, x)
    return f


def bootstrap_ci(values, *, stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 method: str = "BCa") -> Interval:
    """``stat(values)`` with a bootstrap CI over the items of ``values`` (BCa, percentile fallback). Fewer than
    two finite values give NaN bounds (there is nothing to resample); NaNs are an error."""
    _check_level(level)
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100 for a usable interval, got {n_boot}.")
    x = np.asarray(values, dtype=float).reshape(-1)
    if np.isnan(x).any():
        raise ValueError(f"{int(np.isnan(x).sum())} NaN values: drop or impute them before bootstrapping.")
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none", level)
    point = float(stat(x))
    if x.size < 2:
        return Interval(point, math.nan, math.nan, int(x.size), "none", level)
    lo, hi, m, draws = _scipy_bootstrap((x,), _vectorize(stat), paired=False, n_boot=n_boot, level=level, seed=seed,
                                        method=method)
    return Interval(point, lo, hi, int(x.size), m, level, draws)


def paired_bootstrap_ci(a, b, *, stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                        method: str = "BCa") -> Interval:
    """``stat(a - b)`` over paired items (same prompt, same document, ...), resampling the pairs together."""
    a, b = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length ({a.size} vs {b.size}): pair them by item first.")
    return bootstrap_ci(a - b, stat=stat, n_boot=n_boot, level=level, seed=seed, method=method)


def _check_range(y: np.ndarray, lo: int, hi: int, what: str) -> None:
    if lo > hi:
        raise ValueError(f"score range lo={lo} > hi={hi}.")
    bad = (y < lo) | (y > hi)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} values outside the score range {lo}..{hi} "
                         f"(e.g. {y[bad][:3].tolist()}); map unparsed answers to a score first.")


def qwk(y_true, y_pred, lo: int, hi: int) -> float:
    """Quadratic weighted kappa over the item's full score range ``lo..hi`` (sklearn's ``cohen_kappa_score`` with
    ``labels=range(lo, hi+1)``, not the union of observed labels). 0/0 (both constant and equal) -> 1.0 if every
    prediction is right, else 0.0."""
    from sklearn.metrics import cohen_kappa_score

    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length ({y_true.size} vs {y_pred.size}).")
    if len(y_true) == 0:
        return float("nan")
    _check_range(y_true, lo, hi, "y_true")
    _check_range(y_pred, lo, hi, "y_pred")
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(lo, hi + 1)))
    if np.isnan(k):
        return 1.0 if np.array_equal(y_true, y_pred) else 0.0
    return float(k)


def _qwk_batch(t: np.ndarray, p: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """QWK of many resamples at once: ``t``, ``p`` are (..., n) int arrays (same formula as sklearn)."""
    shape = t.shape[:-1]
    t, p = t.reshape(-1, t.shape[-1]).astype(int), p.reshape(-1, p.shape[-1]).astype(int)
    k = hi - lo + 1
    B = t.shape[0]
    idx = (t - lo) * k + (p - lo) + (np.arange(B)[:, None] * k * k)
    O = np.bincount(idx.ravel(), minlength=B * k * k).reshape(B, k, k).astype(float)
    n = O.sum((1, 2), keepdims=True)
    E = O.sum(2, keepdims=True) * O.sum(1, keepdims=True) / n
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2).astype(float)
    num, den = (w * O).sum((1, 2)), (w * E).sum((1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1 - num / den
    return np.where(den == 0, np.where(num == 0, 1.0, 0.0), out).reshape(shape)


def qwk_ci(y_true, y_pred, lo: int, hi: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
           method: str = "BCa") -> Interval:
    """QWK with a paired bootstrap CI over responses (BCa, percentile fallback); ``draws`` keeps the bootstrap
    distribution for :func:`stratified_mean_ci`."""
    _check_level(level)
    t, p = np.asarray(y_true, int), np.asarray(y_pred, int)
    point = qwk(t, p, lo, hi)
    if t.size < 2:
        return Interval(point, math.nan, math.nan, int(t.size), "none", level)
    lo_, hi_, m, draws = _scipy_bootstrap((t, p), lambda a, b, axis=-1: _qwk_batch(a, b, lo, hi), paired=True,
                                          n_boot=n_boot, level=level, seed=seed, method=method)
    return Interval(point, lo_, hi_, int(t.size), m, level, draws)


def stratified_mean_ci(intervals: list[Interval], *, level: float = 0.95) -> Interval:
    """Mean over strata (e.g. ASAP items) of statistics bootstrapped independently per stratum: the CI is the
    percentile interval of the mean of the strata's draws (a stratified bootstrap). ``n`` = total units."""
    _check_level(level)
    if not intervals or any(iv.draws is None for iv in intervals):
        raise ValueError("stratified_mean_ci needs intervals that kept their bootstrap draws (qwk_ci/bootstrap_ci).")
    sizes = {len(iv.draws) for iv in intervals}
    if len(sizes) != 1:
        raise ValueError(f"strata were bootstrapped with different n_boot {sorted(sizes)}; use one n_boot.")
    draws = np.mean([iv.draws for iv in intervals], axis=0)
    a = (1 - level) / 2
    return Interval(float(np.mean([iv.estimate for iv in intervals])), float(np.quantile(draws, a)),
                    float(np.quantile(draws, 1 - a)), int(sum(iv.n for iv in intervals)), "stratified percentile",
                    level, draws)


def paired_qwk_diff(gold, pred_a, pred_b, lo: int, hi: int, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                    method: str = "BCa") -> Interval:
    """``qwk(gold, pred_a) - qwk(gold, pred_b)`` for two conditions scored on the **same** responses, with a paired
    bootstrap CI: each resample draws responses and keeps their gold score and both predictions together, so the
    shared difficulty of the responses cancels out (BCa, percentile fallback; ``draws`` kept for
    :func:`stratified_mean_ci` / :func:`paired_qwk_diff_items`)."""
    _check_level(level)
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100 for a usable interval, got {n_boot}.")
    g, a, b = (np.asarray(x, int).reshape(-1) for x in (gold, pred_a, pred_b))
    if not g.size == a.size == b.size:
        raise ValueError(f"gold, pred_a and pred_b must score the same responses ({g.size}, {a.size}, {b.size}).")
    point = qwk(g, a, lo, hi) - qwk(g, b, lo, hi)
    if g.size < 2:
        return Interval(point, math.nan, math.nan, int(g.size), "none", level)
    stat = lambda x, y, z, axis=-1: _qwk_batch(x, y, lo, hi) - _qwk_batch(x, z, lo, hi)  # noqa: E731
    lo_, hi_, m, draws = _scipy_bootstrap((g, a, b), stat, paired=True, n_boot=n_boot, level=level, seed=seed,
                                          method=method)
    return Interval(float(point), lo_, hi_, int(g.size), m, level, draws)


def paired_qwk_diff_items(items: list[tuple], *, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0) -> Interval:
    """Mean over items of :func:`paired_qwk_diff`: ``items`` holds one ``(gold, pred_a, pred_b, lo, hi)`` per item;
    responses are resampled within each item (items are the strata, each item's draws independent, seeded
    ``seed + i``), the CI is the percentile interval of the mean of the items' draws (:func:`stratified_mean_ci`)."""
    if not items:
        raise ValueError("paired_qwk_diff_items needs at least one item.")
    ivs = [paired_qwk_diff(g, a, b, lo, hi, n_boot=n_boot, level=level, seed=seed + i)
           for i, (g, a, b, lo, hi) in enumerate(items)]
    if any(iv.draws is None for iv in ivs):
        raise ValueError("every item needs >= 2 responses to bootstrap.")
    return stratified_mean_ci(ivs, level=level)
