"""Every registered method trains as its paper says through the real entry points.

Parametrised over the registry: ``adaptome train`` (and ``adaptome protein pretrain``, with the method
set in the stage's YAML) runs each method for a few steps on a tiny LLaMA, in process through
``CliRunner`` so that the method's own hooks can be observed, and the run shows the method's signature:

* DyLoRA samples several distinct ranks, and ``fit``'s evaluation runs at the full rank;
* SoRA zeroes every gate under a large penalty;
* LaMDA's frozen B columns are bit-for-bit unchanged after their freeze step, while unfrozen ones move;
* ALLoRA's first update of B (zero at init) is eta x LoRA's Adam step (c = eta at a zero row);
* LoRA-SB's initial factors are the SVD of the approximate first step -lr sign(sum grad W0),
  computed here by plain autograd on the rebuilt base, not LoRA-XS's SVD of W0.

A method that declares training behaviour (hooks, optimizer groups, a data init) but has no signature
check here fails, so a new such method cannot go unchecked; methods without training behaviour must
just train (the loss falls).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models as tiny
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig

runner = CliRunner()
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
LR = 1e-2
#: small options per method (a method not listed runs with its defaults)
OPTIONS = {
    "dylora": {"r": 4, "lora_alpha": 8},
    "sora": {"r": 4, "sparse_lambda": 1000.0},  # threshold lr * lambda = 10 per step: every gate to zero
    "lamda": {"r": 4, "freeze_fraction": 0.3},
    "allora": {"r": 4},
    "lorasb": {"r": 4, "init_samples": 6, "init_batch_size": 3},
    "loraxs": {"r": 4, "lora_alpha": 16.0},  # scale 4: the r x r core alone learns visibly in 8 steps
    "nola": {"r": 4, "num_basis_a": 8, "num_basis_b": 8},
    "lora": {"r": 4},
    "dora": {"r": 4},
    "lora_native": {"r": 4},
    "seq_bn": {"reduction_factor": 4, "init_weights": "mam"},
    "seq_bn_inv": {"reduction_factor": 4, "init_weights": "mam"},
}
STEPS = {"lamda": 10, "allora": 1, "lorasb": 1}


def _has_training_behaviour(cls) -> bool:
    return (cls.training_hooks is not AdapterConfig.training_hooks or cls.param_groups is not AdapterConfig.param_groups
            or cls.needs_data_init)


def _sequences() -> list[str]:
    import random

    rng = random.Random(0)
    return ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(60)) for _ in range(16)]


def _fasta(tmp_path: Path) -> Path:
    """The sequences as FASTA (the protein domain's input)."""
    path = tmp_path / "seqs.fasta"
    path.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(_sequences())))
    return path


def _text(tmp_path: Path) -> Path:
    """The same sequences as plain text, one per line (core's generic input)."""
    path = tmp_path / "seqs.txt"
    path.write_text("".join(f"{s}\n" for s in _sequences()))
    return path


