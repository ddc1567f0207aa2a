"""Whole-slide image access: open a slide with a clear error, its microns per pixel, pyramid levels.

A slide is read through OpenSlide (Aperio ``.svs``, generic tiled TIFF, ``.ndpi``, ``.mrxs`` ...).
Resolution comes from an MPP override CSV (``slide,mpp``, keyed by file name or stem) when it has
the slide, else ``openslide.mpp-x`` / ``mpp-y``, else the TIFF resolution tags (``tiff.XResolution``
with ``tiff.ResolutionUnit`` centimeter or inch: OpenSlide 3.4 reports only those for generic TIFFs);
slides with none of them (some Philips / Ventana exports: CLAM #60, TRIDENT #14, slideflow #266)
raise ``MissingMPPError`` naming the file, and so does an implausible value (a 72 dpi default).

Magnification is converted to resolution by the convention ``mpp = 10 / magnification``
(20x = 0.5 um/px, 10x = 1.0 um/px), so a 40x scan and a 20x scan give the same field per tile.

Not covered: reading vendor formats OpenSlide does not open (``.vsi``, ``.czi``); a per-slide
objective-power fallback when MPP is missing (a guess we refuse to make silently).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from adaptome.core.errors import AdaptomeError
from adaptome.domains.pathology.errors import PathologyError

#: The shipped real slide (CMU-1-Small-Region, Aperio, CC0; see data_cards/pathology_cmu_small_region.md).
SAMPLE_SLIDE = Path(__file__).parent / "data" / "cmu_small_region" / "CMU-1-Small-Region.svs"
#: The shipped Digi-sTILs label table (111 TCGA cases; see data_cards/pathology_digi_stils_tcga.md).
SAMPLE_LABELS = Path(__file__).parent / "data" / "digi_stils_tcga" / "TCGA-cohort.csv"

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


class SlideError(AdaptomeError, RuntimeError):
    """A slide cannot be opened or read; the message names the file."""


class MissingMPPError(SlideError):
    """A slide has no resolution metadata and no override was given."""


def slide_id(path: str | os.PathLike) -> str:
    """The slide's id: its file name without the extension."""
    return Path(path).stem


def list_slides(source: str | os.PathLike) -> list[Path]:
    """Slide files under a folder (sorted), or the single file given. Two files with the same id
    (``A.svs`` and ``A.tiff``) are refused: every output is named by the id, so one slide's results
    would replace the other's."""
    src = Path(source)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise SlideError(f"{src}: no such slide file or folder")
    paths = sorted(p for p in src.iterdir() if p.suffix.lower() in SLIDE_EXTENSIONS and p.is_file())
    by_id: dict[str, list[str]] = {}
    for p in paths:
        by_id.setdefault(slide_id(p), []).append(p.name)
    same = {k: v for k, v in by_id.items() if len(v) > 1}
    if same:
        k, names = next(iter(same.items()))
        raise SlideError(f"{src}: {len(same)} slide id(s) name several files, e.g. {k!r}: {', '.join(names)}; "
                         f"outputs are named by the id, so rename or move one of each")
    return paths


def open_slide(path: str | os.PathLike):
    """Open a slide with OpenSlide; a missing, unknown or corrupt file raises ``SlideError`` naming it."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: slide file not found")
    try:
        slide = openslide.OpenSlide(str(path))
        # Touch the smallest level so that a truncated file fails here, not mid-extraction.
        lvl = slide.level_count - 1
        w, h = slide.level_dimensions[lvl]
        slide.read_region((0, 0), lvl, (min(w, 16), min(h, 16)))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(f"{path}: not a slide format OpenSlide can read (corrupt or unsupported file)") from None
    except (openslide.OpenSlideError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SlideError(f"{path}: cannot read slide ({why})") from None
    return slide


def read_mpp_csv(path: str | os.PathLike | None) -> dict[str, float]:
    """Read an MPP override CSV with columns ``slide,mpp`` (``wsi,mpp`` also accepted), keyed by file name
    and stem; a slide given two different values (``A.svs`` and ``A`` rows alike) is refused naming the lines."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: MPP override CSV not found")
    out: dict[str, float] = {}
    line_of: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        key = "slide" if "slide" in cols else "wsi" if "wsi" in cols else None
        if key is None or "mpp" not in cols:
            raise SlideError(f"{path}: MPP override CSV needs columns 'slide,mpp' (found {cols})")
        for i, row in enumerate(reader, start=2):
            try:
                mpp = float(row["mpp"])
            except (TypeError, ValueError):
                raise SlideError(f"{path}: line {i}: mpp {row['mpp']!r} is not a number") from None
            if mpp <= 0:
                raise SlideError(f"{path}: line {i}: mpp must be positive, got {mpp}")
            name = row[key].strip()
            for k in {name, Path(name).stem}:
                if k in out and out[k] != mpp:  # the last row silently won: which one is right?
                    raise SlideError(f"{path}: line {i}: slide {k!r} is given mpp {mpp:g} here and {out[k]:g} on "
                                     f"line {line_of[k]}")
                out[k], line_of[k] = mpp, i
    return out


