from __future__ import annotations

import pytest
import torch

from helpers.core import steering as core_steering
from helpers.studies import steering_refinement as study

PROMPTS = ["Name a fruit.", "Write one sentence about the history of the Roman empire and its emperors."]


def _direction(model, tok, word="Ġocean"):
    d = model.get_input_embeddings().weight[tok.convert_tokens_to_ids(word)].detach()
    return d / d.norm()


def test_batched_steered_generation_equals_one_at_a_time(smol):
    """Left padding must not shift where steering starts: batch of 2 == each prompt alone."""
    model, tok = smol
    v = 40.0 * _direction(model, tok)
    batched = core_steering.generate(model, tok, PROMPTS, max_new_tokens=12, layer=12, vector=v, batch_size=2)
    alone = [core_steering.generate(model, tok, [p], max_new_tokens=12, layer=12, vector=v)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in alone]


def test_steering_changes_the_text_but_not_the_first_token(smol):
    model, tok = smol
    plain = core_steering.generate(model, tok, PROMPTS, max_new_tokens=12)
    steered = core_steering.generate(model, tok, PROMPTS, max_new_tokens=12, layer=12, vector=40.0 * _direction(model, tok))
    assert [g.text for g in plain] != [g.text for g in steered]
    for p, s in zip(plain, steered):  # the first token comes from the prompt pass, which is not steered
        assert tok(p.text).input_ids[:1] == tok(s.text).input_ids[:1]
    again = core_steering.generate(model, tok, PROMPTS, max_new_tokens=12)
    assert [g.text for g in plain] == [g.text for g in again]  # the hook is gone afterwards


def test_bad_words_are_never_generated(smol):
    model, tok = smol
    plain = core_steering.generate(model, tok, ["What is the capital of France?"], max_new_tokens=10)[0]
    assert "Paris" in plain.text
    banned = [tok(" Paris", add_special_tokens=False).input_ids, tok("Paris", add_special_tokens=False).input_ids]
    out = core_steering.generate(model, tok, ["What is the capital of France?"], max_new_tokens=10, bad_words_ids=banned)[0]
    assert "Paris" not in out.text and out.n_tokens > 0


def test_generation_bookkeeping_and_errors(smol):
    model, tok = smol
    g = core_steering.generate(model, tok, ["Say hi."], max_new_tokens=3)[0]
    assert g.n_tokens == 3 and g.hit_limit
    with pytest.raises(ValueError, match="layer"):
        core_steering.generate(model, tok, ["x"], vector=torch.zeros(576))


def test_sae_feature_vector_is_gamma_fmax_wdec():
    class Fake:
        W_dec = torch.arange(12.0).reshape(3, 4)

    v = core_steering.sae_feature_vector(Fake(), 1, f_max=2.0, gamma=3.0)
    assert torch.equal(v, 6.0 * torch.tensor([4.0, 5.0, 6.0, 7.0]))


# --------------------------------------------------------------------------------------------------
# Study 2: CAA, probe, SDCV, SAE-RSV, LoRA, A/B, judges
# --------------------------------------------------------------------------------------------------

import numpy as np  # noqa: E402

from helpers.core import judges as J  # noqa: E402


def _planted_sae(d_in=256, d_sae=128, k=9, seed=0):
    """A TopK SAE whose dictionary is a random unit-norm frame with the encoder its transpose, so encoding data
    built from few dictionary atoms recovers them."""
    from sae_lens import TopKSAE, TopKSAEConfig

    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    w = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _planted_data(sae, n, concept=(0, 1, 2), n_noise_atoms=6, seed=0):
    """Positives = concept atoms (strength 3) + random noise atoms; negatives = noise atoms only. Returns
    (x_pos, x_neg, true_direction)."""
    g = torch.Generator().manual_seed(seed)
    w = sae.W_dec.detach()
    d_sae = w.shape[0]
    noise_pool = torch.arange(len(concept), d_sae)

    def sample(with_concept):
        xs = []
        for _ in range(n):
            z = torch.zeros(d_sae)
            idx = noise_pool[torch.randperm(len(noise_pool), generator=g)[:n_noise_atoms]]
            z[idx] = 1.0 + 2.0 * torch.rand(n_noise_atoms, generator=g)
            if with_concept:
                z[list(concept)] = 3.0
            xs.append(z @ w)
        return torch.stack(xs)

    true = 3.0 * w[list(concept)].sum(0)
    return sample(True), sample(False), true


