"""LESS: select the training examples whose LoRA gradients align with a target set's (Xia et al.,
ICML 2024, arXiv 2402.04333, Sec. 4 and eq. 2-3).

1. Warm-up: a LoRA (peft, through ``adaptome.core.train.loop.fit``) on a random ``warmup_fraction`` of
   the pool for ``warmup_epochs`` epochs, one checkpoint per epoch, optimizer state kept.
2. Per checkpoint, per-example gradients of the LoRA parameters only (``grads.py``, batched with
   ``torch.func`` where the model allows). Training examples use the Adam direction of eq. 2 from the
   checkpoint's moments: m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2, Gamma = m' / sqrt(v' + eps)
   (eps inside the root, no bias correction, as the official code); target examples use g itself.
3. A seeded Rademacher projection to ``proj_dim`` (default 8192, ``projection.py``), then L2
   normalisation.
4. Score(z) = sum_i eta_i <Gamma_i(z), g_i(z')> (eq. 3), eta_i the mean learning rate of epoch i
   renormalised to sum to 1; averaged over the target examples of each subtask (a target file, or a
   ``subtask`` field), then the max over subtasks.
5. The top ``floor(percentage * N)`` examples, written as JSONL (every field of the record) with their scores.
   The summary counts the texts cut to ``max_length`` tokens and the pool texts that repeat an earlier one
   (repeats score alike and are kept).

The LoRA defaults follow the paper's warm-up (r 128, alpha 512, dropout 0.1, q/k/v/o, lr 2e-5, linear
schedule with 3 % warm-up); tiny models need a larger lr.

Dimension letters: N pool examples, M target examples, T tokens, D LoRA parameters, d projected
dimension, S subtasks.

Not covered: selecting with a model other than the warm-up one, the paper's 4096-dimensional second
projection, multi-GPU feature extraction, masked LMs (refused: ``check_causal``), prompt-masked losses (every
token of an example counts).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptome.core.errors import AdaptomeError
from adaptome.core.model_files import check_model_folder
from adaptome.core.select.grads import per_example_grads, trainable
from adaptome.core.select.projection import RademacherProjector


class SelectError(AdaptomeError, ValueError):
    """Bad input for data selection."""


@dataclass
class LessConfig:
    """Args:
        percentage: share of the pool to select (exactly floor(percentage * N) examples).
        warmup_fraction: share of the pool the warm-up LoRA trains on.
        warmup_epochs: warm-up epochs (one checkpoint each).
        lora_r, lora_alpha, lora_dropout, target_modules: the warm-up LoRA (peft); ``attention`` is the
            architecture's preset (``adapters.targets``: q/k/v/o on LLaMA, fused qkv_proj/o_proj on Phi-3).
        lr: warm-up peak learning rate (linear schedule).
        warmup_ratio: share of warm-up steps spent ramping the learning rate up.
        batch_size: warm-up batch size.
        max_length: tokens per example, the end token included (a longer text is cut, without the end token).
        proj_dim: feature dimension after projection.
        proj_chunk: projection rows generated at a time (bounds memory).
        grad_batch: examples per batched per-example-gradient call (a call holds grad_batch x D gradients;
            examples are grouped by length into calls, see ``features``).
        batched: True: vmap; False: one backward per example; None: vmap with the loop as fallback.
        eps: Adam's epsilon inside the square root.
        seed: warm-up subset, training and projection seed.
    """

    percentage: float = 0.05
    warmup_fraction: float = 0.05
    warmup_epochs: int = 4
    lora_r: int = 128
    lora_alpha: float = 512.0
    lora_dropout: float = 0.1
    target_modules: list[str] | str = "attention"
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    batch_size: int = 32
    max_length: int = 512
    proj_dim: int = 8192
    proj_chunk: int = 4096
    grad_batch: int = 16
    batched: bool | None = None
    eps: float = 1e-8
    seed: int = 0
    betas: tuple[float, float] = field(default=(0.9, 0.999))

    def __post_init__(self) -> None:
        for name in ("percentage", "warmup_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise SelectError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_length < 2:
            raise SelectError(f"max_length must be >= 2 (a token and the end token), got {self.max_length}")


# -- data -----------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, subtask: str | None = None) -> list[dict[str, Any]]:
    """Records with a ``text`` field; ``subtask`` is set to the file's stem where a record has none."""
    from adaptome.core.text import read_jsonl_records

    out = []
    for n, rec in read_jsonl_records(path, SelectError):
        if not isinstance(rec.get("text"), str) or not rec["text"]:
            raise SelectError(f"{path}:{n}: a record needs a non-empty string field 'text'")
        if subtask is not None:
            rec.setdefault("subtask", subtask)
        out.append(rec)
    return out


