"""Shared fixtures: the embedded model (loaded once per session) and a tiny random Llama stand-in."""
from __future__ import annotations

import os
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: Thread settings a test may change in this process (Dask's nanny writes OMP_NUM_THREADS=1 & co. into the parent's
#: os.environ); left changed, the nbval kernels started later in the session would run on one core.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


@pytest.fixture(autouse=True)
def _thread_env_restored():
    before = {k: os.environ.get(k) for k in _THREAD_VARS}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _results_cache_off():
    """Unit tests compute; only notebook runs (their own kernels) use the results cache. A test that calls
    notebook.start() in this process would otherwise leave it on for every later test."""
    from helpers.core import memo

    memo.enable(False)
    yield
    memo.enable(False)


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct in float32: (model, tokenizer)."""
    from helpers.core.models import load_model

    return load_model("smollm2-135m-instruct", dtype="float32")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol):
    """A random-init 2-block Llama with SmolLM2's tokenizer, saved as a local checkpoint: the small local
    stand-in for paper-profile models (same code path as a hub checkpoint)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = smol
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny(tiny_llama_dir):
    from helpers.core.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32")


# --- sweeps ---------------------------------------------------------------------------------------------
TINY_PARAMS = '''x = 1.0
n = 2
fail = False
write = True
sleep = 0.0
words = ["a"]
profile = "default"
output_dir = ""
seed = 0
'''
TINY_BODY = '''import json, os, pathlib, random, time
time.sleep(sleep)
if fail:
    raise ValueError(f"point asked to fail at x={x}")
random.seed(seed)
metrics = {"y": x * n + random.random(), "x2": x ** 2, "k": n, "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
           "nested": {"n_words": len(words)}, "records": [{"word": w, "score": x * i} for i, w in enumerate(words)]}
if write:
    out = pathlib.Path(output_dir or ".")
    (out / "results.json").write_text(json.dumps({"notebook": "tiny_sweep", "profile": profile, "metrics": metrics,
                                                  "timings": {"total": sleep}, "pid": os.getpid()}))
'''


@pytest.fixture
def tiny_nb(tmp_path):
    """A test-only notebook for sweeps (helpers.harness.sweep): ``y = x * n + random()``, optional failure / sleep /
    no results.json, with a ``smoke`` profile (n: 3) in its own params/ folder. A point costs only papermill +
    kernel start."""
    import nbformat

    d = tmp_path / "nbs"
    (d / "params" / "tiny_sweep").mkdir(parents=True)
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells = [nbformat.v4.new_code_cell(TINY_PARAMS, metadata={"tags": ["parameters"]}),
                  nbformat.v4.new_code_cell(TINY_BODY)]
    nbformat.write(book, d / "tiny_sweep.ipynb")
    (d / "params" / "tiny_sweep" / "smoke.yaml").write_text("n: 3\n")
    return d / "tiny_sweep.ipynb"


# --- claims checked after nbval --------------------------------------------------------------------------
NBVAL_NOTEBOOKS = pytest.StashKey[set]()
SESSION_START = time.time()


def pytest_collection_modifyitems(session, config, items):
    """Tests marked ``after_nbval`` (tests/notebooks/test_results.py) run last, after nbval has re-executed the
    committed notebooks (which rewrites outputs/<nb>/results.json); they learn which notebooks nbval ran."""
    ran = {item.path.stem for item in items if item.path.suffix == ".ipynb"}
    config.stash[NBVAL_NOTEBOOKS] = ran
    late = [i for i in items if i.get_closest_marker("after_nbval")]
    items[:] = [i for i in items if not i.get_closest_marker("after_nbval")] + late


@pytest.fixture
def nbval_notebooks(request) -> set:
    """Stems of the notebooks nbval executes in this pytest session (empty when nbval is not part of it)."""
    return request.config.stash.get(NBVAL_NOTEBOOKS, set())
