"""Session fixtures: a tiny synthetic training cohort, a held-out cohort, their tiles and features."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _prepare(root: Path, n: int, seed: int, prefix: str) -> dict:
    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import ExtractConfig, TileConfig
    from adaptome.domains.pathology.synth import make_cohort

    labels = make_cohort(root / "slides", n_slides=n, seed=seed, grid=8, prefix=prefix)
    tcfg = TileConfig(slides=str(root / "slides"), out_dir=str(root / "job"), magnification=20, tile_size=64,
                      thumb_size=256)
    stages.tile(tcfg, progress=False)
    tiles_dir = root / "job" / "tiles_20x_64px_0ov"
    stages.extract(ExtractConfig(slides=str(root / "slides"), tiles_dir=str(tiles_dir), num_workers=0),
                   progress=False)
    return {"root": root, "slides": root / "slides", "labels": labels, "tiles_dir": tiles_dir,
            "features_dir": tiles_dir / "features_baseline", "tile_cfg": tcfg}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> dict:
    """32 synthetic training slides (4 sites), tiled at 20x / 64 px, baseline features."""
    return _prepare(tmp_path_factory.mktemp("train_cohort"), 32, 0, "train")


@pytest.fixture(scope="session")
def heldout(tmp_path_factory) -> dict:
    """12 held-out synthetic slides from another seed."""
    return _prepare(tmp_path_factory.mktemp("heldout_cohort"), 12, 123, "test")


@pytest.fixture(scope="session")
def trained(cohort, tmp_path_factory) -> dict:
    """Attention-MIL CV on the training cohort (site-grouped 4 folds), and its shuffled-label twin."""
    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import MILTrainConfig

    out = tmp_path_factory.mktemp("mil")
    res = {}
    for shuffled in (False, True):
        cfg = MILTrainConfig(features_dir=str(cohort["features_dir"]), labels=str(cohort["labels"]), out_dir=str(out),
                             k=4, group_by="site", max_steps=150, shuffle_labels=shuffled)
        res["shuffled" if shuffled else "real"] = stages.train(cfg, progress=False)
    return res
