"""``adaptome compress`` on a model with a tied LM head: a target pattern that reaches ``lm_head`` used to
compress it, keep the tied embedding dense beside it, and report the head's parameters as saved while the
written model had grown. It is refused naming the tie; the untied targets of the same model compress."""

from __future__ import annotations

import json

import tiny_models
from typer.testing import CliRunner

from adaptome.core import cli

runner = CliRunner()


def _tied(tmp_path):
    return tiny_models.tied_llama_checkpoint(tmp_path / "tied")


def test_a_tied_head_is_refused_and_nothing_is_written(tmp_path):
    res = runner.invoke(cli.app, ["compress", "--method", "lrt", "--model", str(_tied(tmp_path)), "--budget", "0.5",
                                  "--targets", ".*(lm_head|q_proj)", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "lm_head" in res.output and "model.embed_tokens" in res.output and "tied" in res.output
    assert not (tmp_path / "out").exists()


def test_untied_targets_of_a_tied_model_compress(tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(cli.app, ["compress", "--method", "lrt", "--model", str(_tied(tmp_path)), "--budget", "0.5",
                                  "--targets", ".*q_proj", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["totals"]["matrices"] == 1
