"""Scoring feature explanations by detection: given an explanation, can a judge tell held-out contexts where the
feature fires from contexts where it does not? (EleutherAI's sae-auto-interp / delphi "detection" scorer.)

* :func:`detection_examples` — per latent, the contexts an explainer may read (the strongest activations), held-out
  activating contexts (the next strongest; delphi samples activation quantiles, we take the next ones — one line of
  choice) and non-activating contexts (random windows whose centre token has activation 0), from a
  :class:`~helpers.core.features.TokenTable`;
* :func:`detection_scores` — a judge (any backend of :mod:`helpers.core.llm`; through the llama.cpp server
  locally) reads the explanation and one context per call (delphi shows several; one per call lets a small judge
  answer by next-token likelihood) and gives P(fires). Reported per latent: **balanced accuracy** at
  ``threshold`` and **AUROC** of P(fires) (threshold-free: a small judge biased toward "yes" still ranks), the
  share of the judge's next-token mass on the two labels, and unparsed answers (generation backends), counted;
* :func:`shuffled_explanations` — the control: every latent scored with another latent's explanation.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from .features import TokenTable, top_contexts
from .sae import encode

__all__ = ["DETECTION_LABELS", "detection_examples", "detection_prompt", "detection_scores", "shuffled_explanations"]

#: Judge labels: "1" the feature fires in the text, "0" it does not (single tokens in every tokenizer used here).
DETECTION_LABELS = ("1", "0")


def _window_text(tokenizer, token_ids: Sequence[int]) -> str:
    return tokenizer.decode(list(token_ids)).replace("\n", " ").strip()


@torch.no_grad()
def detection_examples(sae, table: TokenTable, latents: Sequence[int], tokenizer, *, n_explain: int = 6,
                       n_pos: int = 5, n_neg: int = 5, window: tuple[int, int] = (10, 4), seed: int = 0,
                       max_tries: int = 50) -> dict[int, dict]:
    """Per latent: ``explain`` (the ``n_explain`` strongest contexts, for the explainer), ``pos`` (texts of the next
    ``n_pos`` strongest, held out from the explainer) and ``neg`` (``n_neg`` texts of random windows whose centre
    token does not activate the latent). Latents with too few activations get shorter ``pos`` lists."""
    if min(n_explain, n_pos, n_neg) < 1:
        raise ValueError(f"n_explain, n_pos and n_neg must be >= 1, got {n_explain}, {n_pos}, {n_neg}.")
    lat = [int(i) for i in latents]
    ctx = top_contexts(sae, table, lat, n=n_explain + n_pos, window=window, tokenizer=tokenizer)
    docs = table.doc_tokens()
    rng = np.random.default_rng(seed)
    out = {}
    for i in lat:
        neg: list[str] = []
        for _ in range(max_tries):
            if len(neg) >= n_neg:
                break
            rows = torch.as_tensor(rng.choice(len(table.x), size=min(4 * n_neg, len(table.x)), replace=False))
            a = encode(sae, table.x[rows])[:, i]
            for r in rows[a <= 0].tolist():
                d, p = int(table.doc_index[r]), int(table.position[r])
                toks = [docs[d][q] for q in range(p - window[0], p + window[1] + 1) if q in docs[d]]
                neg.append(_window_text(tokenizer, toks))
                if len(neg) >= n_neg:
                    break
        out[i] = {"explain": ctx[i][:n_explain],
                  "pos": [_window_text(tokenizer, c["token_ids"]) for c in ctx[i][n_explain:]],
                  "neg": neg}
    return out


def detection_prompt(explanation: str) -> tuple[str, str]:
    """(shared prefix, per-text template with ``{text}``) of the detection question (our wording)."""
    prefix = ("A feature inside a language model has this explanation:\n"
              f"\"{explanation.strip()}\"\n\n"
              "Does this feature fire somewhere in the text below? Answer 1 for yes or 0 for no.\n\nText: ")
    return prefix, "{text}\n\nAnswer (1 or 0):"


def _p_fires_generate(backend, prefix: str, texts: list[str], template: str) -> tuple[np.ndarray, int]:
    replies = backend.complete_many([prefix + template.format(text=t) for t in texts], max_tokens=4,
                                    return_errors=True)
    p, bad = [], 0
    for r in replies:
        s = r.strip() if isinstance(r, str) else ""
        if s[:1] in DETECTION_LABELS:
            p.append(1.0 if s[0] == "1" else 0.0)
        else:  # unparsed: counted, and scored as a wrong answer at the threshold (0.5 ranks it in the middle)
            p.append(0.5)
            bad += 1
    return np.array(p), bad


def detection_scores(backend, explanations: dict[int, str], examples: dict[int, dict], *,
                     threshold: float = 0.5) -> pd.DataFrame:
    """Detection score of every explanation (see the module docstring). ``examples`` from
    :func:`detection_examples`. One row per latent: ``balanced_accuracy``, ``auroc``, ``n_pos``, ``n_neg``,
    ``label_mass`` (likelihood backends) and ``unparsed`` (generation backends)."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
    missing = sorted(set(explanations) - set(examples))
    if missing:
        raise KeyError(f"no detection examples for latents {missing[:8]}; build them with detection_examples().")
    rows = []
    for i, expl in explanations.items():
        pos, neg = list(examples[i]["pos"]), list(examples[i]["neg"])
        texts, y = pos + neg, np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        row = {"latent": int(i), "explanation": expl, "n_pos": len(pos), "n_neg": len(neg)}
        if not pos or not neg:
            rows.append({**row, "balanced_accuracy": np.nan, "auroc": np.nan, "label_mass": np.nan, "unparsed": 0})
            continue
        prefix, template = detection_prompt(expl)
        if hasattr(backend, "label_distribution"):
            probs, mass = backend.label_distribution(prefix, [template.format(text=t) for t in texts],
                                                     list(DETECTION_LABELS))
            p, bad, m = probs[:, 0], 0, float(np.mean(mass))
        else:
            p, bad = _p_fires_generate(backend, prefix, texts, template)
            m = np.nan
        rows.append({**row, "balanced_accuracy": float(balanced_accuracy_score(y, p >= threshold)),
                     "auroc": float(roc_auc_score(y, p)), "label_mass": m, "unparsed": bad})
    return pd.DataFrame(rows)


def shuffled_explanations(explanations: dict[int, str], seed: int = 0) -> dict[int, str]:
    """The control: each latent gets another latent's explanation (a random derangement; needs >= 2 latents)."""
    keys = list(explanations)
    if len(keys) < 2:
        raise ValueError("the shuffled-explanation control needs at least 2 explanations.")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(len(keys))
        if not np.any(perm == np.arange(len(keys))):
            return {k: explanations[keys[j]] for k, j in zip(keys, perm)}
