"""Study 3, beyond the paper: GEPA optimising the same rubric-writing rules with the same budget (a baseline row).

GEPA (Agrawal et al., "GEPA: Reflective Prompt Evolution Can Outperform Reinforcement Learning", arXiv 2507.19457)
is the optimiser behind DSPy's ``dspy.GEPA``; the ``gepa`` package is its engine (one wheel, no dependencies), used
here directly through a :class:`RubricSkillAdapter`. Per iteration GEPA picks a candidate from the Pareto front of
per-response gate scores, evaluates it on a minibatch of training responses with traces, asks a reflection LM for
a new text from those traces, keeps the new candidate if its minibatch score sum improves, and then scores it on the
whole validation set. How the study maps onto it (our choices, one line each):

* candidate: one text component ``"rules"``, the skill's rules one per line (``R1. ...``); the scaffold stays fixed;
* data: ``trainset`` = the training items' diagnosis pools (reflection minibatches), ``valset`` = their validation
  gates (Pareto front and final choice): the slices :func:`~helpers.studies.scoring.optimize_v2.optimize_skill_v2`
  uses;
* score per response = log p(gold score) under the scorer's label distribution, the diagnosed loop's gate statistic
  per response; GEPA's best candidate (highest mean over the gate) is then the gate's choice;
* budget: at most ``max_proposals`` proposals (the diagnosed loop's candidates: iterations x n_candidates) and at most
  ``max_metric_calls`` scored responses (set by the caller to what the diagnosed loop scored in the same fold);
* proposed text -> rules: :func:`parse_rules`; rules failing the same rule check as the diagnosed loop's edits
  (:func:`~helpers.studies.scoring.rulecheck.is_item_specific_ngram`) are dropped and counted;
* reflection prompt: GEPA's mechanism with our template (``prompts/gepa_reflection.txt``); GEPA's default asks for
  "niche and domain specific factual information about the task", which an item-agnostic skill must not contain.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .evaluation import _truncate_words, score_responses
from .optimize import OptimizationResult, TrainItem
from .prompts import prompt
from .rulecheck import is_item_specific_ngram
from .skills import Skill, build_rubrics_checked

__all__ = ["RubricSkillAdapter", "optimize_skill_gepa", "parse_rules", "rules_text"]

_BULLET = re.compile(r"^\s*(?:(?:[-*\u2022]+|\(?\d+[.):]|R(?:ULE)?\s*\d+\s*[.:)\-]?)\s*)+", re.I)


def rules_text(skill: Skill) -> str:
    """A skill's rules as GEPA's text component: ``R1. ...`` one per line."""
    return "\n".join(f"R{i}. {r}" for i, r in enumerate(skill.rules, 1))


def parse_rules(text: str, max_rules: int = 8) -> list[str]:
    """Rules from a proposed text: one per line, numbering/bullets/markdown stripped, headers (a line ending in
    ":"), lines of fewer than 3 words and repeats dropped, the first ``max_rules`` kept."""
    out: list[str] = []
    for line in str(text).splitlines():
        r = _BULLET.sub("", line.strip().strip("`")).replace("**", "").strip()
        if not r or r.endswith(":") or len(r.split()) < 3:
            continue
        if r.lower() not in {x.lower() for x in out}:
            out.append(r)
    return out[:max_rules]


class RubricSkillAdapter:
    """GEPA adapter (``gepa.core.adapter.GEPAAdapter``) for a rubric-writing skill.

    A data instance is a dict ``{"item", "id", "text", "gold"}``; :meth:`evaluate` writes (and caches) one rubric per
    (rules, item) with ``rubric_fn`` and scores the instances with ``score_fn``, returning log p(gold) per response;
    :meth:`make_reflective_dataset` shows the reflection LM the question, the answer, the rubric the rules produced,
    the score given and the correct one."""

    propose_new_texts = None  # GEPA's reflective proposer with our template writes the new rules

    def __init__(self, backend, items: list[TrainItem], *, scaffold: tuple[str, ...], score_fn: Callable,
                 rubric_fn: Callable, reject_infos=None, max_rules: int = 8, check_rules: bool = True,
                 rubric_words: int = 150, stem_words: int = 60, response_words: int = 60):
        self.backend, self.scaffold, self.score_fn, self.rubric_fn = backend, tuple(scaffold), score_fn, rubric_fn
        self.items = {it.info.item: it for it in items}
        self.infos = reject_infos or [it.info for it in items]
        self.answers = {it.info.item: it.pool["EssayText"].tolist() for it in items}
        self.max_rules, self.check_rules = max_rules, check_rules
        self.rubric_words, self.stem_words, self.response_words = rubric_words, stem_words, response_words
        self.rubrics: dict[tuple[tuple[str, ...], int], str] = {}
        self.dropped: dict[str, list[str]] = {}  # rule -> why the rule check dropped it
        self.metric_calls = 0
        self.rubric_retries = 0

    def skill_of(self, candidate: dict[str, str]) -> Skill:
        """The skill a candidate text stands for: parsed rules that pass the rule check, scaffold fixed."""
        keep = []
        for r in parse_rules(candidate["rules"], self.max_rules):
            if self.check_rules:
                bad, why = is_item_specific_ngram(r, self.infos, sample_answers=self.answers)
                if bad:
                    self.dropped.setdefault(r, why)
                    continue
            keep.append(r)
        return Skill(tuple(keep), self.scaffold)

    def rubrics_for(self, skill: Skill, items) -> dict[int, str]:
        todo = [i for i in dict.fromkeys(items) if (skill.rules, i) not in self.rubrics]
        if todo:
            rubs, reports = self.rubric_fn(self.backend, [(self.items[i].info, skill, self.items[i].examples)
                                                          for i in todo])
            self.rubric_retries += sum(r.get("retries", 0) for r in reports)
            self.rubrics.update({(skill.rules, i): r for i, r in zip(todo, rubs)})
        return {i: self.rubrics[(skill.rules, i)] for i in items}

    def evaluate(self, batch: list[dict], candidate: dict[str, str], capture_traces: bool = False):
        from gepa import EvaluationBatch

        skill = self.skill_of(candidate)
        groups: dict[int, list[int]] = {}
        for j, inst in enumerate(batch):
            groups.setdefault(inst["item"], []).append(j)
        rubs = self.rubrics_for(skill, list(groups))
        scores, outputs, trajs = [0.0] * len(batch), [None] * len(batch), [None] * len(batch)
        for item, idx in groups.items():
            info = self.items[item].info
            res = self.score_fn(self.backend, info, rubs[item], [batch[j]["text"] for j in idx])
            if res.probs is None:
                raise ValueError("the GEPA baseline needs label probabilities: use likelihood scoring.")
            for k, j in enumerate(idx):
                gold = int(batch[j]["gold"])
                p = float(res.probs[k][info.labels.index(gold)])
                scores[j] = float(np.log(max(p, 1e-12)))
                outputs[j] = {"pred": int(res.pred[k]), "p_gold": p}
                trajs[j] = {"item": item, "text": batch[j]["text"], "gold": gold, "pred": int(res.pred[k]),
                            "p_gold": p, "rubric": rubs[item]}
        self.metric_calls += len(batch)
        return EvaluationBatch(outputs=outputs, scores=scores, trajectories=trajs if capture_traces else None)

    def make_reflective_dataset(self, candidate: dict[str, str], eval_batch, components_to_update: list[str]):
        recs = []
        for t in eval_batch.trajectories or []:
            info = self.items[t["item"]].info
            off = t["pred"] - t["gold"]
            verdict = ("Correct." if off == 0 else
                       f"The rubric led the scorer to {'over' if off > 0 else 'under'}-score this answer by {abs(off)}.")
            recs.append({"Inputs": {"Question": _truncate_words(info.stem, self.stem_words),
                                    "Student answer": _truncate_words(t["text"], self.response_words) or "(blank)"},
                         "Generated Outputs": {"Rubric written with the rules": _truncate_words(t["rubric"],
                                                                                              self.rubric_words),
                                               "Score given": f"{t['pred']} (score range {info.score_min}-"
                                                              f"{info.score_max})"},
                         "Feedback": f"The correct score is {t['gold']}; the scorer gave it probability "
                                     f"{t['p_gold']:.2f}. {verdict}"})
        return {c: recs for c in components_to_update}


class _Recorder:
    """GEPA callbacks -> per-iteration proposal records (text, minibatch sums, gate mean when evaluated)."""

    def __init__(self):
        self.iters: dict[int, dict[str, Any]] = {}
        self.val: dict[int, float] = {}  # candidate index -> mean gate score

    def _it(self, i: int) -> dict[str, Any]:
        return self.iters.setdefault(i, {"iteration": i})

    def on_candidate_selected(self, e):
        self._it(e["iteration"])["parent"] = dict(e["candidate"])

    def on_proposal_end(self, e):
        self._it(e["iteration"])["text"] = (e.get("new_instructions") or {}).get("rules")

    def on_candidate_rejected(self, e):
        self._it(e["iteration"]).update(status="rejected: minibatch", minibatch=(e["old_score"], e["new_score"]),
                                        reason=e.get("reason"))

    def on_candidate_accepted(self, e):
        self._it(e["iteration"]).update(status="pool", candidate=e["new_candidate_idx"])

    def on_valset_evaluated(self, e):
        self.val[e["candidate_idx"]] = float(e["average_score"])


def optimize_skill_gepa(backend, items: list[TrainItem], skill: Skill, *, max_metric_calls: int,
                        max_proposals: int, reflection_lm=None, minibatch_size: int = 3, max_rules: int = 8,
                        reflection_max_tokens: int = 200, score_fn: Callable | None = None,
                        rubric_fn: Callable | None = None, rubric_kw: dict | None = None,
                        score_kw: dict | None = None, seed: int = 0, reject_infos=None, check_rules: bool = True,
                        log: Callable = print) -> OptimizationResult:
    """Optimise ``skill``'s rules with GEPA (``gepa.optimize``, Pareto candidate selection, reflective mutation, no
    merge) on ``items``: minibatches from the pools, selection on the gates (see the module docstring).

    ``reflection_lm``: a backend with ``complete`` (default ``backend``). Stops after ``max_proposals`` proposals or
    ``max_metric_calls`` scored responses. Returns an :class:`OptimizationResult` whose history has one entry per
    GEPA iteration (``gate_stat``: the best mean gate log p(gold) before it; ``proposals``: the proposed rules and
    their fate) and a ``"final"`` entry with the chosen candidate's gate statistic and the ``budget`` spent."""
    try:
        import gepa
        from gepa.utils.stop_condition import MaxCandidateProposalsStopper
    except ImportError as e:  # pragma: no cover - gepa is a main dependency
        raise ImportError("the GEPA baseline needs the `gepa` package: pip install gepa==0.1.4") from e
    for name, v in (("max_metric_calls", max_metric_calls), ("max_proposals", max_proposals),
                    ("minibatch_size", minibatch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
    rubric_kw, score_kw = rubric_kw or {}, score_kw or {}
    score_fn = score_fn or (lambda b, info, rub, texts: score_responses(b, info, rub, texts, **score_kw))
    rubric_fn = rubric_fn or (lambda b, reqs: build_rubrics_checked(b, reqs, **rubric_kw))
    adapter = RubricSkillAdapter(backend, items, scaffold=skill.scaffold, score_fn=score_fn, rubric_fn=rubric_fn,
                                 reject_infos=reject_infos, max_rules=max_rules, check_rules=check_rules)
    rows = lambda split: [{"item": it.info.item, "id": int(r.Id), "text": str(r.EssayText), "gold": int(r.Score1)}  # noqa: E731
                          for it in items for r in getattr(it, split).itertuples()]
    trainset, valset = rows("pool"), rows("gate")
    lm = reflection_lm or backend
    reflect = lambda p: lm.complete(p, max_tokens=reflection_max_tokens)  # noqa: E731
    rec = _Recorder()

    class _Log:
        def log(self, message: str):
            failed = any(k in message.lower() for k in ("fail", "error", "did not propose"))  # always shown
            if failed or (message.startswith("Iteration") and any(k in message for k in (
                    "subsample", "Best score on valset", "full valset"))):
                log(f"[gepa] {message.splitlines()[0][:120]}")

    res = gepa.optimize(seed_candidate={"rules": rules_text(skill)}, trainset=trainset, valset=valset,
                        adapter=adapter, reflection_lm=reflect, candidate_selection_strategy="pareto",
                        reflection_minibatch_size=minibatch_size, perfect_score=0.0, skip_perfect_score=False,
                        reflection_prompt_template=prompt("gepa_reflection", max_rules=max_rules),
                        max_metric_calls=max_metric_calls, stop_callbacks=[MaxCandidateProposalsStopper(max_proposals)],
                        logger=_Log(), callbacks=[rec], seed=seed, display_progress_bar=False,
                        raise_on_exception=True)
    best = adapter.skill_of(res.best_candidate)
    cand_skills = [adapter.skill_of(c) for c in res.candidates]
    out = OptimizationResult(initial=skill, skill=best)
    best_so_far, cur_rules = rec.val.get(0, res.val_aggregate_scores[0]), list(skill.rules)
    for i in sorted(rec.iters):
        r = rec.iters[i]
        text = r.get("text") or ""
        new = parse_rules(text, max_rules)
        old = parse_rules(r["parent"]["rules"], max_rules) if "parent" in r else list(skill.rules)
        diff = [f"+ {x}" for x in new if x not in old] + [f"- {x}" for x in old if x not in new]
        p = {"edit": ("; ".join(diff) or "(the same rules)") if text else "(no proposal)", "text": text,
             "status": r.get("status", "no proposal")}
        if "minibatch" in r:
            p["minibatch"] = list(r["minibatch"])
        if text and "parent" in r and adapter.skill_of({"rules": text}) == adapter.skill_of(r["parent"]):
            # what is left after the rule check is the parent's skill: the same rubrics, the same scores
            p["status"] = "rejected: unchanged after the rule check"
        accepted = False
        if r.get("status") == "pool":
            g = rec.val.get(r["candidate"], res.val_aggregate_scores[r["candidate"]])
            p["gate_stat"] = g
            accepted = g > best_so_far
            p["status"] = "accepted (best on the gate)" if accepted else "pool (not the best on the gate)"
        out.history.append({"iteration": i, "rules": cur_rules, "proposer": "gepa", "gate_stat": best_so_far,
                            "gate_qwk": None, "proposals": [p], "accepted": accepted})
        if accepted:
            best_so_far, cur_rules = p["gate_stat"], list(cand_skills[r["candidate"]].rules)
    out.history.append({"iteration": "final", "rules": list(best.rules), "gate_stat": float(res.val_aggregate_scores[res.best_idx]),
                        "gate_qwk": None,
                        "budget": {"proposals": len(rec.iters), "metric_calls": int(res.total_metric_calls or 0),
                                   "gate_evals": len(res.candidates) - 1, "rules_dropped": len(adapter.dropped),
                                   "rubric_retries": adapter.rubric_retries},
                        "rules_dropped": {r: w[:3] for r, w in adapter.dropped.items()}})
    out.rubrics["final"] = {i: adapter.rubrics_for(best, [i])[i] for i in adapter.items}
    return out
