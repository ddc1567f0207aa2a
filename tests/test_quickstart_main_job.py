"""``adaptome quickstart``, the README's main job, run whole through the real command on every domain: it
must finish, and each domain's demo must show what it claims. Before this test no default test ran the
quickstart's pathology, multilingual or codegen parts: a change to ``score`` (its feature-recipe check) made
the pathology demo, and so the whole command, fail with exit 2 unnoticed."""

from __future__ import annotations

import csv
import json

from transformers.utils import logging as hf_logging
from typer.testing import CliRunner

from adaptome.core.cli import app

runner = CliRunner()


def test_quickstart_runs_every_domain_to_the_end(tmp_path):
    out = tmp_path / "qs"
    res = runner.invoke(app, ["quickstart", "--out", str(out)])
    assert res.exit_code == 0, res.output
    # the demos' lines are not buried under a "Loading weights" bar per tiny model, and the caller's own
    # transformers progress-bar setting is given back
    assert "Loading weights" not in res.output and hf_logging.is_progress_bar_enabled()
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= {"core", "protein", "pathology", "multilingual", "codegen"}, sorted(s)

    core = s["core"]
    assert core["ok"] and core["heldout_perplexity_after"] < core["heldout_perplexity_before"] / 5, core

    prot = s["protein"]
    assert prot["family accuracy, model probe (classify's default)"] > prot["family accuracy, majority class"], prot
    assert prot["samples: validity"] > 0.05, prot

    path = s["pathology"]
    assert path["real_slide_tiles_20x"] > path["real_slide_tiles_10x"] > 0
    # the planted signal is learned on the hard cohort (staining sites, artefacts, confounders), held-out slides
    # included, and not from shuffled labels
    assert path["heldout_r2"] > 0.6 and path["shuffled_heldout_r2"] < 0.3, path
    # beside the simple baselines on the same folds, always: the MIL is ahead of each by at least 0.1 in CV R²
    # (one staining site held out per fold), and the output says by how much
    assert {"cv_r2_baseline_majority", "cv_r2_baseline_dark_pixels", "cv_r2_baseline_mean_features"} <= set(path)
    assert path["cv_r2_baseline_majority"] < 0.1 < path["cv_r2_baseline_dark_pixels"], path
    best = max(path["cv_r2_baseline_dark_pixels"], path["cv_r2_baseline_mean_features"])
    assert path["cv_r2"] >= best + 0.1, path
    assert "is ahead of every simple baseline" in " ".join(res.output.split()), res.output
    # the real slide is scored on the fly with the model's recipe: its 64-px tiles at 20x (64 x 0.5 / 0.499
    # level-0 px on this slide), not the 33 tiles of 256 px extracted for it first
    demo = out / "pathology" / "real_slide" / "scores_demo"
    slide = list(csv.DictReader(open(demo / "slides.csv")))
    tiles = list(csv.DictReader(open(demo / "tiles" / "CMU-1-Small-Region.csv")))
    assert len(slide) == 1 and 0.0 <= float(slide[0]["stil_pct"]) <= 100.0
    assert int(slide[0]["n_tiles"]) == len(tiles) > path["real_slide_tiles_20x"]
    assert {round(float(t["size"]), 3) for t in tiles} == {round(64 * 0.5 / 0.499, 3)}

    assert s["multilingual"]["ok"], s["multilingual"]
    assert s["codegen"]["pass_at_1"]["reference solutions"] == 1.0, s["codegen"]
