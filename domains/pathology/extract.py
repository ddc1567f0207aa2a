"""Feature extraction: tiles read in parallel worker processes, batched encoder inference, one HDF5
per slide.

Worker processes (a torch ``DataLoader`` with ``num_workers``) each open their own OpenSlide
handle and read + resize tiles while the main process runs the encoder, so reading and decoding
hide behind compute. The file per slide holds ``features`` (N x D float32), ``coords`` (N x 2
int64, level-0 top-left, the same order) and attributes: ``mpp``, ``target_mpp``,
``tile_size``, ``tile_size_level0``, ``encoder``, ``slide_id`` (CLAM / TRIDENT layout).

Dimension letters: N tiles, B batch, T tile side, D feature dim.

Several processes (``torchrun`` / ``accelerate launch``; one GPU or CPU share each): ``shard_items``
splits the slides between ranks by tile count, each rank writes its own slides' files (the same
reuse rules as one process), and the main rank merges the ranks' summaries (``gather_summary``).

Not covered: caching the tiles themselves, augmentation, moving work between ranks once started.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from adaptome.core.atomic import atomic_path
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.tiling import MASK_KEYS, TileReader

#: tiling attributes copied into every feature file (they let a model re-create its inputs); the tissue-mask
#: settings are ``tiling.MASK_KEYS``, so a setting added there is carried into the features (and the recipe)
FEATURE_ATTRS = ("slide_id", "mpp", "target_mpp", "tile_size", "tile_size_level0", "overlap", "min_tissue",
                 "stain_norm", *MASK_KEYS, "width", "height", "slide_bytes", "roi", "roi_classes")


class TileDataset(torch.utils.data.Dataset):
    """The tiles at ``coords`` of one slide, read lazily (one slide handle per worker)."""

    def __init__(self, reader: TileReader, coords: np.ndarray):
        self.reader, self.coords = reader, np.asarray(coords)

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        """(tile T x T x 3 uint8, '') or, when the tile cannot be read, (zeros, one-line error)."""
        x, y = self.coords[i]
        return read_or_error(self.reader, int(x), int(y))


def read_or_error(reader: TileReader, x: int, y: int) -> tuple[torch.Tensor, str]:
    """A tile, or zeros and the error line naming the slide: a reader worker hands its failure to the
    main process as data, so the slide is named there (a worker's exception would arrive as a
    multi-line ``Caught ... in DataLoader worker`` wrapper that names no slide)."""
    from adaptome.domains.pathology.pipeline import user_failure

    try:
        return torch.from_numpy(np.array(reader.read(x, y))), ""
    except Exception as e:
        msg = user_failure(e, reader.path)
        if msg is None:
            raise
        t = reader.geom.tile_size
        return torch.zeros((t, t, 3), dtype=torch.uint8), msg


def tile_loader(reader: TileReader, coords: np.ndarray, batch_size: int = 64, num_workers: int = 0):
    """A DataLoader of uint8 B x T x T x 3 batches in coordinate order."""
    ds = TileDataset(reader, coords)
    kw = {"num_workers": num_workers}
    if num_workers > 0:
        kw.update(persistent_workers=False, prefetch_factor=4)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)


def finish_slide(encoder, raw: np.ndarray) -> np.ndarray:
    """A slide's N x D features from the encoder's output for ALL its tiles: the encoder's per-slide step
    (``TileEncoder.finish_slide``, e.g. the baseline encoder's per-slide stroma cut); identity for an
    encoder without one. Every extraction path calls it once per slide, before writing."""
    fin = getattr(encoder, "finish_slide", None)
    return np.asarray(raw if fin is None or len(raw) == 0 else fin(raw), np.float32)


@torch.no_grad()
def encode_tiles(encoder, loader, device: str | torch.device = "cpu") -> np.ndarray:
    """Run ``encoder`` over every batch of ``tile_loader`` (the tiles of ONE slide); returns N x D float32
    features after the encoder's per-slide step (``finish_slide``). A tile that cannot be read raises
    ``SlideError`` naming the slide."""
    from adaptome.domains.pathology.slide import SlideError

    encoder = encoder.to(device).eval()
    out = []
    for batch, errs in loader:
        bad = next((e for e in errs if e), None)
        if bad:
            raise SlideError(bad)
        out.append(encoder(batch.to(device, non_blocking=True)).float().cpu().numpy())
    dim = getattr(encoder, "dim", 0)
    return finish_slide(encoder, np.concatenate(out)) if out else np.zeros((0, dim), np.float32)


def feature_attrs(encoder, tile_attrs: dict, dim: int, **extra) -> dict:
    """The attributes of a feature file: the tiling attributes (``FEATURE_ATTRS``), the encoder's name,
    the feature width, the encoder's options in force (``encoder.recipe``, JSON; ``{}`` when the
    encoder has none) and its weights (``encoder.weights_id``, when built by ``build_encoder``), so that
    a model trained on these features can re-create them (``score``)."""
    import json

    keep = {k: tile_attrs[k] for k in FEATURE_ATTRS if k in tile_attrs}
    options = json.dumps(getattr(encoder, "recipe", None) or {}, sort_keys=True)
    out = {**keep, "encoder": encoder.name, "dim": int(dim), "encoder_options": options, **extra}
    if getattr(encoder, "weights_id", None):  # the weights' content hash, hub id, or random:<seed>
        out["encoder_weights"] = encoder.weights_id
    return out


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
    its own small cache of open slide handles. Items are (tile T x T x 3 uint8, slide index, error):
    a tile that cannot be read is zeros with a one-line error, and the worker reads no more of that
    slide (its remaining items are zeros with the same error)."""

    def __init__(self, jobs: list[tuple[str, object, np.ndarray]], max_open: int = 4):
        self.paths = [str(p) for p, _, _ in jobs]
        self.geoms = [g for _, g, _ in jobs]
        # per slide (N_s, 2) -> all slides (N, 2)
        self.coords = np.concatenate([np.asarray(c).reshape(-1, 2) for _, _, c in jobs]) if jobs else np.zeros((0, 2))
        self.slide_of = np.concatenate([np.full(len(c), i) for i, (_, _, c) in enumerate(jobs)]) if jobs else \
            np.zeros(0, int)
        self.max_open = max_open
        self._readers: dict[int, TileReader] = {}
        self._failed: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.coords)

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}, "_failed": {}}

    def __getitem__(self, i: int):
        s = int(self.slide_of[i])
        reader = self._readers.get(s)
        if reader is None:
            if len(self._readers) >= self.max_open:
                old = next(iter(self._readers))
                self._readers.pop(old).close()
            reader = self._readers[s] = TileReader(self.paths[s], self.geoms[s])
        x, y = self.coords[i]
        if s in self._failed:
            t = self.geoms[s].tile_size
            return torch.zeros((t, t, 3), dtype=torch.uint8), s, self._failed[s]
        tile, err = read_or_error(reader, int(x), int(y))
        if err:
            self._failed[s] = err
            self._readers.pop(s).close()
        return tile, s, err


