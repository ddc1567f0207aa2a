"""LoRA-LEGO's unit basis (core/merge/lego.py, ``basis``): "svd" re-factors each input's update
s B A = U S V^T into units [sqrt(s_i) u_i; sqrt(s_i) v_i]. Checked against explicit formulas and
torch.linalg.svd of the dense update; factors built by hand, no model.
"""

from __future__ import annotations

import lora_factors as lf
import pytest
import torch

from adaptome.core.merge import lego
from adaptome.core.merge.factors import MergeError


def test_svd_units_have_the_same_update_and_are_the_updates_svd():
    """sum_i sqrt(s_i) u_i sqrt(s_i) v_i^T = B A, and the units are U sqrt(S), sqrt(S) V^T of the dense
    update (up to one sign per unit), singular values in decreasing order."""
    b, a = lf.random_factors(0)
    bs, as_ = lego.svd_factors(b, a)  # (7, 3), (3, 5)
    torch.testing.assert_close(bs @ as_, b @ a, atol=1e-12, rtol=0)
    u, s, vh = torch.linalg.svd(b @ a)  # (7, 7), (5,), (5, 5)
    for i in range(3):
        sign = torch.sign(bs[:, i] @ u[:, i])
        torch.testing.assert_close(bs[:, i], sign * s[i].sqrt() * u[:, i], atol=1e-10, rtol=0)
        torch.testing.assert_close(as_[i], sign * s[i].sqrt() * vh[i], atol=1e-10, rtol=0)
    # orthogonal halves, squared norms = singular values
    torch.testing.assert_close(bs.T @ bs, torch.diag(s[:3]), atol=1e-10, rtol=0)  # (3, 7) @ (7, 3)
    torch.testing.assert_close(as_ @ as_.T, torch.diag(s[:3]), atol=1e-10, rtol=0)  # (3, 5) @ (5, 3)


def test_svd_units_do_not_depend_on_the_factorisation():
    """B A = (B R)(R^-1 A): the raw units change with R, the SVD units (canonical sign) do not."""
    b, a = lf.random_factors(1)
    g = torch.Generator().manual_seed(2)
    r = torch.randn(3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    one, other = lf.lora("x", b, a), lf.lora("y", b @ r, torch.linalg.solve(r, a))  # (7, 3) @ (3, 3); R^-1 (3, 5)
    svd = [lego.canonical(lego.units([lo], "m", "svd").numpy(), True) for lo in (one, other)]
    raw = [lego.canonical(lego.units([lo], "m", "raw").numpy(), True) for lo in (one, other)]
    torch.testing.assert_close(torch.from_numpy(svd[0]), torch.from_numpy(svd[1]), atol=1e-9, rtol=0)
    assert not torch.allclose(torch.from_numpy(raw[0]), torch.from_numpy(raw[1]), atol=1e-3)
    # so the merge of a LoRA with a re-factored copy of another is the same for any R
    third = lf.lora("z", *lf.random_factors(3))
    cfg = lego.LegoConfig(basis="svd")
    torch.testing.assert_close(lf.update(lego.merge([one, third], 3, cfg)),
                               lf.update(lego.merge([other, third], 3, cfg)), atol=1e-9, rtol=0)


def test_svd_units_at_full_rank_without_reweighting_give_the_exact_sum():
    """k = all units: every SVD unit its own centroid, so the merge is the sum of the updates; LoRAs of
    different ranks, one rank-deficient (its zero unit stays zero)."""
    b1, a1 = lf.random_factors(4, r=2)
    b2, a2 = lf.random_factors(5, r=4)
    b2[:, 3] = b2[:, 0]  # (7, 4): rank 3 update from 4 ranks
    loras = [lf.lora("x", b1, a1), lf.lora("y", b2, a2)]
    cfg = lego.LegoConfig(basis="svd", param_reweight=False, output_reweight=False)
    got = lego.merge(loras, 6, cfg)
    torch.testing.assert_close(lf.update(got), b1 @ a1 + b2 @ a2, atol=1e-10, rtol=0)
    assert torch.linalg.svdvals(b2 @ a2)[3] < 1e-10  # the fourth unit is zero
    assert lego.units([loras[1]], "m", "svd")[3].abs().max() < 1e-6


def test_bad_basis_is_a_clear_error():
    with pytest.raises(MergeError, match="basis must be 'raw' or 'svd'"):
        lego.LegoConfig(basis="qr")


def test_clustering_on_directions_groups_by_direction_not_size():
    """Units u, 10 u, v, 10 v (u, v orthogonal): on directions k = 2 pairs each unit with its scaled copy
    and the centroid is the raw members' mean; on the raw units the two small ones share a cluster."""
    e = torch.eye(6, dtype=torch.float64)
    b = torch.stack([e[0, :3], 10 * e[0, :3], e[1, :3], 10 * e[1, :3]], dim=1)  # (3, 4): B-halves
    a = torch.stack([e[0, 3:], 10 * e[0, 3:], e[1, 3:], 10 * e[1, 3:]])  # (4, 3): A-halves
    u = lego.units([lf.lora("x", b, a)], "m").numpy()  # (4, 6), in input order (no canonical reordering)
    cent, labels = lego.cluster(u, 2, lego.LegoConfig(cluster_on="directions"), n_out=3)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    torch.testing.assert_close(torch.from_numpy(cent[labels[0]]), torch.from_numpy((u[0] + u[1]) / 2))
    _, raw = lego.cluster(u, 2, lego.LegoConfig(cluster_on="units"))
    assert raw[0] == raw[2]
    with pytest.raises(MergeError, match="cluster_on must be"):
        lego.LegoConfig(cluster_on="norms")
