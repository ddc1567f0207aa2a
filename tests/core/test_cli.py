"""The ``adaptome`` command: help with examples everywhere, adapters list, generic train, bad input."""

import json

import pytest
import tiny_models as tiny
import typer
from typer.testing import CliRunner

from adaptome.core.adapters import ADAPTERS

runner = CliRunner()


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        path = prefix + (name,)
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            yield from _commands(cmd, path)
        else:
            yield path


def test_every_command_has_help_with_example(app):
    root = typer.main.get_command(app)
    paths = list(_commands(root))
    assert ("adapters", "list") in paths and ("train",) in paths and ("quickstart",) in paths
    for path in paths:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "Example" in res.output, f"`adaptome {' '.join(path)} --help` has no example"


def test_adapters_list_shows_every_method_with_formula(app):
    res = runner.invoke(app, ["adapters", "list"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for name in ADAPTERS.names():
        assert name in res.output
    assert "r*(in+out)" in res.output


def _run_yaml(tmp_path, data_file, **train):
    cfg = {
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
        "data": {"train_files": [str(data_file)], "eval_files": [str(data_file)], "block_size": 32},
        "adapter": {"method": "lora", "options": {"r": 4, "target_modules": "all-linear",
                                                      "modules_to_save": ["embed_tokens", "lm_head"]}},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 80, "batch_size": 4, "lr": 0.01,
                  "progress": False, "log_every": 10, **train},
    }
    import yaml
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


ALPHABET = "abcdefghij"


def _lines(n=24, seed=0):
    import random
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(60)) for _ in range(n)]


def _text(tmp_path, n=24):
    """Lines of random letters from a 10-letter alphabet: a model that learns the alphabet has
    perplexity near 10 (the line ends add a little), one that has not ~100 (all characters)."""
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(_lines(n)) + "\n")
    return path


