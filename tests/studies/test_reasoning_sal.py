"""Soundness-Aware Level (arXiv 2510.15216): rules from planted co-activation, the judge's parsing and counting,
SAL as a Jensen-Shannon divergence with its shuffled-level control, and the whole pipeline on a real model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import jensenshannon

import helpers.studies.reasoning as R
from helpers.core.llm import LLMError


def _planted(n=4000, seed=0):
    """Premise features 0, 1, 2; conclusion 3 follows 0 (90%), 4 fires only when 1 AND 2 fire, 5 is independent."""
    g = torch.Generator().manual_seed(seed)
    P = (torch.rand(n, 3, generator=g) < torch.tensor([0.1, 0.3, 0.3])).float()
    C = torch.zeros(n, 6)
    C[:, 3] = ((P[:, 0] > 0) & (torch.rand(n, generator=g) < 0.9)).float()
    C[:, 4] = ((P[:, 1] > 0) & (P[:, 2] > 0)).float()
    C[:, 5] = (torch.rand(n, generator=g) < 0.2).float()
    return P, C


def test_horn_rules_find_planted_transitions_and_not_independent_features():
    P, C = _planted()
    rules = R.horn_rules(P, C, min_support=20, min_lift=2.0, top_k=5, pairs=True)
    got = {(r.premise, r.conclusion): r.p for r in rules.itertuples()}
    assert got[((0,), 3)] == pytest.approx(0.9, abs=0.05)
    assert got[((1, 2), 4)] == pytest.approx(1.0)
    assert not any(c == 5 for _, c in got)  # independent: lift ~1
    assert not any(c in prem for prem, c in got)  # no A -> A
    single = R.horn_rules(P, C, min_support=20, pairs=False)
    assert all(len(p) == 1 for p in single.premise)
    assert R.horn_rules(P, C, min_support=10**6).empty  # support too high: no rule, no crash


def test_horn_rules_reject_bad_input():
    P, C = _planted()
    with pytest.raises(ValueError, match="tokens"):
        R.horn_rules(P, C[:-1])
    with pytest.raises(ValueError, match="out of range"):
        R.horn_rules(P, C, premises=[7])
    with pytest.raises(ValueError, match="matrix"):
        R.horn_rules(P[:, 0], C)
    with pytest.raises(ValueError, match="min_support"):
        R.horn_rules(P, C, min_support=0)


@pytest.mark.parametrize("text, level", [("strict", "strict"), ("Plausible - usually true", "plausible"),
                                         ("NOISE.", "noisy"), ("noisy", "noisy"), ("I think it is strictly", None),
                                         ("", None), (None, None)])
def test_parse_soundness(text, level):
    assert R.parse_soundness(text) == level


def test_soundness_aware_level_is_the_jsd_of_the_level_histograms():
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0.8, 1.0, 50), rng.uniform(0.0, 0.2, 50), rng.uniform(0.4, 0.6, 10)]
    lv = np.array(["strict"] * 50 + ["noisy"] * 50 + ["plausible"] * 10, dtype=object)
    assert R.soundness_aware_level(p, lv) == pytest.approx(1.0)  # disjoint supports: the maximum, base 2
    same = np.r_[rng.uniform(0, 1, 400), rng.uniform(0, 1, 400)]
    lv2 = np.array(["strict"] * 400 + ["noisy"] * 400, dtype=object)
    sal = R.soundness_aware_level(same, lv2)
    ha, _ = np.histogram(same[:400], bins=10, range=(0, 1))
    hb, _ = np.histogram(same[400:], bins=10, range=(0, 1))
    assert sal == pytest.approx(jensenshannon(ha / 400, hb / 400, base=2) ** 2) and sal < 0.05
    assert np.isnan(R.soundness_aware_level(p[:50], lv[:50]))  # no noisy rule
    with pytest.raises(ValueError, match="unknown"):
        R.soundness_aware_level(p, lv, pair=("strict", "sound"))
    with pytest.raises(ValueError, match="same length"):
        R.soundness_aware_level(p, lv[:-1])
    t = R.sal_table(p, lv)
    assert t.loc["strict", "rules"] == 50 and t.attrs["jsd strict-noisy"] == pytest.approx(1.0)


def test_permutation_control_separates_a_real_shift_from_none():
    rng = np.random.default_rng(1)
    lv = np.array(["strict"] * 40 + ["noisy"] * 40, dtype=object)
    shifted = np.r_[rng.beta(5, 2, 40), rng.beta(2, 5, 40)]
    flat = rng.beta(2, 2, 80)
    a = R.sal_permutation_test(shifted, lv, n_perm=300)
    b = R.sal_permutation_test(flat, lv, n_perm=300)
    assert a["p_value"] < 0.01 and a["sal"] > a["null_q95"]
    assert b["p_value"] > 0.05 and a["n_rules"] == 80


class _Judge:
    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def complete_many(self, prompts, **kw):
        self.prompts += prompts
        return [self.replies[i % len(self.replies)] for i in range(len(prompts))]


def test_judge_rules_counts_unparsed_and_failed_answers():
    rules = pd.DataFrame({"premise": [(0,), (1, 2), (0,)], "conclusion": [3, 4, 5], "p": [0.9, 1.0, 0.2]})
    desc = {0: "fires on 'wait'", 1: "fires on 'so'", 2: "fires on '='", 3: "a", 4: "b", 5: "c"}
    judge = _Judge(["strict", "whatever", LLMError("down")])
    levels, stats = R.judge_rules(judge, rules, desc)
    assert levels.tolist() == ["strict", None, None] and stats == {"rules": 3, "unparsed": 2, "errors": 1}
    assert "AND" in judge.prompts[1] and "'wait'" in judge.prompts[0]
    with pytest.raises(KeyError, match="description"):
        R.judge_rules(judge, rules, {0: "x"})


def test_sal_experiment_end_to_end_on_smollm2(smol):
    """The pipeline on the real model with random SAEs at two layers and a scripted judge: rules, descriptions,
    levels for every rule, the control; and the co-occurrence guard."""
    from sae_lens import TopKSAE, TopKSAEConfig

    from helpers.core import activations as A

    model, tok = smol
    torch.manual_seed(0)
    sae_a = TopKSAE(TopKSAEConfig(d_in=576, d_sae=64, k=4))
    sae_b = TopKSAE(TopKSAEConfig(d_in=576, d_sae=64, k=4))
    texts = ["Wait, let me check that again. So 3 + 4 = 7, therefore the answer is 7."] * 2 + [
        "Hmm, maybe the other way is better. Alternatively we can divide both sides by 2."] * 2
    judge = _Judge(["strict", "plausible", "noisy", "noisy"])
    res = R.sal_experiment(model, tok, sae_a, sae_b, texts, judge, layers=(10, 20), min_support=2, min_lift=1.0,
                           top_k=2, n_perm=50, max_rules=40,
                           keep_fn=lambda h: A.ordinary_token_masks(h, factor=5.0))
    rules = res["rules"]
    assert 0 < len(rules) <= 40 and set(rules.level.dropna()) <= set(R.SOUNDNESS_LEVELS)
    assert res["judge_stats"]["rules"] == len(rules) and len(judge.prompts) == len(rules)
    assert all(d.startswith("fires on") or d.startswith("never") for d in res["descriptions"].values())
    assert res["n_tokens"] > 0 and "sal" in res["test"]
    with pytest.raises(ValueError, match="transition"):
        R.sal_experiment(model, tok, sae_a, sae_a, texts, judge, layers=(10, 10))


def test_plot_sal_shows_unparsed_rules_too():
    import matplotlib.pyplot as plt

    rules = pd.DataFrame({"p": [0.1, 0.5, 0.9], "level": [None, None, "strict"]})
    fig = R.plot_sal(rules)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["strict", "unparsed"]
    fig2 = R.plot_sal(rules.assign(level=[None] * 3))  # a judge that never answers in format still gets a figure
    assert [t.get_text() for t in fig2.axes[0].get_legend().get_texts()] == ["unparsed"]
    plt.close("all")