def encode(tok, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids (N, T), labels (N, T)); labels are -100 on padding. A text ends with the end
    token when it and the end token fit in ``max_length``; a longer text is cut to its first ``max_length`` tokens
    with no end token (``n_cut`` counts them): an end token there would teach, and score, that the document
    ends where it was cut."""
    ids = []
    for t in texts:
        i = tok(t, add_special_tokens=True)["input_ids"]
        ids.append(i + [tok.eos_token_id] if len(i) <= max_length - 1 else i[:max_length])
    width = max(len(i) for i in ids)
    x = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    y = torch.full((len(ids), width), -100, dtype=torch.long)
    for row, i in enumerate(ids):
        x[row, : len(i)] = torch.tensor(i)
        y[row, : len(i)] = torch.tensor(i)
    return x, y


def n_cut(tok, texts: list[str], max_length: int) -> int:
    """How many of ``texts`` ``encode`` cuts to ``max_length`` tokens."""
    return sum(len(tok(t, add_special_tokens=True)["input_ids"]) > max_length - 1 for t in texts)


def n_repeated(records: list[dict[str, Any]]) -> int:
    """How many records repeat the ``text`` of an earlier one (they get the same score: kept, and counted)."""
    return len(records) - len({r["text"] for r in records})


def check_causal(model: nn.Module, source: str) -> None:
    """Refuse a model whose earlier positions see later tokens (a masked LM or an encoder loaded as a causal
    LM, e.g. BERT as ``BertLMHeadModel`` without ``is_decoder``): its next-token loss and the right-padded,
    maskless per-example gradients would be wrong. Two forwards of 4 tokens that differ in the last one."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(1, 5)[None] % vocab  # (1, 4)
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % vocab
    was = model.training
    model.eval()
    with torch.no_grad():
        a = model(input_ids=ids).logits[:, :-1]  # (1, 3, V)
        b = model(input_ids=other).logits[:, :-1]  # (1, 3, V)
    model.train(was)
    if not torch.allclose(a, b, atol=1e-5, rtol=0):
        raise SelectError(f"{source}: {type(model).__name__} is not a causal LM (its earlier positions see later "
                          "tokens: a masked LM or encoder); LESS here needs a causal LM (masked LMs are not covered)")


# -- warm-up --------------------------------------------------------------------------------------
def epoch_lr_weights(lr: float, warmup_steps: int, steps_per_epoch: int, epochs: int) -> list[float]:
    """Mean learning rate of each epoch under the loop's linear schedule, renormalised to sum to 1."""
    from adaptome.core.train.schedule import make_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_scheduler(opt, "linear", warmup_steps, steps_per_epoch * epochs)
    lrs = []
    for _ in range(steps_per_epoch * epochs):
        lrs.append(sched.get_last_lr()[0])  # the rate the loop's step uses
        opt.step()
        sched.step()
    means = [sum(lrs[e * steps_per_epoch:(e + 1) * steps_per_epoch]) / steps_per_epoch for e in range(epochs)]
    total = sum(means)
    if total <= 0:
        raise SelectError("the warm-up learning rate is zero in every epoch")
    return [m / total for m in means]


