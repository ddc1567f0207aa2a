"""``adaptome train``: a generic adapter run for a causal LM or a masked LM on text or JSONL files.

The run: read the files (``text.read_texts``: plain text, one example per non-empty line, or JSON
Lines with the text in ``data.text_field``), tokenize, pack into blocks (causal) or pad per
example (masked, 15% of tokens masked as BERT does), load the model by hub id / local path or build
a tiny one from config, apply the adapter by registry name (or a from-scratch method such as
``sltrain``: ``adapters.from_scratch``), build the ``optimizer:`` section's optimizer, train with
``train.loop.fit``, report perplexity on the eval files (``evaluation.lm_perplexity``), save the adapter
(and optionally a merged standalone checkpoint; a from-scratch method saves the whole model to
``adapter/`` and merges nothing).
Outputs go to ``train.output_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/``, ``adapter/``, ``merged/``, ``summary.json``.

Not covered: instruction / chat formats and domain file formats such as FASTA (the domain packages
own those), streaming corpora, sequence classification heads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaptome.core.optim.registry import OptimizerSpec
from adaptome.core.train.loop import TrainConfig


@dataclass
class TinyModelConfig:
    """A model built from config when no ``name_or_path`` is given (random weights, seeded by ``train.seed``).

    Args:
        hidden_size: width of the residual stream.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        intermediate_size: width of the feed-forward layer.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128


@dataclass
class ModelConfig:
    """The base model.

    Args:
        name_or_path: hub id or local folder loaded with ``AutoModelFor{CausalLM,MaskedLM}`` and its
            tokenizer; empty builds a tiny model from ``tiny`` with the character tokenizer.
        kind: ``causal`` (next-token loss on packed blocks) or ``masked`` (BERT-style masked LM).
        tiny: the architecture built when ``name_or_path`` is empty.
    """

    name_or_path: str = ""
    kind: Literal["causal", "masked"] = "causal"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    """The text to train and evaluate on (see ``text.read_texts`` for the formats).

    Args:
        train_files: plain-text files (one example per non-empty line) or ``.jsonl`` files.
        eval_files: the same formats; held-out perplexity is reported on them (none: no evaluation).
        block_size: tokens per packed block (causal) or the truncation length per example (masked).
        text_field: the JSON field holding the text in ``.jsonl`` files.
        mlm_probability: share of tokens masked for a masked LM (BERT: 0.15).
    """

    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    block_size: int = 128
    text_field: str = "text"
    mlm_probability: float = 0.15


@dataclass
class AdapterSpec:
    """The adapter method.

    Args:
        method: a registered method name (``adaptome adapters list``).
        options: the method's config fields, e.g. ``{r: 8, target_modules: all-linear}``.
    """

    method: str = "lora"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """One ``adaptome train`` run.

    Args:
        model: the base model.
        data: the training and evaluation text.
        adapter: the adapter method and its options.
        train: the training loop's options (``train.loop.TrainConfig``).
        save_merged: also write a standalone merged checkpoint to ``merged/`` (methods that merge).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
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


def build_datasets(files: list[str], tok, kind: str, block_size: int, text_field: str = "text") -> list[dict]:
    """Tokenized examples: packed blocks for causal LMs, one truncated example each for masked LMs."""
    import torch

    from adaptome.core import text

    texts = [t for f in files for t in text.read_texts(f, text_field)]
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


def run_generic(cfg: RunConfig, overwrite: bool = False) -> str:
    """Train, evaluate and save; returns a one-paragraph summary."""
    import torch

    from adaptome.core.adapters.api import trainable_report
    from adaptome.core.adapters.from_scratch import apply_method, save_trained
    from adaptome.core.adapters.io import save_merged
    from adaptome.core.config import save_config
    from adaptome.core.evaluation import lm_perplexity
    from adaptome.core.optim.registry import make_optimizer_factory
    from adaptome.core.train.loop import fit

    if not cfg.data.train_files:
        raise ValueError("data.train_files is empty: give at least one text (.txt) or JSONL (.jsonl) file")
    out = Path(cfg.train.output_dir)
    if (out / "adapter").exists() and not overwrite:
        raise FileExistsError(f"{out / 'adapter'}: already exists; use --overwrite or another train.output_dir")
    t = cfg.train
    make_optimizer = make_optimizer_factory(cfg.optimizer.name, cfg.optimizer.options, t.lr, t.weight_decay,
                                            t.betas)
    torch.manual_seed(cfg.train.seed)  # a tiny model built from config starts from the same weights each run
    model, tok = _load(cfg.model)
    train_set = build_datasets(cfg.data.train_files, tok, cfg.model.kind, cfg.data.block_size, cfg.data.text_field)
    eval_set = build_datasets(cfg.data.eval_files, tok, cfg.model.kind, cfg.data.block_size,
                              cfg.data.text_field) if cfg.data.eval_files else []
    collate = _collator(tok, cfg.model.kind, cfg.data.mlm_probability)
    # an adapter, or a method that replaces the layers and trains the whole model (sltrain)
    model, adapter_cfg, from_scratch = apply_method(model, cfg.adapter.method, cfg.adapter.options)
    report = trainable_report(model)
    save_config(cfg, out)
    eval_fn = (lambda m: {"perplexity": lm_perplexity(m, eval_set, collate, cfg.model.kind)}) if eval_set else None
    res = fit(model, train_set, collate_fn=collate, eval_fn=eval_fn, make_optimizer=make_optimizer,
              **asdict(cfg.train))
    save_trained(res.model, out / "adapter", overwrite=overwrite)  # from scratch: model.safetensors + method.json
    tok.save_pretrained(out / "adapter")
    if cfg.save_merged and not from_scratch and adapter_cfg.supports_merge:
        save_merged(res.model, out / "merged", tokenizer=tok, overwrite=overwrite)
    losses = [h["loss"] for h in res.history if "loss" in h]
    summary = {
        "method": cfg.adapter.method,
        "optimizer": cfg.optimizer.name,
        "trainable": report["trainable"],
        "trainable_percent": round(report["percent"], 3),
        "steps": res.step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        **{k: v for h in res.history for k, v in h.items() if k.startswith("eval/")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return json.dumps(summary, indent=2)
