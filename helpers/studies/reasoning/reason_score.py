"""Study 1 - reasoning features in SAEs: ReasonScore (Galichin et al. 2025, arXiv 2503.18878) and the tools of its ablations.

The paper ("I Have Covered All the Bases Here: Interpreting Reasoning Features in LLMs via Sparse Autoencoders")
picks a small vocabulary R of words that reasoning models use when they reflect or hesitate ("wait", "hmm", ...),
marks a window of tokens around every occurrence, and scores each SAE latent by how much more it fires inside those
windows than elsewhere, rewarding latents that fire for *all* the words (high entropy over R) over latents that are
single-word detectors. The top latents by ReasonScore are then inspected and steered. Released code:
github.com/AIRI-Institute/SAE-Reasoning (read here through its mirror wantbook-book/SAE-Reasoning, which carries
the README "official implementation"): ``extraction/compute_score.py``, ``extraction/reason_tokens.json``,
``extraction/scripts/compute_score.sh``.

What implements what (equation numbers as in the project brief, Eq. 3-6 of the paper):

* :data:`REASONING_WORDS`: the paper's R (10 words). :func:`reasoning_token_sequences` turns R into token-id
  sequences exactly as ``reason_tokens.json`` + ``compute_score.py`` do.
* :func:`find_word_positions` / :func:`window_masks`: the window sets D_R^W, D_{r_j}^W and D_notR^W.
* :func:`reason_score` (and the streaming :class:`ReasonScoreAccumulator`): Eq. 3 mu(i, D) (mean activation over a
  token set), Eq. 4 p_i(r_j), Eq. 5 normalised entropy H_i, Eq. 6 ReasonScore_i.
* :func:`select_features`: latents above the q-quantile of ReasonScore.
* Evaluation of steering / word-ban runs (other modules of this package): ``answers`` (GSM8K accuracy,
  reflection-word rate), ``experiments`` (word ban via ``bad_words_ids``, the control ban, the experiments);
  text statistics in :mod:`helpers.core.text`, intervals in :mod:`helpers.core.stats`.

Choices where the paper is silent (one line each; "code" = the released code):

* Word variants: ``variants="paper"`` reproduces ``reason_tokens.json`` exactly: lower/Capitalised x with/without a
  leading space for 8 words, but only "But" and "Another" (capitalised, no leading space) for the last two.
  Consequence: with a GPT-2-style BPE, " But" in mid-text (after ". ") is NOT a match; ``variants="all"`` adds it.
* Words outside the paper's list get all four variants under ``variants="paper"``.
* Each variant string is encoded with ``tokenizer.encode(s, add_special_tokens=False)`` (as in the code) and matched
  as an exact token-id sequence; a variant can therefore also match a sub-word piece inside a longer word.
* Overlapping matches: the longest match wins (ties: earlier start, then word order). The code does not resolve
  overlaps (it ORs all matches of all variants); with the 10 paper words overlaps essentially never happen.
* Window: [start - before, end - 1 + after], clipped to the document. Paper: 2 before / 3 after (our default); code:
  ``expand_range 1,2`` (1 before / 2 after) in ``scripts/compute_score.sh``. Pass ``before=1, after=2`` for the code.
* Windows never cross documents here. The code tokenises with ``tokenize_and_concatenate`` (documents packed into
  fixed-length rows), so there a window can spill into the neighbouring document inside a row.
* A token can sit in the windows of several words; it then counts for each of those words' D_{r_j}^W (as in code).
* Outlier tokens: the toolkit's one policy (:func:`helpers.core.activations.ordinary_token_masks`: position 0, the
  attention sink, and tokens above 5x the median residual norm) is passed as ``keep``; excluded tokens leave every
  set. Without it the sink (mean summed activation ~170k vs ~435 for an ordinary token at SmolLM2 block 15) sits
  in D_notR^W, inflates its normaliser ~3x and promotes sink-firing latents (the released code runs a model whose
  BOS it ignores by id; here the sink is not a special token, so it is excluded by position).
* D_notR^W = every non-ignored token outside all windows. ``ignore_token_ids`` (the code ignores BOS/EOS,
  ``--ignore_tokens 128000,128001``) removes tokens from every set after windowing; default: none ignored.
* |R| in the entropy = the words that occur at least once in the corpus (never-seen words have no defined mean and
  are excluded; their p column is 0). The code divides by log(10) always, counting never-seen words.
* If only one word occurs, H_i = 1 (as the code does for a single group); with no reasoning token at all we raise.
* 0 * log 0 = 0 (as in code). A latent that never fires in any word window has all p = 0 and H = 0.
* Normalising sums run over the features passed in (code: over the features of the current chunk). The code adds
  eps = 1e-12 to these sums; we instead define a zero sum to give a zero term.
* alpha: 0.7 (paper and ``compute_score.sh``; the Python function's own default is 1.0).
* The code folds decoder norms into the SAE (``encoder.fold_W_dec_norm()``) before encoding, so its activations are
  scaled by ||W_dec[i]||; pass activations of a norm-folded SAE (or multiply by the decoder norms) to match.
* Activations are assumed non-negative (ReLU / TopK / JumpReLU SAEs); p_i is not defined for signed activations.
* select_features: strictly above ``numpy.quantile(score, q)`` (linear interpolation), NaN scores dropped.
* Answer extraction: "#### X" first, then the last "answer is X", then the last \\boxed{X}, else the last number.
* Text statistics split on whitespace and are case-sensitive except :func:`reflection_word_rate` (case-insensitive).
* Intervals: :mod:`helpers.core.stats` (BCa bootstrap over problems; pairs resampled together).
* Control words: top 200 alphabetic whole words (lower-cased, len >= 3, not in R nor a component word of a phrase
  in R, e.g. "let"), sampled without replacement with ``default_rng(seed)``.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["PAPER_REASON_TOKENS", "REASONING_WORDS", "ReasonScoreAccumulator", "compare_selections", "find_word_positions",
           "reason_score",
           "reasoning_token_sequences", "select_features", "window_masks"]

#: The paper's reasoning vocabulary R (10 words; "let me" is a phrase).
REASONING_WORDS: list[str] = ["alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore", "however",
                              "but", "another"]

#: ``extraction/reason_tokens.json`` of the released code, verbatim (note: only "But" and "Another" for the last two).
PAPER_REASON_TOKENS: list[str] = [
    "alternatively", " alternatively", "Alternatively", " Alternatively", "hmm", " hmm", "Hmm", " Hmm",
    "maybe", " maybe", "Maybe", " Maybe", "wait", " wait", "Wait", " Wait", "perhaps", " perhaps", "Perhaps",
    " Perhaps", "let me", " let me", "Let me", " Let me", "therefore", " therefore", "Therefore", " Therefore",
    "however", " however", "However", " However", "But", "Another",
]


def _paper_groups() -> dict[str, list[str]]:
    # grouped as compute_score.py does: key = str.lstrip().lower()
    groups: dict[str, list[str]] = {}
    for s in PAPER_REASON_TOKENS:
        groups.setdefault(s.lstrip().lower(), []).append(s)
    return groups


def word_key(word: str) -> str:
    return " ".join(word.strip().lower().split())


def _all_variants(word: str) -> list[str]:
    low = word_key(word)
    cap = low[:1].upper() + low[1:]
    return [low, " " + low, cap, " " + cap]


def _variant_strings(word: str, variants: str) -> list[str]:
    if variants == "paper":
        groups = _paper_groups()
        return list(groups.get(word_key(word), _all_variants(word)))
    if variants == "all":
        return _all_variants(word)
    raise ValueError(f"variants must be 'paper' or 'all', not {variants!r}")


def reasoning_token_sequences(tokenizer, words: Sequence[str] = REASONING_WORDS, *,
                              variants: str = "paper") -> dict[str, list[list[int]]]:
    """Word -> the token-id sequences that count as an occurrence of that word.

    ``variants="paper"``: exactly the strings of ``reason_tokens.json`` for the paper's words ("alternatively",
    " alternatively", "Alternatively", " Alternatively", ..., but only "But" and "Another" for "but"/"another"), and
    the four variants for any other word. ``variants="all"``: lower-case and Capitalised, each with and without a
    leading space, for every word. Each string is encoded with ``add_special_tokens=False``; multi-token words
    ("let me") give sequences of several ids. Keys are the lower-cased words; sequences are deduplicated (order of
    first appearance kept).
    """
    out: dict[str, list[list[int]]] = {}
    for word in words:
        key = word_key(word)
        seqs = out.setdefault(key, [])
        for s in _variant_strings(word, variants):
            ids = [int(i) for i in tokenizer.encode(s, add_special_tokens=False)]
            if ids and ids not in seqs:
                seqs.append(ids)
    return out


def _as_int_array(token_ids) -> np.ndarray:
    if isinstance(token_ids, torch.Tensor):
        return token_ids.detach().cpu().reshape(-1).numpy().astype(np.int64)
    return np.asarray(list(token_ids), dtype=np.int64).reshape(-1)


def find_word_positions(token_ids: list[int] | torch.Tensor,
                        sequences: Mapping[str, Sequence[Sequence[int]]]) -> list[tuple[int, int, str]]:
    """Occurrences of the words in one document: sorted ``(start, end_exclusive, word)``.

    A word occurs where any of its token-id sequences appears verbatim. When matches overlap, the longest wins
    (ties: earlier start, then the order of ``sequences``); the others are dropped.
    """
    ids = _as_int_array(token_ids)
    n = len(ids)
    by_first: dict[int, list[tuple[tuple[int, ...], int, str]]] = {}
    for order, (word, seqs) in enumerate(sequences.items()):
        for seq in seqs:
            seq = tuple(int(t) for t in seq)
            if seq:
                by_first.setdefault(seq[0], []).append((seq, order, word))
    if n == 0 or not by_first:
        return []
    starts = np.nonzero(np.isin(ids, np.fromiter(by_first, dtype=np.int64)))[0]
    cands = []
    for p in starts.tolist():
        for seq, order, word in by_first[int(ids[p])]:
            L = len(seq)
            if p + L <= n and (L == 1 or tuple(ids[p:p + L].tolist()) == seq):
                cands.append((-L, p, order, word))
    cands.sort()
    taken = np.zeros(n, dtype=bool)
    out = []
    for negL, p, _, word in cands:
        e = p - negL
        if not taken[p:e].any():
            taken[p:e] = True
            out.append((p, e, word))
    out.sort()
    return out


def window_masks(n_tokens: int, matches: Iterable[tuple[int, int, str]], *, before: int = 2, after: int = 3,
                 words: Iterable[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Boolean masks of the reasoning windows of one document: (D_R^W, {word: D_{r_j}^W}).

    Each match ``(start, end, word)`` covers tokens ``start - before`` .. ``end - 1 + after`` (inclusive), clipped to
    ``[0, n_tokens)``. Paper: ``before=2, after=3``; released code: ``before=1, after=2``. ``words`` adds an all-False
    mask for words without a match (the dict otherwise has only the words that occur).
    """
    if before < 0 or after < 0:
        raise ValueError("before/after must be >= 0")
    deltas: dict[str, np.ndarray] = {w: np.zeros(n_tokens + 1, dtype=np.int64) for w in (words or [])}
    for s, e, w in matches:
        lo, hi = max(int(s) - before, 0), min(int(e) + after, n_tokens)
        if lo >= hi:
            continue
        d = deltas.setdefault(w, np.zeros(n_tokens + 1, dtype=np.int64))
        d[lo] += 1
        d[hi] -= 1
    per_word = {w: torch.from_numpy(np.cumsum(d)[:n_tokens] > 0) for w, d in deltas.items()}
    union = torch.zeros(n_tokens, dtype=torch.bool)
    for m in per_word.values():
        union |= m
    return union, per_word


