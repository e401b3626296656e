"""Study 3: diagnosis of scoring errors, rule edits, and the optimisation loop behind a validation gate."""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.stats import qwk

from .evaluation import _truncate_words, score_responses
from .items import ReadmeInfo
from .prompts import prompt
from .skills import Skill, build_rubrics, is_item_specific

__all__ = ["Edit", "OptimizationResult", "TrainItem", "apply_edit", "collect_errors", "diagnose_errors",
           "diagnosis_prompt", "optimize_skill", "optimize_skills", "parse_edits", "rule_diff"]


# ------------------------------------------------------------------------------------------------------
# Diagnosis and rule edits
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    op: str  # "add" | "revise" | "delete"
    index: int | None  # 1-based rule number for revise / delete
    text: str

    def __str__(self) -> str:
        return {"add": f"ADD: {self.text}", "revise": f"REVISE R{self.index}: {self.text}",
                "delete": f"DELETE R{self.index}"}[self.op]


_EDIT = re.compile(r"^\s*(?:[-*\d.)\s]*)\**\s*(ADD|REVISE|DELETE)\b\s*(?:R(?:ULE)?\s*)?(\d+)?\s*\**\s*[:\-]?\s*(.*)$",
                   re.I)


def parse_edits(text: str) -> tuple[list[Edit], list[str]]:
    """Edits in a diagnosis reply (``ADD: rule`` / ``REVISE R2: rule`` / ``DELETE R3``); returns
    ``(edits, unparsed non-empty lines)`` so that malformed proposals are counted, not silently lost."""
    edits, bad = [], []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        m = _EDIT.match(line)
        if not m:
            bad.append(line.strip())
            continue
        op, idx, body = m.group(1).lower(), m.group(2), m.group(3).strip().strip('"').strip()
        if op == "add" and body:
            edits.append(Edit("add", None, body))
        elif op == "revise" and idx and body:
            edits.append(Edit("revise", int(idx), body))
        elif op == "delete" and idx:
            edits.append(Edit("delete", int(idx), ""))
        else:
            bad.append(line.strip())
    return edits, bad


def apply_edit(skill: Skill, edit: Edit, max_rules: int = 8) -> Skill | None:
    """The skill with ``edit`` applied, or ``None`` if it does not apply (bad rule number, too many rules,
    duplicate rule)."""
    rules = list(skill.rules)
    if edit.op == "add":
        if len(rules) >= max_rules or edit.text in rules:
            return None
        rules.append(edit.text)
    elif edit.index is None or not 1 <= edit.index <= len(rules):
        return None
    elif edit.op == "revise":
        if rules[edit.index - 1] == edit.text:
            return None
        rules[edit.index - 1] = edit.text
    else:
        del rules[edit.index - 1]
    return Skill(tuple(rules), skill.scaffold)


def diagnosis_prompt(skill: Skill, errors: list[dict], max_edits: int) -> str:
    """Ask the LLM to diagnose scoring errors and propose item-agnostic rule edits in a strict format
    (``prompts/diagnosis.txt``, one ``prompts/diagnosis_example.txt`` per error)."""
    ex = "\n".join(prompt("diagnosis_example", stem=_truncate_words(e["stem"], 30),
                          rubric=_truncate_words(e["rubric"], 40), response=_truncate_words(e["response"], 40),
                          gold=e["gold"], pred=e["pred"]) for e in errors)
    rules = "\n".join(f"R{i}. {r}" for i, r in enumerate(skill.rules, 1))
    return prompt("diagnosis", examples=ex, rules=rules, max_edits=max_edits)


def collect_errors(info: ReadmeInfo, rubric: str, pool: pd.DataFrame, pred: np.ndarray, k: int,
                   seed: int) -> tuple[list[dict], dict]:
    """The ``k`` worst errors (largest |gold - pred|, ties broken by a seeded shuffle) and the confusion counts."""
    gold = pool["Score1"].to_numpy(int)
    conf = pd.crosstab(pd.Series(gold, name="gold"), pd.Series(pred, name="pred"))
    err = np.flatnonzero(gold != pred)
    rng = np.random.default_rng(seed)
    err = err[rng.permutation(len(err))]
    err = err[np.argsort(-np.abs(gold[err] - pred[err]), kind="stable")][:k]
    rows = [{"stem": info.stem, "rubric": rubric, "response": pool["EssayText"].iloc[i], "gold": int(gold[i]),
             "pred": int(pred[i])} for i in err]
    return rows, {f"{g}->{p}": int(conf.loc[g, p]) for g in conf.index for p in conf.columns if g != p and conf.loc[g, p]}


