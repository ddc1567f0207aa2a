"""A synthetic cohort with a planted stromal-TIL signal: pyramidal tiled TIFFs that OpenSlide opens.

SYNTHETIC DATA, for tests and benchmarks only: it looks H&E-like but is not tissue.

Each slide is a grid of square cells (``cell_um`` microns) on a white background; cells inside
an irregular blob are tissue, either stroma (pink, fibrous eosin, few spindle nuclei) or tumour
(purple, large pale nuclei). Every tissue cell carries lymphocytes (small round dense nuclei) at
a planted density ``d`` in [0, 1] (``round(d * max_lymph)`` nuclei); ``d`` is the slide's mean
``m`` plus smooth spatial noise. The slide label is ``target = 100 * mean(d over tissue cells)``,
the planted sTIL %. (Simplification: lymphocytes are planted in tumour cells too, so the label
is a tissue-wide, not a stroma-only, TIL fraction.)

The image is composed in optical-density space from Ruifrok & Johnston's H and E stain vectors
(Anal. Quant. Cytol. Histol. 2001; OD = c_H * h + c_E * e, I = 255 * exp(-OD)), so stain
deconvolution inverts it. The file is a BigTIFF-free classic TIFF with every pyramid level in the
main IFD chain (level 0 ``subfiletype`` 0, reductions ``subfiletype`` 1), tiled, zlib or JPEG,
with ``XResolution``/``YResolution`` in pixels per centimetre (OpenSlide reports
``openslide.mpp-x`` from them). Truth per slide: a CSV of cells (level-0 x, y, size, type,
density) in ``truth/``; labels: ``labels.csv`` (``slide_id,case_id,target,site``).

Dimension letters: H, W image height / width (level-0 pixels), G grid side (cells).

The HARD cohort (stroma-only label among site stains, artefacts and dark confounders) is drawn by
``synth_hard.py`` and written by ``make_hard_cohort`` below; ``cohort_from_config`` picks one.

Not covered (simple cohort): realistic morphology, stain variation between sites, slides with
several cases.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from adaptome.core.atomic import atomic_path
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.stains import E_VEC, H_VEC  # Ruifrok & Johnston, unit length


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy import ndimage

    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return z / (z.std() + 1e-8)


def _disc(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy) <= r * r + 0.5


def _stamp(conc: np.ndarray, cx: int, cy: int, disc: np.ndarray, value: float) -> None:
    r = disc.shape[0] // 2
    h, w = conc.shape
    x0, y0, x1, y1 = cx - r, cy - r, cx + r + 1, cy + r + 1
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1, sy1 = disc.shape[1] - max(0, x1 - w), disc.shape[0] - max(0, y1 - h)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return
    patch = conc[y0:y1, x0:x1]
    np.maximum(patch, np.where(disc[sy0:sy1, sx0:sx1], value, 0), out=patch)


def render_slide(rng: np.random.Generator, grid: int = 12, cell_px: int = 64, mean_density: float = 0.3,
                 max_lymph: int = 24, tumour_frac: float = 0.4) -> tuple[np.ndarray, list[dict]]:
    """Render one slide at 0.5 um/px; returns (H x W x 3 uint8 RGB, list of tissue cells)."""
    from scipy import ndimage

    size = grid * cell_px
    blob = _smooth_noise(rng, (grid, grid), 2.0)
    yy, xx = np.mgrid[0:grid, 0:grid]
    rad = np.hypot((yy - (grid - 1) / 2) / (grid / 2), (xx - (grid - 1) / 2) / (grid / 2))
    score = 1.2 - rad + 0.35 * blob
    tissue = score >= np.quantile(score, 1 - rng.uniform(0.45, 0.75))  # 45-75 % of the cells
    tz = _smooth_noise(rng, (grid, grid), 1.5)
    tumour = (tz > np.quantile(tz[tissue], 1 - tumour_frac)) & tissue
    dens = np.clip(mean_density + 0.18 * _smooth_noise(rng, (grid, grid), 1.5), 0.0, 1.0)

    conc_h = np.zeros((size, size), np.float32)
    fib = ndimage.gaussian_filter(rng.standard_normal((size, size)), (1.0, 6.0))  # fibres along x
    conc_e = np.where(np.kron(tissue, np.ones((cell_px, cell_px))) > 0,
                      0.55 + 0.25 * fib / (fib.std() + 1e-8), 0.0).astype(np.float32)
    big, small, spindle = _disc(6), _disc(3), _disc(2)
    cells = []
    for gy in range(grid):
        for gx in range(grid):
            if not tissue[gy, gx]:
                continue
            x0, y0 = gx * cell_px, gy * cell_px
            if tumour[gy, gx]:
                conc_e[y0:y0 + cell_px, x0:x0 + cell_px] *= 0.5
                for _ in range(rng.integers(5, 9)):
                    _stamp(conc_h, x0 + rng.integers(6, cell_px - 6), y0 + rng.integers(6, cell_px - 6), big, 0.45)
            else:
                for _ in range(rng.integers(1, 4)):
                    _stamp(conc_h, x0 + rng.integers(2, cell_px - 2), y0 + rng.integers(2, cell_px - 2), spindle, 0.6)
            n = int(round(dens[gy, gx] * max_lymph))
            for _ in range(n):
                _stamp(conc_h, x0 + rng.integers(3, cell_px - 3), y0 + rng.integers(3, cell_px - 3), small, 1.3)
            cells.append({"x": x0, "y": y0, "size": cell_px, "type": "tumour" if tumour[gy, gx] else "stroma",
                          "density": n / max_lymph})
    od = conc_h[..., None] * H_VEC + np.clip(conc_e, 0, None)[..., None] * E_VEC  # (H, W, 3)
    od += 0.02 * rng.standard_normal(od.shape)
    rgb = np.clip(250.0 * np.exp(-od), 0, 255).astype(np.uint8)
    return rgb, cells


def write_pyramid_tiff(path: str | os.PathLike, rgb: np.ndarray, mpp: float | None = 0.5, levels: int = 3,
                       tile: int = 128, compression: str = "zlib") -> None:
    """Write ``rgb`` as a tiled pyramidal TIFF (levels halving, all in the main IFD chain)."""
    import tifffile
    from PIL import Image

    if compression not in ("zlib", "jpeg"):
        raise PathologyError(f"compression must be 'zlib' or 'jpeg', got {compression!r}")
    path = Path(path)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        img = rgb
        for i in range(levels):
            kw = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**i)
                kw = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tif.write(img, tile=(tile, tile), compression=compression, photometric="rgb",
                      subfiletype=0 if i == 0 else 1, **kw)
            if i + 1 < levels:
                h, w = img.shape[:2]
                img = np.asarray(Image.fromarray(img).resize((max(1, w // 2), max(1, h // 2)), Image.BOX))


def make_cohort(out_dir: str | os.PathLike, n_slides: int = 24, seed: int = 0, grid: int = 12,
                cell_px: int = 64, mpp: float = 0.5, n_sites: int = 4, compression: str = "zlib",
                density_range: tuple[float, float] = (0.03, 0.75), prefix: str = "synth") -> Path:
    """Write ``n_slides`` slides, their truth CSVs and ``labels.csv`` into ``out_dir``; returns the
    label CSV path. ``mpp`` 0.25 writes a 40x-like slide (the 0.5 um/px render upsampled 2x)."""
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    up = int(round(0.5 / mpp))
    if up < 1 or abs(0.5 / mpp - up) > 1e-6:
        raise PathologyError(f"mpp must be 0.5 / k for an integer k, got {mpp}")
    for i in range(n_slides):
        sid = f"{prefix}_{i:03d}"
        m = float(rng.uniform(*density_range))
        rgb, cells = render_slide(rng, grid=grid, cell_px=cell_px, mean_density=m)
        if up > 1:
            rgb = np.repeat(np.repeat(rgb, up, axis=0), up, axis=1)  # (H, W, 3) -> (H*up, W*up, 3)
            for c in cells:
                c.update(x=c["x"] * up, y=c["y"] * up, size=c["size"] * up)
        write_pyramid_tiff(out / f"{sid}.tiff", rgb, mpp=mpp, compression=compression)
        with (out / "truth" / f"{sid}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["x", "y", "size", "type", "density"])
            w.writeheader()
            w.writerows(cells)
        target = 100.0 * float(np.mean([c["density"] for c in cells]))
        rows.append({"slide_id": sid, "case_id": f"case_{i:03d}", "target": round(target, 4),
                     "site": f"site_{i % n_sites}"})
    labels = out / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "target", "site"])
        w.writeheader()
        w.writerows(rows)
    return labels


def read_truth(csv_path: str | os.PathLike) -> dict[tuple[int, int], tuple[int, str, float]]:
    """Planted cells of one slide: (x, y) -> (size, type, density)."""
    out = {}
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            out[(int(r["x"]), int(r["y"]))] = (int(r["size"]), r["type"], float(r["density"]))
    return out


def make_hard_cohort(out_dir: str | os.PathLike, n_slides: int = 40, seed: int = 0, grid: int = 16,
                     cell_px: int = 64, mpp: float = 0.5, n_sites: int = 4, compression: str = "zlib",
                     prefix: str = "hard", confounders=None) -> Path:
    """Write the HARD cohort (``synth_hard.py``): slides, ``labels.csv`` (``slide_id,case_id,target,
    site``), ``truth/slides.csv`` (per-slide facts: case mean, grade, tumour share, artefacts ...),
    ``truth/<slide>.npz`` (the drawn masks at the 0.5 um/px render, ``scale`` = mask pixels per
    level-0 pixel) and ``truth/<slide>_tiles.csv`` (the per-tile truth table on the ``cell_px`` grid
    of the render); returns the label CSV path."""
    from adaptome.domains.pathology.synth_hard import (
        Confounders,
        case_plan,
        render_hard_slide,
        slide_target,
        tile_truth,
    )

    conf = confounders or Confounders.from_config()
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    up = int(round(0.5 / mpp))
    if up < 1 or abs(0.5 / mpp - up) > 1e-6:
        raise PathologyError(f"mpp must be 0.5 / k for an integer k, got {mpp}")
    if n_sites < 1 or n_slides < 1:
        raise PathologyError(f"n_slides and n_sites must be >= 1, got {n_slides}, {n_sites}")
    size = grid * cell_px
    rows, facts_rows = [], []
    for i, p in enumerate(case_plan(n_slides, n_sites, seed, conf.pair_frac)):
        sid = f"{prefix}_{i:03d}"
        rgb, truth, facts = render_hard_slide(seed, i, p["m"], p["site"], size, grid, conf)
        target = slide_target(truth)
        if up > 1:
            rgb = np.repeat(np.repeat(rgb, up, axis=0), up, axis=1)  # (H, W, 3) -> (H*up, W*up, 3)
        write_pyramid_tiff(out / f"{sid}.tiff", rgb, mpp=mpp, compression=compression)
        np.savez_compressed(out / "truth" / f"{sid}.npz", scale=1.0 / up, **truth)
        yy, xx = np.mgrid[0:grid, 0:grid] * cell_px
        cells = np.stack([xx.ravel(), yy.ravel()], 1)  # (G, G) -> (G*G, 2) corners at the render
        tt = tile_truth(truth, cells, cell_px)
        with (out / "truth" / f"{sid}_tiles.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["x", "y", "size", *tt])
            for j, (x, y) in enumerate(cells):
                w.writerow([x * up, y * up, cell_px * up, *(round(float(tt[k][j]), 6) for k in tt)])
        case = f"case_{p['case']:03d}"
        rows.append({"slide_id": sid, "case_id": case, "target": round(target, 4), "site": f"site_{p['site']}"})
        facts_rows.append({"slide_id": sid, "case_id": case, "site": f"site_{p['site']}", "target": round(target, 4),
                           "case_mean": round(p["m"], 4), "section": p["section"], **facts,
                           "artefact_frac": round(float((truth["artefact"] > 0).mean()), 4)})
    with (out / "truth" / "slides.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(facts_rows[0]))
        w.writeheader()
        w.writerows(facts_rows)
    labels = out / "labels.csv"
    with atomic_path(labels) as tmp, open(tmp, "w", newline="") as f:  # written last: marks the cohort done
        w = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "target", "site"])
        w.writeheader()
        w.writerows(rows)
    return labels


def read_hard_truth(npz_path: str | os.PathLike) -> tuple[dict, float]:
    """(masks ``classes`` / ``lymph`` / ``artefact``, scale = mask pixels per level-0 pixel) of one slide."""
    path = Path(npz_path)
    if not path.is_file():
        raise PathologyError(f"{path}: truth file not found")
    with np.load(path) as z:
        return {k: z[k] for k in ("classes", "lymph", "artefact")}, float(z["scale"])


def cohort_from_config(cfg) -> Path:
    """Write the cohort ``cfg`` (``config.SynthConfig``) asks for: ``hard`` or ``simple``."""
    from adaptome.domains.pathology.synth_hard import Confounders

    common = dict(n_slides=cfg.n_slides, seed=cfg.seed, grid=cfg.grid, cell_px=cfg.cell_px, mpp=cfg.mpp,
                  n_sites=cfg.n_sites, compression=cfg.compression)
    if cfg.kind == "simple":
        return make_cohort(cfg.out_dir, **common)
    return make_hard_cohort(cfg.out_dir, prefix="hard", confounders=Confounders.from_config(cfg), **common)
