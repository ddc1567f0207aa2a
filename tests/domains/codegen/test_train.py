"""`codegen train`: refuses data overlapping the evaluation problems (before writing anything), masks
the translation source out of the loss, and learns (the training loss falls) through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app
from adaptome.domains.codegen.models import code_tokenizer
from adaptome.domains.codegen.problems import load_problems
from adaptome.domains.codegen.train import (
    OverlapError,
    _encode,
    all_eval_problems,
    check_no_overlap,
    default_training_files,
    read_training_data,
    translation_text,
)


def test_overlap_with_evaluation_problems_is_refused(tmp_path):
    p = load_problems("mbpp-r")[3]
    leaked = tmp_path / "leak.jsonl"
    leaked.write_text(json.dumps({"prompt": p.prompt, "solution": "\n  1\n}"}) + "\n")
    with pytest.raises(OverlapError) as e:
        check_no_overlap(read_training_data([str(leaked)]), all_eval_problems([]))
    assert f"{leaked}:1" in str(e.value) and p.name in str(e.value)
    # a test line alone is enough
    src = tmp_path / "src"
    src.mkdir()
    test_line = next(ln for ln in p.tests.splitlines() if "candidate(" in ln)
    (src / "mine.r").write_text(f"f <- function(x) x\n{test_line}\n")
    with pytest.raises(OverlapError, match="mine.r"):
        check_no_overlap(read_training_data([str(src)]), all_eval_problems([]))
    # boilerplate shared by many problems is not an overlap
    (src / "mine.r").write_text("test_humaneval <- function() {\n  stopifnot(TRUE)\n}\n")
    check_no_overlap(read_training_data([str(src)]), all_eval_problems([]))


def test_extra_evaluation_files_count_too(tmp_path):
    mine = tmp_path / "my_eval.jsonl"
    mine.write_text(json.dumps({"name": "secret_task", "language": "r", "prompt": "# compute the frobnication index\n"
                                "frob <- function(x) {", "tests": "stopifnot(frob(1) == 2)"}) + "\n")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "# compute the frobnication index\nfrob <- function(x) {",
                                "solution": " x + 1 }"}) + "\n")
    check_no_overlap(read_training_data([str(data)]), all_eval_problems([]))
    with pytest.raises(OverlapError, match="secret_task"):
        check_no_overlap(read_training_data([str(data)]), all_eval_problems([str(mine)]))


def test_translation_loss_covers_only_the_target():
    text, start = translation_text("def f(x):\n    return x", "f <- function(x) x", "r")
    assert text[start:] == "f <- function(x) x" and text.startswith("# Python:\n# def f(x):")
    ex = read_training_data.__globals__["Example"](text, start, "t")
    (row,) = _encode([ex], code_tokenizer(), 512)
    labels, ids = row["labels"].tolist(), row["input_ids"].tolist()
    assert all(lab == -100 for lab in labels[:start])  # one token per character: the source is masked
    assert labels[start:] == ids[start:]  # target + EOS carry the loss


def test_cli_train_learns_and_refuses_overlap_without_writing(tmp_path):
    files = default_training_files(tmp_path / "data")
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", files[0], "--data", files[1], "--out", str(out), "--max-steps", "12",
                              "--block-size", "256", "--batch-size", "4", "--lr", "1e-2", "--warmup-steps", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples"] == 12 and summary["translation_examples"] == 4
    assert summary["train_loss_after"] < summary["train_loss_before"] - 0.1
    assert (out / "merged" / "config.json").is_file() and (out / "adapter").is_dir()
    leak = tmp_path / "leak.jsonl"
    p = load_problems("humaneval-rkt")[0]
    leak.write_text(json.dumps({"prompt": p.prompt, "solution": ")"}) + "\n")
    res = runner.invoke(app, ["train", "--data", str(leak), "--out", str(tmp_path / "run2")])
    assert res.exit_code == 2 and "overlaps evaluation problem" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run2").exists()
