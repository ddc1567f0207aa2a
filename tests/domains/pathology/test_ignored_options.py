"""Pathology options a stage would not read are refused naming the option, instead of dropped silently.

Before: ``tile --set roi_classes=[Tumor]`` without ``roi_dir`` kept every tissue tile; ``extract --set
decode_cpu_share=0.3`` with no decode threads, ``train --aggregation mean --set attn_hidden=32`` (mean has no
attention layer), ``score --set heatmaps=false --set thumb_size=512`` and ``synth --set kind=simple --set
pen_prob=0.5`` (the simple cohort draws no pen) ran as if the option were not there. Each refusal failed before
the fix; the same options where the stage reads them stay accepted.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology import config
from adaptome.domains.pathology.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["tile", "{tmp}/none", "--out", "{tmp}/t", "--set", "roi_classes=[Tumor]"],
     "roi_classes ['Tumor']: names the classes of the ROIs in roi_dir, and no roi_dir is given"),
    (["extract", "--tiles-dir", "{tmp}/none", "--set", "decode_cpu_share=0.3"],
     "decode_cpu_share 0.3: the share of each batch the decode_threads decode, and decode_threads is 0"),
    (["train", "--features-dir", "{tmp}/none", "--labels", "{tmp}/l.csv", "--aggregation", "mean", "--set",
      "attn_hidden=32"], "attn_hidden 32: the width of the attention layer, and aggregation mean has none"),
    (["score", "--model", "{tmp}/none", "--set", "heatmaps=false", "--set", "thumb_size=512"],
     "thumb_size 512: the size of the heatmap thumbnail, and heatmaps is off"),
    (["synth", "--set", "out_dir={tmp}/syn", "--set", "kind=simple", "--set", "pen_prob=0.5", "--set",
      "pair_frac=0"], "pen_prob, pair_frac: only the hard cohort draws these, and kind is simple"),
])
def test_an_option_the_stage_would_not_read_is_refused(tmp_path, args, message):
    res = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_same_options_where_the_stage_reads_them_are_accepted(tmp_path):
    config.TileConfig(roi_dir=str(tmp_path), roi_classes=["Tumor"])
    config.ExtractConfig(reader="tiff-jpeg", decode_threads=2, decode_cpu_share=0.3)
    config.MILTrainConfig(aggregation="attention", attn_hidden=32)
    config.ScoreConfig(heatmaps=True, thumb_size=512)
    config.SynthConfig(kind="simple", n_slides=3)  # the hard switches at their defaults: nothing to say
    res = runner.invoke(app, ["synth", "--set", f"out_dir={tmp_path / 'syn'}", "--set", "kind=simple", "--set",
                              "n_slides=2", "--set", "grid=4", "--set", "cell_px=32"])
    assert res.exit_code == 0 and "only the hard cohort" not in res.output, res.output
