"""CUDA checks (marker ``gpu``, off by default: ``pytest -m gpu`` on a machine with a GPU)."""

import copy

import pytest
import tiny_models as tiny
import torch

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.train.loop import fit

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _data(n=64, t=32):
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, 16, (n, 1), generator=g)
    seqs = (starts + torch.arange(t)) % 16  # (n, t)
    return [{"input_ids": s, "labels": s} for s in seqs]


def _collate(b):
    return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_fit_on_cuda_loss_falls(tmp_path, precision):
    model = apply_adapter(tiny.text_causal_lm(16), make_config("lora_native", {"r": 8}))
    losses = []

    class Rec:
        def after_optimizer_step(self, s):
            losses.append(s.loss)

    res = fit(model, _data(), collate_fn=_collate, hooks=[Rec()], output_dir=tmp_path, max_steps=60, batch_size=8,
              lr=1e-2, schedule="constant", mixed_precision=precision, progress=False, log_every=0)
    assert next(res.model.parameters()).device.type == "cuda"
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5


@pytest.mark.parametrize("method", ADAPTERS.names() if torch.cuda.is_available() else [])
def test_every_method_same_outputs_on_cpu_and_cuda(method):
    """A method's layer computes the same thing on CUDA as on CPU (same seed, same weights)."""
    cls = ADAPTERS.get(method)
    cfg = cls.examples()[0]
    if getattr(cls, "architectures", None) and "llama" not in cls.architectures:
        pytest.skip(f"{method} does not apply to LLaMA")
    base = tiny.text_causal_lm(32)
    cpu_model = apply_adapter(copy.deepcopy(base), cfg)
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x = torch.randint(0, 32, (2, 12))
    with torch.no_grad():
        a = cpu_model(input_ids=x).logits
        b = gpu_model(input_ids=x.cuda()).logits.cpu()
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
