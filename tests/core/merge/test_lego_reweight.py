"""LoRA-LEGO's dual reweighting against explicit formulas (core/merge/lego.py docstring):
parameter reweighting c_j <- c_j * mean_i ||u_i|| / ||c_j|| over the whole unit [B-half; A-half],
output reweighting of the merged update by sqrt(r / k). Factors are built by hand, no model.
"""

from __future__ import annotations

import math

import lora_factors as lf
import pytest
import torch

from adaptome.core.merge import lego
from adaptome.core.merge.factors import MergeError


def _two_rank_one(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b1, a1 = torch.randn(5, 1, generator=g), torch.randn(1, 3, generator=g)
    b2, a2 = torch.randn(5, 1, generator=g), torch.randn(1, 3, generator=g)
    return (b1, a1), (b2, a2)


@pytest.mark.parametrize("kind", ["l2", "max"])
def test_param_reweighting_restores_the_members_mean_norm(kind):
    """Two rank-1 LoRAs merged into one rank: the centroid is the mean unit, rescaled to the mean norm."""
    (b1, a1), (b2, a2) = _two_rank_one()
    loras = [lf.lora("x", b1, a1), lf.lora("y", b2, a2)]
    u1, u2 = torch.cat([b1[:, 0], a1[0]]).double(), torch.cat([b2[:, 0], a2[0]]).double()  # (O + I,)
    sign = lambda u: u * torch.sign(u[u.abs().argmax()])  # noqa: E731  (the canonical sign of lego.py)
    u1, u2 = sign(u1), sign(u2)
    norm = (lambda u: u.norm()) if kind == "l2" else (lambda u: u.abs().max())
    c = (u1 + u2) / 2
    c = c * ((norm(u1) + norm(u2)) / 2) / norm(c)
    want = torch.outer(c[:5], c[5:])  # (O,) x (I,) -> (O, I); r = k = 1, so output reweighting is 1
    got = lego.merge(loras, 1, lego.LegoConfig(param_norm=kind))
    torch.testing.assert_close(lf.update(got), want, atol=1e-12, rtol=0)
    plain = lego.merge(loras, 1, lego.LegoConfig(param_reweight=False))  # the plain centroid, smaller
    c0 = (u1 + u2) / 2
    torch.testing.assert_close(lf.update(plain), torch.outer(c0[:5], c0[5:]), atol=1e-12, rtol=0)
    assert lf.update(got).norm() > lf.update(plain).norm()


def test_output_reweighting_is_sqrt_r_over_k_times_the_sum_at_full_rank():
    """k = all units: every unit its own centroid (parameter reweighting is then the identity) and the
    merged update is sqrt(r / k) * (sum of the inputs' updates), r the inputs' mean rank."""
    g = torch.Generator().manual_seed(1)
    ranks = [2, 3, 4]
    loras = [lf.lora(f"l{r}", torch.randn(6, r, generator=g), torch.randn(r, 4, generator=g)) for r in ranks]
    total = sum(lf.update(lo.factors) for lo in loras)
    k = sum(ranks)
    got = lego.merge(loras, k, lego.LegoConfig())
    torch.testing.assert_close(lf.update(got), math.sqrt(3 / 9) * total, atol=1e-12, rtol=0)
    bare = lego.merge(loras, k, lego.LegoConfig(param_reweight=False, output_reweight=False))
    torch.testing.assert_close(lf.update(bare), total, atol=1e-12, rtol=0)
    param_only = lego.merge(loras, k, lego.LegoConfig(output_reweight=False))
    torch.testing.assert_close(lf.update(param_only), total, atol=1e-12, rtol=0)


def test_output_reweighting_is_one_at_the_inputs_rank():
    """k = r: the output reweighting changes nothing; only the parameter reweighting acts."""
    g = torch.Generator().manual_seed(2)
    loras = [lf.lora(f"l{i}", torch.randn(6, 2, generator=g), torch.randn(2, 4, generator=g)) for i in range(3)]
    both = lego.merge(loras, 2, lego.LegoConfig())
    param_only = lego.merge(loras, 2, lego.LegoConfig(output_reweight=False))
    torch.testing.assert_close(lf.update(both), lf.update(param_only), atol=1e-12, rtol=0)
    assert lego.output_scale([2, 2, 2], 2) == 1.0
    assert lego.output_scale([2, 4], 12) == pytest.approx(math.sqrt(3 / 12))


def test_centroids_are_the_exact_means_of_their_members():
    g = torch.Generator().manual_seed(3)
    loras = [lf.lora(f"l{i}", torch.randn(6, 3, generator=g), torch.randn(3, 4, generator=g)) for i in range(3)]
    u = lego.canonical(lego.units(loras, "m").numpy(), True)  # (9, 10)
    cent, labels = lego.cluster(u, 4, lego.LegoConfig(), n_out=6)
    for j in range(4):
        assert (labels == j).any()
        torch.testing.assert_close(torch.from_numpy(cent[j]), torch.from_numpy(u[labels == j].mean(axis=0)),
                                   atol=1e-15, rtol=0)
    got = lego.merge(loras, 4, lego.LegoConfig(param_reweight=False, output_reweight=False))
    c = torch.from_numpy(cent)
    torch.testing.assert_close(lf.update(got), c[:, :6].T @ c[:, 6:], atol=1e-12, rtol=0)  # (6, 4) @ (4, 4)


def test_bad_param_norm_is_a_clear_error():
    with pytest.raises(MergeError, match="param_norm must be 'l2' or 'max'"):
        lego.LegoConfig(param_norm="l1")
