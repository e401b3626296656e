"""Study 2 glue: build every method's vector, evaluate them in one batched generation, select on validation
prompts, summarise with paired CIs, and SAE-RSV's batched relevance step."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.core import activations as A
from helpers.core import judges as J
from helpers.core.stats import bootstrap_ci, paired_bootstrap_ci
from helpers.core.steering import (
    VECTOR_METHODS,
    Generation,
    generate,
    rsv_neighbours,
    rsv_parts,
    rsv_relevance,
    vector_method,
)
from helpers.core.text import distinct_n

from .baselines import lora_sft
from .concepts import Concept

__all__ = ["build_vectors", "lora_generate", "rescale_like", "rsv_prepare_all", "run_jobs", "score_generations",
           "select_on_validation", "steering_jobs_generate", "summarize_steering"]


# --- the study's glue: build every method's vector, evaluate in one batched generation, select, summarise ---------



def rescale_like(v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``v`` rescaled to ``ref``'s norm (every method's vector gets the norm of its own subset's CAA vector, so a
    multiplier means the same step size for all methods; our choice)."""
    return v / v.norm().clamp_min(1e-12) * ref.norm()


def build_vectors(sae, x_pos: torch.Tensor, x_neg: torch.Tensor, methods: Sequence[str], *,
                  configs: dict[str, dict] | None = None) -> dict:
    """Every method's vector from one training subset: a lookup in :data:`~helpers.core.steering.VECTOR_METHODS`
    with each method's settings from ``configs`` (e.g. ``{"probe": {"C": 1.0, "seed": 0}, "sdcv": {"k": 32}}``; the
    SAE is passed to the methods that take one). Every vector but CAA is rescaled to the subset's CAA norm. SDCV also
    records its selected latents; ``sae_rsv`` returns its :class:`~helpers.core.steering.Decomposition` and support
    (the relevance judgement and the alpha choice come later: :func:`rsv_prepare_all`, :func:`~helpers.core.steering.rsv_refine`)."""
    configs = dict(configs or {})
    unknown = (set(methods) | set(configs)) - set(VECTOR_METHODS) - {"lora"}
    if unknown:
        raise ValueError(f"unknown steering methods {sorted(unknown)}; use {sorted(VECTOR_METHODS) + ['lora']}.")

    def make(m):
        cfg = dict(configs.get(m, {}))
        if m in ("sdcv", "sae_rsv"):
            cfg["sae"] = sae
        return vector_method(m, **cfg)

    caa = make("caa")(x_pos, x_neg)
    out: dict[str, Any] = {"caa": caa}
    for m in methods:
        if m in ("caa", "lora"):
            continue
        meth = make(m)
        if m == "sae_rsv":
            dec = meth.decompose(x_pos, x_neg)
            out["rsv_decomposition"], out["rsv_support"] = dec, dec.support(meth.support)
            continue
        out[m] = rescale_like(meth(x_pos, x_neg), caa)
        if m == "sdcv":
            out["sdcv_latents"] = [int(i) for i in meth.latents(x_pos, x_neg)]
    return out


def steering_jobs_generate(model, tokenizer, layer: int, jobs: Sequence[dict], prompts: Sequence[str], *,
                           max_new_tokens: int = 24, batch_size: int = 48, steer_from: str = "last_prompt",
                           progress: bool = True) -> list[list[Generation]]:
    """Generate for every (job, prompt) in one batched run: job ``j`` adds ``job["scale"] * job["vector"]`` (or
    nothing when its vector is None). Returns one list of generations per job."""
    d = A.d_model(model)
    rows_p, rows_v = [], []
    for job in jobs:
        v = job.get("vector")
        v = torch.zeros(d) if v is None else float(job.get("scale", 1.0)) * v.float()
        rows_p += list(prompts)
        rows_v += [v] * len(prompts)
    gens = generate(model, tokenizer, rows_p, max_new_tokens=max_new_tokens, layer=layer,
                    vector=torch.stack(rows_v), batch_size=batch_size, steer_from=steer_from, progress=progress)
    n = len(prompts)
    return [gens[i * n:(i + 1) * n] for i in range(len(jobs))]