def test_caa_vector_is_the_mean_difference():
    xp, xn = torch.randn(7, 5), torch.randn(4, 5)
    assert torch.allclose(core_steering.caa_vector(xp, xn), xp.mean(0) - xn.mean(0))
    with pytest.raises(ValueError, match="at least one"):
        core_steering.caa_vector(xp[:0], xn)


def test_probe_direction_separates_and_has_caa_norm():
    g = torch.Generator().manual_seed(0)
    d = torch.zeros(6)
    d[2] = 1.0
    xp, xn = torch.randn(40, 6, generator=g) + 2 * d, torch.randn(40, 6, generator=g) - 2 * d
    v = core_steering.probe_vector(xp, xn)
    assert v.norm() == pytest.approx(float(core_steering.caa_vector(xp, xn).norm()), rel=1e-5)
    assert torch.cosine_similarity(v, d, 0) > 0.9


def test_sdcv_raises_cosine_to_the_planted_concept():
    sae = _planted_sae()
    cos_caa, cos_sdcv = [], []
    for seed in range(5):
        xp, xn, true = _planted_data(sae, n=8, seed=seed)
        v = core_steering.caa_vector(xp, xn)
        s, lat = core_steering.sdcv_vector(sae, xp, xn, k=3)
        assert set(lat.tolist()) == {0, 1, 2}  # the planted latents are the ones selected
        cos_caa.append(float(torch.cosine_similarity(v, true, 0)))
        cos_sdcv.append(float(torch.cosine_similarity(s, true, 0)))
    assert np.mean(cos_sdcv) > np.mean(cos_caa) + 0.05, (cos_caa, cos_sdcv)
    assert np.mean(cos_sdcv) > 0.95


def test_sdcv_denoise_identity_and_zeroing():
    sae = _planted_sae()
    xp, _, _ = _planted_data(sae, n=4)
    lat = torch.tensor([0, 1, 2])
    same = core_steering.sdcv_denoise(sae, xp, lat, lam=1.0, keep_others=True, keep_error=True)
    assert torch.allclose(same, xp, atol=1e-4)
    only = core_steering.sdcv_denoise(sae, xp, lat, lam=1.0, keep_others=False, keep_error=False)
    from helpers.core.sae import encode

    z = encode(sae, xp)
    assert torch.allclose(only, z[:, :3] @ sae.W_dec[:3].detach() + sae.b_dec, atol=1e-4)
    doubled = core_steering.sdcv_denoise(sae, xp, lat, lam=2.0, keep_others=False, keep_error=False)
    assert torch.allclose(doubled - sae.b_dec, 2 * (only - sae.b_dec), atol=1e-4)
    with pytest.raises(ValueError, match="score"):
        core_steering.sdcv_select(torch.rand(3, 4), torch.rand(3, 4), 2, score="bogus")


def test_rsv_decomposition_removal_and_augmentation():
    sae = _planted_sae()
    xp, xn, true = _planted_data(sae, n=6, seed=1)
    dec = core_steering.rsv_decompose(sae, xp, xn)
    assert 0 < dec.relative_error < 0.35  # atoms are not orthogonal: encoding has crosstalk, but v is mostly kept
    support = dec.support(12)
    assert {0, 1, 2} <= set(support)
    relevance = {i: {"relevant": i in (0, 1, 2)} for i in support}  # everything else labelled irrelevant
    parts = core_steering.rsv_parts(sae, dec, support, relevance, added={})
    assert set(parts.removed) == set(support) - {0, 1, 2} and set(parts.kept) == {0, 1, 2}
    refined = core_steering.rsv_refine(parts, (1.0, 1.0, 0.0))
    assert torch.cosine_similarity(refined, true, 0) > torch.cosine_similarity(dec.v, true, 0)
    assert torch.cosine_similarity(refined, true, 0) > 0.9
    # an unparsed judgement (None) counts as not relevant; alpha = (1, 0, 0) is the original vector
    parts2 = core_steering.rsv_parts(sae, dec, support, {i: {"relevant": None} for i in support}, added={})
    assert set(parts2.removed) == set(support)
    assert torch.allclose(core_steering.rsv_refine(parts2, (1, 0, 0)), dec.v)
    # augmentation: neighbours by decoder cosine, excluding the given latents; v_useful follows the source sign
    nb = core_steering.rsv_neighbours(sae, [0], n=3, exclude=[5])
    assert 0 not in nb and 5 not in nb and len(nb) == 3
    w = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    best = int((w[0] @ w.T).index_fill(0, torch.tensor([0, 5]), -2).argmax())
    assert best in nb and nb[best][0] == 0
    parts3 = core_steering.rsv_parts(sae, dec, support, relevance, added={best: nb[best]})
    assert torch.allclose(parts3.v_useful, float(dec.dz[0]) * nb[best][1] * sae.W_dec[best].detach())
    with pytest.raises(ValueError, match="mode"):
        core_steering.rsv_decompose(sae, xp, xn, mode="direct")


