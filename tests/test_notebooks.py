"""Every notebook executed under papermill with its smoke profile, and the paper profile's code path with a
small local stand-in model. (The committed default-profile notebooks are checked by nbval: `make test`.)"""
from __future__ import annotations

import json

import pytest

from helpers import notebook as nb

pytestmark = pytest.mark.slow


def _run(name, profile, tmp_path, **overrides):
    out = tmp_path / name
    executed = nb.run_notebook(name, profile, overrides=overrides, output_dir=out)
    assert executed.exists()
    return json.loads((out / "results.json").read_text()), out


def test_00_smoke(tmp_path):
    res, out = _run("00_inside_a_language_model", "smoke", tmp_path)
    assert res["profile"] == "smoke" and res["parameters"]["n_per_set"] == 10
    m = res["metrics"]
    assert res["provenance"]["model"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert res["provenance"]["data"]["gsm8k-test"]["sha256"]
    assert m["tokenize"]["n_tokens"] == 14
    assert m["capture"]["n_texts"] == 30 and m["capture"]["n_tokens"] > 300
    france = m["logit_lens"]["The capital of France is"]
    assert france["final_token"] == " Paris" and france["top1_from_block"] >= 15
    assert len(m["norms"]["median_norm"]) == 30
    assert m["norms"]["median_norm"][29] > m["norms"]["median_norm"][0]
    assert m["probe"]["acc_full"] > 0.8 and m["probe"]["acc_shuffled"] < 0.6
    assert "Paris" in res["replies"]["What is the capital of France?"]
    for fig in ("logit_lens", "norm_by_layer", "outlier_share_by_layer", "pca_sets", "probe_by_layer"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000


def test_00_paper_profile_code_path_with_local_stand_in(tmp_path, tiny_llama_dir):
    res, _ = _run("00_inside_a_language_model", "paper", tmp_path, model_name=str(tiny_llama_dir),
                  dtype="float32", device="cpu", n_per_set=6, max_length=16, batch_size=4)
    assert res["profile"] == "paper"
    assert res["provenance"]["model"]["source"] == "local-dir" and res["provenance"]["model"]["n_layers"] == 4
    assert res["metrics"]["probe"]["block"] == 2 and len(res["metrics"]["probe"]["acc_by_block"]) == 4
