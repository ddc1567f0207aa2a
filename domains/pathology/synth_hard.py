"""The HARD synthetic cohort: stromal TILs among the confounders real H&E cohorts have.

SYNTHETIC DATA, for tests and benchmarks only: it looks H&E-like but is not tissue.

One slide (0.5 um/px render) has an irregular tissue piece split into stroma and tumour nests
(tumour share per slide in ``tumour_share``). Drawn objects, each a boolean mask:

- stromal lymphocytes: small round dense haematoxylin discs (radius 3 px = 3 um) in stroma, at a
  coverage that varies smoothly around the case's mean ``m`` (log-normal spatial field);
- (``intratumoral``) lymphocytes inside tumour nests, coverage drawn independently of the target;
  they must NOT count towards sTIL;
- tumour nuclei: larger, paler discs; (``grade_variation``) nuclear grade 1-3 sets their size and
  darkness (grade 3: radius 6, as dark as a lymphocyte's rim);
- (``dark_confounders``) fibroblasts (dark spindles in stroma, share independent of the target),
  vessels (a haematoxylin wall around a lumen packed with red cells: small round dense EOSIN
  discs), so "dark pixels" is not "lymphocytes";
- the image is composed in optical density, OD = s_H c_H h_site + s_E c_E e_site, I = I0 exp(-OD)
  (Ruifrok & Johnston 2001), with (``stain_variation`` > 0) per-site stain vectors, strengths
  and background (site 1 is haematoxylin-heavy, site 2 pale, site 3 eosin-heavy and bluer);
- artefacts, each per slide with its probability: pen strokes in blue / green / black ink over
  glass and tissue (``pen_prob``), tissue folds (a band where the tissue lies twice: OD x 1.9,
  ``fold_prob``), out-of-focus patches (Gaussian blur, sigma 3 px, ``blur_prob``).

The label is exactly what is drawn: ``target = 100 * |lymphocyte pixels in stroma| / |stroma
pixels|`` (stromal lymphocyte coverage over stroma, the sTIL % definition of Salgado et al. 2015),
counted on the tissue as drawn (artefacts are overlays: a pen stroke over stroma hides, it does
not remove, the lymphocytes under it). Cases: site assignment is balanced against the target
(cases sorted by ``m``, each run of ``n_sites`` cases gets a random permutation of the sites);
``pair_frac`` of the cases get a second slide (another section of the same case: same ``m``, new
layout). The case mean ``m`` is skewed low (``0.02 + 0.7 * Beta(1.1, 3)``) like breast-cancer
cohorts.

Every component draws from its own random stream (seeded by cohort seed, slide and component),
so switching one confounder off changes only what that confounder drew.

Dimension letters: H, W image height / width (level-0 pixels at the 0.5 um/px render).

Darkness (grey = ITU-R 601 luma of the reference-stained render, 0..255): a stromal lymphocyte is
the densest object (c_H 2.0, grey ~56 in stroma: haematoxylin-dense like real ones, well below the
dark-pixel baseline's cut at 105; 32-85 over the four sites); the dark confounders stay dark:
fibroblasts (c_H 1.1, grey ~94; 69-124 over the sites), red cells (eosin 2.6, grey ~92), vessel walls
(c_H 0.9, ~106), grade-3 tumour nuclei (c_H 0.9, ~120), darker at the haematoxylin-heavy site (1: 83-92),
in folds and under ink. (Before, with lymphocytes at c_H 1.3,
the lymphocytes of the pale site were at grey ~114 and the dark-pixel baseline scored a pooled R^2 of
0.05-0.25; it now scores about 0.5.)

Not covered: realistic morphology (no glands, no mitoses), tissue tears, bubbles, uneven
illumination, JPEG block artefacts beyond the file's own compression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adaptome.domains.pathology import synth_draw as d
from adaptome.domains.pathology.stains import E_VEC, H_VEC

#: per-site stain (H vector, E vector, H strength, E strength, background I0); site >= 4 is drawn
SITES = (
    ((0.650, 0.704, 0.286), (0.072, 0.990, 0.105), 1.00, 1.00, 250.0),  # reference
    ((0.560, 0.740, 0.380), (0.100, 0.970, 0.220), 1.45, 0.90, 244.0),  # haematoxylin-heavy, bluer
    ((0.680, 0.690, 0.250), (0.060, 0.990, 0.080), 0.70, 0.75, 252.0),  # pale
    ((0.600, 0.760, 0.250), (0.180, 0.950, 0.260), 0.95, 1.40, 247.0),  # eosin-heavy
)
#: pen ink optical densities (R, G, B): blue, green, black
INKS = {"blue": (0.95, 0.55, 0.12), "green": (0.85, 0.25, 0.75), "black": (1.3, 1.3, 1.2)}
#: component names, each with its own random stream
STREAMS = ("case", "layout", "lymph", "itl", "tumour", "fibro", "vessel", "pen", "fold", "blur", "noise")
LYMPH_R, LYMPH_H = 3.0, 2.0
GRADES = {1: (3.5, 0.45), 2: (4.5, 0.65), 3: (6.0, 0.90)}  # nuclear radius px, haematoxylin density
#: haematoxylin density of fibroblast nuclei and vessel walls (dark confounders; pale ones when off), red-cell eosin
FIBRO_H, FIBRO_H_OFF, WALL_H, RBC_E = 1.1, 0.6, 0.9, 2.6


@dataclass(frozen=True)
class Confounders:
    """Switches of the hard cohort, as the drawing code takes them. Every one is documented, with its
    default, in ``config.SynthConfig``; build them with ``from_config`` (the defaults live there only)."""

    stain_variation: float
    pen_prob: float
    fold_prob: float
    blur_prob: float
    intratumoral: bool
    grade_variation: bool
    tumour_share: tuple[float, float]
    dark_confounders: bool
    pair_frac: float

    @classmethod
    def from_config(cls, cfg=None) -> "Confounders":
        """The switches of ``cfg`` (a ``config.SynthConfig``; default: its defaults)."""
        from adaptome.domains.pathology.config import SynthConfig

        cfg = SynthConfig() if cfg is None else cfg
        return cls(stain_variation=cfg.stain_variation, pen_prob=cfg.pen_prob, fold_prob=cfg.fold_prob,
                   blur_prob=cfg.blur_prob, intratumoral=cfg.intratumoral, grade_variation=cfg.grade_variation,
                   tumour_share=(cfg.tumour_share_min, cfg.tumour_share_max),
                   dark_confounders=cfg.dark_confounders, pair_frac=cfg.pair_frac)


def site_stain(site: int, strength: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """(h, e unit OD vectors, H strength, E strength, I0) of a site, moved towards the reference by
    ``1 - strength``; sites beyond the table are drawn from ``seed``."""
    if site < len(SITES):
        h, e, sh, se, i0 = SITES[site]
    else:
        r = np.random.default_rng([seed, site, 7])
        h = np.array(SITES[0][0]) + r.normal(0, 0.08, 3)
        e = np.array(SITES[0][1]) + r.normal(0, 0.08, 3)
        sh, se, i0 = r.uniform(0.7, 1.45), r.uniform(0.75, 1.4), r.uniform(243, 252)
    h = np.abs(np.asarray(h, float)) / np.linalg.norm(h)
    e = np.abs(np.asarray(e, float)) / np.linalg.norm(e)
    mix = lambda ref, v: (ref + strength * (v - ref)) / np.linalg.norm(ref + strength * (v - ref))  # noqa: E731
    return (mix(H_VEC, h), mix(E_VEC, e), 1 + strength * (sh - 1), 1 + strength * (se - 1),
            250.0 + strength * (i0 - 250.0))


def case_plan(n_slides: int, n_sites: int, seed: int, pair_frac: float) -> list[dict]:
    """Slides of the cohort: ``case`` index, case mean ``m``, ``site`` and ``section`` (0 or 1)."""
    rng = np.random.default_rng([seed, 10_001])
    n_cases = int(np.ceil(n_slides / (1.0 + pair_frac)))
    m = 0.02 + 0.7 * rng.beta(1.1, 3.0, n_cases)
    order = np.argsort(m)
    site = np.zeros(n_cases, int)
    for b in range(0, n_cases, n_sites):  # balanced: each run of n_sites cases covers every site once
        block = order[b:b + n_sites]
        site[block] = rng.permutation(n_sites)[:len(block)]
    n_pairs = n_slides - n_cases
    paired = set(rng.choice(n_cases, size=n_pairs, replace=False).tolist()) if n_pairs > 0 else set()
    plan = []
    for c in range(n_cases):
        plan.append({"case": c, "m": float(m[c]), "site": int(site[c]), "section": 0})
        if c in paired:
            plan.append({"case": c, "m": float(m[c]), "site": int(site[c]), "section": 1})
    return plan[:n_slides]


def render_hard_slide(seed: int, slide_index: int, m: float, site: int, size: int, cells: int,
                      conf: Confounders) -> tuple[np.ndarray, dict, dict]:
    """Render one slide: (H x W x 3 uint8 RGB, truth masks, slide facts).

    Truth masks: ``classes`` (uint8: 0 background, 1 stroma, 2 tumour), ``lymph`` (bool, every
    lymphocyte pixel), ``artefact`` (uint8 bit flags: 1 pen, 2 fold, 4 blur)."""
    from scipy import ndimage

    ss = np.random.SeedSequence([seed, slide_index])
    rng = dict(zip(STREAMS, (np.random.default_rng(s) for s in ss.spawn(len(STREAMS)))))
    shape = (size, size)
    # layout: tissue piece, tumour nests, stroma
    lay = rng["layout"]
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rad = np.hypot(yy - 0.5, xx - 0.5) * 2
    score = 1.2 - rad + 0.35 * d.coarse_field(lay, size, cells, 2.0)
    tissue = score >= np.quantile(score, 1 - lay.uniform(0.45, 0.75))
    share = lay.uniform(*conf.tumour_share)
    tf = d.coarse_field(lay, size, 2 * cells, 1.5)
    tumour = tissue & (tf > np.quantile(tf[tissue], 1 - share))
    stroma = tissue & ~tumour
    fib = ndimage.gaussian_filter(lay.standard_normal(shape), (1.0, 6.0))
    fib /= fib.std() + 1e-8
    conc_e = np.where(stroma, 0.55 + 0.2 * fib, np.where(tumour, 0.3 + 0.08 * fib, 0.0))
    conc_h = np.where(tissue, 0.05, 0.0)

    def paint(mask: np.ndarray, value: float) -> None:
        np.maximum(conc_h, np.where(mask, value, 0.0), out=conc_h)

    # tumour nuclei (grade sets size and darkness)
    grade = int(rng["tumour"].integers(1, 4)) if conf.grade_variation else 2
    r_nuc, h_nuc = GRADES[grade]
    fp = d.disc(r_nuc)
    paint(d.stamp(rng["tumour"], d.rate_for_coverage(0.35, fp), tumour, fp), h_nuc)
    # fibroblasts; vessels with red cells
    fr = rng["fibro"]
    fibro_cov = fr.uniform(0.03, 0.15) if conf.dark_confounders else 0.02
    paint(d.spindles(fr, fibro_cov, stroma), FIBRO_H if conf.dark_confounders else FIBRO_H_OFF)
    rbc = np.zeros(shape, bool)
    if conf.dark_confounders:
        vr = rng["vessel"]
        for _ in range(int(vr.poisson(1 + stroma.sum() / 60_000))):
            cx, cy = d.random_point(vr, stroma)
            rr = vr.uniform(8, 18)
            lumen = d.ellipse_region(shape, (cx, cy), rr, rr * vr.uniform(0.6, 1.0)) & stroma
            wall = d.ellipse_region(shape, (cx, cy), rr + 2, rr + 2) & ~lumen & stroma
            paint(wall, WALL_H)
            conc_e[lumen] = 0.1
            fp3 = d.disc(3)
            rbc |= d.stamp(vr, d.rate_for_coverage(0.7, fp3), lumen, fp3)
        conc_e[rbc] = RBC_E
    # lymphocytes: stromal ones carry the target; intratumoral ones are independent of it
    fp = d.disc(LYMPH_R)
    field = np.clip(m * np.exp(0.6 * d.coarse_field(rng["lymph"], size, cells, 1.5) - 0.18), 0.0, 0.9)
    lymph = d.stamp(rng["lymph"], d.rate_for_coverage(field, fp), stroma, fp)
    itl_cov = 0.0
    if conf.intratumoral:
        itl_cov = float(rng["itl"].uniform(0.0, 0.2))
        lymph |= d.stamp(rng["itl"], d.rate_for_coverage(itl_cov, fp), tumour, fp)
    paint(lymph, LYMPH_H)

    h_vec, e_vec, s_h, s_e, i0 = site_stain(site, conf.stain_variation, seed)
    od = (s_h * conc_h)[..., None] * h_vec + (s_e * conc_e)[..., None] * e_vec  # (H, W, 1) * (3,) -> (H, W, 3)
    artefact = np.zeros(shape, np.uint8)
    facts = {"grade": grade, "tumour_share": float(tumour.sum() / max(tissue.sum(), 1)), "itl_coverage": itl_cov,
             "fibro_coverage": float(fibro_cov), "pen": "", "fold": False, "blur": False}
    if rng["fold"].uniform() < conf.fold_prob:  # tissue lying twice
        fo = rng["fold"]
        fold = d.band(shape, d.random_point(fo, tissue), fo.uniform(0, np.pi), fo.uniform(25, 60)) & tissue
        od[fold] *= 1.9
        artefact[fold] |= 2
        facts["fold"] = bool(fold.any())
    if rng["blur"].uniform() < conf.blur_prob:  # out of focus
        bl = rng["blur"]
        region = d.ellipse_region(shape, d.random_point(bl, tissue), bl.uniform(0.12, 0.25) * size,
                                  bl.uniform(0.12, 0.25) * size)
        soft = ndimage.gaussian_filter(region.astype(np.float32), 4)
        soft = np.where(soft > 0.01, soft, 0.0)[..., None]  # feathered edge, (H, W) -> (H, W, 1)
        od = soft * ndimage.gaussian_filter(od, (3, 3, 0)) + (1 - soft) * od
        artefact[region] |= 4
        facts["blur"] = bool((region & tissue).any())
    if rng["pen"].uniform() < conf.pen_prob:  # ink over glass and tissue
        pr = rng["pen"]
        inks = []
        edge = tissue & ~ndimage.binary_erosion(tissue)  # strokes start at the tissue edge: over glass and tissue
        for _ in range(int(pr.integers(1, 4))):
            ink = str(pr.choice(list(INKS)))
            mark = d.stroke(pr, shape, d.random_point(pr, edge),
                            pr.uniform(0.4, 1.0) * size, pr.uniform(8, 16))
            od += mark[..., None] * (pr.uniform(0.9, 1.5) * np.asarray(INKS[ink]))  # (H, W, 1) * (3,)
            artefact[mark] |= 1
            inks.append(ink)
        facts["pen"] = "+".join(sorted(set(inks)))
    od += 0.02 * rng["noise"].standard_normal(od.shape)
    rgb = np.clip(i0 * np.exp(-od), 0, 255).astype(np.uint8)
    classes = np.where(stroma, 1, np.where(tumour, 2, 0)).astype(np.uint8)
    return rgb, {"classes": classes, "lymph": lymph, "artefact": artefact}, facts


def slide_target(truth: dict) -> float:
    """The label of a slide from its drawn masks: 100 * lymphocyte pixels in stroma / stroma pixels."""
    stroma = truth["classes"] == 1
    return 100.0 * float((truth["lymph"] & stroma).sum()) / max(int(stroma.sum()), 1)


def tile_truth(truth: dict, coords: np.ndarray, size0: float, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Per-tile truth of tiles with level-0 corners ``coords`` (N x 2) and side ``size0``; ``scale`` is
    truth-mask pixels per level-0 pixel. Returns N-arrays: ``lymph_density`` (lymphocyte share of the
    tile's stroma, NaN without stroma), ``stroma_frac``, ``tumour_frac``, ``artefact_frac``."""
    from adaptome.domains.pathology.tiling import coverage

    stroma = truth["classes"] == 1
    coords = np.asarray(coords, float)
    area_s = coverage(stroma, scale, coords, size0)
    lym_s = coverage(truth["lymph"] & stroma, scale, coords, size0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = np.where(area_s > 0, lym_s / np.where(area_s > 0, area_s, 1), np.nan)
    return {"lymph_density": dens, "stroma_frac": area_s,
            "tumour_frac": coverage(truth["classes"] == 2, scale, coords, size0),
            "artefact_frac": coverage(truth["artefact"] > 0, scale, coords, size0)}
