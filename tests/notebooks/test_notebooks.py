"""Every notebook executed under papermill with its smoke profile, and the paper profile's code path with a
small local stand-in model. (The committed default-profile notebooks are checked by nbval: `make test`.)"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers.harness import notebook as nb

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


def test_01_smoke_trains_caches_and_reports(tmp_path):
    res, out = _run("01_sparse_autoencoders", "smoke", tmp_path)
    m = res["metrics"]
    assert m["l0"] <= 16.0 + 1e-6 and 0 <= m["dead_fraction"] <= 1
    assert m["ce_zero"] > m["ce_sae"] > 0 and m["ce_clean"] < m["ce_zero"]
    assert 0 < m["ce_loss_recovered"] < 1.0
    assert set(m["variance_explained_by_k"]) == {"8", "16"} == set(m["variance_explained_ordinary_by_k"])
    assert m["trainer"] == "sparsify" == res["training"]["config"]["trainer"] and 0 <= m["dense_fraction"] <= 1
    assert 0 <= m["variance_explained_ordinary_no_outliers"] <= 1 and m["n_outlier_tokens"] >= 0
    assert len(m["features"]) == 3
    assert res["training"]["corpus_sources"] == {"chat": 30, "nltk": 60, "reasoning": 30}
    det = {r["explainer"]: r for r in m["detection"]}
    assert set(det) == {"LLM", "offline tokens", "offline label", "LLM, shuffled (control)"}
    assert all(r["n"] <= 4 and (r["estimate"] != r["estimate"] or 0 <= r["estimate"] <= 1) for r in det.values())
    assert set(m["detection_minus_control"]) == {"LLM", "offline tokens", "offline label"} and m["llm_explanations"]["asked"] == 4
    export = json.loads((out / "features_neuronpedia.json").read_text())
    assert len(export["features"]) == 4 and {"activations", "pos_str", "explanations"} <= set(export["features"][0])
    for fig in ("loss_curve", "firing_frequency", "l0_hist", "variance_vs_k", "detection_scores"):
        assert (out / "figures" / f"{fig}.png").exists()
    # the second run reuses the cached SAE: same numbers, no training
    res2, _ = _run("01_sparse_autoencoders", "smoke", tmp_path / "again")
    assert res2["metrics"]["ce_sae"] == m["ce_sae"]
    assert res2["timings"]["train_or_load"] < res["timings"]["train_or_load"] + 5


def test_01_paper_profile_code_path_with_local_stand_ins(tmp_path, tiny_llama_dir):
    """A random SAE in SAELens layout on block 2 of the tiny Llama stands in for Gemma Scope on gemma-2-2b."""
    _random_sae_folder(tmp_path / "sae")
    res, _ = _run("01_sparse_autoencoders", "paper", tmp_path, model_name=str(tiny_llama_dir), sae_source=str(tmp_path / "sae"),
                  dtype="float32", device="cpu", corpus_nltk=12, corpus_chat=6, corpus_reasoning=6, max_length=32,
                  eval_texts=6, n_candidates=20, n_features_show=2, n_contexts=3,
                  explain={"latents": 2, "model": "qwen2.5-coder-0.5b-instruct", "base_url": "", "n_pos": 2, "n_neg": 2})
    assert res["profile"] == "paper" and res["provenance"]["sae"] == str(tmp_path / "sae")
    assert res["metrics"]["l0"] <= 8 and res["training"] == {}


def _random_sae_folder(path, d_in=64, d_sae=128, k=8, layer=2):
    from sae_lens import TopKSAE, TopKSAEConfig

    TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)).save_model(path)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"].update({"hook_name": f"blocks.{layer}.hook_resid_post", "model_name": "tiny"})
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def test_02_smoke(tmp_path):
    res, out = _run("02_reasoning_features", "smoke", tmp_path)
    m = res["metrics"]
    assert m["n_selected"] >= 1 and len(m["selected"]) == m["n_selected"]
    assert set(m["groups"]) <= {"uncertainty", "exploration", "reflection", "mixed"}
    assert m["sink_norm"] > 20 * m["median_norm"]  # the attention sink the outlier policy excludes
    kinds = {r["kind"] for r in m["causal"]}
    assert kinds == {"selected", "random", "non-reasoning"}
    assert {r["metric"] for r in m["causal"]} == {"d_word", "d_other", "specificity", "d_mass", "added_norm"}
    for r in m["causal"]:
        assert r["n"] < 2 or r["ci_low"] <= r["mean"] + 1e-9 <= r["ci_high"] + 2e-9  # one document has no interval
    assert {r["scoring"] for r in m["selection_comparison"]} == {"policy, window 2/3 (paper)", "policy, window 1/2 (code)",
                                                                  "sink kept, window 2/3"}
    conds = {r["condition"] for r in m["generation"]}
    assert {"no edit", "ban reasoning words", "ban random words"} <= conds and any(c.startswith("selected") for c in conds)
    banned = [g for g in res["generations"]["generation"] if g["condition"] == "ban reasoning words"]
    assert banned and all(g["reflection_rate"] == 0.0 for g in banned)  # no reasoning word survives the ban
    for fig in ("reasonscore_distribution", "per_word_heatmap", "activation_by_source", "causal_curves", "sal_levels"):
        assert (out / "figures" / f"{fig}.png").exists()
    sal = m["sal"]  # SAL's code path: the smoke SAE, next-token rules, Qwen-0.5B judging through llama.cpp
    assert 0 < sal["rules"] <= 20 and sal["unparsed"] + sal["errors"] <= sal["rules"]
    assert sal["unparsed"] < sal["rules"] and 0 <= sal["n_rules"] <= sal["rules"] and "jsd strict-noisy" in sal


def test_02_paper_profile_code_path_with_local_stand_ins(tmp_path, tiny_llama_dir):
    """A random SAE in SAELens layout stands in for andreuka18's SAE, the tiny Llama for R1-Distill-Llama-8B."""
    sae_dir = _random_sae_folder(tmp_path / "sae")
    res, _ = _run("02_reasoning_features", "paper", tmp_path, model_name=str(tiny_llama_dir), sae_source=str(sae_dir),
                  dtype="float32", device="cpu", n_traces=3, n_solutions=3, max_length=48, n_controls_per_feature=1,
                  n_eval_docs=3, eval_length=48, n_steer_features=1, gammas=[0.0, 1.0], n_gen_prompts=2,
                  n_gen_features=1, gen_max_new_tokens=8, n_boot=100, quantile=0.95, batch_size=4,
                  sal={"judge": "smollm2-135m-instruct", "judge_url": "", "layers": [2, 2], "sae_sources": [],
                       "token_offset": 1, "n_texts": 3, "max_rules": 10})
    assert res["profile"] == "paper" and res["parameters"]["n_traces"] == 3
    assert res["provenance"]["layer"] == 2 and res["metrics"]["n_selected"] >= 1
    assert res["parameters"]["sal"]["judge"] and res["metrics"]["sal"]["rules"] >= 1  # the paper profile runs SAL


