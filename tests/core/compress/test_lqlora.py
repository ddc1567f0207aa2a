"""LQ-LoRA: exact decomposition without quantisation, the NF quantiser (QLoRA's NF4 levels, storage
formula, codes round-trip), the MILP allocation (optimal on a brute-forced instance, budget met,
one configuration per matrix), Fisher weighting, and LoftQ beside it at equal bits."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
import torch

from adaptome.core.adapters.targets import resolve_targets
from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.layers import CompressError
from adaptome.core.compress.lqlora import (
    LQLoRAConfig,
    LQLoRALinear,
    decompose,
    loftq_uniform,
    solve_allocation,
    weighted_svd,
)
from adaptome.core.compress.nf_quant import QuantConfig, encode, nf_codebook, quantize

LQ = COMPRESSORS.get("lqlora")
# bitsandbytes' published NF4 table (QLoRA, Appendix E)
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def _heavy(o=64, i=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(o, 4, generator=g) @ torch.randn(4, i, generator=g)  # (o, 4) @ (4, i): a low-rank part
    return low + 0.3 * torch.distributions.StudentT(3.0).sample((o, i))


def test_nf4_codebook_is_qloras():
    assert torch.allclose(nf_codebook(4), torch.tensor(NF4), atol=1e-6)
    for b in (2, 3, 8):
        book = nf_codebook(b)
        assert book.numel() == 2 ** b and book[0] == -1 and book[-1] == 1 and (book == 0).sum() == 1


def test_storage_formula():
    c = QuantConfig(bits=3, bits0=8, scale_dtype="fp16", block0=64, block1=256)
    assert c.bits_per_param() == 3 + 8 / 64 + 16 / (64 * 256)
    assert QuantConfig(bits=4, bits0=0, scale_dtype="fp32", block0=64).bits_per_param() == 4.5


@pytest.mark.parametrize("cfg", [QuantConfig(2, 4, "bf16", 16, 16), QuantConfig(3, 8, "fp16", 32, 64),
                                 QuantConfig(4, 0, "fp32", 64, 1), QuantConfig(8, 8, "fp32", 64, 256)])
def test_quantiser_round_trips_its_own_codes(cfg):
    w = _heavy()
    q = quantize(w, cfg)
    dq = q.dequantize()
    assert dq.shape == w.shape
    n0 = q.codes.shape[0]
    padded = torch.cat([dq.reshape(-1), dq.new_zeros(q.codes.numel() - dq.numel())]).reshape(n0, cfg.block0)
    assert torch.equal(encode(padded, q.scales()[:n0], cfg.bits), q.codes)
    # every value within half a level gap of the block's scale; scales never below the true absmax
    blocks = torch.cat([w.reshape(-1), w.new_zeros(q.codes.numel() - w.numel())]).reshape(n0, cfg.block0)
    assert (q.scales()[:n0] >= blocks.abs().amax(1) * (1 - 1e-6)).all()
    gap = (nf_codebook(cfg.bits)[1:] - nf_codebook(cfg.bits)[:-1]).max() / 2
    assert ((padded - blocks).abs() <= gap * q.scales()[:n0, None] + 1e-6).all()


def test_without_quantisation_the_decomposition_is_exact():
    w = _heavy()
    r = decompose(w, 8, None)
    assert torch.allclose(r["q_dense"] + r["l1"] @ r["l2"], w, atol=1e-6)
    assert torch.linalg.matrix_rank(r["l1"] @ r["l2"]) <= 8
    layer = LQLoRALinear(None, r["q_dense"], r["l1"], r["l2"], torch.zeros(w.shape[0]))
    x = torch.randn(5, w.shape[1])
    assert torch.allclose(layer(x), x @ w.t(), atol=1e-5)  # x(Q + L1L2)ᵀ = xWᵀ at init


def test_alternation_stops_when_the_error_rises():
    w = _heavy()
    r = decompose(w, 8, QuantConfig(3, 8, "fp16", 64, 256), max_iters=50)
    errs = []
    q = torch.zeros_like(w)
    for _ in range(r["iters"] + 1):  # replay: errors fall until the kept iterate, the next one rises
        l1, l2 = weighted_svd(w - q, 8)
        q = quantize(w - l1 @ l2, QuantConfig(3, 8, "fp16", 64, 256)).dequantize()
        errs.append(float((w - q - l1 @ l2).square().sum()))
    assert errs[r["iters"] - 1] == pytest.approx(r["cost"], rel=1e-6)
    assert all(a >= b for a, b in zip(errs[: r["iters"]], errs[1: r["iters"]]))
    if r["iters"] < 50:
        assert errs[r["iters"]] > errs[r["iters"] - 1]


def test_milp_is_optimal_on_a_brute_forced_instance():
    rng = np.random.default_rng(0)
    costs = rng.random((3, 4))
    storage = np.array([2.1, 3.1, 4.1, 8.1])
    numels = np.array([100.0, 300.0, 50.0])
    budget = 3.5
    choice = solve_allocation(costs, storage, numels, budget)
    best = min((sum(costs[m, c] for m, c in enumerate(cs)), cs) for cs in itertools.product(range(4), repeat=3)
               if (numels * storage[list(cs)]).sum() <= budget * numels.sum())
    assert tuple(choice) == best[1]
    with pytest.raises(CompressError, match="--budget"):
        solve_allocation(costs, storage, numels, 2.0)


def test_model_budget_met_one_configuration_per_matrix(llama, batch):
    cfg = LQLoRAConfig(bits_budget=3.0, rank=4, bits=(2, 3, 4), bits0=(8,), block0=(32, 64), block1=(64,),
                       max_iters=5)
    targets = resolve_targets(llama, "all-linear")
    rows = LQ.compress(llama, targets, cfg)
    assert [r["path"] for r in rows] == targets  # one row (one configuration) per matrix
    total = sum(r["params_before"] for r in rows)
    assert sum(r["extra_bits"] for r in rows) <= 3.0 * total + 1e-6
    assert len({r["config"] for r in rows}) > 1  # mixed: the budget sits between two uniform choices
    for r in rows:
        layer = llama.get_submodule(r["path"])
        assert isinstance(layer, LQLoRALinear) and layer.q.config.name() == r["config"]
    trainable = LQ.mark_trainable(llama)
    assert len(trainable) == 2 * len(rows) and all(p.shape[0] == 4 or p.shape[1] == 4 for p in trainable)


def test_fisher_weighted_svd_minimises_the_weighted_error():
    w = _heavy()
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(w.shape[0], generator=g) + 0.05, torch.rand(w.shape[1], generator=g) + 0.05
    fisher = a[:, None] * b[None, :]  # a rank-one Fisher: the two-sided weighting is then exact
    rho, gamma = fisher.mean(1).sqrt(), fisher.mean(0).sqrt()
    l1, l2 = weighted_svd(w, 6, rho, gamma)
    p1, p2 = weighted_svd(w, 6)
    weighted = lambda e: float((fisher * e.square()).sum())  # noqa: E731
    assert weighted(w - l1 @ l2) < weighted(w - p1 @ p2)
    assert float((w - p1 @ p2).square().sum()) < float((w - l1 @ l2).square().sum())


def test_lqlora_beside_loftq_at_equal_bits():
    """LoftQ's configuration (NF3, blocks of 64, fp32 absmax = 3.5 bits) is in the grid, so the mixed
    allocation at 3.5 bits per parameter can only match or beat it on the same matrix."""
    import peft.utils.loftq_utils as lq

    w = _heavy()
    # peft's loftq_init needs bitsandbytes and a CUDA device; elsewhere the same algorithm (ours) stands in
    peft_loftq = importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()
    if not peft_loftq:
        with pytest.raises((ValueError, RuntimeError), match="bitsandbytes|NVIDIA|CUDA"):  # why peft's is not used
            lq.loftq_init(w, num_bits=4, reduced_rank=8, num_iter=1)
        loftq_err = loftq_uniform(w, 8, QuantConfig(3, 0, "fp32", 64, 1), iters=1)["rel_error"]
    else:
        q, r, l = lq.loftq_init(w, num_bits=4, reduced_rank=8, num_iter=1)  # noqa: E741
        loftq_err = float((w - q - r @ l).norm() / w.norm())
    grid = [QuantConfig(b, b0, "fp32", n0, 1 if b0 == 0 else 256) for b in (2, 3, 4) for b0 in (0, 8)
            for n0 in (32, 64)]
    bits = 4.5 if peft_loftq else 3.5
    results = [decompose(w, 8, c, 20) for c in grid]
    choice = solve_allocation(np.array([[r["cost"] for r in results]]), np.array([c.bits_per_param() for c in grid]),
                              np.array([float(w.numel())]), bits)
    r = results[int(choice[0])]
    ours = float((w - r["q_dense"] - r["l1"] @ r["l2"]).norm() / w.norm())
    assert grid[int(choice[0])].bits_per_param() <= bits
    assert ours <= loftq_err


def test_peft_export_gives_the_same_outputs(llama, batch, tmp_path):
    import peft

    from adaptome.core.compress.lqlora import to_peft

    cfg = LQLoRAConfig(bits_budget=3.0, rank=4, bits=(2, 3, 4), bits0=(8,), block0=(32,), block1=(64,), max_iters=3)
    LQ.compress(llama, resolve_targets(llama, "attention+mlp"), cfg)
    with torch.no_grad():
        for p in LQ.mark_trainable(llama):  # move off the init so that A and B both matter
            p.add_(0.01 * torch.randn_like(p))
        ref = llama(batch).logits
        exported = to_peft(llama)
        assert isinstance(exported, peft.PeftModel)
        assert torch.allclose(exported(input_ids=batch).logits, ref, atol=1e-5)
    exported.save_pretrained(tmp_path / "adapter")
    assert peft.PeftConfig.from_pretrained(tmp_path / "adapter").r == 4


def test_empirical_fisher_is_the_sum_of_squared_gradients(llama):
    from adaptome.core.compress.lqlora import empirical_fisher

    g = torch.Generator().manual_seed(9)
    batches = [{"input_ids": (x := torch.randint(3, 40, (1, 8), generator=g)), "labels": x} for _ in range(3)]
    path = "model.layers.1.mlp.down_proj"
    fisher = empirical_fisher(llama, [path], batches, lambda m, b: m(**b).loss)
    w = llama.get_submodule(path).weight
    expected = torch.zeros_like(w)
    for b in batches:
        (grad,) = torch.autograd.grad(llama(**b).loss, [w.requires_grad_(True)])
        expected += grad.square()
    assert torch.allclose(fisher[path], expected, rtol=1e-4, atol=1e-12)
    with pytest.raises(CompressError, match="train-text"):
        LQ.compress(llama, [path], LQLoRAConfig(fisher_batches=2))
