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

import numpy as np
import torch

from adaptome.core.atomic import atomic_path
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.tiling import TileReader

#: tiling attributes copied into every feature file (they let a model re-create its inputs)
FEATURE_ATTRS = ("slide_id", "mpp", "target_mpp", "tile_size", "tile_size_level0", "overlap", "min_tissue",
                 "thumb_size", "stain_norm", "artefacts")


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

    with atomic_path(out_file) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=np.asarray(features, np.float32))
        f.create_dataset("coords", data=np.asarray(coords, np.int64))
        for k, v in attrs.items():
            f.attrs[k] = v


def read_features(h5_file: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features N x D, coords N x 2, attrs) of one slide; a bad file is an error naming it."""
    import h5py

    try:
        with h5py.File(h5_file, "r") as f:
            return f["features"][:], f["coords"][:], dict(f.attrs)
    except (OSError, KeyError) as e:
        raise PathologyError(f"{h5_file}: not a feature file ({e})") from None


class MultiSlideTiles(torch.utils.data.Dataset):
    """The tiles of several slides as one dataset (slide by slide, coordinate order), so that one
    pool of reader workers serves a whole stage instead of starting per slide. Each worker keeps
    its own small cache of open slide handles. Items are (tile T x T x 3 uint8, slide index)."""

    def __init__(self, jobs: list[tuple[str, object, np.ndarray]], max_open: int = 4):
        self.paths = [str(p) for p, _, _ in jobs]
        self.geoms = [g for _, g, _ in jobs]
        # per slide (N_s, 2) -> all slides (N, 2)
        self.coords = np.concatenate([np.asarray(c).reshape(-1, 2) for _, _, c in jobs]) if jobs else np.zeros((0, 2))
        self.slide_of = np.concatenate([np.full(len(c), i) for i, (_, _, c) in enumerate(jobs)]) if jobs else \
            np.zeros(0, int)
        self.max_open = max_open
        self._readers: dict[int, TileReader] = {}

    def __len__(self) -> int:
        return len(self.coords)

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}}

    def __getitem__(self, i: int):
        s = int(self.slide_of[i])
        reader = self._readers.get(s)
        if reader is None:
            if len(self._readers) >= self.max_open:
                old = next(iter(self._readers))
                self._readers.pop(old).close()
            reader = self._readers[s] = TileReader(self.paths[s], self.geoms[s])
        x, y = self.coords[i]
        return torch.from_numpy(np.array(reader.read(int(x), int(y)))), s


@torch.no_grad()
def encode_many(encoder, jobs: list[tuple[str, object, np.ndarray]], on_slide, batch_size: int = 64,
                num_workers: int = 0, device: str | torch.device = "cpu") -> None:
    """Encode the tiles of several slides through one loader; ``on_slide(index, features N x D)`` is
    called as each slide completes (in order; slides with no tiles get an empty array)."""
    ds = MultiSlideTiles(jobs)
    kw = {"num_workers": num_workers}
    if num_workers > 0:
        kw.update(prefetch_factor=4, pin_memory=str(device).startswith("cuda"))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)
    encoder = encoder.to(device).eval()
    sizes = [len(c) for _, _, c in jobs]
    parts: list[np.ndarray] = []
    have, cur = 0, 0

    def flush_ready():
        nonlocal cur, have, parts
        while cur < len(jobs) and have >= sizes[cur]:
            allf = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
            on_slide(cur, allf[: sizes[cur]])
            rest = allf[sizes[cur]:]
            parts = [rest] if len(rest) else []
            have -= sizes[cur]
            cur += 1

    flush_ready()  # leading slides without tiles
    for tiles, _ in loader:
        parts.append(encoder(tiles.to(device, non_blocking=True)).float().cpu().numpy())
        have += len(tiles)
        flush_ready()
    flush_ready()


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
    keep = {k: attrs[k] for k in FEATURE_ATTRS
            if k in attrs}
    write_features(out_file, feats, coords, {**keep, "encoder": encoder.name, "dim": int(feats.shape[1])})
    return len(coords)