def diagnose_errors(backend, skill: Skill, errors: list[dict], *, max_edits: int = 3,
                    max_tokens: int = 120) -> tuple[str, list[Edit], list[str]]:
    """One diagnosis call: (reply, parsed edits, unparsed lines)."""
    if not errors:
        return "", [], []
    reply = backend.complete(diagnosis_prompt(skill, errors, max_edits), max_tokens=max_tokens)
    edits, bad = parse_edits(reply)
    return reply, edits, bad


# ------------------------------------------------------------------------------------------------------
# The optimisation loop with a validation gate
# ------------------------------------------------------------------------------------------------------
@dataclass
class TrainItem:
    """An item the skill is optimised on: its pool (errors are diagnosed here) and gate (validation) sets."""

    info: ReadmeInfo
    pool: pd.DataFrame
    gate: pd.DataFrame
    examples: pd.DataFrame | None = None


@dataclass
class OptimizationResult:
    initial: Skill
    skill: Skill
    history: list[dict] = field(default_factory=list)
    rubrics: dict[str, dict[int, str]] = field(default_factory=dict)  # "initial"/"final" -> item -> rubric


def rule_diff(a: Skill, b: Skill) -> list[str]:
    """A line diff of two skills' rules (``-`` removed, ``+`` added, two spaces kept)."""
    return [l for l in difflib.ndiff(list(a.rules), list(b.rules)) if not l.startswith("?")]


def optimize_skill(backend, items: list[TrainItem], skill: Skill | None = None, **kw) -> OptimizationResult:
    """One optimisation of a skill on ``items`` (see :func:`optimize_skills`, which runs several in lockstep)."""
    return optimize_skills(backend, {0: items}, skill, **kw)[0]


