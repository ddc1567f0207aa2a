"""``adapter.method: full`` in ``adaptome train``: every loaded weight trains (AdamW or GaLore), ``merged/`` is the
trained model as a transformers checkpoint, the base perplexity is the loaded model's, and a resume is exact."""

import json

import pytest
import tiny_models
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaptome.core import text

runner = CliRunner()
TINY = tiny_models.TINY_TRAIN_MODEL


def _lines(n, seed):
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghij ") for _ in range(40)) for _ in range(n)]


def _config(tmp_path, optimizer=None, options=None, name="run", **train) -> str:
    (tmp_path / "train.txt").write_text("\n".join(_lines(24, 0)) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(_lines(8, 1)) + "\n")
    cfg = {
        "model": {"kind": "causal", "tiny": TINY},
        "data": {"train_files": [str(tmp_path / "train.txt")], "eval_files": [str(tmp_path / "eval.txt")],
                 "block_size": 32},
        "adapter": {"method": "full", "options": options or {}},
        "optimizer": optimizer or {"name": "adamw", "options": {}},
        "train": {"output_dir": str(tmp_path / name), "max_steps": 6, "batch_size": 4, "lr": 0.01,
                  "progress": False, "log_every": 1, "save_every": 0, "threads": 1, "seed": 0, **train},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _base():
    """The tiny LLaMA ``adaptome train`` builds from TINY with train.seed 0 (the loaded weights)."""
    return tiny_models.text_causal_lm(len(text.char_tokenizer()), seed=0, **TINY)


def _train(app, cfg, *extra):
    res = runner.invoke(app, ["train", "-c", cfg, *extra])
    assert res.exit_code == 0, res.output
    return res


def test_full_adamw_trains_every_weight_and_merged_is_the_trained_model(app, tmp_path):
    from transformers import AutoModelForCausalLM

    from adaptome.core.adapters.from_scratch import load_pretrained_model

    _train(app, _config(tmp_path))
    out = tmp_path / "run"
    base = {k: v for k, v in _base().state_dict().items()}
    trained = load_file(str(out / "adapter" / "model.safetensors"))
    assert json.loads((out / "adapter" / "method.json").read_text())["method"] == "full"
    assert set(trained) == set(base)
    model = _base()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 15  # 7 projections x 2 layers + lm_head
    for name in [f"{n}.weight" for n in linears] + ["model.embed_tokens.weight"]:
        assert not torch.equal(trained[name], base[name]), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "full" and summary["trainable_percent"] == 100.0
    assert summary["last_loss"] < summary["first_loss"]
    # merged/ is an ordinary checkpoint with the trained weights: same logits as adapter/ rebuilt
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    reloaded = load_pretrained_model(_base(), out / "adapter").eval()
    ids = torch.randint(0, 12, (2, 16))
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reloaded(ids).logits, atol=1e-6)
    assert not hasattr(reloaded, "adaptome_pretrain_method") or reloaded.adaptome_pretrain_method.keys() == {"full"}


def test_full_with_galore_projects_every_linear_at_rank_4(app, tmp_path):
    galore = {"name": "galore", "options": {"rank": 4, "update_proj_gap": 2, "target_modules": "all-linear"}}
    _train(app, _config(tmp_path, optimizer=galore, name="galore", save_every=6))
    _train(app, _config(tmp_path, name="adamw"))
    ckpt = tmp_path / "galore" / "checkpoints" / "step-6"
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    projected = opt["param_groups"][0]
    assert projected["galore"] and len(projected["params"]) == 14  # all-linear: every projection, not lm_head
    weights = load_file(str(ckpt / "trainable.safetensors"))
    for i in projected["params"]:
        m = opt["state"][i]["exp_avg"]
        assert 4 in m.shape and m.numel() < 32 * 32, m.shape  # rank-4 moments, smaller than AdamW's (out, in)
    g = load_file(str(tmp_path / "galore" / "adapter" / "model.safetensors"))
    a = load_file(str(tmp_path / "adamw" / "adapter" / "model.safetensors"))
    base = _base().state_dict()
    projections = [k for k in g if k.endswith("_proj.weight")]
    assert len(projections) == 14 and len(weights) == len(base)  # the checkpoint holds every weight
    for k in projections:
        assert not torch.equal(g[k], base[k]), k
        assert not torch.equal(g[k], a[k]), k


