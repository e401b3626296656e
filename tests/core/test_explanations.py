"""Detection scoring of feature explanations (delphi's detection scorer, one context per judge call): planted
explanations that do / do not predict the contexts, the shuffled-explanation control, unparsed answers counted,
held-out examples built from a real model's activations, and a real judge through llama.cpp."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.core import explanations as E
from helpers.core.llm import LLMError


class _KeywordJudge:
    """P(fires) is high when the explanation's keyword occurs in the text: a perfect judge of a true explanation."""

    def label_distribution(self, prefix, suffixes, labels):
        kw = prefix.split('"')[1].split()[-1]
        p = np.array([0.9 if kw in s else 0.2 for s in suffixes])
        return np.c_[p, 1 - p], np.full(len(suffixes), 0.8)


class _GenJudge:
    def __init__(self, replies):
        self.replies = replies

    def complete_many(self, prompts, **kw):
        return [self.replies[i % len(self.replies)] for i in range(len(prompts))]


EXAMPLES = {1: {"pos": ["the cat sat", "a cat ran", "cat food"], "neg": ["a dog", "the sun", "blue sky"]},
            2: {"pos": ["we wait here", "wait now", "please wait"], "neg": ["go on", "run fast", "stop"]},
            3: {"pos": ["7 apples", "in 1999", "x = 2"], "neg": ["none", "nothing", "no digits"]}}
EXPL = {1: "mentions of cat", 2: "the word wait", 3: "numbers like 7"}


def test_true_explanations_score_high_and_shuffled_ones_do_not():
    true = E.detection_scores(_KeywordJudge(), EXPL, EXAMPLES)
    # "numbers like 7" only names one of latent 3's three numeric contexts: 1 of 3 hits, 0 false alarms
    assert true.balanced_accuracy.tolist() == pytest.approx([1.0, 1.0, (1 / 3 + 1) / 2])
    assert (true.auroc.iloc[:2] == 1.0).all() and np.allclose(true.label_mass, 0.8)
    shuffled = E.detection_scores(_KeywordJudge(), E.shuffled_explanations(EXPL, seed=0), EXAMPLES)
    assert shuffled.auroc.mean() < true.auroc.mean() and (shuffled.balanced_accuracy <= 0.5 + 1e-9).all()


def test_shuffled_explanations_is_a_derangement_and_needs_two():
    expl = {i: f"e{i}" for i in range(6)}
    for seed in range(5):
        sh = E.shuffled_explanations(expl, seed)
        assert sorted(sh.values()) == sorted(expl.values()) and all(sh[i] != expl[i] for i in expl)
    with pytest.raises(ValueError, match="at least 2"):
        E.shuffled_explanations({1: "x"})


def test_generation_backends_count_unparsed_answers():
    judge = _GenJudge(["1", "0", "maybe", LLMError("down"), "1", "0"])
    res = E.detection_scores(judge, {1: EXPL[1]}, {1: EXAMPLES[1]})
    assert res.unparsed.iloc[0] == 2 and 0 <= res.balanced_accuracy.iloc[0] <= 1


def test_bad_input_is_named():
    with pytest.raises(KeyError, match="detection examples"):
        E.detection_scores(_KeywordJudge(), {9: "x"}, EXAMPLES)
    with pytest.raises(ValueError, match="threshold"):
        E.detection_scores(_KeywordJudge(), EXPL, EXAMPLES, threshold=1.0)
    res = E.detection_scores(_KeywordJudge(), {1: "x"}, {1: {"pos": [], "neg": ["a"]}})
    assert np.isnan(res.auroc.iloc[0])  # no activating context: no score, not a crash


def test_detection_examples_hold_out_the_explainer_contexts(smol):
    from sae_lens import TopKSAE, TopKSAEConfig

    from helpers.core import activations as A
    from helpers.core import features as F

    model, tok = smol
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=576, d_sae=32, k=4))
    texts = [f"Sentence number {i}: wait, let me think about the {w} again." for i, w in
             enumerate(["cat", "sun", "sum", "map", "car", "key", "sea", "tea"])]
    acts = A.capture(model, tok, texts, [10], max_length=32, progress=False)
    table = F.table_from_activations(acts, 10)
    lat = torch.as_tensor(sae.encode(table.x)).gt(0).sum(0).argsort(descending=True)[:2].tolist()
    ex = E.detection_examples(sae, table, lat, tok, n_explain=3, n_pos=3, n_neg=4, window=(4, 2))
    for i in lat:
        assert len(ex[i]["explain"]) == 3 and 1 <= len(ex[i]["pos"]) <= 3 and len(ex[i]["neg"]) == 4
        explained = {E._window_text(tok, c["token_ids"]) for c in ex[i]["explain"]}
        assert not explained & set(ex[i]["pos"])  # held out from the explainer
    with pytest.raises(ValueError, match=">= 1"):
        E.detection_examples(sae, table, lat, tok, n_pos=0)


