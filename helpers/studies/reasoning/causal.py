"""Study 1: causal tests of reasoning features with power at 135M - teacher-forced, on held-out reasoning traces.

A 135M chat model never writes "wait" or "hmm" in its own greedy chain of thought, so sampled-text measures of
arXiv 2503.18878 (reflection-word rate, AIME accuracy) cannot move. What can move is the probability the model
assigns to the reasoning words *in real reasoning text*. For every condition (a feature clamped at gamma x its
robust scale, or ablated, or a control) we run the same held-out R1-distill windows teacher-forced and read, per
document, against the unedited run:

* ``d_word``: mean change of log p(next token) where the next token starts a reasoning word (its first token);
* ``d_other``: the same at a seeded sample of other positions - the fluency cost of the edit;
* ``specificity`` = ``d_word - d_other`` (a generic disruption lowers both);
* ``d_mass``: change of log sum_{t in R_first} p(t) - the mass on every reasoning word's first token - at
  positions right after a sentence boundary, where reasoning words start sentences ("Wait,", "But", "Maybe");
* ``added_norm``: mean ||edit|| / ||residual|| over edited positions (how hard the edit pushes).

Choices (the paper is silent; one line each): positions from 1 on are edited (the attention sink at 0 is left
alone, as the outlier policy of :func:`helpers.core.activations.ordinary_token_masks` does); word occurrences use
every case/space variant (``variants="all"``: the paper's list misses " But" mid-text); a multi-token word counts
at its first token; sentence boundary = previous token ends in ".", "?", "!" or a newline; ``n_other`` other
positions per document are drawn with ``default_rng(seed)``, the same for every condition; documents without a
reasoning word give NaN for the word measures (dropped from their CI, counted in ``n``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers.core import memo
from helpers.core.activations import ResumableForward
from helpers.core.stats import bootstrap_ci
from helpers.core.steering import feature_edit

from .reason_score import find_word_positions

__all__ = ["Condition", "TokenSites", "control_features", "feature_conditions", "reads_vs_writes", "specificity_contrast",
           "summarize_effects", "teacher_forced_effects", "token_sites"]

MEASURES = ("d_word", "d_other", "specificity", "d_mass", "added_norm")


@dataclass(frozen=True)
class Condition:
    """One edit of the residual after the SAE's block: ``latent`` clamped to ``value`` (``mode="clamp"``; value 0 =
    ablation) or ``value * W_dec[latent]`` added (``mode="add"``). ``kind`` groups conditions (selected / random /
    non-reasoning); ``gamma`` is the strength in units of the scale (``value = gamma * scale``)."""
    name: str
    kind: str
    latent: int
    gamma: float
    value: float
    mode: str = "clamp"


def feature_conditions(features: Mapping[int, str], scales: Mapping[int, float], gammas: Sequence[float], *,
                       mode: str = "clamp") -> list[Condition]:
    """Conditions for ``{latent: kind}`` at every gamma (gamma 0 under ``clamp`` = ablation)."""
    out = []
    for latent, kind in features.items():
        for g in gammas:
            label = "ablate" if (g == 0 and mode == "clamp") else f"γ={g:g}"
            out.append(Condition(f"{kind} {latent} {label}", kind, int(latent), float(g), float(g) * float(scales[latent]),
                                 mode))
    return out


def control_features(freq: np.ndarray, targets: Sequence[int], exclude: Sequence[int], *, per_target: int = 1,
                     seed: int = 0, tolerance: float = 0.25) -> list[int]:
    """``per_target`` random control latents per target, matched on activation frequency: drawn
    (``default_rng(seed)``) among latents whose firing frequency is within ``tolerance`` (relative) of the target's,
    widening the band by 2x until enough exist. Never a target, an excluded latent or a dead latent; no latent twice.
    Which latents are drawn moves with the last bits of the frequencies (another CPU can draw others), so contrasts
    against them resample the controls too (:func:`specificity_contrast`)."""
    if per_target < 1:
        raise ValueError(f"per_target must be >= 1, got {per_target}")
    rng = np.random.default_rng(seed)
    freq = np.asarray(freq, dtype=float)
    banned = set(int(i) for i in exclude) | set(int(i) for i in targets)
    out: list[int] = []
    for t in targets:
        f, tol = freq[int(t)], tolerance
        while True:
            ok = [j for j in np.nonzero((freq > 0) & (np.abs(freq - f) <= tol * max(f, 1e-12)))[0]
                  if j not in banned and j not in out]
            if len(ok) >= per_target or tol > 1e3:
                break
            tol *= 2
        if len(ok) < per_target:
            raise ValueError(f"only {len(ok)} live latents to match target {t} (frequency {f:.4f}); need {per_target}")
        out += [int(j) for j in rng.choice(ok, size=per_target, replace=False)]
    return out


@dataclass
class TokenSites:
    """Where each document is read: ``word`` {(doc, pos, word)} positions that start a reasoning word, ``boundary``
    positions after a sentence end, ``other`` sampled positions outside every word; ``first_ids`` the first
    tokens of every variant of every reasoning word (the mass measured at boundaries)."""
    word: list[tuple[int, int, str]]
    boundary: list[tuple[int, int]]
    other: list[tuple[int, int]]
    first_ids: torch.Tensor


def token_sites(tokenizer, ids: torch.Tensor, sequences: Mapping[str, Sequence[Sequence[int]]], *, n_other: int = 64,
                seed: int = 0) -> TokenSites:
    """The positions :func:`teacher_forced_effects` reads in ``ids`` ``(n_docs, T)`` (see the module doc)."""
    rng = np.random.default_rng(seed)
    word, boundary, other = [], [], []
    ends = {i for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
            if t is not None and tokenizer.convert_tokens_to_string([t]).rstrip(" ").endswith((".", "?", "!", "\n"))}
    for d, row in enumerate(ids.tolist()):
        matches = find_word_positions(row, sequences)
        covered = np.zeros(len(row), dtype=bool)
        for s, e, w in matches:
            covered[s:e] = True
            if s >= 2:
                word.append((d, s, w))
        boundary += [(d, t) for t in range(2, len(row)) if row[t - 1] in ends]
        free = [t for t in range(2, len(row)) if not covered[t]]
        take = rng.choice(len(free), size=min(n_other, len(free)), replace=False)
        other += [(d, free[i]) for i in sorted(take)]
    first = sorted({int(s[0]) for seqs in sequences.values() for s in seqs})
    return TokenSites(word, boundary, other, torch.tensor(first, dtype=torch.long))


def _read(lp: torch.Tensor, ids: torch.Tensor, sites: TokenSites, order: dict, n_docs: int) -> dict[str, np.ndarray]:
    """Per-document means of log p(word), log p(other) and log mass at boundaries from log-probs ``lp`` evaluated
    at the predicting positions (pos - 1) listed in ``order``."""
    def gather(pairs):
        rows = torch.tensor([order[(d, t - 1)] for d, t in pairs], dtype=torch.long)
        return rows

    out = {}
    for key, pairs in (("word", [(d, t) for d, t, _ in sites.word]), ("other", sites.other)):
        vals = np.full(n_docs, np.nan)
        if pairs:
            r = gather(pairs)
            tgt = torch.tensor([int(ids[d, t]) for d, t in pairs])
            v = lp[r, tgt].double().numpy()
            docs = np.array([d for d, _ in pairs])
            for d in np.unique(docs):
                vals[d] = v[docs == d].mean()
        out[key] = vals
    mass = np.full(n_docs, np.nan)
    if sites.boundary:
        r = gather(sites.boundary)
        v = torch.logsumexp(lp[r][:, sites.first_ids], dim=-1).double().numpy()
        docs = np.array([d for d, _ in sites.boundary])
        for d in np.unique(docs):
            mass[d] = v[docs == d].mean()
    out["mass"] = mass
    words = sorted({w for _, _, w in sites.word})
    per_word = {}
    for w in words:
        pairs = [(d, t) for d, t, ww in sites.word if ww == w]
        r = gather(pairs)
        tgt = torch.tensor([int(ids[d, t]) for d, t in pairs])
        per_word[w] = lp[r, tgt].double().numpy()
    out["per_word"] = per_word
    return out


@memo.cached("reasoning.teacher_forced_effects", ignore=('progress',))
def teacher_forced_effects(model, sae, layer: int, ids: torch.Tensor, sites: TokenSites,
                           conditions: Sequence[Condition], *, batch_size: int = 8,
                           progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every condition teacher-forced on ``ids`` ``(n_docs, T)`` (equal-length windows, no padding) and return
    ``(effects, per_word)``: one row per (condition, document) with the measures of the module doc, and one row
    per (condition, word) with the mean change of log p at that word's occurrences. Blocks 0..layer run once
    per batch (:class:`helpers.core.activations.ResumableForward`); each condition re-runs only the later blocks."""
    if ids.dim() != 2:
        raise ValueError(f"ids must be (n_docs, T) equal-length windows, got shape {tuple(ids.shape)}")
    n_docs, T = ids.shape
    need = sorted({(d, t - 1) for d, t, _ in sites.word} | {(d, t - 1) for d, t in sites.boundary}
                  | {(d, t - 1) for d, t in sites.other})
    rows_all, pw_all = [], []
    for b0 in tqdm(range(0, n_docs, batch_size), desc="teacher-forced batches", disable=not progress):
        b1 = min(b0 + batch_size, n_docs)
        sub = [(d - b0, t) for d, t in need if b0 <= d < b1]
        order = {(d + b0, t): i for i, (d, t) in enumerate(sub)}
        r_idx = torch.tensor([d for d, _ in sub], dtype=torch.long)
        c_idx = torch.tensor([t for _, t in sub], dtype=torch.long)
        loc = TokenSites([s for s in sites.word if b0 <= s[0] < b1], [s for s in sites.boundary if b0 <= s[0] < b1],
                         [s for s in sites.other if b0 <= s[0] < b1], sites.first_ids)
        rf = ResumableForward(model, ids[b0:b1], layer)
        pos = torch.arange(T).expand(b1 - b0, T)
        edit_mask = (pos >= 1).unsqueeze(-1)
        base = _read(rf.log_probs(rf.resid, r_idx, c_idx), ids, loc, order, n_docs)
        for c in conditions:
            fn = feature_edit(sae, c.latent, c.value, mode=c.mode)
            with torch.inference_mode():
                edited = torch.where(edit_mask, fn(rf.resid, pos), rf.resid)
            delta = (edited - rf.resid)[:, 1:].norm(dim=-1) / rf.resid[:, 1:].norm(dim=-1)
            got = _read(rf.log_probs(edited, r_idx, c_idx), ids, loc, order, n_docs)
            for d in range(b0, b1):
                dw, do = got["word"][d] - base["word"][d], got["other"][d] - base["other"][d]
                rows_all.append({"condition": c.name, "kind": c.kind, "latent": c.latent, "gamma": c.gamma,
                                 "mode": c.mode, "doc": d, "d_word": dw, "d_other": do, "specificity": dw - do,
                                 "d_mass": got["mass"][d] - base["mass"][d],
                                 "added_norm": float(delta[d - b0].mean())})
            for w, v in got["per_word"].items():
                pw_all.append({"condition": c.name, "kind": c.kind, "latent": c.latent, "gamma": c.gamma,
                               "word": w, "sum_delta": float((v - base["per_word"][w]).sum()), "n": len(v)})
    effects = pd.DataFrame(rows_all)
    pw = pd.DataFrame(pw_all).groupby(["condition", "kind", "latent", "gamma", "word"], sort=False)[["sum_delta", "n"]].sum()
    pw["d_logp"] = pw.sum_delta / pw.n
    return effects, pw.reset_index().drop(columns="sum_delta")


