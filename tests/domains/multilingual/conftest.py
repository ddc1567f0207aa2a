import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).resolve().parents[3] / "domains" / "multilingual" / "data"


@functools.cache
def _app():
    """``adaptome`` with the multilingual sub-app found through the entry-point group, as ``main`` mounts it."""
    import typer

    from adaptome.core.plugins import discover

    app = typer.Typer()
    plugin = next(p for p in discover() if p.name == "multilingual")
    app.add_typer(plugin.cli(), name=plugin.name, help=plugin.help)
    app.command("noop", hidden=True)(lambda: None)  # keeps typer from collapsing a single sub-app
    return app


def invoke(args: list[str]):
    """Run ``adaptome <args>`` in-process through the multilingual plug-in's CLI."""
    from typer.testing import CliRunner

    return CliRunner().invoke(_app(), [str(a) for a in args])


@pytest.fixture(scope="session")
def text_splits(tmp_path_factory):
    """``prepare-text`` splits of the shipped Hausa, Yoruba and Swahili text (through the CLI)."""
    out = tmp_path_factory.mktemp("ml_text")
    for lang in ("hau", "yor", "swa"):
        res = invoke(["multilingual", "prepare-text", DATA / "text" / f"{lang}.txt", "--out", out / lang])
        assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, text_splits):
    """A tiny XLM-R-architecture MLM pretrained from scratch through the CLI, saved as a transformers folder."""
    out = tmp_path_factory.mktemp("ml_base") / "base"
    files = [text_splits / lang / "train.txt" for lang in ("hau", "yor", "swa")]
    res = invoke(["multilingual", "pretrain-tiny-base", *files,
                  "--out", out, "--hidden-size", 32, "--layers", 2, "--max-length", 48, "--steps", 80,
                  "--batch-size", 32, "--vocab-size", 1500])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def lang_adapter(tmp_path_factory, tiny_base, text_splits):
    """A seq_bn Hausa language adapter trained through the CLI."""
    out = tmp_path_factory.mktemp("ml_la") / "la_hau"
    res = invoke(["multilingual", "train-language-adapter", "--base", tiny_base, "--method", "seq_bn",
                  "--option", "reduction_factor=2", "--train", text_splits / "hau" / "train.txt",
                  "--eval", text_splits / "hau" / "test.txt", "--lang", "hau", "--out", out, "--steps", 80,
                  "--batch-size", 16, "--lr", "3e-3", "--max-length", 48, "--eval-sentences", 40])
    assert res.exit_code == 0, res.output
    return out
