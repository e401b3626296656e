"""The results cache: a hit only for the same function, arguments, code and machine; never a change of RNG state."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers.core import memo


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_CACHE", str(tmp_path))
    monkeypatch.delenv("XAI_RESULT_CACHE", raising=False)
    was = memo.enabled()
    memo.enable(True)
    yield tmp_path
    memo.enable(was)


def _counted():
    calls = []

    @memo.cached("test.fn", ignore=("progress",))
    def fn(x, scale=1.0, *, progress=False, extra=None):
        calls.append(1)
        return {"y": x * scale, "noise": torch.rand(1).item()}

    return fn, calls


def test_off_by_default_outside_notebooks(monkeypatch):
    monkeypatch.delenv("XAI_RESULT_CACHE", raising=False)
    was = memo.enabled()
    memo.enable(False)
    try:
        fn, calls = _counted()
        fn(torch.ones(3))
        fn(torch.ones(3))
        assert len(calls) == 2
    finally:
        memo.enable(was)


def test_second_call_is_read_back_and_equal(cache_on):
    fn, calls = _counted()
    a = fn(torch.arange(4.0), 2.0)
    b = fn(torch.arange(4.0), scale=2.0, progress=True)  # progress is ignored; defaults bound either way
    assert len(calls) == 1 and torch.equal(a["y"], b["y"]) and a["noise"] == b["noise"]
    assert list((cache_on / "results" / "test.fn").glob("*.pkl"))


def test_any_change_of_an_argument_recomputes(cache_on):
    fn, calls = _counted()
    x = torch.arange(4.0)
    fn(x)
    y = x.clone()
    y[2] = torch.nextafter(y[2], torch.tensor(10.0))  # one ulp
    fn(y)
    fn(x, extra={"a": [1, 2]})
    fn(x, extra={"a": [1, 3]})
    fn(x.double())
    assert len(calls) == 5


def test_a_module_is_keyed_by_its_weights_and_hooks(cache_on):
    calls = []

    @memo.cached("test.module")
    def run(model, x):
        calls.append(1)
        return model(x)

    m = torch.nn.Linear(3, 2)
    x = torch.ones(1, 3)
    run(m, x)
    run(m, x)  # hit
    assert len(calls) == 1
    with torch.no_grad():
        m.weight[0, 0] += 1e-3
    run(m, x)  # new weights
    h = m.register_forward_hook(lambda *a: None)
    run(m, x)  # a hook attached
    h.remove()
    run(m, x)  # hit again
    assert len(calls) == 3


def test_the_machine_is_part_of_the_key(cache_on, monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)  # start from neither (make test-other-cpu sets both)
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    fn, calls = _counted()
    fn(torch.ones(2))
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    fn(torch.ones(2))
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    fn(torch.ones(2))
    assert len(calls) == 3


def test_the_code_in_the_key_is_what_the_function_can_run(monkeypatch):
    """core + registry for every function, plus the function's own study package: an edit of study 3 (scoring)
    leaves study 2's entries valid, an edit of core or of a registry data file invalidates all of them."""
    sources = {"core": "c1", "registry": "r1", "studies": "s1", "scoring": "x1", "steering_refinement": "y1"}
    monkeypatch.setattr(memo, "tree_hash", lambda root: sources[root.rstrip("/").rsplit("/", 1)[-1]])
    study2 = "helpers.studies.steering_refinement.experiment"
    before = {m: memo.key_of("f", {"a": 1}, m) for m in (study2, "helpers.core.steering", None)}
    sources["scoring"] = "x2"  # another study edited
    assert memo.key_of("f", {"a": 1}, study2) == before[study2]
    assert memo.key_of("f", {"a": 1}, "helpers.core.steering") == before["helpers.core.steering"]
    sources["steering_refinement"] = "y2"  # its own study edited
    assert memo.key_of("f", {"a": 1}, study2) != before[study2]
    for part in ("core", "registry"):
        sources[part] += "'"
        assert memo.key_of("f", {"a": 1}, "helpers.core.steering") != before["helpers.core.steering"]
        assert memo.key_of("f", {"a": 1}, None) != before[None]  # unknown module: everything counts
        before = {m: memo.key_of("f", {"a": 1}, m) for m in (study2, "helpers.core.steering", None)}
    sources["studies"] = "s2"
    assert memo.key_of("f", {"a": 1}, None) != before[None]


