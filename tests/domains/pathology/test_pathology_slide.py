"""Slide reading, MPP, best level, tile grid on the real Aperio slide; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adaptome.domains.pathology.slide import SAMPLE_SLIDE as REAL_SLIDE
from adaptome.domains.pathology.slide import (
    MissingMPPError,
    SlideError,
    best_level,
    open_slide,
    read_mpp_csv,
    slide_mpp,
    target_mpp,
)
from adaptome.domains.pathology.synth import render_slide, write_pyramid_tiff
from adaptome.domains.pathology.tiling import geometry, grid, tile_slide


def test_real_slide_dimensions_and_mpp():
    s = open_slide(REAL_SLIDE)
    assert s.dimensions == (2220, 2967)
    assert s.level_count == 1
    assert slide_mpp(s, REAL_SLIDE) == pytest.approx(0.499)
    s.close()


@pytest.mark.parametrize("mag,tile,expected_grid", [(20, 256, (8, 11)), (10, 256, (4, 5))])
def test_real_slide_tile_counts(mag, tile, expected_grid):
    # a 256 px tile at 10/mag um/px covers 256 * (10/mag) / 0.499 level-0 px
    size0 = tile * (10 / mag) / 0.499
    assert (math.floor(2220 / size0), math.floor(2967 / size0)) == expected_grid
    res_all = tile_slide(REAL_SLIDE, target_mpp(magnification=mag), tile, min_tissue=0.0)
    assert len(res_all["coords"]) == expected_grid[0] * expected_grid[1]
    assert res_all["attrs"]["tile_size_level0"] == pytest.approx(size0)
    res = tile_slide(REAL_SLIDE, target_mpp(magnification=mag), tile, min_tissue=0.5)
    # the tissue strip covers roughly a third of the field (see the QC thumbnail): counts fixed here
    assert len(res["coords"]) == {20: 33, 10: 6}[mag]
    assert (res["tissue"] >= 0.5).all()


def test_best_level_never_upsamples():
    ds = (1.0, 4.0, 16.0)
    assert best_level(ds, 1.0) == 0
    assert best_level(ds, 3.9) == 0
    assert best_level(ds, 3.9998) == 1  # stored downsample rounding
    assert best_level(ds, 8.0) == 1
    assert best_level(ds, 100.0) == 2


def test_target_mpp():
    assert target_mpp(magnification=20) == 0.5
    assert target_mpp(mpp=0.25) == 0.25
    with pytest.raises(ValueError):
        target_mpp(20, 0.5)


def test_missing_mpp_error_and_override(tmp_path):
    rgb, _ = render_slide(np.random.default_rng(0), grid=4, cell_px=32)
    path = tmp_path / "nompp.tiff"
    write_pyramid_tiff(path, rgb, mpp=None, levels=2, tile=64)
    s = open_slide(path)
    with pytest.raises(MissingMPPError, match="nompp.tiff.*override CSV"):
        slide_mpp(s, path)
    csv_path = tmp_path / "mpp.csv"
    csv_path.write_text("slide,mpp\nnompp.tiff,0.25\n")
    assert slide_mpp(s, path, read_mpp_csv(csv_path)) == 0.25
    # with the override, tiling at 20x reads from level 1 (downsample 2)
    res = tile_slide(path, 0.5, 32, min_tissue=0.0, mpp_overrides=read_mpp_csv(csv_path), thumb_size=128)
    assert res["geometry"].level == 1 and res["attrs"]["tile_size_level0"] == 64


def test_bad_mpp_csv(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("name,res\na,1\n")
    with pytest.raises(SlideError, match="m.csv.*slide,mpp"):
        read_mpp_csv(p)
    p.write_text("slide,mpp\na,abc\n")
    with pytest.raises(SlideError, match="m.csv: line 2"):
        read_mpp_csv(p)


def test_corrupt_and_missing_slide(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(REAL_SLIDE.read_bytes()[:20000])  # truncated
    with pytest.raises(SlideError, match="broken.svs"):
        open_slide(bad)
    junk = tmp_path / "junk.tiff"
    junk.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(SlideError, match="junk.tiff"):
        open_slide(junk)
    with pytest.raises(SlideError, match="nothere.svs: slide file not found"):
        open_slide(tmp_path / "nothere.svs")


def test_grid_geometry_formula():
    g = geometry((1.0, 2.0, 4.0), mpp0=0.25, target_mpp=1.0, tile_size=100, overlap=20)
    assert g.size0 == 400 and g.stride0 == 320 and g.level == 2 and g.read_size == 100
    coords = grid((1000, 740), g)
    # x: 0, 320 (640+400 > 1000); y: 0, 320 (320+400 = 720 <= 740)
    assert sorted(set(coords[:, 0])) == [0, 320] and sorted(set(coords[:, 1])) == [0, 320]
