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
* :func:`shuffled_explanations` — the control: every latent scored with another latent's explanation;
* :func:`llm_explanations` — explanations written by an LLM from the explainer contexts (delphi's explainer: the
  activating tokens marked in each context, one short description asked for); empty or unusable answers counted;
* :func:`neuronpedia_features` — feature data (top contexts with activations, logit-lens tokens, explanations and
  their scores) in the SAEDashboard / Neuronpedia JSON layout, the file the notebook's browser reads too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from .features import TokenTable, top_contexts
from .sae import encode

__all__ = ["CONTROL", "DETECTION_LABELS", "EXPLAINER_SYSTEM", "detection_examples", "detection_prompt", "detection_sample",
           "detection_scores", "explain_and_score", "explainer_prompt", "explanation_auroc", "GENERIC_EXPLANATIONS", "llm_explanations",
           "neuronpedia_features",
           "report_from_export", "shuffled_explanations"]

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


#: The explainer's instructions (our wording, after delphi's default explainer prompt: marked activating tokens,
#: one concise description, no list of examples back).
EXPLAINER_SYSTEM = (
    "You explain features of a language model. You see short texts in which one feature is active; the tokens where "
    "it is most active are marked <<like this>>. Write one specific phrase (at most 12 words) naming what the marked "
    "tokens have in common: the exact word or words if they repeat, otherwise the kind of word, the topic or the "
    "pattern. Never answer with a generic phrase such as \"a word\" or \"a token\". Answer in the form\n"
    "[EXPLANATION]: <phrase>\n\n"
    "Examples:\n\n"
    "Texts:\n1. She paid <<$>>40 for it\n2. It costs <<$>>12 a month\n3. a <<$>>5 bill\n"
    "[EXPLANATION]: the dollar sign before a price\n\n"
    "Texts:\n1. the exam is in <<March>>\n2. from <<October>> to <<May>>\n3. born on 3 <<June>> 1990\n"
    "[EXPLANATION]: names of months\n\n"
    "Texts:\n1. his <<guitar>> solo\n2. she plays the <<piano>> and the <<violin>>\n3. a <<drum>> kit\n"
    "[EXPLANATION]: musical instruments")

#: Answers that name no pattern: counted as unusable, like an empty answer (a 1.5B explainer gives "A word" often).
GENERIC_EXPLANATIONS = frozenset({"a word", "word", "words", "a token", "token", "tokens", "a phrase", "phrase",
                                  "a pattern", "pattern", "a kind of token", "text", "a text", "a word or phrase"})


def explainer_prompt(contexts: Sequence[dict], tokenizer, *, mark_fraction: float = 0.5) -> str:
    """The user message for one latent: each context with the tokens whose activation is at least ``mark_fraction``
    of that context's peak marked ``<<...>>`` (delphi marks activating tokens the same way)."""
    if not contexts:
        raise ValueError("no contexts to explain: the latent never fires on the table.")
    lines = []
    for n, c in enumerate(contexts, 1):
        peak = max(c["acts"]) if c["acts"] else 0.0
        parts = []
        for tid, a in zip(c["token_ids"], c["acts"]):
            t = tokenizer.decode([tid])
            parts.append(f"<<{t.strip() or t}>>" if peak > 0 and a >= mark_fraction * peak else t)
        lines.append(f"{n}. " + "".join(parts).replace("\n", " ").strip())
    return "Texts:\n" + "\n".join(lines) + "\n\nWhat does the feature detect?"


def _clean_explanation(reply) -> str:
    """The explanation in a reply: the text after its last ``[EXPLANATION]:`` (else its first line), without a
    leading 'Explanation:' / quotes; '' when nothing usable is left or it is generic (:data:`GENERIC_EXPLANATIONS`)."""
    if not isinstance(reply, str):
        return ""
    text = reply.strip()
    if "[EXPLANATION]:" in text:
        text = text.rsplit("[EXPLANATION]:", 1)[1]
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    for pre in ("explanation:", "answer:", "the feature detects", "feature:"):
        if line.lower().startswith(pre):
            line = line[len(pre):].strip(" :")
    line = line.strip(" *.")
    if line.count('"') % 2 or (line.startswith('"') and line.endswith('"')):  # unbalanced or enclosing quotes
        line = line.strip('"').strip(" *.")
    if line.lower() in GENERIC_EXPLANATIONS:
        return ""
    return line if len(line) >= 2 and any(ch.isalpha() for ch in line) else ""