def test_rsv_relevance_offline_uses_embeddings():
    rel = core_steering.rsv_relevance({1: "happy joyful wonderful praise", 2: "semicolons and commas in code"},
                           "positive sentiment: joy and praise", "negative sentiment: anger", threshold=0.4)
    assert rel[1]["relevant"] and not rel[2]["relevant"]
    assert rel[1]["similarity"] > rel[2]["similarity"]


def test_judges():
    v = J.vader_compound(["I love this, it is wonderful!", "This is terrible and I hate it.", ""])
    assert v[0] > 0.5 and v[1] < -0.5 and v[2] == 0.0
    r = J.refusal_judge(["I'm sorry, but I can't help with that.", "Sure! Here is a recipe.", "I CANNOT do that"])
    assert r.tolist() == [1.0, 0.0, 1.0]
    e = J.embedding_judge(["The scientists ran an experiment in the lab.", "The farmer sold his cattle."],
                          "science and research", "farming and rural life")
    assert e[0] > 0 > e[1]
    with pytest.raises(ValueError, match="unknown judge"):
        J.judge("bogus", ["x"])


def test_completion_perplexity_prefers_the_models_own_answer(smol):
    model, tok = smol
    ppl = J.completion_perplexity(model, tok, ["What is the capital of France?"] * 2,
                                  ["The capital of France is Paris.", "Banana seventeen purple the of."])
    assert ppl[0] < ppl[1] / 5
    assert np.isnan(J.completion_perplexity(model, tok, ["x"], [""])[0])


def test_per_row_vectors_equal_separate_runs(smol):
    model, tok = smol
    v = 30.0 * _direction(model, tok)
    mixed = core_steering.generate(model, tok, PROMPTS, max_new_tokens=8, layer=12, vector=torch.stack([v, -v]), batch_size=2)
    a = core_steering.generate(model, tok, PROMPTS[:1], max_new_tokens=8, layer=12, vector=v)[0]
    b = core_steering.generate(model, tok, PROMPTS[1:], max_new_tokens=8, layer=12, vector=-v)[0]
    assert [g.text for g in mixed] == [a.text, b.text]
    with pytest.raises(ValueError, match="per-prompt"):
        core_steering.generate(model, tok, PROMPTS, layer=12, vector=torch.stack([v, v, v]))


def test_concepts_load_and_subsets_are_nested(smol):
    _, tok = smol
    c = study.load_concept("science", tok, n_pool=60, n_val=4, n_test=6, seed=0)
    assert len(c.positives) == len(c.negatives) == 60 and c.judge == "embedding" and c.position == "mean"
    assert not set(c.val_prompts) & set(c.test_prompts) and len(c.test_prompts) == 6
    p10, n10 = c.subset(10, seed=3)
    p20, n20 = c.subset(20, seed=3)
    assert p20[:10] == p10 and n20[:10] == n10 and c.subset(10, seed=4)[0] != p10
    with pytest.raises(ValueError, match="n_train"):
        c.subset(61, seed=0)
    r = study.load_concept("refusal", tok, n_pool=20, n_val=2, n_test=2)
    assert r.position == "last" and r.positives[0].startswith("<|im_start|>") and r.sft_pairs[0][1] == study.REFUSAL_REPLY
    caa = study.load_concept("caa:refusal", tok, n_pool=10, n_val=3, n_test=5)
    assert caa.ab_items and caa.positives[0].rstrip().endswith(("(A", "(B")) and len(caa.test_prompts) == 5
    with pytest.raises(ValueError, match="unknown concept"):
        study.load_concept("politeness", tok)
    with pytest.raises(FileNotFoundError, match="CAA-format"):
        study.load_concept("caa:/nonexistent/generate_dataset.json", tok)


