"""Feature extraction: tiles read in parallel worker processes, batched encoder inference, one HDF5
per slide.

Worker processes (a torch ``DataLoader`` with ``num_workers``) each open their own OpenSlide
handle and read + resize tiles while the main process runs the encoder, so reading and decoding
hide behind compute. The file per slide holds ``features`` (N x D float32), ``coords`` (N x 2
int64, level-0 top-left, the same order) and attributes: ``mpp``, ``target_mpp``,
``tile_size``, ``tile_size_level0``, ``encoder``, ``slide_id`` (CLAM / TRIDENT layout).

Dimension letters: N tiles, B batch, T tile side, D feature dim.

Not covered: several GPUs, caching the tiles themselves, augmentation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from adaptome.domains.pathology.tiling import TileReader


class TileDataset(torch.utils.data.Dataset):
    """The tiles at ``coords`` of one slide, read lazily (one slide handle per worker)."""

    def __init__(self, reader: TileReader, coords: np.ndarray):
        self.reader, self.coords = reader, np.asarray(coords)

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> torch.Tensor:
        x, y = self.coords[i]
        return torch.from_numpy(np.array(self.reader.read(int(x), int(y))))  # (T, T, 3) uint8


def tile_loader(reader: TileReader, coords: np.ndarray, batch_size: int = 64, num_workers: int = 0):
    """A DataLoader of uint8 B x T x T x 3 batches in coordinate order."""
    ds = TileDataset(reader, coords)
    kw = {"num_workers": num_workers}
    if num_workers > 0:
        kw.update(persistent_workers=False, prefetch_factor=4)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)


@torch.no_grad()
def encode_tiles(encoder, loader, device: str | torch.device = "cpu") -> np.ndarray:
    """Run ``encoder`` over every batch; returns N x D float32 features."""
    encoder = encoder.to(device).eval()
    out = []
    for batch in loader:
        out.append(encoder(batch.to(device, non_blocking=True)).float().cpu().numpy())
    dim = getattr(encoder, "dim", 0)
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def write_features(out_file: str | os.PathLike, features: np.ndarray, coords: np.ndarray, attrs: dict) -> None:
    """Write one slide's features atomically (temporary name, then rename)."""
    import h5py

    out_file = Path(out_file)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=np.asarray(features, np.float32))
        f.create_dataset("coords", data=np.asarray(coords, np.int64))
        for k, v in attrs.items():
            f.attrs[k] = v
    os.replace(tmp, out_file)


def read_features(h5_file: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features N x D, coords N x 2, attrs) of one slide; a bad file is an error naming it."""
    import h5py

    try:
        with h5py.File(h5_file, "r") as f:
            return f["features"][:], f["coords"][:], dict(f.attrs)
    except (OSError, KeyError) as e:
        raise ValueError(f"{h5_file}: not a feature file ({e})") from None


def extract_slide(slide_path: str | os.PathLike, coords_file: str | os.PathLike, encoder, out_file,
                  batch_size: int = 64, num_workers: int = 0, device: str = "cpu") -> int:
    """Extract features for the tiles listed in ``coords_file``; returns the number of tiles."""
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import geometry_from_attrs, read_coords

    coords, attrs = read_coords(coords_file)
    slide = open_slide(slide_path)
    geom = geometry_from_attrs(attrs, slide.level_downsamples)
    slide.close()
    feats = encode_tiles(encoder, tile_loader(TileReader(slide_path, geom), coords, batch_size, num_workers), device)
    keep = {k: attrs[k] for k in ("slide_id", "mpp", "target_mpp", "tile_size", "tile_size_level0", "overlap")
            if k in attrs}
    write_features(out_file, feats, coords, {**keep, "encoder": encoder.name, "dim": int(feats.shape[1])})
    return len(coords)
