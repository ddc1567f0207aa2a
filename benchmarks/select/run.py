"""LESS data selection on a pool with a planted shift, and batched vs one-at-a-time per-example gradients.

Question 1: when the target looks like a small part of the training pool, does training on the
LESS-selected 5 % beat training on a random 5 % (and how does it compare with all the data)?
Question 2: how much faster are per-example gradient features batched with ``torch.func`` than one
backward pass per example?

Setup (CPU): a planted language shift. The pool is 545 real sentences of news text
(``domains/multilingual/data/text``, MasakhaNER 2.0): 250 Hausa, 250 Swahili and 45 Yoruba (8.3 %, the
target-like part). The target is 8
other Yoruba sentences, the test set 60 more (Yoruba's tone marks and dots below are dropped by NFKD so that
the ASCII character tokenizer sees its letters). A tiny LLaMA over the character tokenizer, trained fully
on core's English example text, is the base. ``adaptome.core.select.less.select_data`` picks 5 % of the
pool (warm-up LoRA on 20 % of the pool for 2 epochs); a random 5 % and the whole pool are the baselines.
Each selection trains a fresh peft LoRA from the base for the same number of steps; the score is the
token NLL on the Yoruba test set (lower is better). Five seeds (warm-up subset, projection, random pick,
training).

Usage: python benchmarks/select/run.py [--seeds 3] [--steps 100]
Writes benchmarks/select/results.json and results.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import subprocess
import tempfile
import time
import unicodedata
from importlib.metadata import version
from pathlib import Path

import torch

HERE = Path(__file__).parent
MAX_LEN = 128


def ascii_text(line: str) -> str:
    """NFKD, then drop combining marks (Yoruba tone marks, dots below)."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", line) if not unicodedata.combining(ch))


def pool_and_target():
    """(pool records, target texts, test texts, base-model texts)."""
    from adaptome.core.text import example_text_files, read_texts

    text = HERE.parents[1] / "domains" / "multilingual" / "data" / "text"
    lang = {t: [ascii_text(s) for s in (text / f"{t}.txt").read_text(encoding="utf-8").splitlines() if s.strip()]
            for t in ("hau", "swa", "yor")}
    for t, lines in lang.items():
        random.Random(t).shuffle(lines)
    yor = lang["yor"]
    pool = [{"text": s, "source": "hau"} for s in lang["hau"][:250]] + \
           [{"text": s, "source": "swa"} for s in lang["swa"][:250]] + \
           [{"text": s, "source": "yor"} for s in yor[:45]]
    return pool, yor[100:108], yor[108:168], read_texts(example_text_files()[0])


def encode(tok, texts):
    from adaptome.core.select.less import encode as enc

    x, y = enc(tok, texts, MAX_LEN)
    return [{"input_ids": a, "labels": b} for a, b in zip(x, y)]


def collate(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}  # (B, T)


@torch.no_grad()
def nll(model, examples) -> float:
    model.eval()
    b = collate(examples)
    return float(model(**b).loss)


def train_lora(base, examples, steps: int, seed: int, out: Path):
    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.train.loop import fit

    model = apply_adapter(copy.deepcopy(base), make_config("lora", {"r": 8, "lora_alpha": 16,
                                                                     "target_modules": "attention+mlp"}))
    fit(model, examples, collate_fn=collate, output_dir=out, max_steps=steps, batch_size=4, lr=5e-3,
        progress=False, log_every=0, seed=seed)
    return model