class ReasonScoreAccumulator:
    """Streaming ReasonScore: feed documents one at a time (activations never need to fit in memory together).

    >>> acc = ReasonScoreAccumulator(sequences, n_features=sae.cfg.d_sae)
    >>> for ids, acts in docs: acc.update(acts, ids)      # acts (T, n_features), ids (T,)
    >>> df = acc.result(alpha=0.7)
    """

    def __init__(self, sequences: Mapping[str, Sequence[Sequence[int]]], n_features: int | None = None, *,
                 before: int = 2, after: int = 3, ignore_token_ids: Iterable[int] | None = None):
        self.sequences = {w: [list(map(int, s)) for s in seqs] for w, seqs in sequences.items()}
        self.words = list(self.sequences)
        self.before, self.after = int(before), int(after)
        self.ignore = np.asarray(sorted(set(int(t) for t in (ignore_token_ids or []))), dtype=np.int64)
        self.n_features = n_features
        self._sums: torch.Tensor | None = None  # (2 + W, F) float64: reason, other, per word
        self._counts = np.zeros(2 + len(self.words), dtype=np.int64)
        self.occurrences = Counter()

    def update(self, acts: torch.Tensor, token_ids, keep: torch.Tensor | None = None) -> None:
        """Add one document: ``acts`` (T, n_features) latent activations, ``token_ids`` its T token ids, ``keep`` an
        optional (T,) boolean mask of the tokens that count (the outlier policy's ordinary tokens; windows are
        still found on the whole document, excluded tokens are then dropped from every set)."""
        ids = _as_int_array(token_ids)
        if acts.ndim != 2 or acts.shape[0] != len(ids):
            raise ValueError(f"acts must be (T, n_features) with T = len(token_ids) = {len(ids)}, "
                             f"got {tuple(acts.shape)}")
        F = acts.shape[1]
        if self.n_features is None:
            self.n_features = F
        if F != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {F}")
        if self._sums is None:
            self._sums = torch.zeros(2 + len(self.words), F, dtype=torch.float64)
        T = len(ids)
        if T == 0:
            return
        matches = find_word_positions(ids, self.sequences)
        self.occurrences.update(w for _, _, w in matches)
        union, per_word = window_masks(T, matches, before=self.before, after=self.after, words=self.words)
        ok = torch.from_numpy(~np.isin(ids, self.ignore)) if len(self.ignore) else torch.ones(T, dtype=torch.bool)
        if keep is not None:
            keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1)
            if len(keep) != T:
                raise ValueError(f"keep mask has {len(keep)} entries for a document of {T} tokens")
            ok = ok & keep
        keep = ok
        masks = torch.stack([union & keep, ~union & keep] + [per_word[w] & keep for w in self.words])
        self._counts += masks.sum(1).numpy()
        a = acts.detach().to("cpu", torch.float32)
        self._sums += (masks.to(torch.float32) @ a).to(torch.float64)

    def result(self, alpha: float = 0.7) -> pd.DataFrame:
        """The ReasonScore table (see :func:`reason_score`)."""
        if self._sums is None or self._counts[0] == 0:
            raise ValueError("no reasoning-word window in the corpus: ReasonScore is undefined")
        sums, counts = self._sums.numpy(), self._counts
        mu_r = sums[0] / counts[0]                                   # Eq. 3, mu(i, D_R^W)
        mu_o = sums[1] / counts[1] if counts[1] else np.zeros_like(mu_r)  # Eq. 3, mu(i, D_notR^W)
        W = len(self.words)
        present = counts[2:] > 0
        mu_w = np.zeros((W, sums.shape[1]))
        mu_w[present] = sums[2:][present] / counts[2:][present, None]  # Eq. 3, mu(i, D_{r_j}^W)
        tot = mu_w.sum(0)
        p = np.divide(mu_w, tot, out=np.zeros_like(mu_w), where=tot > 0)  # Eq. 4
        k = int(present.sum())
        if k >= 2:
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
            H = -plogp.sum(0) / math.log(k)                                # Eq. 5
            H = np.clip(H, 0.0, 1.0) + 0.0  # + 0.0 turns -0.0 into 0.0
        else:
            H = np.ones_like(mu_r)
        sr, so = mu_r.sum(), mu_o.sum()
        term_r = mu_r / sr if sr != 0 else np.zeros_like(mu_r)
        term_o = mu_o / so if so != 0 else np.zeros_like(mu_o)
        score = term_r * H ** alpha - term_o                                # Eq. 6
        df = pd.DataFrame({"score": score, "mu_reason": mu_r, "mu_other": mu_o, "entropy": H})
        for j, w in enumerate(self.words):
            df["p_" + w.replace(" ", "_")] = p[j]
        df.index.name = "feature"
        df.attrs.update({
            "alpha": alpha, "before": self.before, "after": self.after,
            "n_reason_tokens": int(counts[0]), "n_other_tokens": int(counts[1]),
            "word_tokens": {w: int(c) for w, c in zip(self.words, counts[2:])},
            "word_occurrences": {w: int(self.occurrences.get(w, 0)) for w in self.words},
            "entropy_words": [w for w, ok in zip(self.words, present) if ok],
        })
        return df