def llm_explanations(backend, contexts: dict[int, Sequence[dict]], tokenizer, *, max_tokens: int = 32
                     ) -> tuple[dict[int, str], dict[str, int]]:
    """Explanations written by ``backend`` (any chat backend of :mod:`helpers.core.llm`, e.g. Qwen2.5-Coder-1.5B
    through the llama.cpp server) from each latent's explainer contexts (:func:`detection_examples` ``explain``).
    Greedy decoding; calls are cached on disk by the backend. Returns ``(explanations, counts)``: a latent whose
    answer is empty, has no letters or failed is counted in ``counts["unusable"]`` and gets no explanation (it is
    reported, never silently dropped); ``counts["asked"]`` is the number of latents asked."""
    ids = [int(i) for i, c in contexts.items() if c]
    msgs = [[{"role": "system", "content": EXPLAINER_SYSTEM},
             {"role": "user", "content": explainer_prompt(contexts[i], tokenizer)}] for i in ids]
    replies = backend.complete_many(msgs, max_tokens=max_tokens, return_errors=True) if msgs else []
    out, bad = {}, 0
    for i, r in zip(ids, replies):
        e = _clean_explanation(r)
        if e:
            out[i] = e
        else:
            bad += 1
    return out, {"asked": len(ids), "unusable": bad, "no_contexts": len(contexts) - len(ids)}


def neuronpedia_features(model_id: str, sae_id: str, layer: int, latents: Sequence[int], contexts: dict[int, Sequence[dict]],
                         lens: dict[int, dict], explanations: dict[str, dict[int, str]], scores: pd.DataFrame | None,
                         tokenizer, *, frequency: torch.Tensor | None = None) -> dict:
    """Feature data in the layout of Neuronpedia's feature export / SAEDashboard's JSON (one object per feature:
    ``modelId``, ``layer`` (the SAE id), ``index``, ``activations`` with ``tokens`` / ``values`` / ``maxValue`` /
    ``maxValueTokenIndex``, ``pos_str`` / ``pos_values`` and ``neg_str`` / ``neg_values`` (decoder logit lens),
    ``explanations`` with ``description`` / ``explanationModelName`` / ``scores``, ``frac_nonzero``), wrapped as
    ``{"modelId", "saeId", "hookName", "features": [...]}``. ``explanations``: explainer name -> {latent: text};
    ``scores``: rows of (explainer, latent, auroc, balanced_accuracy) from :func:`detection_scores`."""
    feats = []
    sc = scores.set_index(["explainer", "latent"]) if scores is not None and len(scores) else None
    for i in [int(x) for x in latents]:
        acts = []
        for c in contexts.get(i, []):
            toks = [tokenizer.decode([t]) for t in c["token_ids"]]
            vals = [float(a) for a in c["acts"]]
            acts.append({"tokens": toks, "values": vals, "maxValue": max(vals) if vals else 0.0,
                         "maxValueTokenIndex": int(np.argmax(vals)) if vals else 0})
        lz = lens.get(i, {})
        expl = []
        for name, by in explanations.items():
            if i in by:
                entry = {"description": by[i], "explanationModelName": name, "typeName": "oai_token-act-pair"
                         if name not in ("offline tokens", "offline label") else "offline", "scores": []}
                if sc is not None and (name, i) in sc.index:
                    r = sc.loc[(name, i)]
                    entry["scores"] = [{"scorer": "detection", "auroc": _num(r.get("auroc")),
                                        "balanced_accuracy": _num(r.get("balanced_accuracy"))}]
                expl.append(entry)
        feats.append({"modelId": model_id, "layer": sae_id, "index": str(i), "activations": acts,
                      "pos_str": list(lz.get("promoted", [])), "pos_values": [float(v) for v in lz.get("promoted_values", [])],
                      "neg_str": list(lz.get("suppressed", [])), "neg_values": [float(v) for v in lz.get("suppressed_values", [])],
                      "explanations": expl,
                      "frac_nonzero": float(frequency[i]) if frequency is not None else None})
    return {"modelId": model_id, "saeId": sae_id, "hookName": f"blocks.{layer}.hook_resid_post", "features": feats}


