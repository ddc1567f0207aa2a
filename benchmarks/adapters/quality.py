"""Quality row: Pfam family classification (5 families, the shipped seed alignments) on a tiny
BERT first trained briefly by masked-LM on the shipped protein sequences (Pfam training split +
nrPDB-EC; the held-out Pfam sequences are not seen), then adapted with each method for the same
step budget with a linear head on the mean-pooled last hidden state (the head trains in every row).
Reported: test accuracy and macro-F1 over 3 seeds (the adapter init, head init and data order).
Everything goes through ``core.train.loop.fit`` with the methods' hooks and optimizers.
"""

from __future__ import annotations

import copy
import statistics
import tempfile

import torch
from torch import nn

from adaptome.core.adapters import api
from adaptome.core.evaluation import accuracy, macro_f1

AA = "ACDEFGHIKLMNPQRSTVWY"
PAD, MASK, UNK = 0, 1, 2
MAX_LEN = 128


def encode(seq: str) -> list[int]:
    return [AA.index(c) + 3 if c in AA else UNK for c in seq[:MAX_LEN]]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, (ids != PAD).long()


def data():
    from adaptome.domains.protein.data import ec_records, pfam_families, split_by_label

    recs = pfam_families(min_count=7, max_per_family=12, max_residues=MAX_LEN)
    train, test = split_by_label(recs, n_test=3, seed=0)
    labels = sorted({r.label for r in recs})
    test_ids = {r.id for r in test}
    from adaptome.domains.protein.data import pfam_families as all_pfam

    unlabeled = [r.seq for r in all_pfam(min_count=1, max_per_family=None, max_residues=MAX_LEN)
                 if r.id not in test_ids] + [r.seq for r in ec_records(max_residues=MAX_LEN)]
    return train, test, labels, unlabeled


def pretrain_mlm(unlabeled: list[str], steps: int, out_dir: str) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    from adaptome.core.train.loop import fit

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(AA) + 3, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=MAX_LEN + 2,
                                     pad_token_id=PAD))
    rows = [{"seq": s} for s in unlabeled]

    def collate(batch):
        ids, att = _pad([encode(b["seq"]) for b in batch])
        labels = ids.clone()
        g = torch.rand(ids.shape)
        chosen = (g < 0.15) & (ids != PAD)
        labels[~chosen] = -100
        ids = ids.masked_fill(chosen, MASK)
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

    fit(mlm, rows, collate_fn=collate, output_dir=out_dir, max_steps=steps, batch_size=16, lr=2e-3,
        schedule="linear", warmup_steps=10, progress=False, log_every=0, seed=0)
    return mlm.bert


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, n: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.config.hidden_size, n)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        return self.head((h * m).sum(1) / m.sum(1))  # (B, D) -> (B, C)


LR = 1e-2
#: (label, method, options, lr); adapters share one lr, full fine-tuning a smaller one
QUALITY = [
    ("head only (frozen encoder)", "head", {}, LR),
    ("full fine-tuning", "full", {}, 1e-3),
    ("peft lora r=8", "lora", {"r": 8, "lora_alpha": 16}, LR),
    ("dylora r=8", "dylora", {"r": 8, "lora_alpha": 16}, LR),
    ("dylora r=8, nested mode, lr 2e-3", "dylora", {"r": 8, "lora_alpha": 16, "mode": "nested"}, 2e-3),
    ("sora r=8", "sora", {"r": 8, "lora_alpha": 16}, LR),
    ("nola r=8, 64+64 bases", "nola", {"r": 8, "num_basis_a": 64, "num_basis_b": 64}, LR),
    ("loraxs r=8", "loraxs", {"r": 8}, LR),
    ("lorasb r=8", "lorasb", {"r": 8}, LR),
    ("lamda r=8", "lamda", {"r": 8, "lora_alpha": 16}, LR),
    ("allora r=8", "allora", {"r": 8}, LR),
    ("seq_bn (d/16)", "seq_bn", {"reduction_factor": 16}, LR),
    ("seq_bn_inv (d/16)", "seq_bn_inv", {"reduction_factor": 16}, LR),
]


