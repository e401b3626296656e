"""Checkers for the notebooks' exercises (course mode, :mod:`helpers.harness.course`).

Each ``check_*`` takes the learner's function, runs it on fixed inputs (seeded) and compares it with the
collection's own implementation; a wrong answer raises ``AssertionError`` naming what differs, a right one prints a
line starting with "✓". A stub that still raises ``NotImplementedError`` lets that error through unchanged, so a
student copy stops cleanly on it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from helpers.core import activations, sae, steering
from helpers.studies import reasoning

__all__ = ["check_caa_vector", "check_ce_loss_recovered", "check_entropy_term", "check_logit_lens", "check_mean_difference_probe",
           "check_projection_auroc", "check_reason_score", "check_reasoning_windows", "check_sdcv_select", "check_sink_ratio",
           "check_topk_encode", "check_variance_explained"]


def _close(got, want, what: str, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        worst = float((got - want).abs().max())
        raise AssertionError(f"{what}: values differ from the reference (largest difference {worst:.3g})")


def _ok(msg: str) -> None:
    print(f"✓ {msg}")


# --- notebook 00 ---------------------------------------------------------------------------------------------

def check_logit_lens(fn: Callable, model) -> None:
    """``fn(model, hidden (n, d)) -> logits (n, vocab)``: final norm, then unembedding."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, activations.d_model(model), generator=g) * 5
    with torch.inference_mode():
        got = fn(model, hidden.clone())
    _close(got, activations.logit_lens(model, hidden), "logit lens", atol=1e-3)
    _ok("logit lens matches the final norm + unembedding of the model")