def _logged_losses(out: Path) -> list[float]:
    """Mean training loss of the first two and of the last two steps (``log_every: 1``)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    return [sum(losses[:2]) / 2, sum(losses[-2:]) / 2]


# -- the two entry points -----------------------------------------------------------------------
class GenericTrain:
    """``adaptome train`` with a tiny LLaMA built from config."""

    name = "train"

    def run(self, tmp_path: Path, method: str, options: dict, steps: int) -> Path:
        text_file = _text(tmp_path)
        out = tmp_path / "run"
        cfg = {"model": {"tiny": TINY},
               "data": {"train_files": [str(text_file)], "eval_files": [str(text_file)], "block_size": 32},
               "adapter": {"method": method, "options": options},
               "train": {"output_dir": str(out), "max_steps": steps, "batch_size": 4, "lr": LR, "progress": False,
                         "log_every": 1, "schedule": "constant", "weight_decay": 0.0},
               "save_merged": False}
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = runner.invoke(cli.app, ["train", "--config", str(path)])
        assert res.exit_code == 0, res.output
        return out

    def rebuild(self, tmp_path: Path):
        """(the base model, the training examples, the collator) exactly as the run built them."""
        from adaptome.core import generic_train, text

        tok = text.char_tokenizer()
        model = tiny.text_causal_lm(len(tok), **TINY)
        data = generic_train.build_datasets([str(tmp_path / "seqs.txt")], tok, "causal", 32, "text")
        return model, data, generic_train._collator(tok, "causal", 0.15)

    def losses(self, out: Path) -> list[float]:
        return _logged_losses(out)


class ProteinPretrain:
    """``adaptome protein pretrain`` with the method in its YAML (the tiny preset otherwise)."""

    name = "protein-pretrain"

    def run(self, tmp_path: Path, method: str, options: dict, steps: int) -> Path:
        from adaptome.domains.protein.data import data_dir

        fasta = _fasta(tmp_path)
        out = tmp_path / "run"
        cfg = yaml.safe_load((data_dir().parent / "configs" / "pretrain_tiny.yaml").read_text())
        cfg["model"].update({k: TINY[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")})
        cfg.update(train_files=[str(fasta)], block_size=32, merge=False,
                   adapter={"method": method, "options": options})
        cfg["train"].update(output_dir=str(out), max_steps=steps, batch_size=4, lr=LR, progress=False, log_every=1,
                            schedule="constant", weight_decay=0.0)
        path = tmp_path / "pretrain.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = runner.invoke(cli.app, ["protein", "pretrain", "-c", str(path)])
        assert res.exit_code == 0, res.output
        return out

    def rebuild(self, tmp_path: Path):
        from adaptome.domains.protein.model import load_model_and_tokenizer
        from adaptome.domains.protein.pretrain import BlockDataset, load_sequences, stack_collate, window_blocks

        model, tok = load_model_and_tokenizer(None, "float32", TINY["hidden_size"], TINY["intermediate_size"],
                                              TINY["num_layers"], TINY["num_heads"], 2048, 0)
        blocks, labels = window_blocks(tok, load_sequences([str(tmp_path / "seqs.fasta")], "error"), 32, 128, 0)
        return model, BlockDataset(blocks, labels), stack_collate

    def losses(self, out: Path) -> list[float]:
        return _logged_losses(out)


ENTRY_POINTS = [GenericTrain(), ProteinPretrain()]


@pytest.fixture(scope="module", autouse=True)
def _domains():
    cli._add_domain_apps()


# -- signatures -----------------------------------------------------------------------------------
def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def check_dylora(ep, tmp_path, monkeypatch):
    from adaptome.core.adapters.dylora import DyLoraLinear
    from adaptome.core.optim.dylora_rank import DyLoRARankSampler

    drawn, at_eval = [], []
    original = DyLoRARankSampler.on_step_start

    def spy(self, state):
        original(self, state)
        drawn.append(self.last_rank)

    monkeypatch.setattr(DyLoRARankSampler, "on_step_start", spy)
    original_eval = DyLoraLinear.adapter_forward

    def spy_forward(self, name, x):
        if not self.training:
            at_eval.append(self.rank[name])
        return original_eval(self, name, x)

    monkeypatch.setattr(DyLoraLinear, "adapter_forward", spy_forward)
    ep.run(tmp_path, "dylora", OPTIONS["dylora"], 12)
    assert len(drawn) == 12 and len(set(drawn)) >= 3, drawn
    if ep.name == "train":  # adaptome train evaluates perplexity inside fit: at the full rank, not the last draw
        assert at_eval and set(at_eval) == {OPTIONS["dylora"]["r"]}, at_eval


def check_sora(ep, tmp_path, monkeypatch):
    out = ep.run(tmp_path, "sora", OPTIONS["sora"], 4)
    gates = [t for k, t in _adapter(out).items() if "sora_gate" in k]
    assert gates and all(not g.any() for g in gates), gates


def check_lamda(ep, tmp_path, monkeypatch):
    from adaptome.core.adapters.lamda import lamda_layers
    from adaptome.core.optim.lamda_freeze import LamdaFreezeB

    snaps: dict[int, list[torch.Tensor]] = {}
    frozen: dict[int, int] = {}
    original_before, original_after = LamdaFreezeB.before_optimizer_step, LamdaFreezeB.after_optimizer_step

    def before(self, state):
        original_before(self, state)
        frozen[state.step + 1] = self.n_frozen(state.step, state.max_steps, OPTIONS["lamda"]["r"])

    def after(self, state):
        original_after(self, state)
        snaps[state.step] = [m.lamda_B["default"].detach().clone() for _, m in lamda_layers(state.model)]

    monkeypatch.setattr(LamdaFreezeB, "before_optimizer_step", before)
    monkeypatch.setattr(LamdaFreezeB, "after_optimizer_step", after)
    steps = STEPS["lamda"]
    ep.run(tmp_path, "lamda", OPTIONS["lamda"], steps)
    assert sorted(snaps) == list(range(1, steps + 1))
    final = snaps[steps]
    for s in range(1, steps):
        k = frozen[s + 1]  # columns frozen from step s + 1 on
        for b_s, b_end in zip(snaps[s], final):
            assert torch.equal(b_s[:, :k], b_end[:, :k]), (s, k)
            if k < b_s.shape[1]:
                assert not torch.equal(b_s[:, k:], b_end[:, k:]), (s, k)  # the rest still trains
    assert frozen[steps] == OPTIONS["lamda"]["r"]  # every column frozen by 30 % of the run


def check_allora(ep, tmp_path, monkeypatch):
    from adaptome.core.adapters.allora import ALLoraConfig

    out = ep.run(tmp_path, "allora", OPTIONS["allora"], STEPS["allora"])
    b = torch.cat([t.flatten() for k, t in _adapter(out).items() if "allora_B" in k])
    moved = b[b != 0].abs()
    assert moved.numel() > 0.9 * b.numel()
    # Adam's first step moves each entry by lr (LoRA); ALLoRA scales it by c(0) = eta at a zero row
    eta = ALLoraConfig().eta
    assert eta != 1
    torch.testing.assert_close(moved.median(), torch.tensor(eta * LR), rtol=1e-3, atol=0)


def check_lorasb(ep, tmp_path, monkeypatch):
    out = ep.run(tmp_path, "lorasb", OPTIONS["lorasb"], STEPS["lorasb"])
    saved = _adapter(out)
    model, data, collate = ep.rebuild(tmp_path)
    r, n, bs = OPTIONS["lorasb"]["r"], OPTIONS["lorasb"]["init_samples"], OPTIONS["lorasb"]["init_batch_size"]
    paths = sorted(k.removesuffix(".loraxs_B") for k in saved if k.endswith(".loraxs_B"))
    assert paths
    weights = {p: model.get_submodule(p).weight for p in paths}
    for w in weights.values():
        w.requires_grad_(True)
    for i in range(0, n, bs):  # the sum of the base model's gradients over the first n examples, by autograd
        model(**collate([data[j] for j in range(i, min(n, i + bs))])).loss.backward()
    for p, w in weights.items():
        g_hat = -LR * torch.sign(w.grad)  # the approximate first Adam step
        u, _, vh = torch.linalg.svd(g_hat, full_matrices=False)
        u0, _, _ = torch.linalg.svd(w.detach(), full_matrices=False)
        b, a = saved[f"{p}.loraxs_B"], saved[f"{p}.loraxs_A"]
        # B spans G_hat's top-r left singular vectors and A its right ones (signs free)
        torch.testing.assert_close((b.T @ u[:, :r]).abs(), torch.eye(r), atol=2e-3, rtol=0)
        torch.testing.assert_close((a @ vh[:r].T).abs(), torch.eye(r), atol=2e-3, rtol=0)
        assert (b.T @ u0[:, :r]).abs().diagonal().min() < 0.9  # not LoRA-XS's SVD of W0


SIGNATURES = {"dylora": check_dylora, "sora": check_sora, "lamda": check_lamda, "allora": check_allora,
              "lorasb": check_lorasb}


@pytest.mark.parametrize("ep", ENTRY_POINTS, ids=lambda e: e.name)
@pytest.mark.parametrize("method", ADAPTERS.names())
def test_method_signature_through_entry_point(method, ep, tmp_path, monkeypatch):
    cls = ADAPTERS.get(method)
    if method in SIGNATURES:
        SIGNATURES[method](ep, tmp_path, monkeypatch)
        return
    assert not _has_training_behaviour(cls), (
        f"{method} declares training behaviour; add its signature check to SIGNATURES in this file")
    out = ep.run(tmp_path, method, OPTIONS.get(method, {}), 8)
    first, last = ep.losses(out)
    assert last < first, (first, last)


def test_adapters_list_labels_allora_an_interpretation():
    res = runner.invoke(cli.app, ["adapters", "list"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.strip("│ ").startswith("allora"))
    assert "interpretation" in row
