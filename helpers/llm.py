"""LLM calls over any OpenAI-compatible HTTP server (vLLM, Ollama, llama.cpp server, OpenAI), cached on disk.

``OpenAIChat`` wraps the official ``openai`` client with a timeout, retries with exponential back-off (the
client's own), and a disk cache keyed by ``(base_url, model, messages, decoding parameters)``: re-running a
notebook, or resuming an interrupted job, costs nothing already paid. Failures are raised as ``LLMError`` with
what was tried; callers that score or label count them instead of dropping them.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models import cache_dir

__all__ = ["LLMError", "OpenAIChat"]


class LLMError(RuntimeError):
    """The endpoint did not give a usable answer (after retries)."""


@dataclass
class OpenAIChat:
    """Chat completions from an OpenAI-compatible endpoint, cached on disk."""

    model: str
    base_url: str | None = None  # None: the OpenAI API (OPENAI_BASE_URL / OPENAI_API_KEY from the environment)
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 3
    cache: bool = True
    cache_dir: Path = field(default_factory=lambda: cache_dir() / "llm")
    stats: dict[str, int] = field(default_factory=lambda: {"calls": 0, "cached": 0, "errors": 0})

    def _client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                      timeout=self.timeout, max_retries=self.max_retries)

    def _key(self, messages: list[dict], params: dict[str, Any]) -> Path:
        blob = json.dumps({"base_url": self.base_url, "model": self.model, "messages": messages, "params": params},
                          sort_keys=True)
        h = hashlib.sha256(blob.encode()).hexdigest()
        return self.cache_dir / h[:2] / f"{h}.json"

    def complete(self, messages: list[dict] | str, *, temperature: float = 0.0, max_tokens: int = 256,
                 **params: Any) -> str:
        """The assistant's reply text for ``messages`` (a string is one user turn)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        params = {"temperature": temperature, "max_tokens": max_tokens, **params}
        path = self._key(messages, params)
        if self.cache and path.exists():
            self.stats["cached"] += 1
            return json.loads(path.read_text())["content"]
        self.stats["calls"] += 1
        try:
            resp = self._client().chat.completions.create(model=self.model, messages=messages, **params)
            content = resp.choices[0].message.content
        except Exception as e:  # openai raises its own error types; malformed JSON surfaces as other errors
            self.stats["errors"] += 1
            raise LLMError(f"{self.base_url or 'OpenAI API'} model {self.model!r}: {type(e).__name__}: {str(e)[:300]}. "
                           f"Check the server is up and the model id is right.") from e
        if content is None:
            self.stats["errors"] += 1
            raise LLMError(f"{self.base_url}: the reply had no text content.")
        if self.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"messages": messages, "params": params, "content": content}))
            tmp.replace(path)
        return content
