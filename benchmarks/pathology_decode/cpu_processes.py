"""Pathology decode diagnostic (GPU machine): tiles decoded by CPU processes, alone and beside ResNet-18.

Follows ``overlap.py``: can the CPU cores alone feed the GPU encoder? 14 and 8 worker processes (each its
own interpreter, so no shared GIL) read the benchmark's synthetic slides' tissue tiles (12 times over) with
the tiff-jpeg reader on the CPU (libjpeg-turbo, cut, box resize), in chunks of 32 tiles; timed alone and
while the main process runs ResNet-18 forward passes over as many preloaded tiles on the GPU (the pair's
rate is the tiles over the time both take). Median of 3.

Run on a GPU machine: ``OMP_NUM_THREADS=1 python benchmarks/pathology_decode/cpu_processes.py OUT_DIR``;
writes ``procs.json``.
"""
import importlib.util
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
_R = {}


def _init(path, g, dims, vendor):
    import torch

    torch.set_num_threads(1)
    from adaptome.domains.pathology.readers_gpu import open_reader

    _R["r"], _ = open_reader(path, g, dims, vendor, "cpu")


def _work(chunk):
    return int(_R["r"].read_batch(chunk).shape[0])


def main():
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import tile_slide

    spec = importlib.util.spec_from_file_location("decode_run", ROOT / "benchmarks/pathology_decode/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    work = Path(tempfile.mkdtemp())
    res = {}
    slides = {k: v for k, v in run._slides(work, 96).items() if k.startswith("synth")}
    setups = {}
    for case, (path, mpp0, tmpp, size) in slides.items():
        tiles = tile_slide(path, tmpp, size, min_tissue=0.5, mpp_overrides={path.name: mpp0}, thumb_size=512)
        s = open_slide(path)
        setups[case] = (path, tiles["geometry"], s.level_dimensions, s.properties.get("openslide.vendor"),
                        np.tile(tiles["coords"], (12, 1)), size)
        s.close()
    nproc = [14, 8]
    pools = {(case, k): mp.get_context("fork").Pool(k, _init, st[:4]) for case, st in setups.items() for k in nproc}
    import torch

    from adaptome.domains.pathology.encoders import build_encoder

    dev = torch.device("cuda")
    enc = build_encoder("timm:resnet18", None, {}).to(dev).eval()
    bs = 128
    for case, (path, g, dims, vendor, rep, size) in setups.items():
        row = {}
        res[case] = row
        n = len(rep)
        chunks = [rep[i:i + 32] for i in range(0, n, 32)]
        pre = torch.randint(0, 255, (bs * 4, size, size, 3), dtype=torch.uint8, device=dev)

        def forward():
            with torch.no_grad():
                for i in range(0, n, bs):
                    j = i // bs % 4
                    enc(pre[j * bs:(j + 1) * bs])
            torch.cuda.synchronize()

        forward()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            forward()
            ts.append(time.perf_counter() - t)
        t_f = sorted(ts)[1]
        row["forward_tiles_per_s"] = n / t_f
        for k in nproc:
            pool = pools[(case, k)]
            pool.map(_work, chunks[:k * 2])
            ts, tc = [], []
            for _ in range(3):
                t = time.perf_counter()
                pool.map(_work, chunks, chunksize=1)
                ts.append(time.perf_counter() - t)
                t = time.perf_counter()
                th = threading.Thread(target=forward)
                th.start()
                pool.map(_work, chunks, chunksize=1)
                th.join()
                tc.append(time.perf_counter() - t)
            row[f"cpu_procs_{k}_tiles_per_s"] = n / sorted(ts)[1]
            row[f"cpu_procs_{k}_with_forward_tiles_per_s"] = n / sorted(tc)[1]
        print(json.dumps({case: row}), flush=True)
        (OUT / "procs.json").write_text(json.dumps(res, indent=1))
    for p in pools.values():
        p.terminate()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
