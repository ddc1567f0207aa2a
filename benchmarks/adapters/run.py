"""Adapter methods I benchmark: efficiency vs peft LoRA r=8 (tiny LLaMA, tiny BERT), side by side in one
process. The quality benchmark is ``quality.py`` (its own results_quality.* files).

Writes ``benchmarks/adapters/results.json`` and ``benchmarks/adapters/results.md``; every sentence of the
markdown is computed from the measured numbers, and the results record the git commit and package versions.
Reproduce from the repository root: ``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m
benchmarks.adapters.run`` (``--device cuda`` for GPU timings and true peak memory).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMAND = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m benchmarks.adapters.run"


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def markdown(res: dict) -> str:
    env = res["env"]
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    lines = ["## Adapter methods I: LoRA family and bottleneck adapters", "",
             f"Command: `{res['command']}` ({res['device']}, {res['seconds']:.0f} s). Git commit "
             f"`{env['git_commit'][:12]}`{' with uncommitted changes' if env['git_dirty'] else ''}; {pk}; "
             f"{env['platform']}.", "",
             "### Efficiency vs peft LoRA r=8 (all linear layers; bottleneck: after every FFN block)", "",
             f"Tiny models: hidden {res['config']['hidden']}, {res['config']['layers']} layers, vocab "
             f"{res['config']['vocab']}, batch {res['config']['batch']} x {res['config']['seq']} tokens, AdamW; "
             f"step time = median of {res['config']['steps']} steps after warm-up, timed round-robin over the "
             "methods (one step of each per round). Memory: "
             + ("true CUDA peak of one step." if res["device"] == "cuda" else
                "training-state bytes (tensors saved for backward + gradients + optimizer state + method "
                "caches such as NOLA's bases), not process RSS; see `efficiency.py`."), ""]
    for arch in ("llama", "bert"):
        lines += [f"**{arch}**", "", "| method | trainable | checkpoint | step time | step ratio | memory ratio |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in res["efficiency"]:
            if r["arch"] == arch:
                lines.append(f"| {r['method']} | {r['trainable']:,} | {_fmt_bytes(r['checkpoint_bytes'])} | "
                             f"{1e3 * r['step_s']:.0f} ms | {r['step_ratio']:.2f} | {r['memory_ratio']:.2f} |")
        lines.append("")
    n = res["nola_checkpoint"]
    s = res["sora_pruned"]
    lines += [f"NOLA checkpoint (llama): {n['checkpoint_bytes']:,} bytes for {n['coefficient_bytes']:,} bytes of "
              f"coefficients + {n['seed_bytes']} bytes of seeds; the rest is the safetensors header "
              f"({n['header_bytes_per_tensor']:.0f} bytes per tensor, {n['tensors']} tensors).",
              f"SoRA pruned to rank {s['surviving_rank']} of {s['rank']} (gates {s['surviving_rank'] + 1}.."
              f"{s['rank']} of every layer set to zero): "
              f"{s['pruned_sora_bytes']:,} bytes vs a peft LoRA of rank {s['surviving_rank']}: "
              f"{s['lora_same_rank_bytes']:,} bytes.", ""]
    return "\n".join(lines)


def nola_checkpoint(rows: list[dict]) -> dict:
    """What the NOLA checkpoint (llama) holds, read from the saved safetensors file itself."""
    import struct

    from adaptome.core.adapters import api, io
    from benchmarks.adapters import efficiency

    opts = next(o for _, name, o in efficiency.METHODS if name == "nola")
    model = api.apply_adapter(efficiency.build("llama"), api.make_config("nola", opts))
    with tempfile.TemporaryDirectory() as d:
        io.save_adapter(model, Path(d) / "a")
        raw = (Path(d) / "a" / io.WEIGHTS).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]  # safetensors: 8-byte header length, JSON header, data
    header = {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}
    size = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()}
    coef = sum(b for k, b in size.items() if "nola_alpha" in k or "nola_beta" in k)
    seed = sum(b for k, b in size.items() if "nola_seed" in k)
    row = next(r for r in rows if r["arch"] == "llama" and r["name"] == "nola")
    return {"checkpoint_bytes": row["checkpoint_bytes"], "coefficient_bytes": coef, "seed_bytes": seed,
            "tensors": len(header), "header_bytes_per_tensor": (len(raw) - coef - seed) / len(header)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    from benchmarks.adapters import efficiency
    from benchmarks.adapters.quality import environment

    t0 = time.time()
    rows = []
    for arch in ("llama", "bert"):
        print(f"efficiency: {arch}", flush=True)
        rows += efficiency.measure(arch, steps=args.steps, device=args.device)
    nola_ck = nola_checkpoint(rows)
    print("sora prune", flush=True)
    sora = efficiency.sora_pruned_vs_lora("llama")
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(efficiency.build).parameters.items()
                if v.default is not inspect.Parameter.empty}
    defaults.update({k: v.default for k, v in inspect.signature(efficiency.measure).parameters.items()
                     if k in ("batch", "seq")})
    res = {"command": COMMAND + (" --device cuda" if args.device == "cuda" else ""), "device": args.device,
           "env": environment(), "config": {**defaults, "steps": args.steps}, "efficiency": rows,
           "nola_checkpoint": nola_ck, "sora_pruned": {**sora, "rank": efficiency.R}}
    res["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    (args.out / f"results{suffix}.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    (args.out / f"results{suffix}.md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))


if __name__ == "__main__":
    main()