def _split_docs(acts, token_ids, doc_index):
    """Yield (acts_doc, ids_doc) pairs from the accepted input layouts."""
    if isinstance(acts, (list, tuple)):
        if len(acts) != len(token_ids):
            raise ValueError(f"{len(acts)} activation tensors but {len(token_ids)} token-id documents")
        yield from zip(acts, token_ids)
        return
    if acts.ndim == 3:  # (batch, seq, F) with token_ids (batch, seq): one document per row, as in the code
        for a, ids in zip(acts, token_ids):
            yield a, ids
        return
    if acts.ndim != 2:
        raise ValueError(f"acts must be (n_tokens, n_features), (batch, seq, n_features) or a list; got {acts.ndim}D")
    nested = not isinstance(token_ids, torch.Tensor) and len(token_ids) > 0 and \
        isinstance(token_ids[0], (list, tuple, np.ndarray, torch.Tensor))
    if nested:
        lengths = [len(t) for t in token_ids]
        if sum(lengths) != acts.shape[0]:
            raise ValueError(f"documents hold {sum(lengths)} tokens but acts has {acts.shape[0]} rows")
        for a, ids in zip(torch.split(acts, lengths), token_ids):
            yield a, ids
        return
    ids = _as_int_array(token_ids)
    if len(ids) != acts.shape[0]:
        raise ValueError(f"{len(ids)} token ids but acts has {acts.shape[0]} rows")
    if doc_index is None:
        yield acts, ids
        return
    d = _as_int_array(doc_index)
    cuts = np.nonzero(np.diff(d))[0] + 1
    bounds = [0, *cuts.tolist(), len(d)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        yield acts[lo:hi], ids[lo:hi]


def reason_score(acts: torch.Tensor | list[torch.Tensor], token_ids: list, sequences: Mapping[str, Sequence[Sequence[int]]],
                 *, alpha: float = 0.7, before: int = 2, after: int = 3, doc_index=None,
                 ignore_token_ids: Iterable[int] | None = None, keep: Sequence[torch.Tensor] | None = None) -> pd.DataFrame:
    """ReasonScore of every SAE latent (Galichin et al. 2025, Eq. 3-6).

    Inputs: ``acts`` are SAE latent activations, either

    * one ``(n_tokens, n_features)`` tensor with ``token_ids`` a list of per-document id lists whose lengths add up
      to ``n_tokens`` (or a flat id list/tensor: one document, or several when ``doc_index`` (n_tokens,) gives each
      row's document, as in :class:`helpers.core.activations.ActivationStore`), or
    * a list of per-document ``(T_i, n_features)`` tensors with ``token_ids`` the matching per-document ids, or
    * a ``(batch, seq, n_features)`` tensor with ``token_ids`` ``(batch, seq)`` (one document per row).

    Windows (``before``/``after``, see :func:`window_masks`) never cross documents. With
    D_{r_j}^W the tokens in the windows of word r_j, D_R^W their union and D_notR^W all other tokens:

    * Eq. 3: mu(i, D) = (1/|D|) sum_{t in D} a_i(t), for D in {D_R^W, D_notR^W, D_{r_j}^W}.
    * Eq. 4: p_i(r_j) = mu(i, D_{r_j}^W) / sum_{j'} mu(i, D_{r_j'}^W).
    * Eq. 5: H_i = -(1 / log |R|) sum_j p_i(r_j) log p_i(r_j), with 0 log 0 = 0 and |R| = number of words of
      ``sequences`` that occur at least once in the corpus (never-seen words are excluded; the released code keeps
      them, i.e. always divides by log 10).
    * Eq. 6: ReasonScore_i = mu(i, D_R^W) / sum_k mu(k, D_R^W) * H_i^alpha - mu(i, D_notR^W) / sum_k mu(k, D_notR^W).

    Returns a DataFrame indexed by feature with columns ``score``, ``mu_reason``, ``mu_other``, ``entropy`` and
    ``p_<word>`` per word (spaces -> "_", e.g. ``p_let_me``); ``df.attrs`` holds token counts and word occurrences.
    ``ignore_token_ids`` are dropped from every set (the code ignores BOS/EOS). See the module docstring for the
    remaining choices and the differences from the released code.
    """
    acc = ReasonScoreAccumulator(sequences, before=before, after=after, ignore_token_ids=ignore_token_ids)
    docs = list(_split_docs(acts, token_ids, doc_index))
    if keep is not None and len(keep) != len(docs):
        raise ValueError(f"keep has {len(keep)} masks for {len(docs)} documents (one per document)")
    for j, (a, ids) in enumerate(docs):
        acc.update(a, ids, None if keep is None else keep[j])
    return acc.result(alpha=alpha)


def compare_selections(scores: Mapping[str, pd.DataFrame], reference: str, q: float = 0.997, *,
                       top: int = 100) -> pd.DataFrame:
    """How a choice (window convention, sink handling, ...) changes the selection: for each named score table,
    the number of selected features, how many of the ``reference`` selection it shares, and the Spearman rank
    correlation of the scores with the reference's over all features and over the union of both top-``top``."""
    from scipy.stats import spearmanr

    if reference not in scores:
        raise KeyError(f"reference {reference!r} is not one of {list(scores)}")
    ref = scores[reference]["score"]
    ref_sel = set(select_features(scores[reference], q))
    rows = []
    for name, df in scores.items():
        sel = select_features(df, q)
        s = df["score"].reindex(ref.index)
        union = sorted(set(ref.nlargest(top).index) | set(s.nlargest(top).index))
        rows.append({"scoring": name, "n_selected": len(sel), "shared_with_reference": len(ref_sel & set(sel)),
                     "spearman_all": float(spearmanr(ref, s, nan_policy="omit").statistic),
                     f"spearman_top{top}": float(spearmanr(ref[union], s[union]).statistic),
                     "top5": sel[:5]})
    return pd.DataFrame(rows).set_index("scoring")


def select_features(scores: pd.DataFrame, q: float = 0.997) -> list[int]:
    """Features whose ReasonScore is strictly above the ``q``-quantile of all scores, best first."""
    s = scores["score"].dropna()
    if s.empty:
        return []
    thr = float(np.quantile(s.to_numpy(dtype=float), q))
    sel = s[s > thr].sort_values(ascending=False, kind="stable")
    return [int(i) for i in sel.index]


