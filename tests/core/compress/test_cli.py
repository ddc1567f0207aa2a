"""``adaptome compress`` end to end on a tiny LLaMA saved to a folder with its tokenizer: the report's
perplexities are recomputed independently from the original and the reloaded model, fine-tuning
goes through ``fit`` and only the method's factors change; bad input: an unknown method lists the
known ones, an impossible budget names the option, an unknown method option names the key, and an
existing output folder is kept."""

from __future__ import annotations

import json

import pytest
import tiny_models as tiny
import torch
from typer.testing import CliRunner

from adaptome.core import cli, text
from adaptome.core.compress.io import load_compressed
from adaptome.core.compress.layers import LowRankLinear
from adaptome.core.compress.run import lm_collate, perplexity
from adaptome.core.generic_train import build_datasets

runner = CliRunner()
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNGPQNQRNAPRITFGGPSDS", "MKVLAAGIVGLLLAQAWEKLVSG",
        "MSHHWGYGKHNGPEHWHKDFPIA", "MGSSHHHHHHSSGLVPRGSHMAS", "MADQLTEEQIAEFKEAFSLFDKD"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "train.txt").write_text("\n".join(SEQS * 6) + "\n")
    (root / "eval.txt").write_text("\n".join(SEQS[::-1] * 2) + "\n")
    return root


def _invoke(*args):
    return runner.invoke(cli.app, ["compress", *map(str, args)])


def test_welore_end_to_end_with_lrc_finetuning(model_dir, tmp_path):
    out = tmp_path / "welore"
    res = _invoke("--method", "welore", "--model", model_dir / "tiny", "--budget", 0.5, "--out", out,
                  "--eval-text", model_dir / "eval.txt", "--train-text", model_dir / "train.txt",
                  "--finetune-steps", 4, "--lr", 1e-2, "--block-size", 32, "--batch-size", 4)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    t = report["totals"]
    assert t["params_after"] <= 0.5 * t["params_before"] and len(report["matrices"]) == 14
    assert t["params_after"] == sum(r["params_after"] for r in report["matrices"])
    # independent recomputation of the reported perplexities
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir / "tiny")
    ev = build_datasets([str(model_dir / "eval.txt")], tok, "causal", 32, False)
    orig = LlamaForCausalLM.from_pretrained(model_dir / "tiny")
    assert perplexity(orig, ev, lm_collate(tok, "causal"), "causal") == pytest.approx(report["perplexity_before"])
    loaded = load_compressed(out)
    assert perplexity(loaded, ev, lm_collate(tok, "causal"), "causal") == pytest.approx(report["perplexity_finetuned"])
    assert report["perplexity_finetuned"] != pytest.approx(report["perplexity_after"])  # fine-tuning did something
    # only LRC factors were trained: every other weight equals the original (or its rank-k reconstruction)
    lrc = {r["path"] for r in report["matrices"] if r["lrc"]}
    assert report["finetune"]["trainable_params"] == sum(r["params_after"] for r in report["matrices"] if r["lrc"])
    for name, p in orig.named_parameters():
        if not any(name.startswith(x + ".") for x in lrc) and "proj" not in name:
            assert torch.equal(p, loaded.get_parameter(name)), name
    assert all(isinstance(loaded.get_submodule(p), LowRankLinear) for p in lrc)
    assert (out / "finetune" / "metrics.jsonl").is_file() and (out / "report.md").read_text().startswith("# welore")
    assert "perplexity" in res.output


@pytest.mark.parametrize("method,budget,extra", [("lrt", 0.5, []), ("dsformer", 0.6, ["--set", "init_iters=1"]),
                                                  ("lqlora", 3.0, ["--set", "bits=[2,3,4]", "--set", "rank=4",
                                                                   "--set", "block0=[32]", "--set", "max_iters=3"])])
def test_other_methods_through_the_cli(model_dir, tmp_path, method, budget, extra):
    out = tmp_path / method
    res = _invoke("--method", method, "--model", model_dir / "tiny", "--budget", budget, "--out", out,
                  "--eval-text", model_dir / "eval.txt", "--block-size", 32, *extra)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ev = build_datasets([str(model_dir / "eval.txt")], tok, "causal", 32, False)
    assert perplexity(load_compressed(out), ev, lm_collate(tok, "causal"), "causal") == pytest.approx(
        report["perplexity_after"])
    if method == "lqlora":
        assert report["totals"]["bits_per_param_after"] > 0
        assert sum(r["extra_bits"] for r in report["matrices"]) <= 3.0 * report["totals"]["params_before"]


def test_unknown_method_lists_the_known_ones(model_dir, tmp_path):
    res = _invoke("--method", "svd", "--model", model_dir / "tiny", "--budget", 0.5, "--out", tmp_path / "x")
    assert res.exit_code == 2
    assert "unknown compression method 'svd'" in res.output and "dsformer, lqlora, lrt, welore" in res.output


def test_impossible_budget_names_the_option(model_dir, tmp_path):
    for method, budget in (("welore", 0.001), ("lqlora", 1.0), ("dsformer", 0.05)):
        res = _invoke("--method", method, "--model", model_dir / "tiny", "--budget", budget, "--out", tmp_path / "x",
                      *(["--set", "bits=[2,3]", "--set", "max_iters=1"] if method == "lqlora" else []))
        assert res.exit_code == 2, (method, res.output)
        assert "--budget" in res.output, (method, res.output)
        assert not (tmp_path / "x").exists()


def test_bad_option_and_existing_output(model_dir, tmp_path):
    res = _invoke("--method", "lrt", "--model", model_dir / "tiny", "--budget", 0.5, "--out", tmp_path / "y",
                  "--set", "rnak=3")
    assert res.exit_code == 2 and "rnak" in res.output
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "mine.txt").write_text("precious")
    res = _invoke("--method", "lrt", "--model", model_dir / "tiny", "--budget", 0.5, "--out", keep)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (keep / "mine.txt").read_text() == "precious"
    res = _invoke("--method", "lrt", "--model", model_dir / "tiny", "--budget", 0.5, "--out", tmp_path / "z",
                  "--eval-text", tmp_path / "missing.txt")
    assert res.exit_code == 2 and "missing.txt" in res.output
