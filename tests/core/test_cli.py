"""The ``adaptome`` command: help with examples everywhere, adapters list, generic train, bad input."""

import json

import pytest
import typer
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.adapters import ADAPTERS

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    cli._add_domain_apps()
    return cli.app


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


def _run_yaml(tmp_path, fasta, **train):
    cfg = {
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
        "data": {"train_files": [str(fasta)], "eval_files": [str(fasta)], "block_size": 32,
                 "prollama_seq_format": True},
        "adapter": {"method": "lora", "options": {"r": 4, "target_modules": "all-linear",
                                                      "modules_to_save": ["embed_tokens", "lm_head"]}},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 80, "batch_size": 4, "lr": 0.01,
                  "progress": False, "log_every": 10, **train},
    }
    import yaml
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fasta(tmp_path, n=24):
    import random
    rng = random.Random(0)
    text = "".join(f">s{i}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(60))}\n" for i in range(n))
    path = tmp_path / "seqs.fasta"
    path.write_text(text)
    return path


def test_train_runs_and_writes_resolved_config(app, tmp_path):
    cfg = _run_yaml(tmp_path, _fasta(tmp_path))
    res = runner.invoke(app, ["train", "--config", str(cfg), "--set", "train.lr=5e-3"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    import yaml
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 5e-3 and resolved["adapter"]["method"] == "lora"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["eval/perplexity"] < 30  # uniform over the 20 residues is 20; over all characters ~100
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

    typo = _run_yaml(tmp_path, _fasta(tmp_path), max_stepz=3)
    res = runner.invoke(app, ["train", "--config", str(typo)])
    assert res.exit_code == 2 and "train.max_stepz" in res.output and str(typo) in res.output

    empty = tmp_path / "empty.fasta"
    empty.write_text("\n\n")
    cfg = _run_yaml(tmp_path, empty)
    res = runner.invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2 and f"{empty}: no FASTA records" in res.output

    res = runner.invoke(app, ["train", "--config", str(_run_yaml(tmp_path, _fasta(tmp_path))),
                              "--set", "adapter.method=lorra"])
    assert res.exit_code == 2 and "unknown adapter method 'lorra'" in res.output and "lora_native" in res.output


def test_train_masked_lm_merges_to_a_loadable_checkpoint(app, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM

    from adaptome.core import text
    from adaptome.core.adapters.io import load_adapter

    cfg = _run_yaml(tmp_path, _fasta(tmp_path), max_steps=20)
    res = runner.invoke(app, ["train", "--config", str(cfg), "--set", "model.kind=masked",
                              "--set", "adapter.method=lora_native", "--set", "data.block_size=64",
                              "--set", "adapter.options.modules_to_save=null",
                              "--set", "adapter.options.target_modules=attention+mlp"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert 1 < summary["eval/perplexity"] < 200
    # the same seed rebuilds the same tiny base; adapter on it == the merged standalone checkpoint
    torch.manual_seed(0)
    base = text.tiny_masked_lm(len(text.char_tokenizer()), hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64)
    adapted = load_adapter(base, out / "adapter").eval()
    merged = AutoModelForMaskedLM.from_pretrained(out / "merged").eval()
    ids = torch.randint(5, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, merged(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
