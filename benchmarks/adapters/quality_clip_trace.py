"""Why DyLoRA scores below the head-only row at every rate of the rank-8 adapter-quality benchmark: how much of
the head's gradient the global gradient-norm clipping leaves, step by step (a trace, then a test-fold check).

``fit`` clips the gradient norm of all trainable parameters together (``quality.MAX_GRAD_NORM``, fit's and HF's
default 1.0). When an adapter's gradient is large, the head's gradient is scaled down with it: the head (rate
``head_lr``, chosen on the head-only row, whose head alone sets the norm) then learns from a smaller signal. DyLoRA
at a drawn rank k runs at scale alpha / k (16 at k = 1, with alpha 16), so its B gradient, and the clip factor,
change with the rank drawn at each step.

Part 1 (no test window): on the first rate-selection fold, seed 0, one training per setting of ``SETTINGS``; a
step hook records, before clipping, the norm of all trainable gradients, the head's and the rank DyLoRA drew. The
clip factor of a step is min(1, MAX_GRAD_NORM / total norm): the factor applied to the head's gradient.

Part 2 (a DIAGNOSTIC that reads test folds; it chooses nothing): the head-only row and DyLoRA at the points of
``TEST_POINTS`` trained on the 3 test folds at seeds ``SEEDS`` without clipping, beside the stored scores with
clipping (results_quality_oracle.json, same seeds and points).

Run from the repository root (after results_quality_oracle.json exists):
``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_clip_trace``
(``--report-only`` rewrites the .md). Not covered: other clipping thresholds, the other rows.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.adapters import quality as q
from benchmarks.adapters import quality_diag as diag

HERE = Path(__file__).resolve().parent
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_clip_trace"
RANK = 8
SEEDS = (0, 1, 2)
#: (label, method, options, adapter rate; None: the head's rate)
SETTINGS = [
    ("head only", "head", {}, None),
    ("lora r=8, rate 0.01", "lora", {"r": RANK, "lora_alpha": q.ALPHA}, 1e-2),
    ("dylora frozen, rate 0.0003", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "frozen"}, 3e-4),
    ("dylora nested, rate 0.0003", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "nested"}, 3e-4),
    ("dylora nested, rate 0.003", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "nested"}, 3e-3),
]
#: part 2's DyLoRA points (mode, rate), trained without clipping on the test folds
TEST_POINTS = (("frozen", 3e-4), ("nested", 3e-4))


class GradLog:
    """Step hook (before the optimizer step, so before clipping): gradient norms and DyLoRA's drawn rank."""

    def __init__(self):
        self.total: list[float] = []
        self.head: list[float] = []
        self.ranks: list[int] = []

    def before_optimizer_step(self, state) -> None:
        from adaptome.core.adapters.dylora import dylora_layers

        m = state.model
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        self.total.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        hg = [p.grad for p in m.head.parameters() if p.grad is not None]
        self.head.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in hg]))))
        layers = dylora_layers(m)
        self.ranks.append(layers[0].rank["default"] if layers else 0)


def _factor(total: float) -> float:
    return min(1.0, q.MAX_GRAD_NORM / total) if total > 0 else 1.0


def trace(label, method, opts, lr, head_lr, enc0, d, acc) -> dict:
    labels = d["labels"]
    train, val = d["select"][0]
    log = GradLog()
    rate = head_lr if lr is None else lr
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _ = q.train_one(enc0, method, opts, rate, head_lr, train, labels, 0, tmp, acc, hooks=[log])
    gold = [labels.index(r.label) for r in val]
    return {"label": label, "lr": rate, "total": log.total, "head": log.head, "ranks": log.ranks,
            "val": q._score(gold, q._predict(model, val, labels))}


def run() -> dict:
    t0, env = time.time(), q.environment()
    oracle = json.loads((HERE / "results_quality_oracle.json").read_text(encoding="utf-8"))
    acc, d, enc, key = diag.frozen_setup(RANK)
    head_lr = oracle["head_lr"]
    runs = [trace(*s, head_lr, enc, d, acc) for s in SETTINGS]
    q.MAX_GRAD_NORM = None  # part 2 only; the workers fork after this
    base = {"r": RANK, "lora_alpha": q.ALPHA}
    units = [("head", {}, head_lr)] + [("dylora", {**base, "mode": m}, lr) for m, lr in TEST_POINTS]
    ranks = list(range(1, RANK + 1))
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("fork").Pool(q.WORKERS) as pool:
        noclip = diag.test_points(pool, [(m, o, lr, head_lr) for m, o, lr in units], SEEDS, ranks, tmp)
    q.MAX_GRAD_NORM = 1.0
    return {"command": COMMAND, "env": env, "rank": RANK, "head_lr": head_lr, "max_grad_norm": 1.0,
            "n_train": len(d["select"][0][0]), "encoder_key": key, "runs": runs, "seeds": list(SEEDS),
            "noclip": noclip, "seconds": time.time() - t0}


def _acc(scores: list[dict]) -> float:
    return 100 * statistics.mean(s["accuracy"] for s in scores)