@torch.no_grad()
def encode_many(encoder, jobs: list[tuple[str, object, np.ndarray]], on_slide, batch_size: int = 64,
                num_workers: int = 0, device: str | torch.device = "cpu", on_fail=None) -> None:
    """Encode the tiles of several slides through one loader; ``on_slide(index, features N x D)`` is
    called as each slide completes, after the encoder's per-slide step (``finish_slide``); slides with
    no tiles get an empty array. A slide with a tile that cannot be read (in a worker or here) calls
    ``on_fail(index, one-line error)`` instead and the other slides go on; without ``on_fail`` that
    error is raised as ``SlideError``."""
    from adaptome.domains.pathology.slide import SlideError

    def failed_slide(i: int, msg: str) -> None:
        if on_fail is None:
            raise SlideError(msg)
        on_fail(i, msg)

    ds = MultiSlideTiles(jobs)
    kw = {"num_workers": num_workers}
    if num_workers > 0:
        kw.update(prefetch_factor=4, pin_memory=str(device).startswith("cuda"))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)
    encoder = encoder.to(device).eval()
    sizes = [len(c) for _, _, c in jobs]
    parts: dict[int, list[np.ndarray]] = {i: [] for i in range(len(jobs))}
    got = [0] * len(jobs)
    failed: dict[int, str] = {}
    for i, n in enumerate(sizes):
        if n == 0:
            on_slide(i, np.zeros((0, encoder.dim), np.float32))
    for tiles, sidx, errs in loader:
        sidx = sidx.numpy()
        for s, err in zip(sidx.tolist(), errs):
            if err and s not in failed:
                failed[s] = err
        ok = np.array([s not in failed for s in sidx.tolist()])
        if ok.any():
            feats = encoder(tiles[torch.from_numpy(ok)].to(device, non_blocking=True)).float().cpu().numpy()
            for s in np.unique(sidx[ok]).tolist():
                parts[s].append(feats[sidx[ok] == s])
        for s in np.unique(sidx).tolist():
            got[s] += int((sidx == s).sum())
            if got[s] == sizes[s]:  # the slide's last tile: hand it over, free its parts
                if s in failed:
                    failed_slide(s, failed[s])
                else:
                    on_slide(s, finish_slide(encoder, np.concatenate(parts[s])))
                parts[s] = []