def test_full_reports_the_loaded_models_perplexity_as_base(app, tmp_path):
    from adaptome.core.evaluation import lm_perplexity
    from adaptome.core.generic_train import _collator, build_datasets

    _train(app, _config(tmp_path))
    tok = text.char_tokenizer()
    eval_set = build_datasets([str(tmp_path / "eval.txt")], tok, "causal", 32)
    torch.manual_seed(0)
    expected = lm_perplexity(_base().eval(), eval_set, _collator(tok, "causal", 0.15), "causal")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval/perplexity_base"] == pytest.approx(expected, rel=1e-5)
    assert summary["eval/perplexity"] < summary["eval/perplexity_base"]


def test_full_resume_ends_with_the_uninterrupted_weights(app, tmp_path, ctrl_c_at):
    _train(app, _config(tmp_path, name="straight"))
    cfg = _config(tmp_path, name="resumed", save_every=3)
    with ctrl_c_at(3):
        res = runner.invoke(app, ["train", "-c", cfg])
    assert res.exit_code == 2 and "interrupted at step 3 of 6" in res.output, res.output
    assert len(load_file(str(tmp_path / "resumed" / "checkpoints" / "step-3" / "trainable.safetensors"))) == \
        len(_base().state_dict())
    _train(app, cfg)
    one = load_file(str(tmp_path / "straight" / "adapter" / "model.safetensors"))
    two = load_file(str(tmp_path / "resumed" / "adapter" / "model.safetensors"))
    assert all(torch.equal(one[k], two[k]) for k in one)
    s1 = json.loads((tmp_path / "straight" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert s2["resumed_from"] == 3 and s2["eval/perplexity_base"] == pytest.approx(s1["eval/perplexity_base"])


def test_full_freezes_what_its_options_name(app, tmp_path):
    _train(app, _config(tmp_path, options={"freeze_embeddings": True, "freeze_modules": ["layers.0"]},
                        max_steps=2))
    trained = load_file(str(tmp_path / "run" / "adapter" / "model.safetensors"))
    base = _base().state_dict()
    frozen = [k for k in base if k.startswith("model.layers.0.") or k == "model.embed_tokens.weight"]
    assert frozen and all(torch.equal(trained[k], base[k]) for k in frozen)
    assert not torch.equal(trained["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])


@pytest.mark.parametrize("options, key", [({"rank": 4}, "adapter.options.rank"),
                                          ({"freeze_modules": ["nope_proj"]}, "adapter.options.freeze_modules")])
def test_full_bad_option_is_one_line_naming_the_key(app, tmp_path, options, key):
    res = runner.invoke(app, ["train", "-c", _config(tmp_path, options=options)])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and key in res.output, res.output
    assert not (tmp_path / "run" / "adapter").exists()


def test_protein_pretrain_with_full_and_galore(tmp_path):
    """Stage 1 (``adaptome protein pretrain``) fine-tunes every weight with ``full``; merged/ is what it trained."""
    from pathlib import Path

    from adaptome.core.adapters.from_scratch import load_pretrained_model
    from adaptome.domains.protein.cli import app as protein_app
    from adaptome.domains.protein.model import load_model_and_tokenizer

    root = Path(__file__).resolve().parents[2]
    preset = yaml.safe_load((root / "domains/protein/configs/pretrain_sltrain_tiny.yaml").read_text())
    preset["train_files"] = [str(root / "domains/protein/data/ec/nrPDB-EC_test_subset.fasta")]
    preset["block_size"] = 64
    preset["adapter"] = {"method": "full", "options": {}}
    preset["optimizer"] = {"name": "galore", "options": {"rank": 4, "target_modules": "all-linear"}}
    preset["train"].update(output_dir=str(tmp_path / "run"), max_steps=4, progress=False, log_every=1, threads=1)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(preset))
    res = CliRunner().invoke(protein_app, ["pretrain", "-c", str(path)])
    assert res.exit_code == 0, res.output
    assert "trainable 100.00%" in res.output
    fresh, _ = load_model_and_tokenizer(None)
    trained = load_pretrained_model(fresh, tmp_path / "run" / "adapter").eval()
    merged, _ = load_model_and_tokenizer(str(tmp_path / "run" / "merged"))
    ids = torch.randint(3, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_full_saves_a_tied_lm_head_once_and_reloads_it_tied(tmp_path):
    """``adapter/model.safetensors`` of a model whose LM head is its embedding (GPT-2, small LLaMAs)."""
    from adaptome.core.adapters.from_scratch import apply_method, load_pretrained_model, save_trained

    def tied():
        return tiny_models.llama(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                 num_kv_heads=2, tie=True, eval_mode=False)

    model, _, _ = apply_method(tied(), "full")
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    save_trained(model, tmp_path / "adapter")
    back = load_pretrained_model(tied(), tmp_path / "adapter")
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    assert torch.equal(back.lm_head.weight, model.lm_head.weight)
