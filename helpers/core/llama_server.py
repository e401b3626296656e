"""llama.cpp's OpenAI-compatible server for the GGUF files the collection ships, started and stopped from Python.

``LlamaServer`` runs the server of the prebuilt ``xllamacpp`` wheel (llama.cpp compiled for CPU, no toolchain
needed) in a **child process** on a free port of 127.0.0.1::

    with LlamaServer("qwen2.5-coder-0.5b-instruct", threads=2) as srv:
        chat = OpenAIChat(model=srv.model_alias, base_url=srv.base_url)
        chat.complete("Say hi")

* the model is an embedded name (:mod:`helpers.core.models`, sha256-verified) or a path to a ``.gguf`` file;
* ``__enter__`` waits for ``/health`` to answer ``ok``; if the child dies or does not become healthy in
  ``startup_timeout`` seconds, :class:`LlamaServerError` names the model file and shows the end of the log;
* no orphan processes: ``__exit__`` terminates (then kills) the child, ``atexit`` does the same if the caller
  never exits the block (a notebook kernel), and the child exits by itself when its parent dies (Linux
  ``PR_SET_PDEATHSIG`` plus a watchdog thread on the parent pid);
* prompt prefixes are cached by the server (``cache_prompt``), so many requests sharing a long rubric prefix pay
  for it once per slot.

Why a child process and not ``xllamacpp.Server`` in the caller: the server's threads cannot be stopped from Python
(the object has no shutdown), and a crash in native code would take the notebook kernel with it.
"""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .models import EMBEDDED, gguf_path

__all__ = ["LlamaServer", "LlamaServerError", "free_port", "shared_server", "stop_shared_servers"]


class LlamaServerError(RuntimeError):
    """The llama.cpp server could not be started (the message names the model file and quotes its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _resolve_model(model: str | Path) -> Path:
    p = Path(model)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise LlamaServerError(f"GGUF file {p} does not exist; pass an existing .gguf path or an embedded "
                                   f"model name (see helpers.core.models.EMBEDDED).")
        return p
    if str(model) not in EMBEDDED:
        raise LlamaServerError(f"model {model!r} is neither a .gguf path nor an embedded model; embedded: "
                               f"{sorted(EMBEDDED)}.")
    return gguf_path(str(model))


class LlamaServer:
    """A llama.cpp server for one GGUF model in a child process (context manager; also ``start()``/``stop()``).

    ``threads``: CPU threads for generation and prompt processing (default: all cores this process may use).
    ``parallel``: server slots, i.e. requests decoded together (continuous batching); give the client as much
    concurrency. ``n_ctx``: context per slot, in tokens. ``log_path``: where the server's log goes (default: a
    temporary file, kept after a failure so the error can point at it).
    """

    def __init__(self, model: str | Path, *, threads: int | None = None, parallel: int = 1, n_ctx: int = 4096,
                 startup_timeout: float = 120.0, log_path: str | Path | None = None, alias: str | None = None):
        if not isinstance(parallel, int) or parallel < 1:
            raise ValueError(f"parallel must be an integer >= 1, got {parallel!r}.")
        if not isinstance(n_ctx, int) or n_ctx < 256:
            raise ValueError(f"n_ctx must be an integer >= 256 tokens, got {n_ctx!r}.")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}.")
        self.model = str(model)
        self.threads = threads or len(os.sched_getaffinity(0))
        self.parallel, self.n_ctx, self.startup_timeout = parallel, n_ctx, float(startup_timeout)
        self.model_alias = alias or (Path(str(model)).stem if str(model).endswith(".gguf") else str(model))
        self.log_path = Path(log_path) if log_path else None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.gguf: Path | None = None

    # ------------------------------------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LlamaServerError("the server is not started; use `with LlamaServer(...) as srv:` or srv.start().")
        return f"http://127.0.0.1:{self.port}/v1"

    def _log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def healthy(self) -> bool:
        if self.port is None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self) -> LlamaServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        try:
            import xllamacpp  # noqa: F401  (fail here, in the parent, with an install hint)
        except ImportError as e:
            raise LlamaServerError("the llama.cpp server needs the `xllamacpp` wheel: pip install "
                                   "'xllamacpp==2026.10.11549' (a main dependency; `make setup` installs it).") from e
        self.gguf = _resolve_model(self.model)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"llama-server-{self.model_alias}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [sys.executable, "-m", "helpers.core.llama_server", "--model", str(self.gguf), "--port", str(self.port),
               "--threads", str(self.threads), "--parallel", str(self.parallel), "--n-ctx", str(self.n_ctx),
               "--alias", self.model_alias, "--parent-pid", str(os.getpid())]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        _LIVE.add(self)
        t0 = time.time()
        while time.time() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                _LIVE.discard(self)
                raise LlamaServerError(f"llama.cpp server for {self.gguf} exited with code {code} while starting. "
                                       f"Log {self.log_path}:\n{self._log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.25)
        self.stop()
        raise LlamaServerError(f"llama.cpp server for {self.gguf} was not healthy after {self.startup_timeout:.0f} s "
                               f"(raise startup_timeout on a slow machine). Log {self.log_path}:\n{self._log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.base_url}" if self.proc is not None else "stopped"
        return f"LlamaServer({self.model!r}, threads={self.threads}, parallel={self.parallel}, {state})"


_LIVE: set[LlamaServer] = set()
_SHARED: dict[tuple, LlamaServer] = {}


def shared_server(model: str | Path, **kw) -> LlamaServer:
    """One running server per (model, settings) for the whole process (a notebook starts it once and every
    call reuses it); stopped at interpreter exit or by :func:`stop_shared_servers`."""
    key = (str(model), tuple(sorted(kw.items())))
    srv = _SHARED.get(key)
    if srv is None or srv.proc is None or srv.proc.poll() is not None:
        srv = _SHARED[key] = LlamaServer(model, **kw).start()
    return srv


def stop_shared_servers() -> None:
    for srv in list(_SHARED.values()):
        srv.stop()
    _SHARED.clear()


@atexit.register
def _stop_all() -> None:
    for srv in list(_LIVE):
        srv.stop()


# ------------------------------------------------------------------------------------------------ child process
def _die_with_parent(parent_pid: int) -> None:
    try:  # Linux: the kernel sends SIGTERM when the parent thread exits
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass

    def watch():  # everywhere: poll the parent (re-parenting changes getppid)
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a GGUF file with llama.cpp's OpenAI-compatible server "
                                             "(xllamacpp); used by helpers.core.llama_server.LlamaServer.")
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--alias", default=None)
    ap.add_argument("--parent-pid", type=int, default=None)
    a = ap.parse_args(argv)
    if a.parent_pid:
        _die_with_parent(a.parent_pid)
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = a.model
    p.hostnames = ["127.0.0.1"]
    p.port = a.port
    p.n_parallel = a.parallel
    p.n_ctx = a.n_ctx * a.parallel  # llama.cpp splits n_ctx across the slots
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.n_gpu_layers = 0
    p.cache_prompt = True
    if a.alias:
        p.model_alias = {a.alias}
    server = xllamacpp.Server(p)  # serves on its own threads while the object lives (kept below)
    print(f"serving {a.model} on http://127.0.0.1:{a.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while server is not None:
        time.sleep(3600)


if __name__ == "__main__":
    main()
