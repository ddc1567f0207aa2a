"""Model backends for completions: a local transformers causal LM, or an OpenAI-compatible HTTP server.

Both answer ``complete(prompt, n, seed, temperature, top_p, max_tokens, stop) -> [text] * n``:
``n`` continuations of one prompt, each cut at the first stop token. ``temperature == 0`` means
greedy decoding. The local backend seeds torch with ``seed`` before sampling the ``n``
continuations as one batch (``num_return_sequences``), so a (prompt, seed) pair always gives the
same texts on one device; ``codegen serve`` applies the request's ``seed`` the same way, so the
HTTP backend against ``serve`` gives what the local backend gives.

``HttpBackend`` speaks the completions API (``POST {base_url}/v1/completions`` with ``model,
prompt, n, max_tokens, temperature, top_p, stop, seed``), as vLLM, TGI (OpenAI mode), llama.cpp's
server and ``codegen serve`` do; at most 4 stop sequences go to the server (the API's limit) and
all are applied again on the client.

Not covered: the chat-completions API, streaming, logprobs, retries beyond ``retries`` attempts
with a fixed back-off.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Protocol

from adaptome.core.errors import AdaptomeError
from adaptome.domains.codegen.problems import truncate


class BackendError(AdaptomeError, RuntimeError):
    """The model server answered with an error or could not be reached."""


class Backend(Protocol):
    name: str

    def complete(self, prompt: str, n: int, seed: int, temperature: float, top_p: float, max_tokens: int,
                 stop: list[str]) -> list[str]: ...


class _StopOnStrings:
    """Stops generation once every sequence's new text holds a stop string (per-sequence flags)."""

    def __init__(self, tok, prompt_len: int, stop: list[str]):
        self.tok, self.prompt_len, self.stop = tok, prompt_len, stop

    def __call__(self, input_ids, scores, **kw):
        import torch

        done = [any(s in self.tok.decode(row[self.prompt_len:], skip_special_tokens=True) for s in self.stop)
                for row in input_ids]  # input_ids: (B, T)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class LocalBackend:
    """A transformers causal LM in this process."""

    def __init__(self, model, tokenizer, name: str = "local", max_context: int | None = None,
                 threads: int | None = None):
        self.model, self.tok, self.name, self.threads = model, tokenizer, name, threads
        cfg_max = getattr(model.config, "max_position_embeddings", None)
        self.max_context = max_context or cfg_max or 4096

    @classmethod
    def load(cls, spec: str = "tiny", seed: int = 0, device: str = "cpu", threads: int | None = None) -> "LocalBackend":
        """Load ``spec``; the tiny model generates on one CPU thread (more only add contention at its size)."""
        from adaptome.domains.codegen.models import load_model

        model, tok = load_model(spec, seed=seed, device=device)
        return cls(model, tok, name=spec or "tiny", threads=threads or (1 if spec in ("", "tiny") else None))

    def complete(self, prompt: str, n: int, seed: int, temperature: float, top_p: float, max_tokens: int,
                 stop: list[str]) -> list[str]:
        return [c["text"] for c in self.complete_with_info(prompt, n, seed, temperature, top_p, max_tokens,
                                                           stop)["choices"]]

    def complete_with_info(self, prompt: str, n: int, seed: int, temperature: float, top_p: float,
                           max_tokens: int, stop: list[str]) -> dict:
        """``complete``'s texts with what an OpenAI-style client reads beside them: per choice the
        ``finish_reason`` (``"stop"``: a stop string or the end-of-sequence token ended it; ``"length"``:
        ``max_tokens`` new tokens without either) and ``completion_tokens`` (the tokens of the returned text),
        and the ``prompt_tokens`` the model saw (after left-truncation to the context)."""
        import torch
        from transformers import StoppingCriteriaList

        ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
        keep = max(1, self.max_context - max_tokens)
        ids = ids[:, -keep:].to(self.model.device)  # left-truncate: the end of the prompt (the header) matters
        greedy = temperature <= 0
        torch.manual_seed(seed)
        saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)  # restored below: other work in this process keeps its setting
        kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        stopping = StoppingCriteriaList([_StopOnStrings(self.tok, ids.shape[1], stop)]) if stop else None
        try:
            with torch.no_grad():
                out = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                    num_return_sequences=1 if greedy else n, pad_token_id=self.tok.pad_token_id,
                    eos_token_id=self.tok.eos_token_id, stopping_criteria=stopping, **kw)  # out: (n, T + new)
        finally:
            torch.set_num_threads(saved)
        choices = []
        for row in out:  # row: (T + new,)
            new = row[ids.shape[1]:].tolist()
            ended = self.tok.eos_token_id is not None and self.tok.eos_token_id in new
            if ended:
                new = new[:new.index(self.tok.eos_token_id)]
            raw = self.tok.decode(new, skip_special_tokens=True)
            text = truncate(raw, stop)
            # "stop": the end-of-sequence token, a stop string (truncate cut at it), or fewer than max_tokens
            why = "stop" if ended or text != raw or len(new) < max_tokens else "length"
            choices.append({"text": text, "finish_reason": why,
                            "completion_tokens": len(self.tok(text, add_special_tokens=False)["input_ids"])})
        # greedy: the n samples are one and the same
        return {"choices": choices * n if greedy else choices, "prompt_tokens": int(ids.shape[1])}


class HttpBackend:
    """An OpenAI-compatible completions endpoint."""

    def __init__(self, base_url: str, model: str = "default", api_key: str | None = None, timeout_s: float = 300.0,
                 retries: int = 3):
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.model, self.api_key, self.timeout_s, self.retries = model, api_key, timeout_s, retries
        self.name = f"http:{self.base_url}/{model}"

    def complete(self, prompt: str, n: int, seed: int, temperature: float, top_p: float, max_tokens: int,
                 stop: list[str]) -> list[str]:
        body = {"model": self.model, "prompt": prompt, "n": n, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "stop": list(stop)[:4], "seed": seed}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/v1/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        last = None
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    doc = json.loads(resp.read())
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if e.code < 500:
                    raise BackendError(f"{self.base_url}: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(e)
            time.sleep(0.5 * (attempt + 1))
        else:
            raise BackendError(f"{self.base_url}: no answer after {self.retries} attempts ({last})")
        choices = sorted(doc.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise BackendError(f"{self.base_url}: asked for n={n} completions, got {len(choices)}")
        return [truncate(c["text"], stop) for c in choices]


def make_backend(model: str = "tiny", url: str | None = None, api_model: str = "default", seed: int = 0,
                 device: str = "cpu", api_key: str | None = None) -> Backend:
    """``url`` given: the HTTP backend; else a local model (``tiny``, a folder, or a hub id)."""
    if url:
        return HttpBackend(url, api_model, api_key=api_key)
    return LocalBackend.load(model, seed=seed, device=device)
