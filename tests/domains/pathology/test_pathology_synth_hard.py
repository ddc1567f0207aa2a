"""The hard synthetic cohort: the label and the truth table are what is drawn; each switch changes only its part."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology.config import SynthConfig
from adaptome.domains.pathology.stains import E_VEC, H_VEC
from adaptome.domains.pathology.synth_hard import Confounders, case_plan, render_hard_slide, slide_target, tile_truth

CLEAN = Confounders.from_config(SynthConfig(pen_prob=0.0, fold_prob=0.0, blur_prob=0.0))


def _render(conf: Confounders, site: int = 0, m: float = 0.3, index: int = 3):
    return render_hard_slide(11, index, m, site, 256, 4, conf)


def test_label_is_stromal_lymphocyte_coverage_of_the_drawn_masks():
    rgb, truth, _ = _render(Confounders.from_config(SynthConfig(pen_prob=1.0, fold_prob=1.0, blur_prob=0.0)))
    stroma = truth["classes"] == 1
    expected = 100.0 * np.logical_and(truth["lymph"], stroma).sum() / stroma.sum()
    assert slide_target(truth) == pytest.approx(expected, abs=1e-12)
    # the lymphocyte mask is what the image shows: dense haematoxylin where drawn, not elsewhere in stroma
    od = -np.log(np.clip(rgb.astype(float), 1, 250) / 250.0)
    m = np.linalg.pinv(np.stack([H_VEC, E_VEC]))  # (3, 2): OD -> (c_H, c_E)
    c_h = (od @ m)[..., 0]  # (H, W, 3) @ (3, 2) -> (H, W, 2) -> (H, W)
    clean = truth["artefact"] == 0
    lym, other = truth["lymph"] & stroma & clean, ~truth["lymph"] & stroma & clean
    assert np.median(c_h[lym]) > 1.1 and np.median(c_h[other]) < 0.3
    # intratumoral lymphocytes are drawn but not counted
    assert (truth["lymph"] & (truth["classes"] == 2)).any()


def test_tile_truth_matches_an_explicit_count():
    _, truth, _ = _render(CLEAN)
    coords = np.array([[0, 0], [64, 128], [128, 64], [192, 192]])
    tt = tile_truth(truth, coords, 64)
    for i, (x, y) in enumerate(coords):
        cls, lym = truth["classes"][y:y + 64, x:x + 64], truth["lymph"][y:y + 64, x:x + 64]
        s = (cls == 1).sum()
        assert tt["stroma_frac"][i] == pytest.approx(s / 64 ** 2)
        assert tt["tumour_frac"][i] == pytest.approx((cls == 2).sum() / 64 ** 2)
        if s:
            assert tt["lymph_density"][i] == pytest.approx((lym & (cls == 1)).sum() / s)
        else:
            assert np.isnan(tt["lymph_density"][i])


@pytest.mark.parametrize("switch, bit", [("pen_prob", 1), ("fold_prob", 2), ("blur_prob", 4)])
def test_an_artefact_switch_changes_only_the_pixels_of_its_artefact(switch, bit):
    rgb0, t0, _ = _render(CLEAN)
    rgb1, t1, facts = _render(replace(CLEAN, **{switch: 1.0}))
    assert np.array_equal(t0["classes"], t1["classes"]) and np.array_equal(t0["lymph"], t1["lymph"])
    assert slide_target(t0) == slide_target(t1)
    art = (t1["artefact"] & bit) > 0
    assert art.any() and (t1["artefact"] & ~np.uint8(bit)).max() == 0
    changed = (rgb0 != rgb1).any(2)
    if bit == 4:  # blur is feathered over ~2.3 sigma (9 px) around its region
        from scipy import ndimage

        art = ndimage.distance_transform_edt(~art) <= 12
    assert changed.any() and not (changed & ~art).any()


def test_intratumoral_lymphocytes_and_dark_confounders_do_not_move_the_label():
    _, t_all, _ = _render(replace(CLEAN, intratumoral=True, dark_confounders=True))
    _, t_none, _ = _render(replace(CLEAN, intratumoral=False, dark_confounders=False))
    tumour = t_all["classes"] == 2
    assert (t_all["lymph"] & tumour).any() and not (t_none["lymph"] & tumour).any()
    stroma = t_all["classes"] == 1
    assert np.array_equal(t_all["lymph"] & stroma, t_none["lymph"] & stroma)
    assert slide_target(t_all) == slide_target(t_none)


@pytest.mark.parametrize("site", [0, 1, 2, 3])
def test_lymphocytes_are_darker_than_the_dark_pixel_cut_at_every_site(site):
    """Lymphocytes are haematoxylin-dense like real ones, so the dark-pixel baseline (grey < 105) is a fair
    opponent; the dark confounders (fibroblasts, red cells) are dark too, so dark pixels are not lymphocytes."""
    from adaptome.domains.pathology.baselines import DARK_GREY

    rgb, truth, _ = _render(replace(CLEAN, pen_prob=0.0), site=site)
    grey = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])  # (H, W, 3) @ (3,) -> (H, W), ITU-R 601 luma
    lym = truth["lymph"] & (truth["classes"] == 1)
    assert np.median(grey[lym]) < DARK_GREY - 15 and (grey[lym] < DARK_GREY).mean() > 0.99
    # measured on this slide: other dark stroma pixels are 19-23 % of the lymphocyte pixels at sites 0, 1, 3
    # (fibroblasts, red cells, vessel walls) and ~0 at the pale site 2
    other = (truth["classes"] == 1) & ~truth["lymph"]
    if site != 2:
        assert (grey[other] < DARK_GREY).sum() > 0.1 * lym.sum()


def test_stain_variation_zero_makes_every_site_stain_alike():
    a, _, _ = _render(replace(CLEAN, stain_variation=0.0), site=0)
    b, _, _ = _render(replace(CLEAN, stain_variation=0.0), site=1)
    c, _, _ = _render(CLEAN, site=1)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5  # the haematoxylin-heavy site looks different


def test_case_plan_balances_sites_against_the_target_and_pairs_cases():
    plan = case_plan(40, 4, seed=0, pair_frac=0.25)
    cases = {p["case"] for p in plan}
    assert len(plan) == 40 and len(cases) == 32  # ceil(40 / 1.25) cases, 8 of them with two slides
    assert sum(p["section"] for p in plan) == 8
    first = {p["case"]: p for p in plan if p["section"] == 0}
    by_site = [np.mean([p["m"] for p in first.values() if p["site"] == s]) for s in range(4)]
    all_m = np.array([p["m"] for p in first.values()])
    assert max(by_site) - min(by_site) < 0.5 * all_m.std()  # balanced: per-site means within half an sd
    assert np.median(all_m) < all_m.mean()  # skewed low, like breast-cancer cohorts


def test_cli_hard_cohort_ships_labels_and_truth_tables_that_agree(tmp_path):
    from adaptome.domains.pathology.cli import app
    from adaptome.domains.pathology.synth import read_hard_truth

    out = tmp_path / "hard"
    r = CliRunner().invoke(app, ["synth", "--out", str(out), "--n-slides", "3", "--set", "grid=4",
                                 "--set", "pen_prob=1.0", "--set", "pair_frac=0.5"])
    assert r.exit_code == 0, r.output
    labels = list(csv.DictReader((out / "labels.csv").open()))
    facts = {f["slide_id"]: f for f in csv.DictReader((out / "truth" / "slides.csv").open())}
    assert len(labels) == 3 and len({r["case_id"] for r in labels}) == 2
    for row in labels:
        truth, scale = read_hard_truth(out / "truth" / f"{row['slide_id']}.npz")
        assert scale == 1.0 and float(row["target"]) == pytest.approx(slide_target(truth), abs=1e-4)
        assert facts[row["slide_id"]]["pen"] != ""
        tiles = list(csv.DictReader((out / "truth" / f"{row['slide_id']}_tiles.csv").open()))
        assert len(tiles) == 16
        st = np.array([float(t["stroma_frac"]) for t in tiles])
        assert np.mean(st) == pytest.approx((truth["classes"] == 1).mean(), abs=1e-5)
