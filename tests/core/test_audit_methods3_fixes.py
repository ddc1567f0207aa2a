"""Audit (methods3) regressions, each through the entry point a user calls; each failed before its fix:

* a refused later target left a library caller's model partly wrapped (``apply_adapter``);
* SLTrain at a rank that gives a layer more parameters than its dense weight said nothing (``adaptome train``);
* DSFormer at ``--budget 1.0`` was lossy and larger than the dense model without a word (``adaptome compress``);
* ``adapters merge`` passed LoRAs trained on different weights under one base name (the digests recorded at
  save time are compared now);
* ``select-data`` ended a text cut to ``--max-length`` with the end token;
* LQ-LoRA's rank-too-large error did not name the option.
"""

from __future__ import annotations

import json

import pytest
import tiny_models as tiny
import torch
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.adapters.api import adapter_names, apply_adapter, make_config
from adaptome.core.adapters.base import AdapterOptionError

runner = CliRunner()


def _snapshot(model):
    return ([(p, type(m).__name__) for p, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def _same(model, snap):
    modules, state, grads = snap
    assert [(p, type(m).__name__) for p, m in model.named_modules()] == modules
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


@pytest.mark.parametrize("method", ["loraxs", "lamda"])
def test_a_refused_later_target_leaves_the_model_as_it_was(method):
    """Default tiny LLaMA: q_proj is 32 x 32, k_proj 16 x 32, so rank 20 fits q_proj and is refused at k_proj
    (before, q_proj stayed wrapped in the caller's model)."""
    model = tiny.llama()
    snap = _snapshot(model)
    x = torch.randint(0, 32, (1, 6))
    before = model(x).logits
    with pytest.raises(AdapterOptionError, match=r"k_proj: rank 20 exceeds"):
        apply_adapter(model, make_config(method, {"r": 20, "target_modules": ["q_proj", "k_proj"]}))
    _same(model, snap)
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=0)
    # the model still takes an adapter that fits
    apply_adapter(model, make_config(method, {"r": 4, "target_modules": ["q_proj", "k_proj"]}))
    assert adapter_names(model) == ["default"]


def test_a_refused_second_adapter_leaves_the_first_as_it_was():
    """The second adapter's v_proj is new, its q_proj shares the first adapter's layer, its k_proj is refused."""
    model = apply_adapter(tiny.llama(), make_config("loraxs", {"r": 2, "target_modules": ["q_proj"]}))
    snap = _snapshot(model)
    with pytest.raises(AdapterOptionError, match="k_proj"):
        apply_adapter(model, make_config("loraxs", {"r": 20, "target_modules": ["v_proj", "q_proj", "k_proj"]}),
                      "second")
    _same(model, snap)
    assert adapter_names(model) == ["default"]


def test_a_modules_to_save_entry_that_matches_nothing_unwraps_everything():
    model = tiny.llama()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="modules_to_save entry 'no_such_head'"):
        apply_adapter(model, make_config("lora_native", {"r": 2, "target_modules": ["q_proj"],
                                                         "modules_to_save": ["lm_head", "no_such_head"]}))
    _same(model, snap)


def _train_config(tmp_path, adapter) -> str:
    import yaml

    (tmp_path / "lines.txt").write_text("\n".join(["the cat sat on the mat and looked at the dog"] * 12) + "\n")
    cfg = {"model": {"kind": "causal", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                "intermediate_size": 64}},
           "data": {"train_files": [str(tmp_path / "lines.txt")], "block_size": 32},
           "adapter": adapter,
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 4, "lr": 0.01,
                     "progress": False, "threads": 1}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_sltrain_with_more_parameters_than_dense_warns_naming_the_layer(tmp_path):
    """Rank 16 on 32 x 32 attention: 16*(32+32) + 102 sparse = 1126 > 1024 dense (before: no word)."""
    adapter = {"method": "sltrain", "options": {"rank": 16, "delta": 0.1, "target_modules": "attention"}}
    with pytest.warns(UserWarning, match=r"sltrain rank 16, delta 0.1: 4 of the 4 replaced layers get no fewer "
                                         r"parameters than their dense weight \(e.g. model.layers.0.self_attn.q_proj "
                                         r"\(32x32\): 16\*\(32\+32\) \+ 102 sparse = 1126 vs 1024 dense\)"):
        res = runner.invoke(cli.app, ["train", "-c", _train_config(tmp_path, adapter)])
    assert res.exit_code == 0, res.output


