"""LoRA-LEGO's update-space options (core/merge/lego.py, ours, not the paper's) against explicit formulas:
``centroid="update"`` (a cluster's rank is the top singular pair of its members' mean update, rescaled to their
mean update norm) and ``cluster_on="updates"`` (k-means on the normalised rank-1 updates, through their Gram
matrix). Factors are built by hand, no model; the load-in-peft check is in test_merge.py.
"""

from __future__ import annotations

import math

import lora_factors as lf
import numpy as np
import pytest
import torch

from adaptome.core.merge import lego
from adaptome.core.merge.factors import MergeError

UPDATE = dict(centroid="update")
BARE = dict(param_reweight=False, output_reweight=False)


def test_one_cluster_is_the_best_rank_one_approximation_of_the_members_mean_update():
    """k = 1 over 2 + 3 units: without reweighting the merged update is s1 u1 v1^T of the dense mean update
    (1/5) sum_i b_i a_i^T (torch's SVD); with parameter reweighting s1 becomes mean_i ||b_i|| ||a_i||."""
    (b1, a1), (b2, a2) = lf.random_factors(0, r=2), lf.random_factors(1, r=3)
    loras = [lf.lora("x", b1, a1), lf.lora("y", b2, a2)]
    mean = (b1 @ a1 + b2 @ a2) / 5  # (7, 5): sum over the 5 rank-1 updates, / 5
    u, s, vh = torch.linalg.svd(mean)  # (7, 7), (5,), (5, 5)
    top = torch.outer(u[:, 0], vh[0])  # (7,) x (5,) -> (7, 5)
    got = lego.merge(loras, 1, lego.LegoConfig(**UPDATE, **BARE))
    torch.testing.assert_close(lf.update(got), s[0] * top, atol=1e-12, rtol=0)
    sizes = [float(b[:, i].norm() * a[i].norm()) for b, a in ((b1, a1), (b2, a2)) for i in range(a.shape[0])]
    got = lego.merge(loras, 1, lego.LegoConfig(**UPDATE, output_reweight=False))
    torch.testing.assert_close(lf.update(got), sum(sizes) / 5 * top, atol=1e-12, rtol=0)
    got = lego.merge(loras, 1, lego.LegoConfig(**UPDATE))  # output reweighting: sqrt(r / k), r = (2 + 3) / 2
    torch.testing.assert_close(lf.update(got), math.sqrt(2.5) * sum(sizes) / 5 * top, atol=1e-12, rtol=0)
    # the paper's centroid is a different matrix: (mean of the B-halves) x (mean of the A-halves)
    paper = lego.merge(loras, 1, lego.LegoConfig(**BARE))
    assert not torch.allclose(lf.update(paper), s[0] * top, atol=1e-3)


