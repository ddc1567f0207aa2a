"""Native LoRA vs peft LoRA, and the training loop vs a bare PyTorch loop, side by side in one run.

Question 1: does our native LoRA (``lora_native``) cost more time or memory per training step than
peft's LoRA on the same model (same rank, targets, batch, optimizer)?
Question 2: what does ``adaptome.core.train.loop.fit`` add per step over a bare PyTorch loop doing
the same forward / backward / AdamW step?

Timing: the variants run in one process, alternating in blocks of steps so that both see the same
machine load; the median step time per variant is reported. Memory: on CUDA, the peak allocated
memory of a training step (``torch.cuda.max_memory_allocated``) in the same process; on CPU it is
estimated as the bytes of distinct tensors autograd saves for backward plus gradients and AdamW
state (the allocator's own peak is not observable on CPU).

Usage: python benchmarks/lora/run.py [--device cpu|cuda] [--steps 30] [--hidden 256] [--layers 4]
Writes benchmarks/lora/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent


def build(args, method: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from adaptome.core.adapters.api import apply_adapter, make_config

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    if method != "none":
        model = apply_adapter(model, make_config(method, {"r": 8, "lora_alpha": 16, "target_modules": "attention+mlp"}))
    return model.to(args.device)


def batch(args):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (args.batch, args.seq), generator=g).to(args.device)  # (B, T)
    return {"input_ids": ids, "labels": ids}


def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def step_fn(args, model):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b = batch(args)

    def step():
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed_alternating(args, steps: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in steps.items():
            for _ in range(per_round):
                sync(args)
                t = time.perf_counter()
                fn()
                sync(args)
                times[name].append(time.perf_counter() - t)
    return times


def peak_memory_cuda(args, method: str) -> int:
    model = build(args, method)
    step = step_fn(args, model)
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del model, step
    torch.cuda.empty_cache()
    return peak


def peak_memory_cpu(args, method: str) -> int:
    """CPU proxy of a step's peak: bytes of distinct tensors saved for backward, plus gradients and
    AdamW state of the trainable parameters (what a step adds on top of the model)."""
    model = build(args, method)
    step = step_fn(args, model)
    step()  # creates the optimizer state
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    b = batch(args)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**b).loss
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return sum(seen.values()) + grads * 3  # grads + AdamW exp_avg + exp_avg_sq


def loop_overhead(args) -> dict[str, float]:
    """Median step time of fit() vs a bare loop on the same LoRA model, alternating runs."""
    from adaptome.core.train.loop import fit, make_accelerator

    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 512, (args.batch * 4, args.seq))]

    def collate(b):
        return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)

    class Clock:
        def __init__(self):
            self.t = []

        def on_step_start(self, state):
            sync(args)
            self.t.append(time.perf_counter())

    acc = make_accelerator("no", cpu=args.device == "cpu")
    fit_times, bare_times = [], []
    for r in range(args.rounds):
        model = build(args, "lora_native")
        clock = Clock()
        fit(model, data, collate_fn=collate, hooks=[clock], accelerator=acc, output_dir=HERE / "out" / f"fit{r}",
            max_steps=args.steps + 1, batch_size=args.batch, lr=1e-4, max_grad_norm=None, schedule="constant",
            log_every=0, progress=False, resume=False)
        fit_times += [b - a for a, b in zip(clock.t[1:], clock.t[2:])]  # skip the first step

        model = build(args, "lora_native")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, collate_fn=collate)
        it, stamps = iter(loader), []
        for _ in range(args.steps + 1):
            sync(args)
            stamps.append(time.perf_counter())
            try:
                b = next(it)
            except StopIteration:
                it = iter(loader)
                b = next(it)
            b = {k: v.to(args.device) for k, v in b.items()}
            loss = model(**b).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        bare_times += [b - a for a, b in zip(stamps[1:], stamps[2:])]
    return {"fit_median_s": statistics.median(fit_times), "bare_median_s": statistics.median(bare_times)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()

    methods = ["lora", "lora_native"]
    models = {m: build(args, m) for m in methods}
    times = timed_alternating(args, {m: step_fn(args, models[m]) for m in methods}, args.rounds,
                              max(1, args.steps // args.rounds))
    del models
    med = {m: statistics.median(t) for m, t in times.items()}
    mem = {m: (peak_memory_cuda(args, m) if args.device == "cuda" else peak_memory_cpu(args, m)) for m in methods}
    over = loop_overhead(args)
    result = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "model": f"LLaMA hidden {args.hidden}, {args.layers} layers, batch {args.batch} x {args.seq} tokens",
        "lora": "r=8, alpha=16, q,k,v,o,gate,up,down",
        "step_time_s": med,
        "peak_memory_bytes": mem,
        "native_over_peft_step_time": med["lora_native"] / med["lora"],
        "native_over_peft_peak_memory": mem["lora_native"] / mem["lora"],
        "loop": over,
        "fit_over_bare_loop_step_time": over["fit_median_s"] / over["bare_median_s"],
    }
    out = Path(args.out)
    suffix = "" if args.device == "cpu" else "_cuda"
    (out / f"results{suffix}.json").write_text(json.dumps(result, indent=2))
    cmd = f"python benchmarks/lora/run.py --device {args.device} --steps {args.steps} --hidden {args.hidden} " \
          f"--layers {args.layers} --batch {args.batch} --seq {args.seq}"
    md = [
        f"### Native LoRA vs peft LoRA; loop overhead ({result['device']})",
        "",
        f"Model: {result['model']}; LoRA {result['lora']}; torch {result['torch']}. Command: `{cmd}`",
        "",
        "| variant | median step time (ms) | peak step memory (MiB) |",
        "|---|---|---|",
        *[f"| {m} | {med[m] * 1e3:.2f} | {mem[m] / 2**20:.1f} |" for m in methods],
        "",
        f"- native / peft step time: **{result['native_over_peft_step_time']:.3f}x** (target <= 1.05)",
        f"- native / peft peak memory: **{result['native_over_peft_peak_memory']:.3f}x** (target <= 1.0)",
        f"- `fit` / bare PyTorch loop step time: **{result['fit_over_bare_loop_step_time']:.3f}x** "
        f"({over['fit_median_s'] * 1e3:.2f} vs {over['bare_median_s'] * 1e3:.2f} ms; target <= 1.05)",
        "",
    ]
    (out / f"results{suffix}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
