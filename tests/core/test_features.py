"""Feature-explanation functions on a hand-made SAE whose latents are known by construction."""
from __future__ import annotations

import pytest
import torch

from helpers.core import features as F


@pytest.fixture(scope="module")
def handmade(smol, tmp_path_factory):
    """A 3-latent SAE on block 10 of SmolLM2: latent 0 reads the direction of the token ' cat' at that block,
    latent 1 reads digits, latent 2 (never active) writes the unembedding direction of ' Paris'."""
    from sae_lens import TopKSAE, TopKSAEConfig

    from helpers.core import activations as A

    model, tok = smol
    texts = ["My cat likes fish and the cat sleeps.", "There are 7 apples and 3 pears.", "The weather is fine today."]
    acts = A.capture(model, tok, texts, [10], progress=False)
    cat = acts.acts[10][0][[i for i, t in enumerate(acts.tokens[0]) if t == "Ġcat"]].mean(0)
    digits = acts.acts[10][1][[i for i, t in enumerate(acts.tokens[1]) if t.strip("Ġ").isdigit()]].mean(0)
    mu = acts.stacked(10).mean(0)
    # the least-squares direction with W_U (g * d) ~ one-hot(' Paris'), g the final RMSNorm gain
    W_U = model.get_output_embeddings().weight.detach()
    onehot = torch.zeros(W_U.shape[0], 1)
    onehot[tok.convert_tokens_to_ids("ĠParis")] = 1.0
    paris = torch.linalg.lstsq(W_U, onehot).solution[:, 0] / model.model.norm.weight.detach()
    dirs = [cat - mu, digits - mu, paris]
    sae = TopKSAE(TopKSAEConfig(d_in=576, d_sae=3, k=1))
    with torch.no_grad():
        for i, dvec in enumerate(dirs):
            sae.W_enc[:, i] = (dvec / dvec.norm())
            sae.W_dec[i] = dvec / dvec.norm()
        sae.b_enc.zero_()
        sae.b_enc[2] = -1e4  # latent 2 never fires (decoder-only)
        sae.b_dec.copy_(mu)
    store = A.capture_to_disk(model, tok, texts, [10], tmp_path_factory.mktemp("store"), store_dtype=torch.float32,
                              progress=False)
    return sae, F.TokenTable.from_store(store, 10), model, tok


def test_top_contexts_find_the_planted_tokens(handmade):
    sae, table, model, tok = handmade
    ctx = F.top_contexts(sae, table, [0, 1], n=2, tokenizer=tok, window=(3, 1))
    assert [c["tokens"][c["peak"]] for c in ctx[0]] == ["Ġcat", "Ġcat"]
    assert all(c["tokens"][c["peak"]].strip("Ġ").isdigit() for c in ctx[1])
    assert ctx[0][0]["max_act"] >= ctx[0][1]["max_act"] > 0
    assert F.token_purity(ctx[0]) == 1.0
    text = F.render_contexts_text(ctx[0])
    assert "[[ cat]]" in text
    html = F.render_contexts_html(ctx[0], "cat latent")
    assert "text-decoration: underline" in html and "cat latent" in html


def test_decoder_logit_lens_recovers_the_unembedding_direction(handmade):
    sae, _, model, tok = handmade
    lens = F.decoder_logit_lens(model, sae, 2, k=5, tokenizer=tok)
    assert lens["promoted"][0] == " Paris"
    assert " Paris" not in lens["suppressed"]


def test_semantic_labels_match_the_obvious_label():
    descs = {0: "Fires on: 7, 3, 12, 45. Contexts: there are 7 apples and 3 pears | 12 + 45 = 57",
             1: "Fires on: president, congress. Contexts: the president addressed congress and the nation"}
    labels = F.semantic_labels(descs, ["arithmetic and numbers", "politics, government and the nation", "food"])
    assert labels[0]["label"] == "arithmetic and numbers"
    assert labels[1]["label"] == "politics, government and the nation"
    assert labels[0]["similarity"] > 0.2 and labels[0]["margin"] > 0


def test_embeddings_are_unit_norm_and_offline():
    e = F.embed(["a cat", "a dog", "tax policy"])
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), atol=1e-4, rtol=0)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])


def test_static_report_and_browser(handmade):
    sae, table, model, tok = handmade
    ctx = F.top_contexts(sae, table, [0], n=2, tokenizer=tok)
    feats = {0: {"contexts": ctx[0], "lens": F.decoder_logit_lens(model, sae, 0, tokenizer=tok), "label": "cats",
                 "similarity": 0.5}}
    assert "latent 0 — cats" in F.static_report(feats)
    from helpers.core.widgets import feature_browser

    box = feature_browser(feats)
    assert box.children[0].value == 0
