"""Drawing primitives of the hard synthetic cohort: smooth fields, stamped objects, artefact shapes.

SYNTHETIC DATA helpers (``synth_hard.py`` composes them). Objects are drawn as boolean masks by
dilating random centre points with a footprint (a disc for round nuclei, an oriented ellipse for
spindle nuclei), so thousands of objects cost a few array operations. Centres follow a per-pixel
Bernoulli rate chosen so that discs of area ``a`` cover a share ``c`` of the region on average
(Boolean model: coverage = 1 - exp(-rate * a), so rate = -ln(1 - c) / a).

Dimension letters: H, W image height / width (level-0 pixels).

Not covered: overlapping objects of different kinds keep both drawings (no occlusion model).
"""

from __future__ import annotations

import numpy as np


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian-filtered white noise of ``shape``."""
    from scipy import ndimage

    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return z / (z.std() + 1e-8)


def coarse_field(rng: np.random.Generator, size: int, cells: int, sigma: float) -> np.ndarray:
    """Smooth noise made on a ``cells`` x ``cells`` grid, zoomed (bilinear) to ``size`` x ``size`` and
    standardised (mean 0, sd 1 over the image)."""
    from scipy import ndimage

    z = smooth_noise(rng, (cells, cells), sigma)
    out = ndimage.zoom(z, size / cells, order=1, mode="nearest")  # (cells, cells) -> (~size, ~size)
    out = np.pad(out, ((0, max(0, size - out.shape[0])), (0, max(0, size - out.shape[1]))), mode="edge")
    out = out[:size, :size]
    return (out - out.mean()) / (out.std() + 1e-8)


def disc(r: float) -> np.ndarray:
    """Boolean disc footprint of radius ``r`` pixels."""
    k = int(np.ceil(r))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    return (xx * xx + yy * yy) <= r * r + 0.5


def ellipse(a: float, b: float, theta: float) -> np.ndarray:
    """Boolean ellipse footprint, semi-axes ``a`` (along ``theta``) and ``b`` pixels."""
    k = int(np.ceil(a))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def rate_for_coverage(coverage: np.ndarray | float, footprint: np.ndarray) -> np.ndarray | float:
    """Per-pixel centre rate giving the wanted mean coverage with this footprint (Boolean model)."""
    c = np.clip(coverage, 0.0, 0.95)
    return -np.log1p(-c) / float(footprint.sum())


def dilate_points(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int], footprint: np.ndarray) -> np.ndarray:
    """H x W bool: the footprint (odd-sized, centred) drawn at every (y, x) point; one indexed write
    per footprint offset, so the cost grows with the number of points, not the image."""
    out = np.zeros(shape, bool)
    k = footprint.shape[0] // 2
    for dy, dx in zip(*np.nonzero(footprint)):
        y, x = ys + dy - k, xs + dx - k
        ok = (y >= 0) & (y < shape[0]) & (x >= 0) & (x < shape[1])
        out[y[ok], x[ok]] = True
    return out


def stamp(rng: np.random.Generator, rate: np.ndarray | float, region: np.ndarray,
          footprint: np.ndarray) -> np.ndarray:
    """Objects with centres drawn at ``rate`` inside ``region``, drawn with ``footprint`` and clipped to
    ``region`` (so an object never spills into a neighbouring compartment); H x W bool."""
    ys, xs = np.nonzero((rng.random(region.shape) < rate) & region)
    return dilate_points(ys, xs, region.shape, footprint) & region


def spindles(rng: np.random.Generator, coverage: float, region: np.ndarray, a: float = 6.0,
             b: float = 1.8, n_orient: int = 4) -> np.ndarray:
    """Elongated nuclei (fibroblasts) at random orientations covering about ``coverage`` of ``region``."""
    out = np.zeros(region.shape, bool)
    for k in range(n_orient):
        fp = ellipse(a, b, np.pi * (k + rng.uniform()) / n_orient)
        out |= stamp(rng, rate_for_coverage(coverage / n_orient, fp), region, fp)
    return out


def stroke(rng: np.random.Generator, shape: tuple[int, int], start: tuple[float, float], length: float,
           width: float) -> np.ndarray:
    """A pen stroke: a smooth random curve of ``length`` pixels from ``start`` (x, y), ``width`` wide."""
    from scipy import ndimage

    h, w = shape
    n = max(int(length), 2)
    turn = np.cumsum(ndimage.gaussian_filter1d(rng.normal(0, 0.08, n), 8))  # heading drift per pixel
    heading = rng.uniform(0, 2 * np.pi) + turn
    xs = start[0] + np.cumsum(np.cos(heading))
    ys = start[1] + np.cumsum(np.sin(heading))
    ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    return dilate_points(ys[ok].astype(int), xs[ok].astype(int), shape, disc(width / 2))


def band(shape: tuple[int, int], point: tuple[float, float], angle: float, width: float) -> np.ndarray:
    """Pixels within ``width / 2`` of the line through ``point`` (x, y) at ``angle`` (a tissue fold)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.abs(-(xx - point[0]) * np.sin(angle) + (yy - point[1]) * np.cos(angle))
    return dist <= width / 2


def ellipse_region(shape: tuple[int, int], centre: tuple[float, float], rx: float, ry: float) -> np.ndarray:
    """Filled axis-aligned ellipse (an out-of-focus patch)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - centre[0]) / rx) ** 2 + ((yy - centre[1]) / ry) ** 2 <= 1.0


def random_point(rng: np.random.Generator, region: np.ndarray) -> tuple[float, float]:
    """A uniformly chosen (x, y) pixel of ``region`` (the image centre if it is empty)."""
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        return region.shape[1] / 2, region.shape[0] / 2
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])
