"""Study 3 driver for notebook 04 (issue 15 design): a skill learned on some items, judged on items it never saw.

* :func:`item_folds`: items split into ``n_folds`` groups (alternating over the sorted item numbers, so that 0-3
  and 0-2 items land in both); fold ``f`` optimises the skill on group ``f`` and evaluates it on every other item
  (2 folds: each item is evaluated once, by a skill that never saw it);
* :func:`make_splits`: per item, disjoint slices of ``train.csv`` - diagnosis pool, validation gate, rubric examples
  (one per score point, the same for every condition that takes examples), and a **cut-point set** on which each
  condition's decision rule is fitted - and a stratified evaluation sample of ``val.csv`` that no selection sees;
* :func:`run_fold`: :func:`~helpers.studies.scoring.optimize_v2.optimize_skill_v2` twice on the fold's training
  items, with the LLM diagnoser and with random edits (the control: same loop, gate and budget), then GEPA on the
  same rules within the diagnosed loop's budget (:mod:`~helpers.studies.scoring.gepa_baseline`), then every
  condition (no rubric, expert rubric, initial skill, optimized skill, random-edit skill, GEPA skill) on the
  held-out items;
* :func:`score_condition_v2`: label distributions on the evaluation and cut-point sets, the mean log p(gold) per
  response (continuous, the gate's statistic), and scores under every decision rule on the same distributions
  (cut-points fitted on the cut-point set: the default; batch calibration, argmax and rounded expectation beside);
* :func:`conditions_frame`, :func:`paired_contrasts`, :func:`gate_vs_eval`, :func:`human_ceiling`,
  :func:`confusion`: the summaries notebook 04 shows; :func:`plot_conditions_v2`, :func:`plot_contrasts`,
  :func:`plot_gate_trace`: its figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.stats import bootstrap_ci, paired_qwk_diff_items, qwk, qwk_ci, stratified_mean_ci

from .decision import fit_cutpoints
from .evaluation import decide, score_responses
from .gepa_baseline import optimize_skill_gepa
from .items import Item, ReadmeInfo, split_train_examples, stratified_sample
from .optimize import TrainItem
from .optimize_v2 import gate_statistic, optimize_skill_v2
from .skills import DESCRIPTORS_FIRST_SCAFFOLD, Skill, build_rubrics_checked

__all__ = ["CONDITIONS_V2", "CONTRASTS", "DECISIONS", "PROPOSER_CONDITION", "ItemSplits", "conditions_frame",
           "confusion", "gate_vs_eval", "gepa_budget", "human_ceiling", "initial_skill", "item_folds", "make_splits",
           "paired_contrasts", "plot_conditions_v2", "plot_contrasts", "plot_gate_trace", "run_fold",
           "score_condition_v2"]

#: Conditions scored on every held-out item (the zero-shot rubric of the first design is dropped: it is the
#: initial skill without rules, and each condition costs a rubric per item).
CONDITIONS_V2 = ("no rubric", "expert rubric", "initial skill", "optimized skill", "random-edit skill", "GEPA skill")
#: The condition each optimiser ("proposer") produces.
PROPOSER_CONDITION = {"llm": "optimized skill", "random": "random-edit skill", "gepa": "GEPA skill"}
#: Decision rules reported side by side on the same label distributions ("cutpoints" is the study's).
DECISIONS = ("cutpoints", "calibrated", "argmax", "expected")
#: The paired comparisons the study is about: (condition a, condition b), reported as a - b.
CONTRASTS = (("optimized skill", "initial skill"), ("optimized skill", "expert rubric"),
             ("optimized skill", "random-edit skill"), ("optimized skill", "GEPA skill"), ("GEPA skill", "initial skill"),
             ("initial skill", "expert rubric"), ("expert rubric", "no rubric"))


def initial_skill() -> Skill:
    """The initial skill: the descriptors-first scaffold and the three seed rules."""
    return Skill(scaffold=DESCRIPTORS_FIRST_SCAFFOLD)


def item_folds(items, n_folds: int = 2) -> list[tuple[list[int], list[int]]]:
    """``[(train_items, eval_items), ...]``: sorted items dealt round-robin into ``n_folds`` groups; fold ``f``
    trains on group ``f`` and evaluates on all other items."""
    items = sorted(int(i) for i in items)
    if len(set(items)) != len(items):
        raise ValueError(f"items must be distinct, got {items}.")
    if not isinstance(n_folds, int) or n_folds < 2 or n_folds > len(items):
        raise ValueError(f"n_folds must be an integer in 2..{len(items)} (the number of items), got {n_folds!r}.")
    groups = [items[f::n_folds] for f in range(n_folds)]
    return [(g, [i for i in items if i not in g]) for g in groups]


@dataclass
class ItemSplits:
    """One item's disjoint slices: ``pool``/``gate``/``examples``/``cut`` from train.csv, ``eval`` from val.csv."""

    info: ReadmeInfo
    pool: pd.DataFrame
    gate: pd.DataFrame
    examples: pd.DataFrame | None
    cut: pd.DataFrame
    eval: pd.DataFrame

    def train_item(self) -> TrainItem:
        return TrainItem(self.info, self.pool, self.gate, self.examples)

    def sizes(self) -> dict[str, Any]:
        return {"scores": f"{self.info.score_min}-{self.info.score_max}", "pool": len(self.pool),
                "gate": len(self.gate), "examples": 0 if self.examples is None else len(self.examples),
                "cut-points": len(self.cut), "eval": len(self.eval)}


