"""Compression benchmark: parameters / bits against held-out perplexity for WeLore, LQ-LoRA, DSFormer
and the low-rank transformer at three budgets each, LoftQ beside LQ-LoRA at equal bits, and the
recovery after the same number of fine-tuning steps.

Models: a tiny LLaMA (causal) and a tiny BERT (masked LM), character tokenizer, pretrained briefly
through ``fit`` on the shipped protein sequences (the Pfam seed families in domains/protein/data/pfam,
ungapped; every 5th member of each family held out). Every compression goes through ``run_compress`` (the code behind
``adaptome compress``) and fine-tunes what its method trains, through ``fit``, for the same steps and
learning rate. LoftQ (Li et al. 2023, Alg. 1; peft's ``loftq_init`` needs bitsandbytes, absent here)
runs with uniform NF bits (blocks of 64, fp32 absmax: b + 0.5 bits per parameter) and the same LoRA
fine-tuning. Writes results.json, results.md and curves.png beside this file.

Usage: nice -n 10 .venv/bin/python benchmarks/compress/run.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "domains" / "protein" / "data" / "pfam"

BUDGETS = {"welore": [0.7, 0.5, 0.3], "lrt": [0.7, 0.5, 0.3], "dsformer": [0.7, 0.5, 0.3],
           "lqlora": [2.5, 3.0, 3.5]}
OPTIONS = {"welore": [], "lrt": [], "dsformer": ["nnz_per_column=4"], "lqlora": ["rank=4"]}


def read_seed(path: Path) -> list[str]:
    """Ungapped member sequences of a Pfam seed alignment (Stockholm; interleaved blocks joined by name)."""
    seqs: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith(("#", "//")):
            continue
        name, aligned = line.split()[:2]
        seqs[name] = seqs.get(name, "") + aligned
    return ["".join(c for c in s.upper() if c.isalpha()) for s in seqs.values()]


def split_data(tmp: Path) -> tuple[Path, Path]:
    """Every 5th member of each family held out: held-out sequences have homologs in training, so
    the transformer's weights (not only the character frequencies) decide the held-out perplexity."""
    train, held = [], []
    for f in sorted(DATA.glob("pfam*.seed.txt")):
        for k, s in enumerate(read_seed(f)):
            (held if k % 5 == 4 else train).append(s)
    paths = []
    for name, rs in (("train.txt", train), ("eval.txt", held)):
        p = tmp / name
        p.write_text("\n".join(rs) + "\n")
        paths.append(p)
    return paths[0], paths[1]


def unigram_ppl(train: Path, eval_: Path) -> float:
    """Baseline: character frequencies of the training text (add-one), perplexity on the held-out text."""
    import collections
    import math

    from adaptome.core.text import read_texts

    counts = collections.Counter("".join(read_texts(train)))
    total, vocab = sum(counts.values()), len(counts) + 1
    held = "".join(read_texts(eval_))
    nll = -sum(math.log((counts.get(c, 0) + 1) / (total + vocab)) for c in held) / len(held)
    return math.exp(nll)


def pretrain(kind: str, train: Path, eval_: Path, out: Path, args) -> dict:
    """Build the tiny model from config, train it fully through ``fit``, save it with its tokenizer."""
    from adaptome.core import text
    from adaptome.core.compress.run import lm_collate, perplexity
    from adaptome.core.generic_train import build_datasets
    from adaptome.core.train.loop import fit

    torch.manual_seed(0)
    tok = text.char_tokenizer()
    build = text.tiny_causal_lm if kind == "causal" else text.tiny_masked_lm
    model = build(len(tok), hidden_size=args.hidden, num_layers=2, num_heads=4, intermediate_size=2 * args.hidden)
    tr = build_datasets([str(train)], tok, kind, args.block, "text")
    ev = build_datasets([str(eval_)], tok, kind, args.block, "text")
    collate = lm_collate(tok, kind)
    t0 = time.perf_counter()
    res = fit(model, tr, collate_fn=collate, output_dir=out.parent / f"pretrain_{kind}", max_steps=args.pretrain_steps,
              batch_size=16, lr=2e-3, schedule="constant", progress=False, log_every=0, resume=False)
    model = res.model.cpu().eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"ppl": perplexity(model, ev, collate, kind), "pretrain_s": time.perf_counter() - t0,
            "params": sum(p.numel() for p in model.parameters())}