def run_one(encoder, method, opts, lr, train, test, labels, seed, steps, out_dir) -> dict:
    from adaptome.core.train.loop import fit

    torch.manual_seed(seed)
    enc = copy.deepcopy(encoder)
    hooks, make_opt = [], None
    if method == "full":
        for p in enc.parameters():
            p.requires_grad_(True)
    elif method == "head":
        for p in enc.parameters():
            p.requires_grad_(False)
    else:
        enc = api.apply_adapter(enc, api.make_config(method, {"target_modules": "all-linear", **opts}))
    model = Classifier(enc, len(labels))
    model.encoder.config = encoder.config
    rows = [{"seq": r.seq, "y": labels.index(r.label)} for r in train]

    def collate(batch):
        ids, att = _pad([encode(b["seq"]) for b in batch])
        return {"input_ids": ids, "attention_mask": att, "y": torch.tensor([b["y"] for b in batch])}

    def loss_fn(m, b):
        return nn.functional.cross_entropy(m(b["input_ids"], b["attention_mask"]), b["y"])

    if method == "lorasb":
        from adaptome.core.adapters.lorasb import init_lorasb

        init_lorasb(enc, [collate(rows[i:i + 8]) for i in range(0, 24, 8)],
                    lambda e, b: loss_fn(model, b), step_size=lr)
    if method == "dylora":
        from adaptome.core.optim.dylora_rank import DyLoRARankSampler

        hooks.append(DyLoRARankSampler(seed=seed))
    if method == "sora":
        from adaptome.core.optim.sora_prox import SoraProximalStep, sora_param_groups

        hooks.append(SoraProximalStep(0.0, xi_max=1e-3, num_stages=3))
        make_opt = lambda m: torch.optim.AdamW(sora_param_groups(m, lr, 0.0), lr=lr)  # noqa: E731
    if method == "lamda":
        from adaptome.core.optim.lamda_freeze import LamdaFreezeB

        hooks.append(LamdaFreezeB(0.3, "paper"))
    if method == "allora":
        from adaptome.core.optim.allora import make_allora_optimizer

        make_opt = lambda m: make_allora_optimizer(m, lr, eta=1.0, mode="update")  # noqa: E731
    for p in model.head.parameters():
        p.requires_grad_(True)
    trainable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    fit(model, rows, loss_fn=loss_fn, collate_fn=collate, hooks=hooks, make_optimizer=make_opt,
        output_dir=out_dir, max_steps=steps, batch_size=8, lr=lr, schedule="constant", warmup_steps=0,
        progress=False, log_every=0, seed=seed, resume=False)
    if method == "dylora":
        from adaptome.core.adapters.dylora import set_rank

        set_rank(enc, 8)
    model.eval()
    with torch.no_grad():
        b = collate([{"seq": r.seq, "y": labels.index(r.label)} for r in test])
        pred = model(b["input_ids"], b["attention_mask"]).argmax(-1).tolist()
    gold = b["y"].tolist()
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred), "trainable_encoder": trainable}


def quality(seeds=(0, 1, 2), steps: int = 120, pretrain_steps: int = 300) -> dict:
    train, test, labels, unlabeled = data()
    with tempfile.TemporaryDirectory() as d:
        encoder = pretrain_mlm(unlabeled, pretrain_steps, f"{d}/mlm")
        rows = []
        for label, method, opts, lr in QUALITY:
            runs = [run_one(encoder, method, opts, lr, train, test, labels, s, steps, f"{d}/{method}-{lr}-{s}")
                    for s in seeds]
            acc = [r["accuracy"] for r in runs]
            f1 = [r["macro_f1"] for r in runs]
            rows.append({"method": label, "name": method, "lr": lr, "acc_mean": statistics.mean(acc),
                         "acc_std": statistics.pstdev(acc), "f1_mean": statistics.mean(f1),
                         "f1_std": statistics.pstdev(f1), "acc_per_seed": acc,
                         "trainable_encoder": runs[0]["trainable_encoder"]})
    return {"task": "Pfam family (5 classes)", "n_train": len(train), "n_test": len(test), "steps": steps,
            "pretrain_steps": pretrain_steps, "rows": rows}
