"""LESS feature extraction: per-example LoRA gradients batched with torch.func vs one backward each,
measured in interleaved rounds so that a change of load on a shared machine hits both alike.

Same model shape and inputs as run.py's single-round measurement (tiny LLaMA, rank-8 LoRA on
attention, 48 pool sentences of up to 128 tokens); the weights are untrained (speed does not depend on
them). The batched mode is timed at each ``--per-call`` size (examples per vmap call, LESS's
``grad_batch``; 16 is its default), the loop one example at a time. Each round times every mode back
to back, in forward order on even rounds and reversed on odd ones; ratios are taken per round, and the
medians are reported.

Usage: python benchmarks/select/throughput.py [--rounds 7] [--per-call 16,48] [--device cuda]
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
    ap.add_argument("--per-call", default="16,48", help="comma-separated examples per batched call")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU run writes its own results files)")
    args = ap.parse_args()
    sizes = [int(v) for v in args.per_call.split(",")]
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
    modes = [(f"batched_{k}", k) for k in sizes] + [("loop", 16)]
    rounds = []
    for i in range(args.rounds):
        speed = {}
        for name, per_call in (modes if i % 2 == 0 else modes[::-1]):
            t = time.perf_counter()
            for lo in range(0, args.n, per_call):
                per_example_grads(model, x[lo:lo + per_call], y[lo:lo + per_call], batched=name != "loop")
            sync()
            speed[name] = args.n / (time.perf_counter() - t)
        rounds.append({**speed, **{f"ratio_{k}": speed[f"batched_{k}"] / speed["loop"] for k in sizes}})
        print(rounds[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/select/throughput.py" + "".join(
        f" --{k} {v}" for k, v in vars(args).items() if v != ap.get_default(k))
    res = {"command": command, "args": vars(args), "sizes": sizes, "commit": commit, "platform": platform.platform(),
           "seconds": time.time() - t0, "cpu_seconds": time.process_time(),
           "versions": {p: version(p) for p in ("torch", "peft", "transformers")}, "rounds": rounds}
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(dev)
    stem = "results_throughput" + ("" if dev.type == "cpu" else f"_{dev.type}")
    (HERE / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (HERE / f"{stem}.md").write_text(write_md(res))
    print(f"wrote {HERE / f'{stem}.md'}")


def write_md(res: dict) -> str:
    r, sizes = res["rounds"], res["sizes"]
    med = {k: statistics.median(x[k] for x in r) for k in r[0]}
    v = res["versions"]
    where = res.get("gpu") or "cpu"
    default = 16  # LessConfig.grad_batch
    lines = [
        "## LESS feature extraction: batched vs one-at-a-time per-example gradients (interleaved rounds)", "",
        f"Command: `{res['command']}` ({where}, torch {v['torch']}, peft {v['peft']}, commit {res['commit'][:10]}, "
        f"{res['seconds']:.0f} s wall, {res['cpu_seconds']:.0f} s CPU).", "",
        f"Rank-8 LoRA on attention of the tiny LLaMA, {res['args']['n']} pool sentences (up to {MAX_LEN} tokens); "
        "batched: torch.func vmap over grad with " + " or ".join(str(k) for k in sizes) + " examples per call; loop: "
        f"one example at a time. {len(r)} rounds, all modes back to back in each round (order alternating). The "
        "machine is shared: the spread across rounds is load, not the method.", "",
        "| round | " + " | ".join(f"batched, {k} per call (ex/s)" for k in sizes) + " | one at a time (ex/s) | "
        + " | ".join(f"ratio at {k}" for k in sizes) + " |",
        "|---:|" + "---:|" * (2 * len(sizes) + 1),
        *[f"| {i + 1} | " + " | ".join(f"{x[f'batched_{k}']:.1f}" for k in sizes) + f" | {x['loop']:.1f} | "
          + " | ".join(f"{x[f'ratio_{k}']:.2f}x" for k in sizes) + " |" for i, x in enumerate(r)], ""]
    for k in sizes:
        ratios = [x[f"ratio_{k}"] for x in r]
        lines.append(f"At {k} examples per call{' (the default grad_batch)' if k == default else ''}: median "
                     f"{med[f'batched_{k}']:.1f} examples/s batched vs {med['loop']:.1f} one at a time; median "
                     f"per-round ratio {med[f'ratio_{k}']:.2f}x (range {min(ratios):.2f}x to {max(ratios):.2f}x; "
                     f"target >= 3x: {'met' if med[f'ratio_{k}'] >= 3 else 'not met'} on {where}).")
    lines += ["", "A call holds N x D per-example gradients (N examples, D LoRA parameters), so more examples "
              "per call cost memory in proportion: fine for this tiny model, to be sized for a real one.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
