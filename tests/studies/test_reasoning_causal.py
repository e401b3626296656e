"""Study 1's causal machinery: the outlier policy in ReasonScore (planted sink features), the feature clamp,
resuming a forward pass from a cached residual, frequency-matched controls and the teacher-forced measures."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import helpers.studies.reasoning as R
from helpers.core import activations as A
from helpers.core import steering

from .test_reasoning import FAKE, _planted_corpus


@pytest.fixture(scope="module")
def random_sae(tmp_path_factory):
    from sae_lens import TopKSAE, TopKSAEConfig

    from helpers.core.sae import load_sae

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sae")
    TopKSAE(TopKSAEConfig(d_in=64, d_sae=128, k=8)).save_model(path)
    return load_sae(path)


def _with_sink_features(acts, sink=1000.0):
    """Add f4 (fires only at position 0, hugely) and f5 (= f0, the reasoning feature, plus a huge sink value)."""
    out = []
    for a in acts:
        f4 = torch.zeros(len(a), 1)
        f4[0] = sink
        f5 = a[:, :1].clone()
        f5[0] = sink
        out.append(torch.cat([a, f4, f5], 1))
    return out


def test_sink_features_score_where_the_formula_says():
    docs, acts = _planted_corpus()
    acts = _with_sink_features(acts)
    keep = [torch.arange(len(d)) > 0 for d in docs]  # the policy's position-0 exclusion
    with_policy = R.reason_score(acts, docs, FAKE, keep=keep)
    # excluded tokens leave every set: the position-0-only feature has mu = 0 everywhere and scores exactly 0, and the
    # sink feature scores as its sink-free twin f0
    assert with_policy.loc[4, ["score", "mu_reason", "mu_other"]].tolist() == [0.0, 0.0, 0.0]
    assert with_policy.score[5] == pytest.approx(with_policy.score[0], rel=1e-9)
    assert R.select_features(with_policy, q=0.6)[0] in (0, 5)
    # kept, the sink sits in D_notR: mu_other of f4 is sink / n_other_tokens and its score is -mu_o / sum_j mu_o(j)
    kept = R.reason_score(acts, docs, FAKE)
    n_other = kept.attrs["n_other_tokens"]
    assert kept.mu_other[4] == pytest.approx(1000.0 * len(docs) / n_other, rel=1e-6)
    assert kept.score[4] == pytest.approx(-kept.mu_other[4] / kept.mu_other.sum(), rel=1e-9)
    assert kept.score[5] < with_policy.score[5]  # the sink costs the reasoning feature its rank
    with pytest.raises(ValueError, match="keep has"):
        R.reason_score(acts, docs, FAKE, keep=keep[:-1])


def test_compare_selections_overlap_and_rank_correlation():
    docs, acts = _planted_corpus()
    a = R.reason_score(acts, docs, FAKE)
    b = a.copy()
    b["score"] = -b["score"]
    cmp = R.compare_selections({"a": a, "b": b}, "a", q=0.5, top=4)
    assert cmp.loc["a", "shared_with_reference"] == cmp.loc["a", "n_selected"] == 2
    assert cmp.loc["a", "spearman_all"] == pytest.approx(1.0) and cmp.loc["b", "spearman_all"] == pytest.approx(-1.0)
    assert cmp.loc["b", "shared_with_reference"] == 0
    with pytest.raises(KeyError):
        R.compare_selections({"a": a}, "zzz")


def test_ordinary_token_masks_drop_the_sink_and_huge_norm_tokens():
    h = torch.ones(6, 4)
    h[0] *= 500   # position 0
    h[3] *= 10    # a huge-norm token: 10x the median
    g = torch.ones(3, 4)
    masks, med = A.ordinary_token_masks([h, g])
    assert med == pytest.approx(2.0)
    assert masks[0].tolist() == [False, True, True, False, True, True] and masks[1].tolist() == [False, True, True]
    masks, _ = A.ordinary_token_masks([h], median=100.0)  # a reference median keeps position 3
    assert masks[0].tolist() == [False, True, True, True, True, True]
    with pytest.raises(ValueError, match="factor"):
        A.ordinary_token_masks([h], factor=1.0)


def test_activation_scale_is_a_quantile_of_nonzero_ordinary_activations():
    lat = [torch.tensor([[100.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])]
    keep = [torch.tensor([False, True, True, True])]
    s = steering.activation_scale(lat, keep, q=1.0)
    assert s.tolist() == [2.0, 0.0]  # the sink value 100 is out; a dead latent gets 0
    with pytest.raises(ValueError, match="q must"):
        steering.activation_scale(lat, keep, q=0.0)


def test_feature_edit_clamp_ablate_and_add(random_sae):
    x = torch.randn(5, 64) * 3
    a = random_sae.encode(x)
    i = int(a.sum(0).argmax())  # a latent active on some rows
    w = random_sae.W_dec[i].detach()
    pos = torch.arange(5)
    clamp = steering.feature_edit(random_sae, i, 7.0)(x, pos)
    torch.testing.assert_close(clamp - x, (7.0 - a[:, i:i + 1]) * w, rtol=1e-5, atol=1e-5)
    ablate = steering.feature_edit(random_sae, i, 0.0)(x, pos)
    torch.testing.assert_close(ablate, x - a[:, i:i + 1] * w, rtol=1e-5, atol=1e-5)
    add = steering.feature_edit(random_sae, i, 2.0, mode="add")(x, pos)
    torch.testing.assert_close(add - x, 2.0 * w.expand(5, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        steering.feature_edit(random_sae, 128, 1.0)
    with pytest.raises(ValueError, match="mode"):
        steering.feature_edit(random_sae, 0, 1.0, mode="set")


def test_resumable_forward_reproduces_the_full_forward(tiny):
    model, tok = tiny
    ids = torch.randint(100, 1000, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
    rf = A.ResumableForward(model, ids, 1)
    torch.testing.assert_close(rf.log_probs(rf.resid), full, rtol=1e-5, atol=1e-5)
    rows, cols = torch.tensor([0, 2]), torch.tensor([3, 11])
    torch.testing.assert_close(rf.log_probs(rf.resid, rows, cols), full[rows, cols], rtol=1e-5, atol=1e-5)
    # an edit at block 1 equals the same edit applied by the hook in a full forward pass
    v = torch.randn(64)
    with A.add_vector(model, 1, v), torch.inference_mode():
        hooked = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
    torch.testing.assert_close(rf.log_probs(rf.resid + v), hooked, rtol=1e-4, atol=1e-4)


def test_control_features_are_frequency_matched_and_never_selected():
    freq = np.array([0.5, 0.52, 0.49, 0.1, 0.11, 0.0, 0.3, 0.9])
    ctrl = R.control_features(freq, [0, 3], exclude=[1], seed=0)
    assert ctrl[0] == 2 and ctrl[1] == 4  # the only live latents within 25% of 0.5 (not 1: excluded) and of 0.1
    assert R.control_features(freq, [0, 3], exclude=[1], seed=0) == ctrl  # seeded
    wide = R.control_features(np.array([0.5, 0.05, 0.0]), [0], exclude=[], seed=0)
    assert wide == [1]  # the band widens until a live latent fits; the dead one (freq 0) is never chosen
    two = R.control_features(freq, [0], exclude=[], per_target=2, seed=0)
    assert sorted(two) == [1, 2]  # two per target, both within the band, none twice
    with pytest.raises(ValueError, match="only 1 live"):
        R.control_features(np.array([0.5, 0.05, 0.0]), [0], exclude=[], per_target=2, seed=0, tolerance=1e4)


def test_teacher_forced_effects_null_edit_is_zero_and_a_big_edit_costs(tiny, random_sae):
    model, tok = tiny
    ids = torch.tensor([tok("Wait, the sum is 4. But maybe it is 5. Hmm, let me check the sum again. So it is 4. "
                            "Therefore the answer is 4.", add_special_tokens=False)["input_ids"]] * 2)
    seqs = R.reasoning_token_sequences(tok, variants="all")
    sites = R.token_sites(tok, ids, seqs, n_other=5, seed=0)
    assert {w for _, _, w in sites.word} >= {"but", "maybe", "let me", "therefore"} and len(sites.boundary) >= 4
    conds = [R.Condition("add big", "random", 0, 1.0, 50.0, mode="add"), R.Condition("add none", "random", 1, 0.0, 0.0, mode="add")]
    eff, pw = R.teacher_forced_effects(model, random_sae, 2, ids, sites, conds, batch_size=1, progress=False)
    none = eff[eff.condition == "add none"]
    assert (none[["d_word", "d_other", "d_mass", "added_norm"]].abs().to_numpy() < 1e-6).all()
    big = eff[eff.condition == "add big"]
    assert (big.d_other.abs() > 1e-3).all() and (big.added_norm > 0.1).all()
    assert set(pw.word) == {w for _, _, w in sites.word} and len(eff) == 4


def test_specificity_contrast_recovers_a_planted_difference_and_counts_feature_spread():
    rng = np.random.default_rng(0)
    rows = []
    for d in range(30):
        base = rng.normal()
        for kind, shift, spread in (("selected", 0.5, 0.0), ("random", 0.0, 0.0), ("scattered", 0.0, 1.0)):
            for latent in (1, 2, 3):
                offset = spread * (latent - 2)  # the "scattered" controls differ by feature, not by document
                rows.append({"condition": f"{kind} {latent}", "kind": kind, "latent": latent, "gamma": 1.0, "doc": d,
                             "d_mass": base + shift + offset + 0.01 * rng.normal()})
    eff = pd.DataFrame(rows)
    row = R.specificity_contrast(eff, measures=("d_mass",), n_boot=500).iloc[0]
    assert row["selected_minus_random"] == pytest.approx(0.5, abs=0.02) and row.ci_low > 0.45 and row.n == 30
    wide = R.specificity_contrast(eff, control="scattered", measures=("d_mass",), n_boot=500).iloc[0]
    # same mean difference, but three controls that disagree by +-1 make the interval wide: features are resampled
    assert wide["selected_minus_scattered"] == pytest.approx(0.5, abs=0.02) and wide.ci_high - wide.ci_low > 0.8
