"""SLTrain layers: forward == F.linear with the dense s·BA + S, dS == dense dW at the support, the support
is fixed and exact, the init follows the reference, and a tiny LLaMA pretrains from scratch through
``fit`` and through ``adaptome train`` (YAML) with the layers on attention and MLP."""

import math

import pytest
import tiny_models as tiny
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from adaptome.core.adapters.from_scratch import PRETRAIN_METHODS, load_pretrained_model
from adaptome.core.adapters.sltrain import SLTrainConfig, SLTrainLinear


def _layer(trainable_scaling=False, seed=3):
    layer = SLTrainLinear(37, 23, 4, lora_alpha=8.0, delta=0.05, trainable_scaling=trainable_scaling, seed=seed,
                          block_rows=5)
    with torch.no_grad():
        layer.lora_B.normal_()  # B = 0 at init; a non-zero B exercises the low-rank part
    return layer


def _dense(layer):
    w = torch.zeros(layer.out_features, layer.in_features)
    rows, cols = layer.sparse_index // layer.in_features, layer.sparse_index % layer.in_features
    w[rows, cols] = layer.sparse_value.detach()
    return layer.scale().detach() * layer.lora_B.detach() @ layer.lora_A.detach() + w  # (O, I)


def test_support_size_is_exact_sorted_unique_and_seeded():
    layer = SLTrainLinear(37, 23, 4, 8.0, 0.05, seed=3)
    assert layer.nnz == math.floor(0.05 * 37 * 23)
    idx = layer.sparse_index
    assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == idx.numel() and idx.max() < 37 * 23
    assert torch.equal(idx, SLTrainLinear(37, 23, 4, 8.0, 0.05, seed=3).sparse_index)
    assert not torch.equal(idx, SLTrainLinear(37, 23, 4, 8.0, 0.05, seed=4).sparse_index)
    assert not layer.sparse_index.requires_grad and "sparse_index" in dict(layer.named_buffers())


def test_init_follows_the_reference():
    layer = SLTrainLinear(400, 300, 8, 32.0, 0.1, seed=0)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(400) and layer.lora_A.std() > 0.5 / math.sqrt(3 * 400)
    assert layer.sparse_value.abs().max() <= 1 / math.sqrt(400)
    assert layer.bias.abs().max() <= 1 / math.sqrt(300)
    assert layer.scale().item() == 32.0 / 8
    assert abs(SLTrainLinear(4, 3, 2, 1.0, 0.5, trainable_scaling=True).scale().item() - math.tanh(1.0)) < 1e-7
    x = torch.randn(5, 400)  # B = 0: the layer is x Sᵀ + b
    torch.testing.assert_close(layer(x), F.linear(x, _dense(layer), layer.bias.detach()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trainable_scaling", [False, True])
def test_forward_and_gradients_match_the_dense_reference(trainable_scaling):
    layer = _layer(trainable_scaling)
    x = torch.randn(3, 4, 37, requires_grad=True)
    w = _dense(layer).requires_grad_(True)
    y = layer(x)
    ref = F.linear(x, w, layer.bias)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(y)
    y.backward(gy)
    x_grad = x.grad.clone()
    x.grad = None
    ref.backward(gy)
    torch.testing.assert_close(x_grad, x.grad, atol=1e-5, rtol=1e-5)
    flat = w.grad.reshape(-1)  # dense dW, (O*I,)
    torch.testing.assert_close(layer.sparse_value.grad, flat[layer.sparse_index], atol=1e-5, rtol=1e-5)
    s = layer.scale().detach()
    torch.testing.assert_close(layer.lora_B.grad, s * w.grad @ layer.lora_A.detach().t(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.lora_A.grad, s * layer.lora_B.detach().t() @ w.grad, atol=1e-4, rtol=1e-4)
    if trainable_scaling:  # d/dp tanh(p) <dW, BA>
        ba = layer.lora_B.detach() @ layer.lora_A.detach()
        expected = (w.grad * ba).sum() * (1 - math.tanh(1.0) ** 2)
        torch.testing.assert_close(layer.scaling_p.grad, expected, atol=1e-4, rtol=1e-4)


def test_gradcheck_in_double():
    layer = _layer(True).double()
    x = torch.randn(2, 37, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *ps: layer(x), (x, *layer.parameters()))


def test_backward_keeps_no_dense_weight_alive():
    layer = _layer()
    x = torch.randn(4, 37, requires_grad=True)
    y = layer(x)
    saved = [t for t in y.grad_fn.saved_tensors]
    assert all(t.numel() < 23 * 37 for t in saved)  # x, A, B, values, index, scale: no (O, I) tensor


def test_pretraining_tiny_llama_from_scratch_through_fit(tmp_path):
    from adaptome.core.train.loop import fit

    model = tiny.llama(vocab_size=16, eval_mode=False)
    SLTrainConfig(rank=4, lora_alpha=8.0, delta=0.1).apply(model)
    layers = [m for m in model.modules() if isinstance(m, SLTrainLinear)]
    assert len(layers) == 2 * 7 and not isinstance(model.lm_head, SLTrainLinear)
    assert all(not hasattr(m, "weight") for m in layers)  # no dense W0
    assert all(p.requires_grad for p in model.parameters())  # from scratch: norms, embeddings, head train
    supports = [m.sparse_index.clone() for m in layers]
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, 16, (64, 1), generator=g)
    seqs = (starts + torch.arange(12)) % 16  # (64, 12) a learnable pattern: counting mod 16
    data = [{"input_ids": s, "labels": s} for s in seqs]
    res = fit(model, data, collate_fn=lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]},
              output_dir=tmp_path, max_steps=40, batch_size=8, lr=1e-2, progress=False, log_every=5, cpu=True)
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(a, m.sparse_index) for a, m in zip(supports, layers))  # the support never moves
    assert any(m.lora_B.abs().max() > 0 for m in layers)


