"""Study 1: the corpus, the held-out evaluation windows and the free-generation experiment of notebook 02 (feature
edits and word bans on continuations of real reasoning), with their summaries."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers.core import data, memo
from helpers.core.stats import bootstrap_ci, paired_bootstrap_ci
from helpers.core.steering import feature_edit, generate
from helpers.core.text import chunk_text, distinct_n, repetition_rate

from .answers import answers_match, extract_numeric_answer, reflection_word_rate
from .reason_score import REASONING_WORDS, reasoning_token_sequences, word_key

__all__ = ["COT_SUFFIX", "GROUPS", "ban_logit_bias", "build_reasoning_corpus", "continuation_prompts", "eval_windows",
           "generation_experiment", "generation_metrics", "group_of", "random_frequent_words", "split_traces",
           "summarize_conditions"]


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


def split_traces(n_corpus: int, n_eval: int, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint DeepSeek-R1-distill ``<think>`` traces: ``n_corpus`` for ReasonScore and ``n_eval`` held out for the
    causal tests (a seeded permutation of the 500 traces; raises when more are asked than exist)."""
    traces = data.load("r1-traces")["response"].tolist()
    if n_corpus < 0 or n_eval < 0 or n_corpus + n_eval > len(traces):
        raise ValueError(f"n_corpus + n_eval must be between 0 and {len(traces)} (the traces available), "
                         f"got {n_corpus} + {n_eval}")
    order = np.random.default_rng(seed).permutation(len(traces))
    return [traces[i] for i in order[:n_corpus]], [traces[i] for i in order[n_corpus:n_corpus + n_eval]]


def build_reasoning_corpus(traces: Sequence[str], n_solutions: int, *, chunk_chars: int = 800,
                           seed: int = 0) -> tuple[list[str], list[str]]:
    """Reasoning text for ReasonScore: *whole* R1-distill traces cut into chunks of about ``chunk_chars`` characters
    at sentence boundaries (a 256-token cut of each trace keeps 9 of its 308 "alternatively"), plus ``n_solutions``
    GSM8K / MATH-500 worked solutions; returns ``(texts, sources)``."""
    rng = np.random.default_rng(seed)
    gsm = data.load("gsm8k-train")
    sols = [f"{q}\n{a}" for q, a in zip(gsm["question"], gsm["answer"])]
    m5 = data.load("math500")
    sols += [f"{q}\n{s}" for q, s in zip(m5["problem"], m5["solution"])]
    t = [c for tr in traces for c in chunk_text(tr, chunk_chars)]
    s = [sols[i] for i in rng.choice(len(sols), size=min(n_solutions, len(sols)), replace=False)]
    return t + s, ["r1-trace"] * len(t) + ["solution"] * len(s)


def eval_windows(tokenizer, traces: Sequence[str], length: int, *, seed: int = 0) -> torch.Tensor:
    """One window of ``length`` tokens per held-out trace (seeded random offset; traces shorter than ``length``
    are skipped), stacked ``(n, length)`` for teacher-forced runs without padding."""
    rng = np.random.default_rng(seed)
    rows = []
    for tr in traces:
        ids = tokenizer(tr, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            off = int(rng.integers(0, len(ids) - length + 1))
            rows.append(ids[off:off + length])
    if not rows:
        raise ValueError(f"no held-out trace has {length} tokens: lower eval_length")
    return torch.tensor(rows, dtype=torch.long)


def continuation_prompts(traces: Sequence[str], *, min_chars: int = 300, max_chars: int = 600) -> list[str]:
    """Prompts that make the model continue *mid-reasoning*: each trace cut right after a sentence end between
    ``min_chars`` and ``max_chars`` (the next token starts a sentence, where "Wait", "But", "Maybe" start)."""
    out = []
    for tr in traces:
        cut = max(tr.rfind(". ", min_chars, max_chars), tr.rfind(".\n", min_chars, max_chars))
        if cut > 0:
            out.append(tr[:cut + 1])
    return out


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


@memo.cached("reasoning.generation_experiment", ignore=('progress',))
def generation_experiment(model, tokenizer, layer: int, prompts: Sequence[str], conditions: Sequence, *, sae=None,
                          bans: Mapping[str, list[list[int]]] | None = None, golds: Sequence[str] | None = None,
                          chat: bool = False, max_new_tokens: int = 48, batch_size: int = 8,
                          progress: bool = True) -> pd.DataFrame:
    """Greedy generation on the same prompts with no edit, under each ``Condition`` (an SAE-feature clamp/addition
    at ``layer``, every position from 1 on, prompt included, as the released code's hook), and under each word ban
    ``{name: bad_words_ids}``. One row per (condition, prompt) with :func:`generation_metrics`."""
    runs = [("no edit", None, None)] + [(c.name, c, None) for c in conditions]
    runs += [(name, None, ban) for name, ban in (bans or {}).items()]
    frames = []
    for name, c, ban in tqdm(runs, desc="generation conditions", disable=not progress):
        edit = None if c is None else feature_edit(sae, c.latent, c.value, mode=c.mode)
        gens = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, layer=layer if edit else None,
                        edit=edit, bad_words_ids=ban, batch_size=batch_size, chat=chat)
        frames.append(generation_metrics(gens, golds).assign(condition=name, kind=c.kind if c else "none",
                                                             latent=c.latent if c else -1, gamma=c.gamma if c else 0.0))
    return pd.concat(frames, ignore_index=True)
