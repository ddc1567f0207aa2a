"""Sequence classification with an ESM-style masked protein LM: a classification head plus any
registered adapter, trained through core's ``fit`` (so every method's own hooks and optimizer groups
apply), then label prediction.

The model is transformers' ``EsmForSequenceClassification`` loaded from an ESM checkpoint (hub id or
folder, e.g. ESM-2, Lin et al. 2023): the encoder's weights are reused, the head ``classifier``
(dense + tanh + projection on the ``<cls>`` token's state) starts new with one output per label. The
adapter wraps the encoder (``adapter.options.target_modules``, default the ``attention+mlp`` preset)
and the head trains fully (``modules_to_save: [classifier]``); the loss is cross-entropy over the
labels. Outputs in ``train.output_dir``: ``metrics.jsonl``, ``checkpoints/``, ``adapter/`` and, with
``merge``, ``merged/``: a standalone ``EsmForSequenceClassification`` whose config holds the labels
(``id2label``), so ``classify --model <output_dir>/merged`` predicts without training again.

A resumed run must share its identity with the checkpoint: the model, the labels and the SHA-256 of
every training record are part of it (``core.train.identity``), so training data that changed is
refused by name, never silently continued.

Dimension letters: B sequences per batch, T tokens, C labels.
Sequences longer than ``max_residues``, or than the model reads at once (``max_position_embeddings`` less the
specials and ESM's position offset, ``position_crop``), are cropped to their N-terminal part; ``classify`` counts
them, and the crop used is saved beside the merged classifier. Not covered: regression heads, per-residue (token)
labels, class weighting for imbalanced labels, windows over a long sequence (only its N-terminal part is read).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptome.core.atomic import write_text_atomic
from adaptome.core.train.config import TrainConfig
from adaptome.domains.protein.config import AdapterSection
from adaptome.domains.protein.formats import ProteinError, Record

CLASSIFIER_ARCH = "EsmForSequenceClassification"


@dataclass
class EsmClassifyConfig:
    """Training an ESM classifier (``classify`` with an ESM model and ``--train-fasta``).

    Args:
        dtype: torch dtype the checkpoint is loaded in (``float32``, ``bfloat16``).
        max_residues: N-terminal residues kept per sequence (ESM-2's context is 1,024 tokens: 1,022
            residues plus ``<cls>`` and ``<eos>``).
        residue_policy: letters outside the 20 standard amino acids: ``error``, ``skip``, ``keep``.
        adapter: the adapter method and its options; the head ``classifier`` must be in
            ``modules_to_save`` so it trains and is saved with the adapter.
        train: the training loop's options (``core.train.loop.TrainConfig``).
        predict_batch_size: sequences per forward pass when predicting.
        merge: also write the merged classifier to ``<train.output_dir>/merged``.
    """

    dtype: str = "float32"
    max_residues: int = 1022
    residue_policy: str = "error"
    adapter: AdapterSection = field(default_factory=lambda: AdapterSection(options={
        "r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0, "target_modules": "attention+mlp",
        "modules_to_save": ["classifier"]}))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/protein/esm_classify", max_steps=300, batch_size=16, lr=1e-3, warmup_steps=10,
        schedule="cosine", save_every=100, seed=0))
    predict_batch_size: int = 32
    merge: bool = True


def trained_labels(name_or_path: str) -> list[str] | None:
    """The labels of a classifier this module saved (``architectures`` and ``id2label``), else None."""
    from transformers import AutoConfig

    from adaptome.domains.protein.model import from_pretrained_checked

    cfg = from_pretrained_checked(AutoConfig, name_or_path)
    if CLASSIFIER_ARCH not in (cfg.architectures or []):
        return None
    return [cfg.id2label[i] for i in range(len(cfg.id2label))]


def load_classifier(name_or_path: str, labels: list[str], dtype: str = "float32"):
    """(``EsmForSequenceClassification`` with one output per label, its tokenizer). A head of another
    label set (or none, from a masked-LM checkpoint) starts new."""
    import torch
    from transformers import AutoTokenizer, EsmForSequenceClassification
    from transformers.utils import logging as hf_logging

    from adaptome.domains.protein.model import from_pretrained_checked, model_type

    kind = model_type(name_or_path)
    if kind != "esm":
        raise ProteinError(f"{name_or_path}: model type {kind!r}, not an ESM-style masked LM")
    keep_head = trained_labels(name_or_path) == list(labels)
    level = hf_logging.get_verbosity()
    if not keep_head:  # the head is new by design: transformers' report of its missing weights is no news
        hf_logging.set_verbosity_error()
    try:
        model = from_pretrained_checked(EsmForSequenceClassification, name_or_path, dtype=getattr(torch, dtype),
                                 num_labels=len(labels), id2label=dict(enumerate(labels)),
                                 label2id={lab: i for i, lab in enumerate(labels)},
                                 ignore_mismatched_sizes=not keep_head)
    finally:
        hf_logging.set_verbosity(level)
    return model, from_pretrained_checked(AutoTokenizer, name_or_path)


def position_crop(model, tok, max_residues: int) -> tuple[int, int | None]:
    """(residues kept per sequence, the model's ``max_position_embeddings`` when it rather than ``max_residues``
    sets that): a longer row would index past an absolute position table, or past what a rotary model was trained
    on. The residues a model reads at once are ``esm_mutations.residue_window``'s."""
    from adaptome.domains.protein.esm_mutations import residue_window

    fit = residue_window(model, tok)
    if fit is None:
        return max_residues, None
    limit = model.config.max_position_embeddings
    if fit < 1:
        raise ProteinError(f"the model's max_position_embeddings {limit} leaves no room for a residue")
    return (fit, limit) if fit < max_residues else (max_residues, None)


