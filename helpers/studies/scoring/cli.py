"""``python -m helpers score``: score a CSV of new answers with a learned skill.

    python -m helpers score --skill skill.json --item "Data Set #1--ReadMeFirst.txt" --responses new.csv \\
        [--out scores.csv] [--model qwen2.5-coder-0.5b-instruct | --base-url URL --model ID]

1. reads the skill file (:class:`~helpers.studies.scoring.skills.SkillFile`: rules, scaffold, provenance, settings)
   and the item's ReadMeFirst-style text (:func:`~helpers.studies.scoring.items.parse_readme`: title, stem,
   passage, score range; its expert rubric is *not* used);
2. builds a descriptors-first rubric for the item with the skill, regenerating it (bounded) when a score point has
   no descriptor (:func:`~helpers.studies.scoring.skills.build_rubrics_checked`);
3. scores every answer by constrained label likelihood through the LLM server (llama.cpp serving an embedded GGUF
   by default, or any OpenAI-compatible ``--base-url`` that returns log-probabilities);
4. writes one row per answer: ``id``, ``score``, ``p_<label>`` for every score, ``max_prob`` and ``low_confidence``
   (``max_prob < --min-confidence``), plus the rubric beside the output (``<out>.rubric.txt``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.llm import make_backend

from .evaluation import decide, score_responses
from .items import parse_readme
from .skills import SkillFile, build_rubrics_checked

__all__ = ["main", "score_file"]

_TEXT_COLUMNS = ("EssayText", "response", "Response", "answer", "Answer", "text", "Text")
_ID_COLUMNS = ("Id", "id", "ID", "response_id")


def score_file(backend, skill_file: SkillFile, item_text: str | bytes, responses: pd.DataFrame, *,
               text_column: str | None = None, decision: str = "expected", min_confidence: float = 0.5,
               max_retries: int | None = None, rubric_max_tokens: int | None = None) -> tuple[pd.DataFrame, str, dict]:
    """Build the item's rubric with the skill and score ``responses``; returns (scores frame, rubric, report)."""
    info = parse_readme(item_text)
    col = text_column or next((c for c in _TEXT_COLUMNS if c in responses.columns), None)
    if col is None or col not in responses.columns:
        raise ValueError(f"no answer column in the responses CSV (columns {list(responses.columns)}); name it "
                         f"one of {list(_TEXT_COLUMNS)} or pass --text-column.")
    if decision not in ("expected", "argmax", "calibrated"):
        raise ValueError(f"decision must be 'expected', 'argmax' or 'calibrated', got {decision!r}.")
    st = skill_file.settings
    rubrics, reports = build_rubrics_checked(
        backend, [(info, skill_file.skill, None)],
        max_retries=st.get("max_retries", 2) if max_retries is None else max_retries,
        rubric_format=st.get("rubric_format", "descriptors_first"),
        max_tokens=rubric_max_tokens or st.get("rubric_max_tokens"),
        passage_words=st.get("passage_words", 120))
    rubric = rubrics[0]
    texts = responses[col].fillna("").astype(str).tolist()
    res = score_responses(backend, info, rubric, texts, method="likelihood", decision="argmax",
                          passage_words=st.get("passage_words", 120), response_words=st.get("response_words", 80),
                          rubric_words=st.get("rubric_words"))
    preds = decide(res.probs, info.labels)[decision]
    idcol = next((c for c in _ID_COLUMNS if c in responses.columns), None)
    out = pd.DataFrame({"id": responses[idcol].tolist() if idcol else list(range(len(responses))),
                        "score": preds.astype(int)})
    for j, lab in enumerate(info.labels):
        out[f"p_{lab}"] = np.round(res.probs[:, j], 4)
    out["max_prob"] = np.round(res.probs.max(1), 4)
    out["low_confidence"] = res.probs.max(1) < min_confidence
    report = {"item": info.item, "title": info.title, "n": len(out), "rubric_retries": reports[0]["retries"],
              "rubric_missing_score_points": reports[0]["missing"], "low_confidence": int(out["low_confidence"].sum()),
              "decision": decision, "label_mass": float(np.mean(res.label_mass)) if res.label_mass is not None else None}
    return out, rubric, report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers score", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skill", required=True, help="skill JSON file (SkillFile.save / Skill.save)")
    ap.add_argument("--item", required=True, help="ReadMeFirst-style item text (ASAP-SAS layout)")
    ap.add_argument("--responses", required=True, help="CSV with an answer column (EssayText/response/answer/text)")
    ap.add_argument("--out", default=None, help="scores CSV (default: <responses>.scores.csv)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct",
                    help="embedded GGUF name or .gguf path (llama.cpp), or the endpoint's model id with --base-url")
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint returning logprobs")
    ap.add_argument("--engine", default="llama.cpp", choices=("llama.cpp", "transformers"))
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: all)")
    ap.add_argument("--decision", default="expected", choices=("expected", "argmax", "calibrated"))
    ap.add_argument("--min-confidence", type=float, default=0.5,
                    help="flag answers whose most likely score has a probability below this")
    ap.add_argument("--text-column", default=None)
    ap.add_argument("--rubric-max-tokens", type=int, default=None)
    ap.add_argument("--max-retries", type=int, default=None, help="rubric regenerations when a score point is missing")
    ap.add_argument("--no-cache", action="store_true", help="do not read or write the LLM disk cache")
    a = ap.parse_args(argv)
    try:
        sf = SkillFile.load(a.skill)
        item_text = Path(a.item).read_bytes()
        responses = pd.read_csv(a.responses)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    backend = make_backend(a.model, base_url=a.base_url, engine=a.engine, threads=a.threads, concurrency=1,
                           cache=not a.no_cache)
    try:
        scores, rubric, report = score_file(backend, sf, item_text, responses, text_column=a.text_column,
                                            decision=a.decision, min_confidence=a.min_confidence,
                                            max_retries=a.max_retries, rubric_max_tokens=a.rubric_max_tokens)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else Path(a.responses).with_suffix(".scores.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out, index=False)
    out.with_suffix(".rubric.txt").write_text(rubric + "\n", encoding="utf-8")
    print(f"item {report['item']} ({report['title']}): {report['n']} answers scored with {backend.model_id}, "
          f"decision {report['decision']}; {report['low_confidence']} low-confidence; rubric retries "
          f"{report['rubric_retries']}, missing score points {report['rubric_missing_score_points']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