def make_splits(item: Item, *, n_pool: int, n_gate: int, per_score: int, n_cut: int, n_eval: int,
                seed: int) -> ItemSplits:
    """Disjoint slices of one item (see the module docstring); ``eval`` from ``item.test`` when one was given."""
    for name, v in (("n_pool", n_pool), ("n_gate", n_gate), ("n_cut", n_cut), ("n_eval", n_eval)):
        if not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}.")
    pool, gate, ex = split_train_examples(item.train, n_pool, n_gate, per_score, seed)
    used = set(pool["Id"]) | set(gate["Id"]) | (set(ex["Id"]) if ex is not None else set())
    rest = item.train[~item.train["Id"].isin(used)]
    if len(rest) < n_cut:
        raise ValueError(f"item {item.info.item}: {len(rest)} train responses left for the cut-point set, "
                         f"n_cut={n_cut}; lower n_pool, n_gate or n_cut.")
    cut = stratified_sample(rest, n_cut, seed + 2)
    ev = stratified_sample(item.test if item.test is not None else item.val, n_eval, seed)
    return ItemSplits(item.info, pool, gate, ex, cut, ev)


def score_condition_v2(backend, sp: ItemSplits, rubric: str | None, *, score_kw: dict,
                       cut_objective: str = "qwk") -> dict[str, Any]:
    """Label distributions of ``sp.eval`` and ``sp.cut`` under ``rubric``; per evaluation response the log p(gold)
    and the score under every rule of :data:`DECISIONS` (cut-points fitted on ``sp.cut`` with
    :func:`~helpers.studies.scoring.decision.fit_cutpoints`; batch calibration over the evaluation batch)."""
    kw = {**score_kw, "method": "likelihood", "decision": "argmax"}
    ev = score_responses(backend, sp.info, rubric, sp.eval["EssayText"].tolist(), **kw)
    cut = score_responses(backend, sp.info, rubric, sp.cut["EssayText"].tolist(), **kw)
    labels = sp.info.labels
    cps = fit_cutpoints(cut.probs, sp.cut["Score1"].to_numpy(int), labels, objective=cut_objective)
    preds = decide(ev.probs, labels, cutpoints=cps)
    gold = sp.eval["Score1"].to_numpy(int)
    idx = np.array([labels.index(g) for g in gold])
    logp = np.log(np.clip(ev.probs[np.arange(len(gold)), idx], 1e-12, None))
    return {"probs": ev.probs, "label_mass": float(np.mean(ev.label_mass)), "cutpoints": cps.tolist(),
            "preds": {k: np.asarray(v, int) for k, v in preds.items()}, "logp_gold": logp, "gold": gold,
            "cut_stat": gate_statistic(cut.probs, sp.cut["Score1"].to_numpy(int), labels)}


def gepa_budget(optimizer: dict, n_items: int, n_pool: int, n_gate: int, llm_result=None) -> tuple[int, int]:
    """``(max_proposals, max_metric_calls)`` for the GEPA baseline: the diagnosed loop's candidate budget
    (iterations x n_candidates) and the responses it scored in the same fold (its ``budget["metric_calls"]``), or,
    without a diagnosed run, the most it could score (initial gate + per iteration the pool and every candidate's
    screen and gate)."""
    it, nc = optimizer.get("iterations", 3), optimizer.get("n_candidates", 3)
    if llm_result is not None:
        calls = next(h for h in llm_result.history if h["iteration"] == "final")["budget"]["metric_calls"]
    else:
        screen = min(optimizer.get("screen_size", 12), n_gate)
        calls = n_items * (n_gate + it * (n_pool + nc * (screen + n_gate)))
    return it * nc, int(calls)