def test_05_smoke_runs_one_point_of_the_example_sweep(tmp_path):
    res, out = _run("05_sweeps", "smoke", tmp_path, sweep_root=str(tmp_path / "sweeps"))
    m = res["metrics"]
    assert res["profile"] == "smoke" and m["n_points"] == 1 and m["n_ok"] == 1 and m["n_failed"] == 0
    assert m["ran"] == 1 and m["y"] == "probe.acc_pca2"
    (acc,) = m["y_by_point"].values()
    assert 0.5 < acc <= 1.0 and list(m["y_by_point"]) == ["pca_depth=0.25,n_per_set=8"]
    assert res["provenance"]["notebook"] == "00_inside_a_language_model"
    (pid,) = res["provenance"]["points"]
    assert (tmp_path / "sweeps" / "example_00_smoke" / pid / "results.json").exists()
    assert (tmp_path / "sweeps" / "example_00_smoke" / "sweep.csv").exists()
    assert (out / "figures" / "sweep.png").stat().st_size > 5000


def test_05_paper_profile_code_path_with_local_stand_in(tmp_path, tiny_nb):
    """The paper profile's Dask engine (a LocalCluster on 127.0.0.1, 2 workers) on a stand-in sweep: two points of
    the tiny test notebook (conftest ``tiny_nb``) instead of notebook 01's SAE width x k grid."""
    pytest.importorskip("distributed")
    import random

    import yaml

    sweep = tmp_path / "standin.yaml"
    sweep.write_text(yaml.safe_dump({"notebook": str(tiny_nb), "profile": "smoke", "grid": {"x": [1.0, 2.0]},
                                     "plot": {"x": "x", "y": "y", "kind": "point"}}))
    res, out = _run("05_sweeps", "paper", tmp_path, sweep_file=str(sweep), sweep_root=str(tmp_path / "sweeps"),
                    show_columns=[])
    m = res["metrics"]
    assert res["provenance"]["engine"] == "dask" and res["provenance"]["jobs"] == 2
    assert m["n_points"] == 2 and m["n_ok"] == 2 and m["ran"] == 2
    random.seed(0)
    noise = random.random()
    assert m["y_by_point"] == pytest.approx({"x=1.0": 3 + noise, "x=2.0": 6 + noise})  # y = x * n(3) + noise
    assert (out / "figures" / "sweep.png").exists()


