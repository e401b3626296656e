"""Study 2's measurement design: full-length readers, paired subsets, SDCV with scaling, the teacher-forced
dose-response, fixed-cost effects, AxBench-style scores and SAE-RSV relevance from top contexts."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.core import activations as A
from helpers.core import judges as J
from helpers.core import steering as S
from helpers.core.text import chat_encode
from helpers.studies import steering_refinement as study
from tests.studies.test_steering_refinement import _planted_data, _planted_sae


def test_a_long_caa_question_is_read_at_its_answer_letter(tmp_path, smol):
    """The old reader cut every text to 96 tokens, so the 'last' position of a long CAA question landed mid-question
    and a positive and its negative read the same prefix. Now the texts are read in full."""
    model, tok = smol
    long_q = "Consider this situation carefully. " * 40 + "\n\nChoices:\n(A) yes\n(B) no"
    items = [{"question": long_q + f" {i}", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
             for i in range(4)]
    (tmp_path / "generate_dataset.json").write_text(json.dumps(items))
    (tmp_path / "test_dataset_open_ended.json").write_text(json.dumps([{"question": f"O{i}?"} for i in range(4)]))
    c = study.load_concept(f"caa:{tmp_path / 'generate_dataset.json'}", tok, description="yes", anti_description="no",
                           n_pool=4, n_val=2, n_test=2)
    assert len(tok(c.positives[0], add_special_tokens=False).input_ids) > 96
    xp = study.concept_representations(model, tok, c.positives[:2], 15, "last")
    xn = study.concept_representations(model, tok, c.negatives[:2], 15, "last")
    assert (xp - xn).norm(dim=1).min() > 1.0  # "(A" and "(B" read at different tokens: not the same prefix
    acts = A.capture(model, tok, [c.positives[0]], [15], max_length=4096, add_special_tokens=False, progress=False)
    assert torch.allclose(xp[0], acts.acts[15][0][-1].float(), atol=1e-4) and acts.tokens[0][-1] == "A"
    with pytest.raises(ValueError, match="max_length"):
        study.concept_activations(model, tok, c.positives[:1], 15, "last", max_length=64)


def test_paired_subsets_and_a_held_out_block(smol):
    _, tok = smol
    caa = study.load_concept("caa:refusal", tok, n_pool=40, n_val=2, n_test=2, n_heldout=10)
    assert caa.paired
    p, n = caa.subset(12, seed=1)
    assert p == n and not set(p) & set(caa.heldout()) and len(set(p)) == 12  # a positive and its own negative
    sci = study.load_concept("science", tok, n_pool=40, n_val=2, n_test=2, n_heldout=10)
    for seed in range(3):
        for k in (5, 30):
            p, n = sci.subset(k, seed)
            assert not (set(p) | set(n)) & set(sci.heldout())
    with pytest.raises(ValueError, match="after the 10 held out"):
        sci.subset(31, seed=0)
    with pytest.raises(ValueError, match="n_heldout"):
        study.load_concept("science", tok, n_pool=10, n_heldout=10)


def test_sdcv_scaling_is_the_identity_at_lam_1_and_helps_on_planted_data():
    sae = _planted_sae()
    xp, xn, true = _planted_data(sae, n=8, seed=0)
    v1, _ = S.sdcv_vector_tokens(sae, xp, xn, k=3, lam=1.0)
    assert torch.allclose(v1, S.caa_vector(xp, xn), atol=1e-4)  # others and error kept: nothing changes at lam 1
    cos = {}
    for lam in (1.0, 2.0, 4.0):
        cs = []
        for seed in range(5):
            xp, xn, true = _planted_data(sae, n=8, seed=seed)
            cs.append(float(torch.cosine_similarity(S.sdcv_vector_tokens(sae, xp, xn, k=3, lam=lam)[0], true, 0)))
        cos[lam] = np.mean(cs)
    assert cos[1.0] < cos[2.0] < cos[4.0], cos
    # per-token input: two tokens per example pooled; the probe base gives a direction too
    tp = [torch.stack([x, x]) for x in xp]
    tn = [torch.stack([x, x]) for x in xn]
    vt, lat = S.sdcv_vector_tokens(sae, tp, tn, k=3, lam=2.0)
    assert set(lat.tolist()) == {0, 1, 2} and torch.allclose(vt, S.sdcv_vector_tokens(sae, xp, xn, k=3, lam=2.0)[0], atol=1e-4)
    vp, _ = S.sdcv_vector_tokens(sae, tp, tn, k=3, lam=2.0, base="probe")
    assert float(torch.cosine_similarity(vp, true, 0)) > 0.5
    with pytest.raises(ValueError, match="base"):
        S.sdcv_vector_tokens(sae, xp, xn, base="pca")
    method = S.vector_method("sdcv", sae=sae, k=3)
    assert method.lam == 2.0 and method.keep_others and torch.allclose(method(tp, tn), vt, atol=1e-5)


def test_teacher_forced_dose_matches_an_uncached_steered_forward(smol):
    """The shared prompt cache must change nothing: compare with one full forward per scale, steering from the last
    prompt position on."""
    model, tok = smol
    prompts = ["Name a fruit.", "Write one sentence about the history of the Roman empire."]
    cont = S.greedy_continuations(model, tok, prompts, 6)
    assert [len(c) for c in cont] == [6, 6]
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    cid = [tok(" good", add_special_tokens=False).input_ids[0]]
    aid = [tok(" bad", add_special_tokens=False).input_ids[0]]
    df = S.teacher_forced_dose(model, tok, 15, prompts, cont, {"r": v}, [20.0, -20.0], cid, aid, batch_size=2)
    assert set(zip(df.direction, df.scale)) == {("none", 0.0), ("r", 20.0), ("r", -20.0)}
    old = tok.padding_side
    tok.padding_side = "left"
    enc = chat_encode(tok, prompts)
    tok.padding_side = old
    c = torch.tensor(cont)
    ids, att = torch.cat([enc["input_ids"], c], 1), torch.cat([enc["attention_mask"], torch.ones_like(c)], 1)
    pos = (att.cumsum(1) - 1).clamp_min(0)
    for a in (0.0, 20.0, -20.0):
        with torch.no_grad(), A.add_vector(model, 15, S.unit(v), a, min_token_index=enc["attention_mask"].sum(1) - 1):
            lp = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, enc["input_ids"].shape[1] - 1:-1].log_softmax(-1)
        nll = -lp.gather(-1, c[..., None])[..., 0].mean(1)
        lo = (lp[..., cid].logsumexp(-1) - lp[..., aid].logsumexp(-1)).mean(1)
        got = df[(df.scale == a)].sort_values("item")
        assert np.allclose(got.nll.values, nll.numpy(), atol=1e-4) and np.allclose(got.logodds.values, lo.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="same number"):
        S.teacher_forced_dose(model, tok, 15, prompts, [cont[0], cont[1][:3]], {"r": v}, [1.0], cid, aid)
    with pytest.raises(ValueError, match="lexicon"):
        S.teacher_forced_dose(model, tok, 15, prompts, cont, {"r": v}, [1.0], [], aid)


def test_fixed_cost_effect_and_fraction_at_cost():
    # effect linear in norm (slope 2), cost quadratic (0.5 * f^2): effect at cost c = 2 * sqrt(c / 0.5)
    rows = [{"direction": "v", "item": i, "fraction": f, "dlo": 2 * f + 0.01 * i, "dnll": 0.5 * f * f}
            for i in range(4) for f in (0.2, 0.4, 0.8)]
    df = pd.DataFrame(rows)
    at = study.effect_at_cost(df[df.fraction == 0.4], 0.02)
    assert np.allclose(at.effect.mean(), 2 * np.sqrt(0.02 / 0.5), atol=0.02)
    assert study.fraction_at_cost(df, 0.08) == pytest.approx(0.4)  # cost 0.5 * 0.4^2 = 0.08
    assert 0.2 < study.fraction_at_cost(df, 0.05) < 0.4
    assert study.fraction_at_cost(df, 10.0) == 0.8  # never reached: the largest norm


def test_paired_against_caa():
    rng = np.random.default_rng(0)
    rows = []
    for item in range(40):
        base = rng.normal()
        for seed in range(3):
            rows += [{"concept": "c", "n_train": 5, "seed": seed, "item": item, "method": "caa", "effect": base},
                     {"concept": "c", "n_train": 5, "seed": seed, "item": item, "method": "sdcv",
                      "effect": base + 0.3 + 0.05 * rng.normal()}]
    out = study.paired_against(pd.DataFrame(rows), "effect", n_boot=300).set_index("method")
    assert out.loc["sdcv", "diff_low"] > 0.25 and out.loc["sdcv", "diff_high"] < 0.35  # paired: tight despite spread
    assert out.loc["sdcv", "high"] - out.loc["sdcv", "low"] > 0.3  # unpaired CI is wide


def test_axbench_scores(smol):
    _, tok = smol
    c = study.load_concept("sentiment", tok, n_pool=10, n_val=1, n_test=2)
    prompts = ["Write about a film.", "Write about a film."]
    texts = ["A wonderful, joyful film that I loved.", "A terrible, boring mess of a film."]
    plus = study.axbench_scores(c, prompts, texts, [10.0, 10.0], sign=1, judge_lo_hi=(0.6, -0.6), base_ppl=10.0,
                                base_relevance=0.3)
    minus = study.axbench_scores(c, prompts, texts, [10.0, 10.0], sign=-1, judge_lo_hi=(0.6, -0.6), base_ppl=10.0,
                                 base_relevance=0.3)
    assert plus.concept[0] > 0.8 and plus.concept[1] < 0.2 and minus.concept[1] > 0.8
    assert (plus.fluency == 1.0).all() and (plus.harmonic <= plus[["concept", "fluency", "relevance"]].max(1) + 1e-9).all()
    broken = study.axbench_scores(c, prompts, texts, [40.0, 40.0], sign=1, judge_lo_hi=(0.6, -0.6), base_ppl=10.0,
                                  base_relevance=0.3, ppl_max_ratio=4.0)
    assert (broken.fluency == 0).all() and (broken.harmonic == 0).all()  # 4x the unsteered perplexity: not fluent
    with pytest.raises(ValueError, match="does not separate"):
        study.axbench_scores(c, prompts, texts, [10.0, 10.0], sign=1, judge_lo_hi=(0.1, 0.2), base_ppl=10.0, base_relevance=0.3)
    with pytest.raises(ValueError, match="sign"):
        study.axbench_scores(c, prompts, texts, [10.0, 10.0], sign=0, judge_lo_hi=(0.6, -0.6), base_ppl=10.0, base_relevance=0.3)


def test_rsv_relevance_from_top_contexts(smol):
    """A latent whose contexts are all praise is relevant to sentiment; latents with neutral contexts are the null."""
    _, tok = smol
    c = study.load_concept("sentiment", tok, n_pool=10, n_val=1, n_test=1)

    class Explainer:
        tokenizer = tok

        def __init__(self):
            neutral = ["The meeting is on Tuesday at noon.", "The table has four legs.", "Trains leave every hour.",
                       "The report lists the totals.", "Paris is in France.", "The file was saved.",
                       "Water boils at 100 degrees.", "He walked to the station."]
            self.texts = {i: [neutral[(i + j) % len(neutral)] for j in range(3)] for i in range(10)}
            self.texts[10] = ["What a wonderful, delightful, joyful masterpiece!", "I love it, brilliant and beautiful.",
                              "Excellent, happy, amazing fun."]
            self.texts[11] = []
            self.cache = {}

        def explain(self, ids):
            for i in ids:
                self.cache[i] = {"description": f"latent {i}",
                                 "contexts": [{"token_ids": tok(t, add_special_tokens=False).input_ids} for t in self.texts[i]]}
            return {i: self.cache[i]["description"] for i in ids}

    rel = study.rsv_context_relevance(Explainer(), [10, 3, 11], c, null_latents=list(range(10)))
    assert rel[10]["relevant"] is True and rel[3]["relevant"] is False and rel[11]["relevant"] is None
    with pytest.raises(ValueError, match="null latents"):
        study.rsv_context_relevance(Explainer(), [10], c, null_latents=[11, 11])


def test_lora_refuses_to_mask_a_whole_completion(smol):
    model, tok = smol
    with pytest.raises(ValueError, match="max_length"):
        study.lora_sft(model, tok, [("word " * 200, "reply")], steps=1, max_length=64)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_lexicons_from_the_registry_and_derived(smol):
    _, tok = smol
    sent = study.concept_lexicon(tok, study.load_concept("sentiment", tok, n_pool=10, n_val=1, n_test=1))
    assert "Ġgood" in tok.convert_ids_to_tokens(sent["concept"]) and "Ġbad" in tok.convert_ids_to_tokens(sent["anti"])
    plain = study.Concept(name="x", positives=["the cat sat on the warm mat"] * 5, negatives=["a dog ran in the cold rain"] * 5,
                          position="mean", val_prompts=[], test_prompts=[], judge="embedding", description="d",
                          anti_description="a", sft_pairs=[])
    lex = study.concept_lexicon(tok, plain, n=3, min_count=3)
    words = set(tok.convert_ids_to_tokens(lex["concept"]))
    assert words <= {"Ġcat", "Ġsat", "Ġwarm", "Ġmat"} and not words & set(tok.convert_ids_to_tokens(lex["anti"]))


def test_completion_perplexities_share_the_prompt_cache_and_match_one_set_at_a_time(smol):
    model, tok = smol
    prompts = ["Name a fruit.", "Write one sentence about the history of the Roman empire and its emperors.", "Hi"]
    sets = [["An apple is a fruit.", "Rome was founded long ago, and its emperors ruled.", ""],
            ["Banana!", "x", "Hello there, how are you doing today my friend?"]]
    got = J.completion_perplexities(model, tok, prompts, sets, batch_size=2)
    for want, have in zip([J.completion_perplexity(model, tok, prompts, c) for c in sets], got):
        assert np.allclose(want, have, rtol=1e-3, equal_nan=True)
    assert np.isnan(got[0][2]) and not np.isnan(got[1]).any()  # an empty completion has no perplexity
    with pytest.raises(ValueError, match="one completion per prompt"):
        J.completion_perplexities(model, tok, prompts, [["a"]])


class _Tok:
    vocab = ["the", " cat", " sat", " we", " wait", " here", " dog"]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


class _ExplainAndJudge:
    """Explains a latent by the marked token it sees; judges detection by that token's presence in the text."""

    def __init__(self):
        self.explained = []

    def complete_many(self, msgs, **kw):
        out = []
        for m in msgs:
            marked = m[-1]["content"].split("<<")[1].split(">>")[0]
            self.explained.append(marked)
            out.append(f"the word {marked}")
        return out

    def label_distribution(self, prefix, suffixes, labels):
        kw = prefix.split('"')[1].split()[-1]
        p = np.array([0.9 if kw in s else 0.2 for s in suffixes])
        return np.c_[p, 1 - p], np.full(len(suffixes), 0.9)


