"""``model.preset`` (config.MODEL_PRESETS) through the real ``pretrain`` command, and the rule by which
benchmarks/protein_generate chooses a sampling setting (``best_setting``) and reads the low-complexity target."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptome.domains.protein.cli import app
from adaptome.domains.protein.config import MODEL_PRESETS
from adaptome.domains.protein.data import data_dir

runner = CliRunner()
TINY = str(data_dir().parent / "configs" / "pretrain_tiny.yaml")
ROOT = str(Path(__file__).resolve().parents[3])  # the repository root: benchmarks/ is not an installed package


def _pretrain(tmp_path: Path, *sets: str):
    (tmp_path / "s.fa").write_text(">a\nMKRVLAAGLLTTASAQ\n>b\nACDEFGHIKLMNPQRSTVWY\n")
    args = ["pretrain", "-c", TINY, "--set", f"train_files=[{tmp_path / 's.fa'}]", "--set",
            f"train.output_dir={tmp_path / 'out'}", "--set", "train.max_steps=1", "--set", "train.progress=false",
            "--set", "block_size=16", "--set", "train.batch_size=2"]
    for s in sets:
        args += ["--set", s]
    return runner.invoke(app, args)


def test_small_preset_builds_the_stated_architecture(tmp_path):
    r = _pretrain(tmp_path, "model.preset=small")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "out" / "merged" / "config.json").read_text())
    want = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8}
    assert {k: cfg[k] for k in want} == want
    assert MODEL_PRESETS["small"] == {"hidden_size": 128, "intermediate_size": 256, "num_layers": 4, "num_heads": 8}
    # the tiny preset is what a section naming no preset builds, i.e. what the quickstart's config builds
    from adaptome.domains.protein.config import ModelSection, resolve_model_section

    arch = list(MODEL_PRESETS["tiny"])
    assert {k: resolve_model_section(ModelSection(preset="tiny"))[k] for k in arch} == MODEL_PRESETS["tiny"] \
        == {k: resolve_model_section(ModelSection())[k] for k in arch}
    # without a named preset a given field wins over tiny's; the rest stay tiny's
    got = resolve_model_section(ModelSection(hidden_size=128))
    assert (got["hidden_size"], got["num_layers"]) == (128, 2)


@pytest.mark.parametrize("sets, message", [
    (["model.preset=small", "model.num_layers=3"], "model.num_layers=3 contradicts model.preset 'small'"),
    # a value equal to tiny's (the old dataclass default) is still a value the user gave: never silently replaced
    (["model.preset=small", "model.hidden_size=64"], "model.hidden_size=64 contradicts model.preset 'small'"),
    (["model.preset=huge"], "unknown model.preset 'huge'; known: tiny, small"),
    (["model.preset=small", "model.name_or_path=some/folder"], "cannot be combined with model.name_or_path"),
])
def test_preset_conflicts_are_one_line_errors_and_write_nothing(tmp_path, sets, message):
    r = _pretrain(tmp_path, *sets)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "out").exists()


def _gen():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    return importlib.import_module("benchmarks.protein_generate.run")


def _row(setting, family, seed, p, lc, real_lc):
    return {"pipeline": "windows", "setting": setting, "family": family, "seed": seed, "length_ks_pvalue": p,
            "low_complexity_share": lc, "real_low_complexity_share": real_lc, "low_complexity_ratio": lc / real_lc,
            "complete": 1.0, "mean_length": 100.0, "real_mean_length": 100.0}


def test_setting_choice_counts_families_meeting_both_targets_then_mean_ks_p():
    g = _gen()
    fams = {"A": 0.10, "B": 0.01}
    rows = []
    for seed in (0, 1):
        # t0.8-p0.95: high KS p, but family B's low-complexity share 3x the real one -> 1 + 2 families per seed
        rows += [_row("t0.8-p0.95", "A", seed, 0.9, 0.10, fams["A"]), _row("t0.8-p0.95", "B", seed, 0.9, 0.03, 0.01)]
        # res-t0.8-p0.95: lower KS p, both families within 1.5x -> 2 + 2 families per seed: chosen
        rows += [_row("res-t0.8-p0.95", f, seed, 0.3, lc * 1.2, lc) for f, lc in fams.items()]
        # res-t1.0: the same counts as res-t0.8-p0.95 with a lower KS p: loses the tie-break
        rows += [_row("res-t1.0", f, seed, 0.2, lc, lc) for f, lc in fams.items()]
        # the length prior would win on every count, but is never a candidate
        rows += [_row("t0.8-p0.95+lenprior", f, seed, 1.0, lc, lc) for f, lc in fams.items()]
    summary = g.summarise(rows)
    assert summary["windows/t0.8-p0.95"]["lc_within_per_seed"] == [1, 1]
    assert summary["windows/res-t0.8-p0.95"]["ks_pass_per_seed"] == [2, 2]
    assert g.best_setting(summary) == "res-t0.8-p0.95"
    # pooled reading: mean of the families' sample shares vs mean of their real shares, per seed
    pooled = summary["windows/t0.8-p0.95"]["lc_pooled_per_seed"]
    assert pooled == [pytest.approx([0.065, 0.055])] * 2
    assert summary["windows/t0.8-p0.95"]["lc_pooled_within_per_seed"] == [1, 1]  # per family it fails for B


def test_setting_choice_counts_families_meeting_both_targets_not_passes_of_either():
    g = _gen()
    rows = []
    for seed in (0, 1):
        # t0.9-p0.95: 3 KS passes + 1 low-complexity pass (4 passes) but only family C meets both
        rows += [_row("t0.9-p0.95", f, seed, 0.9, 0.03, 0.01) for f in ("A", "B")]
        rows += [_row("t0.9-p0.95", "C", seed, 0.9, 0.01, 0.01)]
        # res-t0.9-p0.95: also 4 passes, with a lower KS p, and families A and B meet both: chosen
        rows += [_row("res-t0.9-p0.95", f, seed, 0.3, 0.01, 0.01) for f in ("A", "B")]
        rows += [_row("res-t0.9-p0.95", "C", seed, 0.01, 0.03, 0.01)]
    summary = g.summarise(rows)
    assert summary["windows/t0.9-p0.95"]["both_per_seed"] == [1, 1]
    assert summary["windows/res-t0.9-p0.95"]["both_per_seed"] == [2, 2]
    assert g.best_setting(summary) == "res-t0.9-p0.95"  # a sum of passes would tie and take t0.9 by KS p


def test_control_accuracy_is_summarised_per_seed_only_where_every_row_records_it():
    g = _gen()
    rows = []
    for seed, accs in ((0, (0.5, 1.0)), (1, (0.0, 0.25))):
        for fam, acc in zip("AB", accs):
            rows.append(_row("res-t0.9-p0.95-g2", fam, seed, 0.3, 0.01, 0.01) | {"control_accuracy": acc})
            rows.append(_row("res-t0.9-p0.95", fam, seed, 0.3, 0.01, 0.01))  # a row of a run before the judge
    summary = g.summarise(rows)
    assert summary["windows/res-t0.9-p0.95-g2"]["control_per_seed"] == [0.75, 0.125]  # mean over families
    assert "control_per_seed" not in summary["windows/res-t0.9-p0.95"]
    assert g.SETTINGS["res-t0.9-p0.95-g2"]["guidance"] == 2.0
    assert "guidance" not in g.SETTINGS["res-t0.9-p0.95"]  # earlier runs' settings read the same
