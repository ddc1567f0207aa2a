"""Sharded extraction: ``torchrun --nproc_per_node 2`` (gloo, CPU) writes the same feature files as one
process, each rank extracting its own share of the slides, with the same reuse and failure rules,
and one merged summary written by the main rank."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from launch import TORCHRUN, free_port, launch_env

from adaptome.domains.pathology.extract import shard_of


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_shards_are_disjoint_cover_everything_and_balance_weights(world, weighted):
    items = [f"s{i}" for i in range(11)]
    weights = [float(w) for w in (90, 5, 40, 40, 1, 7, 60, 3, 22, 22, 10)] if weighted else None
    shards = [shard_of(items, r, world, weights) for r in range(world)]
    assert sorted(sum(shards, [])) == sorted(items)  # every item once
    for s in shards:
        assert s == [it for it in items if it in s]  # list order kept
    assert shards == [shard_of(items, r, world, weights) for r in range(world)]  # every rank computes the same
    if weighted:
        loads = [sum(weights[items.index(it)] for it in s) for s in shards]
        assert max(loads) - min(loads) <= max(weights)  # greedy (LPT) bound: within the heaviest item
    else:
        assert max(map(len, shards)) - min(map(len, shards)) <= 1






@pytest.mark.slow  # ~15-25 s: one torchrun start-up of two processes
@pytest.mark.timeout(300)
def test_torchrun_two_processes_write_the_same_files_as_one(tmp_path):
    from typer.testing import CliRunner

    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.cli import app
    from adaptome.domains.pathology.config import TileConfig
    from adaptome.domains.pathology.extract import read_features
    from adaptome.domains.pathology.synth import make_cohort

    slides = tmp_path / "slides"
    make_cohort(slides, n_slides=6, seed=3, grid=6, prefix="sh")
    stages.tile(TileConfig(slides=str(slides), out_dir=str(tmp_path / "job"), tile_size=64, thumb_size=128),
                progress=False)
    one = tmp_path / "job" / "tiles_20x_64px_0ov"
    (slides / "sh_005.tiff").write_bytes(b"II*\x00" + bytes(60))  # broken after tiling: must be named, not hang
    two = tmp_path / "two"
    shutil.copytree(one, two)

    args = ["extract", str(slides), "--num-workers", "0", "--skip-errors"]
    r = CliRunner().invoke(app, [*args, "--tiles-dir", str(one)])
    assert r.exit_code == 0, r.output
    ref = json.loads((one / "features_baseline" / "summary.json").read_text())
    assert ref["done"] == [f"sh_{i:03d}" for i in range(5)] and list(ref["failed"]) == ["sh_005"]
    # one slide already extracted in the two-process folder: it is reused there, not redone
    (two / "features_baseline").mkdir()
    shutil.copy2(one / "features_baseline" / "sh_002.h5", two / "features_baseline" / "sh_002.h5")
    (two / "features_baseline" / "made_by").mkdir()  # with the record of what made it (same slide, same tiles)
    shutil.copy2(one / "features_baseline" / "made_by" / "sh_002.json", two / "features_baseline" / "made_by")
    before = (two / "features_baseline" / "sh_002.h5").stat().st_mtime_ns

    cmd = [*TORCHRUN, "--master_port", free_port(), "-m", "adaptome.core.cli", "pathology", *args, "--tiles-dir",
           str(two)]
    p = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    feats = two / "features_baseline"
    summary = json.loads((feats / "summary.json").read_text())
    assert summary["done"] == ["sh_000", "sh_001", "sh_003", "sh_004"] and summary["reused"] == ["sh_002"]
    assert list(summary["failed"]) == ["sh_005"] and "sh_005.tiff" in summary["failed"]["sh_005"]
    assert not (feats / "shards").exists()  # the ranks' own summaries were merged and removed
    assert (feats / "sh_002.h5").stat().st_mtime_ns == before
    # both ranks worked: the main rank reports the merged run, rank 1 its own share
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("extract:")]
    assert any("4 done, 1 reused (same inputs), 0 skipped, 1 failed" in ln and ln.endswith("features_baseline")
               for ln in lines)
    assert any("shards/rank1" in ln and "0 done" not in ln for ln in lines), p.stdout
    names = sorted(f.name for f in feats.glob("*.h5"))
    assert names == sorted(f.name for f in (one / "features_baseline").glob("*.h5"))
    for i in range(5):
        f2, c2, a2 = read_features(feats / f"sh_{i:03d}.h5")
        f1, c1, a1 = read_features(one / "features_baseline" / f"sh_{i:03d}.h5")
        assert len(f1) > 0 and np.array_equal(c2, c1)
        np.testing.assert_array_equal(f2, f1)  # same tiles, same encoder: the same values
        assert {k: str(v) for k, v in a2.items()} == {k: str(v) for k, v in a1.items()}


@pytest.mark.slow  # ~15-25 s: one torchrun start-up of two processes
@pytest.mark.timeout(300)
def test_torchrun_without_skip_errors_names_the_failed_slide_and_keeps_the_others(tmp_path):
    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import TileConfig
    from adaptome.domains.pathology.synth import make_cohort

    slides = tmp_path / "slides"
    make_cohort(slides, n_slides=5, seed=4, grid=6, prefix="sh", compression="jpeg")
    stages.tile(TileConfig(slides=str(slides), out_dir=str(tmp_path / "job"), tile_size=64, thumb_size=128),
                progress=False)
    tiles = tmp_path / "job" / "tiles_20x_64px_0ov"
    (slides / "sh_001.tiff").write_bytes(b"II*\x00" + bytes(60))
    cmd = [*TORCHRUN, "--master_port", free_port(), "-m", "adaptome.core.cli", "pathology", "extract", str(slides),
           "--tiles-dir", str(tiles), "--num-workers", "0", "--set", "reader=tiff-jpeg"]
    p = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert p.returncode != 0
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert errors and all("sh_001.tiff" in ln for ln in errors), p.stderr[-2000:]
    assert "Traceback" not in p.stderr.split("error:")[0]  # a user error, not a crash
    feats = tiles / "features_baseline"
    summary = json.loads((feats / "summary.json").read_text())
    assert summary["done"] == ["sh_000", "sh_002", "sh_003", "sh_004"] and list(summary["failed"]) == ["sh_001"]
    assert sorted(f.stem for f in feats.glob("*.h5")) == summary["done"]
    from adaptome.domains.pathology.extract import read_features

    assert all(read_features(feats / f"{s}.h5")[2]["reader"] == "tiff-jpeg" for s in summary["done"])
