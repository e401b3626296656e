"""helpers.core.llm against a fake OpenAI-compatible server on 127.0.0.1: success, cache, 5xx, timeout, malformed JSON."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers.core import llm


class _Fake(BaseHTTPRequestHandler):
    mode = "ok"
    hits = 0
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_POST(self):
        cls = type(self)
        with cls.lock:
            cls.hits += 1
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            self._answer()
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _answer(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        if self.mode == "slow":
            time.sleep(2.0)
        if self.mode == "busy":  # slow enough that concurrent requests overlap
            time.sleep(0.3)
        if self.mode == "flaky" and "fail" in body["messages"][-1]["content"]:
            self.send_response(503)
            self.end_headers()
            return
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
    _Fake.mode, _Fake.hits, _Fake.in_flight, _Fake.max_in_flight = "ok", 0, 0, 0
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


def test_feature_explanation_uses_the_endpoint_and_counts_unusable_answers(server, tmp_path):
    from helpers.core import explanations as E

    class Tok:  # decode one token id to its text
        def decode(self, ids):
            return {0: "The", 1: " cat", 2: " sat"}[ids[0]]

    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=0)
    ctx = [{"token_ids": [0, 1, 2], "tokens": ["The", "Ġcat", "Ġsat"], "acts": [0, 3.0, 0.1], "peak": 1, "max_act": 3.0}]
    out, counts = E.llm_explanations(chat, {7: ctx, 8: []}, Tok())
    assert out[7] == "echo: Texts:"  # the fake server echoes the prompt; its first line is kept
    assert "1. The<<cat>> sat" in E.explainer_prompt(ctx, Tok())  # tokens at >= half the peak are marked
    assert counts == {"asked": 1, "unusable": 0, "no_contexts": 1}
    assert E._clean_explanation("Explanation: the word 'cat'.\nmore") == "the word 'cat'"
    assert E._clean_explanation("  ...  ") == "" and E._clean_explanation(None) == ""
    # the few-shot format: the phrase after the last [EXPLANATION]:; generic answers name nothing and are unusable
    assert E._clean_explanation("The texts mention pets.\n[EXPLANATION]: cats and dogs\nextra") == "cats and dogs"
    assert E._clean_explanation("[EXPLANATION]: A word") == "" and E._clean_explanation("tokens.") == ""


def test_complete_many_runs_concurrently_keeps_order_and_caches(server, tmp_path):
    _Fake.mode = "busy"
    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=0, concurrency=4)
    prompts = [f"question {i}" for i in range(8)]
    out = chat.complete_many(prompts)
    assert out == [f"echo: question {i}" for i in range(8)]
    assert _Fake.max_in_flight >= 2 and _Fake.max_in_flight <= 4  # overlapping requests, never more than 4
    assert chat.stats == {"calls": 8, "cached": 0, "errors": 0}
    assert chat.complete_many(prompts) == out and chat.stats["cached"] == 8 and _Fake.hits == 8
    assert chat.model_id == f"openai:{server}:fake"


def test_complete_many_returns_errors_in_place_when_asked(server, tmp_path):
    _Fake.mode = "flaky"
    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=1, concurrency=2)
    out = chat.complete_many(["ok 1", "fail 2", "ok 3"], return_errors=True)
    assert out[0] == "echo: ok 1" and out[2] == "echo: ok 3"
    assert isinstance(out[1], llm.LLMError) and "InternalServerError" in str(out[1])
    assert chat.stats["errors"] == 1
    with pytest.raises(llm.LLMError):
        chat.complete_many(["fail again"])
    with pytest.raises(ValueError, match="concurrency"):
        llm.OpenAIChat(model="fake", base_url=server, concurrency=0)


def test_scoring_by_generation_over_http_counts_unparsed(server, tmp_path):
    """The HTTP backend scores by parsing generated text: the fake server echoes, so nothing parses."""
    from helpers.studies import scoring as S

    chat = llm.OpenAIChat(model="fake", base_url=server, cache_dir=tmp_path, max_retries=0)
    info = S.load_item(7).info
    res = S.score_responses(chat, info, "rubric", ["Rose is kind.", "Rose works hard."], method="generate")
    assert res.parsed.tolist() == [False, False] and res.raw[0].startswith("echo: You are an experienced teacher")
    assert S.evaluate([1, 2], res.pred, 0, 2, n_boot=100)["coverage"] == 0.0
