"""One list of feature-recipe keys: the tissue-mask settings are ``tiling.SEG_DEFAULTS`` (``tiling.MASK_KEYS``
with ``thumb_size``) and the recipe ``score`` compares is ``score.RECIPE_KEYS``; ``tile`` records and passes each
mask setting, ``tile_slide`` writes it into the tiles, ``extract`` copies it into the features, ``train`` saves it
in the model's recipe and ``score`` refuses features that differ in it. A key added to ``SEG_DEFAULTS`` must reach
every one of these (a hand-written list that missed it would leave ``score``'s check skipped without a word)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from adaptome.domains.pathology.cli import app

#: run in a fresh interpreter: a new mask setting ``sharpen`` is added to SEG_DEFAULTS before any module that
#: derives a list from it is imported (as an edit of tiling.py would), and the mask code accepts it
_NEW_KEY = r"""
import json, sys
from pathlib import Path

from adaptome.domains.pathology import tiling
tiling.SEG_DEFAULTS["sharpen"] = 0
tiling.MASK_KEYS = ("thumb_size", *tiling.SEG_DEFAULTS)  # MASK_KEYS's definition (pinned by the test below)
from adaptome.domains.pathology import segment
real = segment.tissue_mask
segment.tissue_mask = lambda rgb, sharpen=0, **kw: real(rgb, **kw)

from adaptome.domains.pathology import extract, score, stages, train
from adaptome.domains.pathology.config import ExtractConfig, TileConfig
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.made_by import RECORD_DIR
from adaptome.domains.pathology.synth import make_cohort

root = Path(sys.argv[1])
make_cohort(root / "slides", n_slides=1, seed=0, grid=6, prefix="k")
cfg = TileConfig(slides=str(root / "slides"), out_dir=str(root / "job"), magnification=20, tile_size=64,
                 thumb_size=256)
cfg.sharpen = 2  # the TileConfig field a developer adds beside the SEG_DEFAULTS key
stages.tile(cfg, progress=False)
tiles = root / "job" / "tiles_20x_64px_0ov"
sid = next(tiles.glob("*.h5")).stem
stages.extract(ExtractConfig(slides=str(root / "slides"), tiles_dir=str(tiles), num_workers=0), progress=False)
fattrs = extract.read_features(tiles / "features_baseline" / f"{sid}.h5")[2]
recipe = train.feature_recipe(fattrs)
try:
    score.check_recipe(recipe, {**fattrs, "sharpen": 3}, "other.h5")
    refused = ""
except PathologyError as e:
    refused = str(e)
out = {"recipe_keys": "sharpen" in score.RECIPE_KEYS, "feature_attrs": "sharpen" in extract.FEATURE_ATTRS,
       "tile_record": json.loads((tiles / RECORD_DIR / f"{sid}.json").read_text())["params"].get("sharpen"),
       "tiles": int(tiling.read_coords(tiles / f"{sid}.h5")[1].get("sharpen", -1)),
       "features": int(fattrs.get("sharpen", -1)), "recipe": recipe.get("sharpen"), "refused": refused}
print("RESULT " + json.dumps(out))
"""


def test_a_mask_setting_added_to_seg_defaults_reaches_tile_features_recipe_and_score(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _NEW_KEY, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert res["recipe_keys"] and res["feature_attrs"], res  # derived, not hand-written
    assert res["tile_record"] == 2, res  # tile's record of its options holds it (a change refuses old tiles)
    assert res["tiles"] == 2 and res["features"] == 2, res  # passed to the mask, written with the tiles, kept
    assert res["recipe"] == 2, res  # train saves it in the model's recipe
    assert "features made with sharpen 3, but the model was trained on features with 2" in res["refused"], res


def test_the_recipe_a_model_saves_holds_every_key_score_compares(cohort, tmp_path):
    """Today's keys, through the CLI: ``model.json`` ``features`` is ``score.RECIPE_KEYS`` (those the feature files
    hold) and the ROI flags; the configs carry every mask setting at its ``SEG_DEFAULTS`` value."""
    from adaptome.domains.pathology.config import SegmentConfig, TileConfig
    from adaptome.domains.pathology.extract import FEATURE_ATTRS, read_features
    from adaptome.domains.pathology.score import RECIPE_KEYS
    from adaptome.domains.pathology.tiling import MASK_KEYS, SEG_DEFAULTS

    assert MASK_KEYS == ("thumb_size", *SEG_DEFAULTS) and set(MASK_KEYS) <= set(RECIPE_KEYS)
    assert set(RECIPE_KEYS) - set(FEATURE_ATTRS) == {"encoder", "encoder_options", "encoder_weights"}  # the encoder's
    for config in (SegmentConfig, TileConfig):
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        assert {k: defaults.get(k) for k in SEG_DEFAULTS} == SEG_DEFAULTS, config.__name__
        assert "thumb_size" in defaults, config.__name__

    r = CliRunner().invoke(app, ["train", "--features-dir", str(cohort["features_dir"]), "--labels",
                                 str(cohort["labels"]), "--out", str(tmp_path / "out"), "--k", "2",
                                 "--set", "max_steps=1", "--set", "batch_size=4"])
    assert r.exit_code == 0, r.output
    recipe = json.loads(next((tmp_path / "out").glob("mil_*/fold_0/model.json")).read_text())["features"]
    held = set(read_features(next(cohort["features_dir"].glob("*.h5")))[2])
    assert set(recipe) == ({*RECIPE_KEYS, "roi", "roi_classes"} & held), set(recipe) ^ set(RECIPE_KEYS)
    assert set(MASK_KEYS) <= set(recipe)