def score_generations(model, tokenizer, concept: Concept, prompts: Sequence[str], gens: Sequence[Generation],
                      labels: dict) -> pd.DataFrame:
    """One row per generation: the concept judge's score, perplexity under the unsteered model (call with hooks
    off), distinct-2, tokens, plus the ``labels`` columns."""
    texts = [g.text for g in gens]
    score = J.judge(concept.judge, texts, description=concept.description, anti_description=concept.anti_description)
    ppl = J.completion_perplexity(model, tokenizer, prompts, texts)
    return pd.DataFrame({**{k: [v] * len(texts) for k, v in labels.items()}, "item": range(len(texts)),
                         "score": score, "perplexity": ppl, "distinct_2": [distinct_n(t, 2) for t in texts],
                         "n_tokens": [g.n_tokens for g in gens], "text": texts})


def select_on_validation(df: pd.DataFrame, *, group: Sequence[str], options: Sequence[str],
                         ppl_max: float) -> pd.DataFrame:
    """Per ``group`` (e.g. concept x method), the option (e.g. multiplier, alpha) with the highest mean validation
    score among those whose mean perplexity is <= ``ppl_max``; if none qualifies, the most fluent option."""
    agg = df.groupby([*group, *options], dropna=False).agg(score=("score", "mean"), perplexity=("perplexity", "mean"))
    agg = agg.reset_index()
    agg["score"] = agg["score"].fillna(-np.inf)  # a NaN mean (e.g. every reply empty) never wins
    agg["perplexity"] = agg["perplexity"].fillna(np.inf)
    best = []
    for _, g in agg.groupby(list(group), dropna=False):
        ok = g[g["perplexity"] <= ppl_max]
        if not len(ok):
            ok = g[g["perplexity"] == g["perplexity"].min()]
        best.append(ok.loc[ok["score"].idxmax()])
    return pd.DataFrame(best).reset_index(drop=True)