def run_fold(backend, splits: dict[int, ItemSplits], train_items: list[int], eval_items: list[int], *,
             optimizer: dict, rubric_kw: dict, score_kw: dict, seed: int = 0, diagnoser=None,
             proposers: tuple[str, ...] = ("llm", "random", "gepa"), log=print) -> dict[str, Any]:
    """One item fold: optimise the initial skill on ``train_items`` with each proposer ("llm": diagnosed edits,
    the optimized skill; "random": the random-edit control; "gepa": GEPA on the same rules, slices, diagnoser and
    budget, :func:`gepa_budget`), then score every condition of :data:`CONDITIONS_V2` on each of ``eval_items``
    (a proposer not run leaves its condition at the initial skill). Returns ``{"optimizations": {proposer:
    OptimizationResult}, "skills": {condition: Skill}, "rubrics": {item: {condition: str | None}},
    "rubric_reports": ..., "scores": {item: {condition: score_condition_v2 result}}}``."""
    bad = sorted(set(train_items) & set(eval_items))
    if bad:
        raise ValueError(f"items {bad} are both trained on and evaluated in this fold; folds must be disjoint.")
    missing = sorted((set(train_items) | set(eval_items)) - set(splits))
    if missing:
        raise ValueError(f"no splits for items {missing}; make_splits them first.")
    unknown = [p for p in proposers if p not in PROPOSER_CONDITION]
    if unknown:
        raise ValueError(f"unknown proposers {unknown}; choose from {sorted(PROPOSER_CONDITION)}.")
    s0 = initial_skill()
    train = [splits[i].train_item() for i in train_items]
    infos = [splits[i].info for i in sorted(splits)]
    opts = {}
    for prop in sorted(proposers, key=lambda p: p == "gepa"):  # GEPA last: its budget is the diagnosed loop's
        log(f"fold trained on items {train_items}: optimising with proposer={prop!r}")
        if prop == "gepa":
            props, calls = gepa_budget(optimizer, len(train), len(train[0].pool), len(train[0].gate), opts.get("llm"))
            opts[prop] = optimize_skill_gepa(
                backend, train, s0, max_metric_calls=calls, max_proposals=props, reflection_lm=diagnoser,
                max_rules=optimizer.get("max_rules", 8), reflection_max_tokens=optimizer.get("diagnosis_max_tokens", 200),
                score_kw={**score_kw, "decision": "expected"}, rubric_kw=rubric_kw, seed=seed, reject_infos=infos,
                log=log)
            continue
        opts[prop] = optimize_skill_v2(backend, train, s0, proposer=prop, diagnoser=diagnoser if prop == "llm" else None,
                                       score_kw={**score_kw, "decision": "expected"}, rubric_kw=rubric_kw,
                                       seed=seed, reject_infos=infos, log=log, **optimizer)
    skills = {"initial skill": s0, **{c: opts[p].skill if p in opts else s0 for p, c in PROPOSER_CONDITION.items()}}
    # one rubric per distinct skill and item: a skill the optimiser left unchanged writes the *same* rubric as the
    # initial skill (identical prompts sent together can come back different from a batching server)
    pairs = [(i, sk) for i in eval_items for sk in dict.fromkeys(skills.values())]
    rubs, reports = build_rubrics_checked(backend, [(splits[i].info, sk, splits[i].examples) for i, sk in pairs],
                                          **rubric_kw)
    built = dict(zip(pairs, zip(rubs, reports)))
    rubrics, rub_reports = {}, {}
    for i in eval_items:
        rubrics[i] = {"no rubric": None, "expert rubric": splits[i].info.rubric}
        for c, sk in skills.items():
            rubrics[i][c], rub_reports[f"{i}/{c}"] = built[(i, sk)]
    scores = {}
    for i in eval_items:
        log(f"  scoring item {i} under {len(CONDITIONS_V2)} conditions")
        scores[i] = {c: score_condition_v2(backend, splits[i], rubrics[i][c], score_kw=score_kw) for c in CONDITIONS_V2}
    return {"train_items": list(train_items), "eval_items": list(eval_items), "optimizations": opts,
            "skills": skills, "rubrics": rubrics, "rubric_reports": rub_reports, "scores": scores}


# ------------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------------
def _all_scores(folds: list[dict]) -> dict[int, dict[str, dict]]:
    out = {}
    for f in folds:
        out.update(f["scores"])
    return dict(sorted(out.items()))


