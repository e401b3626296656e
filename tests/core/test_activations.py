from __future__ import annotations

import json

import pytest
import torch

from helpers.core import activations as A

TEXTS = ["The cat sat on the mat.", "Wait, let me think about this problem again carefully.", "Hi"]


def test_capture_matches_hidden_states_and_token_strings(smol):
    model, tok = smol
    acts = A.capture(model, tok, TEXTS, [0, 15, 29], progress=False)
    for i, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            hs = model(**enc, output_hidden_states=True).hidden_states
        assert acts.tokens[i] == tok.convert_ids_to_tokens(enc.input_ids[0].tolist())
        for l in (0, 15):
            assert acts.acts[l][i].shape == (enc.input_ids.shape[1], 576)
            # batched with padding vs alone: same numbers up to float32 noise
            torch.testing.assert_close(acts.acts[l][i], hs[l + 1][0].float(), atol=2e-3, rtol=1e-4)
        # HF's last hidden state has the final norm applied; ours is the raw block output
        with torch.inference_mode():
            normed = model.model.norm(acts.acts[29][i])
        torch.testing.assert_close(normed, hs[30][0], atol=2e-3, rtol=1e-4)


def test_capture_stops_after_last_requested_layer(smol):
    model, tok = smol
    calls = {"later": 0, "head": 0}
    h1 = A.get_layers(model)[20].register_forward_hook(lambda *a: calls.__setitem__("later", calls["later"] + 1))
    h2 = model.get_output_embeddings().register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    try:
        early = A.capture(model, tok, TEXTS, [3, 10], progress=False)
        assert calls == {"later": 0, "head": 0}
        full = A.capture(model, tok, TEXTS, [3, 10], stop_early=False, progress=False)
        assert calls["later"] > 0 and calls["head"] > 0
    finally:
        h1.remove(), h2.remove()
    for i in range(len(TEXTS)):
        assert torch.equal(early.acts[10][i], full.acts[10][i])


def test_capture_rejects_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="0..3"):
        A.capture(model, tok, ["x"], [7], progress=False)
    with pytest.raises(TypeError, match="list of texts"):
        A.capture(model, tok, "a single string", [0], progress=False)


def test_views_mean_last_stacked(tiny):
    model, tok = tiny
    acts = A.capture(model, tok, TEXTS, [1], progress=False)
    assert acts.stacked(1).shape == (acts.n_tokens, 64)
    torch.testing.assert_close(acts.last(1)[1], acts.acts[1][1][-1])
    torch.testing.assert_close(acts.mean(1, skip_first=1)[0], acts.acts[1][0][1:].mean(0))