def summarize_effects(effects: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                      measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """Per condition and measure: mean over documents with a BCa bootstrap CI (documents resampled)."""
    rows = []
    for (cond, kind, latent, gamma), sub in effects.groupby(["condition", "kind", "latent", "gamma"], sort=False):
        for m in measures:
            v = sub[m].to_numpy(dtype=float)
            v = v[~np.isnan(v)]
            iv = bootstrap_ci(v, n_boot=n_boot, seed=seed)
            rows.append({"condition": cond, "kind": kind, "latent": int(latent), "gamma": float(gamma), "measure": m,
                         "mean": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "n": iv.n})
    return pd.DataFrame(rows)


def specificity_contrast(effects: pd.DataFrame, *, kind: str = "selected", control: str = "random",
                         measures: Sequence[str] = ("d_mass", "specificity", "d_word", "d_other"),
                         n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """The study's claim at each gamma: the mean effect of the ``kind`` features minus the mean effect of the
    ``control`` features on the same documents, with a two-level percentile bootstrap CI that resamples documents
    *and* the features of each group (the controls are a random draw: a CI over documents alone would ignore which
    ones were drawn). Choice: percentile intervals (BCa's jackknife is undefined over two levels)."""
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")
    rng = np.random.default_rng(seed)
    rows = []
    for g in sorted(effects.gamma.unique()):
        at = effects[effects.gamma == g]
        for m in measures:
            a = at[at.kind == kind].pivot_table(index="doc", columns="latent", values=m, dropna=False)
            b = at[at.kind == control].pivot_table(index="doc", columns="latent", values=m, dropna=False)
            if a.empty or b.empty:
                continue
            docs = a.index.intersection(b.index)
            A, B = a.loc[docs].to_numpy(float), b.loc[docs].to_numpy(float)
            ok = ~(np.isnan(A).all(1) | np.isnan(B).all(1))
            A, B = A[ok], B[ok]
            n = len(A)
            est = float(np.nanmean(np.nanmean(A, 1) - np.nanmean(B, 1)))
            draws = np.empty(n_boot)
            for k in range(n_boot):
                d = rng.integers(0, n, n)
                fa, fb = rng.integers(0, A.shape[1], A.shape[1]), rng.integers(0, B.shape[1], B.shape[1])
                draws[k] = np.nanmean(np.nanmean(A[d][:, fa], 1) - np.nanmean(B[d][:, fb], 1))
            lo, hi = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
            rows.append({"gamma": float(g), "measure": m, f"{kind}_minus_{control}": est, "ci_low": float(lo),
                         "ci_high": float(hi), "n": n, "n_features": f"{A.shape[1]} vs {B.shape[1]}"})
    return pd.DataFrame(rows)


def reads_vs_writes(scores: pd.DataFrame, per_word: pd.DataFrame, features: Sequence[int], gamma: float, *,
                    top: int = 3) -> pd.DataFrame:
    """For each feature: the words it *reads* (largest share p_i(r_j) of its ReasonScore profile) and the words its
    steering at ``gamma`` *writes* (largest mean change of log p at their occurrences), and the Spearman
    correlation between the two over the words that occur in both."""
    from scipy.stats import spearmanr

    rows = []
    for i in features:
        prof = {c[2:].replace("_", " "): float(scores.loc[i, c]) for c in scores.columns if c.startswith("p_")}
        w = per_word[(per_word.latent == i) & (per_word.gamma == gamma) & (per_word.kind == "selected")]
        wr = dict(zip(w.word, w.d_logp))
        common = [k for k in prof if k in wr]
        rho = float(spearmanr([prof[k] for k in common], [wr[k] for k in common]).statistic) if len(common) >= 3 else np.nan
        rows.append({"feature": int(i), "reads": sorted(prof, key=prof.get, reverse=True)[:top],
                     "writes": sorted(wr, key=wr.get, reverse=True)[:top],
                     "max Δlog p": round(max(wr.values()), 2) if wr else np.nan, "spearman(read, write)": rho})
    return pd.DataFrame(rows).set_index("feature")
