"""Why the adapter-quality benchmark keeps its encoder and its training length: two probes on data that is
never a test window (results_quality_probes.json / .md; every sentence of the .md is computed from them).

1. Encoder: does more masked-LM pretraining on the shipped corpus (``quality.data()["unlabeled"]``) give an
   encoder that predicts residues from context? A seeded ``HELD_OUT`` share of the corpus' sequences is
   held out; the BERT of ``quality.ENCODER`` is trained on the rest with the benchmark's pretraining recipe
   (AdamW, batch ``quality.PRETRAIN_BATCH``, linear warm-up and decay, gradient norm clipped at 1 as in
   ``fit``, random ``quality.WINDOW``-residue crops, 15 % of residues replaced by the mask token) for the
   benchmark's step count and for ``LONG`` times it, and its masked-LM loss on the held-out windows
   (3 fixed mask draws) is compared with the loss of a context-free predictor (the training residues'
   frequencies) on the same masked positions.
2. Training length: on the benchmark's first rate-selection fold (inside fold 0's training part; validation
   windows only; the stored results were measured on the earlier single selection split), head-only, LoRA
   r=8 and DyLoRA r=8 at their chosen rates of results_quality_r8.json train for ``quality.STEPS`` and for
   ``LENGTH`` times as many steps, the latter also with the adapter's and the head's rates divided by
   ``LENGTH`` (the same summed rate); validation macro-F1 and accuracy, mean over
   ``PROBE_SEEDS``.

Run from the repository root: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_probes``
(each of the three parts can also run alone, side by side: ``--part pretrain-1`` / ``pretrain-2`` / ``length``
write ``out/probe-PART.json``; the plain command then runs only the missing parts and writes the results).
Not covered: other corpora (none is shipped), other encoder sizes, masking schemes or rate grids.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

from benchmarks.adapters import quality as q

HERE = Path(__file__).resolve().parent
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_probes"
HELD_OUT = 0.1  # share of the corpus' sequences held out of pretraining
LONG = 2  # the longer pretraining: LONG x quality_task.PRETRAIN_STEPS
EVAL_EVERY = 500  # pretraining steps between held-out evaluations
LENGTH = 3  # the longer adapter training: LENGTH x quality.STEPS
PROBE_SEEDS = (0, 1, 2)
PARTS = ("pretrain-1", "pretrain-2", "length")


def _mask(ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = ids.clone()
    chosen = (torch.rand(ids.shape, generator=gen) < 0.15) & (ids != q.PAD)
    labels[~chosen] = -100
    return ids.masked_fill(chosen, q.MASK), labels


def pretrain_probe(train: list[str], held: list[str], steps: int) -> dict:
    """Held-out masked-LM loss every EVAL_EVERY steps of a ``steps``-step pretraining on ``train``."""
    from transformers import BertConfig, BertForMaskedLM

    from adaptome.core.train.schedule import make_scheduler

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(q.AA) + 3, max_position_embeddings=q.WINDOW + 2,
                                     pad_token_id=q.PAD, **q.ENCODER))
    ids, att = q._pad([q.encode(w) for s in held for _, w in q.tiles(s, q.WINDOW)])  # (N, T)
    gen = torch.Generator().manual_seed(123)
    evals = [_mask(ids, gen) for _ in range(3)]
    freq = Counter(c for s in train for c in s if c in q.AA)
    n = sum(freq.values())
    nll = {q.AA.index(a) + 3: -math.log(v / n) for a, v in freq.items()}
    masked = torch.cat([lab[lab != -100] for _, lab in evals]).tolist()
    context_free = statistics.mean(nll.get(t, math.log(n)) for t in masked)

    def held_loss() -> float:
        mlm.eval()
        with torch.no_grad():
            out = statistics.mean(mlm(input_ids=i, attention_mask=att, labels=lab).loss.item() for i, lab in evals)
        mlm.train()
        return out

    opt = torch.optim.AdamW(mlm.parameters(), lr=q.PRETRAIN_LR, weight_decay=0.0)
    sched = make_scheduler(opt, "linear", min(q.PRETRAIN_WARMUP, steps // 10), steps)
    rng, gmask = random.Random(0), torch.Generator().manual_seed(0)
    order: list[str] = []
    curve = [{"step": 0, "held_out": held_loss()}]
    for step in range(1, steps + 1):
        crops = []
        for _ in range(q.PRETRAIN_BATCH):
            if not order:  # an epoch: every training sequence once, shuffled
                order = rng.sample(train, len(train))
            s = order.pop()
            start = rng.randint(0, max(0, len(s) - q.WINDOW))
            crops.append(q.encode(s[start: start + q.WINDOW]))
        b_ids, b_att = q._pad(crops)
        inp, lab = _mask(b_ids, gmask)
        mlm(input_ids=inp, attention_mask=b_att, labels=lab).loss.backward()
        torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % EVAL_EVERY == 0 or step == steps:
            curve.append({"step": step, "held_out": held_loss()})
    return {"steps": steps, "curve": curve, "context_free": context_free, "masked_positions": len(masked)}


def length_probe(res8: dict, enc, d: dict, acc) -> list[dict]:
    """Validation scores of head-only, LoRA r=8 and DyLoRA r=8 at quality.STEPS and LENGTH x as many steps."""
    rows = {r["method"]: r for r in res8["rows"]}
    labels, head_lr = d["labels"], res8["head_lr"]
    sel_train, sel_val = d["select"][0]
    gold = [labels.index(r.label) for r in sel_val]
    base = q.STEPS
    out = []
    for method in ("head", "lora", "dylora"):
        r = rows[method]
        for steps, factor in ((base, 1.0), (LENGTH * base, 1.0), (LENGTH * base, 1.0 / LENGTH)):
            q.STEPS, lr = steps, r["lr"] * factor
            scores = []
            for seed in PROBE_SEEDS:
                with tempfile.TemporaryDirectory() as tmp:
                    model, _, _ = q.train_one(enc, method, r["options"], lr, head_lr * factor if method != "head"
                                              else lr, sel_train, labels, seed, tmp, acc)
                scores.append(q._score(gold, q._predict(model, sel_val, labels)))
            out.append({"method": method, "label": r["label"], "steps": steps, "lr": lr, "rate_factor": factor,
                        **{k: statistics.mean(s[k] for s in scores) for k in ("accuracy", "macro_f1")}})
            print(out[-1], flush=True)
    q.STEPS = base
    return out


def run(part: str) -> dict:
    """One part of the probes: "pretrain-1" / "pretrain-2" (1x / LONG x the pretraining steps) or "length"."""
    from adaptome.core.train.loop import make_accelerator

    t0, env = time.time(), q.environment()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    acc = make_accelerator("no", cpu=True)
    d = q.data()
    if part == "length":
        res8 = json.loads((HERE / "results_quality_r8.json").read_text(encoding="utf-8"))
        enc, info = q.cached_encoder(d["unlabeled"], acc)
        if info["key"] != res8["encoder"]["key"]:
            raise SystemExit("error: the cached encoder differs from results_quality_r8's")
        for p in enc.parameters():
            p.requires_grad_(False)
        return {"env": env, "length": length_probe(res8, enc, d, acc), "n_select_train": len(d["select"][0][0]),
                "n_select_val": len(d["select"][0][1]), "seconds": time.time() - t0}
    corpus = sorted(d["unlabeled"])
    random.Random(0).shuffle(corpus)
    n_held = round(HELD_OUT * len(corpus))
    held, train = corpus[:n_held], corpus[n_held:]
    steps = q.quality_task.PRETRAIN_STEPS * (LONG if part == "pretrain-2" else 1)
    return {"env": env, "held_out_sequences": n_held, "train_sequences": len(train),
            "held_out_residues": sum(map(len, held)), "pretrain": [pretrain_probe(train, held, steps)],
            "seconds": time.time() - t0}


def combine(parts: list[dict]) -> dict:
    """The parts' results as one (the environment of the first part, the sum of their CPU-bound seconds)."""
    res = {"command": COMMAND, "env": parts[0]["env"], "pretrain": [], "seconds": sum(p["seconds"] for p in parts),
           "parts_envs": [p["env"] for p in parts]}
    for p in parts:
        for k, v in p.items():
            if k == "pretrain":
                res["pretrain"] += v
            elif k not in ("env", "seconds"):
                res[k] = v
    res["pretrain"].sort(key=lambda x: x["steps"])
    return res