def test_train_runs_and_writes_resolved_config(app, tmp_path):
    cfg = _run_yaml(tmp_path, _text(tmp_path))
    res = runner.invoke(app, ["train", "--config", str(cfg), "--set", "train.lr=5e-3"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    import yaml
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 5e-3 and resolved["adapter"]["method"] == "lora"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["eval/perplexity"] < 15  # uniform over the 10 letters is 10; over all characters ~100
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(out / "merged") is not None
    # running again without --overwrite refuses and keeps the adapter
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    again = runner.invoke(app, ["train", "--config", str(cfg)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_train_bad_inputs_are_one_line_errors(app, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  kind: causal\n   tiny: 3\n")
    res = runner.invoke(app, ["train", "--config", str(bad_yaml)])
    assert res.exit_code == 2 and str(bad_yaml) in res.output and "invalid YAML" in res.output

    typo = _run_yaml(tmp_path, _text(tmp_path), max_stepz=3)
    res = runner.invoke(app, ["train", "--config", str(typo)])
    assert res.exit_code == 2 and "train.max_stepz" in res.output and str(typo) in res.output

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cfg = _run_yaml(tmp_path, empty)
    res = runner.invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2 and f"{empty}: no text lines" in res.output

    # a domain's format is not silently read as text: core takes .txt / .text / .jsonl only
    fasta = tmp_path / "seqs.fasta"
    fasta.write_text(">s1\nMKV\n")
    res = runner.invoke(app, ["train", "--config", str(_run_yaml(tmp_path, fasta))])
    assert res.exit_code == 2 and f"{fasta}: unsupported file type '.fasta'" in res.output
    assert not (tmp_path / "run" / "adapter").exists()

    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "abc"}\n{"body": "no text field"}\n')
    res = runner.invoke(app, ["train", "--config", str(_run_yaml(tmp_path, bad_jsonl))])
    assert res.exit_code == 2 and f"{bad_jsonl}:2: no string field 'text'" in res.output

    res = runner.invoke(app, ["train", "--config", str(_run_yaml(tmp_path, _text(tmp_path))),
                              "--set", "adapter.method=lorra"])
    assert res.exit_code == 2 and "unknown adapter method 'lorra'" in res.output and "lora_native" in res.output


def test_train_masked_lm_merges_to_a_loadable_checkpoint(app, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM

    from adaptome.core import text
    from adaptome.core.adapters.io import load_adapter

    cfg = _run_yaml(tmp_path, _text(tmp_path), max_steps=20)
    res = runner.invoke(app, ["train", "--config", str(cfg), "--set", "model.kind=masked",
                              "--set", "adapter.method=lora_native", "--set", "data.block_size=64",
                              "--set", "adapter.options.modules_to_save=null",
                              "--set", "adapter.options.target_modules=attention+mlp"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert 1 < summary["eval/perplexity"] < 200
    # the same seed rebuilds the same tiny base; adapter on it == the merged standalone checkpoint
    base = tiny.text_masked_lm(len(text.char_tokenizer()), hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64)
    adapted = load_adapter(base, out / "adapter").eval()
    merged = AutoModelForMaskedLM.from_pretrained(out / "merged").eval()
    ids = torch.randint(5, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, merged(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_train_reads_jsonl_with_a_configured_text_field(app, tmp_path):
    """The same lines as JSONL records under ``body`` train exactly as the plain-text file does."""
    import json as js

    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text("".join(js.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(_lines())))
    res = runner.invoke(app, ["train", "--config", str(_run_yaml(tmp_path, jsonl, max_steps=10)),
                              "--set", "data.text_field=body"])
    assert res.exit_code == 0, res.output
    from_jsonl = json.loads((tmp_path / "run" / "summary.json").read_text())
    other = tmp_path / "text"  # a run of other data files: another folder (resuming the first is refused)
    other.mkdir()
    res = runner.invoke(app, ["train", "--config", str(_run_yaml(other, _text(tmp_path), max_steps=10))])
    assert res.exit_code == 0, res.output
    from_text = json.loads((other / "run" / "summary.json").read_text())
    assert from_jsonl["first_loss"] == from_text["first_loss"] and from_jsonl["last_loss"] == from_text["last_loss"]


def test_read_texts_formats_and_errors(tmp_path):
    from adaptome.core.text import InputError, read_texts

    txt = tmp_path / "a.txt"
    txt.write_text("  first line \n\n second\n")
    assert read_texts(txt) == ["first line", "second"]
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"text": "x y"}\n\n{"text": "z"}\n')
    assert read_texts(jl) == ["x y", "z"]
    jl.write_text('{"text": "x"}\nnot json\n')
    with pytest.raises(InputError, match=r"a.jsonl:2: not valid JSON"):
        read_texts(jl)
    with pytest.raises(InputError, match="file not found"):
        read_texts(tmp_path / "missing.txt")


def test_example_config_names_core_data_that_exists():
    """core/configs/train_example.yaml trains on core's own shipped text (card in data_cards/)."""
    from pathlib import Path

    from adaptome.core import text
    from adaptome.core.config import load_config
    from adaptome.core.generic_train import RunConfig

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(RunConfig, root / "core" / "configs" / "train_example.yaml", [])
    train, held = text.example_text_files()
    assert [root / f for f in cfg.data.train_files] == [train] and [root / f for f in cfg.data.eval_files] == [held]
    seen = set(text.read_texts(train))
    assert len(seen) > 150 and not seen & set(text.read_texts(held))  # held-out sentences are new
    assert (root / "data_cards" / "core_example_text.md").is_file()


def test_quickstart_bad_options_are_one_line_errors_and_keep_outputs(app, tmp_path):
    res = runner.invoke(app, ["quickstart", "--out", str(tmp_path / "q"), "--domains", "nosuchdomain"])
    assert res.exit_code == 2 and "unknown domain 'nosuchdomain'" in res.output
    out = tmp_path / "q2"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["quickstart", "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "keep.txt").read_text() == "mine"


def test_help_lists_only_commands_that_exist(app):
    root = typer.main.get_command(app)
    res = runner.invoke(app, ["adapters", "--help"])
    listed = res.output.split("Adapter methods:", 1)[1].split(".", 1)[0]
    names = {w.strip(" ,") for w in listed.split()}
    assert names == set(root.commands["adapters"].commands), (names, res.output)
