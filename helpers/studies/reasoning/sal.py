"""Soundness-Aware Level (SAL; Wu, Pan, Yao & Chen, arXiv 2510.15216): if-then rules between SAE features, each
rule's transition probability from co-activation, an LLM judge's soundness level per rule, and the Jensen-Shannon
divergence between the levels' probability distributions.

The paper: reasoning as chains of Horn clauses "if A (and B) then C" between features of a cross-layer SAE; the
transition probability of a rule is estimated from the model's own activations; an LLM (DeepSeek-R1) labels each rule
strict / plausible / noisy from the features' descriptions; a soundness-aware model's distribution of transition
probabilities shifts across levels, and SAL is the JSD separating them (predictive of post-RLVR accuracy across
0.5B-14B base models, R^2 = 0.87). What we could read of the paper is its abstract and summary; every step below whose
detail it leaves to us states its choice in one line.

Code path: :func:`sal_experiment` (notebook 02, section 7) runs the whole pipeline; the pieces are
:func:`horn_rules`, :func:`feature_descriptions`, :func:`judge_rules`, :func:`soundness_aware_level`,
:func:`sal_table` and :func:`sal_permutation_test` (shuffled-level control).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from helpers.core import activations as A
from helpers.core import sae as S

__all__ = ["SOUNDNESS_LEVELS", "feature_descriptions", "horn_rules", "judge_prompt", "judge_rules", "parse_soundness",
           "plot_sal", "sal_experiment", "sal_permutation_test", "sal_table", "soundness_aware_level"]

SOUNDNESS_LEVELS = ("strict", "plausible", "noisy")


def _as_bool(codes, name: str) -> torch.Tensor:
    x = torch.as_tensor(codes)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (tokens, features) matrix, got shape {tuple(x.shape)}.")
    return x > 0


def horn_rules(premise_codes, conclusion_codes, *, premises: Sequence[int] | None = None, min_support: int = 10,
               min_lift: float = 2.0, top_k: int = 5, pairs: bool = False, max_pairs: int = 200) -> pd.DataFrame:
    """Candidate Horn clauses A -> C (and, with ``pairs``, A and B -> C) between premise features (rows of
    ``premise_codes``, tokens x features) and conclusion features (``conclusion_codes``, the same tokens; e.g. a
    later layer at the same position, or the same layer one token later).

    Transition probability p = P(C active | premises active) over the tokens where the premises are active
    (active = code > 0). Our choices (the paper's selection rule is not available to us): a premise needs
    ``min_support`` active tokens; a rule is kept when its conclusion co-activates above chance (lift
    p / P(C) >= ``min_lift``), then the ``top_k`` conclusions per premise by lift (lift, not p, so that the
    distribution of p whose shape SAL reads is not truncated by the selection). A feature never concludes itself.
    Returns a frame with ``premise`` (tuple), ``conclusion``, ``support``, ``p`` (transition probability),
    ``base_rate`` and ``lift``.
    """
    P, C = _as_bool(premise_codes, "premise_codes"), _as_bool(conclusion_codes, "conclusion_codes")
    if P.shape[0] != C.shape[0]:
        raise ValueError(f"premise_codes has {P.shape[0]} tokens but conclusion_codes {C.shape[0]}; align them first.")
    if min_support < 1 or top_k < 1 or min_lift <= 0:
        raise ValueError(f"need min_support >= 1, top_k >= 1, min_lift > 0; got {min_support}, {top_k}, {min_lift}.")
    n_tok = P.shape[0]
    cand = list(range(P.shape[1])) if premises is None else [int(i) for i in premises]
    bad = [i for i in cand if not 0 <= i < P.shape[1]]
    if bad:
        raise ValueError(f"premise latents {bad[:5]} out of range 0..{P.shape[1] - 1}.")
    base = C.float().mean(0)  # P(C)
    Cf = C.float()
    groups: list[tuple[tuple[int, ...], torch.Tensor]] = []
    for a in cand:
        groups.append(((a,), P[:, a]))
    if pairs:
        sup = torch.stack([P[:, a] for a in cand], 1).float()
        joint = sup.T @ sup
        iu = torch.triu_indices(len(cand), len(cand), 1)
        js = joint[iu[0], iu[1]]
        order = torch.argsort(js, descending=True)[:max_pairs]
        for o in order.tolist():
            i, j = int(iu[0, o]), int(iu[1, o])
            if js[o] >= min_support:
                groups.append(((cand[i], cand[j]), P[:, cand[i]] & P[:, cand[j]]))
    rows = []
    for prem, mask in groups:
        s = int(mask.sum())
        if s < min_support:
            continue
        p = Cf[mask].mean(0)
        lift = p / base.clamp_min(1.0 / n_tok)
        ok = (lift >= min_lift) & (base > 0)
        for c in prem:
            if c < len(ok):
                ok[c] = False  # no "A -> A"
        idx = torch.nonzero(ok).flatten()
        idx = idx[torch.argsort(lift[idx], descending=True)][:top_k]
        for c in idx.tolist():
            rows.append({"premise": prem, "conclusion": int(c), "support": s, "p": float(p[c]),
                         "base_rate": float(base[c]), "lift": float(lift[c])})
    return pd.DataFrame(rows, columns=["premise", "conclusion", "support", "p", "base_rate", "lift"])


def feature_descriptions(codes: Sequence[torch.Tensor], token_ids: Sequence[Sequence[int]], tokenizer,
                         latents: Sequence[int], *, k: int = 8) -> dict[int, str]:
    """A short description per latent from the tokens where it fires most (summed activation per distinct token,
    the ``k`` largest). Our choice where the paper uses its own explanations: the judge reads these token lists."""
    lat = sorted({int(i) for i in latents})
    totals: dict[int, dict[int, float]] = {i: {} for i in lat}
    for z, ids in zip(codes, token_ids):
        if not len(z):
            continue
        sub = torch.as_tensor(z)[:, lat].float()
        ids = list(ids)[: sub.shape[0]]
        for col, i in enumerate(lat):
            nz = torch.nonzero(sub[:, col] > 0).flatten().tolist()
            for t in nz:
                totals[i][ids[t]] = totals[i].get(ids[t], 0.0) + float(sub[t, col])
    out = {}
    for i in lat:
        top = sorted(totals[i].items(), key=lambda kv: -kv[1])[:k]
        toks = [repr(tokenizer.decode([t]).strip() or tokenizer.decode([t])) for t, _ in top]
        out[i] = "fires on " + ", ".join(toks) if toks else "never fires on this corpus"
    return out


def judge_prompt(premise_desc: Sequence[str], conclusion_desc: str) -> str:
    """The judge's question for one rule (our wording; the paper's three levels and their meanings)."""
    ifs = " AND ".join(f"[{d}]" for d in premise_desc)
    return ("A language model's internal features are described by the tokens they fire on. Consider the rule:\n"
            f"IF {ifs}\nTHEN [{conclusion_desc}]\n\n"
            "Classify the rule's soundness with one word:\n"
            "strict - a necessary truth (the conclusion always follows, e.g. a definition or a theorem);\n"
            "plausible - a strong heuristic, usually but not always true;\n"
            "noisy - a spurious or nonsensical connection.\nAnswer:")


def parse_soundness(text: str | None) -> str | None:
    """The first of strict / plausible / noisy (also "noise") in a judge's reply; ``None`` if absent."""
    if not isinstance(text, str):
        return None
    m = re.search(r"\b(strict|plausible|nois[ey])\b", text.lower())
    if not m:
        return None
    return "noisy" if m.group(1).startswith("nois") else m.group(1)