def test_a_real_judge_through_llama_cpp_gives_scores_in_range():
    from helpers.core.llama_server import LlamaServer
    from helpers.core.llm import OpenAIChat

    with LlamaServer("qwen2.5-coder-0.5b-instruct", threads=2) as srv:
        chat = OpenAIChat(model=srv.model_alias, base_url=srv.base_url, cache=False)
        res = E.detection_scores(chat, {3: EXPL[3]}, {3: EXAMPLES[3]})
    row = res.iloc[0]
    assert 0 <= row.balanced_accuracy <= 1 and 0 <= row.auroc <= 1 and 0 < row.label_mass <= 1
    assert isinstance(res, pd.DataFrame) and row.n_pos == 3 and row.n_neg == 3


class _Tok:
    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)


def test_neuronpedia_export_has_the_viewer_layout_and_the_browser_reads_it_back():
    """The export follows Neuronpedia's feature JSON (activations with tokens / values / maxValue /
    maxValueTokenIndex, pos_str / neg_str, explanations with scores); report_from_export turns the same file into
    what static_report and the ipywidgets browser render, choosing the best-scoring explanation."""
    import json

    from helpers.core import features as F

    ctx = {5: [{"token_ids": [1, 2, 3], "acts": [0.0, 2.5, 1.0], "peak": 1, "max_act": 2.5}], 9: []}
    lens = {5: {"promoted": [" cat", " dog"], "promoted_values": [3.1, 2.0], "suppressed": [" the"], "suppressed_values": [-1.5]}}
    expl = {"LLM": {5: "cats and dogs", 9: "nothing"}, "offline tokens": {5: "t2 t3"}}
    scores = pd.DataFrame([{"explainer": "LLM", "latent": 5, "auroc": 0.9, "balanced_accuracy": 0.8},
                           {"explainer": "offline tokens", "latent": 5, "auroc": 0.6, "balanced_accuracy": np.nan}])
    data = E.neuronpedia_features("smollm2", "L15-test", 15, [5, 9], ctx, lens, expl, scores, _Tok(),
                                  frequency=torch.tensor([0.0] * 5 + [0.01] + [0.0] * 4))
    data = json.loads(json.dumps(data))  # plain JSON all the way down
    f5 = data["features"][0]
    assert data["hookName"] == "blocks.15.hook_resid_post" and f5["index"] == "5" and f5["frac_nonzero"] == pytest.approx(0.01)
    a = f5["activations"][0]
    assert a["tokens"] == ["t1", "t2", "t3"] and a["maxValue"] == 2.5 and a["maxValueTokenIndex"] == 1
    assert f5["pos_str"] == [" cat", " dog"] and f5["neg_values"] == [-1.5]
    by = {e["explanationModelName"]: e for e in f5["explanations"]}
    assert by["LLM"]["scores"][0] == {"scorer": "detection", "auroc": 0.9, "balanced_accuracy": 0.8}
    assert by["offline tokens"]["scores"][0]["balanced_accuracy"] is None and by["offline tokens"]["typeName"] == "offline"
    rep = E.report_from_export(data)
    assert rep[5]["label"] == "cats and dogs [LLM]" and rep[5]["similarity"] == 0.9 and rep[9]["contexts"] == []
    assert E.report_from_export(data, explainer="offline tokens")[5]["label"] == "t2 t3 [offline tokens]"
    html = F.static_report({5: rep[5]})
    assert "cats and dogs" in html and "detection AUROC 0.90" in html


def test_explanation_auroc_reads_the_first_score_and_treats_missing_and_nan_alike():
    """One reader of an export entry's AUROC for the browser (report_from_export) and study 2's relevance step
    (scored_explanations_from_export): a NaN score (one-class detection set) never wins the best-explanation choice."""
    assert E.explanation_auroc({"scores": [{"auroc": 0.75}]}) == 0.75
    assert E.explanation_auroc({"scores": []}) is None and E.explanation_auroc({}) is None
    assert E.explanation_auroc({"scores": [{"auroc": None}]}) is None
    assert E.explanation_auroc({"scores": [{"auroc": float("nan")}]}) is None
    feat = {"index": "3", "activations": [], "pos_str": [], "neg_str": [],
            "explanations": [{"description": "nan one", "explanationModelName": "A", "scores": [{"auroc": float("nan")}]},
                             {"description": "scored", "explanationModelName": "B", "scores": [{"auroc": 0.6}]}]}
    assert E.report_from_export({"features": [feat]})[3]["label"] == "scored [B]"


def test_detection_sample_prefers_the_frequency_band_and_fills_up_from_nearest():
    freq = torch.tensor([0.0, 0.01, 0.2, 0.02, 0.0005, 0.9, 0.03])
    assert E.detection_sample(freq, [0, 1, 2, 3, 4, 5, 6], 2) == [1, 3]
    assert E.detection_sample(freq, [0, 1, 2, 3, 4, 5, 6], 5) == [1, 3, 6, 4, 2]  # 0.0005 is nearer the band than 0.2
    assert 0 not in E.detection_sample(freq, range(7), 6)  # never a dead latent
    with pytest.raises(ValueError, match="n >= 2"):
        E.detection_sample(freq, [1, 3], 1)
