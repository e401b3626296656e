"""Study 1: the corpus and the experiments of notebook 02 (feature steering, word ban, their summaries)."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from helpers.core import data
from helpers.core.stats import bootstrap_ci, paired_bootstrap_ci
from helpers.core.steering import generate, sae_feature_vector
from helpers.core.text import distinct_n, repetition_rate

from .answers import answers_match, extract_numeric_answer, reflection_word_rate
from .reason_score import REASONING_WORDS, reasoning_token_sequences, word_key

__all__ = ["COT_SUFFIX", "GROUPS", "ban_logit_bias", "build_reasoning_corpus", "generation_metrics", "group_of",
           "random_frequent_words", "steering_curve", "steering_experiment", "summarize_conditions",
           "word_ban_experiment"]


# --------------------------------------------------------------------------------------------------
# Word-ban ablation
# --------------------------------------------------------------------------------------------------

def ban_logit_bias(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Token-id sequences for ``model.generate(..., bad_words_ids=...)`` that forbid every variant of ``words``.

    Variants are those of ``reasoning_token_sequences(..., variants="all")`` (lower/Capitalised, with/without a
    leading space). For a multi-token sequence ``generate`` forbids its last token after the others, so "let me"
    bans " me" after " let". A single-token variant without a space may also be a sub-word piece of other words.
    """
    seqs = reasoning_token_sequences(tokenizer, words, variants="all")
    out: list[list[int]] = []
    for group in seqs.values():
        for s in group:
            if s not in out:
                out.append(list(s))
    return out


def random_frequent_words(tokenizer, corpus_texts: Sequence[str], n: int, *, exclude: Sequence[str] = REASONING_WORDS,
                          seed: int = 0, top: int = 200) -> list[str]:
    """``n`` control words drawn (seeded, without replacement) from the ``top`` most frequent words of the corpus.

    Words are lower-cased alphabetic whole words of >= 3 letters, not in ``exclude`` nor a word of a phrase in it
    (so "let" is excluded with "let me"). ``tokenizer`` is not needed for the draw (kept so that call sites mirror
    :func:`ban_logit_bias`; pass the result there) and may be None.
    """
    banned = set()
    for w in exclude:
        banned.add(word_key(w))
        banned.update(word_key(w).split())
    pat = re.compile(r"(?<![\w'’-])[a-z]+(?![\w'’-])")
    counts: Counter = Counter()
    for t in corpus_texts:
        counts.update(w for w in pat.findall(t.lower()) if len(w) >= 3 and w not in banned)
    pool = [w for w, _ in counts.most_common(top)]
    if n > len(pool):
        raise ValueError(f"asked for {n} words but the corpus offers only {len(pool)} candidates")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


# --------------------------------------------------------------------------------------------------
# Corpus and experiments for notebook 02
# --------------------------------------------------------------------------------------------------

COT_SUFFIX = "\nThink step by step, then give the final answer after '####'."

#: The paper's three behavioural groups, each described by the reasoning words that typify it (our mapping).
GROUPS = {"uncertainty": ["maybe", "perhaps", "hmm"], "exploration": ["alternatively", "another", "but", "however"],
          "reflection": ["wait", "let me", "therefore"]}


