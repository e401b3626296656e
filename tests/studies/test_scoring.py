"""helpers.studies.scoring: ReadMeFirst parser on all 10 ASAP-SAS items, QWK vs hand-computed values, splits, the
item-specific rule check, the optimisation loop's validation gate (deterministic fake LLM / scorer), unparsed
answers in coverage, and constrained label likelihood on the embedded model (cached prefix == full prompt)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from helpers.core import data, stats
from helpers.studies import scoring as study

RANGES = {1: 3, 2: 3, 5: 3, 6: 3, 3: 2, 4: 2, 7: 2, 8: 2, 9: 2, 10: 2}
PASSAGE = {3, 4, 7, 8, 9}


@pytest.mark.parametrize("n", range(1, 11))
def test_readme_parser_all_items(n):
    info = study.parse_readme(data.load(f"asap-sas-{n}-readme"), n)
    assert (info.item, info.score_min, info.score_max) == (n, 0, RANGES[n])
    assert info.labels == list(range(RANGES[n] + 1))
    assert len(info.stem.split()) >= 10 and "Prompt-" not in info.stem
    assert bool(info.passage) == (n in PASSAGE) and "Prompt-" not in info.passage
    assert re.search(r"(Score|point)", info.rubric) and not info.rubric.rstrip().endswith("\n1")
    assert info.rubric.splitlines()[-1].strip() != "1"  # the page number is not part of the rubric
    # every gold score in the item's CSVs lies in the parsed range, and each score point occurs
    item = study.load_item(n)
    assert set(item.train["Score1"]) == set(info.labels)


def test_readme_parser_raw_cp1252_with_cr_line_endings():
    text = data.load("asap-sas-5-readme")
    raw = text.replace("\n", "\r").encode("cp1252")
    assert study.parse_readme(raw) == study.parse_readme(text)
    crlf = text.replace("\n", "\r\n").encode("cp1252")
    info = study.parse_readme(crlf)
    assert info.title == "Protein Synthesis" and info.stem.startswith("Starting with mRNA leaving the nucleus")
    assert "\u2022 mRNA exits nucleus via nuclear pore." in info.rubric  # the cp1252 bullet decoded
    with pytest.raises(ValueError, match="not item 4"):
        study.parse_readme(text, 4)
    with pytest.raises(ValueError, match="Data Set #N"):
        study.parse_readme("hello\nworld")


def test_item_8_passage_between_its_two_prompt_lines():
    info = study.parse_readme(data.load("asap-sas-8-readme"))
    assert info.title == "Mr. Leonard" and info.passage.startswith("Gifts")
    assert info.stem.startswith("During the story, the reader gets background information about Mr. Leonard.")


def test_qwk_hand_computed_and_full_range():
    assert stats.qwk([0, 1, 2], [0, 1, 2], 0, 2) == 1.0
    # O = [[1,1],[0,2]]; E = [[.5,1.5],[.5,1.5]]; 1 - 1/2
    assert stats.qwk([0, 0, 1, 1], [0, 1, 1, 1], 0, 2) == pytest.approx(0.5)
    # labels 0..3 with 2 never used: weights (i-j)^2 over the full range -> 1 - 8/13.5
    t, p = [0, 1, 3, 3], [0, 3, 1, 3]
    assert stats.qwk(t, p, 0, 3) == pytest.approx(1 - 8 / 13.5)
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa_score(t, p, weights="quadratic") == pytest.approx(1 - 2 / 5.5)  # observed labels only
    assert stats.qwk([1, 1, 1], [1, 1, 1], 0, 2) == 1.0 and stats.qwk([1, 1, 1], [2, 2, 2], 0, 2) == 0.0
    assert stats.qwk([0, 1, 2, 0], [1, 1, 1, 1], 0, 2) == 0.0  # constant predictions carry no agreement


def test_fast_bootstrap_qwk_matches_sklearn():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, (50, 30)), rng.integers(0, 4, (50, 30))
    p[:25] = np.clip(t[:25] + rng.integers(-1, 2, (25, 30)), 0, 3)
    fast = stats._qwk_batch(t, p, 0, 3)
    assert np.allclose(fast, [stats.qwk(a, b, 0, 3) for a, b in zip(t, p)])


def test_evaluate_counts_unparsed_answers():
    gold = [0, 1, 2, 2, 1, 0]
    m = study.evaluate(gold, [0, None, "x", 2, 1, 7], 0, 2, n_boot=200)
    assert m["n"] == 6 and m["n_unparsed"] == 3 and m["coverage"] == pytest.approx(0.5)
    # unparsed scored as the minimum (0): preds 0,0,0,2,1,0
    assert m["accuracy"] == pytest.approx(4 / 6) and m["mae"] == pytest.approx(3 / 6)
    assert m["qwk_ci_low"] <= m["qwk"] <= m["qwk_ci_high"]
    with pytest.raises(ValueError, match="unparsed_as"):
        study.evaluate(gold, gold, 0, 2, unparsed_as="drop")


def test_parse_score():
    assert study.parse_score("2", 0, 3) == 2 and study.parse_score("Score: 3.", 0, 3) == 3
    assert study.parse_score("The score is 1 because...", 0, 2) == 1
    assert study.parse_score("I'd give it 5", 0, 3) is None and study.parse_score("great answer", 0, 3) is None
    assert study.parse_score("2.5", 0, 3) is None and study.parse_score(None, 0, 3) is None


def test_split_train_stratified_seeded_disjoint():
    df = study.load_item(1).train
    pool, gate = study.split_train(df, 40, 40, seed=3)
    assert len(pool) == 40 and len(gate) == 40 and not set(pool["Id"]) & set(gate["Id"])
    share = df["Score1"].value_counts(normalize=True)
    for part in (pool, gate):
        got = part["Score1"].value_counts(normalize=True)
        assert all(abs(got.get(k, 0) - v) < 0.08 for k, v in share.items())
    again = study.split_train(df, 40, 40, seed=3)
    assert again[0]["Id"].tolist() == pool["Id"].tolist()
    assert study.split_train(df, 40, 40, seed=4)[0]["Id"].tolist() != pool["Id"].tolist()
    with pytest.raises(ValueError, match="exceeds"):
        study.split_train(df, 1000, 1000, seed=0)


def test_item_specific_rules_are_detected():
    infos = [study.load_item(n).info for n in (1, 5, 7)]
    for rule in ["Give credit when the answer says to use more vinegar.",
                 "Require the words mRNA and codon for full credit.",
                 "Reward answers that say Rose is hardworking.",
                 "For item 5, accept any four steps."]:
        specific, words = study.is_item_specific(rule, infos)
        assert specific and words, rule
    for rule in ["Give one point for each distinct correct idea the question asks for.",
                 "Do not penalize spelling errors when the meaning is clear.",
                 "List common misconceptions and give them zero credit.",
                 "Include a specific detail from the story that supports your answer.",
                 "Add a descriptor for each step of the procedure."]:
        assert study.is_item_specific(rule, infos) == (False, []), rule


def test_parse_and_apply_edits():
    edits, bad = study.parse_edits("ADD: Accept paraphrases.\nREVISE R2: One descriptor per score.\n- DELETE R3\n"
                               "I think the rubric was bad\nREVISE: missing number\n")
    assert [str(e) for e in edits] == ["ADD: Accept paraphrases.", "REVISE R2: One descriptor per score.",
                                       "DELETE R3"]
    assert len(bad) == 2
    sk = study.Skill(("a", "b", "c"))
    assert study.apply_edit(sk, edits[0]).rules == ("a", "b", "c", "Accept paraphrases.")
    assert study.apply_edit(sk, edits[1]).rules == ("a", "One descriptor per score.", "c")
    assert study.apply_edit(sk, edits[2]).rules == ("a", "b")
    assert study.apply_edit(sk, study.Edit("delete", 9, "")) is None
    assert study.apply_edit(sk, study.Edit("revise", 1, "b")) is None  # a copy of rule 2: no duplicate rules
    assert study.apply_edit(study.Skill(tuple("abcd")), edits[0], max_rules=4) is None
    # a rule number the diagnoser writes in front of the rule text is not part of the rule
    labelled, _ = study.parse_edits("ADD: R4. Ensure each line names a score.\nREVISE R1: R1: Say what earns zero.")
    assert [e.text for e in labelled] == ["Ensure each line names a score.", "Say what earns zero."]


class _GenBackend:
    model_id = "gen"
    stats = {}

    def complete_many(self, batch, **kw):
        return ["2", "Score: 1", "no idea", "The answer deserves 9"][: len(batch)]


def test_generated_scores_unparsed_are_counted():
    info = study.load_item(3).info
    res = study.score_responses(_GenBackend(), info, "rubric", ["a", "b", "c", "d"], method="generate")
    assert res.pred.tolist() == [2, 1, -1, -1] and res.parsed.tolist() == [True, True, False, False]
    m = study.evaluate([2, 1, 0, 2], res.pred, 0, 2, n_boot=100)
    assert m["coverage"] == 0.5 and m["n"] == 4
    with pytest.raises(ValueError, match="local backend"):
        study.score_responses(_GenBackend(), info, None, ["a"], method="likelihood")


@pytest.mark.slow
def test_label_likelihood_on_embedded_model_matches_uncached_prefix(smol, tmp_path):
    from helpers.core.llm import LocalChat

    chat = LocalChat(smol, batch_size=3, cache_dir=tmp_path)
    info = study.load_item(5).info
    texts = ["mRNA leaves the nucleus and goes to the ribosome where tRNA brings amino acids.", "idk",
             "The codons are read in threes and amino acids join into a protein chain until a stop codon.",
             "Protein is made."]
    res = study.score_responses(chat, info, info.rubric, texts)
    assert res.probs.shape == (4, 4) and np.allclose(res.probs.sum(1), 1) and (res.probs >= 0).all()
    assert ((res.label_mass > 0) & (res.label_mass <= 1)).all()
    assert set(res.pred) <= set(info.labels)
    prefix, tmpl = study.scoring_prompt(info, info.rubric)
    sufs = [tmpl.format(response=t) for t in texts]
    ref, ref_mass = chat.label_distribution(prefix, sufs, ["0", "1", "2", "3"], reuse_prefix=False)
    assert np.allclose(res.probs, ref, atol=1e-4) and np.allclose(res.label_mass, ref_mass, rtol=1e-3)
    calls = chat.stats["calls"]
    again = study.score_responses(chat, info, info.rubric, texts)  # from the disk cache
    assert chat.stats["calls"] == calls and np.array_equal(again.pred, res.pred)
    with pytest.raises(ValueError, match="single-token"):
        chat.label_distribution(prefix, sufs[:1], ["10", "11"])


@pytest.mark.slow
def test_local_generation_is_cached(smol, tmp_path):
    from helpers.core.llm import LocalChat

    chat = LocalChat(smol, batch_size=2, cache_dir=tmp_path)
    out = chat.complete_many(["Say hello.", "What is 2+2?", "Name a colour."], max_tokens=6)
    assert len(out) == 3 and all(isinstance(o, str) and o for o in out)
    assert chat.stats["calls"] == 3
    assert chat.complete("What is 2+2?", max_tokens=6) == out[1] and chat.stats["cached"] == 1


def test_batch_calibration_removes_a_shared_label_bias():
    # every response leans to label 1 by the same factor; the per-response ordering survives calibration
    raw = np.array([[0.30, 0.60, 0.10], [0.10, 0.60, 0.30], [0.20, 0.70, 0.10]])
    cal = study.batch_calibrate(raw)
    assert np.allclose(cal.sum(1), 1) and raw.argmax(1).tolist() == [1, 1, 1]
    assert cal.argmax(1).tolist() == [0, 2, 1]
    # calibrated log-probabilities have (up to each row's normaliser) zero mean per label over the batch
    centred = np.log(cal) - np.log(cal).mean(1, keepdims=True)
    assert np.allclose(centred.mean(0), 0, atol=1e-9)
