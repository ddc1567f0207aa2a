"""The pathology part of ``adaptome quickstart`` through the real command (the main job of the README): it
runs to the end, learns the planted signal, and scores the real slide with the model's own feature recipe.
(It once scored the real slide's 256-px features with a model trained on 64-px ones; ``score`` now refuses
that, and this test would have caught the quickstart failing on it.)"""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from adaptome.core.cli import app

runner = CliRunner()


def test_pathology_quickstart_runs_end_to_end_and_scores_the_real_slide_with_the_models_recipe(tmp_path):
    out = tmp_path / "qs"
    res = runner.invoke(app, ["quickstart", "--out", str(out), "--domains", "pathology", "--steps", "20"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())["pathology"]
    assert summary["real_slide_tiles_20x"] > summary["real_slide_tiles_10x"] > 0
    # the planted signal is learned; shuffled labels learn nothing that transfers
    assert summary["heldout_r2"] > 0.8 and summary["shuffled_heldout_r2"] < 0.3, summary
    rows = list(csv.DictReader(open(out / "pathology" / "real_slide" / "scores_demo" / "slides.csv")))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["stil_pct"]) <= 100.0
    # scored on the fly with the model's recipe: its tiles are the model's 64-px tiles at 20x (64 x 0.5 / 0.499
    # level-0 px on this slide), not the real slide's 33 tiles of 256 px extracted above
    tiles = list(csv.DictReader(open(out / "pathology" / "real_slide" / "scores_demo" / "tiles" /
                                     "CMU-1-Small-Region.csv")))
    assert int(rows[0]["n_tiles"]) == len(tiles) > summary["real_slide_tiles_20x"]
    assert {round(float(t["size"]), 3) for t in tiles} == {round(64 * 0.5 / 0.499, 3)}
