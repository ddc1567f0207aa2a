"""Exported peft LoRA size vs the native checkpoint, per LoRA-family method.

Question: how large is ``adaptome adapters export --to peft-lora`` 's ``adapter_model.safetensors``
next to the method's own checkpoint, and does the export reproduce the adapter's outputs when plain
``peft.PeftModel.from_pretrained`` loads it? Each method gets a rank-8 adapter (NOLA: 64 + 64 bases)
on every linear of the attention and MLP blocks of a tiny LLaMA built from config, with a non-zero
update (seeded noise on the trainable weights; sizes do not depend on the values). The adapter is
saved by adaptome, exported through the CLI and loaded by peft on a fresh base read from disk; the
largest |logit difference| to the adaptome model is reported. SoRA is also exported with half of its
gates set to zero (the ranks its proximal step would prune), DyLoRA also at rank 4. LoRA-SB runs
without its gradient init here (its layer and file layout are LoRA-XS's; only the values differ).

Usage: python benchmarks/export/run.py [--hidden 256] [--layers 2]
Writes benchmarks/export/results.json and results.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

HERE = Path(__file__).parent

#: (label, method, options, export rank, fraction of SoRA gates zeroed)
VARIANTS = [
    ("lora (peft)", "lora", {"r": 8, "lora_alpha": 16}, None, 0.0),
    ("lora_native", "lora_native", {"r": 8, "lora_alpha": 16}, None, 0.0),
    ("allora", "allora", {"r": 8}, None, 0.0),
    ("dylora", "dylora", {"r": 8, "lora_alpha": 16}, None, 0.0),
    ("dylora at rank 4", "dylora", {"r": 8, "lora_alpha": 16}, 4, 0.0),
    ("sora", "sora", {"r": 8, "lora_alpha": 16}, None, 0.0),
    ("sora, half the gates zero", "sora", {"r": 8, "lora_alpha": 16}, None, 0.5),
    ("nola", "nola", {"r": 8, "num_basis_a": 64, "num_basis_b": 64}, None, 0.0),
    ("loraxs", "loraxs", {"r": 8}, None, 0.0),
    ("lorasb", "lorasb", {"r": 8}, None, 0.0),
    ("lamda", "lamda", {"r": 8, "lora_alpha": 16}, None, 0.0),
]


def build_base(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def adapted(base, method: str, options: dict, zero_gates: float):
    from adaptome.core.adapters.api import apply_adapter, make_config

    model = apply_adapter(copy.deepcopy(base), make_config(method, {**options, "target_modules": "attention+mlp"}))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        if zero_gates:
            from adaptome.core.adapters.sora import gate_parameters

            for gate in gate_parameters(model):
                gate[: int(gate.numel() * zero_gates)] = 0.0  # (R,): the first ranks pruned
    return model.eval()


def run_variant(args, tmp: Path, base_dir: Path, base, label, method, options, rank, zero_gates) -> dict:
    import peft
    from transformers import LlamaForCausalLM

    from adaptome.core.adapters.dylora import set_rank
    from adaptome.core.adapters.io import save_adapter

    model = adapted(base, method, options, zero_gates)
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))  # (B, T)
    native, out = tmp / f"{label}-native", tmp / f"{label}-peft"
    save_adapter(model, native)
    if rank is not None:
        set_rank(model, rank)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    cmd = [sys.executable, "-m", "adaptome.core.cli", "adapters", "export", "--to", "peft-lora", str(native),
           str(out), "--base", str(base_dir)] + (["--rank", str(rank)] if rank is not None else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{label}: export failed: {res.stderr.strip()}")
    size_line = next(ln for ln in res.stdout.splitlines() if ln.startswith("size:"))
    loaded = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), str(out)).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    return {"label": label, "method": method, "rank": rank, "zero_gates": zero_gates,
            "native_bytes": (native / "adapter_model.safetensors").stat().st_size,
            "exported_bytes": (out / "adapter_model.safetensors").stat().st_size,
            "max_abs_logit_diff": float((got - want).abs().max()), "cli_size_line": size_line}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    except OSError:
        return "unknown"


def write_md(res: dict) -> str:
    rows = res["rows"]
    lines = ["## Export to peft LoRA: file sizes", "",
             f"Command: `{res['command']}` (cpu, torch {res['versions']['torch']}, peft {res['versions']['peft']}, "
             f"transformers {res['versions']['transformers']}, commit {res['commit'][:10]}, {res['seconds']:.0f} s).",
             "",
             f"Tiny LLaMA (hidden {res['model']['hidden']}, {res['model']['layers']} layers, vocab 512), rank 8 on "
             "every attention and MLP linear; `adapter_model.safetensors` of the native checkpoint and of the export "
             "(`adaptome adapters export --to peft-lora`); max |logit diff| is the peft-loaded export against the "
             "adaptome model on 2 x 32 tokens.", "",
             "| method | native checkpoint | exported peft LoRA | exported / native | max abs logit diff |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['native_bytes']:,} B | {r['exported_bytes']:,} B | "
                     f"{r['exported_bytes'] / r['native_bytes']:.2f} | {r['max_abs_logit_diff']:.1e} |")
    by = {r["label"]: r for r in rows}
    nola, xs, half = by["nola"], by["loraxs"], by["sora, half the gates zero"]
    worst = max(rows, key=lambda r: r["max_abs_logit_diff"])
    lines += ["",
              f"NOLA's export is {nola['exported_bytes'] / nola['native_bytes']:.1f}x its native checkpoint "
              f"({nola['exported_bytes'] - nola['native_bytes']:,} bytes more): the native file holds a seed and "
              "128 coefficients per layer, the export the materialised A and B. "
              f"LoRA-XS's export is {xs['exported_bytes'] / xs['native_bytes']:.2f}x its native checkpoint (which "
              "already stores the frozen A and B beside R). "
              f"SoRA with half its gates zero exports {half['exported_bytes'] / by['sora']['exported_bytes']:.2f}x "
              "the size of the full-rank SoRA export; DyLoRA at rank 4 "
              f"{by['dylora at rank 4']['exported_bytes'] / by['dylora']['exported_bytes']:.2f}x DyLoRA at rank 8. "
              f"The largest logit difference is {worst['max_abs_logit_diff']:.1e} ({worst['label']}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    base = build_base(args)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base.save_pretrained(tmp / "base")
        for v in VARIANTS:
            rows.append(run_variant(args, tmp, tmp / "base", base, *v))
            print(rows[-1]["label"], rows[-1]["cli_size_line"], flush=True)
    res = {"command": "nice -n 10 .venv/bin/python benchmarks/export/run.py" + (
               f" --hidden {args.hidden} --layers {args.layers}" if (args.hidden, args.layers) != (256, 2) else ""),
           "commit": git_commit(), "platform": platform.platform(), "seconds": time.time() - t0,
           "versions": {p: version(p) for p in ("torch", "peft", "transformers", "safetensors")},
           "model": {"hidden": args.hidden, "layers": args.layers}, "rows": rows}
    (HERE / "results.json").write_text(json.dumps(res, indent=2))
    (HERE / "results.md").write_text(write_md(res))
    print(f"wrote {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
