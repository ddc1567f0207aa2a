"""Why DyLoRA collapses at a high adapter rate in the adapter-quality benchmark: a per-step loss trace.

On the first rate-selection fold of ``quality`` (inside fold 0's training part, never a test window), one
training per setting of ``SETTINGS`` (seed 0, the benchmark's steps, schedule and rank, the head rate of
results_quality_r8.json unless a setting divides it) logs the training loss of every step and, for DyLoRA, the
rank drawn at that step (read from the layers by a step hook that runs after DyLoRA's sampler). At the end: the
validation macro-F1 (DyLoRA at every rank) and, for DyLoRA, the Frobenius norm of each layer's update
(alpha / k) B[:, :k] A[:k] at every rank k (mean over layers): how different the encoder is from one drawn rank
to the next. Writes results_quality_dylora_trace.json / .md; every sentence of the .md is computed.

Run from the repository root (after results_quality_r8.json exists):
``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_dylora_trace``
Not covered: more than one seed per setting (a trace, not a score), ranks other than the benchmark's r = 8.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.adapters import quality as q
from benchmarks.adapters import quality_diag as diag

HERE = Path(__file__).resolve().parent
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_dylora_trace"
RANK = 8
MID = (31, 90)  # the steps (1-based, inclusive) whose losses are averaged as "mid-run"
#: (label, method, options, adapter rate, head-rate divisor)
SETTINGS = [
    ("head only", "head", {}, None, 1),
    ("lora r=1, rate 0.01", "lora", {"r": 1, "lora_alpha": q.ALPHA}, 1e-2, 1),
    ("lora r=8, rate 0.01", "lora", {"r": RANK, "lora_alpha": q.ALPHA}, 1e-2, 1),
    ("dylora frozen, rate 0.001", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "frozen"}, 1e-3, 1),
    ("dylora frozen, rate 0.01", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "frozen"}, 1e-2, 1),
    ("dylora frozen, rate 0.01, head rate / 10", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "frozen"},
     1e-2, 10),
    ("dylora nested, rate 0.01", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "nested"}, 1e-2, 1),
    ("dylora nested, rate 0.003", "dylora", {"r": RANK, "lora_alpha": q.ALPHA, "mode": "nested"}, 3e-3, 1),
]


class RankLog:
    """Step hook: the DyLoRA rank every layer runs at during each step (set by the sampler just before)."""

    def __init__(self):
        self.ranks: list[int] = []

    def on_step_start(self, state) -> None:
        from adaptome.core.adapters.dylora import dylora_layers

        layers = dylora_layers(state.model)
        if layers:
            self.ranks.append(layers[0].rank["default"])


def update_norms(enc) -> dict[str, float]:
    """Mean over DyLoRA layers of ||(alpha / k) B[:, :k] A[:k]||_F at every rank k."""
    from adaptome.core.adapters.dylora import dylora_layers, set_rank

    out = {}
    for k in range(1, RANK + 1):
        set_rank(enc, k)
        out[str(k)] = statistics.mean(float(layer.delta_weight("default").norm()) for layer in dylora_layers(enc))
    set_rank(enc, RANK)
    return out


def lora_update_norm(enc) -> float:
    """Mean over peft LoRA layers of ||(alpha / r) B A||_F."""
    from peft.tuners.lora import LoraLayer

    return statistics.mean(float(m.get_delta_weight("default").norm()) for m in enc.modules()
                           if isinstance(m, LoraLayer))


def trace(label, method, opts, lr, head_div, head_lr, enc0, d, acc) -> dict:
    from adaptome.core.adapters.dylora import set_rank

    labels = d["labels"]
    train, val = d["select"][0]
    gold = [labels.index(r.label) for r in val]
    log = RankLog()
    rate = head_lr if method == "head" else lr
    with tempfile.TemporaryDirectory() as tmp:
        model, enc, facts = q.train_one(enc0, method, opts, rate, head_lr / head_div, train, labels, 0, tmp, acc,
                                        hooks=[log], log_every=1)
    out = {"label": label, "method": method, "options": opts, "lr": rate, "head_lr": head_lr / head_div,
           "losses": facts["losses"], "val": q._score(gold, q._predict(model, val, labels))}
    if method == "lora":
        out["update_norm"] = lora_update_norm(enc)
    if method == "dylora":
        out["ranks"] = log.ranks
        out["val_by_rank"] = {}
        for k in range(1, RANK + 1):
            set_rank(enc, k)
            out["val_by_rank"][str(k)] = q._score(gold, q._predict(model, val, labels))
        set_rank(enc, RANK)
        out["update_norm_by_rank"] = update_norms(enc)
    return out


def run() -> dict:
    t0, env = time.time(), q.environment()
    res8 = json.loads((HERE / "results_quality_r8.json").read_text(encoding="utf-8"))
    acc, d, enc, _ = diag.frozen_setup(RANK, res8["encoder"]["key"])
    runs = [trace(*s, res8["head_lr"], enc, d, acc) for s in SETTINGS]
    return {"command": COMMAND, "env": env, "steps": q.STEPS, "rank": RANK, "mid": list(MID),
            "n_train": len(d["select"][0][0]), "n_val": len(d["select"][0][1]), "runs": runs,
            "seconds": time.time() - t0}


def _mid(xs: list[float]) -> float:
    return statistics.mean(xs[MID[0] - 1: MID[1]])


def markdown(res: dict) -> str:
    env, runs = res["env"], res["runs"]
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    by = {r["label"]: r for r in runs}
    lines = ["## Adapter quality: DyLoRA's loss per step at a high and a low rate (a trace, rank "
             f"{res['rank']})", "",
             f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min). Git commit `{env['git_commit'][:12]}`"
             f"{' with uncommitted changes' if env['git_dirty'] else ''}; {pk}. One training per setting (seed 0, "
             f"{res['steps']} steps) on the first rate-selection fold ({res['n_train']} training / {res['n_val']} "
             "validation windows, no test window).", "",
             f"| setting | adapter rate | head rate | mean loss, steps 1-30 | steps {MID[0]}-{MID[1]} | steps "
             f"{MID[1] + 1}-{res['steps']} | largest loss (step) | validation macro-F1 % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        ls = r["losses"]
        top = max(range(len(ls)), key=ls.__getitem__)
        val = (f"{100 * r['val']['macro_f1']:.1f}" if "val_by_rank" not in r else
               f"{100 * r['val']['macro_f1']:.1f} (mean over ranks "
               f"{100 * statistics.mean(v['macro_f1'] for v in r['val_by_rank'].values()):.1f})")
        lines.append(f"| {r['label']} | {r['lr']:g} | {r['head_lr']:g} | {statistics.mean(ls[:30]):.2f} | "
                     f"{_mid(ls):.2f} | {statistics.mean(ls[MID[1]:]):.2f} | {ls[top]:.2f} ({top + 1}) | {val} |")
    lines += ["", f"DyLoRA, mean training loss over steps {MID[0]}-{MID[1]} by the rank drawn at the step, and the "
              "norm of the update (alpha / k) B[:, :k] A[:k] at rank k after training (mean over layers):", "",
              "| setting | " + " | ".join(f"rank {k}" for k in range(1, res["rank"] + 1)) + " |",
              "|---|" + "---:|" * res["rank"]]
    for r in runs:
        if "ranks" not in r:
            continue
        mid = list(zip(r["ranks"], r["losses"]))[MID[0] - 1: MID[1]]
        cells = []
        for k in range(1, res["rank"] + 1):
            v = [loss for kk, loss in mid if kk == k]
            cells.append(f"{statistics.mean(v):.2f} / {r['update_norm_by_rank'][str(k)]:.3f}" if v else
                         f"- / {r['update_norm_by_rank'][str(k)]:.3f}")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    hi, lo = by["dylora frozen, rate 0.01"], by["dylora frozen, rate 0.001"]
    slow, head = by["dylora frozen, rate 0.01, head rate / 10"], by["head only"]
    norms = hi["update_norm_by_rank"]
    r = str(res["rank"])

    def mean_rank(x):
        return 100 * statistics.mean(v["macro_f1"] for v in x["val_by_rank"].values())

    l1, l8 = by["lora r=1, rate 0.01"], by["lora r=8, rate 0.01"]
    lines += ["", f"Frozen DyLoRA at rate 0.01 averages a loss of {_mid(hi['losses']):.2f} over steps "
              f"{MID[0]}-{MID[1]} against {_mid(lo['losses']):.2f} at rate 0.001 and {_mid(head['losses']):.2f} for "
              f"the head alone; its largest step loss is {max(hi['losses']):.2f}. With the head's rate divided by "
              f"10 the same adapter rate averages {_mid(slow['losses']):.2f} (largest {max(slow['losses']):.2f}), "
              f"and the validation macro-F1 averaged over ranks is {mean_rank(slow):.1f} against "
              f"{mean_rank(hi):.1f} with the full head rate and {mean_rank(lo):.1f} at adapter rate 0.001. At rate "
              f"0.01 the rank-1 update's norm is {norms['1']:.3f} and the rank-{r} update's {norms[r]:.3f} "
              f"({norms['1'] / norms[r]:.1f} x): the encoder the head reads changes with the rank drawn at each "
              f"step; at rate 0.001 the norms are {lo['update_norm_by_rank']['1']:.3f} and "
              f"{lo['update_norm_by_rank'][r]:.3f}. LoRA trained at rate 0.01 ends with an update norm of "
              f"{l1['update_norm']:.3f} at r=1 and {l8['update_norm']:.3f} at r={r} (same alpha, so the same scale "
              f"alpha / k), so frozen DyLoRA's rank-1 update is {norms['1'] / l1['update_norm']:.1f} x LoRA r=1's and "
              f"its rank-{r} update {norms[r] / l8['update_norm']:.1f} x LoRA r={r}'s; at rate 0.001 its rank-{r} "
              f"update is {lo['update_norm_by_rank'][r] / l8['update_norm']:.2f} x LoRA r={r}'s at 0.01.", ""]
    return "\n".join(lines)


def main() -> None:
    diag.main("DyLoRA loss trace of the adapter-quality benchmark", HERE / "results_quality_dylora_trace.json",
              run, markdown)


if __name__ == "__main__":
    main()
