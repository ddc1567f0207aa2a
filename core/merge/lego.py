"""LoRA-LEGO: merge LoRAs by clustering their rank-wise units (Zhao et al., ICLR 2025,
arXiv 2409.16167, Sec. 3-4).

A minimal semantic unit (MSU) is one rank of a LoRA with its scale folded in: u_i = [B[:, i]; A[i, :]]
(here sqrt(s) on each half, ``factors.read_lora``). B A = sum_i B[:, i] A[i, :], so the units of a
LoRA can be permuted (permutation invariance) and the units of several LoRAs concatenated into one
LoRA whose update is the sum of theirs (concatenation-summation equivalence, Sec. 3). Per module, the
units of all N input LoRAs are pooled (LoRAs of different ranks allowed), clustered into k groups by
k-means (scikit-learn), and the k centroids become the ranks of the merged rank-k LoRA. With k equal
to the number of units and no reweighting, every unit is its own centroid and the merged update is
exactly the sum of the inputs' updates.

Dual reweighting (Sec. 4): we could not read the paper's Sec. 4 (no text of it and no official code
were available to us), so both steps follow the description "parameter reweighting corrects the
centroids' norm decay, output reweighting corrects the variance expansion of the merged output" in
our own data-free reading, and are switchable:

* ``param_reweight``: each centroid's B half and A half are rescaled to the mean norm of that half
  over the cluster's members (averaging units that point in different directions shrinks them);
* ``output_reweight``: the merged module update is rescaled to the mean Frobenius norm of the inputs'
  updates of that module (summing k units grows the output).

Two choices of ours (the paper does not discuss them as far as we know): ``canonical_sign`` flips a
unit to -u (the same rank-1 update) so that its largest-magnitude entry is positive, so u and -u fall
in one cluster instead of cancelling; the pooled units are sorted before k-means, so the result does
not depend on the order of the inputs or of the ranks (seeded k-means++ is otherwise order-dependent).

Dimension letters: O out_features, I in_features, n pooled units, k clusters (merged rank).

Not covered: the paper's pruning use (merging one LoRA into fewer ranks works, it is k < r, but is
not evaluated here), the paper's exact reweighting formulas (see above), per-input weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adaptome.core.merge import MERGERS
from adaptome.core.merge.factors import Factors, LoraFolder, modules


@MERGERS.register("lego")
@dataclass
class LegoConfig:
    """Args:
        param_reweight: rescale each centroid's halves to its members' mean norms (norm decay).
        output_reweight: rescale each merged module update to the inputs' mean update norm.
        canonical_sign: flip units so the largest-magnitude entry is positive before clustering.
        seed: k-means random state.
        n_init: k-means restarts (the best inertia wins).
    """

    param_reweight: bool = True
    output_reweight: bool = True
    canonical_sign: bool = True
    seed: int = 0
    n_init: int = 10

    def merge(self, loras: list[LoraFolder], rank: int | None) -> Factors:
        return merge(loras, rank, self)


def units(loras: list[LoraFolder], module: str) -> torch.Tensor:
    """The pooled units of ``module``: (n, O + I), one row per rank of every input holding it."""
    rows = [torch.cat([b.T, a], dim=1) for lora in loras if module in lora.factors
            for b, a in [lora.factors[module]]]  # (R, O) ++ (R, I) -> (R, O + I)
    return torch.cat(rows, dim=0)


def canonical(u: np.ndarray, sign: bool) -> np.ndarray:
    """Units with a canonical sign (optional) in a canonical row order (lexicographic)."""
    if sign:
        idx = np.abs(u).argmax(axis=1)  # (n,)
        flip = np.sign(u[np.arange(len(u)), idx])
        u = u * np.where(flip == 0, 1.0, flip)[:, None]
    return u[np.lexsort(u.T[::-1])]


def cluster(u: np.ndarray, k: int, cfg: LegoConfig) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k', D), labels (n,)) with k' = min(k, n); every unit its own cluster when k >= n."""
    if k >= len(u):
        return u.copy(), np.arange(len(u))
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=cfg.n_init, random_state=cfg.seed).fit(u)
    return km.cluster_centers_, km.labels_


def merge(loras: list[LoraFolder], rank: int, cfg: LegoConfig | None = None) -> Factors:
    """The rank-``rank`` LoRA-LEGO merge of ``loras``, per module (zero-padded where fewer units exist)."""
    cfg = cfg or LegoConfig()
    out: Factors = {}
    for module in modules(loras):
        holders = [lora for lora in loras if module in lora.factors]
        n_out = holders[0].factors[module][0].shape[0]
        u = canonical(units(holders, module).numpy(), cfg.canonical_sign)  # (n, O + I)
        cent, labels = cluster(u, rank, cfg)  # (k', O + I), (n,)
        if cfg.param_reweight:
            for j in range(len(cent)):
                members = u[labels == j]
                for part in (slice(0, n_out), slice(n_out, None)):
                    norm = np.linalg.norm(cent[j, part])
                    if norm > 0:
                        cent[j, part] *= np.linalg.norm(members[:, part], axis=1).mean() / norm
        c = torch.from_numpy(np.ascontiguousarray(cent))
        b = torch.zeros(n_out, rank, dtype=torch.float64)
        a = torch.zeros(rank, c.shape[1] - n_out, dtype=torch.float64)
        b[:, :len(c)] = c[:, :n_out].T  # (k', O) -> (O, k')
        a[:len(c)] = c[:, n_out:]  # (k', I)
        if cfg.output_reweight:
            merged = torch.linalg.matrix_norm(b @ a)  # (O, k) @ (k, I) -> (O, I)
            target = torch.stack([torch.linalg.matrix_norm(h.delta(module)) for h in holders]).mean()
            if merged > 0:
                g = (target / merged).sqrt()
                b, a = b * g, a * g
        out[module] = (b, a)
    return out