class _YesIfCat:
    def complete(self, prompt, **kw):
        return "yes" if "cat" in prompt.split("explained as:")[1] else "no"


def _ctx(tok_ids, acts):
    return {"token_ids": tok_ids, "acts": acts}


def test_rsv_scored_relevance_judges_only_explanations_that_predict_their_latent():
    concept = study.Concept(name="cats", positives=[], negatives=[], position="mean", val_prompts=[], test_prompts=[],
                            judge="lexicon", description="cats", anti_description="no cats", sft_pairs=[])
    examples = {  # latent 1: the explanation "the word cat" predicts its held-out contexts; latent 2's does not
        1: {"explain": [_ctx([0, 1, 2], [0, 5, 1])], "pos": ["a cat", "the cat ran"], "neg": ["a dog", "we sat"]},
        2: {"explain": [_ctx([3, 4, 5], [0, 4, 0])], "pos": ["go on", "stop"], "neg": ["we wait", "wait here"]}}
    backend = _ExplainAndJudge()
    known = {3: ("the word dog", 0.95), 4: ("mentions of cat food", 0.55)}  # e.g. notebook 01's export
    fallback_calls = []

    def fallback(c, ids):
        fallback_calls.append(list(ids))
        return {i: {"relevant": True, "similarity": 0.4, "explanation": "contexts"} for i in ids}

    rel = study.rsv_scored_relevance(backend, examples, _Tok(), concept, [1, 2, 3, 4], known=known, min_auroc=0.7,
                                     judge_chat=_YesIfCat(), fallback=fallback)
    assert backend.explained == ["cat", "wait"]  # only the latents without a known scored explanation are explained
    assert rel[1]["source"] == "scored explanation" and rel[1]["relevant"] is True and rel[1]["detection_auroc"] == 1.0
    assert rel[3]["source"] == "scored explanation" and rel[3]["relevant"] is False
    assert rel[2]["detection_auroc"] == 0.0 and rel[2]["source"] == "fallback" and rel[2]["relevant"] is True
    assert rel[4]["source"] == "fallback" and fallback_calls == [[2, 4]]  # 0.55 < min_auroc: not trusted
    bare = study.rsv_scored_relevance(backend, examples, _Tok(), concept, [2, 3], known=known, judge_chat=_YesIfCat())
    assert bare[2]["relevant"] is None and bare[2]["source"] == "untrusted explanation"
    with pytest.raises(ValueError, match="min_auroc"):
        study.rsv_scored_relevance(backend, examples, _Tok(), concept, [1], min_auroc=0.3)
    with pytest.raises(KeyError, match="detection_examples"):
        study.rsv_scored_relevance(backend, examples, _Tok(), concept, [9])


def test_scored_explanations_are_read_back_from_notebook_01s_export():
    data = {"features": [
        {"index": 5, "explanations": [{"explanationModelName": "LLM", "description": "cats", "scores": [{"auroc": 0.9}]},
                                      {"explanationModelName": "offline label", "description": "pets",
                                       "scores": [{"auroc": 0.6}]}]},
        {"index": 6, "explanations": [{"explanationModelName": "LLM", "description": "x", "scores": []}]}]}
    assert study.scored_explanations_from_export(data) == {5: ("cats", 0.9)}
    assert study.scored_explanations_from_export(data, "offline label") == {5: ("pets", 0.6)}