def dense_finetune(kind: str, base: Path, train: Path, eval_: Path, tmp: Path, args) -> float:
    """The uncompressed model trained (all weights) for the same steps: the reference for recovery."""
    import transformers

    from adaptome.core.compress.run import lm_collate, perplexity
    from adaptome.core.generic_train import build_datasets
    from adaptome.core.train.loop import fit

    tok = transformers.AutoTokenizer.from_pretrained(base)
    cls = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForMaskedLM
    model = cls.from_pretrained(base)
    tr = build_datasets([str(train)], tok, kind, args.block, "text")
    ev = build_datasets([str(eval_)], tok, kind, args.block, "text")
    collate = lm_collate(tok, kind)
    res = fit(model, tr, collate_fn=collate, output_dir=tmp / f"dense_ft_{kind}", max_steps=args.finetune_steps,
              batch_size=8, lr=args.lr, schedule="constant", progress=False, log_every=0, resume=False)
    return perplexity(res.model.cpu(), ev, collate, kind)


def loftq_run(kind: str, base: Path, train: Path, eval_: Path, bits: int, tmp: Path, args) -> dict:
    """LoftQ init (uniform NF ``bits``, blocks of 64, fp32 absmax, 1 iteration) + the same LoRA fine-tuning."""
    import transformers

    from adaptome.core.adapters.targets import resolve_targets
    from adaptome.core.compress import COMPRESSORS
    from adaptome.core.compress.layers import freeze_all_but, linear_weight, replace_module
    from adaptome.core.compress.lqlora import LQLoRALinear, loftq_uniform
    from adaptome.core.compress.nf_quant import QuantConfig
    from adaptome.core.compress.run import lm_collate, perplexity
    from adaptome.core.generic_train import build_datasets
    from adaptome.core.train.loop import fit

    tok = transformers.AutoTokenizer.from_pretrained(base)
    cls = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForMaskedLM
    model = cls.from_pretrained(base)
    qcfg = QuantConfig(bits, 0, "fp32", 64, 1)
    err2 = norm2 = 0.0
    lowrank = numel = 0
    for p in resolve_targets(model, "all-linear"):
        w, b = linear_weight(model, p)
        r = loftq_uniform(w, 4, qcfg, iters=1)
        err2 += (r["rel_error"] * float(w.norm())) ** 2
        norm2 += float(w.norm()) ** 2
        lowrank += 4 * sum(w.shape)
        numel += w.numel()
        replace_module(model, p, LQLoRALinear(r["q"], r["q_dense"], r["l1"], r["l2"], b))
    tr = build_datasets([str(train)], tok, kind, args.block, "text")
    ev = build_datasets([str(eval_)], tok, kind, args.block, "text")
    collate = lm_collate(tok, kind)
    after = perplexity(model, ev, collate, kind)
    trainable = freeze_all_but(model, COMPRESSORS.get("lqlora").mark_trainable(model))
    res = fit(model, tr, collate_fn=collate, output_dir=tmp / f"loftq_{kind}_{bits}", max_steps=args.finetune_steps,
              batch_size=8, lr=args.lr, schedule="constant", progress=False, log_every=0, resume=False)
    bpp = qcfg.bits_per_param()
    return {"method": "loftq", "budget": bpp, "q_bits_per_param": bpp, "rel_error": (err2 / norm2) ** 0.5,
            "kept_fraction_bits": (bpp * numel + 32 * lowrank) / (32 * numel),
            "kept_fraction_params": lowrank / numel, "ppl_after": after, "trainable": trainable,
            "ppl_finetuned": perplexity(res.model.cpu(), ev, collate, kind)}


def weight_norms(base: Path) -> dict[str, float]:
    import transformers

    from adaptome.core.adapters.targets import resolve_targets

    cfg = transformers.AutoConfig.from_pretrained(base)
    model = getattr(transformers, cfg.architectures[0]).from_pretrained(base)
    return {p: float(model.get_submodule(p).weight.detach().norm()) for p in resolve_targets(model, "all-linear")}