def conditions_frame(folds: list[dict], splits: dict[int, ItemSplits], *, n_boot: int = 1000,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_item, means)``: per (item, condition, decision) QWK with its bootstrap CI, accuracy, mean log p(gold)
    and label mass; and per (condition, decision) the mean over items with a stratified bootstrap CI (items
    resampled independently)."""
    rows, ivs = [], {}
    for i, conds in _all_scores(folds).items():
        lo, hi = splits[i].info.score_min, splits[i].info.score_max
        for c, r in conds.items():
            for d, p in r["preds"].items():
                iv = qwk_ci(r["gold"], p, lo, hi, n_boot=n_boot, seed=seed)
                ivs.setdefault((c, d), []).append(iv)
                rows.append({"item": i, "condition": c, "decision": d, "qwk": iv.estimate, "qwk_ci_low": iv.low,
                             "qwk_ci_high": iv.high, "accuracy": float(np.mean(p == r["gold"])),
                             "logp_gold": float(np.mean(r["logp_gold"])), "label_mass": r["label_mass"],
                             "n": len(p)})
    per_item = pd.DataFrame(rows)
    logp = per_item.groupby(["condition", "decision"]).logp_gold.mean()
    means = [{"condition": c, "decision": d, "qwk": m.estimate, "qwk_ci_low": m.low, "qwk_ci_high": m.high,
              "logp_gold": float(logp[c, d]), "n_items": len(lst)}
             for (c, d), lst in ivs.items() for m in [stratified_mean_ci(lst)]]
    return per_item, pd.DataFrame(means)


def paired_contrasts(folds: list[dict], splits: dict[int, ItemSplits], *, contrasts=CONTRASTS,
                     decision: str = "cutpoints", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Paired differences ``a - b`` over the same evaluation responses, for each contrast: mean over items of the
    QWK difference (:func:`~helpers.core.stats.paired_qwk_diff_items`, responses resampled within items) and the
    mean per-response difference in log p(gold) (paired bootstrap over responses). ``half_width`` is half the
    QWK interval: the smallest difference this design resolves (its power, stated with the result)."""
    scores = _all_scores(folds)
    rows = []
    for a, b in contrasts:
        trip = [(r[a]["gold"], r[a]["preds"][decision], r[b]["preds"][decision], splits[i].info.score_min,
                 splits[i].info.score_max) for i, r in scores.items()]
        iv = paired_qwk_diff_items(trip, n_boot=n_boot, seed=seed)
        d = np.concatenate([r[a]["logp_gold"] - r[b]["logp_gold"] for r in scores.values()])
        lp = bootstrap_ci(d, n_boot=n_boot, seed=seed)
        per_item = {i: qwk(r[a]["gold"], r[a]["preds"][decision], splits[i].info.score_min, splits[i].info.score_max)
                    - qwk(r[b]["gold"], r[b]["preds"][decision], splits[i].info.score_min, splits[i].info.score_max)
                    for i, r in scores.items()}
        rows.append({"contrast": f"{a} − {b}", "qwk_diff": iv.estimate, "qwk_ci_low": iv.low, "qwk_ci_high": iv.high,
                     "half_width": (iv.high - iv.low) / 2, "items_a_better": int(sum(v > 0 for v in per_item.values())),
                     "items_b_better": int(sum(v < 0 for v in per_item.values())), "logp_diff": lp.estimate,
                     "logp_ci_low": lp.low, "logp_ci_high": lp.high, "n_items": len(scores), "n": int(d.size)})
    return pd.DataFrame(rows)


def gate_vs_eval(folds: list[dict]) -> pd.DataFrame:
    """Per fold and proposer: the gate's gain (final - initial mean log p(gold) on the training items' gates) beside
    the gain on the held-out items' evaluation responses (skill - initial skill), and the accepted edits."""
    rows = []
    for f in folds:
        for prop, res in f["optimizations"].items():
            hist = [h for h in res.history if h["iteration"] != "final"]
            final = next(h for h in res.history if h["iteration"] == "final")
            cond = PROPOSER_CONDITION[prop]
            ev = [np.mean(r[cond]["logp_gold"] - r["initial skill"]["logp_gold"]) for r in f["scores"].values()]
            rows.append({"trained on": ",".join(map(str, f["train_items"])), "proposer": prop,
                         "iterations": len(hist), "accepted": int(sum(h.get("accepted", False) for h in hist)),
                         "gate_gain": final["gate_stat"] - hist[0]["gate_stat"] if hist else 0.0,
                         "eval_gain": float(np.mean(ev)), "budget": final.get("budget")})
    return pd.DataFrame(rows)