def extract_slide(slide_path: str | os.PathLike, coords_file: str | os.PathLike, encoder, out_file,
                  batch_size: int = 64, num_workers: int = 0, device: str = "cpu") -> int:
    """Extract features for the tiles listed in ``coords_file``; returns the number of tiles."""
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import read_coords, slide_geometry

    coords, attrs = read_coords(coords_file)
    slide = open_slide(slide_path)
    try:
        geom = slide_geometry(attrs, slide, slide_path, coords_file)
    finally:
        slide.close()
    feats = encode_tiles(encoder, tile_loader(TileReader(slide_path, geom), coords, batch_size, num_workers), device)
    write_features(out_file, feats, coords, feature_attrs(encoder, attrs, feats.shape[1]))
    return len(coords)


# --- several processes (torchrun / accelerate launch): each rank extracts a shard of the slides ---


def shard_of(items: list, rank: int, world: int, weights: list[float] | None = None) -> list:
    """The items rank ``rank`` of ``world`` processes handles: round robin over the given order, or
    with ``weights`` (e.g. tiles per slide) greedily, heaviest first, onto the least-loaded rank (ties
    to the lower rank), so that ranks finish at about the same time. Every rank computes the same
    partition from the same list; the shards are disjoint, cover every item and keep the list order."""
    if not 0 <= rank < world:
        raise PathologyError(f"rank {rank} is not in 0..{world - 1}")
    if weights is None:
        return items[rank::world]
    load = [0.0] * world
    owner = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-weights[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += weights[i]
    return [it for it, r in zip(items, owner) if r == rank]


def shard_items(items: list[tuple[str, Path]], tiles_dir: Path, rank: int, world: int) -> list[tuple[str, Path]]:
    """This rank's (slide id, path) items, balanced by the tiles each slide's tiling file lists (a file
    that cannot be read weighs 0: the stage then records its failure)."""
    if world == 1:
        return items
    import h5py

    weights = []
    for sid, _ in items:
        try:
            with h5py.File(tiles_dir / f"{sid}.h5", "r") as f:
                weights.append(float(len(f["coords"])))
        except (OSError, KeyError):
            weights.append(0.0)
    return shard_of(items, rank, world, weights)


def join_shards(device: str, timeout_s: float = 3600.0) -> tuple[int, int]:
    """(rank, world size) of this process; when a launcher started several, join its process group
    (gloo on CPU, NCCL with ``device`` cuda: each rank then uses its local GPU as ``cuda``), whose
    collectives fail after ``timeout_s`` instead of waiting for a stalled peer forever."""
    from adaptome.core.train.distributed import launched_world_size, make_accelerator

    if launched_world_size() <= 1:
        return 0, 1
    acc = make_accelerator(cpu=not str(device).startswith("cuda"), timeout_s=timeout_s)
    return acc.process_index, acc.num_processes


def shard_summary_dir(out: Path, rank: int, world: int) -> Path:
    """Where a rank's own summary goes: the stage folder in one process, ``shards/rank<r>/`` in it
    with several (merged into the stage folder's summary by the main rank, then removed)."""
    return out if world == 1 else out / "shards" / f"rank{rank}"


def gather_summary(summary, out: Path, order: list[str], rank: int, world: int, skip_errors: bool):
    """Merge the ranks' stage summaries (every ``list`` / ``dict`` field, in slide ``order``) after all
    ranks finished; the main rank writes it into ``out``. Returns the merged summary on the main rank
    and this rank's own on the others. Without ``skip_errors`` a failed slide on any rank then fails
    every rank, naming it (each rank finished its other slides first; a rank that crashes ends the
    launch through the launcher, and a stalled one fails the collective after its timeout)."""
    import dataclasses
    import shutil

    from adaptome.domains.pathology.slide import SlideError

    if world == 1:
        return summary
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, summary)
    pos = {sid: i for i, sid in enumerate(order)}

    def key(v):  # a slide id, or a tuple that starts with one, sorts by the slide order
        sid = v[0] if isinstance(v, tuple) and v else v
        return pos.get(sid, len(pos)) if isinstance(sid, str) else len(pos)

    merged = dataclasses.replace(parts[0], out_dir=str(out), summary_dir=None)
    for f in dataclasses.fields(merged):
        first = getattr(parts[0], f.name)
        if isinstance(first, list):  # a slide listed by several ranks (e.g. ``removed``) once
            setattr(merged, f.name, sorted(dict.fromkeys(v for p in parts for v in getattr(p, f.name)), key=key))
        elif isinstance(first, dict):
            items = [kv for p in parts for kv in getattr(p, f.name).items()]
            setattr(merged, f.name, dict(sorted(items, key=lambda kv: key(kv[0]))))
    merged.status = "complete" if not merged.failed else "complete, with failed slides"
    if rank == 0:
        merged.write()
        shutil.rmtree(out / "shards", ignore_errors=True)
    if not skip_errors and merged.failed:
        sid, msg = next(iter(merged.failed.items()))
        more = f" (and {len(merged.failed) - 1} more failed slides, see {out / 'summary.md'})" \
            if len(merged.failed) > 1 else ""
        raise SlideError(msg + more)
    return merged if rank == 0 else summary
