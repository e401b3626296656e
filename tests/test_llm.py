"""helpers.llm against a fake OpenAI-compatible server on 127.0.0.1: success, cache, 5xx, timeout, malformed JSON."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import llm


class _Fake(BaseHTTPRequestHandler):
    mode = "ok"
    hits = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        type(self).hits += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        if self.mode == "slow":
            time.sleep(2.0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if self.mode == "malformed":
            self.wfile.write(b'{"choices": [ {"message": ')
            return
        text = f"echo: {body['messages'][-1]['content'][:40]}"
        self.wfile.write(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": text}}]}).encode())


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    _Fake.mode, _Fake.hits = "ok", 0
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_success_and_disk_cache(server, tmp_path):
    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=0)
    assert chat.complete("What does it detect?") == "echo: What does it detect?"
    assert chat.complete("What does it detect?") == "echo: What does it detect?"
    assert _Fake.hits == 1 and chat.stats == {"calls": 1, "cached": 1, "errors": 0}
    other = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=0)
    other.complete("What does it detect?", temperature=0.7)  # other decoding params: a new call
    assert _Fake.hits == 2


def test_server_error_is_retried_then_reported(server, tmp_path):
    _Fake.mode = "500"
    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=2)
    with pytest.raises(llm.LLMError, match="InternalServerError"):
        chat.complete("hi")
    assert _Fake.hits == 3 and chat.stats["errors"] == 1
    assert not any(tmp_path.rglob("*.json"))  # failures are not cached


def test_timeout_and_malformed_json(server, tmp_path):
    _Fake.mode = "slow"
    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, timeout=0.5, max_retries=0)
    with pytest.raises(llm.LLMError, match="Timeout"):
        chat.complete("hi")
    _Fake.mode = "malformed"
    with pytest.raises(llm.LLMError):
        chat.complete("hello")
    assert chat.stats["errors"] == 2


def test_feature_explanation_uses_the_endpoint(server, tmp_path):
    from helpers import features as F

    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=0)
    ctx = [{"tokens": ["The", "Ġcat", "Ġsat"], "acts": [0, 3.0, 0.1], "peak": 1, "max_act": 3.0}]
    out = F.llm_explanation(ctx, [" dog"], chat)
    assert out.startswith("echo: Here are text snippets")
