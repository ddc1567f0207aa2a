"""LESS feature extraction: per-example LoRA gradients batched with torch.func vs one backward each,
measured in interleaved rounds so that a change of load on a shared machine hits both alike.

Same model shape and inputs as run.py's single-round measurement (tiny LLaMA, rank-8 LoRA on
attention, 48 pool sentences of up to 128 tokens, 16 per call); the weights are untrained (speed does
not depend on them). Each round times both modes back to back, batched first on even rounds and the
loop first on odd ones; the ratio is taken per round, and the median is reported.

Usage: python benchmarks/select/throughput.py [--rounds 7] [--device cuda]
Writes benchmarks/select/results_throughput.json and results_throughput.md (``--device cpu``), or
results_throughput_<device>.json / .md for another device.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from run import MAX_LEN, pool_and_target  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU run writes its own results files)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.time()
    from adaptome.core import text
    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.select.grads import per_example_grads
    from adaptome.core.select.less import encode

    tok = text.char_tokenizer()
    pool = pool_and_target()[0]
    torch.manual_seed(0)
    base = text.tiny_causal_lm(len(tok), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    model = apply_adapter(copy.deepcopy(base), make_config("lora", {"r": 8, "lora_alpha": 16,
                                                                     "target_modules": "attention"})).eval().to(dev)
    x, y = encode(tok, [r["text"] for r in pool[:args.n]], MAX_LEN)  # (n, T), (n, T)
    x, y = x.to(dev), y.to(dev)
    for batched in (True, False):
        per_example_grads(model, x[:4], y[:4], batched=batched)  # warm-up
    rounds = []
    for i in range(args.rounds):
        speed = {}
        for name in (("batched", "loop") if i % 2 == 0 else ("loop", "batched")):
            t = time.perf_counter()
            for lo in range(0, args.n, 16):
                per_example_grads(model, x[lo:lo + 16], y[lo:lo + 16], batched=name == "batched")
            sync()
            speed[name] = args.n / (time.perf_counter() - t)
        rounds.append({**speed, "ratio": speed["batched"] / speed["loop"]})
        print(rounds[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/select/throughput.py" + "".join(
        f" --{k} {v}" for k, v in vars(args).items() if v != ap.get_default(k))
    res = {"command": command, "args": vars(args), "commit": commit, "platform": platform.platform(),
           "seconds": time.time() - t0, "cpu_seconds": time.process_time(),
           "versions": {p: version(p) for p in ("torch", "peft", "transformers")}, "rounds": rounds}
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(dev)
    stem = "results_throughput" + ("" if dev.type == "cpu" else f"_{dev.type}")
    (HERE / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (HERE / f"{stem}.md").write_text(write_md(res))
    print(f"wrote {HERE / f'{stem}.md'}")


def write_md(res: dict) -> str:
    r = res["rounds"]
    med = {k: statistics.median(x[k] for x in r) for k in ("batched", "loop", "ratio")}
    v = res["versions"]
    where = res.get("gpu") or "cpu"
    return "\n".join([
        "## LESS feature extraction: batched vs one-at-a-time per-example gradients (interleaved rounds)", "",
        f"Command: `{res['command']}` ({where}, torch {v['torch']}, peft {v['peft']}, commit {res['commit'][:10]}, "
        f"{res['seconds']:.0f} s wall, {res['cpu_seconds']:.0f} s CPU).", "",
        f"Rank-8 LoRA on attention of the tiny LLaMA, {res['args']['n']} pool sentences (up to {MAX_LEN} tokens), "
        f"16 per call, {len(r)} rounds, both modes back to back in each round (order alternating).", "",
        "| round | batched (examples/s) | one at a time (examples/s) | ratio |", "|---:|---:|---:|---:|",
        *[f"| {i + 1} | {x['batched']:.1f} | {x['loop']:.1f} | {x['ratio']:.2f}x |" for i, x in enumerate(r)],
        "",
        f"Median over rounds: {med['batched']:.1f} examples/s batched vs {med['loop']:.1f} one at a time; median "
        f"per-round ratio {med['ratio']:.2f}x (range {min(x['ratio'] for x in r):.2f}x to "
        f"{max(x['ratio'] for x in r):.2f}x; target >= 3x: {'met' if med['ratio'] >= 3 else 'not met'} on {where}).",
        ""])


if __name__ == "__main__":
    main()
