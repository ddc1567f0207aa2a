"""A user's own inputs through the CLI: label tables as people write them (fractions, duplicate ids,
empty cells, stray spaces, no site column), slide folders with two files of one id, and features or
tiles of another slide under the same id. Each is refused with one line naming the file and the
problem, before anything is written, or handled as documented (ids stripped, unlabelled slides
counted)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology.cli import app


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def _labels(cohort) -> list[dict]:
    with open(cohort["labels"], newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows, fields=("slide_id", "case_id", "target", "site"), newline="\n", encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        f.write(",".join(fields) + newline)
        for r in rows:
            f.write(",".join(str(r.get(k, "")) for k in fields) + newline)
    return path


def _train(cohort, labels, out, *extra):
    return _cli("train", "--features-dir", cohort["features_dir"], "--labels", labels, "--out", out, "--k", 2,
                "--set", "max_steps=3", *extra)


@pytest.mark.parametrize("case", ["fractions", "duplicate", "duplicate_same", "empty_case", "no_site"])
def test_train_refuses_label_tables_that_would_be_read_wrong(cohort, tmp_path, case):
    rows = _labels(cohort)
    group = ["--group-by", "site"] if case == "no_site" else []
    fields = ("slide_id", "case_id", "target", "site")
    if case == "fractions":  # 0-1 fractions: read as %, every slide would be sTIL-low and R2 nonsense
        rows = [{**r, "target": float(r["target"]) / 100} for r in rows]
        want = "every target lies within 0..1"
    elif case == "duplicate":  # the same slide again, another case: it would be in a training and a test fold
        rows = rows + [{**rows[0], "case_id": "another_case", "target": 80}]
        want = f"line {len(rows) + 1}: slide '{rows[0]['slide_id']}' is listed again (first on line 2)"
    elif case == "duplicate_same":
        rows = rows + [rows[3]]
        want = f"line {len(rows) + 1}: slide '{rows[3]['slide_id']}' is listed again (first on line 5)"
    elif case == "empty_case":  # empty case ids would all fall in one group
        rows = rows[:5] + [{**rows[5], "case_id": ""}] + rows[6:]
        want = "line 7: empty case_id"
    else:  # --group-by site without a site column fell back to case-level folds
        fields = ("slide_id", "case_id", "target")
        want = f"{len(rows)} of {len(rows)} labelled slides have no site"
    labels = _write(tmp_path / "labels.csv", rows, fields)
    r = _train(cohort, labels, tmp_path / "out", *group)
    assert r.exit_code == 2, r.output
    assert _errors(r.output) == [_errors(r.output)[0]] and str(labels) in r.output and want in r.output, r.output
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_train_strips_ids_reads_bom_crlf_and_counts_unlabelled_slides(cohort, tmp_path):
    rows = _labels(cohort)
    kept = rows[:-3]  # three slides with features but no label
    labels = _write(tmp_path / "labels.csv", [{**r, "slide_id": f" {r['slide_id']} "} for r in kept],
                    newline="\r\n", encoding="utf-8-sig")
    r = _train(cohort, labels, tmp_path / "out")
    assert r.exit_code == 0, r.output
    left = sorted(r2["slide_id"] for r2 in rows[-3:])
    assert f"3 feature file(s) without a label left out, e.g. {left}" in r.output
    run = next((tmp_path / "out").glob("mil_*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unlabelled"] == left and summary["n_slides"] == len(kept)
    with open(run / "predictions.csv", newline="") as f:
        pred = {p["slide_id"]: float(p["target"]) for p in csv.DictReader(f)}
    assert pred == {r2["slide_id"]: float(r2["target"]) for r2 in kept}  # every labelled slide, joined by its id
    assert "3 feature files without a label left out" in (run / "summary.md").read_text()


def test_two_slide_files_with_one_id_are_refused(cohort, tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy2(cohort["slides"] / "train_000.tiff", d / "A.tiff")
    shutil.copy2(cohort["slides"] / "train_001.tiff", d / "A.tif")  # A.tif's tiles would replace A.tiff's
    shutil.copy2(cohort["slides"] / "train_002.tiff", d / "B.tiff")
    r = _cli("tile", d, "--out", tmp_path / "job", "--tile-size", 64)
    assert r.exit_code == 2, r.output
    assert _errors(r.output) == [f"error: {d}: 1 slide id(s) name several files, e.g. 'A': A.tif, A.tiff; outputs "
                                 "are named by the id, so rename or move one of each"]
    assert not (tmp_path / "job").exists()


def test_features_or_tiles_of_another_slide_with_the_same_id_are_refused(cohort, trained, tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy2(cohort["slides"] / "train_001.tiff", d / "train_000.tiff")  # another slide under train_000's id
    model = trained["real"]["out_dir"]
    r = _cli("score", d, "--model", model, "--features-dir", cohort["features_dir"], "--out", tmp_path / "scores")
    assert r.exit_code == 2, r.output
    assert f"{cohort['features_dir'] / 'train_000.h5'}: made from another slide than {d / 'train_000.tiff'}" \
        in r.output and "-byte file, this one has" in r.output, r.output
    assert not (tmp_path / "scores" / "tiles" / "train_000.csv").exists()
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for name in ("config.yaml", "train_000.h5"):
        shutil.copy2(cohort["tiles_dir"] / name, tiles / name)
    r = _cli("extract", d, "--tiles-dir", tiles, "--set", "num_workers=0")
    assert r.exit_code == 2, r.output
    assert f"{tiles / 'train_000.h5'}: made from another slide than {d / 'train_000.tiff'}" in r.output, r.output
    assert not (tiles / "features_baseline" / "train_000.h5").exists()


def test_a_slide_smaller_than_one_tile_fails_at_tile_naming_why(cohort, tmp_path):
    import numpy as np
    import tifffile

    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy2(cohort["slides"] / "train_000.tiff", d / "big.tiff")
    rgb = np.full((48, 40, 3), 200, np.uint8)
    tifffile.imwrite(d / "tiny.tiff", rgb, tile=(16, 16), photometric="rgb", compression="zlib", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")  # 0.5 um/px, 40 x 48 px: a 64-px tile at 20x does not fit
    r = _cli("tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--skip-errors")
    assert r.exit_code == 0, r.output
    assert (f"failed tiny: {d / 'tiny.tiff'}: no tiles: the slide (40 x 48 px at level 0) is smaller than one tile "
            "(64 px at 0.5 um/px = 64 level-0 px)") in " ".join(r.output.split()), r.output
    tdir = tmp_path / "job" / "tiles_20x_64px_0ov"
    assert (tdir / "big.h5").is_file() and not (tdir / "tiny.h5").exists()


def test_roi_of_several_classes_is_refused_and_roi_classes_picks_the_region(cohort, tmp_path):
    import h5py
    import openslide

    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy2(cohort["slides"] / "train_000.tiff", d / "s.tiff")
    w, h = openslide.OpenSlide(str(d / "s.tiff")).dimensions
    box = lambda y0, y1: [[[0, y0], [w, y0], [w, y1], [0, y1], [0, y0]]]  # noqa: E731
    roi = tmp_path / "roi"
    roi.mkdir()
    (roi / "s.geojson").write_text(json.dumps([  # a QuPath export: the tumour bed and an excluded region
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": box(0, h // 2)},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": box(h // 2, h)},
         "properties": {"objectType": "annotation", "classification": {"name": "Ignore*"}}}]))
    base = ("tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--set", f"roi_dir={roi}")
    r = _cli(*base)
    assert r.exit_code == 2, r.output
    assert f"{roi / 's.geojson'}: ROI polygons of several classes ['Ignore*', 'Tumor']" in r.output, r.output
    r = _cli(*base, "--set", "roi_classes=[Tumor]")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "job" / "tiles_20x_64px_0ov" / "s.h5", "r") as f:
        y = f["coords"][:, 1]
        size0 = float(f.attrs["tile_size_level0"])
    assert len(y) > 0 and (y + size0 / 2).max() <= h // 2  # every kept tile is mostly in the tumour bed


def test_labels_joins_the_digi_stils_table_to_tcga_slide_files_by_case(tmp_path):
    from adaptome.domains.pathology.slide import SAMPLE_LABELS

    d = tmp_path / "slides"
    d.mkdir()
    names = ["TCGA-A1-A0SK-01Z-00-DX1.AB12", "TCGA-A1-A0SK-01Z-00-DX2.CD34", "TCGA-A2-A0CM-01Z-00-DX1.EF56",
             "TCGA-ZZ-0000-01Z-00-DX1.GH78", "not_tcga"]
    for n in names:
        (d / f"{n}.svs").write_bytes(b"")  # only the names are read
    out = tmp_path / "labels.csv"
    r = _cli("labels", SAMPLE_LABELS, "--slides", d, "--out", out)
    assert r.exit_code == 0, r.output
    assert "3 rows (2 cases)" in r.output and "2 slide(s) without a case in TCGA-cohort.csv left out, e.g. " \
        "['TCGA-ZZ-0000-01Z-00-DX1.GH78', 'not_tcga']" in r.output, r.output
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    with open(SAMPLE_LABELS, newline="", encoding="utf-8-sig") as f:  # the published fractions, by case
        score = {row["TCGA Cases IDs"]: float(row["Digi-sTILs Score"]) for row in csv.DictReader(f)}
    assert [g["slide_id"] for g in got] == names[:3]
    for g in got:
        case = "-".join(g["slide_id"].split("-")[:3])
        assert g["case_id"] == case and g["site"] == case.split("-")[1]
        assert float(g["target"]) == pytest.approx(100 * score[case], abs=1e-4)
    before = out.read_bytes()
    r = _cli("labels", SAMPLE_LABELS, "--slides", d, "--out", out)
    assert r.exit_code == 2 and _errors(r.output) == [f"error: {out}: exists; not overwritten"]
    assert out.read_bytes() == before


def test_heatmap_refuses_tiles_beyond_the_slide(cohort, tmp_path):
    import openslide

    slide = cohort["slides"] / "train_000.tiff"
    w, h = openslide.OpenSlide(str(slide)).dimensions
    tiles = tmp_path / "other.csv"  # tiles of a larger slide (a 40x scan of the same field)
    tiles.write_text(f"x,y,size,score_pct,attention\n0,0,128,10,0.5\n{w},{h},128,20,0.5\n")
    r = _cli("heatmap", slide, tiles, "--out", tmp_path / "h.png")
    assert r.exit_code == 2, r.output
    assert _errors(r.output) == [f"error: {tiles}: tiles reach beyond {slide} ({w} x {h} px at level 0): the "
                                 "scores of another slide?"]
    assert not (tmp_path / "h.png").exists()


def test_tiling_finer_than_the_scan_is_refused_unless_allowed(cohort, tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy2(cohort["slides"] / "train_000.tiff", d / "s.tiff")  # scanned at 0.5 um/px (20x)
    base = ("tile", d, "--out", tmp_path / "job", "--mag", 40, "--tile-size", 64)
    r = _cli(*base)
    assert r.exit_code == 2, r.output
    assert _errors(r.output) == [f"error: {d / 's.tiff'}: scanned at 0.5 um/px (about 20x), coarser than the target "
                                 "0.25 um/px: its tiles would be enlarged 2x; tile at --mpp 0.5 or coarser, or pass "
                                 "--set allow_upsample=true"]
    assert not (tmp_path / "job" / "tiles_40x_64px_0ov" / "s.h5").exists()
    r = _cli(*base, "--set", "allow_upsample=true")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "job" / "tiles_40x_64px_0ov" / "s.h5").is_file()


def test_an_mpp_csv_giving_one_slide_two_resolutions_is_refused(cohort, tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy2(cohort["slides"] / "train_000.tiff", d / "s.tiff")
    mpp = tmp_path / "mpp.csv"
    mpp.write_text("slide,mpp\ns.tiff,0.25\nother.svs,0.5\ns,0.5\n")  # the last row for s won silently
    r = _cli("tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--mpp-csv", mpp)
    assert r.exit_code == 2, r.output
    assert _errors(r.output) == [f"error: {mpp}: line 4: slide 's' is given mpp 0.5 here and 0.25 on line 2"]
    assert not (tmp_path / "job").exists()


def test_a_model_trained_inside_rois_scores_only_inside_rois(cohort, tmp_path):
    """Tiles restricted to ROIs are recorded as such (tiles, features, the model's recipe). Scoring on the fly
    with that model refuses to score the whole tissue (naming its model.json) and, given the ROIs, scores exactly
    the tiles the training features hold; stored features of every tissue tile are refused too."""
    import h5py
    import openslide

    d, roi = tmp_path / "slides", tmp_path / "roi"
    d.mkdir()
    roi.mkdir()
    rows = _labels(cohort)[:4]
    for r in rows:
        shutil.copy2(cohort["slides"] / f"{r['slide_id']}.tiff", d / f"{r['slide_id']}.tiff")
        w, h = openslide.OpenSlide(str(d / f"{r['slide_id']}.tiff")).dimensions
        (roi / f"{r['slide_id']}.geojson").write_text(json.dumps({"type": "Feature", "geometry": {
            "type": "Polygon", "coordinates": [[[0, 0], [w, 0], [w, h // 2], [0, h // 2], [0, 0]]]}}))
    labels = _write(tmp_path / "labels.csv", [{**r, "case_id": r["slide_id"]} for r in rows])
    for job, extra in (("job", ("--set", f"roi_dir={roi}")), ("whole", ())):
        r = _cli("tile", d, "--out", tmp_path / job, "--tile-size", 64, *extra)
        assert r.exit_code == 0, r.output
        r = _cli("extract", d, "--tiles-dir", tmp_path / job / "tiles_20x_64px_0ov", "--num-workers", 0)
        assert r.exit_code == 0, r.output
    feats = tmp_path / "job" / "tiles_20x_64px_0ov" / "features_baseline"
    n_roi = {}
    for r in rows:
        with h5py.File(feats / f"{r['slide_id']}.h5", "r") as f:
            assert bool(f.attrs["roi"]) and len(f["coords"]) > 0
            n_roi[r["slide_id"]] = len(f["coords"])
    with h5py.File(tmp_path / "whole" / "tiles_20x_64px_0ov" / "features_baseline" / f"{rows[0]['slide_id']}.h5",
                   "r") as f:
        assert not bool(f.attrs["roi"]) and len(f["coords"]) > n_roi[rows[0]["slide_id"]]
    r = _cli("train", "--features-dir", feats, "--labels", labels, "--out", tmp_path / "mil", "--k", 2, "--set",
             "max_steps=3", "--set", "batch_size=1")
    assert r.exit_code == 0, r.output
    model = next((tmp_path / "mil").glob("mil_*"))
    recipe = json.loads((model / "fold_0" / "model.json").read_text())["features"]
    assert recipe["roi"] is True and json.loads(recipe["roi_classes"]) == []
    r = _cli("score", d, "--model", model, "--out", tmp_path / "s0")
    assert r.exit_code == 2, r.output
    assert "model.json: the model was trained on tiles inside regions of interest" in r.output, r.output
    assert not (tmp_path / "s0" / "slides.csv").exists()
    r = _cli("score", d, "--model", model, "--features-dir",
             tmp_path / "whole" / "tiles_20x_64px_0ov" / "features_baseline", "--out", tmp_path / "s1")
    assert r.exit_code == 2, r.output
    assert "features of every tissue tile, but the model was trained on tiles inside regions" in r.output, r.output
    r = _cli("score", d, "--model", model, "--out", tmp_path / "s2", "--set", f"roi_dir={roi}",
             "--set", "heatmaps=false")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "s2" / "slides.csv", newline="") as f:
        scored = {x["slide_id"]: int(x["n_tiles"]) for x in csv.DictReader(f)}
    assert scored == n_roi
    (roi / f"{rows[1]['slide_id']}.geojson").unlink()
    r = _cli("score", d, "--model", model, "--out", tmp_path / "s3", "--set", f"roi_dir={roi}")
    assert r.exit_code == 2 and f"{rows[1]['slide_id']}.geojson: ROI GeoJSON for slide" in r.output, r.output


@pytest.mark.parametrize("args,msg", [
    (("--set", "decode_threads=4"), "decode_threads 4: only the tiff-jpeg reader decodes in threads"),
    (("--set", "reader=tiff-jpeg", "--set", "decode_cpu_share=1.5"), "decode_cpu_share within 0..1"),
])
def test_extract_refuses_decode_options_it_would_ignore(cohort, tmp_path, args, msg):
    r = _cli("extract", cohort["slides"], "--tiles-dir", cohort["features_dir"].parent, "--num-workers", 0, *args)
    assert r.exit_code == 2 and msg in r.output, r.output


@pytest.mark.parametrize("opt", ["roi_dir=rois", "mpp_csv=mpp.csv", "encoder_weights=w.safetensors"])
def test_score_with_stored_features_refuses_on_the_fly_options(cohort, trained, tmp_path, opt):
    r = _cli("score", cohort["slides"] / "train_000.tiff", "--model", trained["real"]["out_dir"], "--features-dir",
             cohort["features_dir"], "--out", tmp_path / "s", "--set", opt)
    name = opt.split("=")[0]
    assert r.exit_code == 2 and f"{name} {opt.split('=')[1]}: used only when scoring on the fly" in r.output, r.output
    assert not (tmp_path / "s").exists()


def test_score_refuses_roi_classes_without_roi_dir(cohort, trained, tmp_path):
    r = _cli("score", cohort["slides"] / "train_000.tiff", "--model", trained["real"]["out_dir"], "--out",
             tmp_path / "s", "--set", "roi_classes=[Tumor]")
    assert r.exit_code == 2 and "roi_classes ['Tumor']: names the classes of the ROIs in roi_dir" in r.output, r.output
    assert not (tmp_path / "s").exists()


def test_a_folder_of_plain_images_names_the_slide_formats_and_why(tmp_path):
    """A folder holding only PNG / JPEG exports said 'no slide files found' and nothing else."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (64, 64), (200, 150, 200)).save(tmp_path / "imgs" / name)
    r = _cli("segment", tmp_path / "imgs", "--out", tmp_path / "job")
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    line = next(ln for ln in r.output.splitlines() if "no slide files found" in ln)
    assert ".svs" in line and ".tiff" in line and "a.png" in line and "microns per pixel" in line, line
    assert not (tmp_path / "job").exists()


def test_tile_says_when_the_jobs_segment_run_used_another_tissue_mask(cohort, tmp_path):
    """``segment`` (whose QC images a user checks) and ``tile`` each make a tissue mask; a user who tuned
    segment's mask and tiled with the defaults got tiles from a mask nobody looked at, without a word."""
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy2(cohort["slides"] / "train_000.tiff", d / "one.tiff")
    job = tmp_path / "job"
    assert _cli("segment", d, "--out", job, "--set", "blur=9", "--set", "close=4").exit_code == 0
    r = _cli("tile", d, "--out", job, "--tile-size", 64)
    assert r.exit_code == 0, r.output
    note = " ".join(r.output.split())
    assert "segment run segment_otsu_b9_c4 of this job used blur 9, close 4" in note, r.output
    assert "its QC images do not show the mask that chooses these tiles" in note
    # the same settings: no note
    r = _cli("tile", d, "--out", job, "--tile-size", 64, "--set", "blur=9", "--set", "close=4", "--overwrite")
    assert r.exit_code == 0 and "QC images" not in r.output, r.output
