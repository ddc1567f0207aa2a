"""Shared parts of the adapter-quality diagnostics (``quality_dylora_trace``, ``quality_clip_trace``,
``quality_oracle``): the frozen encoder and task of a stored run, set up as ``quality.py``'s workers expect, and
the command line that runs a diagnostic or rewrites its report.

Not covered: the benchmark itself (``quality.py``), which sets itself up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch

from benchmarks.adapters import quality as q


def frozen_setup(rank: int, expect_key: str | None = None) -> tuple[object, dict, torch.nn.Module, str]:
    """(accelerator, task data, frozen encoder, its cache key) for a diagnostic at ``rank``: one torch thread, the CPU
    accelerator, ``quality.RANK`` set, the cached encoder loaded (refused when its cache key is not
    ``expect_key``, the key of the stored run the diagnostic compares with) and shared with the workers."""
    acc = q._worker_setup()  # one torch thread, FutureWarnings off, the CPU accelerator
    q.RANK = rank
    d = q.data()
    enc, info = q.cached_encoder(q.pretrain_corpus(d), acc)
    if expect_key is not None and info["key"] != expect_key:
        raise SystemExit("error: the cached encoder differs from the stored run's")
    for p in enc.parameters():
        p.requires_grad_(False)
    q._SHARED.update(encoder=enc, data=d)
    return acc, d, enc, info["key"]


def main(description: str, path: Path, run: Callable[[], dict], markdown: Callable[[dict], str],
         parts: dict[str, tuple[dict, Callable[[dict, object], dict]]] | None = None) -> None:
    """The command line of a diagnostic writing ``path`` (.json) and its .md: run it, or ``--report-only``
    rewrite the .md from the .json. ``parts``: further options (name -> (argparse keywords, function of the
    stored results and the option's value returning the extended results))."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    for name, (kw, _) in (parts or {}).items():
        ap.add_argument(name, **kw)
    args = ap.parse_args()
    chosen = [(fn, getattr(args, name.lstrip("-").replace("-", "_"))) for name, (_, fn) in (parts or {}).items()]
    chosen = [(fn, v) for fn, v in chosen if v]
    if args.report_only:
        res = json.loads(path.read_text(encoding="utf-8"))
    else:
        res = chosen[0][0](json.loads(path.read_text(encoding="utf-8")), chosen[0][1]) if chosen else run()
        path.write_text(json.dumps(res, indent=2), encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))


def kept(seeds: list[dict]) -> list[float]:
    """Share of SoRA's gates non-zero in the fold models of each seed (``quality._eval_job`` outputs)."""
    return [sum(f["kept_gates"] for f in s["facts"]) / sum(f["total_gates"] for f in s["facts"]) for s in seeds]


def test_points(pool, units: list[tuple[str, dict, float, float]], seeds: tuple[int, ...], ranks: list[int],
                tmp: str) -> list[dict]:
    """Every (method, options, adapter rate, head rate) of ``units`` trained on the test folds at each seed
    (``quality._eval_job`` on ``pool``): one dict per unit with its per-seed scores, DyLoRA's per-seed scores
    at every rank of ``ranks``, and SoRA's share of non-zero gates per seed."""
    jobs = [(m, o, lr, h, s, ranks if m == "dylora" else None, tmp) for m, o, lr, h in units for s in seeds]
    flat = iter(pool.starmap(q._eval_job, jobs, chunksize=1))
    out = []
    for m, o, lr, h in units:
        got = [next(flat) for _ in seeds]
        p = {"method": m, "options": o, "lr": lr, "head_lr": h, "score": [g["score"] for g in got]}
        if m == "dylora":
            p["by_rank"] = {str(k): [g["by_rank"][k] for g in got] for k in ranks}
        if m == "sora":
            p["kept_fraction"] = kept(got)
        out.append(p)
    return out
