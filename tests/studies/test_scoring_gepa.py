"""Study 3's GEPA baseline: GEPA (the `gepa` engine behind dspy.GEPA) on the same rules, slices and budget, with a
planted effect (a rule that raises p(gold)) it must find, an item-specific rule it must drop, and its budget."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.studies import scoring as study
from tests.studies.test_scoring_experiment import FakeLLM

GOOD = "Reward precise answers."


class GoldAwareScorer(FakeLLM):
    """p(gold) is 0.4 with any rubric and 0.8 when the rubric carries GOOD (a planted, real improvement of the gate
    statistic); the rest of the mass is spread over the other labels; rubrics echo the skill's rules (FakeLLM)."""

    def __init__(self, gold_by_text):
        super().__init__()
        self.gold_by_text = gold_by_text

    def label_distribution(self, prefix, suffixes, labels, progress=False):
        p = 0.8 if GOOD in prefix else 0.4
        out = []
        for s in suffixes:
            g = next(v for t, v in self.gold_by_text.items() if t[:40] in s)
            row = np.full(len(labels), (1 - p) / (len(labels) - 1))
            row[labels.index(str(g))] = p
            out.append(row)
        return np.array(out), np.full(len(suffixes), 0.9)


class Reflector:
    """A reflection LM that proposes the planted rule plus an item-specific one, in GEPA's ``` block format."""

    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def complete(self, prompt, **kw):
        self.prompts.append(prompt)
        return self.reply


@pytest.fixture(scope="module")
def items():
    sp = {i: study.make_splits(study.load_item(i), n_pool=8, n_gate=12, per_score=1, n_cut=8, n_eval=10, seed=0)
          for i in (1, 7)}
    return [s.train_item() for s in sp.values()]


def _gold(items):
    return {t: int(g) for it in items for df in (it.pool, it.gate) for t, g in zip(df.EssayText, df.Score1)}


def test_gepa_finds_a_planted_rule_drops_item_specific_ones_and_keeps_its_budget(items):
    scorer = GoldAwareScorer(_gold(items))
    refl = Reflector(f"Here are the rules:\n```\nR1. {GOOD}\nR2. Mention the vinegar.\nR3. Write one descriptor per "
                     "score point, from the highest score to the lowest.\n```")
    res = study.optimize_skill_gepa(scorer, items, study.initial_skill(), max_metric_calls=200, max_proposals=2,
                                    reflection_lm=refl, log=lambda *a: None)
    assert GOOD in res.skill.rules and "Mention the vinegar." not in res.skill.rules
    final = res.history[-1]
    assert final["iteration"] == "final" and "Mention the vinegar." in final["rules_dropped"]
    assert final["budget"]["proposals"] == 2 and final["budget"]["metric_calls"] <= 200
    assert final["gate_stat"] == pytest.approx(np.log(0.8))  # every gate response at p(gold) = 0.8
    first = res.history[0]
    assert first["gate_stat"] == pytest.approx(np.log(0.4)) and first["accepted"]
    assert first["proposals"][0]["status"].startswith("accepted")
    # the reflection prompt is GEPA's mechanism with our template: rules for the rubric writer, with the traces
    assert len(refl.prompts) == 2 and "rules for the rubric writer" in refl.prompts[0]
    assert "The correct score is" in refl.prompts[0] and "Rubric written with the rules" in refl.prompts[0]
    assert set(res.rubrics["final"]) == {1, 7}


def test_gepa_keeps_the_initial_skill_when_no_proposal_helps_and_refuses_bad_budgets(items):
    scorer = GoldAwareScorer(_gold(items))
    refl = Reflector("```\nR1. Keep each descriptor short.\n```")  # no effect on p(gold): never better
    res = study.optimize_skill_gepa(scorer, items, study.initial_skill(), max_metric_calls=60, max_proposals=3,
                                    reflection_lm=refl, log=lambda *a: None)
    assert res.skill == study.initial_skill()
    assert not any(h.get("accepted") for h in res.history[:-1])
    assert res.history[-1]["budget"]["metric_calls"] <= 60 + 6  # GEPA checks its budget before each proposal
    # a proposal that is the current rules plus an item-specific one is the current skill after the rule check
    refl = Reflector("```\n" + study.rules_text(study.initial_skill()) + "\nR4. Mention the vinegar.\n```")
    res = study.optimize_skill_gepa(scorer, items, study.initial_skill(), max_metric_calls=60, max_proposals=2,
                                    reflection_lm=refl, log=lambda *a: None)
    assert [h["proposals"][0]["status"] for h in res.history[:-1]] == ["rejected: unchanged after the rule check"] * 2
    assert res.skill == study.initial_skill()
    with pytest.raises(ValueError, match="max_metric_calls must be an integer >= 1"):
        study.optimize_skill_gepa(scorer, items, study.initial_skill(), max_metric_calls=0, max_proposals=1)


def test_parse_rules_strips_numbering_and_headers_and_caps():
    text = "Rules:\n1. **Write** one descriptor per point.\n- R2: State the minimum for each score.\nR3. ok\n" \
           "R4. write one descriptor per point.\nRate answers by ideas present."
    assert study.parse_rules(text) == ["Write one descriptor per point.", "State the minimum for each score.",
                                       "Rate answers by ideas present."]
    assert study.parse_rules(text, max_rules=1) == ["Write one descriptor per point."]
    assert study.rules_text(study.Skill(("a b c", "d e f"))) == "R1. a b c\nR2. d e f"


def test_gepa_budget_matches_the_diagnosed_loop():
    opt = {"iterations": 3, "n_candidates": 2, "screen_size": 12}
    assert study.gepa_budget(opt, 5, 12, 40) == (6, 5 * (40 + 3 * (12 + 2 * (12 + 40))))

    class R:
        history = [{"iteration": 1}, {"iteration": "final", "budget": {"metric_calls": 620}}]
    assert study.gepa_budget(opt, 5, 12, 40, R()) == (6, 620)


def test_a_failing_reflection_lm_is_shown_and_recorded_not_hidden(items):
    """GEPA catches a reflection LM's exception and goes on; the failure must still reach the log and the history."""
    scorer = GoldAwareScorer(_gold(items))

    class Down:
        def complete(self, prompt, **kw):
            raise ConnectionError("server down")

    lines = []
    res = study.optimize_skill_gepa(scorer, items, study.initial_skill(), max_metric_calls=60, max_proposals=2,
                                    reflection_lm=Down(), log=lines.append)
    assert any("fail" in x.lower() or "did not propose" in x for x in lines)
    assert res.skill == study.initial_skill()
    assert len(res.history) == 3 and all(h["proposals"][0]["edit"] == "(no proposal)" for h in res.history[:-1])
