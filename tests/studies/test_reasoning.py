"""Tests of helpers.studies.reasoning: ReasonScore on planted features, word matching/windows, answers, text stats, bootstrap."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers.studies.reasoning as R
from helpers.core.text import distinct_n, repetition_rate
from helpers.studies.reasoning import (
    PAPER_REASON_TOKENS,
    REASONING_WORDS,
    answers_match,
    ban_logit_bias,
    extract_numeric_answer,
    find_word_positions,
    random_frequent_words,
    reason_score,
    reasoning_token_sequences,
    reflection_word_rate,
    select_features,
    window_masks,
)

# tiny fake vocabulary: one id per word, "let me" = two ids; ordinary tokens are ids >= 10
FAKE = {"wait": [[1]], "maybe": [[2]], "hmm": [[3]], "but": [[4]], "let me": [[5, 6]]}
LET, ME = 5, 6


# --------------------------------------------------------------------------------------------------
# Planted features
# --------------------------------------------------------------------------------------------------

def _planted_corpus(n_docs=40, T=60, seed=0):
    """Docs of random ids with 4 non-overlapping reasoning words each (and a lone "let"), and 4 planted features."""
    g = torch.Generator().manual_seed(seed)
    words = list(FAKE)
    docs, acts = [], []
    for d in range(n_docs):
        ids = torch.randint(10, 100, (T,), generator=g)
        for k in range(4):  # slots 12 tokens apart: windows (2 before / 3 after) never overlap
            start = 5 + 12 * k + int(torch.randint(0, 3, (1,), generator=g))
            seq = FAKE[words[(d + k) % len(words)]][0]
            ids[start:start + len(seq)] = torch.tensor(seq)
        ids[52] = LET  # "let" without "me": not a match
        ids = ids.tolist()
        matches = find_word_positions(ids, FAKE)
        union, per_word = window_masks(T, matches, before=2, after=3, words=FAKE)
        noise = 1e-3 * torch.rand(T, 4, generator=g)
        a = torch.zeros(T, 4)
        a[:, 0] = union.float()                                        # f0: all reasoning windows
        a[:, 1] = per_word["wait"].float()                              # f1: only "wait" windows
        a[:, 2] = 0.5                                                  # f2: everywhere
        a[:, 3] = ((torch.rand(T, generator=g) < 0.2) & ~union).float()  # f3: random non-reasoning tokens
        docs.append(ids)
        acts.append(a + noise)
    return docs, acts


def test_planted_features_ordering_entropy_and_selection():
    docs, acts = _planted_corpus()
    df = reason_score(acts, docs, FAKE, alpha=0.7, before=2, after=3)
    s = df["score"]
    assert list(df.columns[:4]) == ["score", "mu_reason", "mu_other", "entropy"]
    assert {"p_wait", "p_let_me", "p_but"} <= set(df.columns)
    assert s[0] > s[1] > max(s[2], s[3])
    assert s[2] < 0 and s[3] < 0
    assert df.loc[1, "mu_reason"] > 0.1  # f1 does fire in reasoning windows; the entropy term penalises it
    assert df.loc[0, "entropy"] == pytest.approx(1.0, abs=1e-3)
    assert df.loc[1, "entropy"] == pytest.approx(0.0, abs=0.05)
    assert df.loc[1, "p_wait"] > 0.99
    assert select_features(df) == [0]
    assert select_features(df, q=0.5) == [0, 1]
    # every word occurred; the lone "let" did not count as "let me"
    assert df.attrs["entropy_words"] == list(FAKE)
    assert df.attrs["word_occurrences"]["let me"] == sum(1 for d in range(40) for k in range(4)
                                                         if list(FAKE)[(d + k) % 5] == "let me")
    # flat (n_tokens, F) tensor with per-document ids gives the same table
    flat = reason_score(torch.cat(acts), docs, FAKE)
    np.testing.assert_allclose(flat.to_numpy(), df.to_numpy(), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Matching and windows
# --------------------------------------------------------------------------------------------------

def test_multi_token_word_is_a_sequence():
    ids = [LET, 9, LET, ME, 1, ME]
    assert find_word_positions(ids, FAKE) == [(2, 4, "let me"), (4, 5, "wait")]
    assert find_word_positions(torch.tensor(ids), FAKE) == [(2, 4, "let me"), (4, 5, "wait")]
    assert find_word_positions([LET, 9, ME], FAKE) == []


def test_overlapping_matches_longest_wins():
    seqs = {"a": [[7, 8]], "b": [[8]], "c": [[7, 8, 9]]}
    assert find_word_positions([7, 8, 9, 8], seqs) == [(0, 3, "c"), (3, 4, "b")]
    assert find_word_positions([7, 8, 7, 8, 9], seqs) == [(0, 2, "a"), (2, 5, "c")]


def test_window_sizes_paper_vs_code_exact_masks():
    matches = [(4, 5, "wait"), (0, 1, "hmm")]
    paper, pw = window_masks(10, matches, before=2, after=3)
    code, cw = window_masks(10, matches, before=1, after=2)
    B = lambda s: torch.tensor([c == "1" for c in s])
    assert torch.equal(pw["wait"], B("0011111100"))   # 4-2 .. 4+3
    assert torch.equal(cw["wait"], B("0001111000"))   # 4-1 .. 4+2
    assert torch.equal(pw["hmm"], B("1111000000"))    # clipped at 0
    assert torch.equal(cw["hmm"], B("1110000000"))
    assert torch.equal(paper, B("1111111100"))
    assert torch.equal(code, B("1111111000"))
    # a two-token word: window from start-before to end-1+after, clipped at the end
    m, _ = window_masks(8, [(5, 7, "let me")], before=2, after=3)
    assert torch.equal(m, B("00011111"))
    _, with_empty = window_masks(8, [], words=["wait"])
    assert not with_empty["wait"].any()


def test_windows_never_cross_documents():
    docs = [[9, 9, 9, 1], [9, 9, 9, 9]]
    acts = [torch.tensor([[0.0, 1.0]] * 4), torch.tensor([[1.0, 1.0]] * 3 + [[0.0, 1.0]])]
    seqs = {"wait": [[1]]}
    per_doc = reason_score(acts, docs, seqs)
    assert per_doc.loc[0, "mu_reason"] == 0.0          # the window of "wait" stops at the end of doc 0
    assert per_doc.attrs["n_reason_tokens"] == 3 and per_doc.attrs["n_other_tokens"] == 5
    flat = torch.cat(acts)
    nested = reason_score(flat, docs, seqs)
    by_index = reason_score(flat, sum(docs, []), seqs, doc_index=[0] * 4 + [1] * 4)
    batched = reason_score(torch.stack(acts), torch.tensor(docs), seqs)
    for other in (nested, by_index, batched):
        np.testing.assert_allclose(other.to_numpy(), per_doc.to_numpy())
    # the same tokens as ONE document: the window spills over (positions 4-6)
    one_doc = reason_score(flat, sum(docs, []), seqs)
    assert one_doc.loc[0, "mu_reason"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# Hand-computed ReasonScore
# --------------------------------------------------------------------------------------------------

def test_reason_score_by_hand():
    # ids: wait . . hmm . .   windows (before=0, after=1): wait -> {0,1}, hmm -> {3,4}; D_R={0,1,3,4}, D_notR={2,5}
    ids = [1, 9, 9, 2, 9, 9]
    acts = torch.tensor([[4, 0], [2, 0], [1, 2], [2, 2], [0, 2], [3, 0]], dtype=torch.float32)
    seqs = {"wait": [[1]], "hmm": [[2]], "never": [[77]]}  # "never" does not occur: excluded from |R|
    df = reason_score(acts, ids, seqs, alpha=0.7, before=0, after=1)
    # f0: mu_R=(4+2+2+0)/4=2, mu_notR=(1+3)/2=2, mu_wait=3, mu_hmm=1 -> p=(.75,.25),
    #     H=-(.75 ln .75 + .25 ln .25)/ln 2 = 0.8112781244591328
    # f1: mu_R=(0+0+2+2)/4=1, mu_notR=(2+0)/2=1, mu_wait=0, mu_hmm=2 -> p=(0,1), H=0
    # sums over features: sum mu_R = 3, sum mu_notR = 3
    # score f0 = 2/3 * 0.8112781244591328**0.7 - 2/3 = -0.09079252635489132 ; score f1 = 1/3 * 0 - 1/3
    assert df.loc[0, "mu_reason"] == pytest.approx(2.0) and df.loc[0, "mu_other"] == pytest.approx(2.0)
    assert df.loc[1, "mu_reason"] == pytest.approx(1.0) and df.loc[1, "mu_other"] == pytest.approx(1.0)
    assert (df.loc[0, "p_wait"], df.loc[0, "p_hmm"], df.loc[0, "p_never"]) == pytest.approx((0.75, 0.25, 0.0))
    assert df.loc[0, "entropy"] == pytest.approx(0.8112781244591328, rel=1e-9)
    assert df.loc[1, "entropy"] == 0.0
    assert df.loc[0, "score"] == pytest.approx(-0.09079252635489132, rel=1e-9)
    assert df.loc[1, "score"] == pytest.approx(-1 / 3, rel=1e-9)
    assert df.attrs["entropy_words"] == ["wait", "hmm"]
    # alpha = 0 drops the entropy factor
    df0 = reason_score(acts, ids, seqs, alpha=0.0, before=0, after=1)
    assert df0.loc[0, "score"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        reason_score(acts, [9] * 6, seqs)


# --------------------------------------------------------------------------------------------------
# Real tokenizer
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(smol):
    """The embedded model's real tokenizer, from the project's own model cache (built on first use)."""
    return smol[1]


def test_real_tokenizer_spans(tok):
    text = "Wait, let me think. But maybe not; hmm."
    ids = tok.encode(text, add_special_tokens=False)
    found = find_word_positions(ids, reasoning_token_sequences(tok, variants="all"))
    assert [w for _, _, w in found] == ["wait", "let me", "but", "maybe", "hmm"]
    assert [(s, e) for s, e, _ in found] == [(0, 1), (2, 4), (6, 7), (7, 8), (10, 12)]
    for s, e, w in found:
        assert tok.decode(ids[s:e]).strip().lower() == w
    # reason_tokens.json has only "But" (no leading space): mid-text " But" is not a reasoning word there
    paper = reasoning_token_sequences(tok)
    assert [w for _, _, w in find_word_positions(ids, paper)] == ["wait", "let me", "maybe", "hmm"]
    assert paper["but"] == [tok.encode("But", add_special_tokens=False)]
    assert list(paper) == REASONING_WORDS
    assert sum(len(v) for v in paper.values()) == len(PAPER_REASON_TOKENS)  # all 34 strings distinct here


def test_ban_logit_bias_real_tokenizer(tok):
    bad = ban_logit_bias(tok, ["wait"])
    assert tok.encode(" wait", add_special_tokens=False) in bad
    assert tok.encode("Wait", add_special_tokens=False) in bad
    assert len(bad) == 4
    everything = ban_logit_bias(tok, REASONING_WORDS)
    assert tok.encode(" But", add_special_tokens=False) in everything
    assert tok.encode(" let me", add_special_tokens=False) in everything
    assert len(everything) == len({tuple(s) for s in everything})


# --------------------------------------------------------------------------------------------------
# Answers and text statistics
# --------------------------------------------------------------------------------------------------

def test_extract_numeric_answer():
    assert extract_numeric_answer("She pays 5-3 = 2 per day...\n#### 1,234") == "1234"
    assert extract_numeric_answer("The answer is $18.") == "18"
    assert extract_numeric_answer("so x = 3, hence \\boxed{0.5} done 7") == "0.5"
    assert extract_numeric_answer("no number") is None
    assert extract_numeric_answer("3.0") == "3"
    assert extract_numeric_answer("It drops by -3 degrees.") == "-3"
    assert extract_numeric_answer("first 4, then 5, finally 6 apples") == "6"
    assert extract_numeric_answer("The answer is 7. Check: 7 + 1 = 8") == "7"
    assert answers_match("18.0", "18")
    assert answers_match("1234", "#### 1,234")
    assert not answers_match("17", "18")
    assert not answers_match(None, "18")


def test_reflection_word_rate():
    text = "Wait, let me check. But maybe not. Hmm okay"  # 9 words, 5 hits
    assert reflection_word_rate(text) == pytest.approx(100 * 5 / 9)
    assert reflection_word_rate("I await the butter, letme see") == 0.0
    assert reflection_word_rate("") == 0.0
    assert reflection_word_rate("wait wait go", words=["wait"]) == pytest.approx(200 / 3)


def test_distinct_and_repetition():
    assert distinct_n("a b a b", 2) == pytest.approx(2 / 3)
    assert distinct_n("a b c", 1) == 1.0
    assert distinct_n("a", 2) == 1.0
    assert repetition_rate("a b c d a b c d", 4) == pytest.approx(1 / 5)
    assert repetition_rate("a a a a a", 2) == pytest.approx(3 / 4)
    assert repetition_rate("x y", 4) == 0.0


def test_random_frequent_words():
    corpus = ["Wait, let me see: the apple and the pear. But maybe another apple?",
              "Perhaps the orange; however the apple wins. Let it go, I'd say apples don't lie."] * 3
    words = random_frequent_words(None, corpus, 4, seed=0)
    assert len(words) == 4 and len(set(words)) == 4
    assert words == random_frequent_words(None, corpus, 4, seed=0)
    banned = {"wait", "let", "maybe", "but", "another", "perhaps", "however"}
    assert not banned & set(words)
    assert all(len(w) >= 3 and w.isalpha() and w == w.lower() for w in words)
    assert "don" not in random_frequent_words(None, corpus, 8, seed=1)
    with pytest.raises(ValueError):
        random_frequent_words(None, corpus, 50)


def test_experiment_tables_on_hand_made_generations():
    import pandas as pd

    from helpers.core.steering import Generation

    gens = [Generation("p1", "Wait, let me check. #### 18", 9, False), Generation("p2", "It is 7 7 7 7 7 7", 7, True)]
    m = R.generation_metrics(gens, ["18", "8"])
    assert m.correct.tolist() == [1.0, 0.0] and m.answer.tolist() == ["18", "7"]
    assert m.reflection_rate[0] > 0 and m.reflection_rate[1] == 0 and m.repetition[1] == pytest.approx(0.4)  # 4-grams: 5, of which 2 repeat "7 7 7 7"
    steer = pd.concat([m.assign(condition="no steering", latent=None, gamma=0.0, kind="none"),
                       m.assign(condition="feature 5", latent=5, gamma=2.0, kind="feature", n_tokens=[20, 30])])
    summ = R.summarize_conditions(steer, metrics=("n_tokens",), n_boot=200)
    row = summ[(summ.condition == "feature 5")].iloc[0]
    assert row["mean"] == 25.0 and row["diff_vs_baseline"] == 17.0


def test_group_of_follows_the_word_mass():
    import pandas as pd

    words = ["wait", "let me", "maybe", "but"]
    row = pd.Series({"p_wait": 0.6, "p_let_me": 0.2, "p_maybe": 0.1, "p_but": 0.1})
    assert R.group_of(row, words) == ("reflection", pytest.approx(0.4 / 0.25))  # mean share 0.4 vs uniform 0.25
    flat = pd.Series({"p_wait": 0.25, "p_let_me": 0.25, "p_maybe": 0.25, "p_but": 0.25})
    assert R.group_of(flat, words)[0] == "mixed"  # a uniform profile belongs to no group
