from __future__ import annotations

import pytest
import torch

from helpers import steering as St

PROMPTS = ["Name a fruit.", "Write one sentence about the history of the Roman empire and its emperors."]


def _direction(model, tok, word="Ġocean"):
    d = model.get_input_embeddings().weight[tok.convert_tokens_to_ids(word)].detach()
    return d / d.norm()


def test_batched_steered_generation_equals_one_at_a_time(smol):
    """Left padding must not shift where steering starts: batch of 2 == each prompt alone."""
    model, tok = smol
    v = 40.0 * _direction(model, tok)
    batched = St.generate(model, tok, PROMPTS, max_new_tokens=12, layer=12, vector=v, batch_size=2)
    alone = [St.generate(model, tok, [p], max_new_tokens=12, layer=12, vector=v)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in alone]


def test_steering_changes_the_text_but_not_the_first_token(smol):
    model, tok = smol
    plain = St.generate(model, tok, PROMPTS, max_new_tokens=12)
    steered = St.generate(model, tok, PROMPTS, max_new_tokens=12, layer=12, vector=40.0 * _direction(model, tok))
    assert [g.text for g in plain] != [g.text for g in steered]
    for p, s in zip(plain, steered):  # the first token comes from the prompt pass, which is not steered
        assert tok(p.text).input_ids[:1] == tok(s.text).input_ids[:1]
    again = St.generate(model, tok, PROMPTS, max_new_tokens=12)
    assert [g.text for g in plain] == [g.text for g in again]  # the hook is gone afterwards


def test_bad_words_are_never_generated(smol):
    model, tok = smol
    plain = St.generate(model, tok, ["What is the capital of France?"], max_new_tokens=10)[0]
    assert "Paris" in plain.text
    banned = [tok(" Paris", add_special_tokens=False).input_ids, tok("Paris", add_special_tokens=False).input_ids]
    out = St.generate(model, tok, ["What is the capital of France?"], max_new_tokens=10, bad_words_ids=banned)[0]
    assert "Paris" not in out.text and out.n_tokens > 0


def test_generation_bookkeeping_and_errors(smol):
    model, tok = smol
    g = St.generate(model, tok, ["Say hi."], max_new_tokens=3)[0]
    assert g.n_tokens == 3 and g.hit_limit
    with pytest.raises(ValueError, match="layer"):
        St.generate(model, tok, ["x"], vector=torch.zeros(576))


def test_sae_feature_vector_is_gamma_fmax_wdec():
    class Fake:
        W_dec = torch.arange(12.0).reshape(3, 4)

    v = St.sae_feature_vector(Fake(), 1, f_max=2.0, gamma=3.0)
    assert torch.equal(v, 6.0 * torch.tensor([4.0, 5.0, 6.0, 7.0]))