def summarize_steering(df: pd.DataFrame, baseline: pd.DataFrame, *, by: Sequence[str] = ("concept", "method",
                       "n_train"), n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean score with a 95% bootstrap CI over test prompts (each prompt's score averaged over seeds first), the
    paired gain over the unsteered model (``baseline``: concept, item, score) with its CI, mean perplexity and
    distinct-2."""
    base = baseline.set_index(["concept", "item"])["score"]
    rows = []
    for key, g in df.groupby(list(by), dropna=False):
        per_item = g.groupby("item")["score"].mean()
        iv = bootstrap_ci(per_item.values, n_boot=n_boot, seed=seed)
        concept = g["concept"].iloc[0]
        b = base.loc[concept].reindex(per_item.index).values
        gain = paired_bootstrap_ci(per_item.values, b, n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "score": iv.estimate, "ci_low": iv.low,
                     "ci_high": iv.high, "n_prompts": iv.n, "gain": gain.estimate, "gain_low": gain.low,
                     "gain_high": gain.high,
                     "perplexity": float(g["perplexity"].mean()), "distinct_2": float(g["distinct_2"].mean()),
                     "n_seeds": int(g["seed"].nunique()) if "seed" in g else 1})
    return pd.DataFrame(rows)


def lora_generate(model, tokenizer, pairs: Sequence[tuple[str, str]], prompts: Sequence[str], *,
                  max_new_tokens: int = 24, batch_size: int = 48, **lora_kw) -> tuple[list[Generation], list[float]]:
    """Train LoRA-SFT adapters on ``pairs``, generate for ``prompts``, then remove the adapters (the base model is
    restored exactly: ``PeftModel.unload()`` without merging). Returns (generations, training losses)."""
    peft_model = lora_sft(model, tokenizer, pairs, **lora_kw)
    try:
        gens = generate(peft_model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
        losses = list(peft_model.sft_losses)
    finally:
        peft_model.unload()
    return gens, losses


def run_jobs(model, tokenizer, layer: int, concept: Concept, jobs: Sequence[dict], prompts: Sequence[str], *,
             max_new_tokens: int = 24, batch_size: int = 48, steer_from: str = "last_prompt",
             progress: bool = True) -> pd.DataFrame:
    """Generate for every job x prompt in one batched run and score it (:func:`score_generations`). Each job is a
    dict with ``vector`` (or None) and ``scale``; its other keys become label columns."""
    gens = steering_jobs_generate(model, tokenizer, layer, jobs, prompts, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, steer_from=steer_from, progress=progress)
    frames = [score_generations(model, tokenizer, concept, prompts, g,
                                {"concept": concept.name, **{k: v for k, v in job.items() if k != "vector"}})
              for job, g in zip(jobs, gens)]
    return pd.concat(frames, ignore_index=True)


def rsv_prepare_all(sae, vectors: dict, concepts: dict[str, Concept], explainer, *, threshold: float = 0.3,
                    n_neighbours: int = 4, chat=None, relevance_fn=None) -> tuple[dict, pd.DataFrame]:
    """SAE-RSV steps 2-3 for every (concept, n, seed) entry of ``vectors`` that has a decomposition, batched so
    the explainer encodes its corpus twice in all: (1) explain and judge every support latent, (2) find decoder
    neighbours of the relevant ones, explain and judge those, add the relevant ones. Returns ``{key: RSVParts}``
    and a tidy table of every judged latent (concept, n_train, seed, latent, role, similarity, explanation).
    ``relevance_fn(concept, latents) -> {latent: {"relevant", "similarity", "explanation"}}`` replaces the
    explanation-vs-description judge (e.g. :func:`~helpers.studies.steering_refinement.rsv_context_relevance`)."""
    keys = [k for k, v in vectors.items() if "rsv_decomposition" in v]
    concepts = {c: concepts[c] for c in sorted({k[0] for k in keys})}
    explainer.explain(sorted({i for k in keys for i in vectors[k]["rsv_support"]}))

    def judge(concept, latents):
        if relevance_fn is not None:
            return relevance_fn(concept, latents)
        c = concepts[concept]
        return rsv_relevance(explainer.explain(latents), c.description, c.anti_description, threshold=threshold,
                             chat=chat)

    rel = {c: judge(c, sorted({i for k in keys if k[0] == c for i in vectors[k]["rsv_support"]})) for c in concepts}
    cands = {}
    for k in keys:
        sup = vectors[k]["rsv_support"]
        kept = [i for i in sup if rel[k[0]][i]["relevant"] is True]
        cands[k] = rsv_neighbours(sae, kept, n=n_neighbours, exclude=sup)
    explainer.explain(sorted({j for c in cands.values() for j in c}))
    cand_rel = {c: judge(c, sorted({j for k in keys if k[0] == c for j in cands[k]})) for c in concepts}
    parts, rows = {}, []
    for k in keys:
        dec, sup = vectors[k]["rsv_decomposition"], vectors[k]["rsv_support"]
        added = {j: s for j, s in cands[k].items() if cand_rel[k[0]][j]["relevant"] is True}
        parts[k] = rsv_parts(sae, dec, sup, rel[k[0]], added)
        for i in sup:
            role = "kept" if i in parts[k].kept else "removed"
            rows.append({"concept": k[0], "n_train": k[1], "seed": k[2], "latent": i, "role": role,
                         "dz": float(dec.dz[i]), "similarity": rel[k[0]][i]["similarity"],
                         "unparsed": rel[k[0]][i]["relevant"] is None, "explanation": rel[k[0]][i]["explanation"]})
        for j, (src, cos) in cands[k].items():
            rows.append({"concept": k[0], "n_train": k[1], "seed": k[2], "latent": j,
                         "role": "added" if j in added else "candidate (not relevant)", "dz": float(dec.dz[j]),
                         "similarity": cand_rel[k[0]][j]["similarity"], "unparsed": cand_rel[k[0]][j]["relevant"] is None,
                         "explanation": cand_rel[k[0]][j]["explanation"],
                         "found_from": src, "decoder_cos": cos})
    return parts, pd.DataFrame(rows)