def test_03_smoke(tmp_path):
    res, out = _run("03_steering_refinement", "smoke", tmp_path)
    m = res["metrics"]
    assert res["profile"] == "smoke" and m["layer"] == 15 and m["concepts"] == ["science"] and m["median_norm"] > 10
    assert [r["concept"] for r in m["concept_choice"]] == ["science"] and 0.5 < m["concept_choice"][0]["AUROC (held out)"] <= 1
    grid = {(r["method"], r["n_train"]) for r in m["grid_paired"]}
    assert grid == {(x, n) for x in ("caa", "probe", "sdcv", "sae_rsv") for n in (4, 8)}
    for r in m["grid_paired"]:
        assert r["low"] - 1e-9 <= r["effect"] <= r["high"] + 1e-9 and r["n_items"] == 4
        assert (r["method"] == "caa") == (r["minus_caa"] != r["minus_caa"])  # NaN only for CAA itself
    assert {r["method"] for r in m["grid_refs"]} == {"ceiling", "random"}
    gen = {(r["method"], r["sign"]) for r in m["generation"]}
    assert gen == {(x, s) for x in ("caa", "sdcv", "sae_rsv", "ceiling (all pairs)", "lora") for s in (-1, 1)}
    for r in m["generation"]:
        assert all(0 <= r[k] <= 1 for k in ("concept_score", "fluency", "relevance", "harmonic"))
    assert {r["method"] for r in m["generation_paired"]} >= {"caa", "sae_rsv", "lora"}
    assert all(0 < r["fraction"] <= 0.3 for r in m["generation_norm"])
    roles = {r["role"] for r in m["rsv_latents"]}
    assert roles <= {"kept", "removed", "added", "candidate (not relevant)"} and {"kept", "removed"} & roles
    assert m["rsv_alpha"]["science"] in ([1.0, 1.0, 0.0], [1.0, 1.0, 1.0]) and m["ab_by_method"] == []
    assert {r["block"] for r in m["layer_sweep"]} == {3, 15}
    for fig in ("layer_sweep", "auroc_vs_n", "dose_response", "fluency_cost", "effect_vs_n", "generation_contrast"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000
    assert (out / "test_generations.csv").exists()


def test_03_paper_profile_code_path_with_local_stand_ins(tmp_path, tiny_llama_dir):
    """The paper path on stand-ins: a CAA-format behaviour (A/B metric by method), a random SAELens-layout SAE for
    Gemma Scope, the tiny Llama for Gemma-2-9B-it, and the LLM relevance judge against a fake OpenAI-compatible
    server on 127.0.0.1 that answers yes / no / something unparseable."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Judge(BaseHTTPRequestHandler):
        n = 0

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            type(self).n += 1
            reply = ["yes", "no", "it depends"][type(self).n % 3]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                         "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": reply}}]}).encode())

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sae_dir = _random_sae_folder(tmp_path / "sae")
        res, _ = _run("03_steering_refinement", "paper", tmp_path, model_name=str(tiny_llama_dir), sae_source=str(sae_dir),
                      dtype="float32", device="cpu", candidates=["caa:sycophancy"], concepts=["caa:sycophancy"],
                      n_train=[4], seeds=[0], reference_n=4, n_pool=12, n_heldout=4, n_val=2, n_test=2, layers_sweep=[1],
                      teacher_forced={"tokens": 3, "grid_fraction": 0.15, "fluency_cost": 0.1, "fractions": [-0.15, 0.15, 0.3]},
                      generation={"cost": 0.3, "tokens": 4, "batch_size": 4, "ppl_max_ratio": 4.0},
                      method_configs={"probe": {"C": 1.0}, "sdcv": {"k": 4, "lam": 2.0}, "sae_rsv": {"support": 6, "n_neighbours": 2}},
                      rsv_alphas=[[1.0, 1.0, 1.0]], explain_docs=12, lora={"r": 4, "steps": 1, "lr": 0.001, "batch_size": 2},
                      ab_check={"enabled": True, "items": 4, "fractions": [-0.3, 0.3]}, n_boot=100,
                      relevance={"judge": "llm", "null_latents": 8, "quantile": 0.9, "llm_model": "judge",
                                 "llm_base_url": f"http://127.0.0.1:{srv.server_address[1]}/v1"})
    finally:
        srv.shutdown()
    m = res["metrics"]
    assert res["profile"] == "paper" and res["provenance"]["layer"] == 2
    assert {(r["method"], r["fraction"]) for r in m["ab_by_method"]} == {
        (x, s) for x in ("caa", "probe", "sdcv", "sdcv_probe", "sae_rsv") for s in (-0.3, 0.3)}
    assert all(0 <= r["p_match"] <= 1 for r in m["ab_by_method"])
    unparsed = [r for r in m["rsv_latents"] if r["unparsed"]]
    assert unparsed and all(r["role"] in ("removed", "candidate (not relevant)") for r in unparsed)
    assert Judge.n >= 3 and {r["method"] for r in m["generation"]} >= {"caa", "lora"}


def test_04_smoke(tmp_path):
    """The embedded SmolLM2 GGUF served by llama.cpp: both folds, all three proposers, every condition and decision."""
    res, out = _run("04_scoring_skills", "smoke", tmp_path)
    m, t = res["metrics"], res["tables"]
    assert res["profile"] == "smoke" and res["parameters"]["items"] == [5, 7]
    assert m["model"] == m["diagnoser"] == "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"  # the file, not the port
    conds = ["no rubric", "expert rubric", "initial skill", "optimized skill", "random-edit skill", "GEPA skill"]
    assert [r["condition"] for r in m["summary"]] == conds
    assert {(r["item"], r["condition"], r["decision"]) for r in t["per_item"]} == {
        (i, c, d) for i in (5, 7) for c in conds for d in ("cutpoints", "calibrated", "argmax", "expected")}
    for r in t["per_item"]:
        assert r["n"] == 8 and -1 <= r["qwk"] <= 1 and r["logp_gold"] <= 0
        assert r["qwk_ci_low"] <= r["qwk"] + 1e-9 <= r["qwk_ci_high"] + 2e-9
    assert set(res["optimisation"]) == {f"fold{f}/{p}" for f in (0, 1) for p in ("llm", "random", "gepa")}
    assert res["optimisation"]["fold0/llm"]["train_items"] == [5]
    assert [r["contrast"] for r in t["contrasts"]][0] == "optimized skill − initial skill"
    assert {r["proposer"] for r in t["gate_eval"]} == {"llm", "random", "gepa"}
    assert len(res["predictions"]["5"]) == 8 and (out / "skill.json").exists()
    for fig in ("gate_trace", "conditions_qwk", "paired_contrasts"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000


class _ScoringServer(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible endpoint for the three prompt kinds of notebook 04: score prompts get top-20
    log-probabilities peaking at a length-based score (so QWK is positive), except every 5th answer, whose top
    tokens hold no score digit (counted as labels outside the top-k); rubrics give one line per score point;
    the diagnosis proposes a generic rule, an item-specific rule and a malformed line."""

    n = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        logprobs = None
        if "Reply with the score digit only" in text:
            answer = re.search(r"Student answer:\n(.*)\n\nWhat score", text, re.S).group(1)
            lo, hi = map(int, re.search(r"What score \((\d+)-(\d+)\)", text).groups())
            digest = int(hashlib.sha256(answer.encode()).hexdigest(), 16)
            peak = min(hi, len(answer.split()) // 15)
            top = ([{"token": t, "logprob": -1.0 - k, "bytes": None} for k, t in enumerate(["I", "The", "It"])]
                   if digest % 5 == 0 else
                   [{"token": str(k), "logprob": -0.3 - 1.5 * abs(k - peak), "bytes": None} for k in range(lo, hi + 1)])
            reply = top[0]["token"]
            logprobs = {"content": [{"token": reply, "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top}]}
        elif "Write the rubric now" in text:
            lo, hi = map(int, re.search(r"\(scores (\d+) to (\d+)\)", text).groups())
            reply = "\n".join(f"Score {k}: an answer with {k} correct ideas." for k in range(hi, lo - 1, -1))
        else:
            reply = ("ADD: Reward answers that support each claim with evidence.\nADD: Mention the vinegar.\n"
                     "REVISE R2: Describe each score point from highest to lowest.\nThat is all.")
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply},
                  "logprobs": logprobs}
        payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(payload).encode())


def test_04_paper_profile_against_a_fake_openai_compatible_server(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _ScoringServer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        res, out = _run("04_scoring_skills", "paper", tmp_path, items=[1, 7], api_base_url=url, n_pool=8, n_gate=40,
                        n_cut=12, n_eval=20, n_boot=200,
                        optimizer={"iterations": 2, "n_candidates": 2, "patience": 1, "n_errors": 4, "max_edits": 3,
                                   "screen_size": 8, "min_gate": 40, "diagnosis_max_tokens": 80})
    finally:
        srv.shutdown()
        srv.server_close()
    m, t = res["metrics"], res["tables"]
    assert res["profile"] == "paper"
    assert m["model"] == f"openai:{url}:Qwen/Qwen2.5-7B-Instruct" == m["diagnoser"]
    assert res["provenance"]["llm_stats"]["labels_outside_topk"] > 0  # counted, never dropped
    cut = [r for r in t["per_item"] if r["decision"] == "cutpoints"]
    assert len(cut) == 12 and all(r["n"] == 20 for r in cut)
    assert max(r["qwk"] for r in cut if r["condition"] == "no rubric") > 0.2  # the length signal gets through
    statuses = {p["edit"]: p["status"] for h in res["optimisation"]["fold0/llm"]["history"][:-1] for p in h["proposals"]}
    assert statuses["ADD: Mention the vinegar."] == "rejected: item-specific"
    assert res["optimisation"]["fold0/llm"]["history"][0]["unparsed_lines"] == 1
    gepa = res["optimisation"]["fold0/gepa"]["history"]  # GEPA reflected on the same endpoint, within its budget
    assert 1 <= gepa[-1]["budget"]["proposals"] <= 4 and all(h["proposer"] == "gepa" for h in gepa[:-1])