def throughput(base, tok, texts, n: int = 48) -> dict:
    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.select.grads import per_example_grads
    from adaptome.core.select.less import encode as enc

    model = apply_adapter(copy.deepcopy(base), make_config("lora", {"r": 8, "lora_alpha": 16,
                                                                     "target_modules": "attention"})).eval()
    x, y = enc(tok, texts[:n], MAX_LEN)
    out = {}
    for name, batched in (("batched", True), ("loop", False)):
        per_example_grads(model, x[:4], y[:4], batched=batched)  # warm-up
        t = time.perf_counter()
        for lo in range(0, n, 16):
            per_example_grads(model, x[lo:lo + 16], y[lo:lo + 16], batched=batched)
        out[name] = n / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    t0 = time.time()
    from adaptome.core import text
    from adaptome.core.select.less import LessConfig, select_data
    from adaptome.core.train.loop import fit

    tok = text.char_tokenizer()
    pool, target, test, generic = pool_and_target()
    test_ex = encode(tok, test)
    torch.manual_seed(0)
    base = text.tiny_causal_lm(len(tok), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fit(base, encode(tok, generic), collate_fn=collate, output_dir=tmp / "base-run", max_steps=200, batch_size=8,
            lr=3e-3, progress=False, log_every=0, seed=0)
        base.eval()
        base.save_pretrained(tmp / "base")
        tok.save_pretrained(tmp / "base")
        (tmp / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
        (tmp / "target.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in target))
        k = len(pool) * 5 // 100
        for seed in range(args.seeds):
            cfg = LessConfig(percentage=0.05, warmup_fraction=0.2, warmup_epochs=2, lora_r=8, lora_alpha=16,
                             lora_dropout=0.0, lr=5e-3, batch_size=4, max_length=MAX_LEN, proj_dim=1024, seed=seed)
            t = time.perf_counter()
            summary = select_data(str(tmp / "base"), [str(tmp / "pool.jsonl")], [str(tmp / "target.jsonl")],
                                  tmp / f"sel{seed}.jsonl", cfg, work_dir=tmp / f"work{seed}")
            less_s = time.perf_counter() - t
            picked = [json.loads(line) for line in (tmp / f"sel{seed}.jsonl").read_text().splitlines()]
            rnd = random.Random(seed).sample(pool, k)
            for name, chosen in (("LESS 5%", picked), ("random 5%", rnd), ("all data", pool)):
                model = train_lora(base, encode(tok, [r["text"] for r in chosen]), args.steps, seed,
                                   tmp / f"train-{seed}-{name}")
                rows.append({"seed": seed, "selection": name, "n": len(chosen),
                             "target_like": sum(r["source"] == "yor" for r in chosen),
                             "test_nll": nll(model, test_ex), "selection_seconds": less_s if name == "LESS 5%" else 0,
                             "batched_gradients": summary["batched_gradients"]})
                print(rows[-1], flush=True)
        base_nll = nll(base, test_ex)
        speed = throughput(base, tok, [r["text"] for r in pool])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/select/run.py" + "".join(
        f" --{k} {v}" for k, v in vars(args).items() if v != ap.get_default(k))
    res = {"command": command, "args": vars(args),
           "commit": commit,
           "platform": platform.platform(), "seconds": time.time() - t0, "cpu_seconds": time.process_time(),
           "versions": {p: version(p) for p in ("torch", "peft", "transformers")}, "pool": len(pool),
           "pool_target_like": sum(r["source"] == "yor" for r in pool), "base_test_nll": base_nll,
           "rows": rows, "throughput_examples_per_s": speed}
    (HERE / "results.json").write_text(json.dumps(res, indent=2))
    (HERE / "results.md").write_text(write_md(res))
    print(f"wrote {HERE / 'results.md'}")


def write_md(res: dict) -> str:
    names = ["LESS 5%", "random 5%", "all data"]
    agg = {}
    for n in names:
        rs = sorted((r for r in res["rows"] if r["selection"] == n), key=lambda r: r["seed"])
        agg[n] = {"nll": [r["test_nll"] for r in rs], "like": [r["target_like"] for r in rs], "n": rs[0]["n"]}
    v = res["versions"]
    sp = res["throughput_examples_per_s"]
    lines = ["## LESS: selecting 5 % of a three-language pool for a Yoruba target (planted language shift)", "",
             f"Command: `{res['command']}` (cpu, torch {v['torch']}, peft {v['peft']}, commit {res['commit'][:10]}, "
             f"{res['seconds']:.0f} s" + (f" wall, {res['cpu_seconds']:.0f} s CPU" if "cpu_seconds" in res else "")
             + ").", "",
             f"Pool: {res['pool']} real news sentences (Hausa, Swahili and {res['pool_target_like']} Yoruba, "
             f"{100 * res['pool_target_like'] / res['pool']:.1f} %); target: 8 other Yoruba sentences; test: 60 more. "
             "The base is a tiny LLaMA trained on core's English example text. Each selection trains a fresh rank-8 "
             f"peft LoRA for {res['args']['steps']} steps from the same base; test NLL per token (base model: "
             f"{res['base_test_nll']:.3f}); mean +- std over {res['args']['seeds']} seeds.", "",
             "| selection | examples | Yoruba among them | test NLL |", "|---|---:|---:|---:|"]
    for n in names:
        a = agg[n]
        sd = statistics.stdev(a["nll"]) if len(a["nll"]) > 1 else 0.0
        lines.append(f"| {n} | {a['n']} | {statistics.mean(a['like']):.1f} | {statistics.mean(a['nll']):.3f} +- "
                     f"{sd:.3f} |")
    less_nll, rnd_nll = statistics.mean(agg["LESS 5%"]["nll"]), statistics.mean(agg["random 5%"]["nll"])
    diffs = [b - a for a, b in zip(agg["LESS 5%"]["nll"], agg["random 5%"]["nll"])]
    wins = sum(d > 0 for d in diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    ratio = sp["batched"] / sp["loop"]
    lines += ["",
              f"LESS 5 % {'beats' if less_nll < rnd_nll else 'does not beat'} random 5 % on the target test set "
              f"({less_nll:.3f} vs {rnd_nll:.3f} mean NLL; random minus LESS {statistics.mean(diffs):.3f} +- {sd:.3f} "
              f"nats per token; LESS lower in {wins} of {len(diffs)} seeds); all data gives "
              f"{statistics.mean(agg['all data']['nll']):.3f}. LESS picks "
              f"{statistics.mean(agg['LESS 5%']['like']):.1f} Yoruba sentences of {agg['LESS 5%']['n']} on average, "
              f"a random 5 % {statistics.mean(agg['random 5%']['like']):.1f}.", "",
              "Per-example gradient features (rank-8 LoRA on attention, 16 examples per call, up to "
              f"{MAX_LEN} tokens): "
              f"{sp['batched']:.1f} examples/s batched with torch.func vs {sp['loop']:.1f} one at a time, "
              f"{ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'not met'} on this CPU).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
