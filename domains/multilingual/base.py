"""The base encoder: loaded by hub id or path, or a tiny one pretrained here from scratch.

A real user names ``xlm-roberta-base`` or ``bert-base-multilingual-cased`` (or a local folder)
and ``load_base`` reads it with ``AutoTokenizer`` / ``AutoModelForMaskedLM`` (or the task's
``AutoModelFor...`` class): its own tokenizer is used. Nothing can be downloaded on these
machines, so ``pretrain_tiny_base`` trains a subword tokenizer with the ``tokenizers`` library
(Unigram for the XLM-R architecture, as XLM-R's SentencePiece model; WordPiece for BERT), builds a
small XLM-R or BERT masked LM from its config, pretrains it by MLM through ``core.train.loop.fit``
on the given text files of all languages, and saves both as an ordinary transformers folder, which
``load_base`` then reads through the same code path as a hub model.

Not covered: SentencePiece ``.model`` files (the tokenizer is saved as ``tokenizer.json``), models
without a masked-LM head, sharded checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from adaptome.core.errors import AdaptomeError
from adaptome.domains.multilingual.readers import read_text


class BaseModelError(AdaptomeError, ValueError):
    """A base model folder or hub id that cannot be loaded."""


@dataclass
class TinyBaseConfig:
    """A tiny multilingual masked LM pretrained here.

    Args:
        arch: ``xlm-roberta`` (Unigram tokenizer, ``<s>``/``</s>``) or ``bert`` (WordPiece,
            ``[CLS]``/``[SEP]``).
        vocab_size: subword vocabulary size the tokenizer trainer aims for.
        hidden_size: model width d.
        num_layers: transformer layers.
        num_heads: attention heads.
        intermediate_size: FFN width.
        max_length: longest tokenized input (positions are sized from it).
        steps: MLM pretraining steps.
        batch_size: sentences per step.
        lr: peak AdamW learning rate (linear warmup over 10 % of the steps, then linear decay).
        mlm_probability: share of tokens masked.
        seed: seeds the tokenizer-independent parts (weights, masking, data order).
    """

    arch: Literal["xlm-roberta", "bert"] = "xlm-roberta"
    vocab_size: int = 2000
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_length: int = 128
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    mlm_probability: float = 0.15
    seed: int = 0


def train_tokenizer(files: list[str | os.PathLike], arch: str, vocab_size: int, max_length: int):
    """A fast tokenizer trained on ``files`` (Unigram + Metaspace for XLM-R, WordPiece for BERT), on their lines as
    ``read_text`` gives them: a byte-order mark, CRLF line ends and blank lines add nothing to the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [ln for f in files for ln in read_text(f)]
    if arch == "xlm-roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's order: <s>=0, <pad>=1, </s>=2
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                               unk_token="<unk>"), length=len(lines))
        cls, sep = "<s>", "</s>"
        kw = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                  cls_token="<s>", sep_token="</s>")
        pair = f"{cls} $A {sep} {sep} $B {sep}"
    elif arch == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials),
                                length=len(lines))
        cls, sep = "[CLS]", "[SEP]"
        kw = dict(unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]")
        pair = f"{cls} $A {sep} $B {sep}"
    else:
        raise BaseModelError(f"unknown tiny-base architecture {arch!r}; choose xlm-roberta or bert")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair,
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **kw)


def build_tiny_mlm(cfg: TinyBaseConfig, tokenizer):
    """A randomly initialised XLM-R or BERT masked LM sized by ``cfg`` (weights from the global RNG)."""
    from transformers import BertConfig, BertForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM

    common = dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                  pad_token_id=tokenizer.pad_token_id)
    if cfg.arch == "xlm-roberta":  # positions start after the padding index, as in XLM-R
        mcfg = XLMRobertaConfig(max_position_embeddings=cfg.max_length + tokenizer.pad_token_id + 1,
                                bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **common)
        return XLMRobertaForMaskedLM(mcfg)
    return BertForMaskedLM(BertConfig(max_position_embeddings=cfg.max_length, **common))


