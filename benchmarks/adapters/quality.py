"""Adapter quality, fairly: Pfam family classification on the shipped seed alignments.

Set-up (every number below is written into results_quality.json and the sentences of
results_quality.md are computed from it):

* data: the Pfam families of ``domains/protein/data/pfam`` with at least ``MIN_FAMILY`` members,
  every sequence cropped to ``MAX_LEN`` residues. Stratified ``FOLDS``-fold cross-validation: every
  sequence is a test sequence exactly once, so the pooled test set is every sequence of those
  families. Learning rates are chosen on a validation split carved out of fold 0's training part.
* encoder: a tiny BERT trained by masked-LM on shipped protein sequences that are never test
  sequences (nrPDB-EC and the Pfam families too small for the task); frozen base for every row.
* each row trains an adapter (or nothing, or everything) plus a linear head on the mean-pooled last
  hidden state, through ``core.train.loop.fit``, which attaches each method's own training
  behaviour (DyLoRA's rank sampling, SoRA's proximal step and gate group, LaMDA's freezing, ALLoRA's
  rate, LoRA-SB's gradient init). Separate learning rates: the head's is ``HEAD_LR`` (the head-only
  row tunes it), the adapter's is chosen from the row's grid on the validation split (seed 0).
* DyLoRA is trained once and scored at every rank 1..r; LoRA is trained at each of those ranks with
  the same alpha (so its scale alpha / k equals DyLoRA's at rank k) at LoRA's chosen learning rate.
* SoRA's lambda is set from the learning rate so that the soft threshold removes ``SORA_SHRINK``
  in total over the run (lambda = SORA_SHRINK / (lr * steps)); its final non-zero gates and the
  parameters of the pruned adapter are reported.
* baselines on the same folds: the majority class, and logistic regression on amino-acid
  composition (scikit-learn, C = 100, balanced class weights).
* the training loss is cross-entropy weighted by inverse class frequency (the largest family has
  most of the sequences), so macro-F1 is the metric that separates the rows; both are reported.
Mean +- sd over ``SEEDS`` seeds (adapter and head init, data order) of the pooled test accuracy and
macro-F1.

Run from the repository root: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality``
(about 15-25 minutes on 2 shared CPU cores: ``WORKERS`` processes of one thread each, because a loaded
machine makes torch's thread pool spin).
Not covered: a real-size encoder (the ranking of methods on a tiny model need not transfer), GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import platform
import random
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from adaptome.core.adapters import api
from adaptome.core.evaluation import accuracy, macro_f1

HERE = Path(__file__).resolve().parent
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality"
AA = "ACDEFGHIKLMNPQRSTVWY"
PAD, MASK, UNK = 0, 1, 2
MAX_LEN = 64
MIN_FAMILY = 7
FOLDS = 3
SEEDS = (0, 1, 2)
STEPS = 60
BATCH = 8
HEAD_LR = 1e-2
PRETRAIN_STEPS = 200
SORA_SHRINK = 0.8
WORKERS = 2
RANK = 4
ALPHA = 16.0
ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
LORA_GRID = (1e-3, 3e-3, 1e-2)
#: (row label, method, options, adapter learning-rate grid)
ROWS = [
    ("head only (frozen encoder)", "head", {}, (3e-3, 1e-2, 3e-2)),
    ("full fine-tuning", "full", {}, (3e-4, 1e-3, 3e-3)),
    (f"lora r={RANK}", "lora", {"r": RANK, "lora_alpha": ALPHA}, LORA_GRID),
    (f"dylora r={RANK}", "dylora", {"r": RANK, "lora_alpha": ALPHA}, (5e-4, 1e-3, 3e-3)),
    (f"sora r={RANK}", "sora", {"r": RANK, "lora_alpha": ALPHA}, LORA_GRID),
    (f"nola r={RANK}, 32+32 bases", "nola", {"r": RANK, "num_basis_a": 32, "num_basis_b": 32}, LORA_GRID),
    (f"loraxs r={RANK}", "loraxs", {"r": RANK}, (3e-3, 1e-2, 3e-2)),
    (f"lorasb r={RANK}", "lorasb", {"r": RANK}, (3e-3, 1e-2, 3e-2)),
    (f"lamda r={RANK}", "lamda", {"r": RANK, "lora_alpha": ALPHA}, (3e-3, 1e-2, 3e-2)),
    (f"allora r={RANK}", "allora", {"r": RANK}, LORA_GRID),
    ("seq_bn (d/16)", "seq_bn", {"reduction_factor": 16}, LORA_GRID),
    ("seq_bn_inv (d/16)", "seq_bn_inv", {"reduction_factor": 16}, LORA_GRID),
]


def encode(seq: str) -> list[int]:
    return [AA.index(c) + 3 if c in AA else UNK for c in seq[:MAX_LEN]]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, (ids != PAD).long()


# -- data -----------------------------------------------------------------------------------------
def data() -> dict:
    """Labelled records, stratified folds, the validation split, and the MLM corpus (no test sequence)."""
    from adaptome.domains.protein.data import ec_records, pfam_families

    recs = pfam_families(min_count=MIN_FAMILY, max_per_family=None, max_residues=MAX_LEN)
    labels = sorted({r.label for r in recs})
    rng = random.Random(0)
    fold_of: dict[str, int] = {}
    for label in labels:
        members = sorted((r for r in recs if r.label == label), key=lambda r: r.id)
        rng.shuffle(members)
        for i, r in enumerate(members):
            fold_of[r.id] = i % FOLDS
    small = [r.seq for r in pfam_families(min_count=1, max_per_family=None, max_residues=MAX_LEN)
             if r.label not in labels]
    unlabeled = small + [r.seq for r in ec_records(max_residues=MAX_LEN)]
    train0 = [r for r in recs if fold_of[r.id] != 0]
    val_ids = set()
    for label in labels:  # a stratified fifth of fold 0's training part (at least one per family)
        members = [r for r in train0 if r.label == label]
        val_ids.update(r.id for r in members[: max(1, len(members) // 5)])
    return {"records": recs, "labels": labels, "fold_of": fold_of, "unlabeled": unlabeled,
            "n_small_pfam": len(small), "select_train": [r for r in train0 if r.id not in val_ids],
            "select_val": [r for r in train0 if r.id in val_ids]}


def folds(d: dict) -> list[tuple[list, list]]:
    return [([r for r in d["records"] if d["fold_of"][r.id] != k], [r for r in d["records"] if d["fold_of"][r.id] == k])
            for k in range(FOLDS)]


# -- models ---------------------------------------------------------------------------------------
def pretrain_mlm(unlabeled: list[str], out_dir: str, acc) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    from adaptome.core.train.loop import fit

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(AA) + 3, max_position_embeddings=MAX_LEN + 2, pad_token_id=PAD,
                                     **ENCODER))
    rows = [{"seq": s} for s in unlabeled]

    def collate(batch):
        ids, att = _pad([encode(b["seq"]) for b in batch])
        labels = ids.clone()
        chosen = (torch.rand(ids.shape) < 0.15) & (ids != PAD)
        labels[~chosen] = -100
        return {"input_ids": ids.masked_fill(chosen, MASK), "attention_mask": att, "labels": labels}

    fit(mlm, rows, collate_fn=collate, accelerator=acc, output_dir=out_dir, max_steps=PRETRAIN_STEPS, batch_size=16,
        lr=2e-3, schedule="linear", warmup_steps=10, progress=False, log_every=0, seed=0)
    return mlm.bert


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, n: int, hidden: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(hidden, n)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        return self.head((h * m).sum(1) / m.sum(1))  # (B, D) -> (B, C)


def _collate(batch):
    ids, att = _pad([encode(b["seq"]) for b in batch])
    return {"input_ids": ids, "attention_mask": att, "y": torch.tensor([b["y"] for b in batch])}


def _loss_fn(weights: torch.Tensor):
    """Class-weighted cross-entropy (weights ~ 1 / class frequency): the minority families count."""
    def loss(m, b):
        return nn.functional.cross_entropy(m(b["input_ids"], b["attention_mask"]), b["y"], weight=weights)

    return loss


def _predict(model, recs, labels) -> list[int]:
    model.eval()
    with torch.no_grad():
        b = _collate([{"seq": r.seq, "y": labels.index(r.label)} for r in recs])
        return model(b["input_ids"], b["attention_mask"]).argmax(-1).tolist()


def train_one(encoder, method: str, opts: dict, lr: float, head_lr: float, train, labels, seed: int, out_dir: str,
              acc) -> tuple[nn.Module, nn.Module, dict]:
    """(classifier, adapted encoder, facts) after STEPS steps of ``method`` on ``train``."""
    from adaptome.core.train.loop import fit
    from adaptome.core.train.method_training import collect

    torch.manual_seed(seed)
    enc = copy.deepcopy(encoder)
    if method in ("full", "head"):
        for p in enc.parameters():
            p.requires_grad_(method == "full")
    else:
        if method == "sora":
            opts = {**opts, "sparse_lambda": SORA_SHRINK / (lr * STEPS)}
        enc = api.apply_adapter(enc, api.make_config(method, {"target_modules": "all-linear", **opts}))
    model = Classifier(enc, len(labels), encoder.config.hidden_size)
    rows = [{"seq": r.seq, "y": labels.index(r.label)} for r in train]
    counts = torch.bincount(torch.tensor([r["y"] for r in rows]), minlength=len(labels)).float()
    weights = counts.sum() / (len(labels) * counts.clamp(min=1))  # (C,)
    trainable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    adapter_lr = lr if method != "head" else head_lr

    def make(m):
        head = {id(p) for p in m.head.parameters()}
        groups = []
        for g in collect(m).optimizer_groups(m, 0.0):  # the adapter (default group) and the methods' groups
            params = [p for p in g["params"] if id(p) not in head]
            if params:
                groups.append({**g, "params": params})
        groups.append({"params": list(m.head.parameters()), "lr": head_lr, "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=adapter_lr, weight_decay=0.0)

    fit(model, rows, loss_fn=_loss_fn(weights), collate_fn=_collate, make_optimizer=make, accelerator=acc,
        output_dir=out_dir,
        max_steps=STEPS, batch_size=BATCH, lr=adapter_lr, schedule="constant", warmup_steps=0, progress=False,
        log_every=0, seed=seed, resume=False)
    facts: dict = {"trainable_encoder": trainable}
    if method == "sora":
        from adaptome.core.adapters.sora import sora_layers

        kept = total = params = 0
        for _, layer in sora_layers(enc):
            k = int((layer.sora_gate["default"] != 0).sum())
            kept, total = kept + k, total + layer.sora_gate["default"].numel()
            params += k * (layer.in_features + layer.out_features) + k
        facts.update(kept_gates=kept, total_gates=total, pruned_params=params,
                     sparse_lambda=SORA_SHRINK / (lr * STEPS))
    return model, enc, facts


# -- baselines ------------------------------------------------------------------------------------
def baselines(d: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    labels = d["labels"]

    def comp(seq: str) -> list[float]:
        return [seq.count(a) / max(1, len(seq)) for a in AA]

    gold, maj, lr_pred = [], [], []
    for train, test in folds(d):
        ys = [labels.index(r.label) for r in train]
        top = max(set(ys), key=ys.count)
        clf = LogisticRegression(C=100.0, class_weight="balanced", max_iter=5000).fit([comp(r.seq) for r in train],
                                                                                       ys)
        gold += [labels.index(r.label) for r in test]
        maj += [top] * len(test)
        lr_pred += clf.predict([comp(r.seq) for r in test]).tolist()
    return {"majority": {"accuracy": accuracy(gold, maj), "macro_f1": macro_f1(gold, maj)},
            "composition_logreg": {"accuracy": accuracy(gold, lr_pred), "macro_f1": macro_f1(gold, lr_pred)}}


# -- protocol -------------------------------------------------------------------------------------
def _score(gold, pred) -> dict:
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred)}


def _summary(per_seed: list[dict]) -> dict:
    out = {}
    for k in ("accuracy", "macro_f1"):
        vals = [s[k] for s in per_seed]
        out[k] = {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                  "per_seed": vals}
    return out


def select_lr(encoder, d, method, opts, grid, tmp, acc) -> dict:
    labels, scores = d["labels"], {}
    gold = [labels.index(r.label) for r in d["select_val"]]
    for lr in grid:
        head_lr = lr if method == "head" else HEAD_LR
        model, _, _ = train_one(encoder, method, opts, lr, head_lr, d["select_train"], labels, 0,
                                f"{tmp}/sel-{method}-{lr}", acc)
        scores[lr] = _score(gold, _predict(model, d["select_val"], labels))
    best = max(grid, key=lambda lr: (scores[lr]["macro_f1"], scores[lr]["accuracy"], -lr))
    return {"grid": list(grid), "val": {str(k): v for k, v in scores.items()}, "chosen": best}


def evaluate_row(encoder, d, method, opts, lr, tmp, acc, ranks: list[int] | None = None) -> dict:
    """Pooled test predictions over the folds, per seed; DyLoRA also at every rank in ``ranks``."""
    labels = d["labels"]
    head_lr = lr if method == "head" else HEAD_LR
    per_seed, per_rank, facts_all = [], {k: [] for k in ranks or []}, []
    for seed in SEEDS:
        gold, pred, by_rank, facts_seed = [], [], {k: [] for k in ranks or []}, []
        for f, (train, test) in enumerate(folds(d)):
            model, enc, facts = train_one(encoder, method, opts, lr, head_lr, train, labels, seed,
                                          f"{tmp}/{method}-{opts.get('r', '')}-{seed}-{f}", acc)
            gold += [labels.index(r.label) for r in test]
            pred += _predict(model, test, labels)
            facts_seed.append(facts)
            if ranks:
                from adaptome.core.adapters.dylora import set_rank

                for k in ranks:
                    set_rank(enc, k)
                    by_rank[k] += _predict(model, test, labels)
                set_rank(enc, max(ranks))
        per_seed.append(_score(gold, pred))
        for k in by_rank:
            per_rank[k].append(_score(gold, by_rank[k]))
        facts_all.append(facts_seed)
    out = {"lr": lr, "head_lr": head_lr, **_summary(per_seed),
           "trainable_encoder": facts_all[0][0]["trainable_encoder"]}
    if method == "sora":
        kept = [sum(f["kept_gates"] for f in fs) for fs in facts_all]
        total = sum(f["total_gates"] for f in facts_all[0])
        out["sora"] = {"kept_gates_per_seed": kept, "gates_per_seed": total,
                       "kept_fraction_mean": statistics.mean(kept) / total,
                       "pruned_params_mean": statistics.mean(f["pruned_params"] for fs in facts_all for f in fs),
                       "sparse_lambda": facts_all[0][0]["sparse_lambda"]}
    if ranks:
        out["by_rank"] = {str(k): _summary(v) for k, v in per_rank.items()}
    return out


def _worker_setup():
    from adaptome.core.train.loop import make_accelerator

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    return make_accelerator("no", cpu=True)


def _row_job(encoder, d, label, method, opts, grid, tmp) -> dict:
    t0 = time.time()
    acc = _worker_setup()
    sel = select_lr(encoder, d, method, opts, grid, tmp, acc)
    ranks = list(range(1, RANK + 1)) if method == "dylora" else None
    row = evaluate_row(encoder, d, method, opts, sel["chosen"], tmp, acc, ranks)
    print(f"{label}: lr {sel['chosen']:g} of {grid}, accuracy {row['accuracy']['mean']:.3f}, "
          f"macro-F1 {row['macro_f1']['mean']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return {"label": label, "method": method, "options": opts, "selection": sel, **row}


def _rank_job(encoder, d, k, lr, tmp) -> dict:
    t0 = time.time()
    row = evaluate_row(encoder, d, "lora", {"r": k, "lora_alpha": ALPHA}, lr, tmp, _worker_setup())
    print(f"lora r={k}: accuracy {row['accuracy']['mean']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return row


def environment() -> dict:
    import importlib.metadata as md

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=HERE,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    pkgs = {p: md.version(p) for p in ("torch", "transformers", "peft", "accelerate", "scikit-learn", "numpy")}
    return {"git_commit": commit, "git_dirty": dirty, "packages": pkgs, "platform": platform.platform(),
            "threads": torch.get_num_threads()}


def run() -> dict:
    from adaptome.core.train.loop import make_accelerator

    t0 = time.time()
    torch.set_num_threads(1)
    acc = make_accelerator("no", cpu=True)
    d = data()
    res: dict = {"command": COMMAND, "env": environment(),
                 "setup": {"families": d["labels"], "n_sequences": len(d["records"]), "folds": FOLDS,
                           "seeds": list(SEEDS), "steps": STEPS, "batch": BATCH, "head_lr": HEAD_LR,
                           "max_len": MAX_LEN, "min_family": MIN_FAMILY, "encoder": ENCODER, "rank": RANK,
                           "alpha": ALPHA, "pretrain_steps": PRETRAIN_STEPS, "n_unlabeled": len(d["unlabeled"]),
                           "n_small_pfam": d["n_small_pfam"], "sora_shrink": SORA_SHRINK,
                           "n_select_train": len(d["select_train"]), "n_select_val": len(d["select_val"]),
                           "class_counts": {lab: sum(r.label == lab for r in d["records"]) for lab in d["labels"]}},
                 "baselines": baselines(d), "rows": [], "lora_by_rank": {}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        encoder = pretrain_mlm(d["unlabeled"], f"{tmp}/mlm", acc)
        for p in encoder.parameters():
            p.requires_grad_(False)
        # rows are independent: WORKERS processes (one thread each) run them; the order of results is ROWS'
        ctx = multiprocessing.get_context("fork")  # workers inherit the settings (and --smoke)
        with ctx.Pool(WORKERS) as pool:
            jobs = [(encoder, d, label, method, opts, grid, tmp) for label, method, opts, grid in ROWS]
            res["rows"] = pool.starmap(_row_job, jobs)
            lora_lr = next(r for r in res["rows"] if r["method"] == "lora")["lr"]
            ranks = [k for k in range(1, RANK + 1) if k != RANK]
            extra = pool.starmap(_rank_job, [(encoder, d, k, lora_lr, tmp) for k in ranks])
        lora = next(r for r in res["rows"] if r["method"] == "lora")
        for k, row in zip(ranks + [RANK], extra + [lora]):
            res["lora_by_rank"][str(k)] = {k2: row[k2] for k2 in ("accuracy", "macro_f1", "trainable_encoder", "lr")}
    res["seconds"] = time.time() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description="Adapter quality benchmark (Pfam families, tiny BERT)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--smoke", action="store_true", help="a few steps, one seed, to check the script runs")
    ap.add_argument("--report-only", action="store_true", help="rewrite results_quality.md from the .json")
    args = ap.parse_args()
    if args.report_only:
        from benchmarks.adapters.quality_report import markdown

        res = json.loads((args.out / "results_quality.json").read_text(encoding="utf-8"))
        (args.out / "results_quality.md").write_text(markdown(res), encoding="utf-8")
        return
    if args.smoke:
        global STEPS, SEEDS, PRETRAIN_STEPS, ROWS
        STEPS, SEEDS, PRETRAIN_STEPS, ROWS = 6, (0, 1), 10, ROWS[:4]
    from benchmarks.adapters.quality_report import markdown

    res = run()
    (args.out / "results_quality.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    (args.out / "results_quality.md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))


if __name__ == "__main__":
    main()