def optimize_skills(backend, runs: dict[Any, list[TrainItem]], skill: Skill | None = None, *, iterations: int = 2,
                    n_candidates: int = 2, patience: int = 1, n_errors: int = 4, max_edits: int = 3,
                    max_rules: int = 8, min_delta: float = 0.0, diagnosis_max_tokens: int = 120,
                    score_fn: Callable | None = None, rubric_kw: dict | None = None, score_kw: dict | None = None,
                    seed: int = 0, reject_infos: list[ReadmeInfo] | None = None,
                    log: Callable = print) -> dict[Any, OptimizationResult]:
    """Iteratively refine a skill's rules (the paper's loop; its exact schedule is not available here).

    For t = 1..T: build rubrics for the training items with the current skill, score each item's pool, collect
    the worst errors, let the LLM diagnose them and propose rule edits (ADD / REVISE / DELETE); rules that
    mention item-specific content (:func:`is_item_specific` against ``reject_infos``, default the training
    items) are rejected; each remaining edit gives a candidate skill (at most ``n_candidates``); every candidate
    builds rubrics and scores the gate sets; the best candidate replaces the current skill only if its mean
    gate QWK exceeds the current one by more than ``min_delta`` (the validation gate). Stops after
    ``patience`` iterations without an accepted candidate.

    ``runs`` maps a name to the training items of one independent optimisation (e.g. one per item, for the
    transfer study); all runs advance in lockstep so that each phase's generations (diagnoses, candidate
    rubrics) go to the backend as one batch. ``score_fn(backend, info, rubric, texts)`` -> ``ScoreResult``
    (default :func:`score_responses` with ``score_kw``).
    """
    skill = skill or Skill()
    rubric_kw, score_kw = rubric_kw or {}, score_kw or {}
    score_fn = score_fn or (lambda b, info, rub, texts: score_responses(b, info, rub, texts, **score_kw))

    def build(jobs: list[tuple[Any, Skill]]) -> list[dict[int, str]]:
        """Rubrics for every (run, skill) job in one batch: a dict item -> rubric per job."""
        reqs = [(it.info, sk, it.examples) for r, sk in jobs for it in runs[r]]
        flat = iter(build_rubrics(backend, reqs, **rubric_kw))
        return [{it.info.item: next(flat) for it in runs[r]} for r, _ in jobs]

    def score(r, rubrics: dict[int, str], split: str) -> tuple[float, dict[int, np.ndarray]]:
        q, preds = [], {}
        for it in runs[r]:
            df = getattr(it, split)
            res = score_fn(backend, it.info, rubrics[it.info.item], df["EssayText"].tolist())
            preds[it.info.item] = np.where(res.parsed, res.pred, it.info.score_min)
            q.append(qwk(df["Score1"], preds[it.info.item], it.info.score_min, it.info.score_max))
        return float(np.mean(q)), preds

    out = {r: OptimizationResult(initial=skill, skill=skill) for r in runs}
    current = {r: skill for r in runs}
    rub0 = build([(r, skill) for r in runs])
    gate_q = {}
    for r, rubs in zip(runs, rub0):
        out[r].rubrics["initial"] = rubs
        gate_q[r] = score(r, rubs, "gate")[0]
    stale = {r: 0 for r in runs}
    active = list(runs)
    for t in range(1, iterations + 1):
        if not active:
            break
        rubs_now = build([(r, current[r]) for r in active])  # the same prompts as the gate step: cached
        state = {}
        for r, rubs in zip(active, rubs_now):
            pool_q, preds = score(r, rubs, "pool")
            errors, confusions = [], {}
            for it in runs[r]:
                e, c = collect_errors(it.info, rubs[it.info.item], it.pool, preds[it.info.item],
                                      max(1, n_errors // len(runs[r])), seed + t)
                errors += e
                confusions[it.info.item] = c
            state[r] = {"pool_qwk": pool_q, "errors": errors, "confusions": confusions}
        need = [r for r in active if state[r]["errors"]]
        replies = backend.complete_many([diagnosis_prompt(current[r], state[r]["errors"], max_edits) for r in need],
                                        max_tokens=diagnosis_max_tokens, return_errors=True)
        replies = dict(zip(need, [x if isinstance(x, str) else "" for x in replies]))
        jobs = []
        for r in active:
            edits, bad = parse_edits(replies.get(r, ""))
            cands, proposals = [], []
            infos = reject_infos or [it.info for it in runs[r]]
            for e in edits:
                rec = {"edit": str(e), "status": "candidate"}
                if e.op != "delete":
                    specific, words = is_item_specific(e.text, infos)
                    if specific:
                        rec.update(status="rejected: item-specific", words=words)
                        proposals.append(rec)
                        continue
                new = apply_edit(current[r], e, max_rules)
                if new is None:
                    rec["status"] = "rejected: does not apply"
                elif any(new == c for c, _ in cands):
                    rec["status"] = "duplicate"
                elif len(cands) >= n_candidates:
                    rec["status"] = "not tried (candidate budget)"
                else:
                    cands.append((new, rec))
                    jobs.append((r, new))
                proposals.append(rec)
            state[r].update(reply=replies.get(r, ""), edits=edits, bad=bad, cands=cands, proposals=proposals)
        cand_rubrics = build(jobs)
        for r in list(active):
            st = state[r]
            best, best_q = None, -np.inf
            for (cand, rec) in st["cands"]:
                rubs = cand_rubrics[jobs.index((r, cand))]
                rec["gate_qwk"] = score(r, rubs, "gate")[0]
                if rec["gate_qwk"] > best_q:
                    best, best_q = cand, rec["gate_qwk"]
            accepted = best is not None and best_q > gate_q[r] + min_delta
            for cand, rec in st["cands"]:
                rec["status"] = (("accepted" if cand == best else "rejected: not the best") if accepted
                                 else "rejected: gate (no validation gain)")
            out[r].history.append({"iteration": t, "rules": list(current[r].rules), "pool_qwk": st["pool_qwk"],
                                   "gate_qwk": gate_q[r], "diagnosis": st["reply"], "unparsed_lines": len(st["bad"]),
                                   "proposals": st["proposals"], "confusions": st["confusions"],
                                   "best_candidate_gate_qwk": None if best is None else best_q,
                                   "accepted": bool(accepted)})
            log(f"[{r}] iteration {t}: pool QWK {st['pool_qwk']:.3f}, gate QWK {gate_q[r]:.3f}, "
                f"{len(st['edits'])} edits ({len(st['bad'])} unparsed lines), {len(st['cands'])} candidates"
                + (f", best {best_q:.3f} -> {'accepted' if accepted else 'rejected'}" if st["cands"] else ""))
            if accepted:
                current[r], gate_q[r], stale[r] = best, best_q, 0
            else:
                stale[r] += 1
                if stale[r] >= patience:
                    active.remove(r)
    finals = build([(r, current[r]) for r in runs])
    for r, rubs in zip(runs, finals):
        out[r].skill = current[r]
        out[r].rubrics["final"] = rubs
        out[r].history.append({"iteration": "final", "rules": list(current[r].rules), "gate_qwk": gate_q[r]})
    return out