def judge_rules(backend, rules: pd.DataFrame, descriptions: dict[int, str],
                conclusion_descriptions: dict[int, str] | None = None, *, max_tokens: int = 8,
                progress: bool = False) -> tuple[pd.Series, dict]:
    """Soundness level per rule from ``backend`` (any chat backend of :mod:`helpers.core.llm`; cached there).
    Unparseable or failed answers are ``None`` in the series and counted in the returned stats, never dropped."""
    cdesc = conclusion_descriptions or descriptions
    missing = sorted({int(a) for p in rules["premise"] for a in p if int(a) not in descriptions}
                     | {int(c) for c in rules["conclusion"] if int(c) not in cdesc})
    if missing:
        raise KeyError(f"no description for latents {missing[:8]}; build them with feature_descriptions().")
    prompts = [judge_prompt([descriptions[int(a)] for a in r.premise], cdesc[int(r.conclusion)])
               for r in rules.itertuples()]
    replies = backend.complete_many(prompts, max_tokens=max_tokens, return_errors=True, progress=progress)
    levels = [parse_soundness(r) if isinstance(r, str) else None for r in replies]
    stats = {"rules": len(levels), "unparsed": sum(lv is None for lv in levels),
             "errors": sum(not isinstance(r, str) for r in replies)}
    return pd.Series(levels, index=rules.index, name="level", dtype=object), stats


