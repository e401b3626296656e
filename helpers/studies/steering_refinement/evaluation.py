"""Study 2 evaluation: every method's vector on a grid of (N, seed), read teacher-forced (dose-response, effect
at a fixed fluency cost, paired against CAA) and in generation the way AxBench scores it (concept, fluency and
instruction relevance, combined by their harmonic mean), plus SAE-RSV's relevance step judged from each latent's
top contexts.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.core import explanations as E
from helpers.core import judges as J
from helpers.core.features import embed
from helpers.core.stats import bootstrap_ci, paired_bootstrap_ci
from helpers.core.steering import caa_vector, probe_vector, rsv_decompose, rsv_relevance, sdcv_vector_tokens

from .concepts import Concept, pool

__all__ = ["axbench_scores", "score_both_directions", "dose_deltas", "effect_at_cost", "fraction_at_cost", "grid_vectors", "judge_range",
           "median_norm", "paired_against", "rsv_context_relevance", "rsv_scored_relevance", "scored_explanations_from_export",
           "symmetric_contrast"]

GRID_METHODS = ("caa", "probe", "sdcv", "sdcv_probe", "sae_rsv")


def median_norm(token_sets: Sequence[torch.Tensor]) -> float:
    """Median residual norm over the (ordinary) tokens of ``token_sets``: the unit in which added norms are given."""
    return float(torch.cat([t.float().norm(dim=1) for t in token_sets]).median())


def grid_vectors(sae, pos_tokens: Sequence[torch.Tensor], neg_tokens: Sequence[torch.Tensor], methods: Sequence[str], *,
                 configs: dict[str, dict] | None = None, seed: int = 0) -> dict[str, Any]:
    """Every method's vector from one training subset given as per-token residuals (one ``(T_i, d)`` tensor per
    example): ``caa`` and ``probe`` on the pooled examples, ``sdcv`` / ``sdcv_probe`` SDCV over diff-in-means / the
    probe with per-token codes (:func:`~helpers.core.steering.sdcv_vector_tokens`), ``sae_rsv`` the SAE
    decomposition of the CAA vector (codes per token, pooled) for the relevance step that follows
    (:func:`~helpers.study.rsv_prepare_all`). Norms are left as they come: methods are compared along unit directions."""
    configs = dict(configs or {})
    unknown = set(methods) - set(GRID_METHODS) - {"lora"}
    if unknown:
        raise ValueError(f"unknown steering methods {sorted(unknown)}; use {list(GRID_METHODS) + ['lora']}.")
    xp, xn = pool(pos_tokens), pool(neg_tokens)
    out: dict[str, Any] = {"caa": caa_vector(xp, xn)}
    if "probe" in methods:
        out["probe"] = probe_vector(xp, xn, C=configs.get("probe", {}).get("C", 1.0), seed=seed)
    for m, base in (("sdcv", "caa"), ("sdcv_probe", "probe")):
        if m in methods:
            cfg = {k: v for k, v in configs.get("sdcv", {}).items() if k in ("k", "lam", "score", "keep_others", "keep_error")}
            out[m], lat = sdcv_vector_tokens(sae, pos_tokens, neg_tokens, base=base, seed=seed,
                                             C=configs.get("probe", {}).get("C", 1.0), **cfg)
            out[f"{m}_latents"] = [int(i) for i in lat]
    if "sae_rsv" in methods:
        cfg = configs.get("sae_rsv", {})
        dec = rsv_decompose(sae, pos_tokens, neg_tokens, mode=cfg.get("mode", "mean_codes"))
        out["rsv_decomposition"], out["rsv_support"] = dec, dec.support(cfg.get("support", 24))
    return out


def dose_deltas(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``dlo`` (change in concept log-odds) and ``dnll`` (fluency cost, nats/token) against the unsteered row
    of the same item (direction "none") to a :func:`~helpers.core.steering.teacher_forced_dose` table."""
    base = df[df.direction == "none"].set_index("item")
    out = df.copy()
    out["dlo"] = out.logodds - out.item.map(base.logodds)
    out["dnll"] = out.nll - out.item.map(base.nll)
    return out


def fraction_at_cost(curve: pd.DataFrame, cost: float, *, x: str = "fraction") -> float:
    """The added norm (column ``x``, positive side) at which the mean fluency cost reaches ``cost`` nats/token,
    interpolated linearly between grid points; the largest grid value when the curve never reaches it."""
    g = curve[curve[x] > 0].groupby(x).dnll.mean().sort_index()
    if not len(g):
        raise ValueError("fraction_at_cost needs rows with positive added norm.")
    xs, ys = [0.0, *g.index], [0.0, *g.values]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= cost > y0:
            return float(x0 + (cost - y0) * (x1 - x0) / (y1 - y0))
    return float(xs[-1])


