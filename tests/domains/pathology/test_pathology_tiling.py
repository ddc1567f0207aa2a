"""Tiles map back to the right level-0 region; coverage; segmentation against planted tissue."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adaptome.domains.pathology.segment import load_roi_mask, mask_to_geojson, otsu_threshold, tissue_mask
from adaptome.domains.pathology.slide import SAMPLE_SLIDE, open_slide
from adaptome.domains.pathology.synth import make_cohort, read_truth
from adaptome.domains.pathology.tiling import TileReader, coverage, geometry, tile_slide


@pytest.fixture(scope="module")
def slide40x(tmp_path_factory):
    """A synthetic 40x-like slide (0.25 um/px, 3 levels) with its planted cells."""
    d = tmp_path_factory.mktemp("s40")
    make_cohort(d, n_slides=1, seed=5, grid=8, mpp=0.25, prefix="x40", density_range=(0.3, 0.6))
    return d / "x40_000.tiff", read_truth(d / "truth" / "x40_000.csv")


def test_tile_at_20x_reads_level1_and_matches_level0_region(slide40x):
    path, truth = slide40x
    res = tile_slide(path, 0.5, 64, min_tissue=0.99, thumb_size=256)
    geom = res["geometry"]
    assert geom.level == 1 and geom.size0 == 128  # 64 px at 0.5 um/px = 128 px at 0.25 um/px
    s = open_slide(path)
    reader = TileReader(path, geom)
    for x, y in res["coords"][:5]:
        tile = reader.read(int(x), int(y)).astype(float)
        # independent route: read the level-0 region and 2x2-average it
        ref = np.asarray(s.read_region((int(x), int(y)), 0, (128, 128)).convert("RGB"), float)
        ref = ref.reshape(64, 2, 64, 2, 3).mean((1, 3))  # (128, 128, 3) -> (64, 2, 64, 2, 3) -> (64, 64, 3)
        assert np.abs(tile - ref).mean() < 3.0
        # and the tile is the planted cell at these level-0 coordinates: lymphocyte count tracks density
        assert (int(x), int(y)) in truth


def test_tile_content_tracks_planted_density(slide40x):
    path, truth = slide40x
    res = tile_slide(path, 0.5, 64, min_tissue=0.99, thumb_size=256)
    reader = TileReader(path, res["geometry"])
    dark, dens = [], []
    for x, y in res["coords"]:
        t = reader.read(int(x), int(y))
        dark.append((t[..., 0] < 150).mean())  # dense lymphocyte nuclei: the only low-red pixels
        dens.append(truth[(int(x), int(y))][2])
    assert np.corrcoef(dark, dens)[0, 1] > 0.8


def test_coverage_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 60)) > 0.6
    coords = np.array([[0, 0], [100, 40], [300, 200], [480, 300]])
    scale, size0 = 0.1, 100.0
    cov = coverage(mask, scale, coords, size0)
    for (x, y), c in zip(coords, cov):
        sub = mask[int(y * scale):int(np.ceil((y + size0) * scale)), int(x * scale):int(np.ceil((x + size0) * scale))]
        assert c == pytest.approx(sub.mean() if sub.size else 0.0)


def test_otsu_maximises_between_class_variance():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(40, 8, 3000), rng.normal(170, 15, 1000)]).clip(0, 255).astype(np.uint8)
    t = otsu_threshold(v)
    def between(th):
        a, b = v[v <= th].astype(float), v[v > th].astype(float)
        return len(a) * len(b) * (a.mean() - b.mean()) ** 2 if len(a) and len(b) else 0
    best = max(range(255), key=between)
    assert t == best


def test_tissue_mask_recovers_planted_tissue(slide40x):
    path, truth = slide40x
    s = open_slide(path)
    w, h = s.dimensions
    thumb = np.asarray(s.get_thumbnail((w // 8, h // 8)).convert("RGB"))
    scale = thumb.shape[1] / w
    mask = tissue_mask(thumb)
    planted = np.zeros_like(mask)
    for (x, y), (size, _, _) in truth.items():
        planted[int(y * scale):int((y + size) * scale), int(x * scale):int((x + size) * scale)] = True
    iou = (mask & planted).sum() / (mask | planted).sum()
    assert iou > 0.9
    # GeoJSON contours round-trip into the same mask
    gj = mask_to_geojson(mask, scale)
    p = path.with_suffix(".geojson")
    p.write_text(json.dumps(gj))
    back = load_roi_mask(p, mask.shape, scale)
    assert (back == mask).mean() > 0.97


def test_real_slide_roi_restricts_tiles(tmp_path):
    roi = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [[[0, 1500], [2220, 1500], [2220, 2967], [0, 2967], [0, 1500]]]}}]}
    p = tmp_path / "roi.geojson"
    p.write_text(json.dumps(roi))
    full = tile_slide(SAMPLE_SLIDE, 0.5, 256, thumb_size=512)
    part = tile_slide(SAMPLE_SLIDE, 0.5, 256, thumb_size=512, roi_geojson=p)
    assert 0 < len(part["coords"]) < len(full["coords"])
    assert (part["coords"][:, 1] >= 1500 - 256).all()


def test_geometry_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        geometry((1.0,), 0.5, 0.5, 64, 64)
