"""The tiff-jpeg reader (raw JPEG tiles via tifffile, decoded by torchvision.io.decode_jpeg) against
OpenSlide on CPU: the same tiles to the last bit on JPEG pyramidal TIFFs written here (YCbCr and
Aperio-style RGB JPEG) and on the shipped Aperio slide (abbreviated streams + JPEGTables); the box
resize equals Pillow's; other slides fall back to OpenSlide; a corrupt tile is an error naming the
file; the one-gather tile cutting an accelerator uses equals the slice copies; the check that guards
a device decoder refuses one that disagrees with libjpeg. (Tolerance: 0 grey levels on CPU, where both
sides decode with libjpeg-turbo. The GPU test, marker ``gpu``, bounds nvJPEG's difference.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from adaptome.domains.pathology import readers_gpu
from adaptome.domains.pathology.readers_gpu import (
    DEVICE_CHECK_MAX_MEAN_DIFF,
    box_resize,
    box_taps,
    check_device_decoding,
    open_reader,
)
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


def _tiles_both(path, mpp0, target, size, torch_resize=None, gather=None):
    """(tiff-jpeg tiles, OpenSlide tiles) of every grid tile, B x T x T x 3 each."""
    s = open_slide(path)
    g = geometry(s.level_downsamples, mpp0, target, size)
    coords = grid(s.dimensions, g)
    reader, why = open_reader(path, g, s.level_dimensions, s.properties.get("openslide.vendor"), "cpu",
                              torch_resize, gather)
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
@pytest.mark.parametrize("gather", [False, True], ids=["paste", "gather"])
def test_tiles_equal_openslide_on_a_jpeg_pyramid(jpeg_pyramid, target, size, level, resized, gather):
    got, ref, g = _tiles_both(jpeg_pyramid, 0.25, target, size, torch_resize=resized == "torch", gather=gather)
    assert g.level == level and (g.read_size != size) == bool(resized) and len(ref) >= 9
    assert got.shape == ref.shape == (len(ref), size, size, 3)
    assert np.array_equal(got, ref)


def test_gather_reads_black_outside_the_level(jpeg_pyramid):
    # regions hanging over every edge of the level (and one wholly outside), cut by both methods
    s = open_slide(jpeg_pyramid)
    g = geometry(s.level_downsamples, 0.25, 0.5, 64)
    w, h = s.dimensions
    coords = np.array([[-40, -40], [w - 60, h - 30], [w - 10, 100], [100, h - 2], [w + 500, h + 500], [300, 300]])
    readers = [open_reader(jpeg_pyramid, g, s.level_dimensions, s.properties.get("openslide.vendor"), "cpu",
                           gather=gather)[0] for gather in (False, True)]
    paste, gather = (r.read_batch(coords).numpy() for r in readers)
    assert np.array_equal(paste, gather)
    assert not gather[4].any() and not gather[0][:20, :20].any() and gather[5].any()  # outside: black
    for r in readers:
        r.close()
    s.close()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_pipelined_encoding_equals_one_batch_at_a_time(jpeg_pyramid, device):
    # batches decoded one ahead in a thread (its own stream on a GPU), features copied to the host every
    # 2 batches; the reference reads the whole grid in one call (no decoder memory reused between calls)
    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.readers_gpu import encode_decoded

    reader, why = _reader(jpeg_pyramid, 0.25, 0.5, 64, device=device)
    assert reader is not None, why
    s = open_slide(jpeg_pyramid)
    coords = grid(s.dimensions, reader.geom)
    s.close()
    enc = build_encoder("timm:resnet18").to(device).eval()
    with torch.no_grad():
        want = enc(reader.read_batch(coords)).float().cpu()
    for _ in range(3):  # repeated: a race would not show every time
        got = encode_decoded(enc, reader, coords, batch_size=3, sync_every=2)
        assert len(coords) > 7 and got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    reader.close()


def test_switch_interval_gives_the_same_features_and_is_restored_even_on_failure(jpeg_pyramid):
    import sys

    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.readers_gpu import encode_decoded

    reader, why = _reader(jpeg_pyramid, 0.25, 0.5, 64)
    assert reader is not None, why
    s = open_slide(jpeg_pyramid)
    coords = grid(s.dimensions, reader.geom)
    s.close()
    enc = build_encoder("baseline").eval()
    before = sys.getswitchinterval()
    plain = encode_decoded(enc, reader, coords, batch_size=4)
    short = encode_decoded(enc, reader, coords, batch_size=4, switch_interval=before / 10)
    np.testing.assert_array_equal(plain, short)
    assert sys.getswitchinterval() == before

    def broken(tiles):
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        encode_decoded(broken, reader, coords, batch_size=4, switch_interval=before / 10)
    assert sys.getswitchinterval() == before
    reader.close()


def _reader(path, mpp0, target, size, device="cpu"):
    s = open_slide(path)
    g = geometry(s.level_downsamples, mpp0, target, size)
    out = open_reader(path, g, s.level_dimensions, s.properties.get("openslide.vendor"), device)
    s.close()
    return out


def test_device_check_refuses_a_decoder_that_disagrees_with_libjpeg(jpeg_pyramid, monkeypatch):
    reader, _ = _reader(jpeg_pyramid, 0.25, 0.5, 64)
    assert check_device_decoding(reader) == ""  # libjpeg against itself
    cpu_decode = reader._decode

    def wrong_colours(ks, device=None):  # a decoder applying a YCbCr -> RGB transform to R, G, B components
        t = cpu_decode(ks).float()  # (K, h, w, 3)
        r = t[..., 0] + 1.402 * (t[..., 2] - 128)
        g = t[..., 0] - 0.344 * (t[..., 1] - 128) - 0.714 * (t[..., 2] - 128)
        b = t[..., 0] + 1.772 * (t[..., 1] - 128)
        wrong = torch.stack([r, g, b], dim=-1).clamp(0, 255).to(torch.uint8)
        return wrong if device is None else cpu_decode(ks, device)

    monkeypatch.setattr(reader, "_decode", wrong_colours)
    why = check_device_decoding(reader)
    assert "differs from libjpeg by" in why and f"at most {DEVICE_CHECK_MAX_MEAN_DIFF:g}" in why
    reader.close()


def test_open_reader_checks_the_device_decoder_before_use(jpeg_pyramid, monkeypatch):
    seen = []

    def refuse(reader, n_tiles=4):
        seen.append(reader.device.type)
        return "the meta JPEG decoder differs from libjpeg"

    monkeypatch.setattr(readers_gpu, "check_device_decoding", refuse)
    reader, why = _reader(jpeg_pyramid, 0.25, 0.5, 64, device="meta")  # any non-CPU device is checked
    assert reader is None and why == "the meta JPEG decoder differs from libjpeg" and seen == ["meta"]
    reader, why = _reader(jpeg_pyramid, 0.25, 0.5, 64)  # the CPU decoder is libjpeg itself: no check
    assert reader is not None and seen == ["meta"]
    reader.close()


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
                                "--batch-size", "7", "--set", "reader=tiff-jpeg", "--set", "decode_threads=2"])
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
def test_gpu_luma_is_libjpegs_and_tiles_are_within_the_device_check(jpeg_pyramid):
    # nvJPEG's hardware decoder and libjpeg-turbo share the JPEG data but not the IDCT or the chroma
    # upsampling: the luma plane (no chroma involved) agrees within IDCT rounding; the RGB tiles differ
    # at colour edges and stay within the device check's mean bound
    from torchvision.io import ImageReadMode, decode_jpeg

    reader, why = _reader(jpeg_pyramid, 0.25, 0.5, 64, device="cuda")
    assert reader is not None, why
    ks = [k for k in range(len(reader.counts)) if reader.counts[k] > 0]
    data = [torch.frombuffer(bytearray(reader._stream(k)), dtype=torch.uint8) for k in ks]
    luma_gpu = torch.stack([t.cpu() for t in decode_jpeg(data, mode=ImageReadMode.GRAY, device="cuda")]).int()
    luma_cpu = torch.stack(decode_jpeg(data, mode=ImageReadMode.GRAY)).int()
    assert (luma_gpu - luma_cpu).abs().max() <= 3
    for target, size in ((0.5, 64), (0.6, 50)):
        s = open_slide(jpeg_pyramid)
        g = geometry(s.level_downsamples, 0.25, target, size)
        coords = grid(s.dimensions, g)
        reader, why = open_reader(jpeg_pyramid, g, s.level_dimensions, s.properties.get("openslide.vendor"), "cuda")
        assert reader is not None, why
        got = reader.read_batch(coords)
        assert got.is_cuda and got.dtype == torch.uint8
        ref = TileReader(jpeg_pyramid, g)
        diff = np.abs(got.cpu().numpy().astype(int) - np.stack([ref.read(int(x), int(y)) for x, y in coords]))
        assert diff.mean() <= DEVICE_CHECK_MAX_MEAN_DIFF, (diff.max(), diff.mean())
        reader.close()
        s.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_never_reads_aperio_rgb_jpeg_with_wrong_colours():
    # the shipped Aperio slide stores R, G, B JPEG components; nvJPEG's hardware decoder applies a YCbCr
    # transform to them (H200: 48 grey levels off on average), so the device check must leave the slide
    # to OpenSlide there; where a device decodes it right, the tiles must be within the check's bound
    reader, why = _reader(SAMPLE_SLIDE, 0.499, 0.499, 240, device="cuda")
    if reader is None:
        assert "differs from libjpeg by" in why
        return
    s = open_slide(SAMPLE_SLIDE)
    g = geometry(s.level_downsamples, 0.499, 0.499, 240)
    coords = grid(s.dimensions, g)
    s.close()
    ref = TileReader(SAMPLE_SLIDE, g)
    diff = np.abs(reader.read_batch(coords).cpu().numpy().astype(int)
                  - np.stack([ref.read(int(x), int(y)) for x, y in coords]))
    assert diff.mean() <= DEVICE_CHECK_MAX_MEAN_DIFF, (diff.max(), diff.mean())
    reader.close()


def test_share_chunks_deal_out_every_stream_once_in_order():
    from adaptome.domains.pathology.readers_gpu import share_chunks

    for n in (0, 1, 7, 64, 65):
        for share in (0.0, 0.3, 0.5, 1.0):
            for parts in (1, 3, 16):
                n_dev, spans = share_chunks(n, share, parts)
                assert n_dev == n - round(share * n)
                covered = [i for a, b in spans for i in range(a, b)]
                assert covered == list(range(n_dev, n))  # contiguous, in order, each once
                sizes = [b - a for a, b in spans]
                assert not sizes or max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("device,threads,share", [
    ("cpu", 2, 0.5),
    ("cpu", 5, 0.5),
    pytest.param("cuda", 4, 0.5, marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")]),
])
def test_decode_threads_give_the_same_tiles(jpeg_pyramid, device, threads, share):
    """Tiles decoded by CPU threads beside the device decoder (``decode_threads``): on a CPU device the same
    bits as one decoding thread; on a GPU the libjpeg share equals the CPU's bits and the whole is within the
    device check's tolerance of nvJPEG alone."""
    s = open_slide(jpeg_pyramid)
    g = geometry(s.level_downsamples, 0.25, 0.5, 64)
    coords = grid(s.dimensions, g)
    args = (jpeg_pyramid, g, s.level_dimensions, s.properties.get("openslide.vendor"), device)
    s.close()
    one, _ = open_reader(*args)
    many, _ = open_reader(*args, decode_threads=threads, cpu_share=share)
    cpu, _ = open_reader(*args[:-1], "cpu")
    try:
        for chunk in (coords[:5], coords, coords[3:4]):  # several batches, the pool reused; a one-tile batch
            a, b = one.read_batch(chunk).cpu(), many.read_batch(chunk).cpu()
            assert a.shape == b.shape == (len(chunk), 64, 64, 3)
            if device == "cpu":
                assert torch.equal(a, b)
            else:
                ref = cpu.read_batch(chunk)
                assert float((b.int() - a.int()).abs().float().mean()) <= DEVICE_CHECK_MAX_MEAN_DIFF
                assert float((b.int() - ref.int()).abs().float().mean()) <= DEVICE_CHECK_MAX_MEAN_DIFF
    finally:
        for r in (one, many, cpu):
            r.close()
    with pytest.raises(SlideError, match="decode_threads must be 0 or more"):
        open_reader(*args, decode_threads=-1)
