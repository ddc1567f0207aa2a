"""Damaged stage outputs, through the CLI: a tiles or features file cut short (a killed copy, a full disk) after
it was written is redone by its stage, not reused as 'same inputs', and a stage reading a damaged tiles file
names that file (it blamed the slide)."""

from __future__ import annotations

import os
import shutil

import h5py
import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology.cli import app


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Three synthetic slides, tiled at 20x / 64 px, with baseline features (through the CLI)."""
    from adaptome.domains.pathology.synth import make_cohort

    root = tmp_path_factory.mktemp("path_sc")
    make_cohort(root / "slides", n_slides=3, seed=0, grid=8, prefix="sc")
    tdir = root / "job" / "tiles_20x_64px_0ov"
    assert _cli("tile", root / "slides", "--out", root / "job", "--tile-size", 64, "--set",
                "thumb_size=256").exit_code == 0
    assert _cli("extract", root / "slides", "--tiles-dir", tdir, "--num-workers", 0).exit_code == 0
    return root


def _copy(job, tmp_path):
    shutil.copytree(job, tmp_path / "c", copy_function=shutil.copy2)  # times kept: the records still match
    return tmp_path / "c", tmp_path / "c" / "job" / "tiles_20x_64px_0ov"


def _cut(path):
    st = path.stat()
    path.write_bytes(path.read_bytes()[: st.st_size // 2])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # a copy cut short keeps the source's time


def test_a_tiles_file_cut_short_is_retiled_not_reused(job, tmp_path):
    root, tdir = _copy(job, tmp_path)
    _cut(tdir / "sc_001.h5")
    # before: 'tile: 0 done, 3 reused (same inputs)', leaving the cut file
    r = _cli("tile", root / "slides", "--out", root / "job", "--tile-size", 64, "--set", "thumb_size=256")
    assert r.exit_code == 0 and "1 done, 2 reused" in r.output, r.output
    assert "redone sc_001: the earlier result sc_001.h5 is damaged" in r.output
    with h5py.File(tdir / "sc_001.h5", "r") as f:
        assert len(f["coords"]) > 0


def test_an_empty_features_file_is_extracted_again(job, tmp_path):
    root, tdir = _copy(job, tmp_path)
    feat = tdir / "features_baseline" / "sc_002.h5"
    st = feat.stat()
    feat.write_bytes(b"")
    os.utime(feat, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = _cli("extract", root / "slides", "--tiles-dir", tdir, "--num-workers", 0)
    assert r.exit_code == 0 and "1 done, 2 reused" in r.output, r.output
    assert "redone sc_002: the earlier result sc_002.h5 is damaged (an empty file)" in r.output
    with h5py.File(feat, "r") as f:
        assert len(f["features"]) > 0


def test_extract_names_a_damaged_tiles_file_and_keeps_the_other_features(job, tmp_path):
    root, tdir = _copy(job, tmp_path)
    fdir = tdir / "features_baseline"
    before = {p.name: p.read_bytes() for p in fdir.glob("*.h5")}
    tiles = tdir / "sc_001.h5"
    _cut(tiles)
    os.utime(tiles)  # rewritten since: extract redoes this slide's features from it
    r = _cli("extract", root / "slides", "--tiles-dir", tdir, "--num-workers", 0)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    # before: 'sc_001.tiff: Unable to synchronously open file (truncated file ...)', blaming the slide
    assert f"{tiles}: not a tiling file (Unable to synchronously open file (truncated file" in r.output, r.output
    assert "re-run 'tile'" in r.output
    for name in ("sc_000.h5", "sc_002.h5"):
        assert (fdir / name).read_bytes() == before[name]
