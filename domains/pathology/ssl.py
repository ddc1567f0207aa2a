"""Self-supervised pretraining of a tile encoder on unlabeled tiles (SimCLR), WeakSTIL's stage 1.

SimCLR (Chen et al., ICML 2020, arXiv 2002.05709): two random augmentations of each tile, encoder
f + projection head g (Linear-ReLU-Linear), z = g(f(x)); the NT-Xent loss (eq. 1) for a positive
pair (i, j) among 2B views is

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )

with cosine similarity ``sim``, averaged over all 2B anchors. Augmentations suited to H&E tiles:
random resized crop, flips, 90-degree rotations, brightness / contrast / saturation jitter.
Training runs through the core loop (``fit``); the encoder's network weights are saved as
``encoder.safetensors`` + ``encoder.json`` and load with
``build_encoder("timm:<name>", weights=".../encoder.safetensors", options=...)``.

Dimension letters: B tiles per batch, V = 2B views, T tile side, D feature dim, Z projection dim.

Not covered: DINO / MoCo / BYOL objectives, multi-crop, large-batch LARS, stain augmentation in
HED space.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adaptome.core.atomic import atomic_path
from adaptome.domains.pathology.errors import PathologyError


def nt_xent(z: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """NT-Xent over V = 2B projections ordered [view1 (B), view2 (B)]; eq. 1 averaged over anchors."""
    v = z.shape[0]
    b = v // 2
    z = F.normalize(z, dim=1)
    sim = z @ z.T / tau  # (V, Z) @ (Z, V) -> (V, V)
    sim = sim.masked_fill(torch.eye(v, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(b, v), torch.arange(0, b)]).to(z.device)  # partner of each anchor
    return F.cross_entropy(sim, pos)


def augment(x: torch.Tensor, gen: torch.Generator | None = None, min_crop: float = 0.5) -> torch.Tensor:
    """Random H&E-friendly views of float B x 3 x T x T tiles in [0, 1]."""
    b, _, t, _ = x.shape
    out = torch.empty_like(x)
    r = torch.rand(b, 8, generator=gen)
    for i in range(b):
        side = max(4, int(t * (min_crop + (1 - min_crop) * r[i, 0])))
        x0, y0 = int((t - side) * r[i, 1]), int((t - side) * r[i, 2])
        crop = x[i:i + 1, :, y0:y0 + side, x0:x0 + side]
        crop = F.interpolate(crop, size=(t, t), mode="bilinear", align_corners=False)[0]
        if r[i, 3] < 0.5:
            crop = crop.flip(2)
        crop = torch.rot90(crop, int(r[i, 4] * 4) % 4, dims=(1, 2))
        bright, contrast, sat = 0.8 + 0.4 * r[i, 5], 0.8 + 0.4 * r[i, 6], 0.7 + 0.6 * r[i, 7]
        grey = crop.mean(0, keepdim=True)
        crop = grey + (crop - grey) * sat
        crop = (crop - crop.mean()) * contrast + crop.mean()
        out[i] = (crop * bright).clamp(0, 1)
    return out


class SimCLRModel(nn.Module):
    """Encoder network + projection head; ``forward`` returns the NT-Xent loss of a tile batch."""

    def __init__(self, encoder, proj_dim: int = 64, tau: float = 0.1):
        super().__init__()
        self.encoder, self.tau = encoder, tau
        self.proj = nn.Sequential(nn.Linear(encoder.dim, encoder.dim), nn.ReLU(), nn.Linear(encoder.dim, proj_dim))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.permute(0, 3, 1, 2).float() / 255.0  # (B, T, T, C) uint8 -> (B, C, T, T)
        views = torch.cat([augment(x), augment(x)])  # (2B, C, T, T)
        enc = self.encoder
        if enc.input_size and views.shape[-1] != enc.input_size:
            views = F.interpolate(views, size=(enc.input_size,) * 2, mode="bilinear", align_corners=False)
        if enc.normalise:
            views = (views - enc.mean) / enc.std
        z = self.proj(enc.net(views))  # (2B, D) -> (2B, Z)
        return nt_xent(z, self.tau)


class _TileTensorDataset(torch.utils.data.Dataset):
    def __init__(self, tiles: np.ndarray):
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.tiles[i]))


def collect_tiles(slides_and_coords: list[tuple[str, str]], max_tiles: int = 2048, seed: int = 0) -> np.ndarray:
    """Read up to ``max_tiles`` tiles (K x T x T x 3 uint8), sampled evenly over slides."""
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import TileReader, read_coords, slide_geometry

    rng = np.random.default_rng(seed)
    per = max(1, max_tiles // max(1, len(slides_and_coords)))
    tiles = []
    for slide_path, coords_file in slides_and_coords:
        coords, attrs = read_coords(coords_file)
        s = open_slide(slide_path)
        try:
            geom = slide_geometry(attrs, s, slide_path, coords_file)
        finally:
            s.close()
        reader = TileReader(slide_path, geom)
        for i in rng.permutation(len(coords))[:per]:
            tiles.append(reader.read(*coords[i]))
        reader.close()
    if not tiles:
        raise PathologyError("no tiles to pretrain on (empty tiling outputs)")
    return np.stack(tiles)


def pretrain(encoder, tiles: np.ndarray, out_dir: str | os.PathLike, max_steps: int = 200, batch_size: int = 32,
             lr: float = 1e-3, tau: float = 0.1, proj_dim: int = 64, seed: int = 0, progress: bool = False,
             encoder_meta: dict | None = None) -> dict:
    """SimCLR-pretrain ``encoder`` on ``tiles``; saves the encoder network; returns the loss history."""
    from safetensors.torch import save_file

    from adaptome.core.train.loop import fit

    model = SimCLRModel(encoder, proj_dim, tau)
    res = fit(model, _TileTensorDataset(tiles), loss_fn=lambda m, batch: m(batch),
              output_dir=str(Path(out_dir) / "train"),
              max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=1e-4, schedule="cosine",
              log_every=max(1, max_steps // 10), seed=seed, progress=progress, resume=False, save_every=0)
    out = Path(out_dir)
    sd = {k: v.detach().cpu().contiguous() for k, v in res.model.encoder.net.state_dict().items()}
    with atomic_path(out / "encoder.safetensors") as tmp:
        save_file(sd, str(tmp))
    losses = [h["loss"] for h in res.history if "loss" in h]
    (out / "encoder.json").write_text(json.dumps({"encoder": encoder.name, "dim": encoder.dim, "losses": losses,
                                                  **(encoder_meta or {})}, indent=2), encoding="utf-8")
    return {"losses": losses, "weights": str(out / "encoder.safetensors")}