def markdown(res: dict) -> str:
    env = res["env"]
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    lines = ["## Adapter quality: the share of the head's gradient left by global clipping (rank "
             f"{res['rank']}; part 2 is a DIAGNOSTIC that reads test folds and chooses nothing)", "",
             f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min). Git commit `{env['git_commit'][:12]}`"
             f"{' with uncommitted changes' if env['git_dirty'] else ''}; {pk}. Part 1: one training per setting "
             f"(seed 0, head rate {res['head_lr']:g}) on the first rate-selection fold ({res['n_train']} training "
             f"windows, no test window); clipping of the global gradient norm at {res['max_grad_norm']:g} (fit's "
             "default). Clip factor of a step: min(1, threshold / norm of all trainable gradients), the factor "
             "applied to the head's gradient too.", "",
             "| setting | mean clip factor | steps clipped % | head gradient norm (mean) | all gradients norm "
             "(mean) |", "|---|---:|---:|---:|---:|"]
    for r in res["runs"]:
        f = [_factor(t) for t in r["total"]]
        lines.append(f"| {r['label']} | {statistics.mean(f):.3f} | {100 * sum(x < 1 for x in f) / len(f):.0f} | "
                     f"{statistics.mean(r['head']):.3f} | {statistics.mean(r['total']):.3f} |")
    lines += ["", "DyLoRA: mean clip factor by the rank drawn at the step:", "",
              "| setting | " + " | ".join(f"rank {k}" for k in range(1, res["rank"] + 1)) + " |",
              "|---|" + "---:|" * res["rank"]]
    for r in res["runs"]:
        if not any(r["ranks"]):
            continue
        cells = []
        for k in range(1, res["rank"] + 1):
            f = [_factor(t) for t, kk in zip(r["total"], r["ranks"]) if kk == k]
            cells.append(f"{statistics.mean(f):.3f}" if f else "-")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    by = {r["label"]: r for r in res["runs"]}
    hd = statistics.mean(_factor(t) for t in by["head only"]["total"])
    fr = statistics.mean(_factor(t) for t in by["dylora frozen, rate 0.0003"]["total"])
    lo = statistics.mean(_factor(t) for t in by["lora r=8, rate 0.01"]["total"])
    lines += ["", f"The head's gradient keeps on average {100 * hd:.0f} % of its size in the head-only training, "
              f"{100 * lo:.0f} % beside LoRA r={res['rank']} and {100 * fr:.0f} % beside frozen DyLoRA at rate 0.0003.",
              ""]
    oracle = json.loads((Path(__file__).resolve().parent / "results_quality_oracle.json").read_text(encoding="utf-8"))
    clip = {("head", None): oracle["head_only"]["accuracy"]}
    for p in oracle["points"]:
        if p["method"] == "dylora":
            clip[(p["options"]["mode"], p["lr"])] = p
    lines += [f"Part 2, test folds (seeds {', '.join(str(s) for s in res['seeds'])}), accuracy % without clipping "
              "against the same points with clipping (results_quality_oracle.json):", "",
              "| row | without clipping | with clipping (stored) | difference |", "|---|---:|---:|---:|"]
    gaps = {"without": [], "with": []}  # DyLoRA minus head-only, points, at every rank shown
    head = next(p for p in res["noclip"] if p["method"] == "head")
    h_no, h_cl = _acc(head["score"]), 100 * statistics.mean(clip[("head", None)])
    lines.append(f"| head only | {h_no:.1f} | {h_cl:.1f} | {h_no - h_cl:+.1f} |")
    for p in res["noclip"]:
        if p["method"] == "head":
            continue
        st = clip[(p["options"]["mode"], p["lr"])]
        for k in ("1", str(res["rank"])):
            a, b = _acc(p["by_rank"][k]), _acc(st["by_rank"][k])
            gaps["without"].append(a - h_no)
            gaps["with"].append(b - h_cl)
            lines.append(f"| dylora {p['options']['mode']} {p['lr']:g}, rank {k} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    sd = 100 * statistics.stdev(clip[("head", None)])
    shift = statistics.mean(gaps["without"]) - statistics.mean(gaps["with"])
    lines += ["", f"DyLoRA minus head-only at these points and ranks: {min(gaps['with']):+.1f} to "
              f"{max(gaps['with']):+.1f} points with clipping, {min(gaps['without']):+.1f} to "
              f"{max(gaps['without']):+.1f} without; turning clipping off moves that difference by {shift:+.1f} "
              f"points on average (the head-only row by {h_no - h_cl:+.1f}), against a seed sd of the head-only row "
              f"of {sd:.1f} points. "
              + ("Without clipping DyLoRA is no longer below head-only." if min(gaps["without"]) >= 0 else
                 "DyLoRA stays below head-only at some rank without clipping.")]
    return "\n".join(lines + [""])


def main() -> None:
    diag.main("Gradient clipping trace of the adapter-quality benchmark", HERE / "results_quality_clip_trace.json",
              run, markdown)


if __name__ == "__main__":
    main()