class _Encoded:
    """Map-style dataset of tokenized sequences (and label indices when given)."""

    def __init__(self, tok, seqs: list[str], targets: list[int] | None, max_residues: int):
        self.rows = [tok(s[:max_residues], add_special_tokens=True)["input_ids"] for s in seqs]
        self.targets = targets

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.rows[i]}
        if self.targets is not None:
            item["labels"] = self.targets[i]
        return item


class PadCollate:
    """Right-pads ``input_ids`` with the pad id; ``attention_mask`` marks the real tokens."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        import torch

        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(ids)  # (B, T)
        for j, it in enumerate(items):
            ids[j, :len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[j, :len(it["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)  # (B,)
        return batch


def records_digest(records: list[Record]) -> str:
    """SHA-256 over every (id, sequence, label): the training data's part of the run identity."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.id}\t{r.seq}\t{r.label}\n".encode())
    return h.hexdigest()


def train_classifier(name_or_path: str, records: list[Record], labels: list[str], cfg: EsmClassifyConfig,
                     overwrite: bool = False) -> dict[str, Any]:
    """Apply the adapter to a fresh classifier, train it with ``fit`` on labelled ``records``, save
    ``adapter/`` (and ``merged/``); a summary with the trained ``model`` and ``tokenizer``, and ``replaced``: the
    folders of an earlier classifier that ``overwrite`` replaced (with ``overwrite`` its checkpoints go too and
    training starts again; without it a stopped run on other data is refused by the resume check, naming
    ``esm_classify.data_sha256``)."""
    from adaptome.core.adapters.api import trainable_report
    from adaptome.core.adapters.from_scratch import apply_method, save_trained
    from adaptome.core.adapters.io import save_merged
    from adaptome.core.train.loop import fit

    unknown = sorted({r.label for r in records} - set(labels))
    if unknown:
        raise ProteinError(f"training labels not among the candidate labels: {unknown[:5]}")
    out = Path(cfg.train.output_dir)
    replaced = [str(out / sub) for sub in ("adapter", "merged") if (out / sub).exists()]
    if replaced and not overwrite:
        raise FileExistsError(f"{replaced[0]}: already exists; pass --overwrite to replace it")
    opts = dict(cfg.adapter.options)
    if "classifier" not in (opts.get("modules_to_save") or []):
        raise ProteinError("adapter.options.modules_to_save must hold 'classifier' (the new head has to train)")
    model, tok = load_classifier(name_or_path, labels, cfg.dtype)
    crop, limit = position_crop(model, tok, cfg.max_residues)
    model, _, _ = apply_method(model, cfg.adapter.method, opts)
    report = trainable_report(model)
    index = {lab: i for i, lab in enumerate(labels)}
    data = _Encoded(tok, [r.seq for r in records], [index[r.label] for r in records], crop)
    identity = {"esm_classify": {"model": name_or_path, "labels": list(labels), "max_residues": crop,
                                 "data_sha256": records_digest(records), "n_records": len(records)}}
    result = fit(model, data, collate_fn=PadCollate(tok.pad_token_id), identity=identity, start_again=overwrite,
                 **dataclasses.asdict(cfg.train))
    model = result.model.eval()
    save_trained(model, out / "adapter", overwrite=overwrite)
    summary: dict[str, Any] = {"steps": result.step, "trainable": report, "adapter": str(out / "adapter"),
                               "model": model, "tokenizer": tok, "max_residues": crop, "position_limit": limit,
                               "replaced": replaced}
    losses = [h["loss"] for h in result.history if "loss" in h]
    if result.first_loss is not None:  # step 1's and the last step's, also after a resume (fit keeps them)
        summary["first_loss"], summary["last_loss"] = result.first_loss, result.last_loss
    elif losses:  # a checkpoint of a version that kept none: this call's logging windows
        summary["first_loss"], summary["last_loss"] = losses[0], losses[-1]
    if cfg.merge:
        save_merged(model, out / "merged", tokenizer=tok, overwrite=overwrite)
        write_text_atomic(out / "merged" / CROP_FILE, json.dumps({"max_residues": crop}) + "\n")
        summary["merged"] = str(out / "merged")
    return summary


CROP_FILE = "esm_classify.json"  # beside a merged classifier: the crop it was trained with


def trained_max_residues(name_or_path: str) -> int | None:
    """The ``max_residues`` a classifier saved by ``train_classifier`` was trained with (``CROP_FILE`` in
    its folder), so that predicting with it later crops as training did; None for any other model."""
    path = Path(name_or_path) / CROP_FILE
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["max_residues"])
    except (ValueError, KeyError, TypeError):
        raise ProteinError(f"{path}: unreadable (expected {{\"max_residues\": N}})") from None


def predict(model, tok, seqs: list[str], labels: list[str], max_residues: int = 1022,
            batch_size: int = 32) -> list[dict]:
    """One dict per sequence: ``pred`` (argmax label) and ``probs`` (softmax over ``labels``)."""
    import torch

    device = next(model.parameters()).device
    data = _Encoded(tok, seqs, None, max_residues)
    collate = PadCollate(tok.pad_token_id)
    model.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(data), batch_size):
            batch = collate([data[i] for i in range(k, min(k + batch_size, len(data)))])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float()  # (B, C)
            if logits.shape[-1] != len(labels):
                raise ProteinError(f"the classifier has {logits.shape[-1]} outputs for {len(labels)} labels")
            probs = torch.softmax(logits, dim=-1)  # (B, C)
            for row in probs.tolist():
                best = max(range(len(labels)), key=row.__getitem__)
                out.append({"pred": labels[best], "probs": dict(zip(labels, row))})
    return out