def test_units_along_one_update_direction_give_their_mean_update_with_or_without_param_reweighting():
    """Units 2 b a^T (as (2 b, a)), 3 b a^T (as (-b, -3 a): the same direction, halves flipped and split
    otherwise) and the far unit e f^T: at k = 2 the first two form a cluster whose rank is exactly their mean
    update 2.5 b a^T (parameter reweighting changes nothing: no norm decay along one direction), the third is
    its own cluster (its update exactly)."""
    g = torch.Generator().manual_seed(2)
    b, a = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    a[0] = 10.0  # the largest entry of both units, so the sign rule keeps them on one side (for "directions")
    e, f = torch.zeros(6, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    e[0], f[3] = 5.0, 5.0
    loras = [lf.lora("x", torch.stack([2 * b, -b], 1), torch.stack([a, -3 * a])),  # (6, 2), (2, 4)
             lf.lora("y", e[:, None], f[None])]  # (6, 1), (1, 4)
    want = 2.5 * torch.outer(b, a) + torch.outer(e, f)  # (6, 4)
    for cfg in (lego.LegoConfig(**UPDATE, **BARE), lego.LegoConfig(**UPDATE, output_reweight=False),
                lego.LegoConfig(centroid="update", cluster_on="updates", output_reweight=False),
                lego.LegoConfig(**UPDATE, param_norm="max", output_reweight=False)):
        torch.testing.assert_close(lf.update(lego.merge(loras, 2, cfg)), want, atol=1e-12, rtol=0)


def test_every_unit_its_own_cluster_gives_the_exact_sum_and_sqrt_r_over_k_with_reweighting():
    """k = the number of units, LoRAs of ranks 2, 3, 4: each cluster is one unit, so the merged update is the
    sum of the inputs' updates (no reweighting or parameter reweighting only), sqrt(3 / 9) of it with both."""
    loras = [lf.lora(f"l{r}", *lf.random_factors(10 + r, r=r)) for r in (2, 3, 4)]
    total = sum(lf.update(lo.factors) for lo in loras)  # (7, 5)
    for on in ("directions", "units", "updates"):
        for extra, scale in ((BARE, 1.0), (dict(output_reweight=False), 1.0), ({}, math.sqrt(3 / 9))):
            got = lego.merge(loras, 9, lego.LegoConfig(centroid="update", cluster_on=on, **extra))
            torch.testing.assert_close(lf.update(got), scale * total, atol=1e-12, rtol=0)


def test_top_pair_from_qr_factors_equals_the_dense_svd_also_with_more_members_than_rows():
    g = np.random.default_rng(3)
    for o, m, i in ((9, 4, 6), (3, 8, 5), (6, 7, 2)):
        b, a = g.normal(size=(o, m)), g.normal(size=(m, i))
        s, x, y = lego.top_pair(b, a)
        u, sv, vh = np.linalg.svd(b @ a)  # (o, o), (min,), (i, i)
        assert s == pytest.approx(sv[0], rel=1e-12)
        np.testing.assert_allclose(s * np.outer(x, y), sv[0] * np.outer(u[:, 0], vh[0]), atol=1e-12)


def test_update_coordinates_keep_the_distances_of_the_normalised_rank_one_updates():
    """The (n, n) coordinates of ``update_directions`` have the pairwise distances of the dense normalised
    vec(b_i a_i^T) / ||b_i a_i^T|| (n, O * I), and flipping both halves of a unit changes neither."""
    b, a = lf.random_factors(4, o=5, r=6, i=4)
    b[:, 2] = 0.0  # a unit with a zero half: the zero vector
    u = lego.units([lf.lora("x", b, a)], "m").numpy()  # (6, 9)
    dense = np.stack([np.outer(u[j, :5], u[j, 5:]).ravel() for j in range(6)])  # (6, 20)
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    dense = dense / np.where(norms > 0, norms, 1.0)
    y = lego.update_directions(u, 5)  # (6, 6)
    dist = lambda z: np.linalg.norm(z[:, None] - z[None], axis=2)  # noqa: E731  (n, n) pairwise distances
    np.testing.assert_allclose(dist(y), dist(dense), atol=1e-7)
    flipped = u.copy()
    flipped[[0, 3]] *= -1
    np.testing.assert_allclose(dist(lego.update_directions(flipped, 5)), dist(dense), atol=1e-7)


def test_updates_clustering_pairs_units_whose_sign_rule_disagrees():
    """Units 1 and 2 hold almost the same update, but their largest entries sit in different halves with
    opposite signs, so the sign rule flips unit 2 only: on directions they are then far apart (farther than
    unit 1 from the unrelated unit 3); k-means on the updates pairs 1 with 2 and 3 with 4."""
    b = np.array([[1.0, 0.1, 0.0], [0.97, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, 0.05, 0.9]])  # (4, 3) B-halves
    a = np.array([[0.5, -0.99, 0.0], [0.5, -1.0, 0.0], [0.0, 0.0, 1.0], [0.1, 0.0, 0.8]])  # (4, 3) A-halves
    u = lego.canonical(np.concatenate([b, a], axis=1), True)  # (4, 6): unit 2 flipped, rows reordered
    d = lego.directions(u, 3)  # (4, 6)
    first = np.where(np.isclose(np.abs(u[:, 0]), 1.0))[0][0]
    second = np.where(np.isclose(np.abs(u[:, 0]), 0.97))[0][0]
    third = np.where(np.isclose(np.abs(u[:, 2]), 1.0))[0][0]
    assert np.sign(u[first, 0]) != np.sign(u[second, 0])  # the rule split the pair
    assert np.linalg.norm(d[first] - d[second]) > np.linalg.norm(d[first] - d[third])
    _, labels = lego.cluster(u, 2, lego.LegoConfig(cluster_on="updates", centroid="update"), n_out=3)
    assert labels[first] == labels[second] != labels[third]


def test_bad_centroid_options_are_clear_errors():
    with pytest.raises(MergeError, match="centroid must be 'factors' or 'update'"):
        lego.LegoConfig(centroid="median")
    with pytest.raises(MergeError, match="cluster_on='updates' needs centroid='update'"):
        lego.LegoConfig(cluster_on="updates")
    with pytest.raises(MergeError, match="cluster_on must be 'units', 'directions' or 'updates'"):
        lego.LegoConfig(cluster_on="norms")