def human_ceiling(splits: dict[int, ItemSplits], *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """QWK between the two human raters (Score1 vs Score2) on each item's evaluation responses: the ceiling."""
    rows = []
    for i, sp in sorted(splits.items()):
        iv = qwk_ci(sp.eval["Score1"], sp.eval["Score2"], sp.info.score_min, sp.info.score_max, n_boot=n_boot, seed=seed)
        rows.append({"item": i, "qwk": iv.estimate, "qwk_ci_low": iv.low, "qwk_ci_high": iv.high})
    return pd.DataFrame(rows)


def confusion(folds: list[dict], item: int, condition: str, decision: str = "cutpoints") -> pd.DataFrame:
    """Gold (rows) by predicted (columns) counts for one item and condition, every score point shown."""
    r = _all_scores(folds)[item][condition]
    labels = sorted(set(r["gold"]) | set(r["preds"][decision]))
    return pd.crosstab(pd.Series(r["gold"], name="gold"), pd.Series(r["preds"][decision], name="predicted")).reindex(
        index=labels, columns=labels, fill_value=0)


# ------------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------------
def plot_conditions_v2(per_item: pd.DataFrame, ceiling: pd.DataFrame, decision: str = "cutpoints"):
    """QWK per item and condition (one decision rule) with bootstrap CIs, the human ceiling as a black tick."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = per_item[per_item.decision == decision]
    items = sorted(df.item.unique())
    conds = [c for c in CONDITIONS_V2 if c in set(df.condition)]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    pal = dict(zip(conds, sns.color_palette("colorblind", len(conds))))
    w = 0.8 / len(conds)
    for k, c in enumerate(conds):
        sub = df[df.condition == c].set_index("item").reindex(items)
        x = np.arange(len(items)) + (k - (len(conds) - 1) / 2) * w
        ax.bar(x, sub.qwk, w, color=pal[c], label=c)
        ax.errorbar(x, sub.qwk, yerr=[sub.qwk - sub.qwk_ci_low, sub.qwk_ci_high - sub.qwk], fmt="none", ecolor="0.3",
                    lw=0.8)
    ceil = ceiling.set_index("item").reindex(items)
    ax.scatter(np.arange(len(items)), ceil.qwk, marker="_", s=400, color="black", zorder=5, label="human ceiling")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xticks(np.arange(len(items)), [f"item {i}" for i in items])
    ax.set_ylabel(f"QWK ({decision})")
    ax.legend(ncol=3, fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.12), frameon=False)
    fig.tight_layout()
    return fig


def plot_contrasts(contrasts: pd.DataFrame):
    """Forest plot of the paired differences: QWK (left) and log p(gold) per response (right), 95% CIs."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 + 0.55 * len(contrasts)), sharey=True)
    y = np.arange(len(contrasts))[::-1]
    for ax, (est, lo, hi, lab) in zip(axes, [("qwk_diff", "qwk_ci_low", "qwk_ci_high", "QWK difference"),
                                             ("logp_diff", "logp_ci_low", "logp_ci_high",
                                              "log p(gold) difference per response")]):
        ax.errorbar(contrasts[est], y, xerr=[contrasts[est] - contrasts[lo], contrasts[hi] - contrasts[est]],
                    fmt="o", color="C0", capsize=3)
        ax.axvline(0, color="0.4", lw=0.8, ls="--")
        ax.set_xlabel(lab)
    axes[0].set_yticks(y, contrasts.contrast)
    fig.tight_layout()
    return fig


def plot_gate_trace(folds: list[dict]):
    """Gate statistic (mean log p(gold) over the training items' gates) per iteration, per fold and proposer."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = []
    for f in folds:
        for prop, res in f["optimizations"].items():
            for h in res.history:
                it = len([x for x in res.history if x["iteration"] != "final"]) if h["iteration"] == "final" else h["iteration"] - 1
                rows.append({"fold": "trained on " + ",".join(map(str, f["train_items"])), "proposer": prop,
                             "step": it, "gate log p(gold)": h["gate_stat"]})
    df = pd.DataFrame(rows).drop_duplicates(["fold", "proposer", "step"], keep="last")
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.lineplot(df, x="step", y="gate log p(gold)", hue="fold", style="proposer", markers=True, ax=ax)
    ax.set_xlabel("iteration (0: initial skill)")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
