"""Tile coordinates at a target resolution, and reading a tile from the best pyramid level.

A tile is ``tile_size`` pixels at the target resolution ``mpp_t`` (from a magnification or an
MPP), i.e. ``tile_size * mpp_t / mpp_0`` pixels at level 0. Tiles lie on a grid with stride
``(tile_size - overlap) * mpp_t / mpp_0`` level-0 pixels; the coordinates stored are the tile's
top-left corner in level-0 pixels (CLAM / TRIDENT convention), so a tile maps back to the slide
independently of which level it was read from. A tile is read from the coarsest level whose
downsample does not exceed the needed one, and resized to ``tile_size`` (box filter).

Kept tiles: tissue (mask from ``segment.tissue_mask``; optionally intersected with an ROI such as
the tumour bed) covers at least ``min_tissue`` of the tile.

Dimension letters: N tiles, H, W mask height / width, T tile size.

With ``stain_norm`` ``macenko`` the slide's stain estimate (``stain_norm.py``) is stored with the
coordinates and every tile read through ``TileReader`` is normalised to the reference stain; pen ink
and folds leave the tissue mask when the segmenter's ``artefacts`` switch is on (``segment.py``).

Not covered: tiles that straddle the slide's right / bottom edge (dropped, as CLAM does), blur QC
per tile (the baseline encoder's sharpness features stand in for it).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaptome.core.atomic import atomic_path
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.slide import SlideError, best_level, open_slide, slide_mpp

#: a target resolution finer than this share of a slide's own is refused (``TileConfig.allow_upsample``; 10 %
#: slack for scanners' nominal resolutions, e.g. 0.263 um/px at 40x)
UPSAMPLE_SLACK = 0.9


def check_upsample(path: str | os.PathLike, mpp0: float, target_mpp: float, fix: str) -> None:
    """Refuse, naming the slide and both resolutions, a slide scanned coarser than the target (its tiles would be
    its pixels enlarged, not the field of view a finer scan gives); ``fix`` says what to pass instead."""
    if target_mpp < UPSAMPLE_SLACK * mpp0:
        raise PathologyError(f"{path}: scanned at {mpp0:.4g} um/px (about {10 / mpp0:.0f}x), coarser than the "
                             f"target {target_mpp:.4g} um/px: its tiles would be enlarged {mpp0 / target_mpp:.2g}x; "
                             f"{fix}")


#: the tissue-mask settings ``tile_slide`` uses when not given (``segment.tissue_mask``'s defaults); the ones in
#: force are recorded with the tiles, so that a model's recipe holds them
SEG_DEFAULTS = {"blur": 5, "close": 2, "min_area_frac": 0.001, "artefacts": False}

#: the tissue-mask settings ``segment`` and ``tile`` share (``tile`` always fills holes): they choose the tiles
MASK_KEYS = ("thumb_size", *SEG_DEFAULTS)


def stage_tag(magnification: float | None, mpp: float | None, tile_size: int, overlap: int) -> str:
    """The tiling stage folder name, e.g. ``tiles_20x_256px_0ov`` or ``tiles_0.5mpp_256px_0ov``."""
    res = f"{magnification:g}x" if magnification is not None else f"{mpp:g}mpp"
    return f"tiles_{res}_{tile_size}px_{overlap}ov"


@dataclass(frozen=True)
class TileGeometry:
    """How tiles map to level 0: ``size0`` and ``stride0`` in level-0 pixels, read ``level``."""

    mpp0: float
    target_mpp: float
    tile_size: int
    overlap: int
    size0: float
    stride0: float
    level: int
    level_downsample: float
    stain: tuple[float, ...] | None = None  # Macenko estimate (stain_norm.to_tuple); None: tiles as stored

    @property
    def read_size(self) -> int:
        """Pixels to read at ``level`` to cover one tile."""
        return max(1, math.ceil(self.size0 / self.level_downsample - 1e-6))


def geometry(level_downsamples, mpp0: float, target_mpp: float, tile_size: int, overlap: int = 0) -> TileGeometry:
    """Tile geometry for a slide with the given level downsamples and level-0 resolution."""
    if not 0 <= overlap < tile_size:
        raise PathologyError(f"overlap must be in [0, tile_size), got {overlap}")
    factor = target_mpp / mpp0  # level-0 pixels per target pixel
    level = best_level(level_downsamples, factor)
    return TileGeometry(mpp0, target_mpp, tile_size, overlap, tile_size * factor,
                        (tile_size - overlap) * factor, level, float(level_downsamples[level]))


def grid(dimensions: tuple[int, int], geom: TileGeometry) -> np.ndarray:
    """All tile corners (N x 2, level-0 x, y) of tiles lying wholly inside the slide."""
    w, h = dimensions
    nx = int(math.floor((w - geom.size0) / geom.stride0 + 1e-9)) + 1 if w >= geom.size0 else 0
    ny = int(math.floor((h - geom.size0) / geom.stride0 + 1e-9)) + 1 if h >= geom.size0 else 0
    xs = np.round(np.arange(nx) * geom.stride0).astype(np.int64)
    ys = np.round(np.arange(ny) * geom.stride0).astype(np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)  # (ny, nx) -> (N, 2), row-major


def coverage(mask: np.ndarray, scale: float, coords: np.ndarray, size0: float) -> np.ndarray:
    """Fraction of each tile covered by ``mask`` (H x W at ``scale`` mask pixels per level-0 pixel),
    from a summed-area table; returns N values in [0, 1]."""
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    x0 = np.clip(np.floor(coords[:, 0] * scale).astype(int), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] * scale).astype(int), 0, h)
    x1 = np.clip(np.ceil((coords[:, 0] + size0) * scale).astype(int), 0, w)
    y1 = np.clip(np.ceil((coords[:, 1] + size0) * scale).astype(int), 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return inside / area


class TileReader:
    """Reads tiles of one slide at a fixed geometry; opens the slide lazily (safe to pickle into
    DataLoader worker processes, each of which opens its own handle)."""

    def __init__(self, path: str | os.PathLike, geom: TileGeometry):
        self.path = str(path)
        self.geom = geom
        self._slide = None

    def __getstate__(self):
        return {"path": self.path, "geom": self.geom, "_slide": None}

    def read(self, x: int, y: int) -> np.ndarray:
        """The tile with level-0 top-left (x, y) as T x T x 3 uint8 RGB."""
        import openslide
        from PIL import Image

        if self._slide is None:
            self._slide = open_slide(self.path)
        g = self.geom
        n = g.read_size
        try:
            region = self._slide.read_region((int(x), int(y)), g.level, (n, n)).convert("RGB")
        except (openslide.OpenSlideError, OSError) as e:  # a corrupt tile: name the slide, not a libtiff call
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SlideError(f"{self.path}: cannot read the tile at ({int(x)}, {int(y)}) of level {g.level} "
                             f"({why})") from None
        if region.size != (g.tile_size, g.tile_size):
            # crop the exact extent (size0 / downsample may be fractional), then resize
            exact = g.size0 / g.level_downsample
            region = region.resize((g.tile_size, g.tile_size), Image.BOX, box=(0, 0, exact, exact))
        if g.stain is not None:
            from adaptome.domains.pathology.stain_norm import from_tuple, normalise

            return normalise(np.asarray(region), from_tuple(g.stain))
        return np.asarray(region)

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def tile_slide(path: str | os.PathLike, target_mpp: float, tile_size: int, overlap: int = 0,
               min_tissue: float = 0.5, mpp_overrides: dict[str, float] | None = None,
               thumb_size: int = 1024, roi_geojson: str | os.PathLike | None = None,
               seg_params: dict | None = None, stain_norm: str = "none", roi_classes: list[str] | None = None) -> dict:
    """Tile one slide: returns ``coords`` (N x 2 level-0), ``tissue`` (N coverage) and ``attrs``
    (mpp, target mpp, tile size, level-0 size, read level, slide dimensions, and with ``stain_norm``
    ``macenko`` the slide's stain estimate from up to 32 of its tiles, ``stain_norm.py``, and the tissue-mask
    settings ``seg_params`` over ``SEG_DEFAULTS``, each key of it)."""
    from adaptome.domains.pathology.segment import load_roi_mask, tissue_mask
    from adaptome.domains.pathology.slide import thumbnail

    slide = open_slide(path)
    try:
        mpp0 = slide_mpp(slide, path, mpp_overrides)
        geom = geometry(slide.level_downsamples, mpp0, target_mpp, tile_size, overlap)
        coords = grid(slide.dimensions, geom)
        thumb, scale = thumbnail(slide, thumb_size)
        seg = {**SEG_DEFAULTS, **(seg_params or {})}  # recorded below: scoring on the fly re-creates this mask
        mask = tissue_mask(np.asarray(thumb), **seg)
        if roi_geojson is not None:
            if not Path(roi_geojson).is_file():
                raise PathologyError(f"{roi_geojson}: ROI GeoJSON for slide {Path(path).stem} not found")
            mask &= load_roi_mask(roi_geojson, mask.shape, scale, roi_classes or ())
        cov = coverage(mask, scale, coords, geom.size0) if len(coords) else np.zeros(0)
        keep = cov >= min_tissue
        attrs = {
            "slide_id": Path(path).stem, "mpp": mpp0, "target_mpp": target_mpp, "tile_size": tile_size,
            "overlap": overlap, "min_tissue": min_tissue, "thumb_size": thumb_size, "tile_size_level0": geom.size0,
            "read_level": geom.level,
            "level_downsample": geom.level_downsample, "width": slide.dimensions[0],
            "height": slide.dimensions[1], "stain_norm": stain_norm,
            **{k: type(v)(seg[k]) for k, v in SEG_DEFAULTS.items()},  # each mask setting, as its default's type
            "slide_bytes": os.path.getsize(path),  # with width / height: tells this slide from another of its name
            # tiles restricted to a region of interest (and the ROI classes that bound it, JSON): a model trained on
            # them scores only such tiles (``score`` on the fly needs the ROIs too)
            "roi": roi_geojson is not None, "roi_classes": json.dumps(sorted(roi_classes or ())),
        }
        if stain_norm in ("macenko", "macenko_tiles") and keep.any():
            from dataclasses import replace

            from adaptome.domains.pathology.stain_norm import sample_estimate, to_attrs, to_tuple

            est = sample_estimate(TileReader(path, geom), coords[keep], path, per_tile=stain_norm == "macenko_tiles")
            attrs.update(to_attrs(est))
            geom = replace(geom, stain=to_tuple(est))
        elif stain_norm not in ("macenko", "macenko_tiles", "none"):
            raise PathologyError(f"stain_norm must be 'macenko', 'macenko_tiles' or 'none', got {stain_norm!r}")
        return {"coords": coords[keep], "tissue": cov[keep], "attrs": attrs, "geometry": geom}
    finally:
        slide.close()


def write_coords(out_file: str | os.PathLike, coords: np.ndarray, tissue: np.ndarray, attrs: dict) -> None:
    """One HDF5 per slide: dataset ``coords`` (N x 2 int64, level-0) with the tiling attributes,
    written to a temporary name and renamed so that a crash never leaves a half file."""
    import h5py

    with atomic_path(out_file) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("coords", data=np.asarray(coords, np.int64))
        f.create_dataset("tissue", data=np.asarray(tissue, np.float32))
        for k, v in attrs.items():
            d.attrs[k] = v
            f.attrs[k] = v


def read_coords(h5_file: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(coords N x 2, attrs) from a tiling or feature HDF5; a bad file (truncated by a killed copy, empty, without
    coordinates) is an error naming it (h5py's own message names no file: the slide was blamed)."""
    import h5py

    try:
        with h5py.File(h5_file, "r") as f:
            return f["coords"][:], dict(f.attrs)
    except (OSError, KeyError) as e:
        why = e.args[0] if isinstance(e, KeyError) and e.args else e  # a KeyError's str() is quoted
        raise PathologyError(f"{h5_file}: not a tiling file ({why}); re-run 'tile' for this slide") from None


