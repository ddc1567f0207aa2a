"""``adaptome train``: a generic adapter run for a causal LM or a masked LM on text or FASTA files.

The run: read the files (``text.read_texts``), tokenize, pack into blocks (causal) or pad per
example (masked, 15% of tokens masked as BERT does), load the model by hub id / local path or build
a tiny one from config, apply the adapter by registry name, train with ``train.loop.fit``, report
perplexity on the eval files, save the adapter (and optionally a merged standalone checkpoint).
Outputs go to ``train.output_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/``, ``adapter/``, ``merged/``, ``summary.json``.

Under ``torchrun`` every process joins the group and trains its share of each batch; only the main
process writes outputs. A folder with checkpoints is resumed only when the run's identity matches
(``train.identity``: these sections, each data file's size and SHA-256, the training options but
those in ``train.config.MAY_CHANGE_ON_RESUME``); ``config.yaml`` is written once that check has
passed, so a refused run changes no file. ``summary.json`` reports the whole run (its losses come
from ``metrics.jsonl``), also after a resume or a re-save with ``--overwrite``. Temporary files a
killed run left in the folder are removed. A data file that is not UTF-8 is refused naming its file
and line before anything is read or written.

Not covered: instruction / chat formats (the domain packages own those), streaming corpora,
sequence classification heads.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaptome.core.config import InvalidValue
from adaptome.core.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TinyModelConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128


@dataclass
class ModelConfig:
    #: hub id or local path; empty -> a tiny model built from ``tiny`` with the character tokenizer
    name_or_path: str = ""
    kind: Literal["causal", "masked"] = "causal"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    block_size: int = 128
    #: wrap each example as ProLLaMA's ``Seq=<...>`` (protein sequences)
    prollama_seq_format: bool = False
    mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise InvalidValue("block_size", f"must be >= 1 (tokens per example), got {self.block_size}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise InvalidValue("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")


@dataclass
class AdapterSpec:
    method: str = "lora"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    save_merged: bool = True


def _load(model_cfg: ModelConfig):
    from adaptome.core import text

    if model_cfg.name_or_path:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_cfg.name_or_path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        cls = AutoModelForCausalLM if model_cfg.kind == "causal" else AutoModelForMaskedLM
        return cls.from_pretrained(model_cfg.name_or_path), tok
    tok = text.char_tokenizer()
    t = model_cfg.tiny
    build = text.tiny_causal_lm if model_cfg.kind == "causal" else text.tiny_masked_lm
    model = build(len(tok), hidden_size=t.hidden_size, num_layers=t.num_layers, num_heads=t.num_heads,
                  intermediate_size=t.intermediate_size)
    return model, tok


def build_datasets(files: list[str], tok, kind: str, block_size: int, prollama: bool) -> list[dict]:
    """Tokenized examples: packed blocks for causal LMs, one truncated example each for masked LMs."""
    import torch

    from adaptome.core import text

    texts = [t for f in files for t in text.read_texts(f)]
    if prollama:
        texts = [f"Seq=<{t}>" for t in texts]
    if kind == "causal":
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        blocks = text.pack_blocks(ids, block_size, tok.eos_token_id)
        return [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    enc = [tok(t, truncation=True, max_length=block_size)["input_ids"] for t in texts]
    return [{"input_ids": torch.tensor(e)} for e in enc]


def _collator(tok, kind: str, mlm_probability: float):
    import torch

    if kind == "causal":
        return lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=mlm_probability)


def eval_perplexity(model, examples: list[dict], collate, kind: str = "causal", batch_size: int = 8) -> float:
    """exp(mean token NLL) over ``examples`` (masked LMs: over the masked positions)."""
    import torch

    total, count = 0.0, 0
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(dev) for k, v in collate(examples[i:i + batch_size]).items()}
            out = model(**batch)
            labels = batch["labels"][:, 1:] if kind == "causal" else batch["labels"]  # causal LMs shift by one
            n = int((labels != -100).sum())
            total += out.loss.item() * n
            count += n
    return math.exp(total / max(1, count))


def run_identity_of(cfg: RunConfig) -> dict[str, Any]:
    """What of ``cfg`` beyond the training options shapes the result (``train.identity``): the model,
    data and adapter sections, with each data file by size and SHA-256 instead of its path (so an
    edited file of the same size is seen, a moved one is not a change)."""
    from adaptome.core.adapters.api import make_config
    from adaptome.core.config import to_dict
    from adaptome.core.train.identity import file_digest

    data = to_dict(cfg.data)
    for key in ("train_files", "eval_files"):
        data[key] = [{k: v for k, v in file_digest(f).items() if k != "path"} for f in data[key]]
    adapter = make_config(cfg.adapter.method, cfg.adapter.options).to_dict()  # resolved: 8 and 8.0 are one value
    return {"model": to_dict(cfg.model), "data": data, "adapter": {"method": cfg.adapter.method, "options": adapter},
            "save_merged": cfg.save_merged}


def _check_utf8(files: list[str]) -> None:
    """Refuse a data file that is not UTF-8 text, naming the file, line and column of the first bad byte
    (before any reader sees it, so the message is the same whatever the format)."""
    from adaptome.core.text import InputError

    for f in files:
        path = Path(f)
        if not path.is_file():
            continue  # the reader names a missing file
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
            raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                             "convert the file to UTF-8") from None


class _WriteConfig:
    """Hook: writes the resolved ``config.yaml`` once the resume check has passed (main process only),
    so a refused run leaves the earlier run's config as it was."""

    def __init__(self, cfg: RunConfig, out: Path):
        self.cfg, self.out = cfg, out

    def on_train_start(self, state) -> None:
        from adaptome.core.config import save_config

        if state.accelerator.is_main_process:
            save_config(self.cfg, self.out)


