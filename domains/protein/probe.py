"""A linear probe on the causal LM's hidden states: the field-standard way users classify proteins with
a language model's embeddings (mean-pooled ESM / ProtTrans representations + logistic regression,
e.g. Elnaggar et al. 2021, ProtTrans, sec. "per-protein" prediction; Rives et al. 2021, ESM-1b).

A sequence s is read as the understanding prompt ``[Determine {name}] Seq=<s>`` (cropped as
``build-dataset`` cropped its records, ``data.determine_input``), and its embedding is the mean of the
hidden states over the tokens after ``Seq=<`` (the residues and the closing ``>``), per layer:

    e_l(s) = (1 / |R|) sum_{t in R} h_l[t],      R = positions of the residue tokens and ``>``

``layers="last"`` uses the final layer (after the model's last norm); ``"all"`` concatenates e_l over
the embedding output and every layer ((n_layers + 1) * H features). Features are standardised and a
multinomial L2 logistic regression is fitted on the labelled training sequences. Which layers and
which inverse regularisation C are chosen by stratified k-fold cross-validation on the TRAINING
sequences only (``ProbeConfig.layers`` / ``.cs`` list the grid; ties go to the earlier entry, i.e.
the smaller C, the stronger regulariser); the held-out queries play no part in any choice.

Dimension letters: B sequences per batch, L padded length, H hidden size, N sequences, F features.
Not covered: attention pooling or a fine-tuned head (that is ``classify`` for ESM models); with a
subword tokenizer the pooled span may include a token that merges the last residue with ``>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adaptome.domains.protein.data import LabelTask, determine_input, widest_label
from adaptome.domains.protein.formats import ProteinError
from adaptome.domains.protein.tokenizer import encode

Layers = Literal["last", "all"]


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's choices and their cross-validation grid.

    Args:
        layers: the layer sets compared by cross-validation (``last``: the final hidden state; ``all``:
            the embedding output and every layer, concatenated).
        cs: inverse L2 regularisation strengths of the logistic regression compared by cross-validation.
        folds: folds of the stratified cross-validation on the training sequences (fewer when the
            smallest class has fewer members; at least 2).
        batch_size: sequences embedded together.
        seed: seed of the fold split and of the solver.
    """

    layers: tuple[Layers, ...] = ("last", "all")
    cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    folds: int = 3
    batch_size: int = 16
    seed: int = 0


def embed(model, tok, task: LabelTask, seqs: list[str], crop_label: str, max_seq_length: int | None,
          batch_size: int = 16) -> dict[str, "object"]:
    """``{"last": (N, H), "all": (N, (n_layers + 1) * H)}`` numpy arrays of mean-pooled hidden states."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    rows, spans = [], []
    for s in seqs:
        q = determine_input(tok, task, s, crop_label, max_seq_length)
        prompt = task.determine_prompt(q)  # ... Seq=<q>
        head = encode(tok, prompt[:prompt.rindex("Seq=<") + len("Seq=<")], bos=True)
        ids = encode(tok, prompt, bos=True)
        rows.append(ids)
        spans.append((min(len(head), len(ids) - 1), len(ids)))
    last, every = [], []
    for i in range(0, len(rows), batch_size):
        chunk, sp = rows[i:i + batch_size], spans[i:i + batch_size]
        n = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), n), tok.pad_token_id, dtype=torch.long)  # (B, L)
        pool = torch.zeros((len(chunk), n), dtype=torch.float32)  # (B, L): 1 on the pooled tokens
        att = torch.zeros_like(ids)  # (B, L)
        for j, (r, (a, b)) in enumerate(zip(chunk, sp)):
            ids[j, :len(r)] = torch.tensor(r)
            att[j, :len(r)] = 1
            pool[j, a:b] = 1.0 / (b - a)
        with torch.no_grad():
            hs = model(input_ids=ids.to(device), attention_mask=att.to(device), output_hidden_states=True).hidden_states
        pooled = [torch.einsum("bl,blh->bh", pool.to(device), h.float()).cpu() for h in hs]  # each (B, H)
        last.append(pooled[-1])
        every.append(torch.cat(pooled, dim=-1))  # (B, (n_layers + 1) * H)
    return {"last": np.asarray(torch.cat(last).numpy()), "all": np.asarray(torch.cat(every).numpy())}


@dataclass
class ProbeFit:
    """A fitted probe and what cross-validation chose.

    Args:
        layers: the chosen layer set.
        c: the chosen inverse regularisation strength.
        cv_accuracy: mean cross-validated accuracy of every (layers, C) compared, ``"last C=0.1"`` keys.
        pipeline: the fitted scikit-learn pipeline (standardisation + logistic regression).
        crop_label: the label whose prompt crops the queries (the widest candidate).
    """

    layers: str
    c: float
    cv_accuracy: dict[str, float] = field(default_factory=dict)
    pipeline: object = None
    crop_label: str = ""


def _make(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))


def fit_probe(model, tok, task: LabelTask, seqs: list[str], labels: list[str], candidates: list[str],
              max_seq_length: int | None, cfg: ProbeConfig = ProbeConfig()) -> ProbeFit:
    """Embed the labelled training sequences, choose (layers, C) by cross-validation on them, refit on all."""
    from collections import Counter

    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if len(set(labels)) < 2:
        raise ProteinError("the probe needs labelled training sequences of at least two classes (--train)")
    smallest = min(Counter(labels).values())
    if smallest < 2:
        raise ProteinError(f"the probe's cross-validation needs at least 2 training sequences per class; "
                           f"{min(Counter(labels), key=Counter(labels).get)!r} has {smallest}")
    crop_label = widest_label(tok, candidates, task.label_field)
    feats = embed(model, tok, task, seqs, crop_label, max_seq_length, cfg.batch_size)
    folds = StratifiedKFold(max(2, min(cfg.folds, smallest)), shuffle=True, random_state=cfg.seed)
    scores = {}
    for lay in cfg.layers:
        for c in cfg.cs:
            scores[(lay, c)] = float(cross_val_score(_make(c, cfg.seed), feats[lay], labels, cv=folds).mean())
    lay, c = max(scores, key=lambda k: scores[k])  # first best: grid order breaks ties
    pipe = _make(c, cfg.seed).fit(feats[lay], labels)
    return ProbeFit(lay, c, {f"{a} C={b:g}": v for (a, b), v in scores.items()}, pipe, crop_label)


def predict_probe(model, tok, task: LabelTask, fit: ProbeFit, seqs: list[str], candidates: list[str],
                  max_seq_length: int | None, batch_size: int = 16) -> list[dict[str, float]]:
    """Per query, candidate -> log-probability under the probe (a candidate the probe never saw in
    training gets -inf: a linear probe cannot name a class without examples)."""
    import math

    feats = embed(model, tok, task, seqs, fit.crop_label, max_seq_length, batch_size)[fit.layers]
    logp = fit.pipeline.predict_log_proba(feats)  # (N, classes)
    classes = list(fit.pipeline.classes_)
    return [{c: float(row[classes.index(c)]) if c in classes else -math.inf for c in candidates} for row in logp]
