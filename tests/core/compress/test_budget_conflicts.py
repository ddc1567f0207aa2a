"""``adaptome compress`` with a budget given twice, or beside an option that replaces it: before, WeLore's
``--set threshold=0`` silently kept every rank under ``--budget 0.3`` (kept 1.000), LRT's ``--set rank=16``
ignored ``--budget`` the same way, and ``--set keep_fraction`` lost to ``--budget`` without a word. Each is
now refused naming both, and nothing is written."""

from __future__ import annotations

import pytest
import tiny_models as tiny
from typer.testing import CliRunner

from adaptome.core import cli, text

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    tok = text.char_tokenizer()
    tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64).save_pretrained(
        root / "tiny")
    tok.save_pretrained(root / "tiny")
    return root / "tiny"


@pytest.mark.parametrize("method,extra,named", [
    ("welore", ["--budget", "0.3", "--set", "threshold=0.0"], "threshold"),
    ("lrt", ["--budget", "0.3", "--set", "rank=16"], "rank"),
    ("lrt", ["--set", "keep_fraction=0.3", "--set", "rank=16"], "rank"),
    ("dsformer", ["--budget", "0.6", "--set", "keep_fraction=0.3"], "keep_fraction"),
])
def test_conflicting_budgets_are_refused(model_dir, tmp_path, method, extra, named):
    res = runner.invoke(cli.app, ["compress", "--method", method, "--model", str(model_dir), "--out",
                                  str(tmp_path / "out"), *extra])
    assert res.exit_code == 2, res.output
    assert named in res.output and "--budget" in res.output
    assert not (tmp_path / "out").exists()


def test_an_option_that_replaces_the_budget_alone_still_works(model_dir, tmp_path):
    res = runner.invoke(cli.app, ["compress", "--method", "lrt", "--model", str(model_dir), "--out",
                                  str(tmp_path / "out"), "--set", "rank=4"])
    assert res.exit_code == 0, res.output


def test_an_explicit_rank_below_one_names_rank(model_dir, tmp_path):
    res = runner.invoke(cli.app, ["compress", "--method", "lrt", "--model", str(model_dir), "--out",
                                  str(tmp_path / "out"), "--set", "rank=0"])
    assert res.exit_code == 2 and "rank must be >= 1, got 0" in res.output, res.output