def geometry_from_attrs(attrs: dict, level_downsamples) -> TileGeometry:
    """Rebuild the geometry stored with a tiling file (for reading its tiles), with its stain estimate."""
    from dataclasses import replace

    from adaptome.domains.pathology.stain_norm import from_attrs, to_tuple

    geom = geometry(level_downsamples, float(attrs["mpp"]), float(attrs["target_mpp"]),
                    int(attrs["tile_size"]), int(attrs["overlap"]))
    est = from_attrs(attrs)
    return geom if est is None else replace(geom, stain=to_tuple(est))


def check_same_slide(attrs: dict, slide, path: str | os.PathLike, source: str | os.PathLike) -> None:
    """Refuse a tiling or feature file (``source``) made from another slide than ``path`` (the same
    id in another folder, or a slide replaced since): its level-0 size (``width`` / ``height``) or its
    file size (``slide_bytes``, recorded since it was added) differ. Coordinates of one slide read on
    another would give wrong features and heatmaps without any error. A slide rewritten with the same
    sizes passes; ``check_slide_version`` tells it by the ``made_by`` record (``score`` calls both)."""
    w, h = slide.dimensions
    why = ""
    if "width" in attrs and (int(attrs["width"]), int(attrs["height"])) != (w, h):
        why = f"{int(attrs['width'])} x {int(attrs['height'])} px, this slide is {w} x {h}"
    elif "slide_bytes" in attrs and int(attrs["slide_bytes"]) != os.path.getsize(path):
        why = f"a {int(attrs['slide_bytes'])}-byte file, this one has {os.path.getsize(path)} bytes"
    if why:
        raise PathologyError(f"{source}: made from another slide than {path} ({why}); re-run 'tile' (and "
                             f"'extract') for this slide, or give the slide it was made from")


