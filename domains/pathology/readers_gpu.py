"""Tile decoding off the CPU path: raw JPEG tiles of a pyramidal TIFF decoded on the encoder's device.

``extract --set reader=tiff-jpeg``: the compressed tiles a batch of slide tiles needs are read as
bytes with ``tifffile`` (offsets and byte counts of the level's TIFF page, ``JPEGTables`` merged in
front of abbreviated streams) and decoded together by ``torchvision.io.decode_jpeg`` on the
device: nvJPEG on a GPU, libjpeg-turbo on the CPU (so the path runs, and is tested, without a GPU).
The tiles of the batch are then cut out of the decoded TIFF tiles and resized with
the same box filter as the OpenSlide path (on an accelerator ``box_resize`` reproduces Pillow's
``Image.BOX`` with torch ops, fixed-point weights and rounding included; on the CPU Pillow itself
does it, faster there), so a batch goes to the encoder as B x T x T x 3 uint8 already on the device.

Where the reader applies: OpenSlide vendors ``generic-tiff`` and ``aperio`` (their pyramid levels
are the TIFF's tiled pages, checked against OpenSlide's level sizes), 8-bit 3-sample contiguous
JPEG tiles, photometric YCbCr or RGB (Aperio's RGB JPEG is decoded without colour conversion by
marking the stream with an Adobe APP14 "no transform" segment, as libtiff does). Anything else
(JPEG 2000 SVS, NDPI, MRXS, zlib / LZW TIFFs, other vendors) falls back to OpenSlide, slide by
slide, with a warning naming the slide and the reason; the feature file records which reader
made it (attribute ``reader``).

Agreement with OpenSlide (tested on CPU): tiles equal to the last bit where a tile starts on a
whole pixel of its level (every level of the synthetic and 20x / 40x grids); equal within 1 grey
level after a fractional box resize. A tile whose level-0 corner divided by the level's downsample
is fractional (e.g. Aperio levels at downsample 4.0002) is placed at the nearest pixel, while
OpenSlide shifts it by the sub-pixel remainder with bilinear filtering: up to half a pixel apart.
On a GPU (measured on an H200, torchvision 0.26, nvJPEG's hardware decoder; ``benchmarks/pathology_decode``):
the luma plane equals libjpeg-turbo's to the last bit, and the RGB tiles differ from OpenSlide's by
2.6 grey levels on average (37 at most, at colour edges): nvJPEG upsamples chroma without libjpeg's
smoothing. Aperio's RGB JPEG (Adobe "no transform" marker added) came out wrong in both modes tried:
up to 254 grey levels off in RGB mode, 48 on average in UNCHANGED mode. So before a reader is used on an accelerator,
``check_device_decoding`` compares the device's decoding of the slide's 4 largest tiles with libjpeg's
and leaves the slide to OpenSlide when they differ by more than ``DEVICE_CHECK_MAX_MEAN_DIFF`` on
average (on the H200: the shipped Aperio RGB slide is left to OpenSlide; the synthetic YCbCr TIFFs pass).

Dimension letters: B tiles in a batch, K decoded TIFF tiles, h, w TIFF tile height / width,
n side of the region read at the level, T tile side.

During extraction the next batch is read and decoded in a background thread (on its own CUDA
stream on a GPU) while the encoder runs on the current one.

``decode_threads`` CPU threads (libjpeg-turbo releases the GIL) can decode a fixed share of each batch's JPEG
tiles at the same time as nvJPEG (``TiffJpegReader._split``). Measured on an H200 with 14 threads
(``benchmarks/pathology_decode``, run ``h200-steady``) it did not help: ResNet-18 extraction, of the forward-only
rate, at best 0.54-0.58 with a CPU share against 0.53-0.55 with the device's decoder alone on one slide, 0.35-0.36
against 0.41-0.46 on the other. There, GPU decoding and the encoder share the device
(``results_gpu_overlap.md``): extraction stays near half of the forward rate.

Not covered: cuCIM (a WSI reader with its own GPU decoding; not installable on CPU machines), JPEG
2000 tiles (nvJPEG2000), scoring on the fly (``score`` reads through
OpenSlide). torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; the call
used here (``decode_jpeg`` on a list, with ``device``) still works and is tested.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adaptome.domains.pathology.slide import SlideError

#: extraction readers by name (``ExtractConfig.reader``)
READERS = ("openslide", "tiff-jpeg")
#: OpenSlide vendors whose pyramid levels are plain tiled TIFF pages
_VENDORS = ("generic-tiff", "aperio")
#: Adobe APP14 segment, transform 0: the three JPEG components are R, G, B (no YCbCr conversion)
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
#: the largest mean absolute difference (grey levels) allowed between the device's JPEG decoder and
#: libjpeg on a slide's check tiles (``check_device_decoding``). Two correct decoders differ by their
#: IDCT and chroma upsampling (nvJPEG's hardware decoder does not smooth upsampled chroma as libjpeg's
#: "fancy upsampling" does): a few grey levels on average, more at sharp colour edges. A wrong colour
#: transform or a misread stream moves the average by tens of levels.
DEVICE_CHECK_MAX_MEAN_DIFF = 4.0
#: Pillow's fixed-point precision for 8-bit resampling (``PRECISION_BITS`` in Resample.c)
_PRECISION = 32 - 8 - 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LevelTiles:
    """Where the JPEG tiles of one pyramid level lie in the TIFF file."""

    width: int  # level size in pixels
    height: int
    tile_w: int  # TIFF tile size in pixels
    tile_h: int
    offsets: np.ndarray  # byte offset of each TIFF tile, row-major
    counts: np.ndarray  # byte count of each TIFF tile
    tables: bytes  # JPEGTables (SOI, DQT / DHT, EOI) shared by abbreviated tile streams, or b""
    rgb: bool  # photometric RGB: the JPEG components are R, G, B (no YCbCr conversion)


def level_page(path: str | os.PathLike, level_dimensions, level: int, vendor: str | None):
    """(``LevelTiles`` of OpenSlide level ``level``, "") when the tiff-jpeg reader can decode it, else
    (None, why not)."""
    import tifffile

    if vendor not in _VENDORS:
        return None, f"OpenSlide vendor {vendor!r} is not one of {', '.join(_VENDORS)}"
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError) as e:
        return None, f"not a TIFF tifffile reads ({e})"
    with tif:
        pages = [p for p in tif.pages if p.is_tiled]  # OpenSlide's levels: the tiled pages, largest first
        pages.sort(key=lambda p: -p.imagewidth)
        if len(pages) != len(level_dimensions):
            return None, f"{len(pages)} tiled TIFF pages for {len(level_dimensions)} OpenSlide levels"
        p = pages[level]
        if (p.imagewidth, p.imagelength) != tuple(level_dimensions[level]):
            return None, (f"level {level} is {p.imagewidth}x{p.imagelength} in the TIFF, "
                          f"{level_dimensions[level]} in OpenSlide")
        if p.compression != 7:
            return None, f"level {level} compression is {p.compression.name}, not JPEG"
        if p.samplesperpixel != 3 or p.bitspersample != 8 or p.planarconfig != 1 or p.photometric not in (2, 6):
            return None, f"level {level} is not 8-bit contiguous RGB / YCbCr"
        if p.imagedepth > 1 or p.tiledepth > 1:
            return None, f"level {level} is a volume"
        if len(p.dataoffsets) != -(-p.imagewidth // p.tilewidth) * -(-p.imagelength // p.tilelength):
            return None, f"level {level} has {len(p.dataoffsets)} tile offsets, not one per tile"
        tables = p.jpegtables
        return LevelTiles(p.imagewidth, p.imagelength, p.tilewidth, p.tilelength,
                          np.asarray(p.dataoffsets, np.int64), np.asarray(p.databytecounts, np.int64),
                          bytes(tables) if tables is not None else b"", p.photometric == 2), ""


class TiffJpegReader:
    """Batches of tiles of one slide level, decoded on ``device``; see the module docstring."""

    def __init__(self, path: str | os.PathLike, geom, page: LevelTiles, device: str | torch.device = "cpu",
                 torch_resize: bool | None = None, gather: bool | None = None, decode_threads: int = 0,
                 cpu_share: float = 0.5):
        self.path, self.geom, self.device = Path(path), geom, torch.device(device)
        #: CPU threads (libjpeg-turbo, which runs without the GIL) that decode ``cpu_share`` of each batch's JPEG
        #: tiles beside the device's decoder (``_split``). The share is fixed, not fitted to measured rates, so
        #: the same tiles go to the same decoder on every run (nvJPEG and libjpeg differ by a few grey levels)
        self.decode_threads = int(decode_threads)
        if self.decode_threads < 0:
            raise SlideError(f"decode_threads must be 0 or more, got {decode_threads}")
        if not 0.0 <= cpu_share <= 1.0:
            raise SlideError(f"the CPU decoding share must be within 0..1, got {cpu_share}")
        self.cpu_share = 1.0 if self.device.type == "cpu" else float(cpu_share)  # a CPU device: all of it
        self._pool = None
        # the box resize: torch ops on an accelerator; on the CPU Pillow's own (same numbers, one fused C loop)
        self.torch_resize = self.device.type != "cpu" if torch_resize is None else torch_resize
        self.width, self.height = page.width, page.height
        self.tw, self.th = page.tile_w, page.tile_h
        self.nx, self.ny = -(-self.width // self.tw), -(-self.height // self.th)
        self.offsets, self.counts, self.tables = page.offsets, page.counts, page.tables
        if self.tables and not (self.tables.startswith(b"\xff\xd8") and self.tables.endswith(b"\xff\xd9")):
            raise SlideError(f"{self.path}: JPEGTables of level {geom.level} are not a JPEG tables stream")
        self.rgb = page.rgb
        self.fd = os.open(self.path, os.O_RDONLY)
        n, t = geom.read_size, geom.tile_size
        exact = geom.size0 / geom.level_downsample
        self.taps = None if (n == t and abs(exact - n) < 1e-9) else box_taps(n, exact, t, self.device)
        # cutting tiles out of the decoded TIFF tiles: one gather on an accelerator (few kernel launches),
        # slice copies on the CPU (no index tensors to build there)
        self.gather = self.device.type != "cpu" if gather is None else gather

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _stream(self, k: int) -> bytes:
        """TIFF tile ``k`` as a complete JPEG stream."""
        raw = os.pread(self.fd, int(self.counts[k]), int(self.offsets[k]))
        if len(raw) != self.counts[k] or not raw.startswith(b"\xff\xd8"):
            raise SlideError(f"{self.path}: level {self.geom.level} tile {k} at byte {self.offsets[k]} is not a "
                             f"JPEG stream (truncated or corrupt file)")
        if self.tables:
            raw = self.tables[:-2] + raw[2:]  # SOI + tables (without their EOI) + the tile after its SOI
        if self.rgb:
            raw = raw[:2] + _ADOBE_RGB + raw[2:]
        return raw

    def _decode(self, ks: list[int], device: torch.device | None = None) -> torch.Tensor:
        """TIFF tiles ``ks`` decoded together on ``device`` (default: the reader's): K x h x w x 3 uint8."""
        from torchvision.io import ImageReadMode, decode_jpeg

        dev = self.device if device is None else device
        todo = [i for i, k in enumerate(ks) if self.counts[k] > 0]  # a tile the file leaves out reads as blank
        if len(todo) < len(ks) or not ks:
            out = torch.zeros((len(ks), self.th, self.tw, 3), dtype=torch.uint8, device=dev)  # (K, h, w, 3)
        if not todo:
            return out
        data = [torch.frombuffer(bytearray(self._stream(ks[i])), dtype=torch.uint8) for i in todo]
        if dev.type == "cuda":
            # torchvision's decoder writes on its own stream into memory it allocates now, without waiting
            # for this stream: memory freed by tensors that queued kernels here still read (the previous
            # batch's decoded tiles, say) could be overwritten under them. Let those kernels finish first.
            torch.cuda.current_stream(dev).synchronize()
        try:
            if self.decode_threads and dev == self.device:
                stacked = self._split(data, [ks[i] for i in todo])  # (K', 3, h, w)
            else:
                imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)
                self._check_shapes(imgs, [ks[i] for i in todo])
                stacked = torch.stack(imgs)  # K' x (3, h, w) -> (K', 3, h, w)
        except RuntimeError as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SlideError(f"{self.path}: level {self.geom.level}: cannot decode a JPEG tile ({why})") from None
        if len(todo) == len(ks):
            return stacked.permute(0, 2, 3, 1)  # (K, 3, h, w) -> (K, h, w, 3)
        out[todo] = stacked.permute(0, 2, 3, 1)  # (K', 3, h, w) -> (K', h, w, 3)
        return out

    def _check_shapes(self, imgs: list[torch.Tensor], ks: list[int]) -> None:
        """A ``SlideError`` naming the first TIFF tile of ``ks`` whose image is not 3 x the TIFF tile size."""
        for k, im in zip(ks, imgs):
            if tuple(im.shape) != (3, self.th, self.tw):
                raise SlideError(f"{self.path}: level {self.geom.level} tile {k} decodes to "
                                 f"{tuple(im.shape)}, not 3 x the TIFF tile size {(self.th, self.tw)}")

    def _split(self, data: list[torch.Tensor], ks: list[int]) -> torch.Tensor:
        """The streams ``data`` (of TIFF tiles ``ks``) decoded by ``decode_threads`` CPU threads beside the
        device, at the same time: the last ``cpu_share`` of them go to the threads in equal chunks, the rest to
        the device's decoder in this thread. Returns K x 3 x h x w uint8 on the reader's device, in the streams'
        order. Each CPU thread stacks its images into its slice of one pinned host buffer, which goes to the
        device in one asynchronous copy (one small synchronous copy per image cost about as much as the
        decoding). On a CPU device this thread decodes one more chunk, so a batch is decoded by
        ``decode_threads + 1`` threads."""
        from concurrent.futures import ThreadPoolExecutor

        from torchvision.io import ImageReadMode, decode_jpeg

        cpu_dev = self.device.type == "cpu"
        n_dev, spans = share_chunks(len(data), self.cpu_share, self.decode_threads + (1 if cpu_dev else 0))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="jpeg-cpu")
        host = torch.empty((len(data) - n_dev, 3, self.th, self.tw), dtype=torch.uint8,
                           pin_memory=not cpu_dev)  # (K_cpu, 3, h, w) the CPU share

        def on_cpu(a: int, b: int) -> None:  # streams a..b decoded by libjpeg into their rows of ``host``
            imgs = decode_jpeg(data[a:b], mode=ImageReadMode.RGB)
            self._check_shapes(imgs, ks[a:b])
            torch.stack(imgs, out=host[a - n_dev:b - n_dev])  # (b - a, 3, h, w)

        if cpu_dev:  # this thread takes the first chunk
            (a0, b0), spans = spans[0], spans[1:]
        futs = [self._pool.submit(on_cpu, a, b) for a, b in spans]
        if cpu_dev:
            on_cpu(a0, b0)
            for f in futs:
                f.result()
            return host
        head = None
        if n_dev:
            imgs = decode_jpeg(data[:n_dev], mode=ImageReadMode.RGB, device=self.device)
            self._check_shapes(imgs, ks[:n_dev])
            head = torch.stack(imgs)  # (n_dev, 3, h, w) on the device
        for f in futs:
            f.result()
        tail = host.to(self.device, non_blocking=True)  # (K_cpu, 3, h, w); the host block is kept until copied
        return tail if head is None else torch.cat([head, tail])  # (K, 3, h, w)

    def plan(self, coords: np.ndarray):
        """For tiles with level-0 top-left ``coords`` (B x 2): their level corners ``lx``, ``ly`` (B,), each
        region's clipped span (x, y, x0, y0, x1, y1), and the sorted TIFF tiles the regions overlap."""
        n = self.geom.read_size
        coords = np.asarray(coords, np.float64).reshape(-1, 2)
        lx = np.rint(coords[:, 0] / self.geom.level_downsample).astype(np.int64)  # level pixels, nearest
        ly = np.rint(coords[:, 1] / self.geom.level_downsample).astype(np.int64)
        # per tile: the TIFF tiles its n x n region overlaps, clipped to the level (outside stays black)
        spans = []
        for x, y in zip(lx.tolist(), ly.tolist()):
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + n, self.width), min(y + n, self.height)
            spans.append((x, y, x0, y0, x1, y1))
        needed = sorted({ty * self.nx + tx for x, y, x0, y0, x1, y1 in spans if x1 > x0 and y1 > y0
                         for ty in range(y0 // self.th, (y1 - 1) // self.th + 1)
                         for tx in range(x0 // self.tw, (x1 - 1) // self.tw + 1)})
        return lx, ly, spans, needed

    def read_batch(self, coords: np.ndarray) -> torch.Tensor:
        """The tiles with level-0 top-left ``coords`` (B x 2) as B x T x T x 3 uint8 on the device."""
        g = self.geom
        lx, ly, spans, needed = self.plan(coords)
        tiles = self._decode(needed)  # (K, h, w, 3)
        region = self._gather(tiles, needed, lx, ly) if self.gather else self._paste(tiles, needed, spans)
        if self.taps is None:
            return region
        if self.torch_resize:
            return box_resize(region, self.taps)
        from PIL import Image

        t, exact = g.tile_size, g.size0 / g.level_downsample
        box = (0, 0, exact, exact)
        return torch.from_numpy(np.stack([np.asarray(Image.fromarray(r).resize((t, t), Image.BOX, box=box))
                                          for r in region.numpy()]))

    def _paste(self, tiles: torch.Tensor, needed: list[int], spans: list[tuple]) -> torch.Tensor:
        """B x n x n x 3: each region pasted from the TIFF tiles it overlaps, one slice copy per overlap."""
        n = self.geom.read_size
        pos = {k: i for i, k in enumerate(needed)}
        region = torch.zeros((len(spans), n, n, 3), dtype=torch.uint8, device=tiles.device)  # (B, n, n, 3)
        for b, (x, y, x0, y0, x1, y1) in enumerate(spans):
            for ty in range(y0 // self.th, (y1 - 1) // self.th + 1) if y1 > y0 else ():
                for tx in range(x0 // self.tw, (x1 - 1) // self.tw + 1) if x1 > x0 else ():
                    # the overlap of the region and TIFF tile (tx, ty), in level pixels
                    ax, ay = max(x0, tx * self.tw), max(y0, ty * self.th)
                    bx, by = min(x1, (tx + 1) * self.tw), min(y1, (ty + 1) * self.th)
                    ox, oy = tx * self.tw, ty * self.th  # the TIFF tile's corner
                    t = tiles[pos[ty * self.nx + tx]]
                    region[b, ay - y:by - y, ax - x:bx - x] = t[ay - oy:by - oy, ax - ox:bx - ox]
        return region

    def _gather(self, tiles: torch.Tensor, needed: list[int], lx: np.ndarray, ly: np.ndarray) -> torch.Tensor:
        """B x n x n x 3: the same regions as ``_paste`` in one gather. Pixel (b, i, j) lies at level
        (ly_b + i, lx_b + j), in TIFF tile (row // h, col // w) at (row % h, col % w); pixels outside
        the level read an all-black extra tile."""
        n, dev, outside = self.geom.read_size, tiles.device, self.nx * self.ny
        tiles = torch.cat([tiles, tiles.new_zeros((1,) + tuple(tiles.shape[1:]))])  # (K + 1, h, w, 3)
        # sorted TIFF tile indices of the rows of ``tiles``; the last one (beyond every tile) is outside
        keys = torch.tensor(needed + [outside], dtype=torch.int64, device=dev)  # (K + 1,)
        rows = ly[:, None] + np.arange(n)[None, :]  # (B, n) level rows
        cols = lx[:, None] + np.arange(n)[None, :]  # (B, n) level columns
        ty = np.where((rows >= 0) & (rows < self.height), rows // self.th, -1)  # (B, n) TIFF tile row; -1 outside
        tx = np.where((cols >= 0) & (cols < self.width), cols // self.tw, -1)  # (B, n) TIFF tile column
        ty, tx = torch.from_numpy(ty).to(dev), torch.from_numpy(tx).to(dev)
        flat = ty[:, :, None] * self.nx + tx[:, None, :]  # (B, n, n) TIFF tile index
        flat = flat.masked_fill_((ty[:, :, None] < 0) | (tx[:, None, :] < 0), outside)
        which = torch.searchsorted(keys, flat)  # (B, n, n) row of ``tiles``: every inside tile is in ``needed``
        yy = torch.from_numpy(rows % self.th).to(dev)  # (B, n) row inside the TIFF tile
        xx = torch.from_numpy(cols % self.tw).to(dev)  # (B, n) column inside the TIFF tile
        return tiles[which, yy[:, :, None], xx[:, None, :]]  # (B, n, n, 3)


def share_chunks(n: int, cpu_share: float, parts: int) -> tuple[int, list[tuple[int, int]]]:
    """How ``TiffJpegReader._split`` deals out ``n`` streams: the first ``n_dev`` to the device, the last
    ``round(cpu_share * n)`` in ``parts`` contiguous chunks of sizes differing by at most one (empty ones
    left out); returns (n_dev, [(start, stop), ...])."""
    n_dev = n - int(round(cpu_share * n))
    edges = np.linspace(n_dev, n, parts + 1).round().astype(int)  # chunk edges of the CPU share
    return n_dev, [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def box_taps(n_in: int, extent: float, n_out: int, device: str | torch.device = "cpu"):
    """Pillow's ``Image.BOX`` weights for resizing the input span [0, ``extent``) of ``n_in`` pixels
    to ``n_out`` (``precompute_coeffs`` + ``normalize_coeffs_8bpc`` in Pillow's Resample.c): output
    pixel i averages the input pixels whose centres fall in its footprint, weights in fixed point
    with ``_PRECISION`` bits. Returns (index n_out x K int64, weight n_out x K int64)."""
    scale = float(np.float32(extent)) / n_out  # Pillow takes the box as C floats
    support = 0.5 * max(scale, 1.0)
    ss = 1.0 / max(scale, 1.0)
    ksize = int(np.ceil(support)) * 2 + 1
    idx = np.zeros((n_out, ksize), np.int64)
    wts = np.zeros((n_out, ksize), np.int64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        w = np.array([1.0 if -0.5 < (x + xmin - center + 0.5) * ss <= 0.5 else 0.0 for x in range(xmax)])
        w = w / w.sum() if w.sum() else w
        idx[i, :xmax] = xmin + np.arange(xmax)
        idx[i, xmax:] = xmin
        wts[i, :xmax] = np.where(w < 0, np.trunc(-0.5 + w * (1 << _PRECISION)), np.trunc(0.5 + w * (1 << _PRECISION)))
    return torch.from_numpy(idx).to(device), torch.from_numpy(wts).to(device)


def _box_pass(x: torch.Tensor, idx: torch.Tensor, wts: torch.Tensor) -> torch.Tensor:
    """One Pillow box pass along dim 1 of B x n x m x 3 uint8 -> B x T x m x 3 uint8 (whole rows are
    gathered per tap, which is fast on every device)."""
    acc = torch.full((x.shape[0], idx.shape[0], x.shape[2], x.shape[3]), 1 << (_PRECISION - 1), dtype=torch.int32,
                     device=x.device)
    for k in range(idx.shape[1]):
        acc += x.index_select(1, idx[:, k]).to(torch.int32) * wts[:, k][None, :, None, None]
    return (acc >> _PRECISION).clamp_(0, 255).to(torch.uint8)


def box_resize(x: torch.Tensor, taps) -> torch.Tensor:
    """Resize B x n x n x 3 uint8 to B x T x T x 3 with ``box_taps``: the horizontal pass, rounded to
    uint8, then the vertical pass (Pillow's order and rounding). Sums fit int32: weights sum to
    2^22 and pixels are below 2^8."""
    idx, wts = taps
    wts = wts.to(torch.int32)
    x = _box_pass(x.transpose(1, 2).contiguous(), idx, wts)  # columns as rows: (B, n, n, 3) -> (B, T, n, 3)
    return _box_pass(x.transpose(1, 2).contiguous(), idx, wts)  # back: (B, n, T, 3) -> (B, T, T, 3)


def check_device_decoding(reader: TiffJpegReader, n_tiles: int = 4) -> str:
    """"" when ``reader``'s device decodes this level's JPEG tiles as libjpeg does on the CPU (mean
    absolute difference at most ``DEVICE_CHECK_MAX_MEAN_DIFF``), else why the reader must not be used.
    The check tiles are the level's ``n_tiles`` largest streams (the most tissue, the most detail)."""
    ks = [int(k) for k in np.argsort(-reader.counts, kind="stable")[:n_tiles] if reader.counts[k] > 0]
    if not ks:
        return ""
    try:
        got = reader._decode(ks).cpu()  # (K, h, w, 3)
    except SlideError as e:
        return f"the {reader.device} JPEG decoder failed ({e})"
    ref = reader._decode(ks, device=torch.device("cpu"))  # (K, h, w, 3)
    diff = float((got.int() - ref.int()).abs().float().mean())
    if diff > DEVICE_CHECK_MAX_MEAN_DIFF:
        return (f"the {reader.device} JPEG decoder differs from libjpeg by {diff:.1f} grey levels on average on "
                f"{len(ks)} tiles of level {reader.geom.level} (at most {DEVICE_CHECK_MAX_MEAN_DIFF:g} allowed)")
    return ""


def open_reader(slide_path, geom, level_dimensions, vendor: str | None, device,
                torch_resize: bool | None = None, gather: bool | None = None, decode_threads: int = 0,
                cpu_share: float = 0.5) -> tuple[TiffJpegReader | None, str]:
    """A ``TiffJpegReader`` for this slide's level, or (None, why OpenSlide must read it). On an
    accelerator the device's decoding of a few tiles is first checked against libjpeg
    (``check_device_decoding``). A slide tiled with stain normalisation (``geom.stain``) is left to
    OpenSlide, whose ``TileReader`` normalises every tile (this reader does not)."""
    if getattr(geom, "stain", None) is not None:
        return None, "its tiles are stain-normalised (stain_norm), which the OpenSlide reader does"
    page, why = level_page(slide_path, level_dimensions, geom.level, vendor)
    if page is None:
        return None, why
    reader = TiffJpegReader(slide_path, geom, page, device, torch_resize, gather, decode_threads, cpu_share)
    if reader.device.type != "cpu":
        why = check_device_decoding(reader)
        if why:
            reader.close()
            return None, why
    return reader, ""


@torch.no_grad()
def encode_decoded(encoder, tiles: TiffJpegReader, coords: np.ndarray, batch_size: int = 64,
                   sync_every: int = 32, switch_interval: float | None = None) -> np.ndarray:
    """N x D float32 features of the tiles at ``coords``; the next batch is read and decoded in a
    background thread while the encoder runs on the current one.

    On a CUDA device the thread works on its own stream (its host-to-device copies then wait for its
    own work only, not for the encoder's kernels on the main stream), and the main stream waits for
    each batch's event before using it. Features stay on the device and are copied to the host every
    ``sync_every`` batches, so the encoder's kernels are queued without waiting for the previous
    batch's result.

    ``switch_interval`` (seconds): Python's GIL switch interval while extracting (``sys.setswitchinterval``,
    restored after). Every torch call of the encoder releases and retakes the GIL; while the reader thread runs
    Python, retaking it can wait for a whole interval (5 ms by default, about one ResNet-18 batch on a GPU).
    Measured on an H200 (0.5 and 0.1 ms, run ``h200-steady``): no gain; the GIL is not what limits extraction."""
    import sys

    before = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        return _encode_pipelined(encoder, tiles, coords, batch_size, sync_every)
    finally:
        sys.setswitchinterval(before)


def _encode_pipelined(encoder, tiles: TiffJpegReader, coords: np.ndarray, batch_size: int,
                      sync_every: int) -> np.ndarray:
    """``encode_decoded``'s loop."""
    from concurrent.futures import ThreadPoolExecutor

    cuda = tiles.device.type == "cuda"
    side = torch.cuda.Stream(tiles.device) if cuda else None

    def read(chunk):  # -> (B x T x T x 3 uint8 on the device, the event after it on the side stream)
        if side is None:
            return tiles.read_batch(chunk), None
        with torch.cuda.stream(side):
            batch = tiles.read_batch(chunk)
            done = torch.cuda.Event()
            done.record(side)
        return batch, done

    host, pending = [], []
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(read, coords[:batch_size]) if len(coords) else None
        for i in range(0, len(coords), batch_size):
            batch, done = nxt.result()
            if done is not None:
                main = torch.cuda.current_stream(tiles.device)
                main.wait_event(done)
                batch.record_stream(main)  # the allocator must not hand its memory out while main uses it
            if i + batch_size < len(coords):
                nxt = pool.submit(read, coords[i + batch_size:i + 2 * batch_size])
            pending.append(encoder(batch).float())  # (B, D) on the device
            if len(pending) >= sync_every:
                host.append(torch.cat(pending).cpu().numpy())
                pending = []
    if pending:
        host.append(torch.cat(pending).cpu().numpy())
    return np.concatenate(host) if host else np.zeros((0, getattr(encoder, "dim", 0)), np.float32)


@torch.no_grad()
def extract_slide_decoded(slide_path: str | os.PathLike, coords_file: str | os.PathLike, encoder, out_file,
                          batch_size: int = 64, device: str = "cpu", reader: str = "tiff-jpeg",
                          num_workers: int = 0, decode_threads: int = 0, cpu_share: float = 0.5) -> str:
    """``extract.extract_slide`` with tiles decoded on ``device`` by ``reader``; a slide that reader
    cannot decode is read by OpenSlide (a warning names it). Returns the reader that was used."""
    from adaptome.domains.pathology.extract import extract_slide, feature_attrs, finish_slide, write_features
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import read_coords, slide_geometry

    if reader not in READERS:
        raise SlideError(f"unknown reader {reader!r}; known: {', '.join(READERS)}")
    coords, attrs = read_coords(coords_file)
    slide = open_slide(slide_path)
    try:
        geom = slide_geometry(attrs, slide, slide_path, coords_file)
        dims, vendor = slide.level_dimensions, slide.properties.get("openslide.vendor")
    finally:
        slide.close()
    tiles, why = (None, "reader openslide") if reader == "openslide" else \
        open_reader(slide_path, geom, dims, vendor, device, decode_threads=decode_threads, cpu_share=cpu_share)
    if tiles is None:
        if reader != "openslide":
            log.warning("%s: read with OpenSlide, not %s (%s)", slide_path, reader, why)
        extract_slide(slide_path, coords_file, encoder, out_file, batch_size, num_workers, device)
        return "openslide"
    try:
        feats = finish_slide(encoder, encode_decoded(encoder.to(device).eval(), tiles, coords, batch_size))
    finally:
        tiles.close()
    write_features(out_file, feats, coords, feature_attrs(encoder, attrs, feats.shape[1], reader=reader))
    return reader
