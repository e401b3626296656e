"""llama.cpp's server (xllamacpp) behind helpers.core.llama_server: real starts on the embedded GGUF files, clear
errors, no orphan processes, and the OpenAI client's label likelihoods agreeing with transformers on the same
weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.core.llama_server import LlamaServer, LlamaServerError, shared_server, stop_shared_servers
from helpers.core.llm import LocalChat, OpenAIChat, make_backend

MODEL = "smollm2-135m-instruct"  # the smallest shipped GGUF: starts in ~1 s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def server():
    with LlamaServer(MODEL, threads=2) as srv:
        yield srv


def test_server_answers_chat_and_stops_without_orphans(tmp_path):
    with LlamaServer(MODEL, threads=1, log_path=tmp_path / "server.log") as srv:
        assert srv.healthy() and srv.base_url.startswith("http://127.0.0.1:")
        pid = srv.proc.pid
        chat = OpenAIChat(model=srv.model_alias, base_url=srv.base_url, cache=False)
        reply = chat.complete("Name a colour.", max_tokens=8)
        assert isinstance(reply, str) and reply.strip()
    t0 = time.time()
    while _alive(pid) and time.time() - t0 < 5:
        time.sleep(0.1)
    assert not _alive(pid), "the server process outlived its context manager"
    assert "listening" in (tmp_path / "server.log").read_text()


def test_server_dies_with_a_killed_parent(tmp_path):
    """A notebook kernel killed with SIGKILL runs no atexit handler: the child must still go."""
    pidfile = tmp_path / "pid"
    code = textwrap.dedent(f"""
        import time
        from helpers.core.llama_server import LlamaServer
        srv = LlamaServer({MODEL!r}, threads=1).start()
        open({str(pidfile)!r}, "w").write(str(srv.proc.pid))
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    try:
        t0 = time.time()
        while not pidfile.exists() and time.time() - t0 < 60:
            time.sleep(0.2)
        assert pidfile.exists(), "the parent never started its server"
        child = int(pidfile.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        t0 = time.time()
        while _alive(child) and time.time() - t0 < 10:
            time.sleep(0.2)
        assert not _alive(child), "orphaned llama.cpp server survived its parent"
    finally:
        parent.kill()


def test_bad_model_file_names_the_file_and_quotes_the_log(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(2048))
    with pytest.raises(LlamaServerError, match="broken.gguf") as e:
        LlamaServer(bad, threads=1, startup_timeout=60).start()
    assert "Log " in str(e.value)
    with pytest.raises(LlamaServerError, match="does not exist"):
        LlamaServer(tmp_path / "missing.gguf").start()
    with pytest.raises(LlamaServerError, match="embedded"):
        LlamaServer("no-such-model").start()


@pytest.mark.parametrize("kw, msg", [({"parallel": 0}, "parallel"), ({"n_ctx": 10}, "n_ctx"),
                                     ({"threads": 0}, "threads"), ({"parallel": 1.5}, "parallel")])
def test_settings_are_checked_before_starting(kw, msg):
    with pytest.raises(ValueError, match=msg):
        LlamaServer(MODEL, **kw)


def test_base_url_before_start_is_a_clear_error():
    with pytest.raises(LlamaServerError, match="not started"):
        _ = LlamaServer(MODEL).base_url


def test_label_distribution_matches_transformers_on_the_same_weights(server, smol):
    """The same GGUF weights: llama.cpp (quantised matmuls) vs transformers (dequantised fp32). Measured max
    difference 0.016 on Qwen-0.5B; the tolerance is 0.05."""
    chat = OpenAIChat(model=server.model_alias, base_url=server.base_url, cache=False)
    local = LocalChat(smol, cache=False)
    prefix = "Rate the answer from 0 to 3. Question: why is the sky blue?\nAnswer: "
    sufs = [s + "\nScore:" for s in ("Rayleigh scattering of short wavelengths.", "no idea", "because of the sea")]
    p1, m1 = chat.label_distribution(prefix, sufs, list("0123"))
    p2, m2 = local.label_distribution(prefix, sufs, list("0123"))
    assert p1.shape == (3, 4) and np.allclose(p1.sum(1), 1)
    assert np.abs(p1 - p2).max() < 0.05
    assert np.abs(m1 - m2).max() < 0.05
    assert chat.stats["labels_outside_topk"] == 0


def test_label_distribution_is_cached_and_checks_its_labels(server, tmp_path):
    chat = OpenAIChat(model=server.model_alias, base_url=server.base_url, cache_dir=tmp_path)
    a, _ = chat.label_distribution("Pick a digit: ", ["now"], ["1", "2"])
    b, _ = chat.label_distribution("Pick a digit: ", ["now"], ["1", "2"])
    assert np.array_equal(a, b) and chat.stats["calls"] == 1 and chat.stats["cached"] == 1
    with pytest.raises(ValueError, match="distinct"):
        chat.label_distribution("x", ["y"], ["1", "1"])
    with pytest.raises(ValueError, match="top_logprobs"):
        chat.label_distribution("x", ["y"], ["1"], top_logprobs=50)


def test_make_backend_serves_an_embedded_model_through_one_shared_server():
    try:
        a = make_backend(MODEL, engine="llama.cpp", concurrency=1, threads=1, cache=False)
        b = make_backend(MODEL, engine="llama.cpp", concurrency=1, threads=1, cache=False)
        assert a.base_url == b.base_url and a.cache_key_url == f"llama.cpp:{Path(shared_server(MODEL, threads=1, parallel=1).gguf).name}"
        assert a.complete("Say yes.", max_tokens=4)
    finally:
        stop_shared_servers()
    with pytest.raises(ValueError, match="engine"):
        make_backend(MODEL, engine="vllm")
