from __future__ import annotations

import json

import pytest
import torch

from helpers.core import sae as S


def _planted(n=60_000, d=48, n_dirs=96, active=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, d, generator=g), dim=-1)
    idx = torch.stack([torch.randperm(n_dirs, generator=g)[:active] for _ in range(n)])
    coef = 1 + 2 * torch.rand(n, active, generator=g)
    x = (coef.unsqueeze(-1) * dirs[idx]).sum(1) + 0.02 * torch.randn(n, d, generator=g)
    return x, dirs


@pytest.fixture(scope="module")
def planted_sae(tmp_path_factory):
    x, dirs = _planted()
    cfg = S.SAETrainConfig(d_sae=192, k=3, n_train_tokens=600_000, batch_size=512, lr=3e-3, dead_feature_window=50)
    sae = S._make_training_sae(cfg, x.shape[1])
    curve = S._fit(cfg, sae, S._token_batches(x, cfg.batch_size, 0), progress=False)
    folder = tmp_path_factory.mktemp("planted")
    sae.save_inference_model(folder)
    return S.load_sae(folder), x, dirs, curve


def test_topk_sae_recovers_planted_sparse_directions(planted_sae):
    sae, x, dirs, curve = planted_sae
    wdec = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    best = (dirs @ wdec.T).max(dim=1).values  # each true direction's best-matching decoder row
    assert (best > 0.9).float().mean() > 0.85, best
    rec = S.reconstruction_metrics(sae, x[:5000])
    assert rec["l0"] <= 3.0 + 1e-6  # TopK: never more than k active
    assert rec["variance_explained"] > 0.85
    assert curve["loss"][-1] < 0.5 * curve["loss"][0]


def test_saved_sae_reads_raw_activations_with_equal_norm_decoder_rows(planted_sae, tmp_path):
    sae, x, _, _ = planted_sae
    sae.save_model(tmp_path / "s")
    loaded = S.load_sae(tmp_path / "s")
    # expected_average_only_in normalisation is folded into the weights: the saved SAE reads raw activations ...
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["normalize_activations"] == "none"
    with torch.no_grad():
        out = loaded.decode(loaded.encode(x[:500]))
    assert ((out - x[:500]).pow(2).sum() / (x[:500] - x[:500].mean(0)).pow(2).sum()) < 0.15
    # ... and its decoder rows are unit-norm up to that one folded scale factor
    norms = loaded.W_dec.detach().norm(dim=-1)
    assert float(norms.std() / norms.mean()) < 1e-4


def test_save_load_round_trip_gives_identical_outputs(planted_sae, tmp_path):
    sae, x, _, _ = planted_sae
    sae.save_model(tmp_path / "a")
    a = S.load_sae(tmp_path / "a")
    a.save_model(tmp_path / "b")
    b = S.load_sae(tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(a.encode(x[:300]), b.encode(x[:300]))
        assert torch.equal(a.decode(a.encode(x[:300])), b.decode(b.encode(x[:300])))
    from sae_lens import SAE

    assert isinstance(SAE.load_from_disk(str(tmp_path / "a")), SAE)  # SAELens itself reads our files


def test_inference_k_override_and_metrics(planted_sae):
    sae, x, _, _ = planted_sae
    r1 = S.reconstruction_metrics(sae, x[:3000], k=1)
    r3 = S.reconstruction_metrics(sae, x[:3000], k=3)
    assert r1["l0"] <= 1.0 and r1["variance_explained"] < r3["variance_explained"]
    assert round((1 - r3["dead_fraction"]) * 192) >= 96  # every planted direction needs a live latent
    assert r3["variance_explained_no_outliers"] <= 1.0


def test_load_sae_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        S.load_sae(tmp_path / "empty")


def test_ce_splice_clean_equals_plain_forward_and_zero_is_worse(smol):
    model, tok = smol
    texts = ["The cat sat on the mat and looked at the dog.", "Two plus two equals four, and three plus three is six."]
    clean = S.ce_loss_with_splice(model, tok, texts, 10, mode="clean")
    zero = S.ce_loss_with_splice(model, tok, texts, 10, mode="zero")
    assert 1.0 < clean < 6.0 and zero > clean + 2.0
    # an "SAE" that is the identity map recovers 100% of the loss
    class Identity:
        W_enc = torch.zeros(1)

        @staticmethod
        def encode(h):
            return h

        @staticmethod
        def decode(f):
            return f

    ident = S.ce_loss_with_splice(model, tok, texts, 10, Identity(), mode="sae")
    assert abs(ident - clean) < 1e-4


def test_corpus_mixes_the_three_sources(smol):
    _, tok = smol
    texts, labels = S.build_corpus(tok, (("nltk", 20), ("chat", 10), ("reasoning", 10)), seed=1)
    assert len(texts) == 40 and labels.count("chat") == 10
    chat = [t for t, l in zip(texts, labels) if l == "chat"]
    assert all("<|im_start|>user" in t for t in chat)
    again, _ = S.build_corpus(tok, (("nltk", 20), ("chat", 10), ("reasoning", 10)), seed=1)
    assert again == texts
    with pytest.raises(ValueError, match="unknown corpus source"):
        S.build_corpus(tok, (("poetry", 3),))


def test_load_sae_by_release_fails_fast_offline(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(FileNotFoundError, match="hub is unreachable"):
        S.load_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    assert time.time() - t0 < 10


def test_encode_and_max_activation_handle_empty_texts(planted_sae):
    sae, x, _, _ = planted_sae
    empty = S.encode(sae, x[:0])
    assert empty.shape == (0, sae.W_dec.shape[0])
    lat = [S.encode(sae, x[:5]), empty, S.encode(sae, x[5:9])]
    torch.testing.assert_close(S.max_activation(lat), torch.cat([lat[0], lat[2]]).max(0).values)
    with pytest.raises(ValueError, match="empty"):
        S.max_activation([empty])