def warmup(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, cfg: LessConfig, work_dir: Path
           ) -> tuple[nn.Module, list[tuple[Path, float]]]:
    """Train the warm-up LoRA; returns the model and (checkpoint folder, epoch weight) per epoch."""
    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.train.checkpoint import list_checkpoints
    from adaptome.core.train.loop import fit

    n = ids.shape[0]
    rng = random.Random(cfg.seed)
    subset = sorted(rng.sample(range(n), max(1, math.floor(round(cfg.warmup_fraction * n, 9)))))
    if len(subset) < cfg.batch_size:
        raise SelectError(f"the warm-up share holds {len(subset)} examples, fewer than one batch of {cfg.batch_size}; "
                          "raise warmup_fraction or lower batch_size")
    spe = len(subset) // cfg.batch_size
    steps = spe * cfg.warmup_epochs
    warm_steps = math.ceil(cfg.warmup_ratio * steps)
    model = apply_adapter(model, make_config("lora", {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                                                      "lora_dropout": cfg.lora_dropout,
                                                      "target_modules": cfg.target_modules}))
    data = [{"input_ids": ids[i], "labels": labels[i]} for i in subset]
    collate = lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]}  # noqa: E731  (B, T)
    fit(model, data, collate_fn=collate, output_dir=work_dir, max_steps=steps, batch_size=cfg.batch_size,
        lr=cfg.lr, betas=cfg.betas, warmup_steps=warm_steps, schedule="linear", save_every=spe,
        keep_last=cfg.warmup_epochs, log_every=max(1, spe), seed=cfg.seed, progress=False, resume=False)
    ckpts = list_checkpoints(work_dir / "checkpoints")
    weights = epoch_lr_weights(cfg.lr, warm_steps, spe, cfg.warmup_epochs)
    if len(ckpts) != cfg.warmup_epochs:
        raise SelectError(f"{work_dir}: expected {cfg.warmup_epochs} epoch checkpoints, found {len(ckpts)}")
    return model, [(p, w) for (_, p), w in zip(ckpts, weights)]


