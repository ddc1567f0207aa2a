"""Stage behaviour: reuse on re-run, corrupt slides (error or skip), CLI errors, SimCLR, heatmaps."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adaptome.domains.pathology import stages
from adaptome.domains.pathology.config import ExtractConfig, SegmentConfig, TileConfig
from adaptome.domains.pathology.slide import SlideError


@pytest.fixture()
def small_job(cohort, tmp_path):
    """Three copies of synthetic slides plus one truncated slide in a fresh folder."""
    d = tmp_path / "slides"
    d.mkdir()
    for sid in ("train_000", "train_001", "train_002"):
        shutil.copy(cohort["slides"] / f"{sid}.tiff", d / f"{sid}.tiff")
    data = (cohort["slides"] / "train_003.tiff").read_bytes()
    (d / "bad_slide.tiff").write_bytes(data[: len(data) // 3])
    return d


def _tile_cfg(slides, out, skip):
    return TileConfig(slides=str(slides), out_dir=str(out), magnification=20, tile_size=64, thumb_size=256,
                      skip_errors=skip)


def test_corrupt_slide_error_names_file_and_keeps_other_outputs(small_job, tmp_path):
    out = tmp_path / "job"
    with pytest.raises(SlideError, match="bad_slide.tiff"):
        stages.tile(_tile_cfg(small_job, out, skip=False), progress=False)
    tdir = out / "tiles_20x_64px_0ov"
    assert not list(tdir.glob("*.h5"))  # bad_slide sorts first: nothing done, nothing half-written
    summary = stages.tile(_tile_cfg(small_job, out, skip=True), progress=False)
    assert summary.failed.keys() == {"bad_slide"} and "bad_slide.tiff" in summary.failed["bad_slide"]
    assert sorted(summary.done) == ["train_000", "train_001", "train_002"]
    assert "bad_slide" in (tdir / "summary.md").read_text()
    before = {p.name: p.stat().st_mtime_ns for p in tdir.glob("*.h5")}
    again = stages.tile(_tile_cfg(small_job, out, skip=True), progress=False)
    assert sorted(again.reused) == ["train_000", "train_001", "train_002"] and not again.done
    assert {p.name: p.stat().st_mtime_ns for p in tdir.glob("*.h5")} == before  # reused, not rewritten
    assert (tdir / "config.yaml").read_text().count("tile_size: 64") == 1
    # the extract stage reuses and skips the same way; its features match the reference run
    ecfg = ExtractConfig(slides=str(small_job), tiles_dir=str(tdir), num_workers=0, skip_errors=True)
    s1 = stages.extract(ecfg, progress=False)
    s2 = stages.extract(ecfg, progress=False)
    assert len(s1.done) == 3 and len(s2.reused) == 3 and not s2.done


def test_failure_midway_keeps_finished_slides(small_job, tmp_path):
    (small_job / "zz_broken.tiff").write_bytes(b"II*\x00garbage")  # sorts last
    (small_job / "bad_slide.tiff").unlink()
    out = tmp_path / "job"
    with pytest.raises(SlideError, match="zz_broken.tiff"):
        stages.tile(_tile_cfg(small_job, out, skip=False), progress=False)
    tdir = out / "tiles_20x_64px_0ov"
    assert sorted(p.stem for p in tdir.glob("*.h5")) == ["train_000", "train_001", "train_002"]
    assert not list(tdir.glob(".*.tmp"))


def test_segment_stage_outputs(small_job, tmp_path):
    import json

    (small_job / "bad_slide.tiff").unlink()
    s = stages.segment(SegmentConfig(slides=str(small_job), out_dir=str(tmp_path), thumb_size=256), progress=False)
    d = tmp_path / "segment_otsu_b5_c2"
    assert len(s.done) == 3 and (d / "config.yaml").is_file()
    gj = json.loads((d / "contours" / "train_000.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"][0]["geometry"]["type"] == "Polygon"
    from PIL import Image

    m = np.asarray(Image.open(d / "masks" / "train_000.png")) > 0
    assert 0.3 < m.mean() < 0.85  # 45-75 % of the cells are tissue


def test_cli_errors_are_one_line_exit_2(tmp_path):
    from adaptome.domains.pathology.cli import app

    r = CliRunner().invoke(app, ["tile", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "nope: no such slide file or folder" in r.output
    r = CliRunner().invoke(app, ["tile", str(tmp_path), "--set", "tile_sz=3"])
    assert r.exit_code == 2 and "tile_sz" in r.output
    bad = tmp_path / "labels.csv"
    bad.write_text("slide,target\na,3\n")
    r = CliRunner().invoke(app, ["train", "--features-dir", str(tmp_path), "--labels", str(bad)])
    assert r.exit_code == 2 and "labels.csv: label CSV lacks column(s) ['slide_id', 'case_id']" in r.output
    r = CliRunner().invoke(app, ["extract", str(tmp_path), "--tiles-dir", str(tmp_path), "--encoder", "nonsense"])
    assert r.exit_code == 2 and "not a tiling stage folder" in r.output


def test_cli_synth_refuses_to_overwrite(tmp_path):
    from adaptome.domains.pathology.cli import app

    out = tmp_path / "syn"
    r = CliRunner().invoke(app, ["synth", "--out", str(out), "--n-slides", "2", "--set", "grid=4"])
    assert r.exit_code == 0, r.output
    before = (out / "labels.csv").read_text()
    r = CliRunner().invoke(app, ["synth", "--out", str(out), "--n-slides", "3"])
    assert r.exit_code == 2 and "already holds a cohort" in r.output
    assert (out / "labels.csv").read_text() == before


def test_cli_pretrain_encoder_refuses_to_overwrite(tmp_path):
    from adaptome.domains.pathology.cli import app

    out = tmp_path / "ssl"
    out.mkdir()
    (out / "encoder.safetensors").write_bytes(b"mine")
    r = CliRunner().invoke(app, ["pretrain-encoder", str(tmp_path), "--tiles-dir", str(tmp_path), "--out", str(out)])
    assert r.exit_code == 2 and "already holds encoder.safetensors" in r.output
    assert (out / "encoder.safetensors").read_bytes() == b"mine"


def test_cli_lets_a_programming_error_through(tmp_path, monkeypatch):
    """Only user errors (AdaptomeError, OSError) become one-line messages; a bug stays a traceback."""
    from adaptome.domains.pathology.cli import app

    def broken(cfg):
        return {}["missing key"]

    monkeypatch.setattr(stages, "synth", broken)
    r = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "syn")])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError) and "error:" not in r.output


def test_failed_slide_records_user_errors_only(tmp_path):
    """run_stage records a bad slide (an AdaptomeError) and goes on; a bug in the work function
    (KeyError) is raised, not recorded as a 'failed slide'."""
    from adaptome.domains.pathology.errors import PathologyError
    from adaptome.domains.pathology.pipeline import run_stage

    items = [("a", tmp_path / "a.svs"), ("b", tmp_path / "b.svs")]

    def bad_input(sid, path, target):
        if sid == "a":
            raise PathologyError(f"{path}: unreadable")
        target.write_text("ok")

    summary = run_stage("t", items, tmp_path / "out1", lambda sid: tmp_path / "out1" / sid, bad_input,
                        skip_errors=True, progress=False)
    assert summary.done == ["b"] and list(summary.failed) == ["a"]

    def bug(sid, path, target):
        return {}["oops"]

    with pytest.raises(KeyError):
        run_stage("t", items, tmp_path / "out2", lambda sid: tmp_path / "out2" / sid, bug, skip_errors=True,
                  progress=False)


def test_score_writes_geojson_and_heatmaps(trained, heldout, tmp_path):
    import json

    from PIL import Image

    from adaptome.domains.pathology.config import ScoreConfig

    cfg = ScoreConfig(slides=str(heldout["slides"] / "test_000.tiff"), model=trained["real"]["out_dir"],
                      features_dir=str(heldout["features_dir"]), out_dir=str(tmp_path), thumb_size=256)
    stages.score(cfg, progress=False)
    gj = json.loads((tmp_path / "tiles" / "test_000.geojson").read_text())
    feats = gj["features"]
    ring = feats[0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and ring[2][0] - ring[0][0] == pytest.approx(64)
    assert 0 <= feats[0]["properties"]["measurements"]["sTIL_pct"] <= 100
    att = sum(f["properties"]["measurements"]["attention"] for f in feats)
    assert att == pytest.approx(1.0, abs=1e-3)  # ensemble attention still sums to one
    score_png = np.asarray(Image.open(tmp_path / "heatmaps" / "test_000_score.png"))[:256]  # above the colour bar
    assert score_png.shape[:2] == (256, 256)
    thumb_bg = score_png[:4, :4].astype(int)
    # tissue tiles are tinted: the painted area differs from the untouched thumbnail
    assert (np.abs(score_png.astype(int) - score_png[0, 0]).sum(2) > 30).mean() > 0.2 and thumb_bg.std() < 20


def test_nt_xent_matches_explicit_formula():
    from adaptome.domains.pathology.ssl import nt_xent

    torch.manual_seed(0)
    z = torch.randn(6, 5)
    tau = 0.5
    zn = torch.nn.functional.normalize(z, dim=1)
    total = 0.0
    for i in range(6):
        j = (i + 3) % 6
        sims = torch.stack([zn[i] @ zn[k] / tau for k in range(6) if k != i])
        total += -(zn[i] @ zn[j] / tau - torch.logsumexp(sims, 0))
    assert torch.allclose(nt_xent(z, tau), total / 6, atol=1e-5)


def test_simclr_pretraining_lowers_loss_and_saves_loadable_encoder(cohort, tmp_path):
    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.ssl import collect_tiles, pretrain

    opts = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
    pairs = [(str(cohort["slides"] / f"train_00{i}.tiff"), str(cohort["tiles_dir"] / f"train_00{i}.h5"))
             for i in range(4)]
    tiles = collect_tiles(pairs, max_tiles=64)
    assert tiles.shape[1:] == (64, 64, 3)
    enc = build_encoder("timm:vit_tiny_patch16_224", options=opts)
    res = pretrain(enc, tiles, tmp_path, max_steps=100, batch_size=16, lr=1e-3)
    # chance level is log(2B - 1) = log(31) = 3.43
    assert np.mean(res["losses"][-2:]) < res["losses"][0] - 0.5
    enc2 = build_encoder("timm:vit_tiny_patch16_224", weights=res["weights"], options=opts)
    x = torch.from_numpy(tiles[:4])
    enc.eval()
    assert torch.allclose(enc2.eval()(x), enc(x), atol=1e-5)


@pytest.mark.parametrize("name,cls", [("segment", "SegmentConfig"), ("tile_20x_256", "TileConfig"),
                                      ("extract_baseline", "ExtractConfig"), ("extract_timm_vit", "ExtractConfig"),
                                      ("pretrain_simclr", "PretrainConfig"), ("train_mil", "MILTrainConfig"),
                                      ("evaluate", "EvaluateConfig"), ("synth_small", "SynthConfig")])
def test_shipped_configs_load_strictly(name, cls):
    from pathlib import Path

    from adaptome.core.config import ConfigError, load_config
    from adaptome.domains.pathology import config as pc

    path = Path(pc.__file__).parent / "configs" / f"{name}.yaml"
    cfg = load_config(getattr(pc, cls), path)
    assert cfg is not None
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(getattr(pc, cls), path, ["not_a_key=1"])


def test_tile_config_needs_one_resolution():
    from adaptome.core.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="exactly one of magnification or mpp"):
        from_dict(TileConfig, {"magnification": 20.0, "mpp": 0.5})


def test_shared_worker_pool_equals_per_slide_and_survives_a_slide_broken_after_tiling(small_job, tmp_path):
    from adaptome.domains.pathology.extract import read_features

    (small_job / "bad_slide.tiff").unlink()
    out = tmp_path / "job"
    stages.tile(_tile_cfg(small_job, out, skip=False), progress=False)
    tdir = out / "tiles_20x_64px_0ov"
    shared = stages.extract(ExtractConfig(slides=str(small_job), tiles_dir=str(tdir), num_workers=2), progress=False)
    assert sorted(shared.done) == ["train_000", "train_001", "train_002"]
    ref_dir = tmp_path / "ref"
    shutil.copytree(tdir, ref_dir, ignore=shutil.ignore_patterns("features_*"))
    stages.extract(ExtractConfig(slides=str(small_job), tiles_dir=str(ref_dir), num_workers=0, shared_loader=False),
                   progress=False)
    for sid in shared.done:
        a, ca, _ = read_features(tdir / "features_baseline" / f"{sid}.h5")
        b, cb, _ = read_features(ref_dir / "features_baseline" / f"{sid}.h5")
        assert np.array_equal(ca, cb) and np.allclose(a, b, atol=1e-5)
    # a slide truncated after tiling: named in the summary, the other slides' features are written
    fresh = tmp_path / "fresh"
    shutil.copytree(tdir, fresh, ignore=shutil.ignore_patterns("features_*"))
    data = (small_job / "train_001.tiff").read_bytes()
    (small_job / "train_001.tiff").write_bytes(data[: len(data) // 2])
    cfg = ExtractConfig(slides=str(small_job), tiles_dir=str(fresh), num_workers=2, skip_errors=True)
    s = stages.extract(cfg, progress=False)
    assert list(s.failed) == ["train_001"] and "train_001.tiff" in s.failed["train_001"]
    assert sorted(p.stem for p in (fresh / "features_baseline").glob("*.h5")) == ["train_000", "train_002"]
    with pytest.raises(SlideError, match="train_001.tiff"):
        stages.extract(ExtractConfig(slides=str(small_job), tiles_dir=str(fresh), num_workers=2), progress=False)


def test_cli_corrupt_slide_one_line_error_then_skip(small_job, tmp_path):
    from adaptome.domains.pathology.cli import app

    args = ["tile", str(small_job), "--out", str(tmp_path / "job"), "--tile-size", "64", "--set", "thumb_size=256"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "bad_slide.tiff" in err[0]
    r = CliRunner().invoke(app, args + ["--skip-errors"])
    assert r.exit_code == 0 and "3 done" in r.output and "1 failed" in r.output and "failed bad_slide" in r.output


def test_jpeg_synthetic_slide_opens_with_mpp(tmp_path):
    from adaptome.domains.pathology.slide import open_slide, slide_mpp
    from adaptome.domains.pathology.synth import make_cohort

    make_cohort(tmp_path, n_slides=1, grid=4, compression="jpeg", prefix="j")
    s = open_slide(tmp_path / "j_000.tiff")
    assert s.level_count == 3 and s.dimensions == (256, 256) and slide_mpp(s, tmp_path / "j_000.tiff") == 0.5
    import tifffile

    with tifffile.TiffFile(tmp_path / "j_000.tiff") as tf:
        assert [p.compression.name for p in tf.pages] == ["JPEG"] * 3
        assert [p.is_tiled for p in tf.pages] == [True] * 3
