"""Protein benchmarks, side by side in one process, on the tiny LLaMA (CPU by default).

1. Sampling throughput: the same 32 prompts (8 per family label over 4 labels) decoded with
   ``model.generate`` in batches of 16 vs one at a time; sequences/s and generated tokens/s. Stopping
   at ``>`` is disabled (the stop token is the model's EOS only and the tiny random model rarely
   emits it), so every sample generates ``max_new_tokens`` tokens and both arms do the same work.
2. Training step time per adapter method (every name in ``ADAPTERS``, default options, all-linear
   targets, stage-1 blocks of 256 tokens, batch 8) through ``adaptome.core.train.loop.fit``, beside
   full fine-tuning; median over the timed steps after warm-up.

Writes ``results.json`` and ``results.md`` beside this file.
Reproduce: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protein/run.py``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).parent
CMD = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/protein/run.py"


def bench_sampling(model, tok, n_prompts: int, max_new_tokens: int) -> dict:
    import torch

    from adaptome.domains.protein import data
    from adaptome.domains.protein.sample import SamplingParams, _decoding

    labels = ["Cyclin_N", "COX2_TM", "ArsP_1", "3Beta_HSD"]
    prompts = [data.FAMILY.generate_prompt(labels[i % 4]) for i in range(n_prompts)]
    out = {}
    for bs in (1, 16):
        params = SamplingParams(max_new_tokens=max_new_tokens, batch_size=bs)
        tok.padding_side = "left"
        t0 = time.perf_counter()
        n_tok = 0
        for i in range(0, n_prompts, bs):
            enc = tok(prompts[i:i + bs], return_tensors="pt", padding=True)
            torch.manual_seed(i)
            with torch.no_grad():
                gen = model.generate(**enc, **_decoding(params), repetition_penalty=params.repetition_penalty,
                                     max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            n_tok += (gen.shape[1] - enc["input_ids"].shape[1]) * gen.shape[0]
        dt = time.perf_counter() - t0
        out[f"batch_{bs}"] = {"seconds": dt, "seqs_per_s": n_prompts / dt, "tokens_per_s": n_tok / dt}
    tok.padding_side = "right"
    out["speedup_seqs_per_s"] = out["batch_16"]["seqs_per_s"] / out["batch_1"]["seqs_per_s"]
    return out


def bench_training(steps: int, warmup: int, tmp: Path) -> dict:
    import copy

    from adaptome.core.adapters import ADAPTERS
    from adaptome.core.adapters.api import apply_adapter, make_config, trainable_report
    from adaptome.core.train.loop import fit
    from adaptome.domains.protein import data, pretrain
    from adaptome.domains.protein.model import load_model_and_tokenizer

    base, tok = load_model_and_tokenizer(None)
    blocks = pretrain.sequence_blocks(tok, [r.seq for r in data.pfam_families(max_residues=128)], 256)
    ds = pretrain.BlockDataset(blocks)

    class Timer:
        def __init__(self):
            self.times, self.t = [], None

        def on_step_start(self, state):
            self.t = time.perf_counter()

        def after_optimizer_step(self, state):
            self.times.append(time.perf_counter() - self.t)

    rows = {}
    for name in ["full"] + ADAPTERS.names():
        model = copy.deepcopy(base)
        try:
            if name != "full":
                model = apply_adapter(model, make_config(name, {"target_modules": "all-linear"}))
            rep = trainable_report(model)
            timer = Timer()
            fit(model, ds, collate_fn=pretrain.stack_collate, hooks=[timer], output_dir=str(tmp / name),
                max_steps=steps + warmup, batch_size=8, lr=1e-3, log_every=0, progress=False, resume=False)
            t = timer.times[warmup:]
            rows[name] = {"step_ms": 1000 * statistics.median(t), "trainable": rep["trainable"],
                          "trainable_percent": rep["percent"]}
        except Exception as e:  # a method that cannot run here is reported, not fatal
            rows[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    full = rows["full"].get("step_ms")
    for r in rows.values():
        if "step_ms" in r and full:
            r["vs_full"] = r["step_ms"] / full
    return rows


def markdown(res: dict) -> str:
    s = res["sampling"]
    lines = ["## protein: sampling throughput and training step time (tiny LLaMA, CPU, 1 thread)", "",
             f"Sampling: {res['config']['n_prompts']} conditional prompts, {res['config']['max_new_tokens']} new "
             "tokens each (ProLLaMA defaults: temperature 0.2, top-k 40, top-p 0.9, repetition penalty 1.2).", "",
             "| decoding | seconds | sequences/s | tokens/s |", "|---|---|---|---|"]
    for k in ("batch_1", "batch_16"):
        v = s[k]
        lines.append(f"| {k.replace('_', ' ')} | {v['seconds']:.2f} | {v['seqs_per_s']:.2f} "
                     f"| {v['tokens_per_s']:.0f} |")
    lines += ["", f"Batched (16) / one at a time: **{s['speedup_seqs_per_s']:.1f}x** sequences/s (target >= 4x).", "",
              f"Training step (stage-1 blocks of 256 tokens, batch 8, median of {res['config']['steps']} steps "
              "through `fit`, default options, all-linear targets):", "",
              "| method | step ms | vs full FT | trainable params | trainable % |", "|---|---|---|---|---|"]
    for name, r in res["training"].items():
        if "error" in r:
            lines.append(f"| {name} | n/a | n/a | n/a | {r['error']} |")
        else:
            lines.append(f"| {name} | {r['step_ms']:.1f} | {r.get('vs_full', float('nan')):.2f} | "
                         f"{r['trainable']} | {r['trainable_percent']:.1f} |")
    lines += ["", f"Reproduce: `{CMD}`", ""]
    return "\n".join(lines)


def main() -> None:
    import tempfile

    import torch

    from adaptome.domains.protein.model import load_model_and_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer(None)
    model.eval()
    res = {"config": vars(args) | {"model": "tiny LLaMA (hidden 64, 2 layers, char tokenizer)",
                                   "torch": torch.__version__, "threads": torch.get_num_threads()}}
    res["sampling"] = bench_sampling(model, tok, args.n_prompts, args.max_new_tokens)
    with tempfile.TemporaryDirectory() as d:
        res["training"] = bench_training(args.steps, args.warmup, Path(d))
    (HERE / "results.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    (HERE / "results.md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))


if __name__ == "__main__":
    main()
