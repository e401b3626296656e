"""Study 3: scoring responses with a rubric (prompt, parsing, decision rules) and QWK summaries."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.stats import Interval, bootstrap_ci, qwk_ci, stratified_mean_ci

from .decision import apply_cutpoints, expected_score
from .items import ReadmeInfo
from .prompts import prompt

__all__ = ["ScoreResult", "batch_calibrate", "decide", "evaluate", "mean_over_items", "parse_score", "score_responses",
           "scoring_prompt"]


# ------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------
def _truncate_words(text: str, n: int | None) -> str:
    """The first ``n`` words of ``text`` (``[...]`` marks a cut); ``n`` None or <= 0: the whole text."""
    words = text.split()
    return text.strip() if n is None or n <= 0 or len(words) <= n else " ".join(words[:n]) + " [...]"


def scoring_prompt(info: ReadmeInfo, rubric: str | None, *, passage_words: int = 120,
                   rubric_words: int | None = 400) -> tuple[str, str]:
    """The scoring prompt as (shared prefix, per-response template with ``{response}``): passage excerpt
    (first ``passage_words`` words; the paper is silent, long passages would dominate a small model's
    context), question, rubric (first ``rubric_words`` words; ``None``: the whole rubric, e.g. an expert rubric
    whose item-specific part comes after the generic scale) or none, then the answer and the instruction."""
    parts = [prompt("score_intro", score_min=info.score_min, score_max=info.score_max)]
    if info.passage and passage_words > 0:
        parts.append("Reading passage (excerpt):\n" + _truncate_words(info.passage, passage_words))
    parts.append("Question:\n" + _truncate_words(info.stem, 250))
    if rubric:
        parts.append("Scoring rubric:\n" + _truncate_words(rubric, rubric_words))
    prefix = "\n\n".join(parts) + "\n\nStudent answer:\n"
    tail = "\n\n" + prompt("score_question", score_min=info.score_min, score_max=info.score_max)
    return prefix, "{response}" + tail


_DIGIT = re.compile(r"(?<![\d.])(\d+)(?![\d.])")


def parse_score(text: str, lo: int, hi: int) -> int | None:
    """The score in a generated reply: the first stand-alone integer in ``lo..hi`` after an optional
    "score"/"Score:" cue; ``None`` if there is none (counted as unparsed, never dropped)."""
    if not isinstance(text, str):
        return None
    m = re.search(r"score\s*(?:is|of|:|=)?\s*(\d+)", text, re.I)
    cands = [m.group(1)] if m else _DIGIT.findall(text)
    for c in cands:
        v = int(c)
        if lo <= v <= hi:
            return v
        break
    return None


def batch_calibrate(probs: np.ndarray) -> np.ndarray:
    """Batch calibration (Zhou et al., "Batch Calibration: Rethinking Calibration for In-Context Learning and
    Prompt Engineering", ICLR 2024, Eq. 6): subtract each label's mean log-probability over the batch of scored
    responses, removing the prompt's contextual bias toward one label; uses no gold scores."""
    lp = np.log(np.clip(probs, 1e-12, None))
    lp = lp - lp.mean(0, keepdims=True)
    p = np.exp(lp - lp.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def decide(probs: np.ndarray, labels, *, cutpoints=None) -> dict[str, np.ndarray]:
    """Scores under every decision rule on the same probabilities, to report them side by side: "argmax",
    "calibrated" (:func:`batch_calibrate` over these rows), "expected" (rounded expected score) and, given
    ``cutpoints`` (:func:`~helpers.studies.scoring.decision.fit_cutpoints` on train responses), "cutpoints"."""
    probs = np.asarray(probs, float)
    lab = np.asarray(labels, int)
    out = {"argmax": lab[probs.argmax(1)], "calibrated": lab[batch_calibrate(probs).argmax(1)],
           "expected": np.clip(np.floor(expected_score(probs, lab) + 0.5), lab[0], lab[-1]).astype(int)}
    if cutpoints is not None:
        out["cutpoints"] = apply_cutpoints(probs, cutpoints, lab)
    return out


@dataclass
class ScoreResult:
    """Predictions for a list of responses; ``pred`` is -1 where the answer could not be parsed."""

    pred: np.ndarray
    parsed: np.ndarray
    probs: np.ndarray | None = None  # (n, n_labels) for likelihood scoring
    label_mass: np.ndarray | None = None  # share of next-token mass on the labels
    raw: list[str] | None = None  # generated replies


def score_responses(backend, info: ReadmeInfo, rubric: str | None, responses: list[str], *,
                    method: str = "likelihood", decision: str = "calibrated", response_words: int = 80,
                    passage_words: int = 120, rubric_words: int | None = 400, max_tokens: int = 8,
                    progress: bool = False, cutpoints=None) -> ScoreResult:
    """Score ``responses`` with ``rubric`` (``None``: question only).

    ``method="likelihood"``: constrained next-token likelihood over the labels ``lo..hi`` (one forward pass per
    response with the shared prefix's KV cache; local backend). ``decision`` turns the distribution into a
    score: "calibrated" (:func:`batch_calibrate`, then argmax: the choice here, since a small model's raw argmax
    collapses onto one label), "argmax", "expected" (the probability-weighted mean, rounded), or "cutpoints"
    (the expected score cut at ``cutpoints`` fitted on train responses, :func:`fit_cutpoints`).
    ``rubric_words=None`` passes the whole rubric (no cap).
    ``method="generate"``: greedy generation, parsed by :func:`parse_score`; unparsed replies get ``-1``.
    """
    prefix, template = scoring_prompt(info, rubric, passage_words=passage_words, rubric_words=rubric_words)
    suffixes = [template.format(response=_truncate_words(r, response_words) or "(blank)") for r in responses]
    labels = info.labels
    if method == "likelihood":
        if not hasattr(backend, "label_distribution"):
            raise ValueError(f"method='likelihood' needs a local backend (LocalChat); {type(backend).__name__} "
                             f"only generates: use method='generate'.")
        probs, mass = backend.label_distribution(prefix, suffixes, [str(x) for x in labels], progress=progress)
        if decision == "argmax":
            pred = np.asarray(labels)[probs.argmax(1)]
        elif decision == "calibrated":
            pred = np.asarray(labels)[batch_calibrate(probs).argmax(1)]
        elif decision == "expected":
            pred = np.clip(np.floor(probs @ np.asarray(labels, float) + 0.5), labels[0], labels[-1]).astype(int)
        elif decision == "cutpoints":
            if cutpoints is None:
                raise ValueError("decision='cutpoints' needs cutpoints= (fit them on train responses with "
                                 "fit_cutpoints).")
            pred = apply_cutpoints(probs, cutpoints, labels)
        else:
            raise ValueError(f"decision must be 'calibrated', 'argmax', 'expected' or 'cutpoints', got {decision!r}.")
        return ScoreResult(pred=pred.astype(int), parsed=np.ones(len(pred), bool), probs=probs, label_mass=mass)
    if method != "generate":
        raise ValueError(f"method must be 'likelihood' or 'generate', got {method!r}.")
    replies = backend.complete_many([prefix + s for s in suffixes], max_tokens=max_tokens, return_errors=True,
                                    progress=progress)
    texts = [r if isinstance(r, str) else "" for r in replies]
    vals = [parse_score(t, labels[0], labels[-1]) for t in texts]
    parsed = np.array([v is not None for v in vals])
    pred = np.array([v if v is not None else -1 for v in vals], int)
    return ScoreResult(pred=pred, parsed=parsed, raw=[r if isinstance(r, str) else f"ERROR: {r}" for r in replies])




def evaluate(gold, pred, lo: int, hi: int, *, n_boot: int = 1000, seed: int = 0,
             unparsed_as: str = "min") -> dict[str, Any]:
    """QWK (full range), accuracy, MAE and coverage with bootstrap CIs (:mod:`helpers.core.stats`, BCa over
    responses). ``pred`` may hold ``None``/NaN/-1 for answers that could not be parsed: they are counted
    (``coverage``, ``n_unparsed``) and, never dropped, scored as ``unparsed_as`` ("min": the lowest score, the choice
    here; "max"; or "mode": the gold mode). ``_interval`` keeps the QWK interval with its draws for
    :func:`mean_over_items`."""
    gold = np.asarray(gold, int)
    raw = pd.to_numeric(pd.Series(list(pred), dtype=object), errors="coerce").to_numpy(float)
    ok = np.isfinite(raw) & (raw >= lo) & (raw <= hi)
    fill = {"min": lo, "max": hi, "mode": int(pd.Series(gold).mode().iloc[0]) if len(gold) else lo}
    if unparsed_as not in fill:
        raise ValueError(f"unparsed_as must be one of {sorted(fill)}, got {unparsed_as!r}.")
    p = np.where(ok, raw, fill[unparsed_as]).astype(int)
    q = qwk_ci(gold, p, lo, hi, n_boot=n_boot, seed=seed)
    acc = bootstrap_ci((gold == p).astype(float), n_boot=n_boot, seed=seed) if len(gold) else None
    return {"qwk": q.estimate, "qwk_ci_low": q.low, "qwk_ci_high": q.high,
            "accuracy": float((gold == p).mean()) if len(gold) else float("nan"),
            "accuracy_ci_low": acc.low if acc else float("nan"), "accuracy_ci_high": acc.high if acc else float("nan"),
            "mae": float(np.abs(gold - p).mean()) if len(gold) else float("nan"), "coverage": float(ok.mean()),
            "n": int(len(gold)), "n_unparsed": int((~ok).sum()), "_interval": q}


def mean_over_items(per_item: list[dict], level: float = 0.95) -> dict[str, float]:
    """Mean QWK over items with a CI from the items' independent bootstrap draws (a stratified bootstrap,
    :func:`helpers.core.stats.stratified_mean_ci`)."""
    iv: Interval = stratified_mean_ci([r["_interval"] for r in per_item], level=level)
    return {"qwk": iv.estimate, "qwk_ci_low": iv.low, "qwk_ci_high": iv.high,
            "accuracy": float(np.mean([r["accuracy"] for r in per_item])),
            "mae": float(np.mean([r["mae"] for r in per_item])),
            "coverage": float(np.mean([r["coverage"] for r in per_item])), "n": iv.n}
