"""Pathology benchmark: tile decode rate per reader (OpenSlide vs raw JPEG tiles + torchvision decode_jpeg).

Question: how many tiles per second does one core decode with each reader, and (on a GPU) does
moving the decoding onto the device bring extraction close to the encoder's forward-only rate?
Readers: ``openslide`` (``tiling.TileReader.read``: OpenSlide ``read_region`` + Pillow box resize,
one tile at a time, what each reader worker process does) and ``tiff-jpeg``
(``readers_gpu.TiffJpegReader.read_batch``: the JPEG tiles a batch needs read with tifffile and
decoded by ``torchvision.io.decode_jpeg``, on the CPU with libjpeg-turbo or on the GPU with nvJPEG).
Both readers are checked to return the same tiles before they are timed. Slides:

- ``synth_40x_to_20x``: a SYNTHETIC 0.25 um/px JPEG pyramid (256 px TIFF tiles), 20x tiles of 256 px
  read from level 1 (aligned with the TIFF tiles, no resize);
- ``synth_20x_224``: a SYNTHETIC 0.5 um/px JPEG pyramid, 224 px tiles at 20x from level 0 (each
  tile spans up to 4 TIFF tiles, no resize; the setting of ``benchmarks/pathology``);
- ``svs_20x_256``: the shipped Aperio slide (0.499 um/px, 240 px JPEG tiles with JPEGTables), 256 px
  at 20x (257 px read, box-resized to 256).

Tissue tiles only (``tile_slide`` with ``min_tissue`` 0.5); each rate is the median of ``--repeats``
passes over the tiles, in one process with one torch thread (``OMP_NUM_THREADS=1``) = one core.
With ``--device cuda`` it also times tiff-jpeg decoding on the GPU and, for a timm ResNet-18
(random weights), extraction (read_batch + forward) against forward-only on preloaded tiles; those device
rates are over the tissue tiles repeated ``--passes`` times (the pipeline's steady state, as on a whole
slide), optionally also with CPU threads decoding a share (``--decode-threads``, ``--cpu-shares``) and with
other GIL switch intervals (``--switch-intervals``). Why extraction stays near half of the forward rate on
a GPU: the diagnostics ``overlap.py``, ``decoders_probe.py``, ``cpu_processes.py`` and their report
``gpu_overlap_report.py`` -> ``results_gpu_overlap.md``.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/pathology_decode/run.py`` (add
``--device cuda --tag h200`` on a GPU machine). Writes ``results.json`` and ``results.md`` here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _median_rate(n: int, fn, repeats: int, sync=lambda: None) -> float:
    return _median_rates(n, {"": fn}, repeats, sync)[""]


def _median_rates(n: int, fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Items/s of each function (n items per call), the median over ``repeats`` rounds; the functions
    take turns within a round, so that the load of a shared machine weighs on all of them alike."""
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: n / sorted(v)[len(v) // 2] for k, v in times.items()}


def _slides(work: Path, grid: int) -> dict:
    """The benchmark's slides: name -> (path, level-0 mpp, target mpp, tile size)."""
    import numpy as np

    from adaptome.domains.pathology.slide import SAMPLE_SLIDE
    from adaptome.domains.pathology.synth import render_slide, write_pyramid_tiff

    rgb, _ = render_slide(np.random.default_rng(0), grid=grid, cell_px=64)  # (H, W, 3) at 0.5 um/px
    write_pyramid_tiff(work / "synth_20x.tiff", rgb, mpp=0.5, levels=3, tile=256, compression="jpeg")
    rgb40 = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)  # (H, W, 3) -> (2H, 2W, 3) at 0.25 um/px
    write_pyramid_tiff(work / "synth_40x.tiff", rgb40, mpp=0.25, levels=3, tile=256, compression="jpeg")
    return {"synth_40x_to_20x": (work / "synth_40x.tiff", 0.25, 0.5, 256),
            "synth_20x_224": (work / "synth_20x.tiff", 0.5, 0.5, 224),
            "svs_20x_256": (SAMPLE_SLIDE, 0.499, 0.5, 256)}


