"""Heatmaps carry a colour bar and say their scale: tile colours follow the stated scale (0-100 % for
tile scores, the slide's min-max for attention), the bar is the colour map from its low to its high
end, and the PNG names the scale (drawn under the bar and as PNG text)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adaptome.domains.pathology.score import (
    SCORE_SCALE,
    colour_bar_box,
    heatmap_image,
    write_heatmaps,
)

ALPHA = 0.45


def _expected(grey: float, frac: float, cmap: str = "jet") -> np.ndarray:
    """The painted colour: (1 - alpha) * thumbnail + alpha * cmap(value on the scale)."""
    return (1 - ALPHA) * grey + ALPHA * np.asarray(matplotlib.colormaps[cmap](frac)[:3]) * 255.0


def _check_bar(png: np.ndarray, h: int, cmap: str = "jet") -> None:
    x0, y0, x1, y1 = colour_bar_box(png.shape[1])
    row = png[h + (y0 + y1) // 2, x0:x1].astype(float)
    ramp = np.asarray(matplotlib.colormaps[cmap](np.linspace(0, 1, x1 - x0)))[:, :3] * 255.0
    assert np.abs(row - ramp).max() <= 0.5 + 1e-9  # the colour map, low end left, high end right
    below = png[h + y1 + 4:, :].astype(int)
    assert (below.sum(2) < 300).any()  # tick values are drawn under the bar


def test_heatmap_paints_on_the_stated_scale_and_appends_the_bar():
    thumb = np.full((40, 80, 3), 200, np.uint8)
    coords = np.array([[0, 0], [20, 0], [40, 0], [60, 0]])  # level-0 px; scale 1: 20 px tiles in one row
    vals = np.array([0.0, 25.0, 50.0, 100.0])
    img = heatmap_image(thumb, 1.0, coords, 20.0, vals, 0.0, 100.0, "jet", ALPHA, SCORE_SCALE)
    assert img.shape == (40 + 44, 240, 3)  # narrow image padded to the bar's minimum width
    for (x, _), v in zip(coords, vals):
        np.testing.assert_allclose(img[10, x + 10], _expected(200, v / 100), atol=1.0)
    assert (img[:40, 80:] == 255).all() and (img[20:40, :80] == 200).all()  # padding; unpainted rows untouched
    _check_bar(img, 40)
    plain = heatmap_image(thumb, 1.0, coords, 20.0, vals, 0.0, 100.0, "jet", ALPHA, colour_bar=False)
    assert plain.shape == thumb.shape and np.array_equal(plain, img[:40, :80])


def _slide(tmp_path):
    from adaptome.domains.pathology.synth import write_pyramid_tiff

    rgb = np.full((256, 256, 3), 230, np.uint8)
    path = tmp_path / "s.tiff"
    write_pyramid_tiff(path, rgb, mpp=0.5, levels=1, tile=128)
    return path


def test_score_heatmaps_say_their_scale(tmp_path):
    slide = _slide(tmp_path)
    coords = np.array([[0, 0], [128, 0], [0, 128], [128, 128]])
    res = {"tiles": np.array([20.0, 40.0, 60.0, 80.0]), "attention": np.array([0.1, 0.2, 0.3, 0.4])}
    paths = write_heatmaps(slide, tmp_path, "s", coords, 128.0, res, thumb_size=256)
    score, att = (Image.open(p) for p in paths)
    assert score.text["scale"] == "sTIL tile score, 0-100 %"
    assert (score.text["vmin"], score.text["vmax"]) == ("0", "100")
    assert att.text["scale"].startswith("attention weight, min-max of this slide (0.1 to 0.4)")
    s, a = np.asarray(score.convert("RGB")), np.asarray(att.convert("RGB"))
    assert s.shape == a.shape == (256 + 44, 256, 3)
    for (x, y), v, w in zip(coords, res["tiles"], res["attention"]):
        cx, cy = x + 64, y + 64  # thumbnail scale 1: the centre of each 128 px tile
        np.testing.assert_allclose(s[cy, cx], _expected(230, v / 100), atol=1.0)  # 0-100 %, not min-max
        np.testing.assert_allclose(a[cy, cx], _expected(230, (w - 0.1) / 0.3), atol=1.0)  # min-max
    _check_bar(s, 256)
    _check_bar(a, 256)


@pytest.mark.parametrize("column,scale", [("score_pct", "sTIL tile score, 0-100 %"),
                                          ("attention", "attention weight, min-max of this slide (0.25 to 0.75)")])
def test_heatmap_cli_rerender_carries_the_bar(tmp_path, column, scale):
    from adaptome.domains.pathology.cli import app

    slide = _slide(tmp_path)
    tiles = tmp_path / "tiles.csv"
    tiles.write_text("x,y,size,score_pct,attention\n0,0,128,10,0.25\n128,128,128,90,0.75\n")
    out = tmp_path / f"{column}.png"
    r = CliRunner().invoke(app, ["heatmap", str(slide), str(tiles), "--out", str(out), "--column", column,
                                 "--thumb-size", "256"])
    assert r.exit_code == 0, r.output
    png = Image.open(out)
    assert png.text["scale"] == scale
    arr = np.asarray(png.convert("RGB"))
    lo = 0.0 if column == "score_pct" else 0.25
    span = 100.0 if column == "score_pct" else 0.5
    v = 10.0 if column == "score_pct" else 0.25
    np.testing.assert_allclose(arr[64, 64], _expected(230, (v - lo) / span), atol=1.0)
    _check_bar(arr, 256)
