"""In-context examples never hand the model the problem's own answer, through ``adaptome codegen generate``.

A user's problem that is one of the package's worked examples (``count_vowels`` in R, ``second-largest`` in
Racket) used to get that example, solution and all, in its few-shot / translation prompt. The prompts the
model receives are recorded by a small OpenAI-compatible server on loopback (``--url``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

PROBLEMS = [
    {"name": "my_vowels", "language": "r", "prompt": "# Count the vowels in a string.\ncount_vowels <- function(s) {\n",
     "tests": "stopifnot(count_vowels('Programming') == 3)"},
    {"name": "my_second", "language": "rkt",
     "prompt": "#lang racket\n;; The second largest.\n(define (second-largest xs)\n",
     "tests": "(require rackunit)\n(check-equal? (second-largest (list 1 2 3)) 2)"},
    # the same task renamed: its tests share a line with the worked example's docstring
    {"name": "my_vowels2", "language": "r", "prompt": "# Vowels.\nnv <- function(s) {\n",
     "tests": "# Count the vowels (a, e, i, o, u, either case) in a string.\nstopifnot(nv('Programming') == 3)"},
]


@pytest.fixture
def recording_server():
    prompts = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts.append(body["prompt"])
            doc = json.dumps({"choices": [{"index": i, "text": "  0\n}\n"} for i in range(body["n"])]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", prompts
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("builder,leaked,where,count", [
    ("few-shot", ["sum(chars %in%", "count_vowels('Programming')"], [0, 2], "Example ("),  # the R problems
    ("translation", ["remove-duplicates xs", "def second_largest"], [1], "Python:"),  # the Racket one
])
def test_worked_examples_of_the_problem_itself_are_left_out(tmp_path, recording_server, builder, leaked, where,
                                                            count):
    url, prompts = recording_server
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    res = CliRunner().invoke(app, ["generate", "--problems", str(tmp_path / "p.jsonl"), "--url", url,
                                   "--prompt-builder", builder, "--out", str(tmp_path / "gen")])
    assert res.exit_code == 0, res.output
    assert len(prompts) == 3
    for i in where:
        assert not any(s in prompts[i] for s in leaked), prompts[i]
    if builder == "few-shot":  # the next example takes the left-out one's place
        assert [t.count(count) for t in prompts] == [3, 3, 3]
    else:  # two translation pairs per language: one is left for the Racket problem
        assert prompts[1].count(count) == 1