def _num(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def report_from_export(data: dict, explainer: str | None = None) -> dict[int, dict]:
    """The exported Neuronpedia-layout file (:func:`neuronpedia_features`) as the latent -> {contexts, lens, label,
    similarity} mapping that :func:`~helpers.core.features.static_report` and
    :func:`~helpers.core.widgets.feature_browser` render: the browser and its static rendering read the same file.
    ``label`` is ``explainer``'s explanation (default: the best-scoring one), ``similarity`` its detection AUROC."""
    out = {}
    for f in data["features"]:
        ctx = [{"tokens": a["tokens"], "acts": a["values"], "peak": a["maxValueTokenIndex"], "max_act": a["maxValue"]}
               for a in f["activations"]]
        ex = [e for e in f["explanations"] if explainer is None or e["explanationModelName"] == explainer]

        def auroc(e):
            v = explanation_auroc(e)
            return -1.0 if v is None else v

        best = max(ex, key=auroc) if ex else None
        label = f"{best['description']} [{best['explanationModelName']}]" if best else "(no explanation)"
        out[int(f["index"])] = {"contexts": ctx, "lens": {"promoted": f["pos_str"], "suppressed": f["neg_str"]},
                                "label": label, "similarity": max(auroc(best), 0.0) if best else 0.0,
                                "score_name": "detection AUROC"}
    return out


def explanation_auroc(entry: dict) -> float | None:
    """The detection AUROC of one explanation entry of the export (its first score), or None when it has no
    score or the score is NaN (a latent whose detection set had one class)."""
    scores = entry.get("scores") or []
    v = scores[0].get("auroc") if scores else None
    return None if v is None or math.isnan(float(v)) else float(v)


CONTROL = "LLM, shuffled (control)"


def explain_and_score(backend, sae, table: TokenTable, latents: Sequence[int], tokenizer, *, offline: dict[str, dict[int, str]],
                      n_explain: int = 6, n_pos: int = 5, n_neg: int = 5, seed: int = 0) -> dict:
    """The whole comparison of notebook 01: detection examples for ``latents``, explanations by ``backend`` (the
    LLM explainer) plus the ``offline`` ones given (name -> {latent: text}; a callable ``f(contexts) -> text`` is
    applied to each latent's explainer contexts), the shuffled-LLM control, and every set scored by detection with
    ``backend`` as the judge. Returns ``examples``, ``sets`` (name -> {latent: text}), ``scores`` (one row per
    explainer x latent) and ``counts`` (LLM answers asked / unusable)."""
    lat = [int(i) for i in latents]
    if len(lat) < 2:
        raise ValueError(f"explain_and_score needs at least 2 latents (the control swaps explanations), got {len(lat)}.")
    ex = detection_examples(sae, table, lat, tokenizer, n_explain=n_explain, n_pos=n_pos, n_neg=n_neg, seed=seed)
    llm_expl, counts = llm_explanations(backend, {i: ex[i]["explain"] for i in lat}, tokenizer)
    sets: dict[str, dict[int, str]] = {"LLM": llm_expl}
    for name, e in offline.items():
        sets[name] = ({i: e(ex[i]["explain"], i) for i in lat if ex[i]["explain"]} if callable(e)
                      else {i: e[i] for i in lat if i in e})
    sets[CONTROL] = shuffled_explanations(llm_expl, seed=seed) if len(llm_expl) >= 2 else {}
    scores = pd.concat([detection_scores(backend, e, ex).assign(explainer=n) for n, e in sets.items() if e],
                       ignore_index=True)
    return {"examples": ex, "sets": sets, "scores": scores, "counts": counts}


def detection_sample(frequency: torch.Tensor, candidates: Sequence[int], n: int, *, band: tuple[float, float] = (1e-3, 5e-2)
                     ) -> list[int]:
    """The first ``n`` of ``candidates`` (in their order) whose firing frequency lies in ``band`` (delphi scores
    latents that are neither dead nor dense); when the band holds fewer than ``n``, the other live candidates fill
    up the sample, nearest to the band first (our choice: small SAEs and stand-ins have few latents in the band)."""
    if n < 2:
        raise ValueError(f"a detection sample needs n >= 2 latents (the control swaps explanations), got {n}.")
    freq = {int(i): float(frequency[int(i)]) for i in candidates}
    inside = [i for i in freq if band[0] < freq[i] < band[1]]
    if len(inside) >= n:
        return inside[:n]
    dist = lambda f: (np.log10(band[0]) - np.log10(f)) if f <= band[0] else (np.log10(f) - np.log10(band[1]))
    rest = sorted((i for i in freq if i not in inside and freq[i] > 0), key=lambda i: dist(freq[i]))
    return (inside + rest)[:n]