def _versions() -> dict:
    import openslide
    import tifffile
    import torch
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    return {"git_commit": commit, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "tifffile": tifffile.__version__, "openslide_python": openslide.__version__,
            "openslide_library": openslide.__library_version__, "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=32, help="cells per side of the synthetic slides (64 px each)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="cpu", help="name of this run's section in results.json / results.md")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--device-checks", action="store_true",
                    help="also run the device part (decode on --device, ResNet-18 ratio) when --device is cpu "
                         "(a smoke check of that code; on by default for other devices)")
    ap.add_argument("--decode-threads", type=int, default=0,
                    help="device part: also extract with this many CPU threads decoding a share of each batch beside "
                         "the device's decoder (readers_gpu decode_threads), at each --cpu-shares")
    ap.add_argument("--cpu-shares", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--passes", type=int, default=1,
                    help="device part: time decoding, extraction and the forward pass over the slide's tissue tiles "
                         "repeated this many times (a stand-in for a slide with that many times the tiles: the "
                         "steady state of the pipeline, not its first and last batch)")
    ap.add_argument("--switch-intervals", type=float, nargs="+", default=[],
                    help="device part: also time extraction with each of these GIL switch intervals (seconds; "
                         "encode_decoded switch_interval)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from adaptome.domains.pathology.readers_gpu import open_reader
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import TileReader, tile_slide

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device_part = args.device != "cpu" or args.device_checks
    work = Path(tempfile.mkdtemp(prefix="decode_bench_"))
    res = {"device": args.device, "batch_size": args.batch_size, "repeats": args.repeats,
           "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
           "cpu_count": os.cpu_count(), "machine": platform.machine(), **_versions(), "cases": {}}
    try:
        for name, (path, mpp0, tmpp, size) in _slides(work, args.grid).items():
            tiles = tile_slide(path, tmpp, size, min_tissue=0.5, mpp_overrides={path.name: mpp0}, thumb_size=512)
            g, coords = tiles["geometry"], tiles["coords"]
            s = open_slide(path)
            dims, vendor = s.level_dimensions, s.properties.get("openslide.vendor")
            s.close()
            osr = TileReader(path, g)
            cpu_reader, why = open_reader(path, g, dims, vendor, "cpu")
            assert cpu_reader is not None, why
            ref = np.stack([osr.read(int(x), int(y)) for x, y in coords])
            same = np.array_equal(cpu_reader.read_batch(coords).numpy(), ref)

            def read_openslide():
                for x, y in coords:
                    osr.read(int(x), int(y))

            def batches(reader):
                def run():
                    for i in range(0, len(coords), args.batch_size):
                        reader.read_batch(coords[i:i + args.batch_size])
                return run

            rates = _median_rates(len(coords), {"openslide": read_openslide, "tiff_jpeg": batches(cpu_reader)},
                                  args.repeats)
            row = {"slide": path.name, "level": g.level, "tile_size": size, "read_size": g.read_size,
                   "n_tiles": len(coords), "tiff_jpeg_equals_openslide_cpu": bool(same),
                   "openslide_tiles_per_s": rates["openslide"], "tiff_jpeg_cpu_tiles_per_s": rates["tiff_jpeg"]}
            row["cpu_ratio_tiff_jpeg_vs_openslide"] = row["tiff_jpeg_cpu_tiles_per_s"] / row["openslide_tiles_per_s"]
            cpu_reader.close()
            if device_part:
                try:
                    _device_part(row, path, g, dims, vendor, coords, ref, args, sync)
                except Exception as e:  # noqa: BLE001 - keep the other cases' numbers; the failure is recorded
                    row["device_error"] = f"{type(e).__name__}: {e}"
            res["cases"][name] = row
            print(json.dumps(row), flush=True)
            if device_part:  # what is measured so far is kept if a later case fails or the run is stopped
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / f"partial_{args.tag}.json").write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["command"] = (f"OMP_NUM_THREADS={res['omp_num_threads']} nice -n 10 python benchmarks/pathology_decode/run.py "
                      f"--grid {args.grid} --batch-size {args.batch_size} --repeats {args.repeats} "
                      f"--device {args.device} --tag {args.tag}"
                      + (f" --passes {args.passes}" if args.passes != 1 else "")
                      + (f" --switch-intervals {' '.join(f'{s:g}' for s in args.switch_intervals)}"
                         if args.switch_intervals else "")
                      + (f" --decode-threads {args.decode_threads} --cpu-shares "
                         f"{' '.join(f'{s:g}' for s in args.cpu_shares)}" if args.decode_threads else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = json.loads((out / "results.json").read_text()).get("runs", {}) if (out / "results.json").is_file() else {}
    runs[args.tag] = res
    (out / "results.json").write_text(json.dumps({"runs": runs}, indent=2))
    (out / "results.md").write_text(render(runs))
    print((out / "results.md").read_text())


def _device_part(row: dict, path, g, dims, vendor, coords, ref, args, sync) -> None:
    """The device reader's agreement, decode rate, time breakdown, ResNet-18 ratio and CPU-share sweep, into
    ``row``. Rates are over the tissue tiles repeated ``--passes`` times."""
    import numpy as np

    from adaptome.domains.pathology.readers_gpu import open_reader

    dev_reader, why = open_reader(path, g, dims, vendor, args.device, torch_resize=True)
    if dev_reader is None:  # the device decoder failed its check against libjpeg: OpenSlide reads it
        row["device_reader_refused"] = why
        return
    rep = np.tile(coords, (args.passes, 1))  # (passes * N, 2)
    row["timed_tiles"] = len(rep)
    diff = np.abs(dev_reader.read_batch(coords).cpu().numpy().astype(int) - ref)
    row["device_max_abs_diff_vs_openslide"] = int(diff.max())
    row["device_mean_abs_diff_vs_openslide"] = float(diff.mean())
    row.update(_luma(dev_reader))

    def decode():
        for i in range(0, len(rep), args.batch_size):
            dev_reader.read_batch(rep[i:i + args.batch_size])

    row["tiff_jpeg_device_tiles_per_s"] = _median_rate(len(rep), decode, args.repeats, sync)
    row.update(_breakdown(dev_reader, rep, args.batch_size, sync))
    row.update(_resnet18(dev_reader, coords, ref, args, sync))
    dev_reader.close()
    if args.decode_threads:
        row["split"] = _split_rates(path, g, dims, vendor, coords, args, sync, row["resnet18_forward_tiles_per_s"])


def _luma(reader, n: int = 64) -> dict:
    """Largest / mean difference of the luma plane (``ImageReadMode.GRAY``: no chroma upsampling, no
    colour transform) of ``n`` TIFF tiles decoded on the device and by libjpeg-turbo; YCbCr JPEG only."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if reader.rgb:
        return {}
    ks = [k for k in range(len(reader.counts)) if reader.counts[k] > 0][:n]
    data = [torch.frombuffer(bytearray(reader._stream(k)), dtype=torch.uint8) for k in ks]
    dev = torch.stack([t.cpu() for t in decode_jpeg(data, mode=ImageReadMode.GRAY, device=reader.device)]).int()
    cpu = torch.stack(decode_jpeg(data, mode=ImageReadMode.GRAY)).int()  # K x (1, h, w) -> (K, 1, h, w), as dev
    d = (dev - cpu).abs()
    return {"device_luma_max_abs_diff": int(d.max()), "device_luma_mean_abs_diff": float(d.float().mean())}


def _breakdown(reader, coords, bs: int, sync) -> dict:
    """Where one pass of ``read_batch`` spends its time: reading the JPEG streams (Python + pread),
    ``decode_jpeg`` (torchvision's per-image preparation + the decoder), and the rest (cutting and
    resizing the tiles), in seconds."""
    spent = {"streams_s": 0.0, "decode_s": 0.0}
    stream, decode = reader._stream, reader._decode

    def timed_stream(k):
        t = time.perf_counter()
        out = stream(k)
        spent["streams_s"] += time.perf_counter() - t
        return out

    def timed_decode(ks, device=None):
        sync()
        t = time.perf_counter()
        out = decode(ks, device)
        sync()
        spent["decode_s"] += time.perf_counter() - t
        return out

    reader._stream, reader._decode = timed_stream, timed_decode
    try:
        sync()
        t = time.perf_counter()
        for i in range(0, len(coords), bs):
            reader.read_batch(coords[i:i + bs])
        sync()
        total = time.perf_counter() - t
    finally:
        del reader._stream, reader._decode
    spent["decode_s"] -= spent["streams_s"]  # the streams are read inside the decode call
    return {"breakdown_total_s": total, "breakdown_streams_s": spent["streams_s"],
            "breakdown_decode_jpeg_s": spent["decode_s"],
            "breakdown_cut_resize_s": total - spent["decode_s"] - spent["streams_s"]}


def _resnet18(reader, coords, ref, args, sync) -> dict:
    """Forward-only rate of a random-init timm ResNet-18 on preloaded tiles vs decoding + forward."""
    import numpy as np
    import torch

    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.readers_gpu import encode_decoded

    enc = build_encoder("timm:resnet18", None, {}).to(args.device).eval()
    pre = torch.from_numpy(ref).to(args.device).repeat(args.passes, 1, 1, 1)  # (passes * N, T, T, 3) uint8
    rep = np.tile(coords, (args.passes, 1))  # (passes * N, 2)
    bs = args.batch_size
    with torch.no_grad():
        enc(pre[:bs])
        sync()

        def forward():
            for i in range(0, len(pre), bs):
                enc(pre[i:i + bs])

        def extract(interval=None):  # what `extract --set reader=tiff-jpeg` runs: decoding one batch ahead in a thread
            return lambda: encode_decoded(enc, reader, rep, bs, switch_interval=interval)

        runs = {"forward": forward, "extract": extract()}
        runs.update({f"extract_si_{si:g}": extract(si) for si in args.switch_intervals})
        rates = _median_rates(len(pre), runs, args.repeats, sync)
        fwd, ext = rates["forward"], rates["extract"]
        # the pipelined extraction gives the features of the tiles read in one call
        one = torch.cat([enc(t[None]).float() for t in reader.read_batch(coords)])  # (N, D), one tile at a time
        got = torch.from_numpy(encode_decoded(enc, reader, coords, bs)).to(one.device)
        err = float((got - one).abs().max() / one.abs().max().clamp_min(1e-12))
    return {"resnet18_forward_tiles_per_s": fwd, "resnet18_extract_tiles_per_s": ext, "resnet18_ratio": ext / fwd,
            "resnet18_extract_rel_err_vs_sequential": err,
            "resnet18_by_switch_interval": {k[len("extract_si_"):]: {"extract_tiles_per_s": v, "ratio": v / fwd}
                                            for k, v in rates.items() if k.startswith("extract_si_")}}


def _split_rates(path, g, dims, vendor, coords, args, sync, forward_rate: float) -> dict:
    """Per CPU share: the decode rate and the ResNet-18 extraction rate (and its ratio to the forward-only rate)
    with ``--decode-threads`` CPU threads decoding that share of each batch beside the device's decoder."""
    import numpy as np
    import torch

    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.readers_gpu import encode_decoded, open_reader

    enc = build_encoder("timm:resnet18", None, {}).to(args.device).eval()
    rep = np.tile(coords, (args.passes, 1))  # (passes * N, 2)
    out = {}
    for share in args.cpu_shares:
        reader, why = open_reader(path, g, dims, vendor, args.device, torch_resize=True,
                                  decode_threads=args.decode_threads, cpu_share=share)
        if reader is None:
            return {"refused": why}
        bs = args.batch_size

        def decode():
            for i in range(0, len(rep), bs):
                reader.read_batch(rep[i:i + bs])

        def extract(interval=None):
            return lambda: encode_decoded(enc, reader, rep, bs, switch_interval=interval)

        runs = {"decode": decode, "extract": extract()}
        runs.update({f"extract_si_{si:g}": extract(si) for si in args.switch_intervals})
        with torch.no_grad():
            rates = _median_rates(len(rep), runs, args.repeats, sync)
        reader.close()
        out[f"{share:g}"] = {"threads": args.decode_threads, "decode_tiles_per_s": rates["decode"],
                             "extract_tiles_per_s": rates["extract"], "ratio": rates["extract"] / forward_rate,
                             "by_switch_interval": {k[len("extract_si_"):]: {"extract_tiles_per_s": v,
                                                                             "ratio": v / forward_rate}
                                                    for k, v in rates.items() if k.startswith("extract_si_")}}
    return out


def render(runs: dict) -> str:
    """The markdown section of every recorded run (every sentence computed from the numbers)."""
    md = ["## Pathology: tile decode rate per reader (OpenSlide vs tifffile + torchvision decode_jpeg)", "",
          "OpenSlide = `read_region` + Pillow box resize one tile at a time (what each reader worker does); "
          "tiff-jpeg = the JPEG tiles a batch needs read with tifffile and decoded by `torchvision.io.decode_jpeg` "
          "(`extract --set reader=tiff-jpeg`). Rates are tiles/s on one core (one process, one torch thread), "
          "the median of repeated rounds in which the readers take turns (so that the load of a shared machine "
          "weighs on both alike); both readers were checked to return the same tiles first.", ""]
    return "\n".join(md + [_markdown(tag, r) for tag, r in runs.items()])


def _markdown(tag: str, r: dict) -> str:
    lines = [f"### run `{tag}`", "",
             f"Device `{r['device']}`, batch {r['batch_size']}, {r['torch_threads']} torch thread(s), "
             f"{r['cpu_count']} CPU cores visible, git {r['git_commit'][:10]}, torch {r['torch']}, torchvision "
             f"{r['torchvision']}, tifffile {r['tifffile']}, OpenSlide {r['openslide_library']}.", "",
             "| case | slide | level | read px -> tile px | tiles | same tiles (CPU) | OpenSlide tiles/s/core "
             "| tiff-jpeg CPU tiles/s/core | tiff-jpeg / OpenSlide |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in r["cases"].items():
        lines.append(f"| {name} | {c['slide']} | {c['level']} | {c['read_size']} -> {c['tile_size']} | {c['n_tiles']} "
                     f"| {'yes' if c['tiff_jpeg_equals_openslide_cpu'] else 'NO'} | {c['openslide_tiles_per_s']:.0f} "
                     f"| {c['tiff_jpeg_cpu_tiles_per_s']:.0f} | {c['cpu_ratio_tiff_jpeg_vs_openslide']:.2f} |")
    ratios = [c["cpu_ratio_tiff_jpeg_vs_openslide"] for c in r["cases"].values()]
    lines += ["", f"On the CPU, tiff-jpeg decodes {min(ratios):.2f}x to {max(ratios):.2f}x as many tiles per core as "
              "OpenSlide across these cases."]
    if any(k in c for c in r["cases"].values()
           for k in ("tiff_jpeg_device_tiles_per_s", "device_reader_refused", "device_error")):
        lines += ["", f"On `{r['device']}` (torch box resize; before use, the reader checks the device decoder "
                  "against libjpeg on 4 tiles of the slide and leaves the slide to OpenSlide when they differ "
                  "by more than a few grey levels on average):", "",
                  "| case | tiff-jpeg on the device, tiles/s | abs diff vs OpenSlide, max / mean | luma abs diff vs "
                  "libjpeg, max / mean | read_batch time: streams / decode_jpeg / cut + resize "
                  "| ResNet-18 forward only tiles/s | ResNet-18 extract (device decode) tiles/s | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in r["cases"].items():
            if "device_reader_refused" in c:
                lines.append(f"| {name} | refused: {c['device_reader_refused']} | | | | | | |")
                continue
            if "resnet18_ratio" not in c:  # the device part stopped (recorded by _device_part's caller)
                lines.append(f"| {name} | failed: {c.get('device_error', 'not measured')} | | | | | | |")
                continue
            luma = (f"{c['device_luma_max_abs_diff']} / {c['device_luma_mean_abs_diff']:.2f}"
                    if "device_luma_max_abs_diff" in c else "n/a (RGB JPEG)")
            parts = (f"{100 * c['breakdown_streams_s'] / c['breakdown_total_s']:.0f} % / "
                     f"{100 * c['breakdown_decode_jpeg_s'] / c['breakdown_total_s']:.0f} % / "
                     f"{100 * c['breakdown_cut_resize_s'] / c['breakdown_total_s']:.0f} %")
            lines.append(f"| {name} | {c['tiff_jpeg_device_tiles_per_s']:.0f} "
                         f"| {c['device_max_abs_diff_vs_openslide']} / {c['device_mean_abs_diff_vs_openslide']:.2f} "
                         f"| {luma} | {parts} | {c['resnet18_forward_tiles_per_s']:.0f} "
                         f"| {c['resnet18_extract_tiles_per_s']:.0f} | {c['resnet18_ratio']:.2f} |")
        if any("timed_tiles" in c for c in r["cases"].values()):
            lines += ["", "Device rates are over each slide's tissue tiles repeated ("
                      + ", ".join(f"{n}: {c['timed_tiles']} tiles" for n, c in r["cases"].items() if "timed_tiles" in c)
                      + "): the pipeline's steady state, as on a whole slide, rather than its first and last batch."]
        timed = {n: c for n, c in r["cases"].items() if "resnet18_ratio" in c}
        split = {n: c["split"] for n, c in timed.items() if c.get("split") and "refused" not in c["split"]}
        if split:
            lines += ["", "With CPU threads (libjpeg-turbo) decoding a fixed share of each batch beside the device's "
                      "decoder (`--set decode_threads=N --set decode_cpu_share=S`):", "",
                      "| case | CPU threads | CPU share | decode tiles/s | ResNet-18 extract tiles/s | ratio |",
                      "|---|---|---|---|---|---|"]
            for n, sp in split.items():
                for share, v in sp.items():
                    lines.append(f"| {n} | {v['threads']} | {share} | {v['decode_tiles_per_s']:.0f} "
                                 f"| {v['extract_tiles_per_s']:.0f} | {v['ratio']:.2f} |")
        si = {n: c["resnet18_by_switch_interval"] for n, c in timed.items() if c.get("resnet18_by_switch_interval")}
        if si:
            lines += ["", "Extraction with a shorter GIL switch interval (`encode_decoded(switch_interval=...)`; "
                      "Python's default is 0.005 s), ratio to the forward-only rate, device decoder alone and with "
                      "each CPU share:", "",
                      "| case | CPU share | " + " | ".join(f"{k} s" for k in next(iter(si.values()))) + " |",
                      "|---|---|" + "---|" * len(next(iter(si.values())))]
            for n, by in si.items():
                lines.append(f"| {n} | none | " + " | ".join(f"{v['ratio']:.2f}" for v in by.values()) + " |")
                for share, v in split.get(n, {}).items():
                    if v.get("by_switch_interval"):
                        lines.append(f"| {n} | {share} | "
                                     + " | ".join(f"{w['ratio']:.2f}" for w in v["by_switch_interval"].values()) + " |")

        def every_ratio(n, c):
            rs = [c["resnet18_ratio"]] + [v["ratio"] for v in c.get("resnet18_by_switch_interval", {}).values()]
            for v in split.get(n, {}).values():
                rs += [v["ratio"]] + [w["ratio"] for w in v.get("by_switch_interval", {}).values()]
            return rs

        best = {n: max(every_ratio(n, c)) for n, c in timed.items()}
        ok = [n for n, v in best.items() if v >= 0.8]
        lines += ["", f"Extraction / forward-only >= 0.8 (the issue's target) in {len(ok)} of {len(r['cases'])} cases"
                  + (f" ({', '.join(ok)})" if ok else "")
                  + (", the best of the device alone and every CPU share" + (" and switch interval" if si else "")
                     + " per case" + ": " + ", ".join(f"{v:.2f} ({n})" for n, v in best.items()) + "."
                     if split or si else ".")]
        if timed:
            dec = {n: c["tiff_jpeg_device_tiles_per_s"] / c["resnet18_forward_tiles_per_s"] for n, c in timed.items()}
            errs = [c["resnet18_extract_rel_err_vs_sequential"] for c in timed.values()
                    if "resnet18_extract_rel_err_vs_sequential" in c]
            if errs:
                verdict = "match" if max(errs) < 1e-3 else "DO NOT match"
                lines += ["", f"The pipelined extraction's features {verdict} those of the tiles read in one call and "
                          f"encoded one at a time (largest relative difference over the cases {max(errs):.1e})."]
            lines += ["", f"Decoding {'on the device ' if split else ''}alone runs at "
                      + ", ".join(f"{v:.2f}x ({n})" for n, v in dec.items())
                      + " of the forward-only rate: extraction cannot exceed that, whatever the overlap"
                      + (", unless CPU threads decode a share (above)." if split else ".")]
            if any("timed_tiles" in c for c in timed.values()):
                lines += ["", "Why decoding and the encoder do not overlap better on this GPU, with other decoders "
                          "and CPU processes measured too: `results_gpu_overlap.md`."]
    else:
        lines += ["", "GPU decode rate and the ResNet-18 extraction / forward-only ratio were not measured in this run "
                  "(no GPU); rerun with `--device cuda` on a GPU machine."]
    lines += ["", "Reproduce:", "", f"    {r['command']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
