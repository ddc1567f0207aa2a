"""Options a user sets that a core command would not read are named, not dropped silently.

``adaptome train``: ``data.mlm_probability`` on a causal model, ``model.tiny`` beside ``model.name_or_path`` and
``data.text_field`` with plain-text files are warned about (a config file may serve several runs) and left out of
the run's identity (changing one refused a resume of a run it never shaped). ``adaptome compress``: ``--lr`` /
``--batch-size`` without ``--finetune-steps``, and ``--train-text`` that neither fine-tuning nor LQ-LoRA's Fisher
weights read, are refused. Each test failed before the fix: the runs went through without a word.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import tiny_models
import yaml
from typer.testing import CliRunner

from adaptome.core import text

runner = CliRunner()


def _text(path: Path, n: int = 24) -> Path:
    rng = random.Random(0)
    path.write_text("".join("".join(rng.choice("abcdefghij ") for _ in range(30)) + "\n" for _ in range(n)))
    return path


def _config(tmp_path: Path, model=None, data=None, **train) -> Path:
    cfg = {"model": {"tiny": tiny_models.TINY_TRAIN_MODEL, **(model or {})},
           "data": {"train_files": [str(_text(tmp_path / "train.txt"))], "block_size": 16, **(data or {})},
           "adapter": {"method": "lora_native", "options": {"r": 2}},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "lr": 0.01,
                     "progress": False, "threads": 1, "save_every": 1, **train},
           "save_merged": False}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_warns_about_mlm_probability_on_a_causal_model_and_resumes_when_it_changes(app, tmp_path, caplog):
    cfg = _config(tmp_path, data={"mlm_probability": 0.3})
    res = runner.invoke(app, ["train", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "data.mlm_probability 0.3: has no effect, model.kind is causal" in caplog.text
    caplog.clear()
    # the value never shaped the run: another one resumes it (it was refused as another configuration)
    shutil.rmtree(tmp_path / "run" / "adapter")
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "data.mlm_probability=0.15", "--set",
                              "train.max_steps=3"])
    assert res.exit_code == 0, res.output
    assert '"resumed_from": 2' in res.output, res.output
    assert "mlm_probability" not in caplog.text


def test_train_masked_model_reads_mlm_probability_silently(app, tmp_path, caplog):
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, model={"kind": "masked"},
                                                         data={"mlm_probability": 0.3}))])
    assert res.exit_code == 0, res.output
    assert "has no effect" not in caplog.text


def test_train_warns_about_tiny_beside_a_loaded_model(app, tmp_path, caplog):
    tok = text.char_tokenizer()
    model = tiny_models.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path)), "--set",
                              f"model.name_or_path={tmp_path / 'base'}"])
    assert res.exit_code == 0, res.output
    assert f"model.tiny: has no effect, model.name_or_path '{tmp_path / 'base'}' is loaded" in caplog.text


def test_train_warns_about_text_field_with_plain_text_only(app, tmp_path, caplog):
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, data={"text_field": "body"}))])
    assert res.exit_code == 0, res.output
    assert "data.text_field 'body': has no effect, no data file is .jsonl" in caplog.text
    caplog.clear()
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(f'{{"body": "{line}"}}\n' for line in _text(tmp_path / "t.txt").read_text().split("\n")
                             if line))
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, data={"text_field": "body"})), "--set",
                              f"data.train_files=[{jsonl}]", "--set", f"train.output_dir={tmp_path / 'j'}"])
    assert res.exit_code == 0, res.output
    assert "has no effect" not in caplog.text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    tok = text.char_tokenizer()
    model = tiny_models.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    _text(root / "train.txt")
    return root


def _compress(app, model_dir, out, *args):
    return runner.invoke(app, ["compress", "--method", "lrt", "--model", str(model_dir / "tiny"), "--budget", "0.5",
                               "--out", str(out), *map(str, args)])


@pytest.mark.parametrize("flag, value", [("--lr", 0.01), ("--batch-size", 2)])
def test_compress_refuses_finetuning_options_without_finetuning(app, model_dir, tmp_path, flag, value):
    res = _compress(app, model_dir, tmp_path / "out", flag, value)
    assert res.exit_code == 2 and f"{flag} {value:g}: has no effect without fine-tuning" in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_compress_refuses_train_text_that_nothing_reads(app, model_dir, tmp_path):
    res = _compress(app, model_dir, tmp_path / "out", "--train-text", model_dir / "train.txt")
    assert res.exit_code == 2 and "--train-text" in res.output and "lrt reads no calibration text" in res.output
    assert not (tmp_path / "out").exists()


def test_run_compress_from_python_refuses_them_too(model_dir, tmp_path):
    """The check lives in run_compress, so a library caller gets it as the CLI does; lqlora's Fisher weights do
    read the calibration text."""
    from adaptome.core.compress.run import CompressError, run_compress

    with pytest.raises(CompressError, match="--lr 0.01: has no effect without fine-tuning"):
        run_compress("lrt", str(model_dir / "tiny"), tmp_path / "out", budget=0.5, lr=0.01)
    with pytest.raises(CompressError, match="lrt reads no calibration text"):
        run_compress("lrt", str(model_dir / "tiny"), tmp_path / "out", budget=0.5,
                     train_text=str(model_dir / "train.txt"))
    assert not (tmp_path / "out").exists()
    from adaptome.core.compress import COMPRESSORS
    from adaptome.core.compress.run import method_config, unused_option

    cfg = method_config(COMPRESSORS.get("lqlora"), None, ["fisher_batches=2"])
    assert unused_option("lqlora", cfg, 0, 1e-4, 8, str(model_dir / "train.txt")) is None


def test_compress_with_finetuning_takes_its_options(app, model_dir, tmp_path):
    res = _compress(app, model_dir, tmp_path / "out", "--train-text", model_dir / "train.txt", "--finetune-steps", 1,
                    "--lr", 0.01, "--batch-size", 2, "--block-size", 16)
    assert res.exit_code == 0, res.output
