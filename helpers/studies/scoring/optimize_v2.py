"""Study 3: a validation gate that can select (issue 15, fix 4), and the random-edit control.

:func:`optimize_skill_v2` is the paper's loop (rubrics with the current skill, errors on a pool, an LLM diagnosis
proposing rule edits, candidates behind a validation gate; its exact schedule is not in the text available here) with:

* a **continuous gate statistic**: the mean over gate responses of log p(gold score) under the scorer's label
  distribution (:func:`gate_statistic`), on >= ``min_gate`` (40) gate responses per item, instead of QWK on 12;
* a **cheap screen** first (GEPA-style): each candidate is scored on a stratified ``screen_size`` subset of the gate
  set; only candidates whose screen statistic beats the current skill's by more than ``screen_margin`` go to the
  full gate (the screen's responses are part of the gate, so their scores are reused from the cache);
* a **memory of rejected edits**: an edit rejected once (rule check, screen or gate) is never tried again, and the
  list is shown to the diagnoser;
* a **diagnoser that sees the whole rubric** and the confusion counts per item (``prompts/diagnosis_v2.txt``),
  optionally a different (stronger) ``diagnoser`` backend than the scorer;
* rules checked by :func:`helpers.studies.scoring.rulecheck.is_item_specific_ngram` (3-word sequences, no genre
  words, rules for the rubric writer) against every item and the answers the optimiser saw;
* descriptors-first rubrics regenerated when a score point is missing
  (:func:`helpers.studies.scoring.skills.build_rubrics_checked`, retries counted).

``proposer="random"`` is the **random-edit control**: the same loop, gate and budget, but edits are drawn at random
(ADD a rule from :data:`RANDOM_RULE_POOL`, REVISE a rule into one from the pool, or DELETE a rule) instead of being
diagnosed from errors.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from helpers.core.stats import qwk

from .evaluation import _truncate_words, score_responses
from .items import ReadmeInfo, stratified_sample
from .optimize import Edit, OptimizationResult, TrainItem, apply_edit, collect_errors, parse_edits
from .prompts import line_list, prompt
from .rulecheck import is_item_specific_ngram
from .skills import Skill, SkillFile, build_rubrics_checked

__all__ = ["RANDOM_RULE_POOL", "diagnosis_prompt_v2", "edit_key", "gate_statistic", "optimize_skill_v2",
           "random_edits", "skill_file"]

#: Generic rubric-writing rules the random-edit control draws from (``prompts/random_rules.txt``).
RANDOM_RULE_POOL = line_list("random_rules")


def gate_statistic(probs: np.ndarray, gold, labels) -> float:
    """Mean log p(gold score) over responses: ``probs`` (n, n_labels) from a likelihood scorer, ``gold`` scores in
    ``labels``. Continuous, so two skills that move no argmax can still be told apart (probabilities clipped at
    1e-12)."""
    probs = np.asarray(probs, float)
    labels = list(labels)
    gold = np.asarray(gold, int)
    if probs.shape != (len(gold), len(labels)):
        raise ValueError(f"probs must be ({len(gold)}, {len(labels)}), got {probs.shape}.")
    idx = np.array([labels.index(g) for g in gold])
    return float(np.mean(np.log(np.clip(probs[np.arange(len(gold)), idx], 1e-12, None))))


def edit_key(skill: Skill, edit: Edit) -> tuple:
    """What an edit does, independent of rule numbering and case/spacing: ``(op, target rule text, new text)``."""
    norm = lambda t: " ".join((t or "").lower().split()).rstrip(".")  # noqa: E731
    target = skill.rules[edit.index - 1] if edit.index and 1 <= edit.index <= len(skill.rules) else None
    return edit.op, norm(target) if edit.op != "add" else None, norm(edit.text) if edit.op != "delete" else None


def random_edits(skill: Skill, k: int, rng: np.random.Generator, pool: tuple[str, ...] = RANDOM_RULE_POOL,
                 max_rules: int = 8) -> list[Edit]:
    """``k`` random edits of ``skill``: ADD a pool rule not in the skill (when there is room), REVISE a random rule
    into a pool rule, or DELETE a random rule (each op equally likely among those possible)."""
    out = []
    for _ in range(k):
        fresh = [r for r in pool if r not in skill.rules]
        ops = ((["add"] if fresh and len(skill.rules) < max_rules else []) + (["revise"] if fresh and skill.rules else [])
               + (["delete"] if skill.rules else []))
        if not ops:
            break
        op = ops[int(rng.integers(len(ops)))]
        if op == "add":
            out.append(Edit("add", None, fresh[int(rng.integers(len(fresh)))]))
        elif op == "revise":
            out.append(Edit("revise", int(rng.integers(len(skill.rules))) + 1, fresh[int(rng.integers(len(fresh)))]))
        else:
            out.append(Edit("delete", int(rng.integers(len(skill.rules))) + 1, ""))
    return out


def diagnosis_prompt_v2(skill: Skill, per_item: list[dict], rejected: list[str], max_edits: int, *,
                        response_words: int = 60, stem_words: int = 120) -> str:
    """The diagnosis prompt: current rules, per item the **whole** rubric, the confusion counts and the worst
    errors, and the edits already rejected (``prompts/diagnosis_v2.txt`` / ``diagnosis_v2_item.txt``).
    ``per_item``: dicts with ``info``, ``rubric``, ``confusions`` (``{"g->p": count}``), ``errors`` (rows of
    :func:`~helpers.studies.scoring.optimize.collect_errors`)."""
    blocks = []
    for n, d in enumerate(per_item, 1):
        info: ReadmeInfo = d["info"]
        conf = ", ".join(f"{k}: {v}" for k, v in sorted(d["confusions"].items(), key=lambda kv: -kv[1])) or "none"
        ex = "\n".join(f"- answer: {_truncate_words(e['response'], response_words)}\n  correct score {e['gold']}, "
                       f"rubric-based score {e['pred']}" for e in d["errors"]) or "- none"
        blocks.append(prompt("diagnosis_v2_item", n=n, score_min=info.score_min, score_max=info.score_max,
                             stem=_truncate_words(info.stem, stem_words), rubric=(d["rubric"] or "(empty)").strip(),
                             confusions=conf, examples=ex))
    rules = "\n".join(f"R{i}. {r}" for i, r in enumerate(skill.rules, 1)) or "(no rules)"
    return prompt("diagnosis_v2", rules=rules, items="\n\n".join(blocks),
                  rejected="\n".join(f"- {r}" for r in rejected) or "(none yet)", max_edits=max_edits)


def optimize_skill_v2(backend, items: list[TrainItem], skill: Skill | None = None, *, iterations: int = 3,
                      n_candidates: int = 3, patience: int = 2, n_errors: int = 6, max_edits: int = 3,
                      max_rules: int = 8, min_delta: float = 0.0, min_gate: int = 40, screen_size: int = 12,
                      screen_margin: float = 0.0, diagnosis_max_tokens: int = 200, proposer: str = "llm",
                      random_pool: tuple[str, ...] = RANDOM_RULE_POOL, diagnoser=None,
                      score_fn: Callable | None = None, rubric_fn: Callable | None = None,
                      rubric_kw: dict | None = None, score_kw: dict | None = None, seed: int = 0,
                      reject_infos: list[ReadmeInfo] | None = None, check_rules: bool = True,
                      log: Callable = print) -> OptimizationResult:
    """Refine ``skill`` on ``items`` behind a gate that can select (see the module docstring).

    Per iteration: build rubrics with the current skill, score each item's pool, collect the ``n_errors`` worst
    errors and the confusion counts; propose edits (``proposer="llm"``: one diagnosis call to ``diagnoser`` or
    ``backend``; ``"random"``: :func:`random_edits`); drop edits in the rejection memory, edits that fail the rule
    check (against ``reject_infos``, default the training items, and the pool answers), edits that do not apply;
    the first ``n_candidates`` remaining are the candidates (the budget, the same for both proposers). Each
    candidate is screened on ``screen_size`` gate responses per item; survivors are scored on the whole gate; the
    best survivor replaces the current skill iff its gate statistic (mean log p(gold), averaged over items) beats
    the current one by more than ``min_delta``. Every candidate not accepted goes into the memory.

    ``score_fn(backend, info, rubric, texts)`` -> ``ScoreResult`` with ``probs`` (default :func:`score_responses`
    with ``score_kw``, likelihood scoring); ``rubric_fn(backend, requests)`` -> ``(rubrics, reports)`` (default
    :func:`build_rubrics_checked` with ``rubric_kw``). History entries hold the gate statistic and gate QWK, the
    proposals with their status, screen and gate statistics, and ``budget`` counts (candidates, screen and full
    gate evaluations, rubric retries).
    """
    if proposer not in ("llm", "random"):
        raise ValueError(f"proposer must be 'llm' or 'random', got {proposer!r}.")
    for it in items:
        if len(it.gate) < min_gate:
            raise ValueError(f"item {it.info.item}: {len(it.gate)} gate responses, the gate needs >= {min_gate} "
                             f"(min_gate) to select between candidates.")
    skill = skill or Skill()
    rubric_kw, score_kw = rubric_kw or {}, score_kw or {}
    score_fn = score_fn or (lambda b, info, rub, texts: score_responses(b, info, rub, texts, **score_kw))
    rubric_fn = rubric_fn or (lambda b, reqs: build_rubrics_checked(b, reqs, **rubric_kw))
    diagnoser = diagnoser or backend
    rng = np.random.default_rng(seed)
    infos = reject_infos or [it.info for it in items]
    answers = {it.info.item: it.pool["EssayText"].tolist() for it in items}
    screens = {it.info.item: stratified_sample(it.gate, min(screen_size, len(it.gate)), seed) for it in items}
    budget = {"candidates": 0, "screen_evals": 0, "gate_evals": 0, "rubric_retries": 0, "rubrics_missing_points": 0,
              "metric_calls": 0}  # metric_calls: responses scored (initial, pool, screen and gate evaluations)
    memory: dict[tuple, str] = {}  # edit key -> the edit as shown to the diagnoser (with why it was rejected)

    def build(skills: list[Skill]) -> list[dict[int, str]]:
        reqs = [(it.info, sk, it.examples) for sk in skills for it in items]
        rubs, reports = rubric_fn(backend, reqs)
        budget["rubric_retries"] += sum(r.get("retries", 0) for r in reports)
        budget["rubrics_missing_points"] += sum(bool(r.get("missing")) for r in reports)
        flat = iter(rubs)
        return [{it.info.item: next(flat) for it in items} for _ in skills]

    def evaluate(rubrics: dict[int, str], split: str) -> dict[str, Any]:
        stat, qs, preds = [], [], {}
        for it in items:
            df = screens[it.info.item] if split == "screen" else getattr(it, split)
            res = score_fn(backend, it.info, rubrics[it.info.item], df["EssayText"].tolist())
            budget["metric_calls"] += len(df)
            if res.probs is None:
                raise ValueError("the v2 gate needs label probabilities: use likelihood scoring (score_fn returning "
                                 "ScoreResult.probs).")
            gold = df["Score1"].to_numpy(int)
            stat.append(gate_statistic(res.probs, gold, it.info.labels))
            preds[it.info.item] = np.where(res.parsed, res.pred, it.info.score_min)
            qs.append(qwk(gold, preds[it.info.item], it.info.score_min, it.info.score_max))
        return {"stat": float(np.mean(stat)), "qwk": float(np.mean(qs)), "preds": preds}

    out = OptimizationResult(initial=skill, skill=skill)
    current = skill
    rubs_now = build([current])[0]
    out.rubrics["initial"] = rubs_now
    cur_gate = evaluate(rubs_now, "gate")
    cur_screen = evaluate(rubs_now, "screen")
    stale = 0
    for t in range(1, iterations + 1):
        pool_eval = evaluate(rubs_now, "pool")
        per_item = []
        for it in items:
            errs, conf = collect_errors(it.info, rubs_now[it.info.item], it.pool, pool_eval["preds"][it.info.item],
                                        max(1, n_errors // len(items)), seed + t)
            per_item.append({"info": it.info, "rubric": rubs_now[it.info.item], "confusions": conf, "errors": errs})
        reply, bad = "", []
        if proposer == "llm":
            if any(d["errors"] for d in per_item):
                reply = diagnoser.complete(diagnosis_prompt_v2(current, per_item, list(memory.values()), max_edits),
                                           max_tokens=diagnosis_max_tokens)
            edits, bad = parse_edits(reply)
        else:
            edits = random_edits(current, max_edits, rng, random_pool, max_rules)
        cands, proposals = [], []
        for e in edits:
            rec = {"edit": str(e), "status": "candidate"}
            proposals.append(rec)
            key = edit_key(current, e)
            if key in memory:
                rec["status"] = "rejected: in memory (rejected before)"
                continue
            if check_rules and e.op != "delete":
                specific, why = is_item_specific_ngram(e.text, infos, sample_answers=answers)
                if specific:
                    rec.update(status="rejected: item-specific", reasons=why)
                    memory[key] = f"{e} (item-specific: {why[0]})"
                    continue
            new = apply_edit(current, e, max_rules)
            if new is None:
                rec["status"] = "rejected: does not apply"
            elif new == current or any(new == c for c, _, _ in cands):
                rec["status"] = "duplicate"
            elif len(cands) >= n_candidates:
                rec["status"] = "not tried (candidate budget)"
            else:
                cands.append((new, rec, key))
        budget["candidates"] += len(cands)
        cand_rubs = build([c for c, _, _ in cands]) if cands else []
        best = None
        for (cand, rec, key), rubs in zip(cands, cand_rubs):
            scr = evaluate(rubs, "screen")
            budget["screen_evals"] += 1
            rec["screen_stat"] = scr["stat"]
            if not scr["stat"] > cur_screen["stat"] + screen_margin:
                rec["status"] = "rejected: screen"
                memory[key] = f"{rec['edit']} (no gain on the screen)"
                continue
            full = evaluate(rubs, "gate")
            budget["gate_evals"] += 1
            rec.update(gate_stat=full["stat"], gate_qwk=full["qwk"])
            if best is None or full["stat"] > best[3]["stat"]:
                best = (cand, rubs, scr, full, rec)
        accepted = best is not None and best[3]["stat"] > cur_gate["stat"] + min_delta
        for cand, rec, key in cands:
            if rec["status"] != "candidate":
                continue
            if accepted and cand == best[0]:
                rec["status"] = "accepted"
            else:
                rec["status"] = "rejected: not the best" if accepted else "rejected: gate (no gain)"
                memory[key] = f"{rec['edit']} (no gain on the validation gate)"
        out.history.append({"iteration": t, "rules": list(current.rules), "proposer": proposer,
                            "pool_qwk": pool_eval["qwk"], "pool_stat": pool_eval["stat"], "gate_stat": cur_gate["stat"],
                            "gate_qwk": cur_gate["qwk"], "diagnosis": reply, "unparsed_lines": len(bad),
                            "proposals": proposals, "confusions": {d["info"].item: d["confusions"] for d in per_item},
                            "best_candidate_gate_stat": None if best is None else best[3]["stat"],
                            "best_candidate_gate_qwk": None if best is None else best[3]["qwk"],
                            "accepted": bool(accepted), "memory": list(memory.values())})
        log(f"[{proposer}] iteration {t}: gate log p(gold) {cur_gate['stat']:.3f} (QWK {cur_gate['qwk']:.3f}), "
            f"{len(edits)} edits, {len(cands)} candidates"
            + (f", best {best[3]['stat']:.3f} -> {'accepted' if accepted else 'rejected'}" if best else ""))
        if accepted:
            current, rubs_now, cur_screen, cur_gate, stale = best[0], best[1], best[2], best[3], 0
        else:
            stale += 1
            if stale >= patience:
                break
    out.skill = current
    out.rubrics["final"] = rubs_now
    out.history.append({"iteration": "final", "rules": list(current.rules), "gate_stat": cur_gate["stat"],
                        "gate_qwk": cur_gate["qwk"], "budget": dict(budget)})
    return out



def skill_file(result: OptimizationResult, *, model: str, items: list[int], settings: dict | None = None,
               **extra) -> SkillFile:
    """The learned skill of an :func:`optimize_skill_v2` run as a :class:`SkillFile` whose provenance records the
    model, the items trained on, the gate statistics (initial and final mean log p(gold) and gate QWK), the accepted
    edits, the budget and the proposer; ``settings`` are the rubric/scoring settings to reuse (e.g.
    ``{"rubric_format": "descriptors_first", "rubric_words": None}``); ``extra`` goes into the provenance."""
    hist = [h for h in result.history if h["iteration"] != "final"]
    final = next((h for h in result.history if h["iteration"] == "final"), {})
    first = hist[0] if hist else final
    prov = {"model": model, "items": list(items), "method": "optimize_skill_v2 (arXiv 2605.29274, issue 15 gate)",
            "proposer": hist[0].get("proposer") if hist else None, "iterations": len(hist),
            "gate": {"initial_stat": first.get("gate_stat"), "final_stat": final.get("gate_stat"),
                     "initial_qwk": first.get("gate_qwk"), "final_qwk": final.get("gate_qwk"),
                     "statistic": "mean log p(gold score)"},
            "accepted_edits": [p["edit"] for h in hist for p in h["proposals"] if p["status"] == "accepted"],
            "budget": final.get("budget"), **extra}
    return SkillFile(result.skill, prov, dict(settings or {"rubric_format": "descriptors_first", "rubric_words": None}))
