"""Audit round 3, through the CLI: label sheets as pathologists hand them over (a case without a score),
and what a computational pathologist does next with other slides and reruns."""

from __future__ import annotations

import csv
import json

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


def _write(path, rows, fields=("slide_id", "case_id", "target", "site")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(",".join(fields) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(k, "")) for k in fields) + "\n")
    return path


def _train(cohort, labels, out, *extra):
    return _cli("train", "--features-dir", cohort["features_dir"], "--labels", labels, "--out", out, "--k", 2,
                "--set", "max_steps=3", *extra)


def test_train_leaves_out_slides_with_an_empty_score_and_lists_them(cohort, tmp_path):
    rows = _labels(cohort)
    blank = {rows[2]["slide_id"], rows[7]["slide_id"]}
    sheet = [{**r, "target": " " if r["slide_id"] == rows[7]["slide_id"] else ""} if r["slide_id"] in blank else r
             for r in rows]
    labels = _write(tmp_path / "labels.csv", sheet)
    r = _train(cohort, labels, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert (f"2 labelled slide(s) without a target (empty cell) left out: {sorted(blank)}"
            in " ".join(r.output.split())), r.output
    run = next((tmp_path / "out").glob("mil_*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["no_target"] == sorted(blank) and summary["n_slides"] == len(rows) - 2
    assert summary["unlabelled"] == []  # listed as unscored, not as slides the sheet does not know
    with open(run / "predictions.csv", newline="") as f:
        assert {p["slide_id"] for p in csv.DictReader(f)} == {r2["slide_id"] for r2 in rows} - blank
    assert "2 labelled slides without a target (empty cell) left out" in (run / "summary.md").read_text()


def test_a_score_that_is_not_a_number_is_still_refused(cohort, tmp_path):
    rows = _labels(cohort)
    for bad, want in (("NA", "target 'NA' is not a number"), ("nan", "target 'nan' is not a number"),
                      ("130", "target 130.0 outside 0..100")):
        sheet = rows[:3] + [{**rows[3], "target": bad}] + rows[4:]
        labels = _write(tmp_path / "labels.csv", sheet)
        r = _train(cohort, labels, tmp_path / "out")
        assert r.exit_code == 2, r.output
        assert _errors(r.output) == [_errors(r.output)[0]] and f"line 5: {want}" in r.output, r.output
        assert not (tmp_path / "out").exists()
    labels = _write(tmp_path / "labels.csv", [{**r, "target": ""} for r in rows])
    r = _train(cohort, labels, tmp_path / "out")
    assert r.exit_code == 2 and f"no slide with a target ({len(rows)} rows with an empty target)" in r.output, r.output


def test_score_refuses_stored_features_of_tiles_chosen_with_another_tissue_threshold(cohort, tmp_path):
    """A model trained on tiles with >= 50 % tissue scored features of tiles chosen at 20 % (more edge and
    background tiles than it ever saw) without a word; on the fly it would choose them as in training."""
    import shutil

    r = _train(cohort, cohort["labels"], tmp_path / "run", "--set", "batch_size=4")
    assert r.exit_code == 0, r.output
    model = next((tmp_path / "run").glob("mil_*"))
    slides = tmp_path / "slides"
    slides.mkdir()
    for sid in ("train_000", "train_001"):
        shutil.copy2(cohort["slides"] / f"{sid}.tiff", slides / f"{sid}.tiff")
    for opt in ("min_tissue=0.2", "close=4", "thumb_size=512"):
        job = tmp_path / f"job_{opt.split('=')[0]}"
        same = [] if opt.startswith("thumb_size") else ["--set", "thumb_size=256"]  # the cohort's thumbnails
        r = _cli("tile", slides, "--out", job, "--mag", 20, "--tile-size", 64, *same, "--set", opt)
        assert r.exit_code == 0, r.output
        r = _cli("extract", slides, "--tiles-dir", job / "tiles_20x_64px_0ov", "--set", "num_workers=0")
        assert r.exit_code == 0, r.output
        feats = job / "tiles_20x_64px_0ov" / "features_baseline"
        r = _cli("score", slides, "--model", model, "--features-dir", feats, "--out", tmp_path / "scores")
        assert r.exit_code == 2, r.output
        key, value = opt.split("=")
        assert (f"{feats / 'train_000.h5'}: features made with {key} {float(value) if '.' in value else int(value)!r}, "
                "but the model was trained on features with") in r.output, r.output
        assert not list((tmp_path / "scores").glob("tiles/*.csv"))  # no slide scored
    r = _cli("score", slides, "--model", model, "--features-dir", cohort["features_dir"], "--out", tmp_path / "scores")
    assert r.exit_code == 0, r.output  # the features the model was trained on are scored as before


def _tcga_features(cohort, tmp_path, n=8):
    """The cohort's first ``n`` feature files named like TCGA diagnostic slides (slide barcodes), and the
    cases' scores as a pathologist's case-level sheet (``case_id,target``); case 0 has two slides."""
    import shutil

    rows = _labels(cohort)[:n]
    fdir = tmp_path / "features"
    fdir.mkdir()
    cases, ids = [], []
    for i, r in enumerate(rows):
        j = max(i - 1, 0)  # slides 0 and 1 are two sections of one case
        case = f"TCGA-A{j % 4}-A{j:03d}"
        sid = f"{case}-01Z-00-DX{1 + (i == 1)}.5F2A9C{i}"
        shutil.copy2(cohort["features_dir"] / f"{r['slide_id']}.h5", fdir / f"{sid}.h5")
        ids.append(sid)
        if i != 1:
            cases.append({"case_id": case, "target": r["target"]})
    return fdir, ids, cases


def test_train_on_a_case_level_sheet_names_the_slide_barcodes_and_the_labels_command(cohort, tmp_path):
    fdir, ids, cases = _tcga_features(cohort, tmp_path)
    sheet = _write(tmp_path / "cases.csv", [{**c, "slide_id": c["case_id"]} for c in cases],
                   ("slide_id", "case_id", "target"))
    r = _cli("train", "--features-dir", fdir, "--labels", sheet, "--out", tmp_path / "out", "--k", 2)
    assert r.exit_code == 2, r.output
    err = " ".join(r.output.split())
    assert (f"{len(cases)} labelled slide id(s) are TCGA case ids, e.g. 'TCGA-A0-A000', and the feature files of "
            f"their slides carry slide barcodes ({ids[0]}, {ids[1]})") in err, err
    assert "adaptome pathology labels" in err and not (tmp_path / "out").exists()


def test_labels_joins_a_case_level_sheet_to_the_slide_barcodes(cohort, tmp_path):
    fdir, ids, cases = _tcga_features(cohort, tmp_path)
    slides = tmp_path / "slides"
    slides.mkdir()
    for sid in ids + ["TCGA-ZZ-Z999-01Z-00-DX1.0"]:  # one slide of a case the sheet does not hold
        (slides / f"{sid}.svs").write_bytes(b"")
    cases[3]["target"] = ""  # a case the pathologist did not score
    sheet = _write(tmp_path / "cases.csv", cases, ("case_id", "target"))
    r = _cli("labels", sheet, "--slides", slides, "--out", tmp_path / "labels.csv")
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"{len(ids) - 1} rows ({len(cases) - 1} cases) -> {tmp_path / 'labels.csv'}" in out, out
    assert "1 slide(s) without a case in cases.csv left out, e.g. ['TCGA-ZZ-Z999-01Z-00-DX1.0']" in out, out
    assert f"1 case(s) without a target (empty cell) left out: ['{cases[3]['case_id']}']" in out, out
    got = {r2["slide_id"]: r2 for r2 in _labels({"labels": tmp_path / "labels.csv"})}
    assert got[ids[0]]["case_id"] == got[ids[1]]["case_id"] == "TCGA-A0-A000"  # two slides of one case, one fold
    assert float(got[ids[0]]["target"]) == float(got[ids[1]]["target"]) == float(cases[0]["target"])
    assert got[ids[2]]["site"] == "A1" and ids[4] not in got
    r = _cli("train", "--features-dir", fdir, "--labels", tmp_path / "labels.csv", "--out", tmp_path / "out",
             "--k", 2, "--set", "max_steps=3", "--set", "batch_size=2")
    assert r.exit_code == 0, r.output
    assert "1 feature file(s) without a label left out" in r.output, r.output


def test_heatmap_refuses_the_scores_of_another_slide_that_fit_inside_it(cohort, tmp_path):
    """The same tissue scanned at 40x: its 20x twin's tiles fit inside it, so the bounds check let the heatmap
    paint them over its top-left quarter at half scale; the scoring record beside the tiles CSV names the
    slide they were scored on."""
    import numpy as np
    import tifffile

    from adaptome.domains.pathology.slide import open_slide

    s = open_slide(cohort["slides"] / "train_000.tiff")
    rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    slides = tmp_path / "slides"
    slides.mkdir()
    tifffile.imwrite(slides / "twin20.tiff", rgb, tile=(64, 64), photometric="rgb", compression="zlib",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 um/px
    big = rgb.repeat(2, axis=0).repeat(2, axis=1)  # (H, W, 3) -> (2H, 2W, 3): the same tissue at 0.25 um/px
    tifffile.imwrite(tmp_path / "twin40.tiff", big, tile=(64, 64), photometric="rgb", compression="zlib",
                     resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    r = _train(cohort, cohort["labels"], tmp_path / "run", "--set", "batch_size=4")
    assert r.exit_code == 0, r.output
    model = next((tmp_path / "run").glob("mil_*"))
    r = _cli("score", slides, "--model", model, "--out", tmp_path / "scores", "--set", "heatmaps=false")
    assert r.exit_code == 0, r.output
    tiles = tmp_path / "scores" / "tiles" / "twin20.csv"
    r = _cli("heatmap", tmp_path / "twin40.tiff", tiles, "--out", tmp_path / "wrong.png", "--thumb-size", 256)
    assert r.exit_code == 2, r.output
    assert _errors(r.output) == [f"error: {tiles}: scores of twin20.tiff ({(slides / 'twin20.tiff').stat().st_size} "
                                 f"bytes, per {tmp_path / 'scores' / 'made_by' / 'twin20.json'}), not of "
                                 f"{tmp_path / 'twin40.tiff'} ({(tmp_path / 'twin40.tiff').stat().st_size} bytes)"]
    assert not (tmp_path / "wrong.png").exists()
    r = _cli("heatmap", slides / "twin20.tiff", tiles, "--out", tmp_path / "right.png", "--thumb-size", 256)
    assert r.exit_code == 0 and (tmp_path / "right.png").is_file(), r.output


def test_score_on_the_fly_takes_the_mpp_csv_its_error_names(cohort, tmp_path):
    """A generic TIFF without resolution tags: score's error said to give --mpp-csv, a flag score did not have."""
    import numpy as np
    import tifffile

    from adaptome.domains.pathology.slide import open_slide

    s = open_slide(cohort["slides"] / "train_000.tiff")
    rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    slides = tmp_path / "slides"
    slides.mkdir()
    tifffile.imwrite(slides / "notags.tiff", rgb, tile=(64, 64), photometric="rgb", compression="zlib")
    r = _train(cohort, cohort["labels"], tmp_path / "run", "--set", "batch_size=4")
    assert r.exit_code == 0, r.output
    model = next((tmp_path / "run").glob("mil_*"))
    args = ("score", slides, "--model", model, "--out", tmp_path / "scores", "--set", "heatmaps=false")
    r = _cli(*args)
    assert r.exit_code == 2 and "(--mpp-csv)" in r.output, r.output
    (tmp_path / "mpp.csv").write_text("slide,mpp\nnotags.tiff,0.5\n")
    r = _cli(*args, "--mpp-csv", tmp_path / "mpp.csv")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "scores" / "slides.csv", newline="") as f:
        assert [row["slide_id"] for row in csv.DictReader(f)] == ["notags"]


def test_labels_leaves_out_slides_of_normal_tissue_of_a_scored_case(tmp_path):
    """A GDC download of a case holds its tumour slides (sample type 01) and, for some cases, a slide of
    adjacent normal tissue (sample type 11): it was given the tumour's sTIL score."""
    from adaptome.domains.pathology.slide import SAMPLE_LABELS

    slides = tmp_path / "slides"
    slides.mkdir()
    tumour, normal = "TCGA-A1-A0SK-01Z-00-DX1.A44D70FA", "TCGA-A1-A0SK-11A-01-TS1.0B2C7E51"
    for sid in (tumour, "TCGA-A1-A0SK-01A-01-TS1.9C4F", normal):
        (slides / f"{sid}.svs").write_bytes(b"")
    r = _cli("labels", SAMPLE_LABELS, "--slides", slides, "--out", tmp_path / "labels.csv")
    assert r.exit_code == 0, r.output
    assert "2 rows (1 cases)" in r.output, r.output
    assert (f"1 slide(s) of normal tissue (TCGA sample type 10-19) left out, e.g. ['{normal}']"
            in " ".join(r.output.split())), r.output
    assert normal not in {row["slide_id"] for row in _labels({"labels": tmp_path / "labels.csv"})}


def test_a_label_row_cut_short_is_refused_not_left_out(tmp_path):
    """A row that lost its target field (``S2,C2`` under ``slide_id,case_id,target``) is a malformed line, named;
    only an empty cell (``S2,C2,``) means a slide without a score (review of round 3: it was left out silently)."""
    from adaptome.domains.pathology.errors import PathologyError
    from adaptome.domains.pathology.labels import case_sheet_rows
    from adaptome.domains.pathology.train import read_label_sheet

    sheet = tmp_path / "labels.csv"
    sheet.write_text("slide_id,case_id,target\nS1,C1,10\nS2,C2\nS3,C3,30\n")
    with pytest.raises(PathologyError, match=r"labels.csv: line 3: fewer fields than the header"):
        read_label_sheet(sheet)
    sheet.write_text("slide_id,case_id,target\nS1,C1,10\nS2,C2,\nS3,C3,30\n")
    rows, no_target = read_label_sheet(sheet)
    assert [r["slide_id"] for r in rows] == ["S1", "S3"] and no_target == ["S2"]
    cases = tmp_path / "cases.csv"
    cases.write_text("case_id,target\nTCGA-A1-A001,10\nTCGA-A1-A002\n")
    with pytest.raises(PathologyError, match=r"cases.csv: line 3: fewer fields than the header"):
        case_sheet_rows(cases)


def test_only_real_tcga_barcodes_are_read_as_cases():
    """Review 2, finding 5: any id starting with 'TCGA-' was read as a barcode, so TCGA-BRCA-2019-0001 and -0002
    became one patient (its slides averaged in cases.csv, the sheet refused in train). A case barcode is
    TCGA-<2 letters or digits>-<4>, ended by the id's end, '-' or '.'."""
    from adaptome.domains.pathology.errors import PathologyError
    from adaptome.domains.pathology.labels import case_of, is_normal_tissue, tcga_site

    assert case_of("TCGA-A1-A0SK-01Z-00-DX1.5f1c.svs") == "TCGA-A1-A0SK"
    assert case_of("TCGA-A1-A0SK") == "TCGA-A1-A0SK" and tcga_site("TCGA-A1-A0SK") == "A1"
    for other in ("TCGA-BRCA-2019-0001", "TCGA-BRCA-2019-0002", "TCGA-A1-A0SKX-01Z", "TCGA_A1_A0SK", "S1"):
        assert case_of(other) is None, other
    with pytest.raises(PathologyError, match="not a TCGA barcode"):
        tcga_site("TCGA-BRCA-2019-0001")
    assert is_normal_tissue("TCGA-A1-A0SK-11A-01-TS1") and not is_normal_tissue("TCGA-A1-A0SK-01Z-00-DX1")
    assert not is_normal_tissue("TCGA-BRCA-2019-1100")
