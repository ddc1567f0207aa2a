"""Stale results and damaged files in codegen, through the CLI: a model retrained into the folder a
``generate`` run was made with, a damaged ``generate_config.json``, an earlier PLANSEARCH run's codes left
beside a stopped one, and a results file that is not UTF-8."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

PROBLEM = {"name": "add", "language": "r", "prompt": "add <- function(a, b) {\n",
           "tests": "stopifnot(add(1, 2) == 3)\n"}
GEN = ["--n", "1", "--max-tokens", "2"]


def _problems(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(PROBLEM) + "\n")
    return str(path)


def _one_line(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit), res.output
    for w in words:
        assert w in res.output, res.output


def test_generate_refuses_to_resume_after_the_model_folder_was_retrained(tmp_path):
    from adaptome.domains.codegen.models import save_tiny

    probs, model, out = _problems(tmp_path), tmp_path / "model", tmp_path / "gen"
    save_tiny(model, seed=0)
    res = CliRunner().invoke(app, ["generate", "--problems", probs, "--model", str(model), *GEN, "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["generate", "--problems", probs, "--model", str(model), *GEN, "--out", str(out)])
    assert res.exit_code == 0 and '"batches_reused": 1' in res.output, res.output  # same weights: resumed
    save_tiny(model, seed=1)  # another model saved at the same path
    # before: resumed silently ('batches_reused': 1), keeping the old model's completions as the new one's
    res = CliRunner().invoke(app, ["generate", "--problems", probs, "--model", str(model), *GEN, "--out", str(out)])
    _one_line(res, "generate_config.json", "model_weights", "changed since")
    res = CliRunner().invoke(app, ["generate", "--problems", probs, "--model", str(model), *GEN, "--out", str(out),
                                   "--overwrite"])
    assert res.exit_code == 0 and '"batches_run": 1' in res.output, res.output
    assert json.loads((out / "generate_config.json").read_text())["model_weights"]


def test_a_damaged_generate_config_is_one_line_naming_it(tmp_path):
    probs, out = _problems(tmp_path), tmp_path / "gen"
    res = CliRunner().invoke(app, ["generate", "--problems", probs, *GEN, "--out", str(out)])
    assert res.exit_code == 0, res.output
    kept = (out / "completions.jsonl").read_bytes()
    (out / "generate_config.json").write_text('{"model": "ti')  # cut by a full disk
    # before: a JSONDecodeError traceback, in generate (resuming) and in execute (reading its n)
    res = CliRunner().invoke(app, ["generate", "--problems", probs, *GEN, "--out", str(out)])
    _one_line(res, "generate_config.json", "damaged")
    res = CliRunner().invoke(app, ["execute", "--problems", probs, "--completions", str(out), "--out",
                                   str(tmp_path / "ex")])
    _one_line(res, "generate_config.json", "damaged")
    assert (out / "completions.jsonl").read_bytes() == kept


PS = ["--num-observations", "1", "--max-observation-k", "0", "--num-layers", "1", "--without-fix",
      "--observation-tokens", "2", "--plan-tokens", "2", "--code-tokens", "2", "--no-execute"]


def test_a_stopped_plansearch_leaves_no_earlier_codes_beside_its_config(tmp_path):
    probs, out = _problems(tmp_path), tmp_path / "ps"
    res = CliRunner().invoke(app, ["plansearch", "--problems", probs, *PS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "completions.jsonl").is_file()
    # a second search with other settings that stops at its first model call (a server that is not there)
    res = CliRunner().invoke(app, ["plansearch", "--problems", probs, *PS, "--seed", "5", "--url",
                                   "http://127.0.0.1:9", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert json.loads((out / "plansearch_config.json").read_text())["seed"] == 5
    # before: the first search's completions.jsonl stayed, and execute graded them as the seed-5 run's
    assert not (out / "completions.jsonl").exists()
    res = CliRunner().invoke(app, ["execute", "--problems", probs, "--completions", str(out), "--out",
                                   str(tmp_path / "ex")])
    _one_line(res, "completions.jsonl")


def test_a_results_file_that_is_not_utf8_is_named_by_pass_at_k(tmp_path):
    run = tmp_path / "exec"
    run.mkdir()
    (run / "add.results.json").write_bytes(b"\xff\xfe{\x00")
    # before: a UnicodeDecodeError traceback
    res = CliRunner().invoke(app, ["pass-at-k", "--run", f"r={run}", "--out", str(tmp_path / "score")])
    _one_line(res, "add.results.json", "not a MultiPL-E results file")


def test_execute_redoes_a_damaged_results_file(tmp_path, need_r):
    probs, comps, out = _problems(tmp_path), tmp_path / "c.jsonl", tmp_path / "exec"
    comps.write_text(json.dumps({"name": "add", "completions": ["  a + b\n}"]}) + "\n")
    out.mkdir()
    (out / "add.results.json").write_bytes(b"\xff\xfe{\x00")  # not UTF-8 (another tool's file, a bad copy)
    # before: a UnicodeDecodeError traceback; now it is recomputed as a cut JSON file was
    res = CliRunner().invoke(app, ["execute", "--problems", probs, "--completions", str(comps), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "add.results.json").read_text())
    assert [r["status"] for r in doc["results"]] == ["OK"]
