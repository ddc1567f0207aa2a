"""Stain normalisation maps a re-stained slide back to the reference; pen ink leaves the tissue mask;
the baseline encoder's lymphocyte features count small dark objects in stroma only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from adaptome.domains.pathology.config import SynthConfig
from adaptome.domains.pathology.synth_hard import Confounders, render_hard_slide

CLEAN = Confounders.from_config(SynthConfig(pen_prob=0.0, fold_prob=0.0, blur_prob=0.0))


@pytest.mark.parametrize("site, raw_min, norm_max", [(1, 15.0, 8.0), (2, 15.0, 4.0), (3, 12.0, 11.5)])
def test_macenko_maps_a_restained_slide_back_close_to_the_reference(site, raw_min, norm_max):
    """The same tissue drawn with the reference stain and with another site's stain: after each is
    normalised with its own estimate, the mean absolute difference over tissue (grey levels) falls
    from > raw_min to < norm_max (measured 18.2 -> 6.7, 17.8 -> 2.4, 16.5 -> 10.3)."""
    from adaptome.domains.pathology.stain_norm import estimate, normalise

    ref, truth, _ = render_hard_slide(0, 7, 0.3, 0, 512, 8, CLEAN)
    other, _, _ = render_hard_slide(0, 7, 0.3, site, 512, 8, CLEAN)
    tissue = truth["classes"] > 0
    raw = np.abs(other.astype(float) - ref)[tissue].mean()
    a = normalise(ref, estimate(ref[tissue], 250.0))
    b = normalise(other, estimate(other[tissue], 250.0))
    norm = np.abs(b.astype(float) - a)[tissue].mean()
    assert raw > raw_min and norm < norm_max and norm < 0.7 * raw


def test_tiles_are_read_normalised_with_the_estimate_stored_by_tile(tmp_path):
    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import TileConfig
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.stain_norm import from_attrs, normalise
    from adaptome.domains.pathology.synth import make_hard_cohort
    from adaptome.domains.pathology.tiling import TileReader, geometry_from_attrs, read_coords

    make_hard_cohort(tmp_path / "s", n_slides=2, seed=1, grid=6, confounders=replace(CLEAN, pair_frac=0.0))
    for norm in ("macenko", "none"):
        stages.tile(TileConfig(slides=str(tmp_path / "s"), out_dir=str(tmp_path / norm), tile_size=64,
                               thumb_size=256, stain_norm=norm), progress=False)
    coords, attrs = read_coords(tmp_path / "macenko" / "tiles_20x_64px_0ov" / "hard_001.h5")
    _, plain_attrs = read_coords(tmp_path / "none" / "tiles_20x_64px_0ov" / "hard_001.h5")
    est = from_attrs(attrs)
    assert est is not None and from_attrs(plain_attrs) is None and attrs["stain_norm"] == "macenko"
    s = open_slide(tmp_path / "s" / "hard_001.tiff")
    geom = geometry_from_attrs(attrs, s.level_downsamples)
    plain = geometry_from_attrs(plain_attrs, s.level_downsamples)
    s.close()
    x, y = coords[len(coords) // 2]
    raw = TileReader(tmp_path / "s" / "hard_001.tiff", plain).read(x, y)
    got = TileReader(tmp_path / "s" / "hard_001.tiff", geom).read(x, y)
    assert np.array_equal(got, normalise(raw, est)) and not np.array_equal(got, raw)


def test_pen_ink_leaves_the_tissue_mask_and_clean_tissue_stays():
    from adaptome.domains.pathology.segment import tissue_mask

    removed, total, kept_clean = 0, 0, []
    for i in range(4):
        rgb, truth, facts = render_hard_slide(5, i, 0.3, i, 512, 8, replace(CLEAN, pen_prob=1.0))
        thumb = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BOX))
        art = np.asarray(Image.fromarray(truth["artefact"]).resize((256, 256), Image.NEAREST)) > 0
        tis = np.asarray(Image.fromarray(truth["classes"]).resize((256, 256), Image.NEAREST)) > 0
        with_ink = tissue_mask(thumb, artefacts=False)
        without = tissue_mask(thumb, artefacts=True)
        pen_in_mask = art & with_ink  # ink the plain segmenter takes for tissue
        removed, total = removed + (pen_in_mask & ~without).sum(), total + pen_in_mask.sum()
        kept_clean.append((tis & ~art & without).sum() / (tis & ~art & with_ink).sum())
    # measured: 58 % of the ink the plain mask keeps is removed (thin strokes over tissue escape); 96.8-100 %
    # of clean tissue stays (the 2-pixel margin around the strokes goes with them)
    assert total > 500 and removed / total > 0.5 and min(kept_clean) > 0.95


def _tile(coverage: float, stroma: bool, rng) -> np.ndarray:
    """A 64-px tile on a uniform eosin (stroma) or pale (tumour) background with lymphocyte discs."""
    from adaptome.domains.pathology import synth_draw as d
    from adaptome.domains.pathology.stains import E_VEC, H_VEC
    from adaptome.domains.pathology.synth_hard import LYMPH_H

    region = np.ones((64, 64), bool)
    fp = d.disc(3)
    lym = d.stamp(rng, d.rate_for_coverage(coverage, fp), region, fp)
    od = (LYMPH_H * lym)[..., None] * H_VEC + (0.55 if stroma else 0.25) * E_VEC  # (T, T, 1) * (3,)
    return np.clip(250 * np.exp(-od), 0, 255).astype(np.uint8), lym.mean()


def test_lymph_features_estimate_stromal_coverage_and_ignore_tumour_lymphocytes():
    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.extract import finish_slide

    enc = build_encoder("baseline").eval()
    rng = np.random.default_rng(0)
    tiles, cov = zip(*[_tile(c, True, rng) for c in (0.05, 0.15, 0.3, 0.45)], _tile(0.3, False, rng))
    with torch.no_grad():  # the five tiles as one slide: the per-slide stroma cut falls between 0.25 and 0.55
        f = finish_slide(enc, enc(torch.from_numpy(np.stack(tiles))).numpy())[:, 35:]  # the 9 lymphocyte numbers
    assert enc.dim == 44 and f.shape == (5, 9)
    est = f[:4, 3]  # per-tile sTIL estimate |lymph & stroma| / |stroma|
    assert np.allclose(est, cov[:4], atol=0.08) and np.all(np.diff(est) > 0)
    assert f[4, 0] < 0.05 and f[4, 3] < 0.05 and f[4, 4] > 0.15  # tumour tile: no stroma, lymphocytes outside it
    with pytest.raises(Exception, match="unknown options"):
        build_encoder("baseline", options={"lymf": True})
    assert build_encoder("baseline", options={"lymph": False}).dim == 35


def test_lymph_features_do_not_count_spindle_fibroblasts():
    """Fibroblast nuclei are dark (c_H above the 0.9 cut) and small across, but not round: the core
    opening (a square that fits in a lymphocyte's disc, not in a 3.6-px-wide spindle) drops them."""
    from adaptome.domains.pathology import synth_draw as d
    from adaptome.domains.pathology.lymph_features import LymphObjectFeatures
    from adaptome.domains.pathology.synth_hard import FIBRO_H, LYMPH_H

    rng = np.random.default_rng(1)
    region = np.ones((64, 64), bool)
    spindles = d.spindles(rng, 0.15, region)
    fp = d.disc(3)
    lym = d.stamp(rng, d.rate_for_coverage(0.15, fp), region, fp)  # each kind on its own tile
    feats = LymphObjectFeatures(3.0)
    for mask, value, lo, hi in [(spindles, FIBRO_H, 0.0, 0.25), (spindles, 1.6, 0.0, 0.25), (lym, LYMPH_H, 0.9, 1.01)]:
        ch = torch.tensor(np.where(mask, value, 0.05), dtype=torch.float32)[None, None]  # (1, 1, T, T)
        f = feats(torch.cat([ch, torch.full_like(ch, 0.55)], 1))  # H and E planes, (1, 2, T, T) -> (1, 9)
        share = float(f[0, 1]) / mask.mean()  # detected lymphocyte area over the drawn area
        assert lo <= share <= hi, (value, share)


def _eosin_slide(strength: float, rng) -> np.ndarray:
    """Six 64-px tiles of one slide stained at eosin ``strength``: four stroma tiles (eosin 0.55 x strength,
    lymphocytes at 10 %) and two tumour tiles (eosin 0.3 x strength, no lymphocytes)."""
    from adaptome.domains.pathology import synth_draw as d
    from adaptome.domains.pathology.stains import E_VEC, H_VEC
    from adaptome.domains.pathology.synth_hard import LYMPH_H

    tiles = []
    for stroma in (True, True, True, True, False, False):
        fp = d.disc(3)
        lym = d.stamp(rng, d.rate_for_coverage(0.1, fp), np.ones((64, 64), bool), fp) if stroma else \
            np.zeros((64, 64), bool)
        od = (LYMPH_H * lym)[..., None] * H_VEC + ((0.55 if stroma else 0.3) * strength) * E_VEC  # (T, T, 3)
        tiles.append(np.clip(250 * np.exp(-od), 0, 255).astype(np.uint8))
    return np.stack(tiles)


@pytest.mark.parametrize("strength", [0.7, 1.0, 1.4])
def test_per_slide_stroma_cut_follows_the_eosin_strength(strength):
    """A pale (0.7) or eosin-heavy (1.4) slide: the fixed cut 0.42 calls pale stroma (0.385) tumour or
    heavy tumour (0.42) stroma; the per-slide cut (0.76 x the median eosin of the eosin-rich side after
    Otsu's split) finds the stroma at every strength, and equals the fixed-cut encoder run at that cut."""
    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.extract import finish_slide
    from adaptome.domains.pathology.lymph_features import SLIDE_CUT_FRACTION

    x = torch.from_numpy(_eosin_slide(strength, np.random.default_rng(3)))
    enc = build_encoder("baseline", options={"centre": False}).eval()  # raw stain numbers: the cut alone
    with torch.no_grad():
        raw = enc(x).numpy()
        fixed = build_encoder("baseline", options={"stroma_cut": 0.42, "centre": False})(x).numpy()
    cut = enc.net.lymph.slide_cut(raw[:, 35:])
    # the eosin-rich side is the stroma at 0.55 x strength (deconvolution exact to ~1e-3; grid step 0.025)
    assert cut == pytest.approx(SLIDE_CUT_FRACTION * 0.55 * strength, abs=0.02)
    f = finish_slide(enc, raw)
    assert f.shape == (6, 44)
    np.testing.assert_allclose(f[:, :35], fixed[:, :35])  # only the lymphocyte part depends on the cut
    assert np.all(f[:4, 35] > 0.99) and np.all(f[4:, 35] < 0.01)  # stroma share: stroma tiles only
    with torch.no_grad():
        at_cut = build_encoder("baseline", options={"stroma_cut": cut, "centre": False})(x).numpy()
    np.testing.assert_allclose(f, at_cut, atol=1e-5)  # = the fixed-cut encoder at the slide's cut
    fixed_ok = np.all(fixed[:4, 35] > 0.99) and np.all(fixed[4:, 35] < 0.01)
    assert fixed_ok == (strength == 1.0)  # the fixed cut fails on the pale and the eosin-heavy slide


def test_stroma_cut_option_is_checked_and_recorded():
    from adaptome.domains.pathology.encoders import build_encoder

    with pytest.raises(ValueError, match="stroma_cut must be 'slide' or a number, got 'otsu'"):
        build_encoder("baseline", options={"stroma_cut": "otsu"})
    assert build_encoder("baseline").recipe == {"lymph": True, "lymph_radius": 3.0, "stroma_cut": "slide",
                                                "centre": "scale"}
    enc = build_encoder("baseline", options={"stroma_cut": "0.4", "centre": False})
    assert enc.recipe["stroma_cut"] == 0.4 and not enc.needs_slide_pass
    assert build_encoder("baseline", options={"stroma_cut": 0.4}).needs_slide_pass  # the centring needs the slide
    with pytest.raises(ValueError, match="centre must be true, false, intensity or scale, got 'yes'"):
        build_encoder("baseline", options={"centre": "yes"})


def test_per_slide_raw_areas_equal_the_explicit_masks_at_every_grid_cut():
    """The tile pass's raw stroma and stromal-lymphocyte areas at the K grid cuts (computed from a
    per-tile histogram) equal mean_p [e_p > g_k] and mean_p [e_p > g_k and lymph_p] taken mask by mask."""
    import torch.nn.functional as F

    from adaptome.domains.pathology.lymph_features import LymphObjectFeatures

    gen = torch.Generator().manual_seed(0)
    ch = torch.full((3, 1, 48, 48), 0.2)
    for b in range(3):  # small dense round nuclei (lymphocyte-like) at random places
        for y, x in torch.randint(3, 45, (12, 2), generator=gen).tolist():
            ch[b, 0, y - 2:y + 3, x - 2:x + 3] = 2.0
    ramp = torch.linspace(0.0, 1.4, 48).view(1, 1, 1, 48).expand(3, 1, 48, 48)  # eosin over the whole grid
    ce = ramp * (0.5 + torch.rand(3, 1, 1, 1, generator=gen))
    m = LymphObjectFeatures(3.0, "slide")
    raw = m(torch.cat([ch, ce], 1))
    local_e = F.avg_pool2d(ce, 15, stride=1, padding=7, count_include_pad=False)  # (B, 1, T, T)
    core = (m._open(ch, m.k_core) > 0.9).float()
    lymph = (ch - m._open(ch, m.k) > 0.5) & (ch > 0.9) & (F.max_pool2d(core, 3, 1, 1) > 0)
    assert lymph.any()
    k = m.grid.numel()
    for j, g in enumerate(m.grid.tolist()):
        above = local_e > g  # (B, 1, T, T)
        torch.testing.assert_close(raw[:, 9 + j], above.flatten(1).float().mean(1), rtol=0, atol=1e-6)
        torch.testing.assert_close(raw[:, 9 + k + j], (above & lymph).flatten(1).float().mean(1), rtol=0, atol=1e-6)