#: TIFF ``ResolutionUnit`` values as OpenSlide reports them (``tiff.ResolutionUnit``) -> microns per unit
_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0}
#: level-0 resolutions outside this range (um/px) are not a slide scan: most often a 72 / 96 dpi default
PLAUSIBLE_MPP = (0.02, 10.0)


def _tiff_tag_mpp(props) -> tuple[float | None, str]:
    """Microns per pixel from ``tiff.XResolution`` / ``tiff.YResolution`` (pixels per unit) and
    ``tiff.ResolutionUnit`` (``centimeter`` or ``inch``), as OpenSlide 3.4 reports them for generic
    TIFFs without computing ``openslide.mpp-x``; returns (mpp or None, why not)."""
    xres, unit = props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit")
    if not xres:
        return None, "no tiff.XResolution"
    if unit not in _UNIT_UM:
        return None, f"tiff.ResolutionUnit is {unit!r}, not centimeter or inch"
    try:
        rx = float(xres)
        ry = float(props.get("tiff.YResolution") or xres)
    except ValueError:
        return None, f"tiff.XResolution {xres!r} is not a number"
    if rx <= 0 or ry <= 0:
        return None, f"tiff.XResolution {xres!r} is not positive"
    return (_UNIT_UM[unit] / rx + _UNIT_UM[unit] / ry) / 2, ""


def slide_mpp(slide, path: str | os.PathLike, overrides: dict[str, float] | None = None) -> float:
    """Level-0 microns per pixel, from the first source that has it: the override CSV row for this
    slide (an explicit override wins, so that it can correct wrong metadata), ``openslide.mpp-x`` /
    ``-y``, then the TIFF resolution tags (``_tiff_tag_mpp``). A resolution from metadata outside
    ``PLAUSIBLE_MPP`` (e.g. 352.8 um/px from a 72 dpi default) is refused, naming the slide, rather
    than tiling at a wrong scale; no source at all raises ``MissingMPPError`` naming the slide."""
    path = Path(path)
    overrides = overrides or {}
    for key in (path.name, path.stem):
        if key in overrides:
            return float(overrides[key])
    props = slide.properties
    fix = f"give an MPP override CSV with a row '{path.name},<microns per pixel>' (--mpp-csv)"
    mpp, source, why = None, "", ""
    mpp_x, mpp_y = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
    if mpp_x:
        try:
            mx = float(mpp_x)
            my = float(mpp_y) if mpp_y else mx
            if mx > 0 and my > 0:
                mpp, source = (mx + my) / 2, "openslide.mpp-x"
        except ValueError:
            pass
    if mpp is None:
        mpp, why = _tiff_tag_mpp(props)
        source = f"tiff.XResolution {props.get('tiff.XResolution')} per {props.get('tiff.ResolutionUnit')}"
    if mpp is None:
        raise MissingMPPError(f"{path}: no resolution metadata (openslide.mpp-x missing, {why}); {fix}")
    lo, hi = PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        raise MissingMPPError(f"{path}: resolution {mpp:.4g} um/px from {source} is implausible for a slide scan "
                              f"(expected {lo:g}-{hi:g} um/px; a 72 or 96 dpi default?); {fix}")
    return mpp


def target_mpp(magnification: float | None = None, mpp: float | None = None) -> float:
    """Resolve the requested resolution: exactly one of magnification (``10 / mag``) or mpp."""
    if (magnification is None) == (mpp is None):
        raise PathologyError("give exactly one of magnification or mpp")
    if mpp is not None:
        if mpp <= 0:
            raise PathologyError(f"mpp must be positive, got {mpp}")
        return float(mpp)
    if magnification <= 0:
        raise PathologyError(f"magnification must be positive, got {magnification}")
    return 10.0 / float(magnification)


def best_level(level_downsamples: list[float] | tuple[float, ...], downsample: float) -> int:
    """The coarsest pyramid level whose downsample does not exceed ``downsample`` (never upsample
    more than needed: reading finer and shrinking keeps detail). A 1% slack absorbs rounding in
    stored downsamples (e.g. 3.9998 for 4)."""
    best = 0
    for i, d in enumerate(level_downsamples):
        if d <= downsample * 1.01 and d >= level_downsamples[best]:
            best = i
    return best


def thumbnail(slide, max_size: int = 1024):
    """An RGB thumbnail whose longer side is at most ``max_size``; returns (PIL image, scale) where
    ``scale`` = thumbnail pixels per level-0 pixel."""
    w, h = slide.dimensions
    scale = min(1.0, max_size / max(w, h))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    img = slide.get_thumbnail((tw, th)).convert("RGB")
    return img, img.size[0] / w
