"""Study 3: decision rules that turn label distributions into scores, including cut-points on the expected score
fitted on train responses (for skewed items, where batch calibration pushes toward equal label counts).

* :func:`expected_score`: the probability-weighted mean label per response;
* :func:`fit_cutpoints`: monotone thresholds ``t_1 <= ... <= t_{K-1}`` on the expected score, fitted on train
  responses (gold known) to maximise QWK (or accuracy, or minimise MAE); initialised by matching the train gold
  label shares, then coordinate ascent over the midpoints between observed expected scores;
* :func:`apply_cutpoints`: score ``lo + #{k : e > t_k}``;
(:func:`helpers.studies.scoring.evaluation.decide` applies every rule to the same probabilities.)
"""
from __future__ import annotations

import numpy as np

__all__ = ["apply_cutpoints", "expected_score", "fit_cutpoints"]


def expected_score(probs: np.ndarray, labels) -> np.ndarray:
    """``probs @ labels``: the expected score per response (rows of ``probs`` sum to 1)."""
    probs = np.asarray(probs, float)
    labels = np.asarray(labels, float)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probs must be (n, {len(labels)}) for labels {labels.tolist()}, got {probs.shape}.")
    return probs @ labels


def apply_cutpoints(probs: np.ndarray, cutpoints, labels) -> np.ndarray:
    """Scores from the expected score cut at ``cutpoints`` (``len(labels) - 1`` non-decreasing thresholds):
    ``labels[#{k : e > t_k}]``."""
    t = np.asarray(cutpoints, float)
    labels = np.asarray(labels, int)
    if t.shape != (len(labels) - 1,):
        raise ValueError(f"need {len(labels) - 1} cut-points for labels {labels.tolist()}, got {t.tolist()}.")
    if np.any(np.diff(t) < 0):
        raise ValueError(f"cut-points must be non-decreasing, got {t.tolist()}.")
    e = expected_score(probs, labels)
    return labels[np.searchsorted(t, e, side="left")]


def _qwk_rows(gold_idx: np.ndarray, pred_idx: np.ndarray, k: int) -> np.ndarray:
    """QWK of one gold vector against many prediction rows (index-coded 0..k-1; same formula as sklearn)."""
    B, n = pred_idx.shape
    idx = gold_idx[None, :] * k + pred_idx + (np.arange(B)[:, None] * k * k)
    O = np.bincount(idx.ravel(), minlength=B * k * k).reshape(B, k, k).astype(float)
    E = O.sum(2, keepdims=True) * O.sum(1, keepdims=True) / n
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2).astype(float)
    num, den = (w * O).sum((1, 2)), (w * E).sum((1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1 - num / den
    return np.where(den == 0, np.where(num == 0, 1.0, 0.0), out)


def _objective(gold_idx: np.ndarray, pred_idx: np.ndarray, k: int, objective: str) -> np.ndarray:
    """Higher is better, one value per row of ``pred_idx``."""
    if objective == "qwk":
        return _qwk_rows(gold_idx, pred_idx, k)
    if objective == "accuracy":
        return (pred_idx == gold_idx[None]).mean(1)
    return -np.abs(pred_idx - gold_idx[None]).mean(1)  # "mae"


def fit_cutpoints(probs_train: np.ndarray, gold_train, labels, *, objective: str = "qwk",
                  max_passes: int = 20) -> np.ndarray:
    """Cut-points on the expected score fitted on train responses.

    Start: thresholds at the quantiles of the expected score that reproduce the train gold label shares (so the
    predicted label distribution keeps the item's skew). Then coordinate ascent: each threshold in turn moves to
    the candidate (a midpoint between neighbouring observed expected scores, or beyond either end) between its
    neighbours that maximises ``objective`` ("qwk", "accuracy" or "mae" minimised), until no move helps.
    Returns ``len(labels) - 1`` non-decreasing floats."""
    if objective not in ("qwk", "accuracy", "mae"):
        raise ValueError(f"objective must be 'qwk', 'accuracy' or 'mae', got {objective!r}.")
    labels = np.asarray(labels, int)
    gold = np.asarray(gold_train, int)
    e = expected_score(probs_train, labels)
    if len(gold) != len(e) or len(gold) < 2:
        raise ValueError(f"need >= 2 train responses with one gold score each, got {len(e)} and {len(gold)}.")
    bad = ~np.isin(gold, labels)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} gold scores outside the labels {labels.tolist()}.")
    k = len(labels)
    gold_idx = gold - labels[0]
    u = np.unique(e)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    shares = np.cumsum(np.bincount(gold_idx, minlength=k))[:-1] / len(gold)
    t = np.quantile(e, shares)
    t = cands[np.clip(np.searchsorted(cands, t), 0, len(cands) - 1)]  # snap onto candidates
    t = np.maximum.accumulate(t)

    def score(ts: np.ndarray) -> np.ndarray:  # ts: (m, k-1) -> objective per row
        pred = np.stack([np.searchsorted(row, e, side="left") for row in ts])
        return _objective(gold_idx, pred, k, objective)

    best = float(score(t[None])[0])
    for _ in range(max_passes):
        improved = False
        for j in range(k - 1):
            lo = t[j - 1] if j > 0 else -np.inf
            hi = t[j + 1] if j < k - 2 else np.inf
            c = cands[(cands >= lo) & (cands <= hi)]
            if not len(c):
                continue
            trial = np.repeat(t[None], len(c), 0)
            trial[:, j] = c
            vals = score(trial)
            i = int(np.argmax(vals))
            if vals[i] > best + 1e-12:
                best, t, improved = float(vals[i]), trial[i].copy(), True
        if not improved:
            break
    return t.astype(float)

