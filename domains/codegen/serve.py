"""``codegen serve``: a local model behind the OpenAI-compatible completions API, on loopback only.

Endpoints: ``POST /v1/completions`` (``prompt`` a string, ``n``, ``max_tokens``, ``temperature``,
``top_p``, ``stop`` a string or list, ``seed``), ``GET /v1/models``, ``GET /health``. Generation
goes through ``backends.LocalBackend.complete_with_info`` under a lock (one request at a time on the one
model), so a request answers exactly what the local backend gives for the same prompt and seed; each
choice's ``finish_reason`` is ``"length"`` when ``max_tokens`` ran out, else ``"stop"``, and ``usage`` counts
the model's tokens (the prompt after left-truncation to the context; the returned texts).
The server binds 127.0.0.1 only (it runs arbitrary-length generations for whoever connects).

Not covered: the chat API, streaming, batched prompts (``prompt`` as a list), authentication.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from adaptome.domains.codegen.backends import LocalBackend

MAX_N = 256
MAX_TOKENS = 4096


def _bad(msg: str) -> tuple[int, dict]:
    return 400, {"error": {"message": msg, "type": "invalid_request_error"}}


def handle_completion(backend: LocalBackend, lock: threading.Lock, body: dict, model_name: str) -> tuple[int, dict]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return _bad("'prompt' must be a string")
    try:
        n = int(body.get("n", 1))
        max_tokens = int(body.get("max_tokens", 16))
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
        seed = int(body.get("seed", 0))
    except (TypeError, ValueError) as e:
        return _bad(f"bad numeric field: {e}")
    if not (1 <= n <= MAX_N and 1 <= max_tokens <= MAX_TOKENS and 0 < top_p <= 1 and temperature >= 0):
        return _bad(f"need 1 <= n <= {MAX_N}, 1 <= max_tokens <= {MAX_TOKENS}, 0 < top_p <= 1, temperature >= 0")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    with lock:
        info = backend.complete_with_info(prompt, n, seed, temperature, top_p, max_tokens, stop)
    done = sum(c["completion_tokens"] for c in info["choices"])
    return 200, {"id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()),
                 "model": model_name,
                 "choices": [{"index": i, "text": c["text"], "logprobs": None, "finish_reason": c["finish_reason"]}
                             for i, c in enumerate(info["choices"])],
                 "usage": {"prompt_tokens": info["prompt_tokens"], "completion_tokens": done,
                           "total_tokens": info["prompt_tokens"] + done}}


def make_server(backend: LocalBackend, port: int = 8000, model_name: str | None = None) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1:``port`` (0 picks a free port); call ``serve_forever()``."""
    lock = threading.Lock()
    name = model_name or backend.name

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, doc: dict) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "adaptome"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):  # noqa: N802
            if self.path != "/v1/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, json.JSONDecodeError):
                self._send(*_bad("body is not JSON"))
                return
            if not isinstance(body, dict):
                self._send(*_bad("body must be a JSON object"))
                return
            self._send(*handle_completion(backend, lock, body, name))

        def log_message(self, fmt, *args):  # keep the terminal quiet; requests are not logged
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)
