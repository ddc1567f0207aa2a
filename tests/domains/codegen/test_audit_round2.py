"""Audit round 2 of `codegen train` / `plansearch` / `generate`, through the CLI: a run left without its
adapter (interrupted) is not resumed on other data, and ``--overwrite`` starts a finished run again."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

R_A = "add_two_numbers_together <- function(first_value, second_value) {\n  first_value + second_value\n}\n"
R_B = "completely_other_function_name <- function(zzz) {\n  zzz * 100\n}\n"
RKT = "#lang racket\n(define (multiply-three-values a b c) (* a b c))\n"


def _train(out, data, *extra):
    args = ["train", "--data", str(data), "--out", str(out), "--max-steps", "2", "--warmup-steps", "1",
            "--batch-size", "2", "--block-size", "64", *extra]
    return CliRunner().invoke(app, args)


def _folder(path, files):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_an_interrupted_train_is_not_resumed_on_other_data(tmp_path):
    a = _folder(tmp_path / "a", {"x.R": R_A, "y.rkt": RKT})
    b = _folder(tmp_path / "b", {"x.R": R_B, "y.rkt": RKT})  # as many examples as a
    out = tmp_path / "run"
    res = _train(out, a)
    assert res.exit_code == 0, res.output
    for name in ("adapter", "merged"):  # what a Ctrl-C after the last checkpoint leaves
        import shutil
        shutil.rmtree(out / name)
    (out / "summary.json").unlink()
    config = (out / "train_config.json").read_text()
    res = _train(out, b)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "data" in res.output  # names what changed
    assert not (out / "adapter").exists() and (out / "train_config.json").read_text() == config
    res = _train(out, b, "--block-size", "32")  # the tokens seen change too
    assert res.exit_code == 2, res.output
    res = _train(out, a)  # the same command resumes and finishes
    assert res.exit_code == 0, res.output


def test_overwrite_starts_a_finished_train_again(tmp_path):
    a = _folder(tmp_path / "a", {"x.R": R_A, "y.rkt": RKT})
    b = _folder(tmp_path / "b", {"x.R": R_B, "y.rkt": RKT})
    out = tmp_path / "run"
    assert _train(out, a).exit_code == 0
    res = _train(out, b, "--overwrite")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the new run's own steps, none of the first run's
    assert str(b) in (out / "train_config.json").read_text()


def test_examples_with_nothing_to_learn_are_left_out_or_refused(tmp_path):
    src = _folder(tmp_path / "src", {"x.R": R_A, "y.rkt": RKT, "empty.R": ""})
    long_pair = tmp_path / "long.jsonl"  # the target starts after 64 tokens: it would train on nothing
    long_pair.write_text(json.dumps({"source": "x = 1\n" * 40, "target": "f <- function(x) x\n",
                                     "target_language": "r"}) + "\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(src), "--data", str(long_pair), "--out", str(out),
                                   "--max-steps", "2", "--warmup-steps", "1", "--batch-size", "2",
                                   "--block-size", "64"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples"] == 2 and summary["translation_examples"] == 0
    assert summary["examples_without_loss"] == [str(src / "empty.R"), f"{long_pair}:1"]
    res = _train(tmp_path / "run2", long_pair, "--batch-size", "1")  # nothing left: one line, nothing written
    assert res.exit_code == 2 and "no training example has a token to learn" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "run2").exists()
    res = _train(tmp_path / "run3", src, "--block-size", "0")
    assert res.exit_code == 2 and "--block-size 0" in res.output and "Traceback" not in res.output, res.output


PS = ["--problems", "humaneval-r", "--limit", "1", "--num-observations", "2", "--max-observation-k", "1",
      "--num-layers", "1", "--observation-tokens", "4", "--plan-tokens", "4", "--code-tokens", "4", "--no-execute"]


def test_plansearch_num_completions_out_of_range_is_refused(tmp_path):
    """-5 kept every code (as -1 does) and 0 kept none, silently, after the whole search."""
    for k in ("-5", "0"):
        res = CliRunner().invoke(app, ["plansearch", *PS, "--num-completions", k, "--out", str(tmp_path / k)])
        assert res.exit_code == 2 and "--num-completions" in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / k).exists()


def test_repeated_sampling_draws_as_many_codes_as_plansearch_keeps(tmp_path):
    """With --num-completions above the codes PLANSEARCH makes (6 here), the search keeps its 6; the
    repeated-sampling baseline ("as many codes") drew 100."""
    from adaptome.domains.codegen.generate import read_completions

    n = {}
    for alg in ("plansearch", "repeated"):
        out = tmp_path / alg
        res = CliRunner().invoke(app, ["plansearch", *PS, "--alg", alg, "--num-completions", "100", "--out", str(out)])
        assert res.exit_code == 0, res.output
        n[alg] = [len(c) for c in read_completions(out).values()]
    assert n["plansearch"] == n["repeated"] == [6]