def check_sink_ratio(fn: Callable) -> None:
    """``fn(hidden (T, d)) -> float``: norm at position 0 divided by the median norm of positions 1..T-1."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 16, generator=g)
    h[0] *= 90
    want = float(h[0].norm() / h[1:].norm(dim=-1).median())
    got = float(fn(h.clone()))
    if not math.isclose(got, want, rel_tol=1e-4):
        raise AssertionError(f"sink ratio: expected {want:.3f}, got {got:.3f} (median over positions 1.., not the mean?)")
    _ok(f"sink ratio {got:.1f}: position 0 dwarfs every other token")


def check_mean_difference_probe(fn: Callable) -> None:
    """``fn(x_train, y_train, x_test) -> predictions (0/1)``: classify by the sign of the projection on the
    difference of class means, thresholded halfway between the projected means."""
    rng = np.random.default_rng(2)
    d = 20
    mu = rng.normal(size=d)
    x = rng.normal(size=(200, d)) + np.outer(rng.integers(0, 2, 200) * 2 - 1, mu) * 0.5
    y = (x @ mu > 0).astype(int)
    x = x + 3 * mu  # off-centre data: a threshold at 0 is wrong, halfway between the projected means is right
    xt, yt = x[:150], y[:150]
    xe = x[150:]
    w = xt[yt == 1].mean(0) - xt[yt == 0].mean(0)
    thr = 0.5 * ((xt[yt == 1] @ w).mean() + (xt[yt == 0] @ w).mean())
    want = (xe @ w > thr).astype(int)
    got = np.asarray(fn(torch.tensor(xt), torch.tensor(yt), torch.tensor(xe))).astype(int).reshape(-1)
    if got.shape != want.shape or (got != want).mean() > 0.02:
        raise AssertionError(f"mean-difference probe: {int((got != want).sum())} of {len(want)} predictions differ")
    _ok(f"mean-difference probe: held-out accuracy {float((got == y[150:]).mean()):.2f}")


# --- notebook 01 ---------------------------------------------------------------------------------------------

def _toy_sae():
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(3)
    toy = TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=4))
    with torch.no_grad():
        toy.W_enc.normal_()
        toy.b_enc.normal_(0, 0.1)
        toy.b_dec.normal_(0, 0.1)
    return toy


def check_topk_encode(fn: Callable) -> None:
    """``fn(x, W_enc, b_enc, b_dec, k) -> codes``: ReLU((x - b_dec) W_enc + b_enc), keep the k largest per row."""
    toy = _toy_sae()
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = fn(x.clone(), toy.W_enc.detach(), toy.b_enc.detach(), toy.b_dec.detach(), 4)
        want = sae.encode(toy, x)
    _close(got, want, "TopK codes")
    _ok("TopK encoder matches SAELens' (k = 4 active latents per token)")


def check_variance_explained(fn: Callable) -> None:
    """``fn(x, x_hat) -> float``: 1 - sum of squared errors / total sum of squares around the per-dimension mean."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(100, 8, generator=g) * torch.arange(1, 9)
    xh = x + 0.3 * torch.randn(100, 8, generator=g)
    want = float(1 - (x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    got = float(fn(x.clone(), xh.clone()))
    if not math.isclose(got, want, rel_tol=1e-5):
        raise AssertionError(f"variance explained: expected {want:.4f}, got {got:.4f} (centre x on its per-dimension mean)")
    _ok(f"variance explained {got:.3f}")


def check_ce_loss_recovered(fn: Callable) -> None:
    """``fn(ce_clean, ce_sae, ce_zero) -> float``: share of the zero-ablation loss increase the SAE avoids."""
    cases = [(3.5, 4.0, 16.0), (2.0, 2.0, 9.0), (3.0, 12.0, 10.0)]
    for clean, with_sae, zero in cases:
        want = (zero - with_sae) / (zero - clean)
        got = float(fn(clean, with_sae, zero))
        if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
            raise AssertionError(f"CE loss recovered for clean={clean}, sae={with_sae}, zero={zero}: expected {want:.4f}, got {got:.4f}")
    _ok("CE loss recovered: 1 = as good as the clean model, 0 = as bad as zeroing the stream")


# --- notebook 02 ---------------------------------------------------------------------------------------------

def check_entropy_term(fn: Callable) -> None:
    """``fn(mu_w (words, features)) -> H (features,)``: Eq. 4-5 of arXiv 2503.18878, normalised by log(#words)."""
    mu = torch.tensor([[1.0, 0.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    p = mu / mu.sum(0).clamp_min(1e-30)
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    want = -plogp.sum(0) / math.log(3)
    got = fn(mu.clone())
    _close(got, want, "normalised entropy H_i", atol=1e-6)
    _ok("entropy term: 1 for a feature spread evenly over the words, 0 for a one-word feature (and 0 log 0 = 0)")


def check_reasoning_windows(fn: Callable) -> None:
    """``fn(n_tokens, matches [(start, end, word)], before, after) -> bool mask``: the union of windows."""
    matches = [(0, 1, "wait"), (6, 8, "let me"), (14, 15, "but")]
    for before, after in ((2, 3), (1, 2)):
        want, _ = reasoning.window_masks(16, matches, before=before, after=after)
        got = torch.as_tensor(fn(16, matches, before, after)).bool()
        if got.shape != want.shape or not torch.equal(got, want):
            raise AssertionError(f"windows with before={before}, after={after}: expected {want.int().tolist()}, "
                                 f"got {got.int().tolist()}")
    _ok("reasoning windows: clipped at the document's ends, the paper's 2/3 and the code's 1/2")


def check_reason_score(fn: Callable) -> None:
    """``fn(mu_r, mu_o, H, alpha) -> score``: Eq. 6 of arXiv 2503.18878."""
    g = torch.Generator().manual_seed(6)
    mu_r, mu_o, H = torch.rand(20, generator=g), torch.rand(20, generator=g), torch.rand(20, generator=g)
    want = mu_r / mu_r.sum() * H ** 0.7 - mu_o / mu_o.sum()
    _close(fn(mu_r.clone(), mu_o.clone(), H.clone(), 0.7), want, "ReasonScore", atol=1e-6)
    _ok("ReasonScore: reasoning-window share x entropy^alpha minus elsewhere share")


# --- notebook 03 ---------------------------------------------------------------------------------------------

def _pairs(seed=7, n=30, d=12):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    concept = torch.randn(d, generator=g)
    return base + concept + 0.3 * torch.randn(n, d, generator=g), base + 0.3 * torch.randn(n, d, generator=g)


def check_caa_vector(fn: Callable) -> None:
    """``fn(x_pos, x_neg) -> vector``: mean over pairs of (positive - negative) (Rimsky et al. 2024)."""
    xp, xn = _pairs()
    _close(fn(xp.clone(), xn.clone()), steering.caa_vector(xp, xn), "CAA vector", atol=1e-5)
    _ok("CAA vector: the mean paired difference")


def check_projection_auroc(fn: Callable) -> None:
    """``fn(vector, x_pos, x_neg) -> float``: AUROC of the projections (positives should project higher)."""
    from sklearn.metrics import roc_auc_score

    xp, xn = _pairs(seed=8)
    v = (xp - xn).mean(0) + 0.5 * torch.randn(12, generator=torch.Generator().manual_seed(9))  # a noisy concept direction
    s = torch.cat([xp @ v, xn @ v]).numpy()
    want = roc_auc_score(np.r_[np.ones(len(xp)), np.zeros(len(xn))], s)
    got = float(fn(v.clone(), xp.clone(), xn.clone()))
    if not math.isclose(got, want, abs_tol=1e-9):
        raise AssertionError(f"projection AUROC: expected {want:.4f}, got {got:.4f}")
    _ok(f"held-out AUROC {got:.3f}: a direction judged by how well it separates, not by its cosine to CAA")


def check_sdcv_select(fn: Callable) -> None:
    """``fn(z_pos, z_neg, k) -> latent ids``: the k latents with the largest absolute difference of mean codes
    (positive vs negative), as SDCV (arXiv 2505.15038) selects them."""
    g = torch.Generator().manual_seed(10)
    zp, zn = torch.rand(25, 40, generator=g), torch.rand(25, 40, generator=g)
    zp[:, [3, 17, 29]] += torch.tensor([2.0, 1.5, 1.0])
    want = steering.sdcv_select(zp, zn, 3)
    got = torch.as_tensor(fn(zp.clone(), zn.clone(), 3)).long()
    if sorted(got.tolist()) != sorted(want.tolist()):
        raise AssertionError(f"SDCV selection: expected latents {sorted(want.tolist())}, got {sorted(got.tolist())}")
    _ok(f"SDCV keeps latents {sorted(got.tolist())}")