def test_adaptome_train_yaml_with_sltrain_and_galore(tmp_path):
    from adaptome.core.cli import app

    fasta = tmp_path / "seqs.txt"  # plain text, one sequence per line (core's generic reader)
    fasta.write_text("".join(f"{'MKTAYIAKQRQISFVKSHFSRQ'[i % 5:] * 3}\n" for i in range(20)))
    cfg = {
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
        "data": {"train_files": [str(fasta)], "eval_files": [str(fasta)], "block_size": 32},
        "adapter": {"method": "sltrain", "options": {"rank": 4, "lora_alpha": 8.0, "delta": 0.1}},
        "optimizer": {"name": "galore", "options": {"rank": 2, "update_proj_gap": 10, "scale": 1.0,
                                                    "target_modules": ["lm_head"]}},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 30, "batch_size": 4, "lr": 0.01,
                  "progress": False, "log_every": 10},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert res.exit_code == 0, res.output
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "sltrain" and summary["optimizer"] == "galore"
    assert summary["last_loss"] < summary["first_loss"]
    from adaptome.core import text

    fresh = tiny.text_causal_lm(len(text.char_tokenizer()), seed=None, hidden_size=32, num_layers=1, num_heads=2,
                                intermediate_size=64)
    model = load_pretrained_model(fresh, tmp_path / "run" / "adapter")
    assert isinstance(model.model.layers[0].self_attn.q_proj, SLTrainLinear)
    # merged/: the dense equivalent, loaded by plain transformers with the same logits
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged")
    ids = torch.randint(3, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(dense(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert type(dense.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    cfg["optimizer"]["options"]["rnak"] = 3  # a typo is an error naming the key, before any training
    path.write_text(yaml.safe_dump(cfg))
    bad = CliRunner().invoke(app, ["train", "--config", str(path), "--overwrite"])
    assert bad.exit_code == 2 and "rnak" in bad.output


def test_registered_as_a_pretraining_method_not_an_adapter():
    from adaptome.core.adapters import ADAPTERS

    assert "sltrain" in PRETRAIN_METHODS and "sltrain" not in ADAPTERS
    cfg = SLTrainConfig(rank=4, delta=0.05)
    layer = SLTrainLinear(37, 23, 4, 32.0, 0.05)
    assert sum(p.numel() for p in layer.parameters()) == cfg.expected_params(37, 23, True)


def test_protein_pretrain_cli_with_sltrain_and_layerwise_galore(tmp_path):
    from pathlib import Path

    from adaptome.domains.protein.cli import app as protein_app

    root = Path(__file__).resolve().parents[3]
    preset = yaml.safe_load((root / "domains/protein/configs/pretrain_sltrain_tiny.yaml").read_text())
    fasta = root / "domains/protein/data/ec/nrPDB-EC_test_subset.fasta"
    preset["train_files"] = [str(fasta)]
    preset["block_size"] = 64
    preset["train"].update(output_dir=str(tmp_path / "run"), max_steps=25, progress=False, log_every=5,
                           max_grad_norm=None)
    # layerwise GaLore on the dense LM head (SLTrain replaced the projections; the rest takes AdamW)
    preset["optimizer"] = {"name": "galore", "options": {"rank": 4, "update_proj_gap": 10, "scale": 1.0,
                                                         "target_modules": ["lm_head"], "layerwise": True}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(preset))
    res = CliRunner().invoke(protein_app, ["pretrain", "-c", str(path)])
    assert res.exit_code == 0, res.output
    metrics = [yaml.safe_load(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0] - 0.3
    assert (tmp_path / "run" / "adapter" / "method.json").exists()
    # merged/: the dense equivalent as an ordinary checkpoint (what stage 2 loads), same logits as the SLTrain model
    from adaptome.domains.protein.model import load_model_and_tokenizer

    dense, _ = load_model_and_tokenizer(str(tmp_path / "run" / "merged"))
    fresh, _ = load_model_and_tokenizer(None)  # the yaml's model: the tiny LLaMA built from config
    trained = load_pretrained_model(fresh, tmp_path / "run" / "adapter")
    ids = torch.randint(3, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(dense(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, SLTrainLinear) for m in dense.modules())
    preset["train"]["max_grad_norm"] = 1.0  # clipping cannot work with layerwise updates: refused, not ignored
    preset["train"]["output_dir"] = str(tmp_path / "run2")
    path.write_text(yaml.safe_dump(preset))
    bad = CliRunner().invoke(protein_app, ["pretrain", "-c", str(path)])
    assert bad.exit_code != 0 and "max_grad_norm" in (bad.output + repr(bad.exception))


def test_materialize_gives_plain_linears_with_the_same_function():
    from adaptome.core.adapters.from_scratch import ATTR
    from adaptome.core.adapters.sltrain import materialize

    model = SLTrainConfig(rank=4, lora_alpha=8.0, delta=0.05, target_modules="attention+mlp").apply(tiny.llama())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SLTrainLinear):
                m.lora_B.normal_()  # a non-zero low-rank part
    ids = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    layers = {n: m.dense_weight().detach().clone() for n, m in model.named_modules() if isinstance(m, SLTrainLinear)}
    plain = materialize(model)
    assert layers and not hasattr(plain, ATTR)
    for name, w in layers.items():
        lin = plain.get_submodule(name)
        assert type(lin) is torch.nn.Linear and torch.equal(lin.weight, w)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)

