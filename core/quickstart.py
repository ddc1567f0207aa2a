"""``adaptome quickstart``: the main job on embedded data and tiny models, CPU only.

Core part: a tiny LLaMA with the character tokenizer learns core's shipped example text (plain
English sentences, ``core/data/example_train.txt``; card ``data_cards/core_example_text.md``)
through a LoRA adapter (peft backend) for a few hundred steps; the perplexity on the held-out
sentences (``core/data/example_heldout.txt``) before and after, the loss curve, then save ->
reload -> merge -> reload as a plain transformers model, each checked to give the same logits.
Then each installed domain plug-in's quickstart part runs (``core/plugins.py``).

``run_quickstart`` returns the summary (``summary["core"]["ok"]`` says whether the core checks
passed); it never exits the process: the command line decides the exit status.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from adaptome.core.errors import AdaptomeError


class QuickstartError(AdaptomeError, ValueError):
    """A bad ``adaptome quickstart`` option (an unknown domain, an output folder in the way)."""


def core_demo(out: Path, steps: int, console) -> dict:
    import torch
    from rich.table import Table
    from transformers import AutoModelForCausalLM

    from adaptome.core import text
    from adaptome.core.adapters.api import apply_adapter, make_config, trainable_report
    from adaptome.core.adapters.io import load_adapter, save_adapter, save_merged
    from adaptome.core.evaluation import lm_perplexity
    from adaptome.core.generic_train import build_datasets
    from adaptome.core.train.loop import fit

    tok = text.char_tokenizer()
    train_txt, held_txt = text.example_text_files()
    n_lines = len(text.read_texts(train_txt))
    train_set = build_datasets([str(train_txt)], tok, "causal", 128)
    held_set = build_datasets([str(held_txt)], tok, "causal", 128)

    def collate(b):
        return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)

    torch.manual_seed(0)
    base = text.tiny_causal_lm(len(tok), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    ppl_before = lm_perplexity(base, held_set, collate)
    cfg = make_config("lora", {"r": 8, "lora_alpha": 16, "target_modules": "all-linear",
                               "modules_to_save": ["embed_tokens", "lm_head"]})
    model = apply_adapter(base, cfg)
    report = trainable_report(model)
    console.print(f"[bold]core[/]: {n_lines} sentences from {train_txt.name} "
                  f"({len(train_set)} blocks of 128 tokens for training, {len(held_set)} held out); "
                  f"LoRA r=8 on all linear layers + embeddings/LM head: {report['trainable']:,} trainable "
                  f"parameters ({report['percent']:.1f}%)")
    t0 = time.perf_counter()
    res = fit(model, train_set, collate_fn=collate, output_dir=out / "lora_run", max_steps=steps, batch_size=8,
              lr=3e-3, warmup_steps=20, schedule="cosine", log_every=max(1, steps // 6), save_every=steps,
              eval_fn=lambda m: {"perplexity": lm_perplexity(m, held_set, collate)}, eval_every=0,
              resume=False, progress=True)
    train_s = time.perf_counter() - t0
    losses = [(h["step"], h["loss"]) for h in res.history if "loss" in h]
    table = Table(title="training loss")
    table.add_column("step")
    table.add_column("loss")
    for step, loss in losses:
        table.add_row(str(step), f"{loss:.3f}")
    console.print(table)
    model = res.model.eval()
    ppl_after = lm_perplexity(model, held_set, collate)

    probe = collate(held_set[:2])
    with torch.no_grad():
        ref = model(input_ids=probe["input_ids"]).logits
    save_adapter(model, out / "adapter")
    tok.save_pretrained(out / "adapter")
    fresh = text.tiny_causal_lm(len(tok), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    fresh.load_state_dict(base_state)
    reloaded = load_adapter(fresh, out / "adapter").eval()
    with torch.no_grad():
        reload_diff = (reloaded(input_ids=probe["input_ids"]).logits - ref).abs().max().item()
    save_merged(model, out / "merged", tokenizer=tok)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        merged_diff = (merged(input_ids=probe["input_ids"]).logits - ref).abs().max().item()
    summary = {
        "steps": res.step,
        "train_seconds": round(train_s, 1),
        "first_loss": round(losses[0][1], 4),
        "last_loss": round(losses[-1][1], 4),
        "heldout_perplexity_before": round(ppl_before, 3),
        "heldout_perplexity_after": round(ppl_after, 3),
        "trainable_parameters": report["trainable"],
        "adapter_reload_max_abs_diff": reload_diff,
        "merged_checkpoint_max_abs_diff": merged_diff,
    }
    ok = reload_diff < 1e-4 and merged_diff < 1e-3 and ppl_after < ppl_before
    console.print(f"held-out perplexity {ppl_before:.2f} -> {ppl_after:.2f} (uniform over the "
                  f"{len(tok)} characters would be {len(tok)}); adapter saved, reloaded (max |diff| "
                  f"{reload_diff:.1e}), "
                  f"merged into {out / 'merged'} and reloaded with AutoModelForCausalLM (max |diff| "
                  f"{merged_diff:.1e}): {'[green]OK[/]' if ok else '[red]CHECK FAILED[/]'}")
    summary["ok"] = ok
    return summary


def run_quickstart(out: Path, steps: int = 300, domains: list[str] | None = None, overwrite: bool = False) -> dict:
    """Run the demos into ``out`` and return the summary; an existing non-empty ``out`` is replaced
    only with ``overwrite``. Never exits the process (the caller reads ``results["core"]["ok"]``)."""
    import shutil
    import warnings

    from rich.console import Console

    from adaptome.core.plugins import discover

    warnings.filterwarnings("ignore", category=FutureWarning)
    console = Console()
    plugins = [p for p in discover() if p.quickstart is not None]
    known = [p.name for p in plugins]
    unknown = [d for d in domains or () if d not in known]
    if unknown:
        raise QuickstartError(f"unknown domain {unknown[0]!r}; domains with a quickstart: {', '.join(known)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise QuickstartError(f"{out}: already holds outputs; pass --overwrite to replace them or choose --out")
        shutil.rmtree(out)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar per tiny model among the demos' own lines
    try:
        results: dict = {"core": core_demo(out / "core", steps, console)}
        for plugin in plugins:
            if domains and plugin.name not in domains:
                continue
            name = plugin.name
            console.rule(f"[bold]{name}")
            t0 = time.perf_counter()
            results[name] = plugin.quickstart(out / name)
            console.print(f"{name} done in {time.perf_counter() - t0:.0f} s")
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str))
    console.rule("[bold]summary")
    console.print_json(json.dumps(results, default=str))
    console.print(f"outputs in {out}")
    return results