def effect_at_cost(df: pd.DataFrame, cost: float, *, by: Sequence[str] = ("direction",)) -> pd.DataFrame:
    """Per item, the concept effect a vector buys at a fixed fluency cost, from one added norm: ``dlo_i *
    sqrt(cost / mean dnll)``. Model (checked on the full curves of the notebook): near zero the effect grows
    linearly with the added norm and the cost quadratically, so the effect at cost c scales as sqrt(c / cost).
    Choice: a mean cost below 1e-3 nats is floored there (a vector that costs nothing gets a large, finite factor)."""
    rows = []
    for _, g in df[df.direction != "none"].groupby(list(by)):
        factor = math.sqrt(cost / max(float(g.dnll.mean()), 1e-3))
        rows.append(g.assign(effect=g.dlo * factor, cost_factor=factor))
    return pd.concat(rows, ignore_index=True) if rows else df.assign(effect=np.nan, cost_factor=np.nan)


def symmetric_contrast(plus: pd.DataFrame, minus: pd.DataFrame, value: str, *, on: Sequence[str] = ("item",)) -> pd.Series:
    """Per item, ``(value(+) - value(-)) / 2``: the steering effect with whatever any perturbation does to both
    signs cancelled (e.g. a random direction's drift)."""
    m = plus.set_index(list(on))[value] - minus.set_index(list(on))[value]
    return m / 2