def test_caa_concept_from_a_user_file(tmp_path, smol):
    import json

    _, tok = smol
    items = [{"question": f"Q{i}?\n\nChoices:\n(A) yes\n(B) no", "answer_matching_behavior": "(A)",
              "answer_not_matching_behavior": "(B)"} for i in range(6)]
    (tmp_path / "generate_dataset.json").write_text(json.dumps(items))
    with pytest.raises(ValueError, match="description"):
        study.load_concept(f"caa:{tmp_path / 'generate_dataset.json'}", tok)
    (tmp_path / "test_dataset_open_ended.json").write_text(json.dumps([{"question": f"O{i}?"} for i in range(4)]))
    c = study.load_concept(f"caa:{tmp_path / 'generate_dataset.json'}", tok, description="says yes",
                        anti_description="says no", n_val=2, n_test=2)
    assert len(c.positives) == 6 and c.positives[0].endswith("(A") and c.negatives[0].endswith("(B")
    (tmp_path / "bad.json").write_text(json.dumps([{"q": 1}]))
    with pytest.raises(ValueError, match="CAA format"):
        study.load_concept(f"caa:{tmp_path / 'bad.json'}", tok)


def test_caa_refusal_vector_moves_ab_probabilities(smol):
    """On the embedded model the A/B format is near chance, but a large enough CAA multiplier still moves
    P(matching letter) in the expected direction (seeded, 40 held-out items)."""
    model, tok = smol
    c = study.load_concept("caa:refusal", tok, n_pool=50, seed=0)
    xp = study.concept_representations(model, tok, c.positives, 15, "last")
    xn = study.concept_representations(model, tok, c.negatives, 15, "last")
    v = core_steering.caa_vector(xp, xn)
    items = c.ab_items[:40]
    up = study.ab_probabilities(model, tok, items, layer=15, vector=v, scale=8.0)
    down = study.ab_probabilities(model, tok, items, layer=15, vector=v, scale=-8.0)
    base = study.ab_probabilities(model, tok, items)
    assert ((up > 0) & (up < 1)).all()
    assert up.mean() - down.mean() > 0.02
    assert down.mean() < base.mean() < up.mean() + 0.01


def test_lora_generate_trains_with_batch_size_and_generates_with_gen_batch_size(monkeypatch):
    """The training batch (lora_kw batch_size) and the generation batch are separate: notebook 03 passed its LoRA
    training batch of 4 and generated 50 prompts 4 at a time (4.5x slower than the steered generations' 64)."""
    from helpers.studies.steering_refinement import experiment as E

    seen = {}

    class Peft:
        sft_losses = [1.0]

        def unload(self):
            seen["unloaded"] = True

    monkeypatch.setattr(E, "lora_sft", lambda m, t, pairs, **kw: seen.update(train=kw) or Peft())
    monkeypatch.setattr(E, "generate", lambda m, t, prompts, **kw: seen.update(gen=kw) or ["g"] * len(prompts))
    gens, losses = E.lora_generate("model", "tok", [("p", "c")], ["a", "b"], max_new_tokens=5, gen_batch_size=64,
                                   batch_size=4, steps=3)
    assert seen["train"] == {"batch_size": 4, "steps": 3} and seen["gen"] == {"max_new_tokens": 5, "batch_size": 64}
    assert gens == ["g", "g"] and losses == [1.0] and seen["unloaded"]


def test_lora_sft_learns_and_unload_restores_the_model(smol):
    model, tok = smol
    ids = tok("The capital of France is", return_tensors="pt")
    before = model(**ids).logits.detach().clone()
    pairs = [("Say the magic word.", "Abracadabra!")] * 4
    gens, losses = study.lora_generate(model, tok, pairs, ["Say the magic word."], max_new_tokens=6, steps=12, lr=5e-3,
                                    batch_size=2, seed=0)
    assert losses[-1] < losses[0] * 0.5
    assert "Abracadabra" in gens[0].text
    after = model(**ids).logits.detach()
    assert torch.equal(before, after)
    assert not any("lora" in n for n, _ in model.named_parameters())