def slide_change(stamp: dict, path: str | os.PathLike) -> str:
    """What differs between the slide file at ``path`` and ``stamp`` (a ``made_by`` record's
    ``inputs.slide``): by SHA-256 when the record holds one, else by size and modification time
    (cheap: no read of the slide); ``""`` when it is the same file."""
    from adaptome.domains.pathology.made_by import content_stamp, file_stamp

    now = content_stamp(path) if "sha256" in stamp else file_stamp(path)
    keys = ("size", "sha256") if "sha256" in stamp else ("size", "mtime_ns")
    return ", ".join(f"{k} {stamp[k]} -> {now[k]}" for k in keys if k in stamp and stamp[k] != now[k])


def check_slide_version(path: str | os.PathLike, source: str | os.PathLike) -> None:
    """Refuse ``source`` (a tiling or feature file) when the ``made_by`` record beside it
    (``made_by/<slide>.json``) says it was made from another version of the slide file ``path``: a
    slide rewritten with the same byte size and dimensions passes ``check_same_slide``.
    A file without a record (made by an older version, or copied alone) is not checked."""
    from adaptome.domains.pathology.made_by import read_record, record_path

    src = Path(source)
    stamp = ((read_record(record_path(src.parent, src.stem)) or {}).get("inputs") or {}).get("slide")
    why = slide_change(stamp, path) if isinstance(stamp, dict) else ""
    if why:
        raise PathologyError(f"{source}: made from another version of the slide {path} (changed since: {why}); "
                             f"re-run 'tile' and 'extract' for this slide")


def slide_geometry(attrs: dict, slide, path: str | os.PathLike, source: str | os.PathLike) -> TileGeometry:
    """``geometry_from_attrs`` for an open ``slide`` after ``check_same_slide`` and ``check_slide_version``
    (tile coordinates of an earlier version of the slide would be read on the new pixels)."""
    check_same_slide(attrs, slide, path, source)
    check_slide_version(path, source)
    return geometry_from_attrs(attrs, slide.level_downsamples)


def why_no_tiles(attrs: dict) -> str:
    """Why a slide tiled with ``attrs`` (``tile_slide``'s) has no tile: it is smaller than one tile at
    level 0, or no tile has ``min_tissue`` of tissue."""
    w, h, size0 = int(attrs["width"]), int(attrs["height"]), float(attrs["tile_size_level0"])
    if w < size0 or h < size0:
        return (f"the slide ({w} x {h} px at level 0) is smaller than one tile ({int(attrs['tile_size'])} px at "
                f"{float(attrs['target_mpp']):g} um/px = {size0:.0f} level-0 px); choose a smaller --tile-size")
    return (f"no tile is at least {float(attrs['min_tissue']):g} tissue (min_tissue; the segment stage's qc/ "
            f"thumbnail shows the tissue mask)")
