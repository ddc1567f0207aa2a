"""The pipeline behind ``adaptome compress``: load, measure, compress, fine-tune, measure, save, report.

``run_compress(...)`` loads a transformers model folder (or hub id) and its tokenizer, measures
held-out perplexity on ``eval_text`` (causal LMs: packed blocks; masked LMs: 15 % masks drawn from a
fixed seed, the same masks before and after), resolves the target linears with the adapters'
presets (``all-linear``, ``attention``, ``mlp``, ``attention+mlp`` per architecture, or names / a
regex; a target whose weight is tied to another module, such as a tied LM head, is refused), compresses
them with the registered method, optionally fine-tunes what the method trains
(``mark_trainable``) through ``adaptome.core.train.loop.fit`` on ``train_text``, measures again and
writes the model (``io.write_compressed``) with ``report.json`` / ``report.md`` into ``out``
atomically (a failed run leaves an existing ``out`` untouched).

Not covered: task metrics other than perplexity (a model that is neither a causal nor a masked LM
is compressed and saved without a metric), multi-process runs (single process only).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptome.core.compress.layers import CompressError, freeze_all_but
from adaptome.core.model_files import check_model_folder


def _kind(arch: str) -> str | None:
    """causal / masked for a transformers architecture name, by the Auto classes' own tables (so
    ``GPT2LMHeadModel`` is causal), else by its suffix; None for anything else."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if arch.endswith("ForCausalLM") or arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal"
    if arch.endswith("ForMaskedLM") or arch in MODEL_FOR_MASKED_LM_MAPPING_NAMES.values():
        return "masked"
    return None


def lm_collate(tok, kind: str):
    if kind == "causal":
        return lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)


def perplexity(model: nn.Module, examples: list[dict], collate, kind: str, seed: int = 0) -> float:
    """Held-out perplexity with masks drawn from ``seed`` (so two calls see the same masks)."""
    from adaptome.core.evaluation import lm_perplexity

    was = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ppl = lm_perplexity(model, examples, collate, kind)
    model.train(was)
    return ppl


def method_config(method_cls, budget: float | None, options: list[str]):
    """The method's config from ``--set key=value`` options plus ``--budget`` (strictly checked). A budget
    given twice, or beside an option that replaces it (WeLore's ``threshold``, LRT's ``rank``), is an error
    rather than one of them being ignored."""
    from adaptome.core.config import load_config

    overrides = list(options)
    given = {o.split("=", 1)[0].strip() for o in overrides}
    field = method_cls.budget_field
    if budget is not None and field in given:
        raise CompressError(f"--budget and --set {field}=... both set the budget; give one of them")
    replacing = [k for k in method_cls.overrides_budget if k in given]
    if replacing and (budget is not None or field in given):
        raise CompressError(f"--set {replacing[0]}=... replaces the budget, so --budget ({field}) would be ignored; "
                            "give one of them")
    if budget is not None:
        overrides.append(f"{method_cls.budget_field}={budget!r}")
    return load_config(method_cls.Config, None, overrides)


def totals(rows: list[dict], dtype_bits: int) -> dict[str, Any]:
    before = sum(r["params_before"] for r in rows)
    after = sum(r["params_after"] for r in rows)
    bits_after = sum(r["params_after"] * dtype_bits + r.get("extra_bits", 0) for r in rows)
    return {"matrices": len(rows), "params_before": before, "params_after": after,
            "bits_before": before * dtype_bits, "bits_after": bits_after,
            "bits_per_param_after": bits_after / max(1, before),
            "kept_fraction_params": after / max(1, before),
            "kept_fraction_bits": bits_after / max(1, before * dtype_bits)}


#: the fine-tuning options of ``run_compress`` and their defaults: read only when ``finetune_steps`` is above 0
FINETUNE_DEFAULTS = {"lr": 1e-4, "batch_size": 8}


def unused_option(method: str, cfg: Any, finetune_steps: int, lr: float, batch_size: int,
                  train_text: str | None) -> str | None:
    """Why an option given to ``run_compress`` would have no effect, or None: ``lr`` / ``batch_size`` set without
    fine-tuning, and ``train_text`` that nothing reads (no fine-tuning, and no LQ-LoRA Fisher weights:
    ``fisher_batches`` above 0, the only calibration any method takes)."""
    if finetune_steps > 0:
        return None
    for name, value in (("lr", lr), ("batch_size", batch_size)):
        if value != FINETUNE_DEFAULTS[name]:
            flag = "--" + name.replace("_", "-")
            return (f"{flag} {value:g}: has no effect without fine-tuning (--finetune-steps is {finetune_steps}); "
                    f"give --finetune-steps N with --train-text, or leave {flag} out")
    if train_text is not None and not getattr(cfg, "fisher_batches", 0):
        return (f"--train-text {train_text}: has no effect: --finetune-steps is {finetune_steps} and {method} reads no "
                "calibration text (only lqlora does, with --set fisher_batches=N); give --finetune-steps N to "
                "fine-tune on it, or leave --train-text out")
    return None