def load_epoch(model: nn.Module, ckpt: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the checkpoint's LoRA weights in ``model``; returns Adam's (m, v), flattened (D,) in
    ``grads.trainable`` order."""
    from safetensors.torch import load_file

    state = load_file(str(ckpt / "trainable.safetensors"))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in params:
            p.copy_(state[n])
    opt = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    order = opt["param_groups"][0]["params"]  # the optimizer's indices, in parameter order
    m = torch.cat([opt["state"][i]["exp_avg"].reshape(-1) for i in order])  # (D,)
    v = torch.cat([opt["state"][i]["exp_avg_sq"].reshape(-1) for i in order])  # (D,)
    return m.float(), v.float()


# -- features and scores --------------------------------------------------------------------------
def adam_direction(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, betas: tuple[float, float], eps: float
                   ) -> torch.Tensor:
    """m' / sqrt(v' + eps) for each row of g (N, D), from the moments m, v (D,) (eq. 2)."""
    b1, b2 = betas
    m2 = b1 * m + (1 - b1) * g  # (N, D)
    v2 = b2 * v + (1 - b2) * g * g  # (N, D)
    return m2 / torch.sqrt(v2 + eps)


def features(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, proj: RademacherProjector, cfg: LessConfig,
             adam: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, bool]:
    """L2-normalised projected gradient features (N, d), in the order of ``ids``; with ``adam`` the Adam
    direction. Examples are grouped into calls by length (longest first) so that each call is cut to
    its own longest example (``grads.trim``); the rows are put back in input order."""
    model.eval()
    dev = next(model.parameters()).device
    order = torch.argsort((labels != -100).sum(dim=1), descending=True, stable=True)  # (N,)
    ids, labels = ids[order], labels[order]
    rows, used_vmap = [], True
    for lo in range(0, ids.shape[0], cfg.grad_batch):
        g, batched = per_example_grads(model, ids[lo:lo + cfg.grad_batch].to(dev),
                                       labels[lo:lo + cfg.grad_batch].to(dev), cfg.batched)
        used_vmap &= batched
        if adam is not None:
            g = adam_direction(g, adam[0].to(dev), adam[1].to(dev), cfg.betas, cfg.eps)
        rows.append(proj.project(g))
    f = torch.empty(ids.shape[0], proj.dim_out)
    f[order] = torch.cat(rows).cpu()  # (N, d), row order[i] of the input is sorted row i
    return torch.nn.functional.normalize(f, dim=1), used_vmap


def scores(train_feats: list[torch.Tensor], target_feats: list[torch.Tensor], weights: list[float],
           subtasks: list[str]) -> torch.Tensor:
    """(N,) LESS scores: sum_i w_i cos(train, target), mean per subtask, max over subtasks."""
    sim = sum(w * (t @ g.T) for t, g, w in zip(train_feats, target_feats, weights))  # (N, d) @ (d, M) -> (N, M)
    names = sorted(set(subtasks))
    cols = torch.stack([sim[:, [j for j, s in enumerate(subtasks) if s == name]].mean(dim=1) for name in names],
                       dim=1)  # (N, S)
    return cols.max(dim=1).values


def n_selected(percentage: float, n: int) -> int:
    """floor(percentage * n), refused when it is 0 (checked once the pool is read, before any training)."""
    k = math.floor(round(percentage * n, 9))
    if k == 0:
        raise SelectError(f"percentage {percentage} of {n} examples selects none")
    return k


def top_k(score: torch.Tensor, percentage: float) -> list[int]:
    """The indices of the floor(percentage * N) highest scores (ties broken by index)."""
    k = n_selected(percentage, score.numel())
    order = sorted(range(score.numel()), key=lambda i: (-float(score[i]), i))
    return order[:k]


# -- the whole run --------------------------------------------------------------------------------
def select_data(model_path: str, train_files: list[str], target_files: list[str], out: str | os.PathLike,
                cfg: LessConfig, work_dir: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """Run LESS and write the selected examples (JSONL, highest score first, field ``less_score``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptome.core.atomic import atomic_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".less-work")
    if (work / "checkpoints").exists():
        if not (overwrite and not work_dir):
            raise SelectError(f"{work}: holds a warm-up from an earlier run; remove it or pass another --work-dir "
                              "(it is never reused, so a selection always comes from this run's data)"
                              + ("" if work_dir else "; --overwrite replaces it with the output"))
    pool = [r for f in train_files for r in read_jsonl(f)]
    targets = [r for f in target_files for r in read_jsonl(f, subtask=Path(f).stem)]
    n_selected(cfg.percentage, len(pool))  # before the warm-up: a share that selects nothing is refused now
    if (work / "checkpoints").exists():  # the default work folder of the output being replaced (--overwrite)
        shutil.rmtree(work)
    check_model_folder(model_path)  # a truncated weights / tokenizer file: one line naming it
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.eos_token_id is None:
        raise SelectError(f"{model_path}: its tokenizer has no end-of-text token (eos_token), which ends every "
                          "example here")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    check_causal(model, model_path)
    x, y = encode(tok, [r["text"] for r in pool], cfg.max_length)
    tx, ty = encode(tok, [r["text"] for r in targets], cfg.max_length)
    model, epochs = warmup(model, x, y, cfg, work)
    proj = RademacherProjector(sum(p.numel() for p in trainable(model).values()), cfg.proj_dim, cfg.seed,
                               cfg.proj_chunk)
    train_f, target_f, vmapped = [], [], True
    for ckpt, _ in epochs:
        moments = load_epoch(model, ckpt)
        f, b1 = features(model, x, y, proj, cfg, adam=moments)
        g, b2 = features(model, tx, ty, proj, cfg)
        train_f.append(f)
        target_f.append(g)
        vmapped &= b1 and b2
    score = scores(train_f, target_f, [w for _, w in epochs], [r["subtask"] for r in targets])
    chosen = top_k(score, cfg.percentage)
    with atomic_file(out) as fh:
        for i in chosen:
            fh.write(json.dumps({**pool[i], "less_score": float(score[i])}, ensure_ascii=False) + "\n")
    return {"selected": len(chosen), "pool": len(pool), "targets": len(targets),
            "subtasks": sorted({r["subtask"] for r in targets}),
            "cut_to_max_length": {"pool": n_cut(tok, [r["text"] for r in pool], cfg.max_length),
                                  "targets": n_cut(tok, [r["text"] for r in targets], cfg.max_length)},
            "repeated_pool_texts": n_repeated(pool), "checkpoints": [str(c) for c, _ in epochs],
            "epoch_weights": [w for _, w in epochs], "batched_gradients": vmapped, "out": str(out),
            "config": asdict(cfg)}
