"""Pathology decode diagnostic (GPU): why does tiff-jpeg extraction not overlap decoding with the encoder?

On an H200 (``results.md``, run ``h200-steady``) decoding alone ran at 0.70-0.93x of ResNet-18's forward rate,
yet extraction (decoding one batch ahead in a thread) ran at about the rate of doing the two one after the other.
This script measures, on the benchmark's synthetic slides, what serialises them:

- ``gil``: how far a pure-Python counting thread gets while the main thread decodes on the GPU, relative to
  while it sleeps (1.0: the decoder releases the GIL; near 0: it holds it);
- ``device_sync``: the wall time of one ``decode_jpeg`` call issued while about ``--busy-ms`` of matrix
  products run on (a) a non-blocking stream and (b) the legacy default stream (about the busy time: the call
  waits for all the device's work);
- ``concurrent``: a decode loop in a thread and ResNet-18 forward passes on preloaded tiles in the main thread,
  independent of each other, on the default stream and on a non-blocking stream; also with each decode call
  given the same number of streams (padded), in case the decoder reallocates (and so synchronises) per call;
- ``extract``: ``encode_decoded`` as shipped, and with its encoder on a non-blocking stream.

Run on a GPU: ``OMP_NUM_THREADS=1 python benchmarks/pathology_decode/overlap.py --out DIR``; writes
``overlap.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _bench_module():
    spec = importlib.util.spec_from_file_location("decode_run", HERE / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _median_time(fn, repeats: int, sync) -> float:
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def gil_probe(work_fn, sync, seconds: float = 0.4) -> float:
    """Counts per second of a pure-Python counting thread while this thread calls ``work_fn`` for ``seconds``
    (divide by the count while this thread sleeps: 1 = the work leaves the GIL free)."""
    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    th = threading.Thread(target=spin)
    th.start()
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        work_fn()
    sync()
    el = time.perf_counter() - t
    stop.set()
    th.join()
    return count[0] / el


def beside(thread_fn, main_fn, repeats: int, sync) -> float:
    """Median wall time of ``thread_fn`` in a thread and ``main_fn`` in this one, started together."""
    def both():
        th = threading.Thread(target=thread_fn)
        th.start()
        main_fn()
        th.join()
    return _median_time(both, repeats, sync)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=96)
    ap.add_argument("--passes", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--busy-ms", type=float, default=200.0)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()

    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.readers_gpu import encode_decoded, open_reader
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import TileReader, tile_slide

    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    run = _bench_module()
    work = Path(tempfile.mkdtemp(prefix="overlap_"))
    out = {"torch": torch.__version__, "cases": {}}
    res_file = Path(args.out) / "overlap.json"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        slides = {k: v for k, v in run._slides(work, args.grid).items() if k.startswith("synth")}
        enc = build_encoder("timm:resnet18", None, {}).to(dev).eval()
        for name, (path, mpp0, tmpp, size) in slides.items():
            row: dict = {}
            out["cases"][name] = row
            tiles = tile_slide(path, tmpp, size, min_tissue=0.5, mpp_overrides={path.name: mpp0}, thumb_size=512)
            g, coords = tiles["geometry"], tiles["coords"]
            s = open_slide(path)
            dims, vendor = s.level_dimensions, s.properties.get("openslide.vendor")
            s.close()
            reader, why = open_reader(path, g, dims, vendor, "cuda", torch_resize=True)
            assert reader is not None, why
            osr = TileReader(path, g)
            ref = np.stack([osr.read(int(x), int(y)) for x, y in coords])  # (N, T, T, 3)
            rep = np.tile(coords, (args.passes, 1))  # (passes * N, 2)
            n = len(rep)
            bs = args.batch_size
            pre = torch.from_numpy(ref).to(dev).repeat(args.passes, 1, 1, 1)  # (passes * N, T, T, 3)
            # the JPEG streams of each batch, as read_batch would decode them
            streams, sizes = [], []
            for i in range(0, n, bs):
                ks = [k for k in reader.plan(rep[i:i + bs])[3] if reader.counts[k] > 0]
                streams.append([torch.frombuffer(bytearray(reader._stream(k)), dtype=torch.uint8) for k in ks])
                sizes.append(len(ks))
            row["streams_per_batch"] = [min(sizes), max(sizes)]
            kmax = max(sizes)
            padded = [s_ + [s_[0]] * (kmax - len(s_)) for s_ in streams]

            with torch.no_grad():
                def forward(stream=None):
                    ctx = torch.cuda.stream(stream) if stream is not None else torch.cuda.stream(
                        torch.cuda.current_stream())
                    with ctx:
                        for i in range(0, n, bs):
                            enc(pre[i:i + bs])
                    if stream is not None:
                        stream.synchronize()

                def decode_loop(lists):
                    for lst in lists:
                        decode_jpeg(lst, mode=ImageReadMode.RGB, device=dev)

                def read_loop():
                    for i in range(0, n, bs):
                        reader.read_batch(rep[i:i + bs])

                forward()
                decode_loop(streams)
                decode_loop(padded)
                t_fwd = _median_time(forward, args.repeats, sync)
                t_dec = _median_time(lambda: decode_loop(streams), args.repeats, sync)
                t_pad = _median_time(lambda: decode_loop(padded), args.repeats, sync)
                t_read = _median_time(read_loop, args.repeats, sync)
                row["alone_s"] = {"forward": t_fwd, "decode_jpeg": t_dec, "decode_jpeg_padded": t_pad,
                                  "read_batch": t_read}

                # GIL: a counting thread's progress while the main thread decodes vs sleeps
                idle = gil_probe(lambda: time.sleep(0.01), sync)
                row["gil_progress"] = {
                    "decode_jpeg_cuda": gil_probe(lambda: decode_jpeg(streams[0], mode=ImageReadMode.RGB,
                                                                      device=dev), sync) / idle,
                    "decode_jpeg_cpu": gil_probe(lambda: decode_jpeg(streams[0][:16], mode=ImageReadMode.RGB),
                                                 sync) / idle,
                    "forward": gil_probe(lambda: (enc(pre[:bs]), sync()), sync) / idle}

                # device-wide waits: one decode call issued behind ~busy_ms of matrix products
                a = torch.randn(4096, 4096, device=dev)
                sync()
                t = time.perf_counter()
                for _ in range(10):
                    a @ a  # (4096, 4096) @ (4096, 4096)
                sync()
                per = (time.perf_counter() - t) / 10
                k_mm = max(1, int(args.busy_ms / 1000 / per))

                def behind(stream):
                    sync()
                    with torch.cuda.stream(stream):
                        for _ in range(k_mm):
                            a @ a  # (4096, 4096) @ (4096, 4096)
                    t = time.perf_counter()
                    decode_jpeg(streams[1], mode=ImageReadMode.RGB, device=dev)
                    el = time.perf_counter() - t
                    sync()
                    return el

                t0 = _median_time(lambda: decode_jpeg(streams[1], mode=ImageReadMode.RGB, device=dev), 5, sync)
                nb = torch.cuda.Stream(dev)
                row["device_sync"] = {"busy_s": k_mm * per, "decode_alone_s": t0,
                                      "decode_behind_nonblocking_stream_s": behind(nb),
                                      "decode_behind_default_stream_s": behind(torch.cuda.default_stream(dev)),
                                      "read_batch_behind_nonblocking_s": None}
                sync()
                with torch.cuda.stream(nb):
                    for _ in range(k_mm):
                        a @ a  # (4096, 4096) @ (4096, 4096)
                t = time.perf_counter()
                reader.read_batch(rep[:bs])
                row["device_sync"]["read_batch_behind_nonblocking_s"] = time.perf_counter() - t
                sync()

                # independent decode (thread) and forward (main), at the same time
                def concurrent(thread_fn, stream=None):
                    return beside(thread_fn, lambda: forward(stream), args.repeats, sync)

                row["concurrent_s"] = {
                    "read_batch+forward_default": concurrent(read_loop),
                    "read_batch+forward_nonblocking": concurrent(read_loop, torch.cuda.Stream(dev)),
                    "decode_jpeg+forward_default": concurrent(lambda: decode_loop(streams)),
                    "decode_jpeg_padded+forward_default": concurrent(lambda: decode_loop(padded)),
                    "decode_jpeg+forward_nonblocking": concurrent(lambda: decode_loop(streams), torch.cuda.Stream(dev))}

                # extraction as shipped, and with the encoder on a non-blocking stream
                def extract_on(stream):
                    with torch.cuda.stream(stream):
                        encode_decoded(enc, reader, rep, bs)

                row["extract_s"] = {
                    "shipped": _median_time(lambda: encode_decoded(enc, reader, rep, bs), args.repeats, sync),
                    "encoder_nonblocking_stream": _median_time(lambda: extract_on(torch.cuda.Stream(dev)),
                                                               args.repeats, sync)}
            row["tiles"] = n
            row["rates"] = {k: n / v for k, v in {**row["alone_s"], **row["concurrent_s"],
                                                   **{"extract_" + k: v for k, v in row["extract_s"].items()}}.items()}
            reader.close()
            print(json.dumps({name: row}, indent=1), flush=True)
            res_file.write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        res_file.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