def _hist(p: np.ndarray, bins: int) -> np.ndarray:
    h, _ = np.histogram(np.clip(p, 0, 1), bins=bins, range=(0.0, 1.0))
    return h / max(h.sum(), 1)


def soundness_aware_level(p, levels, *, pair: tuple[str, str] = ("strict", "noisy"), bins: int = 10) -> float:
    """SAL: the Jensen-Shannon divergence (base 2, in [0, 1]) between the histograms (``bins`` equal bins on
    [0, 1]) of the transition probabilities of the rules at the two levels of ``pair``. Our choices: histograms
    for the distributions, base 2; the paper's headline contrast is strict vs noisy. NaN if a level has no rule."""
    from scipy.spatial.distance import jensenshannon

    p, levels = np.asarray(p, float), np.asarray(levels, dtype=object)
    if p.shape != levels.shape:
        raise ValueError(f"p and levels must have the same length, got {p.shape} and {levels.shape}.")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}.")
    unknown = set(pair) - set(SOUNDNESS_LEVELS)
    if unknown:
        raise ValueError(f"unknown soundness levels {sorted(unknown)}; use {SOUNDNESS_LEVELS}.")
    a, b = p[levels == pair[0]], p[levels == pair[1]]
    if not len(a) or not len(b):
        return float("nan")
    return float(jensenshannon(_hist(a, bins), _hist(b, bins), base=2) ** 2)


def sal_table(p, levels, *, bins: int = 10) -> pd.DataFrame:
    """Rules and mean transition probability per level, and the JSD for every pair of levels."""
    p, levels = np.asarray(p, float), np.asarray(levels, dtype=object)
    rows = [{"level": lv, "rules": int((levels == lv).sum()),
             "mean_p": float(p[levels == lv].mean()) if (levels == lv).any() else float("nan")}
            for lv in SOUNDNESS_LEVELS]
    rows.append({"level": "unparsed", "rules": int(sum(lv is None for lv in levels)), "mean_p": float("nan")})
    t = pd.DataFrame(rows).set_index("level")
    for a, b in (("strict", "noisy"), ("strict", "plausible"), ("plausible", "noisy")):
        t.attrs[f"jsd {a}-{b}"] = soundness_aware_level(p, levels, pair=(a, b), bins=bins)
    return t


def sal_permutation_test(p, levels, *, pair: tuple[str, str] = ("strict", "noisy"), bins: int = 10,
                         n_perm: int = 1000, seed: int = 0) -> dict:
    """The control: SAL with the level labels shuffled among the rules of the two levels (what SAL looks like
    when soundness and transition probability are unrelated, at this number of rules). Returns ``sal``, the null
    mean and 95th percentile, and a one-sided permutation p-value."""
    p, levels = np.asarray(p, float), np.asarray(levels, dtype=object)
    sel = np.isin(levels, list(pair))
    obs = soundness_aware_level(p, levels, pair=pair, bins=bins)
    rng = np.random.default_rng(seed)
    lv = levels[sel]
    null = np.array([soundness_aware_level(p[sel], rng.permutation(lv), pair=pair, bins=bins) for _ in range(n_perm)])
    ok = null[~np.isnan(null)]
    return {"sal": obs, "null_mean": float(ok.mean()) if len(ok) else float("nan"),
            "null_q95": float(np.quantile(ok, 0.95)) if len(ok) else float("nan"),
            "p_value": float((1 + (ok >= obs).sum()) / (1 + len(ok))) if len(ok) and not np.isnan(obs) else float("nan"),
            "n_rules": int(sel.sum())}