def test_an_argument_without_a_key_runs_uncached(cache_on):
    fn, calls = _counted()
    before = memo.stats().get("uncached", 0)
    fn(torch.ones(2), extra=lambda v: v)
    fn(torch.ones(2), extra=lambda v: v)
    assert len(calls) == 2 and memo.stats()["uncached"] == before + 2
    with pytest.raises(memo.Unhashable, match="function"):
        memo.key_of("x", {"f": lambda v: v})


def _draws_after(call=None):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    if call:
        call()
    return torch.rand(1).item(), np.random.rand(), random.random()


def test_rng_state_is_the_same_after_a_hit_and_after_a_miss(cache_on):
    fn, calls = _counted()  # fn draws torch.rand inside
    untouched = _draws_after()
    assert _draws_after(lambda: fn(torch.ones(2))) == untouched  # miss
    assert _draws_after(lambda: fn(torch.ones(2))) == untouched  # hit
    assert len(calls) == 1


def test_a_torn_entry_is_recomputed(cache_on):
    fn, calls = _counted()
    fn(torch.ones(2))
    for p in (cache_on / "results" / "test.fn").glob("*.pkl"):
        p.write_bytes(b"torn")
    fn(torch.ones(2))
    assert len(calls) == 2


def test_environment_switch_off_wins(monkeypatch):
    monkeypatch.setenv("XAI_RESULT_CACHE", "0")
    was = memo.enabled()
    memo.enable(True)
    try:
        assert not memo.enabled()
    finally:
        memo.enable(was)


def test_cached_generation_equals_a_fresh_one(cache_on, tiny_llama_dir):
    from helpers.core import steering
    from helpers.core.models import load_model

    model, tok = load_model(str(tiny_llama_dir), dtype="float32")
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=5, layer=1, vector=v, scale=2.0, batch_size=2)
    fresh = steering.generate.uncached(model, tok, ["Hi there", "Tell me"], **kw)
    first = steering.generate(model, tok, ["Hi there", "Tell me"], **kw)
    again = steering.generate(model, tok, ["Hi there", "Tell me"], **kw)
    assert fresh == first == again
    assert len(list((cache_on / "results" / "steering.generate").glob("*.pkl"))) == 1


def test_cached_captures_equal_fresh_ones_and_touch_no_rng(cache_on, tiny_llama_dir):
    """Study 1's corpus capture (sae.encode_texts) and study 2's concept activations are read back from the cache
    on a second run: equal to a fresh computation, and the global RNG is where it was (so a warm and a cold run
    draw the same random numbers after them)."""
    from helpers.core import activations as A
    from helpers.core import sae as S
    from helpers.core.models import load_model
    from helpers.studies.steering_refinement import concepts as C

    model, tok = load_model(str(tiny_llama_dir), dtype="float32")
    texts = ["The cat sat on the mat.", "A short one", "Wait, let me think about this again."]
    fresh = A.capture(model, tok, texts, [1], max_length=32, batch_size=2, progress=False)
    state = torch.get_rng_state()
    first = S._capture_cached(model, tok, texts, [1], max_length=32, batch_size=2, progress=False)
    again = S._capture_cached(model, tok, texts, [1], max_length=32, batch_size=2, progress=True)  # progress: not in the key
    assert torch.equal(torch.get_rng_state(), state)
    for got in (first, again):
        assert all(torch.equal(a, b) for a, b in zip(fresh.acts[1], got.acts[1])) and got.tokens == fresh.tokens
    c_fresh = C.concept_activations.uncached(model, tok, texts, [1, 2], "mean")
    c_first, c_again = (C.concept_activations(model, tok, texts, [1, 2], "mean") for _ in range(2))
    for got in (c_first, c_again):
        assert all(torch.equal(a, b) for l in (1, 2) for a, b in zip(c_fresh[l], got[l]))
    assert memo.stats()["hit"] >= 2
    assert {p.name for p in (cache_on / "results").iterdir()} >= {"sae.encode_texts.capture",
                                                                   "steering_refinement.concept_activations"}


def test_a_model_loaded_twice_has_the_same_key():
    """The key must survive a new process: nothing volatile (such as the load time in the provenance) enters it.
    (Two fresh loads: the session's shared model may carry other tests' tokenizer settings.)"""
    from helpers.core.models import load_model

    model, tok = load_model("smollm2-135m-instruct", dtype="float32")
    again, tok2 = load_model("smollm2-135m-instruct", dtype="float32")
    assert again is not model
    again.xai_provenance["load_seconds"] = model.xai_provenance["load_seconds"] + 1.0  # as in a new process
    assert memo.key_of("f", {"m": model, "t": tok}) == memo.key_of("f", {"m": again, "t": tok2})
