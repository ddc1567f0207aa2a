"""MPP from TIFF resolution tags (as OpenSlide 3.4 reports them), the override CSV, clear errors.

OpenSlide 4 derives ``openslide.mpp-x`` from the tags itself; OpenSlide 3.4 reports only
``tiff.XResolution`` / ``tiff.ResolutionUnit`` for generic TIFFs. The 3.4 case is reproduced by
hiding the ``openslide.mpp-*`` properties of a real OpenSlide handle, and OpenSlide 4's own value
on the same file is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology.slide import MissingMPPError, open_slide, read_mpp_csv, slide_mpp


class _AsOpenSlide34:
    """A real slide handle whose properties lack ``openslide.mpp-*`` (what OpenSlide 3.4 shows)."""

    def __init__(self, slide):
        self.properties = {k: v for k, v in slide.properties.items() if not k.startswith("openslide.mpp")}


def _write_tiff(path, resolution, unit, shape=(256, 256)):
    import tifffile

    rng = np.random.default_rng(0)
    rgb = (200 + 40 * rng.random((*shape, 3))).astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        kw = {} if resolution is None else {"resolution": resolution, "resolutionunit": unit}
        tif.write(rgb, tile=(128, 128), compression="zlib", photometric="rgb", **kw)
    return path


@pytest.mark.parametrize("resolution,unit,expected", [
    ((20000.0, 20000.0), "CENTIMETER", 0.5),           # 20000 px/cm = 0.5 um/px
    ((50800.0, 50800.0), "INCH", 0.5),                 # 50800 px/inch = 25400 / 50800 um/px
    ((40000.0, 40000.0), "CENTIMETER", 0.25),          # a 40x-like scan
    ((20000.0, 25000.0), "CENTIMETER", (0.5 + 0.4) / 2),  # anisotropic: the mean of x and y
])
def test_tiff_tags_give_mpp_like_openslide4(tmp_path, resolution, unit, expected):
    path = _write_tiff(tmp_path / "s.tiff", resolution, unit)
    s = open_slide(path)
    old = _AsOpenSlide34(s)
    assert "openslide.mpp-x" not in old.properties and old.properties["tiff.ResolutionUnit"] == unit.lower()
    got = slide_mpp(old, path)
    assert got == pytest.approx(expected, rel=1e-6)
    # the reference: OpenSlide 4 computes mpp-x / mpp-y from the same tags
    ref = (float(s.properties["openslide.mpp-x"]) + float(s.properties["openslide.mpp-y"])) / 2
    assert got == pytest.approx(ref, rel=1e-6)
    s.close()


def test_tags_without_a_unit_fall_back_to_the_csv_then_a_clear_error(tmp_path):
    path = _write_tiff(tmp_path / "nounit.tiff", (20000.0, 20000.0), "NONE")
    s = open_slide(path)
    assert "openslide.mpp-x" not in s.properties and s.properties["tiff.ResolutionUnit"] == "none"
    with pytest.raises(MissingMPPError, match=r"nounit\.tiff.*ResolutionUnit is 'none'.*nounit\.tiff,<microns"):
        slide_mpp(s, path)
    csv_path = tmp_path / "mpp.csv"
    csv_path.write_text("slide,mpp\nnounit,0.5\n")
    assert slide_mpp(s, path, read_mpp_csv(csv_path)) == 0.5
    s.close()


def test_override_csv_wins_over_tags(tmp_path):
    path = _write_tiff(tmp_path / "s.tiff", (20000.0, 20000.0), "CENTIMETER")
    csv_path = tmp_path / "mpp.csv"
    csv_path.write_text("slide,mpp\ns.tiff,0.25\n")
    s = open_slide(path)
    assert slide_mpp(_AsOpenSlide34(s), path, read_mpp_csv(csv_path)) == 0.25
    assert slide_mpp(s, path, read_mpp_csv(csv_path)) == 0.25
    s.close()


@pytest.mark.parametrize("as34", [False, True])
def test_a_72_dpi_default_is_refused_not_used(tmp_path, as34):
    path = _write_tiff(tmp_path / "dpi72.tiff", (72.0, 72.0), "INCH")
    s = open_slide(path)
    handle = _AsOpenSlide34(s) if as34 else s
    with pytest.raises(MissingMPPError, match=r"dpi72\.tiff: resolution 352\.8 um/px .* implausible"):
        slide_mpp(handle, path)
    s.close()


def test_tile_cli_names_the_slide_without_resolution_and_works_with_the_csv(tmp_path):
    from adaptome.domains.pathology.cli import app

    slides = tmp_path / "slides"
    slides.mkdir()
    _write_tiff(slides / "bad.tiff", (72.0, 72.0), "INCH", shape=(512, 512))
    _write_tiff(slides / "good.tiff", (20000.0, 20000.0), "CENTIMETER", shape=(512, 512))
    runner = CliRunner()
    args = ["tile", str(slides), "--out", str(tmp_path / "job"), "--tile-size", "128",
            "--set", "min_tissue=0.0", "--set", "thumb_size=128"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "bad.tiff" in lines[0] and "implausible" in lines[0] and "--mpp-csv" in lines[0]
    csv_path = tmp_path / "mpp.csv"
    csv_path.write_text("slide,mpp\nbad.tiff,0.5\n")
    res = runner.invoke(app, [*args, "--mpp-csv", str(csv_path)])
    assert res.exit_code == 0, res.output
    from adaptome.domains.pathology.tiling import read_coords

    for name in ("bad", "good"):  # both at 0.5 um/px: 512 / 128 = 4 x 4 tiles of 128 level-0 px
        coords, attrs = read_coords(tmp_path / "job" / "tiles_20x_128px_0ov" / f"{name}.h5")
        assert len(coords) == 16 and attrs["mpp"] == pytest.approx(0.5) and attrs["tile_size_level0"] == 128
