"""The tiff-jpeg reader (raw JPEG tiles via tifffile, decoded by torchvision.io.decode_jpeg) against
OpenSlide on CPU: the same tiles to the last bit on JPEG pyramidal TIFFs written here (YCbCr and
Aperio-style RGB JPEG) and on the shipped Aperio slide (abbreviated streams + JPEGTables); the box
resize equals Pillow's; other slides fall back to OpenSlide; a corrupt tile is an error naming the
file. (Tolerance: 0 grey levels on CPU, where both sides decode with libjpeg-turbo. nvJPEG on a GPU
may differ by a few levels; that is not measured here.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from adaptome.domains.pathology.readers_gpu import box_resize, box_taps, open_reader
from adaptome.domains.pathology.slide import SAMPLE_SLIDE, SlideError, open_slide
from adaptome.domains.pathology.synth import render_slide, write_pyramid_tiff
from adaptome.domains.pathology.tiling import TileReader, geometry, grid


def test_box_resize_equals_pillow_box():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(4, 200))
        extent = float(n - 0.99 * rng.random())
        t = int(rng.integers(2, n + 10))
        a = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a).resize((t, t), Image.BOX, box=(0, 0, extent, extent)))
        got = box_resize(torch.from_numpy(a)[None], box_taps(n, extent, t))[0].numpy()  # (1, n, n, 3) -> (t, t, 3)
        assert np.array_equal(got, ref), (n, extent, t)


def _tiles_both(path, mpp0, target, size, torch_resize=None):
    """(tiff-jpeg tiles, OpenSlide tiles) of every grid tile, B x T x T x 3 each."""
    s = open_slide(path)
    g = geometry(s.level_downsamples, mpp0, target, size)
    coords = grid(s.dimensions, g)
    reader, why = open_reader(path, g, s.level_dimensions, s.properties.get("openslide.vendor"), "cpu",
                              torch_resize)
    s.close()
    assert reader is not None, why
    got = reader.read_batch(coords).numpy()
    reader.close()
    ref = TileReader(path, g)
    return got, np.stack([ref.read(int(x), int(y)) for x, y in coords]), g


@pytest.fixture(scope="module")
def jpeg_pyramid(tmp_path_factory):
    rgb, _ = render_slide(np.random.default_rng(1), grid=5, cell_px=64)  # 320 x 320 at 0.5 um/px
    rgb = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)  # (H, W, 3) -> (2H, 2W, 3): a 40x-like 0.25 um/px slide
    path = tmp_path_factory.mktemp("jpeg") / "j.tiff"
    write_pyramid_tiff(path, rgb, mpp=0.25, levels=3, tile=128, compression="jpeg")
    return path


@pytest.mark.parametrize("target,size,level,resized", [
    (0.25, 96, 0, False),   # full resolution, tiles straddle TIFF tiles
    (0.5, 64, 1, False),    # 20x from level 1
    (1.0, 40, 2, False),    # 10x from level 2 (the last TIFF tiles are partial)
    (0.6, 50, 1, True),     # a fractional box resize from level 1 (Pillow's, as on a CPU)
    (0.6, 50, 1, "torch"),  # the same with the torch box resize an accelerator uses
])
def test_tiles_equal_openslide_on_a_jpeg_pyramid(jpeg_pyramid, target, size, level, resized):
    got, ref, g = _tiles_both(jpeg_pyramid, 0.25, target, size, torch_resize=resized == "torch")
    assert g.level == level and (g.read_size != size) == bool(resized) and len(ref) >= 9
    assert got.shape == ref.shape == (len(ref), size, size, 3)
    assert np.array_equal(got, ref)


def test_aperio_rgb_jpeg_with_tables_equals_openslide():
    # the shipped slide: abbreviated JPEG tiles + JPEGTables, photometric RGB (no YCbCr conversion)
    for target, size in ((0.499, 240), (0.5, 256)):
        got, ref, g = _tiles_both(SAMPLE_SLIDE, 0.499, target, size)
        assert np.array_equal(got, ref)
    assert g.read_size == 257  # the 0.5 um/px case went through the box resize


def test_rgb_photometric_tiff_equals_openslide(tmp_path):
    import tifffile

    rgb, _ = render_slide(np.random.default_rng(2), grid=4, cell_px=64)
    path = tmp_path / "rgb.tiff"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(128, 128), compression="jpeg", photometric="rgb",
                  compressionargs={"outcolorspace": "RGB"}, resolution=(20000.0, 20000.0), resolutionunit="CENTIMETER")
    assert tifffile.TiffFile(path).pages[0].photometric == 2
    got, ref, _ = _tiles_both(path, 0.5, 0.5, 64)
    assert np.array_equal(got, ref)


def test_other_slides_are_left_to_openslide(tmp_path):
    rgb, _ = render_slide(np.random.default_rng(3), grid=4, cell_px=64)
    path = tmp_path / "z.tiff"
    write_pyramid_tiff(path, rgb, mpp=0.5, levels=2, tile=128, compression="zlib")
    s = open_slide(path)
    g = geometry(s.level_downsamples, 0.5, 0.5, 64)
    reader, why = open_reader(path, g, s.level_dimensions, s.properties.get("openslide.vendor"), "cpu")
    assert reader is None and "not JPEG" in why
    reader, why = open_reader(path, g, s.level_dimensions, "hamamatsu", "cpu")
    assert reader is None and "hamamatsu" in why


def test_a_corrupt_jpeg_tile_names_the_file(tmp_path):
    import tifffile

    rgb, _ = render_slide(np.random.default_rng(4), grid=4, cell_px=64)
    path = tmp_path / "bad.tiff"
    write_pyramid_tiff(path, rgb, mpp=0.5, levels=2, tile=128, compression="jpeg")
    page = tifffile.TiffFile(path).pages[0]
    off, n = int(page.dataoffsets[1]), int(page.databytecounts[1])
    data = bytearray(path.read_bytes())
    data[off + 2:off + n] = bytes(n - 2)  # keep the SOI marker, zero the rest of tile 1
    path.write_bytes(bytes(data))
    s = open_slide(path)
    g = geometry(s.level_downsamples, 0.5, 0.5, 64)
    reader, _ = open_reader(path, g, s.level_dimensions, s.properties.get("openslide.vendor"), "cpu")
    with pytest.raises(SlideError, match=r"bad\.tiff: level 0: cannot decode a JPEG tile"):
        reader.read_batch(grid(s.dimensions, g))
    reader.close()


def test_extract_cli_with_the_tiff_jpeg_reader_equals_openslide(tmp_path, caplog):
    import shutil

    from typer.testing import CliRunner

    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.cli import app
    from adaptome.domains.pathology.config import TileConfig
    from adaptome.domains.pathology.extract import read_features

    slides = tmp_path / "slides"
    slides.mkdir()
    for i, comp in enumerate(("jpeg", "jpeg", "zlib")):
        rgb, _ = render_slide(np.random.default_rng(10 + i), grid=5, cell_px=64)
        write_pyramid_tiff(slides / f"s{i}.tiff", rgb, mpp=0.5, levels=2, tile=128, compression=comp)
    stages.tile(TileConfig(slides=str(slides), out_dir=str(tmp_path / "a"), tile_size=64, thumb_size=128),
                progress=False)
    a = tmp_path / "a" / "tiles_20x_64px_0ov"
    b = tmp_path / "b"
    shutil.copytree(a, b)
    runner = CliRunner()
    r = runner.invoke(app, ["extract", str(slides), "--tiles-dir", str(a), "--num-workers", "0"])
    assert r.exit_code == 0, r.output
    with caplog.at_level(logging.WARNING):
        r = runner.invoke(app, ["extract", str(slides), "--tiles-dir", str(b), "--num-workers", "0",
                                "--batch-size", "7", "--set", "reader=tiff-jpeg"])
    assert r.exit_code == 0, r.output
    assert any("s2.tiff: read with OpenSlide, not tiff-jpeg" in m and "not JPEG" in m for m in caplog.messages)
    for i in range(3):
        fa, ca, _ = read_features(a / "features_baseline" / f"s{i}.h5")
        fb, cb, attrs = read_features(b / "features_baseline" / f"s{i}.h5")
        assert len(fa) > 5 and np.array_equal(ca, cb)
        np.testing.assert_array_equal(fb, fa)  # the same tiles, so the same features
        assert attrs.get("reader") == ("tiff-jpeg" if i < 2 else None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decoding_is_within_jpeg_tolerance_of_openslide(jpeg_pyramid):
    # nvJPEG's IDCT and upsampling are not libjpeg-turbo's: allowed up to 8 grey levels at a pixel and
    # a mean absolute difference below 1 grey level (the same JPEG data, decoded twice)
    s = open_slide(jpeg_pyramid)
    for target, size in ((0.5, 64), (0.6, 50)):
        g = geometry(s.level_downsamples, 0.25, target, size)
        coords = grid(s.dimensions, g)
        reader, why = open_reader(jpeg_pyramid, g, s.level_dimensions, s.properties.get("openslide.vendor"), "cuda")
        assert reader is not None, why
        got = reader.read_batch(coords)
        assert got.is_cuda and got.dtype == torch.uint8
        ref = TileReader(jpeg_pyramid, g)
        diff = np.abs(got.cpu().numpy().astype(int) - np.stack([ref.read(int(x), int(y)) for x, y in coords]))
        assert diff.max() <= 8 and diff.mean() < 1.0, (diff.max(), diff.mean())
    s.close()