def test_sltrain_below_the_dense_count_does_not_warn(tmp_path):
    import warnings

    adapter = {"method": "sltrain", "options": {"rank": 4, "delta": 0.1, "target_modules": "attention"}}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = runner.invoke(cli.app, ["train", "-c", _train_config(tmp_path, adapter)])
    assert res.exit_code == 0, res.output
    assert not [w for w in seen if "sltrain rank" in str(w.message)]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from adaptome.core import text

    root = tmp_path_factory.mktemp("lm")
    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return root / "tiny"


def test_dsformer_at_budget_one_is_refused_with_the_sizes(lm_dir, tmp_path):
    """At --budget 1.0 DSFormer stored as many values as the dense matrix plus their indices (33 bits per
    parameter) and was lossy, reported as kept 1.000 without a word; now refused, naming a matrix and both sizes
    (indices counted at the width the file stores them, review 13), and nothing is written."""
    out = tmp_path / "ds"
    res = runner.invoke(cli.app, ["compress", "--method", "dsformer", "--model", str(lm_dir), "--budget", "1.0",
                                  "--targets", "attention", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert ("error: --budget (keep_fraction) 1.0: model.layers.0.self_attn.q_proj (32x32) "
                                 "would store D (32x28) and 128 values of S with 8-bit (uint8) indices, 33792 bits, "
                                 "no fewer than its dense 32768 bits") in res.output, res.output
    assert "lossy" in res.output and "1792 parameters in memory" in res.output and "below about 0.969" in res.output
    assert not out.exists()
    ok = runner.invoke(cli.app, ["compress", "--method", "dsformer", "--model", str(lm_dir), "--budget", "0.9",
                                 "--targets", "attention", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["bits_per_param_after"] < 32
    from safetensors import safe_open

    with safe_open(str(out / "compressed_layers.safetensors"), "pt") as f:  # what the file holds (review 13: int32
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() * 8 for k in f.keys())  # indices)
    assert stored == report["totals"]["bits_after"] < report["totals"]["bits_before"]


def _base_folder(folder, seed):
    from adaptome.core import text

    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # another checkpoint of the same architecture
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _train_lora(tmp_path, base, name, targets):
    import yaml

    (tmp_path / "lines.txt").write_text("\n".join(["the cat sat on the mat and looked at the dog"] * 12) + "\n")
    cfg = {"model": {"kind": "causal", "name_or_path": str(base)},
           "data": {"train_files": [str(tmp_path / "lines.txt")], "block_size": 16},
           "adapter": {"method": "lora", "options": {"r": 2, "target_modules": targets}},
           "train": {"output_dir": str(tmp_path / name), "max_steps": 1, "batch_size": 2, "lr": 0.01,
                     "progress": False, "threads": 1}, "save_merged": False}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(cli.app, ["train", "-c", str(tmp_path / f"{name}.yaml")])
    assert res.exit_code == 0, res.output
    return tmp_path / name / "adapter"


def test_merge_refuses_loras_trained_on_other_weights_under_one_name(tmp_path):
    """The base folder was trained again in place between the two runs: both adapters name the same base, so the
    name check passed and the merge fitted neither base; now the digests recorded at save time are compared."""
    import shutil

    base = _base_folder(tmp_path / "base", seed=1)
    a = _train_lora(tmp_path, base, "a", ["q_proj"])
    shutil.rmtree(base)
    _base_folder(base, seed=2)
    b = _train_lora(tmp_path, base, "b", ["q_proj", "v_proj"])
    res = runner.invoke(cli.app, ["adapters", "merge", "--method", "cat", str(a), str(b), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2, res.output
    assert f"error: {b} and {a} were trained on different base weights" in res.output, res.output
    assert f"though both name {str(base.resolve())!r}" in res.output
    assert not (tmp_path / "m").exists()


def test_merge_passes_one_base_under_two_names_and_keeps_the_name_check_without_digests(tmp_path):
    import shutil

    base = _base_folder(tmp_path / "base", seed=1)
    shutil.copytree(base, tmp_path / "copy")
    a = _train_lora(tmp_path, base, "a", ["q_proj"])
    b = _train_lora(tmp_path, tmp_path / "copy", "b", ["v_proj"])  # other targets: the digest is of the whole base
    res = runner.invoke(cli.app, ["adapters", "merge", "--method", "cat", str(a), str(b), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    merged = json.loads((tmp_path / "m" / "adaptome_merge.json").read_text())
    assert merged["base_weights"] == json.loads((a / "adaptome.json").read_text())["base_weights"]
    for folder in (a, b):  # plain peft folders (no adaptome record): the names are compared, as before
        (folder / "adaptome.json").unlink()
    res = runner.invoke(cli.app, ["adapters", "merge", "--method", "cat", str(a), str(b), "--out", str(tmp_path / "n")])
    assert res.exit_code == 2 and "base_model_name_or_path" in res.output, res.output


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_select_data_does_not_end_a_cut_text_with_the_end_token(tmp_path, monkeypatch):
    """A text cut to --max-length got the end token after its cut (the warm-up learnt, and the gradients scored,
    that the document ends there); an uncut text still ends with it."""
    from adaptome.core import text
    from adaptome.core.select import less

    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    long = "0123456789" * 3  # > 16 tokens
    pool = _jsonl(tmp_path / "pool.jsonl", [{"text": "ab01" * (1 + i % 3)} for i in range(7)] + [{"text": long}])
    target = _jsonl(tmp_path / "target.jsonl", [{"text": "0101"}])
    seen = []
    real = less.encode

    def spy(tok_, texts, max_length):
        x, y = real(tok_, texts, max_length)
        seen.append((texts, x, y))
        return x, y

    monkeypatch.setattr(less, "encode", spy)
    args = ["select-data", "--model", tmp_path / "lm", "--train", pool, "--target", target, "--out",
            tmp_path / "sel.jsonl", "--percentage", 0.25, "--warmup-fraction", 0.5, "--epochs", 1, "--lr", 0.01,
            "--batch-size", 4, "--lora-r", 2, "--lora-alpha", 4, "--proj-dim", 32, "--max-length", 16]
    res = runner.invoke(cli.app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    texts, x, y = seen[0]
    for row, t in enumerate(texts):
        n = int((y[row] != -100).sum())
        last = int(x[row, n - 1])
        if t == long:
            assert n == 16 and last != tok.eos_token_id
            assert x[row, :n].tolist() == tok(t)["input_ids"][:16]
        else:
            assert last == tok.eos_token_id and n == len(tok(t)["input_ids"]) + 1
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["cut_to_max_length"] == {"pool": 1, "targets": 0}


def test_lqlora_rank_at_a_matrix_dimension_names_the_option(tmp_path):
    from adaptome.core import text

    tok = text.char_tokenizer()
    model = tiny.llama(vocab_size=len(tok), num_layers=1, num_heads=4, num_kv_heads=1)  # k_proj is 8 x 32
    model.save_pretrained(tmp_path / "gqa")
    tok.save_pretrained(tmp_path / "gqa")
    res = runner.invoke(cli.app, ["compress", "--method", "lqlora", "--model", str(tmp_path / "gqa"), "--targets",
                                  "attention", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert ("rank 8 >= min(8, 32) of model.layers.0.self_attn.k_proj: nothing left to quantise; lower --set rank=... "
            "or leave the matrix out of --targets") in res.output, res.output
    assert not (tmp_path / "o").exists()
