"""Study 3's driver for notebook 04 (issue 15 design): item folds, disjoint slices, a fold run with both proposers
and every condition on held-out items, and the paired summaries."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from helpers.core.stats import qwk
from helpers.studies import scoring as study


# ------------------------------------------------------------------------------------------------ folds and splits
def test_item_folds_evaluate_every_item_once_on_a_skill_that_never_saw_it():
    folds = study.item_folds(range(1, 11), 2)
    assert folds == [([1, 3, 5, 7, 9], [2, 4, 6, 8, 10]), ([2, 4, 6, 8, 10], [1, 3, 5, 7, 9])]
    evaluated = sorted(i for _, ev in folds for i in ev)
    assert evaluated == list(range(1, 11))
    for tr, ev in folds:
        assert not set(tr) & set(ev)
    three = study.item_folds([4, 1, 7], 3)  # sorted first; each item trains one fold and is evaluated in two
    assert [tr for tr, _ in three] == [[1], [4], [7]] and three[0][1] == [4, 7]


@pytest.mark.parametrize("items,n,match", [([1, 1, 2], 2, "distinct"), ([1, 2], 1, r"2\.\.2"), ([1, 2], 3, r"2\.\.2"),
                                           ([1, 2, 3], 2.0, "integer")])
def test_item_folds_refuse_bad_input(items, n, match):
    with pytest.raises(ValueError, match=match):
        study.item_folds(items, n)


def test_make_splits_are_disjoint_and_eval_comes_from_val():
    item = study.load_item(5)
    sp = study.make_splits(item, n_pool=12, n_gate=40, per_score=1, n_cut=24, n_eval=30, seed=0)
    ids = [set(sp.pool.Id), set(sp.gate.Id), set(sp.examples.Id), set(sp.cut.Id)]
    assert sum(map(len, ids)) == len(set().union(*ids))  # pairwise disjoint
    assert set().union(*ids) <= set(item.train.Id) and set(sp.eval.Id) <= set(item.val.Id)
    assert sp.sizes() == {"scores": "0-3", "pool": 12, "gate": 40, "examples": 4, "cut-points": 24, "eval": 30}
    assert sorted(sp.examples.Score1) == [0, 1, 2, 3]
    again = study.make_splits(item, n_pool=12, n_gate=40, per_score=1, n_cut=24, n_eval=30, seed=0)
    assert again.cut.Id.tolist() == sp.cut.Id.tolist() and again.eval.Id.tolist() == sp.eval.Id.tolist()
    with pytest.raises(ValueError, match="cut-point set"):
        study.make_splits(item, n_pool=12, n_gate=40, per_score=1, n_cut=5000, n_eval=30, seed=0)
    with pytest.raises(ValueError, match="n_eval must be an integer >= 2"):
        study.make_splits(item, n_pool=12, n_gate=40, per_score=1, n_cut=24, n_eval=1, seed=0)


# ------------------------------------------------------------------------------------------------ a fold, end to end
class FakeLLM:
    """A scorer whose label distribution peaks at a length-based score (answers of real items: longer answers
    score higher) and sharpens when the rubric carries 'Reward precise answers.'; rubrics give one line per score
    point and echo the skill's rules; diagnoses come from a script."""

    model_id = "fake"

    def __init__(self, diagnoses=()):
        self.diagnoses, self.diagnosis_prompts, self.rubric_prompts = list(diagnoses), [], []

    def label_distribution(self, prefix, suffixes, labels, progress=False):
        sharp = 2.0 if "Reward precise answers." in prefix else 1.0
        out = []
        for s in suffixes:
            n = len(s.split("\n\n")[0].split())
            peak = min(len(labels) - 1, n // 12)
            logits = -sharp * np.abs(np.arange(len(labels)) - peak)
            out.append(np.exp(logits) / np.exp(logits).sum())
        return np.array(out), np.full(len(suffixes), 0.9)

    def complete(self, prompt, **kw):
        self.diagnosis_prompts.append(prompt)
        return self.diagnoses.pop(0) if self.diagnoses else ""

    def complete_many(self, batch, **kw):
        out = []
        for p in batch:
            self.rubric_prompts.append(p)
            lo, hi = map(int, re.search(r"\(scores (\d+) to (\d+)\)", p).groups())
            rules = re.search(r"Rules:\n(.*?)\n\n", p, re.S)
            out.append("\n".join(f"Score {k}: descriptor" for k in range(hi, lo - 1, -1)) + "\n"
                       + (rules.group(1) if rules else ""))
        return out


@pytest.fixture(scope="module")
def small_splits():
    return {i: study.make_splits(study.load_item(i), n_pool=8, n_gate=8, per_score=1, n_cut=8, n_eval=10, seed=0)
            for i in (1, 7)}


def test_run_fold_optimises_with_every_proposer_and_scores_every_condition_on_held_out_items(small_splits):
    scorer = FakeLLM()
    diagnoser = FakeLLM(["ADD: Reward precise answers.\nADD: Mention the vinegar.\nnot an edit"])
    opt = {"iterations": 1, "n_candidates": 2, "patience": 1, "n_errors": 4, "max_edits": 3, "screen_size": 4,
           "min_gate": 8}
    fold = study.run_fold(scorer, small_splits, [1], [7], optimizer=opt, rubric_kw={}, score_kw={}, seed=0,
                          diagnoser=diagnoser, log=lambda *a: None)
    assert set(fold["optimizations"]) == {"llm", "random", "gepa"}
    # the llm proposer diagnoses once, GEPA reflects once per proposal (budget: 1 iteration x 2 candidates), both
    # on the diagnoser; the random control calls no LLM
    assert len(diagnoser.diagnosis_prompts) == 3 and scorer.diagnosis_prompts == []
    assert "rules for the rubric writer" in diagnoser.diagnosis_prompts[1]
    gepa_final = fold["optimizations"]["gepa"].history[-1]
    llm_calls = fold["optimizations"]["llm"].history[-1]["budget"]["metric_calls"]
    assert llm_calls > 0 and gepa_final["budget"]["proposals"] == 2
    assert gepa_final["budget"]["metric_calls"] <= llm_calls + 3 * 2  # GEPA checks its budget before a proposal
    llm_hist = fold["optimizations"]["llm"].history
    status = {p["edit"]: p["status"] for p in llm_hist[0]["proposals"]}
    assert status["ADD: Mention the vinegar."] == "rejected: item-specific"  # item 1's own words
    assert llm_hist[0]["unparsed_lines"] == 1  # counted, never dropped
    assert fold["optimizations"]["random"].history[0]["proposer"] == "random"
    assert list(fold["scores"]) == [7] and list(fold["scores"][7]) == list(study.CONDITIONS_V2)
    rub = fold["rubrics"][7]
    for c in ("optimized skill", "random-edit skill", "GEPA skill"):  # an unchanged skill writes the initial's rubric
        if fold["skills"][c] == fold["skills"]["initial skill"]:
            assert rub[c] is rub["initial skill"]
    assert rub["no rubric"] is None and rub["expert rubric"] == small_splits[7].info.rubric
    assert all(re.search(r"Score 0:", rub[c]) for c in ("initial skill", "optimized skill", "random-edit skill"))
    for c, r in fold["scores"][7].items():
        assert r["probs"].shape == (10, 3) and np.all(np.isfinite(r["logp_gold"])) and np.all(r["logp_gold"] <= 0)
        assert set(r["preds"]) == set(study.DECISIONS) and len(r["cutpoints"]) == 2
        for d, p in r["preds"].items():
            assert len(p) == 10 and set(p) <= {0, 1, 2}, (c, d)
    with pytest.raises(ValueError, match="both trained on and evaluated"):
        study.run_fold(scorer, small_splits, [1], [1, 7], optimizer=opt, rubric_kw={}, score_kw={})
    with pytest.raises(ValueError, match=r"no splits for items \[3\]"):
        study.run_fold(scorer, small_splits, [3], [7], optimizer=opt, rubric_kw={}, score_kw={})

    per_item, means = study.conditions_frame([fold], small_splits, n_boot=200)
    assert len(per_item) == len(study.CONDITIONS_V2) * len(study.DECISIONS)
    assert set(means.n_items) == {1}
    gv = study.gate_vs_eval([fold])
    assert list(gv.proposer) == ["llm", "random", "gepa"] and list(gv["trained on"]) == ["1", "1", "1"]
    with pytest.raises(ValueError, match="unknown proposers"):
        study.run_fold(scorer, small_splits, [1], [7], optimizer=opt, rubric_kw={}, score_kw={}, proposers=("dspy",))


# ------------------------------------------------------------------------------------------------ paired summaries
def _synthetic_folds(seed=0, n=40):
    """Two items; 'optimized skill' predicts gold exactly, 'initial skill' predicts noise, others copy initial."""
    rng = np.random.default_rng(seed)
    scores, splits = {}, {}
    for item, hi in ((1, 3), (7, 2)):
        gold = rng.integers(0, hi + 1, n)
        noise = rng.integers(0, hi + 1, n)
        mk = lambda p, lp, g=gold: {"gold": g, "preds": {d: p for d in study.DECISIONS}, "logp_gold": lp}  # noqa: E731
        scores[item] = {"optimized skill": mk(gold, np.full(n, -0.5)), "initial skill": mk(noise, np.full(n, -1.2))}
        for c in ("no rubric", "expert rubric", "random-edit skill", "GEPA skill"):
            scores[item][c] = mk(noise, np.full(n, -1.2))
        info = study.load_item(item).info
        ev = pd.DataFrame({"Score1": gold, "Score2": gold, "EssayText": ["x"] * n, "Id": range(n)})
        splits[item] = study.ItemSplits(info, ev, ev, None, ev, ev)
    return [{"scores": scores, "train_items": [], "eval_items": [1, 7], "optimizations": {}}], splits


def test_paired_contrasts_find_a_real_difference_and_none_between_identical_conditions():
    folds, splits = _synthetic_folds()
    c = study.paired_contrasts(folds, splits, n_boot=500).set_index("contrast")
    opt = c.loc["optimized skill − initial skill"]
    expected = np.mean([1.0 - qwk(folds[0]["scores"][i]["initial skill"]["gold"],
                                  folds[0]["scores"][i]["initial skill"]["preds"]["cutpoints"], 0, hi)
                        for i, hi in ((1, 3), (7, 2))])
    assert opt.qwk_diff == pytest.approx(expected) and opt.qwk_ci_low > 0.3
    assert opt.logp_diff == pytest.approx(0.7) and opt.items_a_better == 2 and opt.n == 80
    same = c.loc["initial skill − expert rubric"]
    assert same.qwk_diff == 0 and same.half_width == 0 and same.logp_diff == 0


def test_human_ceiling_and_confusion():
    folds, splits = _synthetic_folds()
    ceil = study.human_ceiling(splits, n_boot=200)
    assert list(ceil.item) == [1, 7] and np.allclose(ceil.qwk, 1.0)
    m = study.confusion(folds, 7, "optimized skill")
    assert list(m.index) == list(m.columns) == [0, 1, 2] and np.all(np.diag(m.to_numpy()) > 0)
    assert m.to_numpy().sum() == 40 and (m.to_numpy() - np.diag(np.diag(m.to_numpy()))).sum() == 0


def test_cut_points_are_fitted_on_the_cut_point_set_only(small_splits):
    """No leakage: the decision rule sees the cut-point set's gold scores, never the evaluation responses' ones."""
    sp = small_splits[7]
    r = study.score_condition_v2(FakeLLM(), sp, "a rubric", score_kw={})
    cut_probs, _ = FakeLLM().label_distribution("", [f"{t}\n\nq" for t in sp.cut.EssayText], sp.info.labels)
    expected = study.fit_cutpoints(cut_probs, sp.cut.Score1.to_numpy(int), sp.info.labels)
    assert r["cutpoints"] == pytest.approx(expected.tolist())
    flipped = study.ItemSplits(sp.info, sp.pool, sp.gate, sp.examples, sp.cut,
                               sp.eval.assign(Score1=sp.info.score_max - sp.eval.Score1))
    r2 = study.score_condition_v2(FakeLLM(), flipped, "a rubric", score_kw={})
    assert r2["cutpoints"] == r["cutpoints"] and np.array_equal(r2["preds"]["cutpoints"], r["preds"]["cutpoints"])
    assert not np.allclose(r2["logp_gold"], r["logp_gold"])  # only the read-out against gold changes