def method_run(method: str, budget: float, kind: str, base: Path, train: Path, eval_: Path, tmp: Path, args,
               extra: list[str] = (), norms: dict | None = None) -> dict:
    from adaptome.core.compress.run import run_compress

    t0 = time.perf_counter()
    rep = run_compress(method, str(base), tmp / f"{kind}_{method}_{budget}_{len(extra)}", budget=budget,
                       eval_text=str(eval_), train_text=str(train), finetune_steps=args.finetune_steps, lr=args.lr,
                       batch_size=8, block_size=args.block, options=OPTIONS[method] + list(extra), seed=0)
    t = rep["totals"]
    row = {"method": method, "budget": budget, "options": OPTIONS[method] + list(extra),
           "kept_fraction_params": t["kept_fraction_params"], "kept_fraction_bits": t["kept_fraction_bits"],
           "ppl_after": rep["perplexity_after"], "ppl_finetuned": rep["perplexity_finetuned"],
           "trainable": rep["finetune"]["trainable_params"], "seconds": time.perf_counter() - t0}
    if norms:  # ‖W − Ŵ‖ / ‖W‖ over all target matrices, at compression (before fine-tuning)
        err2 = sum((r["rel_error"] * norms[r["path"]]) ** 2 for r in rep["matrices"])
        row["rel_error"] = (err2 / sum(v ** 2 for v in norms.values())) ** 0.5
    if method == "lqlora":
        row["q_bits_per_param"] = sum(r["extra_bits"] for r in rep["matrices"]) / t["params_before"]
        row["configs"] = sorted({r["config"] for r in rep["matrices"]})
    if method == "welore":
        row["threshold"] = rep["matrices"][0]["threshold"]
        row["lrc"] = sum(r["lrc"] for r in rep["matrices"])
    return row


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results["models"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5))
    axes = axes if len(kinds) > 1 else [axes]
    colors = {"welore": "C0", "lrt": "C1", "dsformer": "C2", "lqlora": "C3", "lqlora+fisher": "C5", "loftq": "C4"}
    for ax, kind in zip(axes, kinds):
        m = results["models"][kind]
        rows = m["runs"]
        for name in colors:
            pts = sorted((r["kept_fraction_bits"], r["ppl_after"], r["ppl_finetuned"]) for r in rows
                         if r["method"] + ("+fisher" if r.get("fisher") else "") == name)
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1] for p in pts], "--o", color=colors[name], alpha=0.5, label=f"{name} (compressed)")
            ax.plot(x, [p[2] for p in pts], "-s", color=colors[name],
                    label=f"{name} (+{results['finetune_steps']} steps)")
        ax.axhline(m["dense_ppl"], color="k", lw=1, label="dense")
        ax.axhline(m["dense_finetuned_ppl"], color="k", ls=":", lw=1, label="dense + same steps")
        ax.set_yscale("log")
        ax.set_xlabel("stored bits / dense fp32 bits (target matrices)")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"tiny {m['architecture']} ({kind})")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    # 300 steps: held-out perplexity of the LLaMA is lowest there (a probe evaluating every 100 steps at
    # lr 2e-3: 17.4, 16.0, 15.6, then 18.6 at 400 and rising: 115 training sequences overfit fast)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--models", default="causal,masked")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    results = {"command": "nice -n 10 .venv/bin/python benchmarks/compress/run.py " + " ".join(sys.argv[1:]),
               "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip(),
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            **{m: __import__(m).__version__ for m in ("transformers", "peft", "scipy")}},
               "finetune_steps": args.finetune_steps, "lr": args.lr, "pretrain_steps": args.pretrain_steps,
               "data": str(DATA.relative_to(ROOT)) + "/pfam*.seed.txt", "models": {}}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        train, eval_ = split_data(tmp)
        for kind in args.models.split(","):
            base = tmp / f"base_{kind}"
            info = pretrain(kind, train, eval_, base, args)
            print(f"[{kind}] pretrained: ppl {info['ppl']:.3f} ({info['pretrain_s']:.0f} s)", flush=True)
            m = {"architecture": "LLaMA" if kind == "causal" else "BERT", "dense_ppl": info["ppl"],
                 "unigram_ppl": unigram_ppl(train, eval_),
                 "params": info["params"], "pretrain_s": info["pretrain_s"],
                 "dense_finetuned_ppl": dense_finetune(kind, base, train, eval_, tmp, args), "runs": []}
            norms = weight_norms(base)
            for method, budgets in BUDGETS.items():
                for b in budgets:
                    row = method_run(method, b, kind, base, train, eval_, tmp, args, norms=norms)
                    m["runs"].append(row)
                    print(f"[{kind}] {method} {b}: kept bits {row['kept_fraction_bits']:.3f} ppl "
                          f"{row['ppl_after']:.3f} -> {row['ppl_finetuned']:.3f} ({row['seconds']:.0f} s)", flush=True)
            row = method_run("lqlora", 3.0, kind, base, train, eval_, tmp, args, extra=["fisher_batches=16"],
                             norms=norms)
            row["fisher"] = True
            m["runs"].append(row)
            for bits in (2, 3):
                row = loftq_run(kind, base, train, eval_, bits, tmp, args)
                m["runs"].append(row)
                print(f"[{kind}] loftq NF{bits}: err {row['rel_error']:.4f} ppl {row['ppl_after']:.3f} -> "
                      f"{row['ppl_finetuned']:.3f}", flush=True)
            results["models"][kind] = m
    results["seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "curves.png")
    from report import write_markdown  # benchmarks/compress/report.py (beside this file)

    (out / "results.md").write_text(write_markdown(results))
    print(f"wrote {out / 'results.md'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
