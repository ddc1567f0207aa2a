"""Damaged train-task runs, through the CLI: a cut, empty or incomplete ``run.json`` and a truncated task adapter
are one line naming the file (they were JSONDecodeError / KeyError / SafetensorError tracebacks)."""

from __future__ import annotations

import pytest

from .conftest import DATA, invoke

FAST = ["--max-length", 48, "--batch-size", 8, "--seeds", "1"]


@pytest.fixture(scope="module")
def task_run(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("ml_sc")
    sib = DATA / "sib200" / "hau_Latn"
    train = root / "train.tsv"
    train.write_text("".join(ln + "\n" for ln in (sib / "train.tsv").read_text(encoding="utf-8").splitlines()[:41]),
                     encoding="utf-8")
    run = root / "run"
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", train, "--eval",
                  sib / "dev.tsv", "--out", run, "--steps", 1, *FAST])
    assert res.exit_code == 0, res.output
    return run


def _one_line(res, *words):
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    for w in words:
        assert w in res.output, res.output


@pytest.mark.parametrize("damage,words", [
    (lambda b: b[:300], ("run.json", "damaged, not JSON")),  # a killed copy
    (lambda b: b"", ("run.json", "damaged, not JSON")),  # an empty file
    (lambda b: b"{}", ("run.json", "not a complete train-task run.json", "config")),
    (lambda b: b"\xff\xfe", ("run.json", "damaged")),  # not UTF-8
])
def test_a_damaged_run_json_is_one_line_naming_it(task_run, tmp_path, damage, words):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(task_run, run)
    (run / "run.json").write_bytes(damage((task_run / "run.json").read_bytes()))
    res = invoke(["multilingual", "evaluate", run, "--out", tmp_path / "ev"])
    _one_line(res, *words)
    assert not (tmp_path / "ev").exists()


def test_a_truncated_task_adapter_is_one_line_naming_it(task_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(task_run, run)
    weights = run / "seed1" / "task_adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = invoke(["multilingual", "evaluate", run, "--out", tmp_path / "ev"])
    _one_line(res, "adapter_model.safetensors", "unreadable")