def sal_experiment(model, tokenizer, premise_sae, conclusion_sae, texts: Sequence[str], judge, *, layers: tuple[int, int],
                   token_offset: int = 0, keep_fn=None, premises: Sequence[int] | None = None, max_length: int = 256,
                   min_support: int = 10, min_lift: float = 2.0, top_k: int = 3, pairs: bool = False,
                   max_rules: int = 200, bins: int = 10, n_perm: int = 1000, seed: int = 0,
                   batch_size: int = 8, progress: bool = False) -> dict:
    """The whole SAL pipeline on ``texts``: residuals at ``layers = (premise layer, conclusion layer)`` in one pass,
    encoded by ``premise_sae`` / ``conclusion_sae`` (the same SAE twice for a cross-layer or multi-layer SAE),
    conclusion tokens shifted by ``token_offset`` (0: same position, a later layer; 1: the next token), tokens
    outside ``keep_fn(hidden list) -> masks`` dropped (the toolkit's outlier policy), rules, descriptions, judge,
    SAL and its shuffled-level control. At most ``max_rules`` rules (highest lift first) go to the judge."""
    lp, lc = int(layers[0]), int(layers[1])
    if token_offset < 0 or (lp == lc and token_offset == 0 and premise_sae is conclusion_sae):
        raise ValueError("the same SAE at the same layer and position gives co-occurrence, not a transition: use a "
                         "later conclusion layer or token_offset >= 1.")
    acts = A.capture(model, tokenizer, list(texts), sorted({lp, lc}), max_length=max_length, batch_size=batch_size,
                     progress=progress)
    keep = keep_fn(acts.acts[lp])[0] if keep_fn else [torch.ones(len(a), dtype=torch.bool) for a in acts.acts[lp]]
    zp_all, zc_all, zp, zc = [], [], [], []
    for hp, hc, k in zip(acts.acts[lp], acts.acts[lc], keep):
        a, b = S.encode(premise_sae, hp), S.encode(conclusion_sae, hc)
        zp_all.append(a)
        zc_all.append(b)
        n = len(a) - token_offset
        if n <= 0:
            continue
        m = k[:n] & k[token_offset:token_offset + n]
        zp.append(a[:n][m])
        zc.append(b[token_offset:token_offset + n][m])
    rules = horn_rules(torch.cat(zp), torch.cat(zc), premises=premises, min_support=min_support, min_lift=min_lift,
                       top_k=top_k, pairs=pairs)
    rules = rules.sort_values("lift", ascending=False).head(max_rules).reset_index(drop=True)
    prem_lat = sorted({int(a) for p in rules["premise"] for a in p})
    pdesc = feature_descriptions(zp_all, acts.token_ids, tokenizer, prem_lat)
    cdesc = feature_descriptions(zc_all, acts.token_ids, tokenizer, rules["conclusion"].unique().tolist())
    levels, stats = judge_rules(judge, rules, pdesc, cdesc, progress=progress)
    rules["level"] = levels
    table = sal_table(rules["p"], rules["level"], bins=bins)
    test = sal_permutation_test(rules["p"], rules["level"], bins=bins, n_perm=n_perm, seed=seed)
    return {"rules": rules, "table": table, "test": test, "judge_stats": stats, "descriptions": {**pdesc},
            "conclusion_descriptions": cdesc, "n_tokens": int(sum(len(z) for z in zp))}


def plot_sal(rules: pd.DataFrame, bins: int = 10):
    """Histograms of transition probability per soundness level (the paper's picture of soundness awareness)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = rules.assign(level=rules["level"].fillna("unparsed"))  # unparsed judge answers are shown, not dropped
    order = [lv for lv in (*SOUNDNESS_LEVELS, "unparsed") if lv in set(df.level)]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.histplot(data=df, x="p", hue="level", hue_order=order, bins=np.linspace(0, 1, bins + 1), stat="probability",
                 common_norm=False, element="step", ax=ax)
    ax.set(xlabel="transition probability P(conclusion | premises)", ylabel="share of the level's rules",
           title="Rules by soundness level")
    return fig
