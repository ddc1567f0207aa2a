"""Pathology benchmark: feature-extraction throughput vs the encoder's forward-only rate; scoring time.

Question: does reading + decoding + resizing tiles in worker processes hide behind the encoder's
compute? For each encoder (the weight-free baseline, a timm ResNet-18 and a timm ViT-Tiny built
from config, random weights, no download) on SYNTHETIC JPEG pyramidal slides:

- forward-only rate: tiles/s of the encoder on tiles already in memory (the compute floor);
- extraction rate with 0 reader workers (read in the main process) and with N workers, through the
  same ``extract_slide`` the CLI uses; ratio extraction / forward-only (target >= 0.8);
- scoring time per slide (MIL ensemble of 4 fold models on stored features, tile CSV + GeoJSON +
  two heatmaps).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pathology/run.py`` (add ``--device cuda``
on a GPU machine). Writes ``results.json`` and ``results.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

ENCODERS = {
    "baseline": ("baseline", None),
    "resnet18": ("timm:resnet18", {}),
    "vit_tiny": ("timm:vit_tiny_patch16_224", {}),
    "vit_base": ("timm:vit_base_patch16_224", {}),  # the size of common pathology foundation encoders
}


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-slides", type=int, default=2)
    ap.add_argument("--grid", type=int, default=24, help="cells per side (64 px each at 0.5 um/px)")
    ap.add_argument("--tile-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoders", default="baseline,resnet18,vit_tiny")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--tag", default="cpu", help="name of this run's section in results.json / results.md")
    ap.add_argument("--compression", default="jpeg", choices=["jpeg", "zlib"])
    args = ap.parse_args()

    import numpy as np
    import torch

    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import TileConfig
    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.extract import encode_many, extract_slide, read_features
    from adaptome.domains.pathology.mil import MILRegressor
    from adaptome.domains.pathology.score import score_slide
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.synth import make_cohort
    from adaptome.domains.pathology.tiling import TileReader, geometry_from_attrs, read_coords

    work = Path(tempfile.mkdtemp(prefix="patho_bench_"))
    try:
        t0 = time.perf_counter()
        make_cohort(work / "slides", n_slides=args.n_slides, seed=0, grid=args.grid, compression=args.compression)
        t_synth = time.perf_counter() - t0
        stages.tile(TileConfig(slides=str(work / "slides"), out_dir=str(work), magnification=20,
                               tile_size=args.tile_size, min_tissue=0.5, thumb_size=512), progress=False)
        tdir = work / f"tiles_20x_{args.tile_size}px_0ov"
        slides = sorted((work / "slides").glob("*.tiff"))
        n_tiles = sum(len(read_coords(tdir / f"{p.stem}.h5")[0]) for p in slides)
        # preload every tile once for the forward-only rate
        pre = []
        for p in slides:
            coords, attrs = read_coords(tdir / f"{p.stem}.h5")
            s = open_slide(p)
            reader = TileReader(p, geometry_from_attrs(attrs, s.level_downsamples))
            s.close()
            pre += [reader.read(*c) for c in coords]
        pre_t = torch.from_numpy(np.stack(pre))  # (N, T, T, 3) uint8
        results = {"n_slides": len(slides), "n_tiles": n_tiles, "tile_size": args.tile_size, "workers": args.workers,
                   "batch_size": args.batch_size, "device": args.device, "torch_threads": torch.get_num_threads(),
                   "cpu_count": os.cpu_count(), "machine": platform.machine(), "synth_s": t_synth, "encoders": {}}
        for key in args.encoders.split(","):
            name, opts = ENCODERS[key]
            torch.manual_seed(0)
            enc = build_encoder(name, None, opts).to(args.device).eval()
            with torch.no_grad():  # warm-up
                enc(pre_t[: args.batch_size].to(args.device))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                for i in range(0, len(pre_t), args.batch_size):
                    enc(pre_t[i:i + args.batch_size].to(args.device))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                fwd = _rate(len(pre_t), time.perf_counter() - t)
            row = {"encoder": name, "dim": enc.dim, "forward_tiles_per_s": fwd}
            for nw in sorted({0, args.workers}):  # one DataLoader per slide (workers restart per slide)
                out = work / f"feat_{key}_{nw}"
                out.mkdir()
                t = time.perf_counter()
                for p in slides:
                    extract_slide(p, tdir / f"{p.stem}.h5", enc, out / f"{p.stem}.h5", args.batch_size, nw, args.device)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                rate = _rate(n_tiles, time.perf_counter() - t)
                row[f"extract_tiles_per_s_w{nw}"] = rate
                row[f"ratio_w{nw}"] = rate / fwd
            if args.workers:  # one worker pool for all slides (the stage's default)
                jobs = []
                for p in slides:
                    coords, attrs = read_coords(tdir / f"{p.stem}.h5")
                    s = open_slide(p)
                    jobs.append((str(p), geometry_from_attrs(attrs, s.level_downsamples), coords))
                    s.close()
                got = []
                t = time.perf_counter()
                encode_many(enc, jobs, lambda i, f: got.append(len(f)), args.batch_size, args.workers, args.device)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                rate = _rate(n_tiles, time.perf_counter() - t)
                assert sum(got) == n_tiles
                row["extract_tiles_per_s_shared"] = rate
                row["ratio_shared"] = rate / fwd
            if args.workers:
                row["worker_speedup"] = row[f"extract_tiles_per_s_w{args.workers}"] / row["extract_tiles_per_s_w0"]
            results["encoders"][key] = row
            print(json.dumps(row))

        # scoring time per slide: 4 fold models on stored baseline features, heatmaps included
        fdir = work / f"feat_{args.encoders.split(',')[0]}_0"
        dim = read_features(fdir / f"{slides[0].stem}.h5")[0].shape[1]
        models = [MILRegressor(dim).eval() for _ in range(4)]
        times = []
        for p in slides:
            t = time.perf_counter()
            score_slide(p, fdir / f"{p.stem}.h5", models, work / "scores", heatmaps=True, thumb_size=1024)
            times.append(time.perf_counter() - t)
        results["score_s_per_slide"] = float(np.mean(times))
        results["tiles_per_slide"] = n_tiles / len(slides)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    results["command"] = (f"OMP_NUM_THREADS={threads} python benchmarks/pathology/run.py --tag {args.tag} "
                          f"--n-slides {args.n_slides} --grid {args.grid} --tile-size {args.tile_size} "
                          f"--workers {args.workers} --batch-size {args.batch_size} --device {args.device} "
                          f"--encoders {args.encoders} --compression {args.compression}")
    results["compression"] = args.compression
    out = Path(args.out)
    runs = {}
    if (out / "results.json").is_file():
        runs = json.loads((out / "results.json").read_text()).get("runs", {})
    runs[args.tag] = results
    (out / "results.json").write_text(json.dumps({"runs": runs}, indent=2))
    (out / "results.md").write_text(render(runs))
    print((out / "results.md").read_text())


def render(runs: dict) -> str:
    """The markdown section of every recorded run."""
    md = ["## Pathology: tile-feature extraction throughput and slide scoring", "",
          "Forward only = the encoder on tiles already in memory (the compute floor). Extraction = OpenSlide "
          "read + resize in the main process (0 workers) or in reader worker processes, either one DataLoader "
          "per slide or one pool for all slides (what `adaptome pathology extract` does). A ratio below 0.8 "
          "means reading/decoding is the bottleneck; on a 2-core shared machine workers compete with the "
          "encoder for the same cores.", ""]
    return "\n".join(md + [_markdown(tag, r) for tag, r in runs.items()])


def _markdown(tag: str, r: dict) -> str:
    w = r["workers"]
    lines = [
        f"### run `{tag}`", "",
        f"{r['n_slides']} synthetic {r['compression']} pyramidal slides, {r['n_tiles']} tiles of "
        f"{r['tile_size']} px at 20x (read at level 0, resized), batch {r['batch_size']}, device `{r['device']}`, "
        f"{r['torch_threads']} torch thread(s), {r['cpu_count']} CPU cores visible. "
        "Random-init timm models built from config (no download). Rates in tiles/s.", "",
        f"| encoder | D | forward only (tiles/s) | extract, 0 workers | extract, {w} workers, loader per slide "
        f"| extract, {w} workers, one pool (stage default) | ratio 0 w / fwd | ratio per-slide / fwd "
        f"| ratio pool / fwd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, e in r["encoders"].items():
        nan = float("nan")
        lines.append(f"| {e['encoder']} | {e['dim']} | {e['forward_tiles_per_s']:.1f} "
                     f"| {e['extract_tiles_per_s_w0']:.1f} | {e.get(f'extract_tiles_per_s_w{w}', nan):.1f} "
                     f"| {e.get('extract_tiles_per_s_shared', nan):.1f} "
                     f"| {e['ratio_w0']:.2f} | {e.get(f'ratio_w{w}', nan):.2f} | {e.get('ratio_shared', nan):.2f} |")
    lines += ["", f"Scoring (4-fold MIL ensemble on stored features, tile CSV + GeoJSON + 2 heatmaps): "
              f"{r['score_s_per_slide']:.2f} s per slide ({r['tiles_per_slide']:.0f} tiles per slide).", "",
              "Target: extraction >= 0.8x the forward-only rate. Reproduce:", "", f"    {r['command']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
