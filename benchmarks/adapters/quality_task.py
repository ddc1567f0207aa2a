"""The adapter-quality benchmark's task and encoder (``quality.py``): Pfam family windows of the shipped seed
alignments, their stratified folds grouped by sequence and the selection folds, and the tiny BERT pretrained by
masked-LM on shipped sequences that are never task sequences, cached by every setting it depends on.

See ``quality.py``'s docstring for the protocol. Not covered: other tasks or encoders.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
#: the pretrained encoder is cached here (ignored by git), one folder per settings key
CACHE = HERE / "out" / "quality_cache"
AA = "ACDEFGHIKLMNPQRSTVWY"
PAD, MASK, UNK = 0, 1, 2
WINDOW = 64  # residues per example (tiles of the Pfam domains; random crops for the MLM)
MIN_FAMILY = 7  # families with fewer sequences cannot fill 3 folds: they go to the MLM corpus
FAMILY_CAP = 60  # windows per family, beyond the first tile of every sequence
FOLDS = 3
SELECT_FOLDS = 3  # inner grouped folds of fold 0's training part: every grid point is trained once per inner fold
ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
PRETRAIN_STEPS = 1500
PRETRAIN_BATCH = 32
PRETRAIN_LR = 1e-3
PRETRAIN_WARMUP = 100
#: the encoder's pretraining corpus (``use_corpus``): "disjoint", shipped sequences that are never task sequences
#: (the default), or "transductive", those plus every task sequence without its label, pretrained for
#: ``TRANSDUCTIVE_STEPS`` (as a protein LM pretrained on UniRef has seen the Pfam seeds it is later tuned on)
CORPUS = "disjoint"
CORPORA = ("disjoint", "transductive")
TRANSDUCTIVE_STEPS = 6000


def encode(seq: str) -> list[int]:
    return [AA.index(c) + 3 if c in AA else UNK for c in seq[:WINDOW]]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, (ids != PAD).long()


# -- data -----------------------------------------------------------------------------------------
def tiles(seq: str, width: int) -> list[tuple[int, str]]:
    """(start, window) tiles of ``seq``: every ``width`` residues from 0, plus one ending at the last residue
    when the length is not a multiple of ``width`` (it overlaps the previous tile); a shorter sequence is one tile."""
    if len(seq) <= width:
        return [(0, seq)]
    starts = list(range(0, len(seq) - width + 1, width))
    if starts[-1] != len(seq) - width:
        starts.append(len(seq) - width)
    return [(s, seq[s: s + width]) for s in starts]


def _windows(members: list, cap: int) -> list:
    """A family's windows: the first tile of every sequence, then the second tile of every sequence, ...
    until the family has ``cap`` windows (every sequence keeps at least its first tile)."""
    from adaptome.domains.protein.formats import Record

    per_seq = [[Record(f"{r.id}@{s}", w, r.label) for s, w in tiles(r.seq, WINDOW)] for r in members]
    out: list = []
    for t in range(max(len(p) for p in per_seq)):
        if t > 0 and len(out) >= cap:
            break
        for p in per_seq:
            if t < len(p) and (t == 0 or len(out) < cap):
                out.append(p[t])
    return out


def data() -> dict:
    """Labelled windows, stratified folds grouped by sequence, the selection folds (``SELECT_FOLDS`` stratified
    folds grouped by sequence of fold 0's training part: (train, validation) pairs), and the MLM corpus (no
    sequence of a task family)."""
    from adaptome.domains.protein.data import ec_records, pfam_families

    seqs = pfam_families(min_count=MIN_FAMILY, max_per_family=None)
    labels = sorted({r.label for r in seqs})
    rng = random.Random(0)
    fold_of: dict[str, int] = {}  # sequence id -> fold
    recs, seq_of = [], {}
    for label in labels:
        members = sorted((r for r in seqs if r.label == label), key=lambda r: r.id)
        rng.shuffle(members)
        for i, r in enumerate(members):
            fold_of[r.id] = i % FOLDS
        for w in _windows(members, FAMILY_CAP):
            recs.append(w)
            seq_of[w.id] = w.id.rsplit("@", 1)[0]
    small = [r.seq for r in pfam_families(min_count=1, max_per_family=None) if r.label not in labels]
    unlabeled = small + [r.seq for r in ec_records()]
    label_of = {seq_of[r.id]: r.label for r in recs}
    train0 = sorted({seq_of[r.id] for r in recs if fold_of[seq_of[r.id]] != 0})
    inner: dict[str, int] = {}  # fold 0's training sequences -> selection fold, stratified by family
    inner_rng = random.Random(1)
    for label in labels:
        members = [s for s in train0 if label_of[s] == label]
        inner_rng.shuffle(members)
        for i, s in enumerate(members):
            inner[s] = i % SELECT_FOLDS
    win_fold = {r.id: fold_of[seq_of[r.id]] for r in recs}
    sel = [r for r in recs if win_fold[r.id] != 0]
    select = [([r for r in sel if inner[seq_of[r.id]] != j], [r for r in sel if inner[seq_of[r.id]] == j])
              for j in range(SELECT_FOLDS)]
    return {"records": recs, "labels": labels, "fold_of": win_fold, "unlabeled": unlabeled,
            "task_sequences": sorted({r.seq for r in seqs}),
            "n_sequences": len(seqs), "n_small_pfam": len(small),
            "unlabeled_residues": sum(len(s) for s in unlabeled), "select": select,
            "n_select_sequences": len(train0)}


def folds(d: dict) -> list[tuple[list, list]]:
    return [([r for r in d["records"] if d["fold_of"][r.id] != k], [r for r in d["records"] if d["fold_of"][r.id] == k])
            for k in range(FOLDS)]


# -- models ---------------------------------------------------------------------------------------
def use_corpus(kind: str) -> None:
    """Set the encoder's pretraining corpus (``CORPUS``) and its steps: 1500 for "disjoint",
    ``TRANSDUCTIVE_STEPS`` for "transductive"."""
    global CORPUS, PRETRAIN_STEPS
    if kind not in CORPORA:
        raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, not {kind!r}")
    CORPUS, PRETRAIN_STEPS = kind, (1500 if kind == "disjoint" else TRANSDUCTIVE_STEPS)


def pretrain_corpus(d: dict) -> list[str]:
    """The sequences the encoder is pretrained on under ``CORPUS`` (``d``: ``data()``)."""
    return d["unlabeled"] + (d["task_sequences"] if CORPUS == "transductive" else [])


def pretrain_warmup() -> int:
    return min(PRETRAIN_WARMUP, PRETRAIN_STEPS // 10)


def encoder_settings(unlabeled: list[str]) -> dict:
    """Everything the pretrained encoder depends on (its cache key)."""
    import hashlib

    corpus = hashlib.sha256("\n".join(unlabeled).encode()).hexdigest()
    return {"encoder": ENCODER, "steps": PRETRAIN_STEPS, "batch": PRETRAIN_BATCH, "lr": PRETRAIN_LR,
            "warmup": pretrain_warmup(), "window": WINDOW, "mask": 0.15, "seed": 0, "corpus_sha256": corpus,
            "torch": torch.__version__}


def pretrain_mlm(unlabeled: list[str], out_dir: str, acc) -> nn.Module:
    """A BERT trained by masked-LM on random ``WINDOW``-residue crops of ``unlabeled`` (15 % masked)."""
    from transformers import BertConfig, BertForMaskedLM

    from adaptome.core.train.loop import fit

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(AA) + 3, max_position_embeddings=WINDOW + 2, pad_token_id=PAD,
                                     **ENCODER))
    rows = [{"seq": s} for s in unlabeled]
    crop_rng = random.Random(0)

    def collate(batch):
        crops = []
        for b in batch:
            start = crop_rng.randint(0, max(0, len(b["seq"]) - WINDOW))
            crops.append(encode(b["seq"][start: start + WINDOW]))
        ids, att = _pad(crops)
        labels = ids.clone()
        chosen = (torch.rand(ids.shape) < 0.15) & (ids != PAD)
        labels[~chosen] = -100
        return {"input_ids": ids.masked_fill(chosen, MASK), "attention_mask": att, "labels": labels}

    res = fit(mlm, rows, collate_fn=collate, accelerator=acc, output_dir=out_dir, max_steps=PRETRAIN_STEPS,
              batch_size=PRETRAIN_BATCH, lr=PRETRAIN_LR, schedule="linear", warmup_steps=pretrain_warmup(),
              progress=False, log_every=max(1, PRETRAIN_STEPS // 10), save_every=0, seed=0)
    mlm.bert.mlm_losses = [h["loss"] for h in res.history if "loss" in h]
    return mlm.bert


def unigram_entropy(seqs: list[str]) -> float:
    """Entropy (nats) of the corpus' residue frequencies: the MLM loss of a model that ignores context."""
    import math
    from collections import Counter

    c = Counter("".join(seqs))
    n = sum(c.values())
    return -sum(v / n * math.log(v / n) for v in c.values())


def cached_encoder(unlabeled: list[str], acc) -> tuple[nn.Module, dict]:
    """The pretrained encoder from ``CACHE`` (keyed by its settings), pretraining it on a miss."""
    import hashlib

    from transformers import BertModel

    from adaptome.core.atomic import atomic_dir

    settings = encoder_settings(unlabeled)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    where = CACHE / f"encoder-{key}"
    if (where / "settings.json").is_file():
        info = json.loads((where / "settings.json").read_text(encoding="utf-8"))
        return BertModel.from_pretrained(where, add_pooling_layer=False), {**info, "cached": True, "key": key}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        enc = pretrain_mlm(unlabeled, tmp, acc)
    info = {"settings": settings, "seconds": time.time() - t0, "mlm_losses": enc.mlm_losses}
    with atomic_dir(where, overwrite=True) as tmp_dir:
        enc.save_pretrained(tmp_dir)
        (tmp_dir / "settings.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return BertModel.from_pretrained(where, add_pooling_layer=False), {**info, "cached": False, "key": key}
