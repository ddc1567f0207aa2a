"""Generation: the HTTP backend against a real `codegen serve` server on loopback gives the local
backend's completions; resume after an interruption gives the uninterrupted result; stop tokens."""

from __future__ import annotations

import json
import threading

import pytest

from adaptome.domains.codegen.backends import HttpBackend, LocalBackend
from adaptome.domains.codegen.generate import GenerateConfig, ResumeMismatch, read_completions, run_generate
from adaptome.domains.codegen.problems import load_problems
from adaptome.domains.codegen.prompts import build_prompt
from adaptome.domains.codegen.serve import make_server


@pytest.fixture(scope="module")
def local():
    return LocalBackend.load("tiny", seed=0)


@pytest.fixture(scope="module")
def server(local):
    srv = make_server(local, 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http_backend_equals_local_backend(local, server):
    assert server.startswith("http://127.0.0.1:")  # loopback only
    http = HttpBackend(server + "/v1")
    p = load_problems("humaneval-rkt")[0]
    prompt = build_prompt("few-shot", p)
    greedy_local = local.complete(prompt, 2, 7, 0.0, 1.0, 24, p.stop_tokens)
    assert http.complete(prompt, 2, 7, 0.0, 1.0, 24, p.stop_tokens) == greedy_local
    assert greedy_local[0] == greedy_local[1]  # greedy: one continuation
    sampled = local.complete(p.prompt, 3, 11, 0.9, 0.95, 24, p.stop_tokens)
    assert http.complete(p.prompt, 3, 11, 0.9, 0.95, 24, p.stop_tokens) == sampled  # same seed, same samples
    assert local.complete(p.prompt, 3, 12, 0.9, 0.95, 24, p.stop_tokens) != sampled  # the seed matters


def test_generation_through_http_equals_local_run(local, server, tmp_path):
    probs = load_problems("humaneval-r")[:2]
    cfg = dict(n=3, batch_size=2, temperature=0.8, max_tokens=16, seed=3)
    run_generate(probs, local, GenerateConfig(**cfg), tmp_path / "local", progress=False)
    run_generate(probs, HttpBackend(server), GenerateConfig(url=server, **cfg), tmp_path / "http", progress=False)
    a, b = read_completions(tmp_path / "local"), read_completions(tmp_path / "http")
    assert a == b and [len(v) for v in a.values()] == [3, 3]


class _Dies:
    """A backend that fails after ``k`` calls (an interrupted run)."""

    def __init__(self, inner, k):
        self.inner, self.k, self.name = inner, k, inner.name

    def complete(self, *a):
        if self.k == 0:
            raise KeyboardInterrupt
        self.k -= 1
        return self.inner.complete(*a)


def test_resume_after_interruption_equals_uninterrupted(local, tmp_path):
    probs = load_problems("mbpp-rkt")[:2]
    cfg = GenerateConfig(n=4, batch_size=2, temperature=0.9, max_tokens=12, seed=5)
    run_generate(probs, local, cfg, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_generate(probs, _Dies(local, 3), GenerateConfig(**vars(cfg)), tmp_path / "cut", progress=False)
    with (tmp_path / "cut" / "completions.jsonl").open("a") as f:
        f.write('{"name": "half a line')  # killed mid-write
    summary = run_generate(probs, local, GenerateConfig(**vars(cfg)), tmp_path / "cut", progress=False)
    assert (summary["batches_reused"], summary["batches_run"]) == (3, 1)
    assert read_completions(tmp_path / "cut") == read_completions(tmp_path / "full")
    with pytest.raises(ResumeMismatch, match="temperature"):
        run_generate(probs, local, GenerateConfig(**{**vars(cfg), "temperature": 0.5}), tmp_path / "cut",
                     progress=False)


def test_completions_stop_at_stop_tokens(local):
    p = load_problems("humaneval-r")[0]
    outs = local.complete(p.prompt, 4, 1, 1.5, 1.0, 64, p.stop_tokens)
    assert all(not any(s in o for s in p.stop_tokens) for o in outs)


def test_server_rejects_bad_requests(server):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(server + "/v1/completions", data=json.dumps({"prompt": 3}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400


def _post(server, body):
    import urllib.request

    req = urllib.request.Request(f"{server}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_served_finish_reason_and_usage_count_the_models_tokens(local, server):
    """A client reads ``finish_reason`` to know whether a completion was cut by ``max_tokens`` ("length") or
    ended ("stop"), and ``usage`` in tokens; the server answered "stop" and counted characters."""
    p = load_problems("humaneval-r")[0]
    full = _post(server, {"prompt": p.prompt, "max_tokens": 12, "temperature": 0})
    text = full["choices"][0]["text"]
    assert full["choices"][0]["finish_reason"] == "length"
    n_prompt = len(local.tok(p.prompt, add_special_tokens=False)["input_ids"])
    n_text = len(local.tok(text, add_special_tokens=False)["input_ids"])
    assert full["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": n_text,
                             "total_tokens": n_prompt + n_text}
    assert n_text <= 12  # (the tiny model's tokenizer is character-level: here tokens and characters agree)
    stripped = text.strip()
    assert len(stripped) >= 4, text  # the tiny model's greedy continuation has something to stop at
    stop = stripped[2:4]
    cut = _post(server, {"prompt": p.prompt, "max_tokens": 12, "temperature": 0, "stop": [stop]})["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[:text.index(stop)]