def test_capture_to_disk_round_trip_and_resume(tiny, tmp_path):
    model, tok = tiny
    texts = [f"Sentence number {i} is here." * (1 + i % 3) for i in range(10)]
    store = A.capture_to_disk(model, tok, texts, [1, 3], tmp_path / "store", texts_per_shard=4,
                              store_dtype=torch.float32, progress=False)
    ref = A.capture(model, tok, texts, [1, 3], progress=False)
    assert len(store.shards()) == 3 and len(store) == ref.n_tokens
    torch.testing.assert_close(store.load_all(3), ref.stacked(3))
    assert torch.equal(store.load_field("doc_index"), torch.cat([torch.full((len(t),), i) for i, t in enumerate(ref.token_ids)]))
    batches = list(store.iter_batches(7, layer=1, seed=0))
    assert sum(len(b) for b in batches) == len(store)
    # resume: drop one shard and mark the run interrupted -> only that shard is recomputed
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    (tmp_path / "store" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    (tmp_path / "store" / "shard_00001.safetensors").unlink()
    with pytest.raises(RuntimeError, match="interrupted"):
        A.ActivationStore(tmp_path / "store")
    calls = []
    h = A.get_layers(model)[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        store2 = A.capture_to_disk(model, tok, texts, [1, 3], tmp_path / "store", texts_per_shard=4,
                                   store_dtype=torch.float32, progress=False)
    finally:
        h.remove()
    assert sum(calls) == 4  # one shard of 4 texts
    torch.testing.assert_close(store2.load_all(3), ref.stacked(3))
    with pytest.raises(ValueError, match="other settings"):
        A.capture_to_disk(model, tok, texts[:5], [1, 3], tmp_path / "store", texts_per_shard=4, progress=False)


def _block_out(model, enc, layer):
    out = {}
    h = A.get_layers(model)[layer].register_forward_hook(lambda m, a, o: out.__setitem__("x", o.detach().clone()))
    try:
        with torch.inference_mode():
            logits = model(**enc).logits
    finally:
        h.remove()
    return out["x"], logits


def test_intervention_touches_only_positions_from_min_token_index(smol):
    model, tok = smol
    enc = tok(["The quick brown fox jumps over the lazy dog"], return_tensors="pt")
    clean_h, clean_logits = _block_out(model, enc, 12)
    v = torch.randn(576, generator=torch.Generator().manual_seed(0)) * 4
    with A.add_vector(model, 10, v, 1.5, min_token_index=4):
        h, logits = _block_out(model, enc, 12)
    assert torch.equal(h[:, :4], clean_h[:, :4])  # causal: earlier positions bit-for-bit untouched
    assert (h[:, 4:] - clean_h[:, 4:]).norm(dim=-1).min() > 1.0
    assert torch.equal(logits[:, :4], clean_logits[:, :4])
    with torch.inference_mode():  # leaving the block restores the model exactly
        assert torch.equal(model(**enc).logits, clean_logits)


def test_intervention_edit_is_exactly_what_was_asked(smol):
    model, tok = smol
    enc = tok(["Hello there, friend"], return_tensors="pt")
    ref, _ = _block_out(model, enc, 7)
    v = torch.randn(576)
    got = {}
    with A.add_vector(model, 7, v, -2.0):
        got["x"], _ = _block_out(model, enc, 7)
    torch.testing.assert_close(got["x"], ref - 2.0 * v, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="size 10"):
        with A.add_vector(model, 7, torch.zeros(10)):
            pass


def test_intervention_acts_during_generate_from_first_generated_token(smol):
    model, tok = smol
    enc = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    n = enc["input_ids"].shape[1]
    seen = []
    direction = model.get_input_embeddings().weight[tok.convert_tokens_to_ids("Ġbanana")].detach()
    direction = direction / direction.norm()

    def fn(h, pos):
        seen.append(pos.clone())
        return h + 2.0 * h.norm(dim=-1, keepdim=True) * direction

    with torch.inference_mode():
        plain = model.generate(**enc, max_new_tokens=6, do_sample=False)
        with A.intervene(model, 14, fn, min_token_index=n):
            steered = model.generate(**enc, max_new_tokens=6, do_sample=False)
        again = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert torch.equal(plain, again)
    assert not torch.equal(plain, steered)
    assert steered[0, n] == plain[0, n]  # the first new token comes from the untouched prompt pass
    assert [int(p.flatten()[0]) for p in seen][:3] == [n, n + 1, n + 2]


def test_per_row_thresholds_with_left_padding(smol):
    model, tok = smol
    tok.padding_side = "left"
    enc = tok(["Short one", "A much longer prompt with many more tokens in it"], return_tensors="pt", padding=True)
    tok.padding_side = "right"
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    clean, _ = _block_out(model, {**enc, "position_ids": pos}, 5)
    lens = enc["attention_mask"].sum(1)
    with A.add_vector(model, 5, torch.ones(576), 3.0, min_token_index=lens - 1):  # only each row's last token
        h, _ = _block_out(model, {**enc, "position_ids": pos}, 5)
    changed = (h - clean).norm(dim=-1) > 1e-3
    assert changed[:, -1].all() and not changed[:, :-1].any()


def test_logit_lens_at_last_block_equals_model_logits(smol):
    model, tok = smol
    acts = A.capture(model, tok, ["The capital of France is"], [29], progress=False)
    enc = tok(["The capital of France is"], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits[0, -1]
    torch.testing.assert_close(A.logit_lens(model, acts.acts[29][0][-1]), logits, atol=1e-3, rtol=1e-4)


def test_logit_lens_by_layer_finds_paris(smol):
    model, tok = smol
    df = A.logit_lens_by_layer(model, tok, ["The capital of France is"])
    assert len(df) == 30 and df.final_token.iloc[0] == " Paris"
    last = df[df.layer == 29].iloc[0]
    assert last.top_token == " Paris" and last.final_rank == 0
    assert df[df.layer < 10].final_rank.min() > 0  # the answer is not there in the early blocks


def test_norm_profile_on_planted_outlier_dimension():
    acts = A.Activations(texts=["a", "b"], layers=[0], token_ids=[torch.arange(50), torch.arange(50)],
                         tokens=[["x"] * 50] * 2, acts={0: []})
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(50, 32, generator=g)
        x[:, 3] *= 30.0  # one outlier dimension
        acts.acts[0].append(x)
    prof = A.norm_profile(acts, skip_first=1)
    assert prof.top5_var_share.iloc[0] > 0.9
    assert 15 < prof.median_norm.iloc[0] < 30  # median |N(0,1)| = 0.67: sqrt(31 + (0.67*30)^2) ~ 21


def test_linear_separability_detects_signal_and_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 20, generator=g)
    y = [i % 3 for i in range(90)]
    x[torch.arange(90), torch.tensor(y)] += 6.0  # class k shifts dimension k (Bayes accuracy ~0.99)
    assert A.linear_separability(x, y) > 0.95
    assert A.linear_separability(torch.randn(90, 20, generator=g), y) < 0.6


@pytest.mark.parametrize("layer", [0, 15, 28])
def test_cached_suffix_forward_equals_a_steered_forward_bit_for_bit(smol, layer):
    """Blocks up to `layer` run once; each edit re-runs only the later blocks from the shared prefix cache, and
    gives exactly the logits of a forward with the same cache and the vector added by a hook (left-padded batch
    with its attention mask and positions, as teacher_forced_dose calls it)."""
    model, tok = smol
    old, tok.padding_side = tok.padding_side, "left"
    enc = tok(["The cat sat on the mat and looked at", "Rome was not built in a day, so"], return_tensors="pt",
              padding=True)
    tok.padding_side = old
    ids, att = enc.input_ids, enc.attention_mask
    pos = (att.cumsum(1) - 1).clamp_min(0)
    cut = 6
    v = torch.randn(576, generator=torch.Generator().manual_seed(1))

    def prefix():
        return model(input_ids=ids[:, :cut], attention_mask=att[:, :cut], position_ids=pos[:, :cut],
                     use_cache=True).past_key_values

    suffix = dict(input_ids=ids[:, cut:], attention_mask=att, position_ids=pos[:, cut:])
    with torch.inference_mode():
        run = A.CachedSuffixForward(model, layer, prefix(), **suffix)
        assert torch.equal(run.logits, model(**suffix, past_key_values=prefix(), use_cache=True).logits)
        for a in (0.0, 7.5, -30.0, 7.5):  # the repeat checks that the cache is cropped back between calls
            got = run.logits_from(run.resid + a * v)
            cache = prefix()  # unsteered: the hook below would steer the prefix too
            with A.add_vector(model, layer, v, a):
                want = model(**suffix, past_key_values=cache, use_cache=True).logits
            assert torch.equal(got, want), (layer, a)