def paired_against(df: pd.DataFrame, value: str, *, reference: str = "caa", by: Sequence[str] = ("concept", "n_train"),
                   n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean ``value`` per (``by``, method) with a bootstrap CI over items (seeds averaged per item first), and the
    paired difference against ``reference`` at the same ``by`` (same N, same seeds, same items) with its CI."""
    rows = []
    for key, g in df.groupby(list(by)):
        per = g.groupby(["method", "item"])[value].mean().unstack("method")
        for meth in per.columns:
            iv = bootstrap_ci(per[meth].values, n_boot=n_boot, seed=seed)
            row = {**dict(zip(by, key if isinstance(key, tuple) else (key,))), "method": meth, value: iv.estimate,
                   "low": iv.low, "high": iv.high, "n_items": iv.n}
            if reference in per.columns and meth != reference:
                d = paired_bootstrap_ci(per[meth].values, per[reference].values, n_boot=n_boot, seed=seed)
                row.update({f"minus_{reference}": d.estimate, "diff_low": d.low, "diff_high": d.high})
            rows.append(row)
    return pd.DataFrame(rows)


def judge_range(concept: Concept, positives: Sequence[str], negatives: Sequence[str]) -> tuple[float, float]:
    """The concept judge's mean score on real positive and real negative texts (held out): the range that
    generation scores are rescaled by (a judge that separates real texts by 0.25 makes a 0.05 gain a fifth of it).
    Binary refusal judge: (1, 0). Paired CAA concepts (texts that differ only in the answer letter): the judge's
    scores of the concept's description and of its opposite (our choice)."""
    if concept.judge == "refusal":  # a binary judge of replies; the data are requests, not replies
        return 1.0, 0.0
    if concept.paired:  # CAA pairs differ only in the answer letter: the range between the two descriptions instead
        positives, negatives = [concept.description], [concept.anti_description]
    kw = dict(description=concept.description, anti_description=concept.anti_description)
    return float(np.mean(J.judge(concept.judge, list(positives), **kw))), float(np.mean(J.judge(concept.judge, list(negatives), **kw)))


def axbench_scores(concept: Concept, prompts: Sequence[str], texts: Sequence[str], perplexity: Sequence[float], *,
                   sign: int, judge_lo_hi: tuple[float, float], base_ppl: float, base_relevance: float,
                   ppl_max_ratio: float = 4.0) -> pd.DataFrame:
    """AxBench's three scores per reply (Wu et al. 2025, arXiv 2501.17148, Sec. 4: concept, instruction, fluency,
    each judged 0-2, combined by their harmonic mean), here in [0, 1] from the toolkit's offline judges:

    * ``concept``: the concept judge rescaled by its range on real texts, toward the steered pole (``sign`` +1:
      the concept, -1: its opposite), clipped to [0, 1];
    * ``fluency``: 1 at the unsteered model's perplexity ``base_ppl``, 0 at ``ppl_max_ratio`` times it (log scale);
    * ``relevance``: MiniLM cosine of reply to prompt over the unsteered replies' mean cosine, clipped to [0, 1];
    * ``harmonic``: the harmonic mean of the three (0 when any is 0).

    Choices (AxBench uses an LLM judge for all three): the rescalings above. ``concept_raw`` keeps the unclipped
    rescaled judge score for symmetric contrasts."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    hi, lo = judge_lo_hi
    if not hi > lo:
        raise ValueError(f"the judge does not separate real texts (positives {hi:.3f} <= negatives {lo:.3f}); "
                         f"pick a concept whose judge can score it.")
    s = J.judge(concept.judge, list(texts), description=concept.description, anti_description=concept.anti_description)
    raw = (np.asarray(s) - lo) / (hi - lo)
    conc = np.clip(raw if sign > 0 else 1 - raw, 0, 1)
    flu = np.clip(1 - np.log(np.asarray(perplexity) / base_ppl) / math.log(ppl_max_ratio), 0, 1)
    cos = np.asarray([float(a @ b) for a, b in zip(embed(list(prompts)), embed([t or " " for t in texts]))])
    rel = np.clip(cos / base_relevance, 0, 1) if base_relevance > 0 else np.zeros_like(cos)
    parts = np.stack([conc, flu, rel])
    harm = np.where((parts > 0).all(0), 3 / (1 / np.clip(parts, 1e-9, None)).sum(0), 0.0)
    return pd.DataFrame({"concept_raw": raw, "concept": conc, "fluency": flu, "relevance": rel, "harmonic": harm,
                         "relevance_cos": cos})


def rsv_context_relevance(explainer, latents: Sequence[int], concept: Concept, null_latents: Sequence[int], *,
                          quantile: float = 0.9) -> dict[int, dict]:
    """SAE-RSV step 2 (arXiv 2509.23799, Sec. 3.2: an LLM judges each latent's explanation for relevance), judged
    here from the explanation's evidence itself: the latent's top contexts on the SAE's corpus (text around the
    peak, :class:`~helpers.core.features.LatentExplainer`) are scored by the concept's own judge, and a latent is
    relevant (to the concept or its opposite; our choice, as before) when its mean score departs from the median
    of ``null_latents`` (random latents) by more than their ``quantile`` absolute departure. Needs no labelled
    concept data and no LLM; an explainer LLM can replace it through :func:`~helpers.core.steering.rsv_relevance`."""
    kw = dict(description=concept.description, anti_description=concept.anti_description)
    ids = sorted({int(i) for i in latents} | {int(i) for i in null_latents})
    explainer.explain(ids)
    tok = explainer.tokenizer

    def score(i):
        ctx = explainer.cache[i]["contexts"]
        if not ctx:
            return math.nan
        texts = [tok.decode(c["token_ids"]) for c in ctx]
        return float(np.mean(J.judge(concept.judge, texts, **kw)))

    scores = {i: score(i) for i in ids}
    null = np.array([scores[int(i)] for i in null_latents if not math.isnan(scores[int(i)])])
    if len(null) < 5:
        raise ValueError(f"only {len(null)} null latents fire on the corpus; pass more null_latents.")
    centre = float(np.median(null))
    thr = float(np.quantile(np.abs(null - centre), quantile))
    return {int(i): {"similarity": scores[int(i)] - centre,
                     "relevant": (None if math.isnan(scores[int(i)]) else bool(abs(scores[int(i)] - centre) > thr)),
                     "explanation": explainer.cache[int(i)]["description"]} for i in latents}


def scored_explanations_from_export(data: dict, explainer: str = "LLM") -> dict[int, tuple[str, float]]:
    """Notebook 01's scored explanations (its Neuronpedia-layout export, ``features_neuronpedia.json``) as
    ``{latent: (explanation, detection AUROC)}`` for ``explainer``; latents without that explanation or without a
    score are left out."""
    out = {}
    for f in data["features"]:
        for e in f["explanations"]:
            auroc = E.explanation_auroc(e)
            if e["explanationModelName"] == explainer and auroc is not None:
                out[int(f["index"])] = (e["description"], auroc)
    return out


def rsv_scored_relevance(backend, examples: dict[int, dict], tokenizer, concept: Concept, latents: Sequence[int], *,
                         known: dict[int, tuple[str, float]] | None = None, min_auroc: float = 0.7,
                         threshold: float = 0.3, judge_chat=None, fallback=None) -> dict[int, dict]:
    """SAE-RSV step 2 (arXiv 2509.23799, Sec. 3.2: an LLM judges each latent's *explanation* for relevance to the
    concept) on explanations that are themselves scored (issue 16): each latent is explained by ``backend`` from
    its strongest contexts and the explanation scored by detection (:mod:`helpers.core.explanations`, delphi's
    detection scorer) on held-out contexts, unless ``known`` already holds ``(explanation, AUROC)`` for it (notebook
    01's export: :func:`scored_explanations_from_export`). Only an explanation that predicts its latent's
    activations (detection AUROC >= ``min_auroc``; our choice, the paper trusts every explanation) is judged
    (:func:`~helpers.core.steering.rsv_relevance`: MiniLM cosine to the concept's or its opposite's description >=
    ``threshold``, or ``judge_chat`` yes/no). The others go to ``fallback(concept, latents)`` (e.g.
    :func:`rsv_context_relevance`) or are marked ``relevant=None`` (unknown: treated as not relevant and counted).
    ``examples``: :func:`~helpers.core.explanations.detection_examples` for the latents not in ``known``.

    Returns per latent ``relevant``, ``similarity``, ``explanation``, ``detection_auroc`` and ``source`` ("scored
    explanation", "fallback" or "untrusted explanation")."""
    if not 0.5 <= min_auroc <= 1:
        raise ValueError(f"min_auroc must be in [0.5, 1] (0.5 = trust every explanation), got {min_auroc}.")
    lat = [int(i) for i in latents]
    known = dict(known or {})
    todo = [i for i in lat if i not in known]
    missing = [i for i in todo if i not in examples]
    if missing:
        raise KeyError(f"latents {missing[:8]} have neither a known scored explanation nor detection examples; "
                       "build them with helpers.core.explanations.detection_examples().")
    if todo:
        expl, _ = E.llm_explanations(backend, {i: examples[i]["explain"] for i in todo}, tokenizer)
        det = E.detection_scores(backend, expl, examples) if expl else pd.DataFrame(columns=["latent", "auroc"])
        auroc = dict(zip(det.latent.astype(int), det.auroc.astype(float)))
        known.update({i: (expl[i], auroc.get(i, math.nan)) for i in expl})
    trusted = [i for i in lat if i in known and known[i][1] >= min_auroc]
    out = {i: {**r, "detection_auroc": known[i][1], "source": "scored explanation"}
           for i, r in rsv_relevance({i: known[i][0] for i in trusted}, concept.description, concept.anti_description,
                                     threshold=threshold, chat=judge_chat).items()}
    rest = [i for i in lat if i not in out]
    fb = fallback(concept, rest) if (fallback is not None and rest) else {}
    for i in rest:
        expl, auc = known.get(i, ("(no usable explanation)", math.nan))
        if i in fb:
            out[i] = {**fb[i], "detection_auroc": auc, "source": "fallback"}
        else:
            out[i] = {"similarity": math.nan, "relevant": None, "explanation": expl, "detection_auroc": auc,
                      "source": "untrusted explanation"}
    return {i: out[i] for i in lat}


def score_both_directions(model, tokenizer, concept: Concept, prompts: Sequence[str], base_texts: Sequence[str],
                          texts: dict[tuple[str, int], Sequence[str]], *, n_heldout: int, ppl_max_ratio: float = 4.0,
                          ) -> pd.DataFrame:
    """Score steered generations of both signs (``texts[(method, sign)]``, one reply per prompt) with
    :func:`axbench_scores`: the judge range from the concept's first ``n_heldout`` (held-out) real texts, fluency
    relative to the unsteered replies' median perplexity, relevance relative to their mean prompt-reply cosine.
    One row per (method, sign, item) with the reply's text and perplexity."""
    if n_heldout < 2:
        raise ValueError(f"n_heldout must be >= 2 (held-out real texts set the judge's range), got {n_heldout}.")
    lo_hi = judge_range(concept, concept.positives[:n_heldout], concept.negatives[:n_heldout])
    base_ppl = float(np.median(J.completion_perplexities(model, tokenizer, list(prompts), [list(base_texts)])[0]))
    base_cos = axbench_scores(concept, prompts, base_texts, [base_ppl] * len(prompts), sign=1, judge_lo_hi=lo_hi,
                              base_ppl=base_ppl, base_relevance=1.0).relevance_cos.mean()
    frames = []
    ppls = J.completion_perplexities(model, tokenizer, list(prompts), [list(ts) for ts in texts.values()])
    for ((method, sign), ts), ppl in zip(texts.items(), ppls):
        sc = axbench_scores(concept, prompts, ts, ppl, sign=sign, judge_lo_hi=lo_hi, base_ppl=base_ppl,
                            base_relevance=float(base_cos), ppl_max_ratio=ppl_max_ratio)
        frames.append(sc.rename(columns={"concept": "concept_score"}).assign(
            concept=concept.name, method=method, sign=sign, item=range(len(ts)), text=list(ts), perplexity=ppl))
    return pd.concat(frames, ignore_index=True)
