"""The MIL regressor: a per-tile sTIL score, aggregated to a slide score by mean, gated attention or a ratio.

WeakSTIL (Schirris et al., arXiv 2109.05892) regresses an sTIL % per tile in the tumour bed with
only the slide label; its successor ECTIL (NKI-AI/ectil, ``MeanMIL``) fixes the design used here:

    h_i = ReLU(W_1 x_i + b_1)                       post-encoder, per tile
    s_i = sigmoid(w_2 . dropout(h_i) + b_2)          tile score in [0, 1] (the tile sTIL / 100)
    mean:       y_hat = (1/N) sum_i s_i
    attention:  a_i = softmax_i( w_a . (tanh(V h_i) * sigmoid(U h_i)) )   (Ilse et al. 2018, eq. 9)
                y_hat = sum_i a_i s_i
    ratio:      w_i = softplus( w_a . (tanh(V h_i) * sigmoid(U h_i)) )   a learned stroma amount >= 0
                y_hat = sum_i w_i s_i / sum_i w_i

The ratio form is the label's own: sTIL % = (lymphocyte area in stroma) / (stroma area) summed over
the slide, so with w_i the tile's stroma area and s_i its stromal lymphocyte share the slide score is
exact. Softmax attention reaches the same weights only as w_i = exp(a_i): the network must learn the
logarithm of the stroma amount (a tile without stroma needs a_i -> -inf); softplus is linear above 0,
so w_i can follow a stroma feature directly. Our own variant (ECTIL and WeakSTIL use mean /
attention), measured in ``benchmarks/pathology/results_hard_cohort.md``.

trained with MSE against ``target / 100``. Bags have different sizes, so a batch is a list of
bags; ``bag_mask`` pads them into one tensor.

Dimension letters: B bags, N tiles (padded), D feature dim, H hidden, A attention hidden.

Not covered: instance-level pseudo-labels (CLAM), multi-head / transformer aggregation, tile
dropout augmentation (``Dropout1d`` over tiles in ECTIL) beyond plain feature dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adaptome.domains.pathology.errors import PathologyError

#: ways of aggregating tile scores to a slide score
AGGREGATIONS = ("mean", "attention", "ratio")


@dataclass
class MILOutput:
    slide: torch.Tensor  # (B,) slide score in [0, 1]
    tiles: torch.Tensor  # (B, N) tile scores in [0, 1]
    attention: torch.Tensor  # (B, N) aggregation weights summing to 1 (uniform for mean), 0 on padding


class MILRegressor(nn.Module):
    """Per-tile head -> sigmoid tile score -> mean, gated-attention or ratio slide score."""

    def __init__(self, in_dim: int, hidden: int = 128, attn_hidden: int = 64, aggregation: str = "attention",
                 dropout: float = 0.1, feature_mean=None, feature_std=None):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise PathologyError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.aggregation = aggregation
        # feature standardisation fitted on the training bags (stored with the weights)
        self.register_buffer("feat_mean", torch.zeros(in_dim) if feature_mean is None else torch.as_tensor(
            feature_mean, dtype=torch.float32))
        self.register_buffer("feat_std", torch.ones(in_dim) if feature_std is None else torch.as_tensor(
            feature_std, dtype=torch.float32))
        self.post = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 1))
        if aggregation in ("attention", "ratio"):
            self.attn_v = nn.Linear(hidden, attn_hidden)
            self.attn_u = nn.Linear(hidden, attn_hidden)
            self.attn_w = nn.Linear(attn_hidden, 1)

    def forward(self, feats: torch.Tensor, bag_mask: torch.Tensor | None = None) -> MILOutput:
        """feats: B x N x D (or N x D for one bag); bag_mask: B x N, True on real tiles."""
        if feats.dim() == 2:
            feats = feats[None]  # (N, D) -> (1, N, D)
        if bag_mask is None:
            bag_mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        x = (feats - self.feat_mean) / self.feat_std
        h = self.post(x)  # (B, N, D) @ (D, H) -> (B, N, H)
        tiles = torch.sigmoid(self.head(h).squeeze(-1))  # (B, N, H) @ (H, 1) -> (B, N)
        if self.aggregation in ("attention", "ratio"):
            gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))  # (B, N, H) -> (B, N, A)
            logits = self.attn_w(gate).squeeze(-1)  # (B, N, A) @ (A, 1) -> (B, N)
            if self.aggregation == "attention":
                attn = torch.softmax(logits.masked_fill(~bag_mask, float("-inf")), dim=1)
            else:  # w_i >= 0, normalised over the bag's real tiles
                w = F.softplus(logits) * bag_mask
                attn = w / w.sum(1, keepdim=True).clamp(min=1e-6)
        else:
            attn = bag_mask.float() / bag_mask.sum(1, keepdim=True).clamp(min=1)
        slide = (attn * tiles).sum(1)  # (B, N) -> (B,)
        return MILOutput(slide=slide, tiles=tiles, attention=attn)


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-size bags (each N_b x D) into B x N x D with a B x N mask."""
    n = max(b.shape[0] for b in bags)
    d = bags[0].shape[1]
    out = torch.zeros(len(bags), n, d, dtype=bags[0].dtype)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        out[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return out, mask


def collate_bags(items: list[tuple[torch.Tensor, float]]) -> dict:
    """DataLoader collate: [(bag N_b x D, target in [0, 1])] -> padded batch."""
    feats, mask = pad_bags([b for b, _ in items])
    return {"feats": feats, "mask": mask, "target": torch.tensor([t for _, t in items], dtype=torch.float32)}


def mil_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """MSE between the slide score and target / 100 (the batch holds targets already divided)."""
    out = model(batch["feats"], batch["mask"])
    return torch.mean((out.slide - batch["target"]) ** 2)