def run_compress(method: str, model_path: str, out: str | os.PathLike, budget: float | None = None,
                 eval_text: str | None = None, train_text: str | None = None, targets: str | list[str] = "all-linear",
                 finetune_steps: int = 0, lr: float = 1e-4, batch_size: int = 8, block_size: int = 128,
                 options: list[str] = (), overwrite: bool = False, seed: int = 0, progress: bool = False) -> dict:
    """Compress ``model_path`` with ``method`` into ``out``; returns the report dict."""
    import transformers

    from adaptome.core.adapters.targets import refuse_tied, resolve_targets
    from adaptome.core.atomic import atomic_dir
    from adaptome.core.compress import COMPRESSORS
    from adaptome.core.compress.io import write_compressed
    from adaptome.core.config import to_dict
    from adaptome.core.generic_train import build_datasets
    from adaptome.core.train.loop import default_loss, fit

    method_cls = COMPRESSORS.get(method)
    cfg = method_config(method_cls, budget, list(options))
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    if finetune_steps > 0 and not train_text:
        raise CompressError("--finetune-steps needs --train-text")
    unused = unused_option(method, cfg, finetune_steps, lr, batch_size, train_text)
    if unused:
        raise CompressError(unused)
    for f in (eval_text, train_text):
        if f and not Path(f).is_file():
            raise CompressError(f"{f}: file not found")
    check_model_folder(model_path)  # a truncated weights / config / tokenizer file: one line naming it
    config = transformers.AutoConfig.from_pretrained(model_path)
    arch = (config.architectures or [None])[0]
    if arch is None or getattr(transformers, arch, None) is None:
        raise CompressError(f"{model_path}: config.json names no transformers architecture ({arch!r})")
    torch.manual_seed(seed)
    model = getattr(transformers, arch).from_pretrained(model_path).float()
    kind = _kind(arch)
    tok = None
    if eval_text or train_text:
        if kind is None:
            raise CompressError(f"{model_path}: {arch} is neither a causal nor a masked LM; perplexity "
                                "(--eval-text / --train-text) needs one")
        tok = transformers.AutoTokenizer.from_pretrained(model_path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    collate = lm_collate(tok, kind) if tok is not None else None
    eval_set = build_datasets([eval_text], tok, kind, block_size, "text") if eval_text else []
    train_set = build_datasets([train_text], tok, kind, block_size, "text") if train_text else []

    report: dict[str, Any] = {"method": method, "model": str(model_path), "architecture": arch,
                              "config": to_dict(cfg), "targets": targets if isinstance(targets, str) else list(targets)}
    if eval_set:
        report["perplexity_before"] = perplexity(model, eval_set, collate, kind, seed)
    paths = resolve_targets(model, targets)
    refuse_tied(model, paths, "compressing it would keep {other} dense beside the compressed copy, so the model "
                "would grow while the report counted it as saved")
    calib = None
    if train_set:
        calib = {"batches": [collate([ex]) for ex in train_set], "loss_fn": default_loss}
    torch.manual_seed(seed)
    rows = method_cls.compress(model, paths, cfg, calib)
    report["matrices"] = rows
    report["totals"] = totals(rows, dtype_bits=32)
    if eval_set:
        report["perplexity_after"] = perplexity(model, eval_set, collate, kind, seed)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if finetune_steps > 0:
            keep = method_cls.mark_trainable(model)
            if not keep:
                raise CompressError(f"{method}: no layer was compressed, so nothing to fine-tune")
            report["finetune"] = {"steps": finetune_steps, "lr": lr, "batch_size": batch_size,
                                  "trainable_params": freeze_all_but(model, keep)}
            res = fit(model, train_set, collate_fn=collate, output_dir=tmp / "finetune", max_steps=finetune_steps,
                      batch_size=batch_size, lr=lr, seed=seed, schedule="constant", progress=progress,
                      resume=False, log_every=max(1, finetune_steps // 10))
            model = res.model.cpu()
            losses = [h["loss"] for h in res.history if "loss" in h]
            report["finetune"].update(first_loss=losses[0] if losses else None,
                                      last_loss=losses[-1] if losses else None)
            if eval_set:
                report["perplexity_finetuned"] = perplexity(model, eval_set, collate, kind, seed)
        for p in model.parameters():
            p.requires_grad_(False)
        write_compressed(model, tmp, method, to_dict(cfg), tok)
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def report_markdown(report: dict) -> str:
    """The report as a short Markdown page (per-matrix table, totals, perplexities)."""
    t = report["totals"]
    lines = [f"# {report['method']} on {report['architecture']}", "",
             f"Targets: {report['targets']}; config: `{json.dumps(report['config'])}`", "",
             f"Target matrices: {t['matrices']}; parameters {t['params_before']} -> {t['params_after']} "
             f"(kept {t['kept_fraction_params']:.3f}); bits {t['bits_before']} -> {t['bits_after']:.0f} "
             f"({t['bits_per_param_after']:.3f} bits per original parameter).", ""]
    for key in ("perplexity_before", "perplexity_after", "perplexity_finetuned"):
        if key in report:
            lines.append(f"- {key.replace('_', ' ')}: {report[key]:.4f}")
    lines.append("")
    cols = [c for c in report["matrices"][0] if c not in ("path", "cost", "threshold")] if report["matrices"] else []
    lines.append("| path | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for r in report["matrices"]:
        lines.append(f"| {r['path']} | " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"
