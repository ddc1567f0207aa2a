"""``multilingual evaluate`` options for the other kind of run are refused naming the option.

Before: ``--text`` / ``--max-sentences`` given with task runs only (they score language adapters) and ``--eval``
given with language adapters only (it scores task runs) were dropped without a word, the results made from the
runs' own data. Each refusal failed before the fix; the options with the runs that read them stay silent.
"""

from __future__ import annotations

import json

import pytest

from .conftest import invoke


@pytest.fixture
def task_run(tmp_path):
    run = tmp_path / "task"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"task": "topic"}))
    return run


@pytest.mark.parametrize("flag, value, message", [
    ("--text", "held.txt", "language adapters are scored on it, and none was given"),
    ("--max-sentences", "30", "--max-sentences 30: the sentences of --text scored per language adapter"),
])
def test_language_adapter_options_with_task_runs_only_are_refused(task_run, tmp_path, flag, value, message):
    (tmp_path / "held.txt").write_text("a b c\n")
    res = invoke(["multilingual", "evaluate", task_run, flag, tmp_path / value if flag == "--text" else value,
                  "--out", tmp_path / "ev"])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "ev").exists()


def test_eval_with_language_adapters_only_is_refused(lang_adapter, text_splits, tmp_path):
    text = text_splits / "hau" / "test.txt"
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", text, "--eval", text, "--out", tmp_path / "ev"])
    assert res.exit_code == 2 and f"--eval {text}: task runs are scored on it, and none was given" in res.output
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", text, "--max-sentences", 20,
                  "--out", tmp_path / "ev"])
    assert res.exit_code == 0 and "none was given" not in res.output, res.output
