"""The codegen CLI through the real `adaptome` entry point and typer: help with examples, execute and
generate end to end, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

from .conftest import need

COMMANDS = ["generate", "execute", "serve", "pass-at-k", "plansearch", "train"]


def test_entry_point_lists_codegen_commands_with_examples():
    out = subprocess.run([sys.executable, "-c", "from adaptome.core.cli import main; main()", "codegen", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in COMMANDS:
        assert cmd in out.stdout
    for cmd in COMMANDS:
        res = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and "Example: adaptome codegen " + cmd in res.output, cmd


def test_generate_then_execute_then_score(tmp_path):
    need("racket")
    runner = CliRunner()
    gen = tmp_path / "gen"
    res = runner.invoke(app, ["generate", "--problems", "humaneval-rkt", "--limit", "2", "--n", "2", "--max-tokens",
                              "8", "--temperature", "0.8", "--out", str(gen)])
    assert res.exit_code == 0, res.output
    ex = tmp_path / "exec"
    res = runner.invoke(app, ["execute", "--problems", "humaneval-rkt", "--completions", str(gen), "--out", str(ex),
                              "--timeout", "5"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["programs"] == 4 and summary["status_counts"]["OK"] == 0  # random tiny model
    res = runner.invoke(app, ["pass-at-k", "--run", f"humaneval-rkt={ex}", "--out", str(tmp_path / "s"), "--k", "1"])
    assert res.exit_code == 0 and "| humaneval-rkt | 1 | 0.0% | 2 |" in res.output


@pytest.mark.parametrize("args,message", [
    (["execute", "--problems", "nope.jsonl", "--completions", "x.jsonl", "--out", "o"], "nope.jsonl: file not found"),
    (["generate", "--problems", "humaneval-r", "--prompt-builder", "many-shot", "--out", "o"],
     "unknown prompt builder 'many-shot'"),
    (["plansearch", "--problems", "humaneval-r", "--num-layers", "3", "--out", "o"], "num_layers must be 1 or 2"),
    (["train", "--data", "d", "--out", "o", "--options", "[1]"], "--options must be a JSON object"),
    # options out of range were ValueError tracebacks
    (["execute", "--problems", "nope.jsonl", "--completions", "x.jsonl", "--out", "o", "--timeout", "0"],
     "sandbox limits out of range: need timeout > 0 s"),
    (["execute", "--problems", "nope.jsonl", "--completions", "x.jsonl", "--out", "o", "--memory-mb", "8"],
     "memory 8 MB"),
    (["execute", "--problems", "nope.jsonl", "--completions", "x.jsonl", "--out", "o", "--isolation", "bogus"],
     "isolation 'bogus': choose auto"),
    (["generate", "--problems", "humaneval-r", "--n", "0", "--out", "o"], "need n, batch size and max tokens >= 1"),
    (["generate", "--problems", "humaneval-r", "--top-p", "0", "--out", "o"], "0 < top_p <= 1"),
    (["plansearch", "--problems", "humaneval-r", "--limit", "1", "--num-observations", "1", "--observation-tokens", "2",
      "--plan-tokens", "2", "--code-tokens", "2", "--timeout", "0", "--out", "o"], "sandbox limits out of range"),
])
def test_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_execute_refuses_completions_for_unknown_problems(tmp_path):
    comps = tmp_path / "c.jsonl"
    comps.write_text('{"name": "not_a_problem", "completions": ["1"]}\n')
    res = CliRunner().invoke(app, ["execute", "--problems", "humaneval-r", "--completions", str(comps), "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 2 and "not_a_problem" in res.output


def test_plugin_is_discovered_with_cli_and_quickstart():
    from adaptome.core.plugins import discover

    plugin = next(p for p in discover() if p.name == "codegen")
    assert plugin.cli() is app and callable(plugin.quickstart)


@pytest.mark.slow
def test_serve_command_and_generate_with_url_equal_local_generation(tmp_path):
    from adaptome.domains.codegen.generate import read_completions

    server = subprocess.Popen([sys.executable, "-c", "from adaptome.core.cli import main; main()", "codegen", "serve",
                               "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in server.stderr:
            if line.startswith("serving"):
                url = line.split(" on ")[1].split("/v1/")[0]
                break
        assert url and url.startswith("http://127.0.0.1:")
        args = ["generate", "--problems", "mbpp-r", "--limit", "2", "--n", "2", "--temperature", "0.7",
                "--max-tokens", "12"]
        runner = CliRunner()
        assert runner.invoke(app, args + ["--out", str(tmp_path / "local")]).exit_code == 0
        res = runner.invoke(app, args + ["--url", url, "--out", str(tmp_path / "http")])
        assert res.exit_code == 0, res.output
        assert read_completions(tmp_path / "http") == read_completions(tmp_path / "local")
    finally:
        server.terminate()
        server.wait(timeout=30)