def pretrain_tiny_base(text_files: list[str | os.PathLike], out_dir: str | os.PathLike, cfg: TinyBaseConfig,
                       overwrite: bool = False, progress: bool = False) -> dict:
    """Train the tokenizer and the tiny MLM on ``text_files``; save both to ``out_dir`` (atomically)."""
    from adaptome.core.atomic import atomic_dir
    from adaptome.core.train.loop import fit, seed_everything
    from adaptome.domains.multilingual.mlm import MaskingCollator, TextDataset

    lines = [ln for f in text_files for ln in read_text(f)]
    tokenizer = train_tokenizer(text_files, cfg.arch, cfg.vocab_size, cfg.max_length)
    seed_everything(cfg.seed)
    model = build_tiny_mlm(cfg, tokenizer)
    data = TextDataset(lines, tokenizer, cfg.max_length)
    collate = MaskingCollator(tokenizer, cfg.mlm_probability)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        res = fit(model, data, collate_fn=collate, output_dir=Path(tmp) / "_run", max_steps=cfg.steps,
                  batch_size=min(cfg.batch_size, len(data)), lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10),
                  log_every=max(1, cfg.steps // 5), seed=cfg.seed, progress=progress, resume=False)
        res.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        losses = [h["loss"] for h in res.history if "loss" in h]
        summary = {"config": asdict(cfg), "text_files": [Path(f).name for f in text_files], "sentences": len(lines),
                   "parameters": sum(p.numel() for p in res.model.parameters()), "loss_first": losses[0],
                   "loss_last": losses[-1]}
        (Path(tmp) / "pretraining.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        shutil.rmtree(Path(tmp) / "_run", ignore_errors=True)
    return summary


#: files whose bytes define a local base: weights and tokenizer (the rest is derived or cosmetic)
_FINGERPRINTED = ("*.safetensors", "*.bin", "tokenizer.json", "*.model", "vocab.txt", "config.json")


def resolve_base(name_or_path: str) -> str:
    """A local folder as an absolute path (so a run can be reloaded from another directory); a hub id unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


def base_fingerprint(name_or_path: str) -> str:
    """SHA-256 over the weight, tokenizer and config files of a local base folder (``sha256:...``), or
    ``hub:<id>`` for a hub id. Adapters and task runs record it, so an adapter is never combined with,
    or reloaded onto, another base than the one it was trained on (a re-pretrained folder of the same
    name included)."""
    import hashlib

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return f"hub:{name_or_path}"
    files = sorted({f for pattern in _FINGERPRINTED for f in path.glob(pattern) if f.is_file()})
    if not files:
        raise BaseModelError(f"{path}: no model weights or tokenizer files in this folder")
    total = hashlib.sha256()
    for f in files:
        digest = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        total.update(f"{f.name}:{digest.hexdigest()}\n".encode())
    return "sha256:" + total.hexdigest()


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise BaseModelError(f"{name_or_path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if not getattr(tok, "is_fast", False):
        raise BaseModelError(f"{name_or_path}: a fast tokenizer is needed (word alignment for NER)")
    if tok.mask_token_id is None:
        raise BaseModelError(f"{name_or_path}: the tokenizer has no mask token; a masked LM is needed")
    return tok


def load_base(name_or_path: str, head: str | None = "mlm"):
    """``(tokenizer, AutoModelForMaskedLM)`` for a hub id or a local folder (``head=None``: the
    tokenizer only, model None)."""
    from transformers import AutoModelForMaskedLM

    tok = load_tokenizer(name_or_path)
    if head is None:
        return tok, None
    if head != "mlm":
        raise ValueError(f"unknown head {head!r}; the base is loaded as a masked LM ('mlm')")
    return tok, _load(AutoModelForMaskedLM, name_or_path)


def load_encoder(name_or_path: str):
    """The base's encoder alone (``AutoModel``, no pooler), for task models."""
    from transformers import AutoModel

    return _load(AutoModel, name_or_path, add_pooling_layer=False)


def _load(cls, name_or_path: str, **kwargs):
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the MLM head an encoder leaves out
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise BaseModelError(f"{name_or_path}: cannot load a model ({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(level)