def run_generic(cfg: RunConfig, overwrite: bool = False) -> str:
    """Train, evaluate and save; returns a one-paragraph summary.

    Under ``torchrun`` every process trains its share of each batch; only the main process writes
    ``config.yaml``, ``adapter/``, ``merged/`` and ``summary.json`` while the others wait.
    """
    import torch

    from adaptome.core.adapters.api import apply_adapter, make_config, trainable_report
    from adaptome.core.atomic import clean_stale
    from adaptome.core.config import ConfigError
    from adaptome.core.train.loop import fit, make_accelerator

    if not cfg.data.train_files:
        raise ConfigError("data.train_files: is empty; give at least one training file")
    out = Path(cfg.train.output_dir)
    if (out / "adapter").exists() and not overwrite:
        raise FileExistsError(f"{out / 'adapter'}: already exists; use --overwrite or another train.output_dir")
    adapter_cfg = make_config(cfg.adapter.method, cfg.adapter.options)
    _check_utf8(cfg.data.train_files + cfg.data.eval_files)
    acc = make_accelerator(cfg.train.mixed_precision, cfg.train.cpu, cfg.train.dist_timeout_s)
    if acc.is_main_process:
        for p in clean_stale(out):  # temporary folders and files of a killed run (.adapter.tmp-*, ...)
            log.warning(f"removed {p}: left half-written by an interrupted run")
    torch.manual_seed(cfg.train.seed)  # a tiny model built from config starts from the same weights each run
    model, tok = _load(cfg.model)
    train_set = build_datasets(cfg.data.train_files, tok, cfg.model.kind, cfg.data.block_size,
                               cfg.data.prollama_seq_format)
    eval_set = build_datasets(cfg.data.eval_files, tok, cfg.model.kind, cfg.data.block_size,
                              cfg.data.prollama_seq_format) if cfg.data.eval_files else []
    collate = _collator(tok, cfg.model.kind, cfg.data.mlm_probability)
    model = apply_adapter(model, adapter_cfg)
    report = trainable_report(model)
    eval_fn = (lambda m: {"perplexity": eval_perplexity(m, eval_set, collate, cfg.model.kind)}) if eval_set else None
    res = fit(model, train_set, cfg.train, collate_fn=collate, eval_fn=eval_fn, hooks=[_WriteConfig(cfg, out)],
              accelerator=acc, identity=run_identity_of(cfg))
    summary = None
    if acc.is_main_process:
        summary = _write_outputs(cfg, res, tok, report, acc.num_processes, adapter_cfg.supports_merge, overwrite)
    acc.wait_for_everyone()
    acc.end_training()
    return json.dumps(summary, indent=2) if summary is not None else ""


def _write_outputs(cfg: RunConfig, res, tok, report: dict, world_size: int, can_merge: bool,
                   overwrite: bool) -> dict[str, Any]:
    """``adapter/`` (+ tokenizer), ``merged/`` and ``summary.json``; the losses are the whole run's,
    read from ``metrics.jsonl`` (so a resumed or re-saved run reports its first loss, not the resume's)."""
    from adaptome.core.adapters.io import save_adapter, save_merged
    from adaptome.core.atomic import write_text_atomic
    from adaptome.core.train.metrics import read_metrics

    out = Path(cfg.train.output_dir)
    save_adapter(res.model, out / "adapter", overwrite=overwrite)
    tok.save_pretrained(out / "adapter")
    if cfg.save_merged and can_merge:
        save_merged(res.model, out / "merged", tokenizer=tok, overwrite=overwrite)
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    summary = {
        "method": cfg.adapter.method,
        "trainable": report["trainable"],
        "trainable_percent": round(report["percent"], 3),
        "steps": res.step,
        "world_size": world_size,
        "resumed_from": res.resumed_from,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        **{k: v for r in records for k, v in r.items() if k.startswith("eval/")},
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
