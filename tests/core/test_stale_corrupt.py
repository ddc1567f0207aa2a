"""Stale results and corrupt files in core's commands (audit: stale / corrupt, core).

Each test failed on the code before its fix: a truncated or empty ``model.safetensors``, a truncated
``tokenizer.json`` or ``config.json``, or a directory named ``model.safetensors`` in a model folder gave a
safetensors / JSON traceback (or transformers' own wording, naming no file) from ``adaptome train``
(``model.name_or_path``), ``compress --model``, ``select-data --model`` and ``adapters export --base``; a stopped
``adaptome train`` resumed silently after the base's ``tokenizer.json`` was edited in place (the same weights,
other token ids for the same text).
"""

import json
import random
from pathlib import Path

import pytest
import tiny_models
import yaml
from typer.testing import CliRunner

runner = CliRunner()


def _base(folder: Path) -> Path:
    """A tiny LLaMA with core's character tokenizer, saved as a transformers folder (weights, config, tokenizer)."""
    from adaptome.core import text

    tok = text.char_tokenizer()
    model = tiny_models.text_causal_lm(len(tok), **tiny_models.TINY_TRAIN_MODEL)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _text(path: Path, n: int = 40) -> Path:
    rng = random.Random(0)
    path.write_text("".join("".join(rng.choice("abcdefghij ") for _ in range(30)) + "\n" for _ in range(n)))
    return path


def _config(tmp_path: Path, base: Path, name: str = "run", **train) -> Path:
    cfg = {"model": {"name_or_path": str(base)},
           "data": {"train_files": [str(_text(tmp_path / "train.txt"))], "block_size": 32},
           "adapter": {"method": "lora_native", "options": {"r": 2, "init_lora_weights": "random_b"}},
           "train": {"output_dir": str(tmp_path / name), "max_steps": 4, "batch_size": 4, "lr": 0.01,
                     "progress": False, "log_every": 1, "threads": 1, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_error(res, *needles) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _break(folder: Path, kind: str) -> Path:
    """Damage one file of a model folder as a cut download, an empty file or a directory in its place would."""
    if kind == "truncated weights":
        f = folder / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "empty weights":
        f = folder / "model.safetensors"
        f.write_bytes(b"")
    elif kind == "weights directory":
        f = folder / "model.safetensors"
        f.unlink()
        f.mkdir()
    elif kind == "truncated tokenizer":
        f = folder / "tokenizer.json"
        f.write_text(f.read_text()[:300])
    else:
        f = folder / "config.json"
        f.write_text(f.read_text()[:80])
    return f


KINDS = ["truncated weights", "empty weights", "weights directory", "truncated tokenizer", "truncated config"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_names_a_broken_file_of_its_base(app, tmp_path, kind):
    base = _base(tmp_path / "base")
    broken = _break(base, kind)
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, base))])
    _one_error(res, str(broken))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("kind", ["truncated weights", "truncated tokenizer", "truncated config"])
def test_compress_and_select_data_name_a_broken_file_of_the_model(app, tmp_path, kind):
    base = _base(tmp_path / "base")
    broken = _break(base, kind)
    res = runner.invoke(app, ["compress", "--method", "lrt", "--model", str(base), "--budget", "0.5",
                              "--out", str(tmp_path / "c")])
    _one_error(res, str(broken))
    assert not (tmp_path / "c").exists()
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": f"text number {i} here"}) + "\n" for i in range(40)))
    res = runner.invoke(app, ["select-data", "--model", str(base), "--train", str(pool), "--target", str(pool),
                              "--out", str(tmp_path / "picked.jsonl")])
    _one_error(res, str(broken))


def test_export_names_a_truncated_base(app, tmp_path):
    base = _base(tmp_path / "base")
    assert runner.invoke(app, ["train", "-c", str(_config(tmp_path, base))]).exit_code == 0
    broken = _break(base, "truncated weights")
    res = runner.invoke(app, ["adapters", "export", "--to", "peft-lora", str(tmp_path / "run" / "adapter"),
                              str(tmp_path / "peft"), "--base", str(base)])
    _one_error(res, str(broken))
    assert not (tmp_path / "peft").exists()


def test_resume_refused_after_the_tokenizer_changed_in_place(app, tmp_path, ctrl_c_at):
    base = _base(tmp_path / "base")
    cfg = _config(tmp_path, base, max_steps=6, save_every=2)
    with ctrl_c_at(2):
        res = runner.invoke(app, ["train", "-c", str(cfg)])
    assert (tmp_path / "run" / "checkpoints").exists(), res.output
    tj = base / "tokenizer.json"
    t = json.loads(tj.read_text())
    vocab = t["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # same size, same weights: 'a' and 'b' swap ids
    tj.write_text(json.dumps(t))
    res = runner.invoke(app, ["train", "-c", str(cfg)])
    _one_error(res, "tokenizer:", "another configuration")
    # --overwrite starts again on the new tokenizer
    res = runner.invoke(app, ["train", "-c", str(cfg), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed_from"] is None