def markdown(res: dict) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in res["env"]["packages"].items())
    lines = ["## Adapter quality: why this encoder and this training length (probes, no test windows)", "",
             f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min of wall time summed over its parts, "
             "which ran side by side). Git commit "
             f"`{res['env']['git_commit'][:12]}`{' with uncommitted changes' if res['env']['git_dirty'] else ''}; "
             f"{pk}.", "",
             f"Encoder: the benchmark's BERT pretrained by masked-LM on {res['train_sequences']} corpus sequences, "
             f"{res['held_out_sequences']} held out ({res['held_out_residues']:,} residues); loss on the held-out "
             "windows (nats, 3 fixed mask draws) against a context-free predictor (the training residues' "
             "frequencies) on the same masked positions:", "",
             "| pretraining steps | held-out loss at each evaluation (step: loss) | final | context-free | gain |",
             "|---:|---|---:|---:|---:|"]
    for p in res["pretrain"]:
        curve = ", ".join(f"{c['step']}: {c['held_out']:.3f}" for c in p["curve"])
        fin = p["curve"][-1]["held_out"]
        lines.append(f"| {p['steps']} | {curve} | {fin:.3f} | {p['context_free']:.3f} | "
                     f"{p['context_free'] - fin:+.3f} |")
    short, long_ = res["pretrain"][0], res["pretrain"][-1]
    best = min(c["held_out"] for c in long_["curve"])
    gain = {p["steps"]: p["context_free"] - p["curve"][-1]["held_out"] for p in res["pretrain"]}
    lines += ["", f"Gain of the final encoder over the context-free predictor on held-out sequences: "
              f"{gain[short['steps']]:+.3f} nats after the benchmark's {short['steps']} steps, "
              f"{gain[long_['steps']]:+.3f} after {long_['steps']} (best evaluation "
              f"{long_['context_free'] - best:+.3f}). More steps on this corpus "
              + ("do not give an encoder that predicts residues from context much better than their frequencies "
                 "(under 0.05 nats)." if long_["context_free"] - best < 0.05 else "lower the held-out loss."), "",
              f"Training length on the rate-selection split ({res['n_select_train']} training / "
              f"{res['n_select_val']} validation windows, mean of {len(PROBE_SEEDS)} seeds):", "",
              "| row | steps | rate | validation accuracy % | validation macro-F1 % |", "|---|---:|---:|---:|---:|"]
    for x in res["length"]:
        lines.append(f"| {x['label']} | {x['steps']} | {x['lr']:.3g} | {100 * x['accuracy']:.1f} | "
                     f"{100 * x['macro_f1']:.1f} |")
    by = {}
    for x in res["length"]:
        by.setdefault(x["method"], []).append(x)
    verdicts = []
    for m, xs in by.items():
        base = xs[0]["macro_f1"]
        best_long = max(xs[1:], key=lambda x: x["macro_f1"])
        verdicts.append(f"{xs[0]['label']} {100 * (best_long['macro_f1'] - base):+.1f} points of macro-F1 at "
                        f"{best_long['steps']} steps (rate {best_long['lr']:.3g}) against {xs[0]['steps']}")
    lines += ["", "Longer training, best of the two rates: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Adapter quality probes: encoder pretraining length, training length")
    ap.add_argument("--part", choices=PARTS, help="run one part into out/probe-PART.json (parts can run side by "
                    "side); without it, run every part not yet there, then write the results")
    args = ap.parse_args()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    for part in [args.part] if args.part else PARTS:
        if args.part or not (out / f"probe-{part}.json").is_file():
            (out / f"probe-{part}.json").write_text(json.dumps(run(part), indent=2), encoding="utf-8")
    if args.part:
        return
    res = combine([json.loads((out / f"probe-{p}.json").read_text(encoding="utf-8")) for p in PARTS])
    (HERE / "results_quality_probes.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    (HERE / "results_quality_probes.md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))


if __name__ == "__main__":
    main()