def build_reasoning_corpus(n_traces: int, n_solutions: int, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Reasoning text for ReasonScore: DeepSeek-R1-distill ``<think>`` traces (the paper's kind of corpus) and GSM8K
    / MATH-500 worked solutions; returns ``(texts, sources)``. Model-generated chain-of-thought is added by the
    notebook (it needs the model)."""
    rng = np.random.default_rng(seed)
    traces = data.load("r1-traces")["response"].tolist()
    gsm = data.load("gsm8k-train")
    sols = [f"{q}\n{a}" for q, a in zip(gsm["question"], gsm["answer"])]
    m5 = data.load("math500")
    sols += [f"{q}\n{s}" for q, s in zip(m5["problem"], m5["solution"])]
    t = [traces[i] for i in rng.choice(len(traces), size=min(n_traces, len(traces)), replace=False)]
    s = [sols[i] for i in rng.choice(len(sols), size=min(n_solutions, len(sols)), replace=False)]
    return t + s, ["r1-trace"] * len(t) + ["solution"] * len(s)


def group_of(scores_row, words: Sequence[str], groups: Mapping[str, Sequence[str]] = GROUPS,
             min_enrichment: float = 1.5) -> tuple[str, float]:
    """The paper group a feature belongs to by its per-word profile ``p_i(r_j)``: each group's *enrichment* is its
    words' mean share divided by the uniform share 1/|R| (so a group is not favoured for having more words). The
    best group wins if its enrichment is at least ``min_enrichment``; otherwise the feature is ``"mixed"``.
    Returns (group, enrichment)."""
    present = [w for w in words if f"p_{w.replace(' ', '_')}" in scores_row.index]
    if not present:
        return "mixed", 0.0
    uniform = 1.0 / len(present)
    enrich = {}
    for g, ws in groups.items():
        ws = [w for w in ws if w in present]
        if ws:
            enrich[g] = float(np.mean([float(scores_row[f"p_{w.replace(' ', '_')}"]) for w in ws])) / uniform
    g = max(enrich, key=enrich.get)
    return (g if enrich[g] >= min_enrichment else "mixed"), enrich[g]


def generation_metrics(gens, golds: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per generation: tokens, hit_limit, answer, correct, reflection rate, distinct-2, repetition."""
    rows = []
    for i, g in enumerate(gens):
        ans = extract_numeric_answer(g.text)
        rows.append({"item": i, "n_tokens": g.n_tokens, "hit_limit": g.hit_limit, "answer": ans,
                     "correct": float(answers_match(ans, golds[i])) if golds is not None else np.nan,
                     "reflection_rate": reflection_word_rate(g.text), "distinct_2": distinct_n(g.text, 2),
                     "repetition": repetition_rate(g.text, 4), "text": g.text})
    return pd.DataFrame(rows)


def summarize_conditions(df: pd.DataFrame, metrics: Sequence[str] = ("correct", "n_tokens", "reflection_rate",
                                                                       "distinct_2", "repetition"),
                         *, baseline: str = "no steering", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per condition and metric: mean with a bootstrap CI, and the paired difference to ``baseline`` with its CI
    (the same items under every condition)."""
    rows = []
    base = df[df.condition == baseline].sort_values("item")
    for cond, sub in df.groupby("condition", sort=False):
        sub = sub.sort_values("item")
        for m in metrics:
            iv = bootstrap_ci(sub[m].to_numpy(dtype=float), n_boot=n_boot, seed=seed)
            dv = (paired_bootstrap_ci(sub[m].to_numpy(dtype=float), base[m].to_numpy(dtype=float), n_boot=n_boot,
                                      seed=seed) if len(base) == len(sub) else None)
            rows.append({"condition": cond, "metric": m, "mean": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
                         "n": iv.n, "diff_vs_baseline": dv.estimate if dv else np.nan,
                         "diff_low": dv.low if dv else np.nan, "diff_high": dv.high if dv else np.nan})
    return pd.DataFrame(rows)


def steering_experiment(model, tokenizer, sae, layer: int, problems: Sequence[str], golds: Sequence[str],
                        features: Sequence[int], f_max: Mapping[int, float], gammas: Sequence[float], *,
                        random_features: Sequence[int] = (), max_new_tokens: int = 128, batch_size: int = 8,
                        steer_prompt: bool = False, progress: bool = True) -> pd.DataFrame:
    """Greedy generation on the same problems under: no steering, each feature at each ``gamma`` (vector
    ``gamma * f_max * W_dec[i]``, Sec. 5 of the paper), and random-feature controls at each non-zero gamma."""
    prompts = [p + COT_SUFFIX for p in problems]
    runs = [("no steering", None, 0.0)]
    runs += [(f"feature {i} γ={g:g}", i, g) for i in features for g in gammas if g != 0]
    runs += [(f"random {i} γ={g:g}", i, g) for i in random_features for g in gammas if g != 0]
    frames = []
    for name, latent, gamma in tqdm(runs, desc="steering conditions", disable=not progress):
        vec = None if latent is None else sae_feature_vector(sae, latent, f_max[latent], gamma)
        gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, layer=layer if vec is not None else None,
                        vector=vec, from_prompt=steer_prompt, batch_size=batch_size)
        frames.append(generation_metrics(gens, golds).assign(condition=name, latent=latent, gamma=gamma,
                                                             kind=name.split()[0] if latent is not None else "none"))
    return pd.concat(frames, ignore_index=True)


def word_ban_experiment(model, tokenizer, problems: Sequence[str], golds: Sequence[str], words: Sequence[str],
                        control_words: Sequence[str], *, max_new_tokens: int = 128, batch_size: int = 8,
                        progress: bool = True) -> pd.DataFrame:
    """Greedy generation with no ban, with every variant of the reasoning words forbidden (``bad_words_ids``), and
    with an equal number of random frequent words forbidden (control)."""
    prompts = [p + COT_SUFFIX for p in problems]
    frames = []
    for name, ban in (("no ban", None), ("ban reasoning words", ban_logit_bias(tokenizer, words)),
                      ("ban random words", ban_logit_bias(tokenizer, control_words))):
        gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, bad_words_ids=ban,
                        batch_size=batch_size)
        frames.append(generation_metrics(gens, golds).assign(condition=name))
    return pd.concat(frames, ignore_index=True)


def steering_curve(steer: pd.DataFrame, metrics: Sequence[str] = ("reflection_rate", "n_tokens", "distinct_2")
                   ) -> pd.DataFrame:
    """Mean of each metric per steered feature and gamma, with the no-steering baseline as every feature's gamma = 0
    point (tidy: columns feature, gamma, *metrics), for plotting metric-vs-gamma curves."""
    steered = steer[steer.latent.notna()]
    curve = steered.groupby(["kind", "latent", "gamma"])[list(metrics)].mean().reset_index()
    base = steer[steer.latent.isna()][list(metrics)].mean()
    zero = curve[["kind", "latent"]].drop_duplicates().assign(gamma=0.0, **{m: float(base[m]) for m in metrics})
    curve = pd.concat([zero, curve], ignore_index=True)
    curve["feature"] = curve.kind + " " + curve.latent.astype(int).astype(str)
    return curve.sort_values(["feature", "gamma"]).reset_index(drop=True)

