"""``train-language-adapter``: masked-LM training of a language adapter on one language's text.

The base masked LM (``base.load_base``) gets one adapter of any registered method (the
reference's ``seq_bn``, ``seq_bn_inv`` and LoRA r 8 / alpha 8 on query and value), trains it by
MLM (15 % masking, optionally whole words) through ``core.train.loop.fit``, and is scored by
pseudo-perplexity on held-out text before (the base) and after (base + adapter). The output
folder holds ``adapter/`` (safetensors + JSON, ``core.adapters.io``), ``run.json`` (resolved
config, numbers) and the training log.

Not covered: early stopping / keeping the best checkpoint (the reference keeps the best by
validation loss; here the last step is kept), training several languages in one run.

A training or held-out file the base's tokenizer does not cover (``mlm.check_coverage``) is refused;
``run.json`` records each file's ``<unk>`` share, the Unicode form the text was read in (``readers.NORMAL_FORM``)
and ``eval_warning`` when fewer than 20 held-out sentences were scored (``metrics.text_warning``), and
``eval_overlap_with_train``, the share of scored held-out sentences that are training sentences (the CLI warns
from 10 %: pseudo-perplexity on training text is not held out).

The adapter records its base (a local folder as an absolute path) and the base's fingerprint
(``base.base_fingerprint``); ``train-task`` refuses to stack it on another base.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from adaptome.domains.multilingual.metrics import overlap_share, text_warning
from adaptome.domains.multilingual.readers import NORMAL_FORM, DataError, read_text

#: the reference's defaults (AdapterHub SeqBnConfig / SeqBnInvConfig / LoRAConfig)
DEFAULT_OPTIONS = {
    "seq_bn": {"reduction_factor": 16},
    "seq_bn_inv": {"reduction_factor": 16, "inv_reduction_factor": 2},
    "lora": {"r": 8, "lora_alpha": 8, "target_modules": ["query", "value"]},
    "lora_native": {"r": 8, "lora_alpha": 8, "target_modules": ["query", "value"]},
}


@dataclass
class LanguageAdapterConfig:
    """One language-adapter run.

    Args:
        base: hub id or folder of the base masked LM.
        method: registered adapter method (``adaptome adapters list``).
        options: the method's options; unset ones take ``DEFAULT_OPTIONS`` then the method's defaults.
        language: language code written into the results (``hau``, ``swh_Latn``...).
        source: data source label for the results (``text``, ``conceptnet``...).
        train_file: training text, one sentence per line.
        eval_file: held-out text for pseudo-perplexity.
        eval_sentences: how many held-out sentences to score (0: all).
        steps: optimizer steps.
        batch_size: sentences per step.
        lr: peak learning rate (linear warmup over 10 % of the steps, linear decay).
        max_length: longest tokenized sentence.
        mlm_probability: share of tokens (or words) masked.
        whole_word: mask whole words.
        seed: seeds the adapter init, masking and data order.
    """

    base: str = ""
    method: str = "seq_bn"
    options: dict = field(default_factory=dict)
    language: str = ""
    source: str = "text"
    train_file: str = ""
    eval_file: str = ""
    eval_sentences: int = 200
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    max_length: int = 128
    mlm_probability: float = 0.15
    whole_word: bool = False
    seed: int = 0


def adapter_dir(path: str | Path) -> Path:
    """The adapter folder of a ``train-language-adapter`` run (``<run>/adapter``), or ``path`` itself."""
    path = Path(path)
    return path / "adapter" if (path / "adapter").is_dir() else path


def build_adapter_model(base: str, method: str, options: dict, seed: int):
    """``(tokenizer, model with adapter "default", resolved options)``."""
    import torch

    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.domains.multilingual.base import load_base

    tok, model = load_base(base, "mlm")
    opts = {**DEFAULT_OPTIONS.get(method, {}), **options}
    torch.manual_seed(seed)
    model = apply_adapter(model, make_config(method, opts, source="language adapter options"))
    return tok, model, opts


def train_language_adapter(cfg: LanguageAdapterConfig, out_dir: str | Path, overwrite: bool = False,
                           progress: bool = False) -> dict:
    from adaptome.core.adapters.api import disable_adapters, trainable_report
    from adaptome.core.adapters.io import save_adapter
    from adaptome.core.atomic import atomic_dir
    from adaptome.core.train.loop import fit
    from adaptome.domains.multilingual.base import base_fingerprint, resolve_base
    from adaptome.domains.multilingual.mlm import MaskingCollator, TextDataset, check_coverage, pseudo_perplexity

    # absolute paths: ``evaluate --text`` finds the training text from any directory (its overlap warning)
    cfg = replace(cfg, base=resolve_base(cfg.base), train_file=str(Path(cfg.train_file).resolve()),
                  eval_file=str(Path(cfg.eval_file).resolve()))
    base_fp = base_fingerprint(cfg.base)
    train_lines, eval_lines = read_text(cfg.train_file), read_text(cfg.eval_file)
    if not train_lines or not eval_lines:
        raise DataError(f"{cfg.train_file if not train_lines else cfg.eval_file}: no text")
    in_file = len(eval_lines)
    eval_lines = eval_lines[:cfg.eval_sentences] if cfg.eval_sentences else eval_lines
    tok, model, opts = build_adapter_model(cfg.base, cfg.method, cfg.options, cfg.seed)
    unk = {"train": check_coverage(cfg.train_file, train_lines, tok),
           "eval": check_coverage(cfg.eval_file, eval_lines, tok)}
    data = TextDataset(train_lines, tok, cfg.max_length)
    collate = MaskingCollator(tok, cfg.mlm_probability, cfg.whole_word)
    with disable_adapters(model):
        pppl_base = pseudo_perplexity(model, tok, eval_lines, cfg.max_length)
    report = trainable_report(model)
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        t0 = time.perf_counter()
        res = fit(model, data, collate_fn=collate, output_dir=Path(tmp) / "train", max_steps=cfg.steps,
                  batch_size=min(cfg.batch_size, len(data)), lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10),
                  log_every=max(1, cfg.steps // 10), seed=cfg.seed, progress=progress, resume=False)
        train_s = time.perf_counter() - t0
        model = res.model.eval()
        pppl = pseudo_perplexity(model, tok, eval_lines, cfg.max_length)
        save_adapter(model, Path(tmp) / "adapter", extra={"language": cfg.language, "source": cfg.source,
                                                          "base": cfg.base, "base_fingerprint": base_fp})
        losses = [h["loss"] for h in res.history if "loss" in h]
        summary = {"config": {**asdict(cfg), "options": opts}, "trainable_parameters": report["trainable"],
                   "total_parameters": report["total"], "train_seconds": train_s,
                   "step_seconds": train_s / max(1, res.step), "loss_first": losses[0], "loss_last": losses[-1],
                   "eval_sentences": len(eval_lines), "pppl_base": pppl_base, "pppl_adapter": pppl,
                   "unk_share": unk, "unicode_normal_form": NORMAL_FORM,
                   "eval_overlap_with_train": round(overlap_share(train_lines, eval_lines), 4),
                   "eval_warning": text_warning(cfg.eval_file, len(eval_lines), in_file, "--eval-sentences")}
        (Path(tmp) / "run.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
