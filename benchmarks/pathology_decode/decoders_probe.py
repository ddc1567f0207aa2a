"""Pathology decode diagnostic (GPU): other decoders and a graph-captured encoder beside ResNet-18.

Follows ``overlap.py``. On the benchmark's synthetic slides (the tissue tiles 12 times over), against
torchvision's ``decode_jpeg`` (nvJPEG):

- ``--nvimgcodec``: NVIDIA's nvImageCodec (``nvidia-nvimgcodec-cu13`` with ``nvidia-nvjpeg``, not a project
  dependency) decoding the same JPEG streams with its default, hardware-only and hybrid backends: agreement with
  libjpeg, decode rate alone, and beside ResNet-18 forward passes (a decode thread beside the main thread);
- ``--graph``: ResNet-18 captured in a CUDA graph (one replay per batch instead of its ~70 kernel launches),
  alone and beside decoding, and ``encode_decoded`` with it.

Run on a GPU: ``OMP_NUM_THREADS=1 python benchmarks/pathology_decode/decoders_probe.py OUT_DIR --nvimgcodec``
(run ``nvimgcodec`` of ``results_gpu_overlap.md``) or ``... --graph`` (run ``graph``); writes ``probe.json``.
"""
import argparse
import importlib.util
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    """A module of this folder by file name (benchmarks/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"decode_{name}", ROOT / "benchmarks/pathology_decode" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--nvimgcodec", action="store_true")
    ap.add_argument("--graph", action="store_true")
    args = ap.parse_args()
    out_dir = Path(args.out)
    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.readers_gpu import open_reader
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import tile_slide

    run, ov = _load("run"), _load("overlap")
    median_time, beside, gil_probe = ov._median_time, ov.beside, ov.gil_probe
    res = {}
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    decoders, params = {}, None
    if args.nvimgcodec:
        from nvidia import nvimgcodec

        res["nvimgcodec"] = getattr(nvimgcodec, "__version__", "?")
        kind = nvimgcodec.BackendKind
        for name, backend in {"default": None, "hw_only": kind.HW_GPU_ONLY, "hybrid": kind.HYBRID_CPU_GPU,
                              "gpu_only": kind.GPU_ONLY}.items():
            try:
                kw = {} if backend is None else {"backends": [nvimgcodec.Backend(backend)]}
                decoders[name] = nvimgcodec.Decoder(device_id=0, **kw)
            except Exception as e:  # noqa: BLE001 - a backend this machine lacks is recorded
                res[f"decoder_{name}_error"] = repr(e)
        params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.SRGB)
    side = torch.cuda.Stream(dev)

    def nv_decode(d, lst, stream=None):
        s = stream or torch.cuda.current_stream(dev)
        imgs = d.decode(lst, params=params, cuda_stream=s.cuda_stream)
        return imgs

    work = Path(tempfile.mkdtemp())
    enc = build_encoder("timm:resnet18", None, {}).to(dev).eval()
    try:
        slides = {k: v for k, v in run._slides(work, 96).items() if k.startswith("synth")}
        for case, (path, mpp0, tmpp, size) in slides.items():
            row = {}
            res[case] = row
            try:
                tiles = tile_slide(path, tmpp, size, min_tissue=0.5, mpp_overrides={path.name: mpp0}, thumb_size=512)
                g, coords = tiles["geometry"], tiles["coords"]
                s = open_slide(path)
                dims, vendor = s.level_dimensions, s.properties.get("openslide.vendor")
                s.close()
                reader, why = open_reader(path, g, dims, vendor, "cpu")
                rep = np.tile(coords, (12, 1))
                bs, n = 128, len(rep)
                lists_t, lists_np = [], []
                for i in range(0, n, bs):
                    ks = [k for k in reader.plan(rep[i:i + bs])[3] if reader.counts[k] > 0]
                    raw = [reader._stream(k) for k in ks]
                    lists_t.append([torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in raw])
                    lists_np.append([np.frombuffer(r, np.uint8) for r in raw])
                row["n_streams"] = sum(len(x) for x in lists_t)
                pre = torch.randint(0, 255, (bs * 4, size, size, 3), dtype=torch.uint8, device=dev)
                with torch.no_grad():
                    def forward():
                        for i in range(0, n, bs):
                            enc(pre[(i // bs % 4) * bs:(i // bs % 4 + 1) * bs])
                    forward()
                    t_fwd = median_time(forward, 5, sync)
                    row["forward_tiles_per_s"] = n / t_fwd
                    # agreement on the first list
                    # K x (3, h, w) -> (K, 3, h, w) -> (K, h, w, 3): libjpeg on the CPU, then nvJPEG
                    ref = torch.stack(decode_jpeg(lists_t[0], mode=ImageReadMode.RGB)).permute(0, 2, 3, 1).int()
                    tv = torch.stack(decode_jpeg(lists_t[0], mode=ImageReadMode.RGB, device=dev)).permute(0, 2, 3, 1)
                    row["tv_vs_libjpeg_mean_abs"] = float((tv.cpu().int() - ref).abs().float().mean())

                    def tv_loop():
                        for lst in lists_t:
                            decode_jpeg(lst, mode=ImageReadMode.RGB, device=dev)

                    tv_loop()
                    t_tv = median_time(tv_loop, 5, sync)
                    row["tv_decode_tiles_per_s"] = n / t_tv

                    def concurrent(fn):
                        return beside(fn, forward, 5, sync)

                    row["tv_concurrent_tiles_per_s"] = n / concurrent(tv_loop)
                    if args.graph:  # the encoder captured in a CUDA graph: one replay per batch instead of ~70 launches
                        static_in = pre[:bs].clone()
                        cap = torch.cuda.Stream(dev)
                        cap.wait_stream(torch.cuda.current_stream(dev))
                        with torch.cuda.stream(cap):
                            for _ in range(3):
                                enc(static_in)
                        torch.cuda.current_stream(dev).wait_stream(cap)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            static_out = enc(static_in)

                        def forward_graph():
                            for i in range(0, n, bs):
                                j = i // bs % 4
                                static_in.copy_(pre[j * bs:(j + 1) * bs])
                                graph.replay()
                                static_out.float()

                        forward_graph()
                        t_g = median_time(forward_graph, 5, sync)
                        row["graph_forward_tiles_per_s"] = n / t_g

                        def concurrent_g(fn):
                            return beside(fn, forward_graph, 5, sync)

                        row["graph_tv_concurrent_tiles_per_s"] = n / concurrent_g(tv_loop)
                        row["graph_serial"] = n / (t_g + t_tv)
                        creader, _ = open_reader(path, g, dims, vendor, "cuda", torch_resize=True)

                        def read_loop():
                            for i in range(0, n, bs):
                                creader.read_batch(rep[i:i + bs])

                        read_loop()
                        t_r = median_time(read_loop, 5, sync)
                        row["read_batch_tiles_per_s"] = n / t_r
                        row["read_concurrent_tiles_per_s"] = n / concurrent(read_loop)
                        row["graph_read_concurrent_tiles_per_s"] = n / concurrent_g(read_loop)
                        from adaptome.domains.pathology.readers_gpu import encode_decoded

                        class GraphEnc(torch.nn.Module):
                            def forward(self, x):
                                if x.shape[0] != bs:
                                    return enc(x)
                                static_in.copy_(x)
                                graph.replay()
                                return static_out.clone()

                        genc = GraphEnc()
                        encode_decoded(genc, creader, rep, bs)
                        row["extract_tiles_per_s"] = n / median_time(
                            lambda: encode_decoded(enc, creader, rep, bs), 5, sync)
                        row["graph_extract_tiles_per_s"] = n / median_time(
                            lambda: encode_decoded(genc, creader, rep, bs), 5, sync)
                        one = torch.from_numpy(encode_decoded(enc, creader, rep[:bs * 2], bs))
                        two = torch.from_numpy(encode_decoded(genc, creader, rep[:bs * 2], bs))
                        row["graph_vs_eager_max_rel"] = float((one - two).abs().max() / one.abs().max())
                    row["tv_ideal_overlap"] = n / max(t_tv, t_fwd)
                    row["serial"] = {"tv": n / (t_tv + t_fwd)}
                    for name, d in decoders.items():
                        r = {}
                        row[name] = r
                        try:
                            imgs = nv_decode(d, lists_np[0])
                            sync()
                            r["n_none"] = sum(im is None for im in imgs)
                            x = torch.stack([torch.as_tensor(im, device=dev) for im in imgs])  # (K, h, w, 3)
                            r["shape"] = list(x.shape)
                            r["vs_libjpeg_mean_abs"] = float((x.cpu().int() - ref).abs().float().mean())
                            r["vs_libjpeg_max_abs"] = int((x.cpu().int() - ref).abs().max())

                            def nv_loop(stream=None, d=d):
                                with torch.cuda.stream(stream or torch.cuda.current_stream(dev)):
                                    for lst in lists_np:
                                        imgs = nv_decode(d, lst, stream)
                                        torch.stack([torch.as_tensor(im, device=dev) for im in imgs])  # (K, h, w, 3)

                            nv_loop()
                            t_nv = median_time(nv_loop, 5, sync)
                            r["decode_tiles_per_s"] = n / t_nv
                            r["concurrent_tiles_per_s"] = n / concurrent(nv_loop)
                            r["concurrent_side_stream_tiles_per_s"] = n / concurrent(lambda: nv_loop(side))
                            r["ideal_overlap"] = n / max(t_nv, t_fwd)
                            r["serial"] = n / (t_nv + t_fwd)
                            # GIL: counting thread progress during decode vs sleep
                            idle = gil_probe(lambda: time.sleep(0.01), sync, 0.3)
                            r["gil_progress"] = gil_probe(lambda: nv_decode(d, lists_np[0]) and sync(), sync,
                                                          0.3) / idle
                        except Exception as e:  # noqa: BLE001 - recorded; the other backends go on
                            r["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
            except Exception:  # noqa: BLE001 - recorded; the other case goes on
                row["error"] = traceback.format_exc()[-2000:]
            print(json.dumps({case: row}, indent=1), flush=True)
            (out_dir / "probe.json").write_text(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        (out_dir / "probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
