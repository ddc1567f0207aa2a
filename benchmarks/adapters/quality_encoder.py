"""A DIAGNOSTIC, not a selection: is the weak encoder what keeps the adapter-quality benchmark from telling the
methods apart? The encoder is pretrained as well as the shipped data allow, and the methods are compared on it.

The benchmark's encoder (``quality_task``) is a 64-wide, 2-layer BERT pretrained for 1500 steps on shipped
sequences that are never task sequences; it predicts masked residues only 0.014 nats better than their
frequencies on held-out sequences (results_quality_probes.md), and on it only LoRA at a high rate adds clearly to
the frozen encoder with its head. Here the same BERT is pretrained for ``quality_task.TRANSDUCTIVE_STEPS`` steps
(4x) on that corpus PLUS every sequence of the task's families, without labels: transductive, as a protein LM
pretrained on UniRef has seen the Pfam seeds it is later tuned on. No label is seen in pretraining; the test
windows' sequences are.

On that encoder, every point below is trained as a row of ``quality.py`` at rank 8 (same folds, steps, schedule,
head rate 0.3) on the 3 test folds at seeds ``SEEDS``: head only; LoRA at every rank 1..8 at the rates of
``RATES``; DyLoRA in both modes at ``RATES`` (scored at every rank); SoRA (shrink 0.8) at ``RATES``. This reads
test scores to ask whether the targets are reachable and whether they would mean anything there (adapters
clearly above head-only); it chooses nothing and none of its numbers may pick a rate.

Run from the repository root: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_encoder``
(``--report-only`` rewrites the .md). Not covered: larger encoders, other corpora, the benchmark's selection.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.adapters import quality as q
from benchmarks.adapters import quality_diag as diag
from benchmarks.adapters import quality_task as qt

HERE = Path(__file__).resolve().parent
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_encoder"
SEEDS = (0, 1, 2)
RANK, ALPHA, HEAD_LR, SHRINK = 8, 16.0, 0.3, 0.8
RATES = (3e-3, 1e-2)
DY_MARGIN, SORA_MARGIN = 5.0, 2.0  # the targets' margins, points of accuracy


def _units() -> list[tuple[str, dict, float, float]]:
    base = {"r": RANK, "lora_alpha": ALPHA}
    units = [("head", {}, HEAD_LR, HEAD_LR)]
    units += [("lora", {"r": k, "lora_alpha": ALPHA}, lr, HEAD_LR) for lr in RATES for k in range(1, RANK + 1)]
    units += [("dylora", {**base, "mode": m}, lr, HEAD_LR) for m in ("frozen", "nested") for lr in RATES]
    units += [("sora", {**base, "sora_shrink": SHRINK}, lr, HEAD_LR) for lr in RATES]
    return units


def run() -> dict:
    """Pretrain (or read from the cache) the transductive encoder, then train every unit on the test folds."""
    t0, env = time.time(), q.environment()
    acc = q._worker_setup()
    q.RANK = RANK
    d = q.data()
    qt.use_corpus("transductive")
    corpus = qt.pretrain_corpus(d)
    enc, info = qt.cached_encoder(corpus, acc)
    for p in enc.parameters():
        p.requires_grad_(False)
    q._SHARED.update(encoder=enc, data=d)
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("fork").Pool(q.WORKERS) as pool:
        out = diag.test_points(pool, _units(), SEEDS, list(range(1, RANK + 1)), tmp)
    losses = info["mlm_losses"]
    return {"command": COMMAND, "env": env, "seeds": list(SEEDS), "rank": RANK, "head_lr": HEAD_LR,
            "rates": list(RATES), "shrink": SHRINK,
            "encoder": {"key": info["key"], "steps": qt.PRETRAIN_STEPS, "corpus_sequences": len(corpus),
                        "task_sequences": len(d["task_sequences"]), "corpus_residues": sum(len(s) for s in corpus),
                        "first_loss": losses[0], "last_loss": losses[-1],
                        "context_free": qt.unigram_entropy(corpus)},
            "baselines": q.baselines(d), "points": out, "seconds": time.time() - t0}


def _baselines_text(res: dict) -> str:
    """The majority class and the amino-acid-composition regression on the same folds (``quality.baselines``)."""
    b = res.get("baselines")
    if b is None:
        return ""
    return (f" On the same folds: majority class {100 * b['majority']['accuracy']:.1f} %, logistic regression on "
            f"amino-acid composition {100 * b['composition_logreg']['accuracy']:.1f} %.")


def _acc(scores: list[dict]) -> float:
    return 100 * statistics.mean(s["accuracy"] for s in scores)


def markdown(res: dict) -> str:
    env, e = res["env"], res["encoder"]
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    ranks = [str(k) for k in range(1, res["rank"] + 1)]
    pts = res["points"]
    head = _acc(next(p for p in pts if p["method"] == "head")["score"])
    lora = {lr: {str(p["options"]["r"]): p["score"] for p in pts if p["method"] == "lora" and p["lr"] == lr}
            for lr in res["rates"]}
    lines = ["## DIAGNOSTIC (test folds; chooses nothing): the adapter-quality benchmark on the best encoder the "
             "shipped data allow", "",
             f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min). Git commit `{env['git_commit'][:12]}`"
             f"{' with uncommitted changes' if env['git_dirty'] else ''}; {pk}.", "",
             f"Encoder: the benchmark's BERT pretrained by masked-LM for {e['steps']} steps (the benchmark's 1500) on "
             f"{e['corpus_sequences']} sequences ({e['corpus_residues']:,} residues): the benchmark's corpus plus all "
             f"{e['task_sequences']} sequences of the task's families, without labels (transductive: the test "
             f"windows' sequences are in it). MLM loss {e['first_loss']:.3f} -> {e['last_loss']:.3f} nats against "
             f"{e['context_free']:.3f} for the corpus' residue frequencies: {e['context_free'] - e['last_loss']:+.3f} "
             "nats on its own training corpus.", "",
             f"Every point trained as a row of quality.py at rank {res['rank']} (3 test folds, 268 windows, head rate "
             f"{res['head_lr']:g}) at seeds {', '.join(str(s) for s in res['seeds'])}; accuracy %, mean over seeds. "
             f"Head only (frozen encoder): {head:.1f} %.{_baselines_text(res)}", "",
             "| row | rate | " + " | ".join(f"rank {k}" for k in ranks) + " |", "|---|---:|" + "---:|" * len(ranks)]
    for lr in res["rates"]:
        lines.append(f"| lora (trained at each rank) | {lr:g} | "
                     + " | ".join(f"{_acc(lora[lr][k]):.1f}" for k in ranks) + " |")
    dys = [p for p in pts if p["method"] == "dylora"]
    for p in dys:
        lines.append(f"| dylora {p['options']['mode']} (one training) | {p['lr']:g} | "
                     + " | ".join(f"{_acc(p['by_rank'][k]):.1f}" for k in ranks) + " |")
    best_lora = {k: max(_acc(lora[lr][k]) for lr in res["rates"]) for k in ranks}
    lines += ["", "DyLoRA against LoRA at each rank, LoRA at its better rate per rank (an oracle choice, on test):", ""]
    for p in dys:
        gaps = [_acc(p["by_rank"][k]) - best_lora[k] for k in ranks]
        lines.append(f"- {p['options']['mode']} at {p['lr']:g}: worst gap {min(gaps):+.1f} points (rank "
                     f"{ranks[gaps.index(min(gaps))]}); within {DY_MARGIN:g} at every rank: "
                     f"{'yes' if min(gaps) >= -DY_MARGIN else 'no'}.")
    top = ranks[-1]
    lines += ["", f"SoRA (shrink {res['shrink']:g}) against LoRA r={top} at its better rate "
              f"({best_lora[top]:.1f} %):", ""]
    for p in (p for p in pts if p["method"] == "sora"):
        kept = 100 * statistics.mean(p["kept_fraction"])
        g = _acc(p["score"]) - best_lora[top]
        lines.append(f"- rate {p['lr']:g}: {_acc(p['score']):.1f} % with {kept:.0f} % of the gates non-zero, "
                     f"gap {g:+.1f}; at most half of the gates within {SORA_MARGIN:g} points: "
                     f"{'yes' if kept <= 50 and g >= -SORA_MARGIN else 'no'}.")
    lead = {lr: _acc(lora[lr][top]) - head for lr in res["rates"]}
    head_sd = statistics.stdev(100 * s["accuracy"] for s in next(p for p in pts if p["method"] == "head")["score"])
    lines += ["", f"How much an adapter adds here: LoRA r={top} minus head-only "
              + ", ".join(f"{v:+.1f} points at rate {lr:g}" for lr, v in lead.items())
              + f"; the seed sd of head-only is {head_sd:.1f} points. "
              "A gap to LoRA is only as informative as LoRA's lead over the frozen encoder with its head.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    diag.main(__doc__.split("\n")[0], HERE / "results_quality_encoder.json", run, markdown)
