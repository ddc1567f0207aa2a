"""Shared metrics, in plain numpy: pass@k, regression, classification, entity F1, perplexity.

Every domain scores through these functions so that a number means the same thing everywhere.
Each function states its formula; ``tests/core/test_evaluation.py`` checks them against
scikit-learn / scipy and against hand-computed values.

Dimension letters: N samples (or problems), T tokens of one tag sequence, C classes.

* ``pass_at_k`` / ``mean_pass_at_k``: the unbiased estimator of Chen et al. 2021 (Codex,
  arXiv 2107.03374, eq. 1), pass@k = 1 - C(n-c, k) / C(n, k), evaluated in the product form
  1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms a binomial coefficient (those overflow a
  float for n in the hundreds).
* ``r2_score``, ``mse``, ``pearson``, ``spearman``: regression scores.
* ``accuracy``, ``macro_f1``, ``roc_auc``: classification scores (``roc_auc`` binary only).
* ``entity_f1`` / ``entity_scores``: entity-level precision, recall and F1 over BIO (IOB2) spans,
  as CoNLL-2003's ``conlleval`` and seqeval's default mode count them.
* ``perplexity`` / ``perplexity_from_losses``: exp of the mean token negative log-likelihood;
  ``lm_perplexity``: the same over a language model's predictions on a list of examples (the one
  perplexity of the code base: ``adaptome train``, the quickstart and the domains call it);
  ``unigram_perplexity``: the baseline beside it, token frequencies of the training examples (add-one
  smoothed) scored on the same tokens ``lm_perplexity`` scores;
* ``lm_nll_sum`` / ``unigram_nll_sum``: their summed NLL and token count over one shard of the eval batches
  (``eval_batches``; batch i is shard i mod count's, optionally collated under seed + i), which processes
  under ``torchrun`` add up to one process's totals.

Not covered: multi-label or multi-class ROC AUC, sample weights, IOBES / BILOU tag schemes,
confidence intervals (bootstrap them over problems if needed).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

__all__ = [
    "pass_at_k", "mean_pass_at_k", "r2_score", "mse", "pearson", "spearman", "accuracy", "macro_f1",
    "roc_auc", "entity_spans", "entity_scores", "entity_f1", "perplexity", "perplexity_from_losses",
    "lm_perplexity", "lm_nll_sum", "eval_batches", "unigram_perplexity", "unigram_nll_sum", "rankdata",
]


# ---------------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` pass (Chen et al. 2021, eq. 1).

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)

    The product form follows from C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (i - k) / i. When
    n - c < k every size-k subset holds a passing sample and the value is exactly 1.
    ``k > n`` is an error: the estimator needs at least k samples.
    """
    n, c, k = int(n), int(c), int(k)
    if n < 0 or c < 0 or k < 1:
        raise ValueError(f"pass_at_k: need n >= 0, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if c > n:
        raise ValueError(f"pass_at_k: c={c} passing samples out of n={n}")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} is larger than the n={n} samples drawn")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)  # (c,)
    return float(1.0 - np.prod(1.0 - k / i))


def mean_pass_at_k(ns: Sequence[int], cs: Sequence[int], k: int,
                   too_few: Literal["error", "skip"] = "error") -> float:
    """Mean of ``pass_at_k`` over problems that may each have a different sample count n.

    A problem with fewer than k samples has no unbiased estimate: with ``too_few="error"`` (the
    default) that is an error naming the problem index; with ``too_few="skip"`` the problem is left
    out of the mean (and it is an error when every problem is left out).
    """
    ns_a, cs_a = np.asarray(ns, dtype=np.int64), np.asarray(cs, dtype=np.int64)
    if ns_a.shape != cs_a.shape or ns_a.ndim != 1:
        raise ValueError(f"mean_pass_at_k: ns and cs must be 1-d of equal length, got {ns_a.shape} and {cs_a.shape}")
    if ns_a.size == 0:
        raise ValueError("mean_pass_at_k: no problems")
    vals = []
    for idx, (n, c) in enumerate(zip(ns_a.tolist(), cs_a.tolist())):
        if n < k:
            if too_few == "skip":
                continue
            raise ValueError(f"mean_pass_at_k: problem {idx} has n={n} samples, fewer than k={k}")
        vals.append(pass_at_k(n, c, k))
    if not vals:
        raise ValueError(f"mean_pass_at_k: every problem has fewer than k={k} samples")
    return float(np.mean(vals))


# ---------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------
def _pair(y: Sequence, p: Sequence, name: str, numeric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y, dtype=np.float64 if numeric else None).reshape(-1)  # (N,)
    b = np.asarray(p, dtype=np.float64 if numeric else None).reshape(-1)  # (N,)
    if a.shape != b.shape:
        raise ValueError(f"{name}: inputs have different lengths, {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError(f"{name}: empty input")
    if numeric and not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"{name}: inputs contain NaN or infinity")
    return a, b


def mse(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Mean squared error, (1/N) sum_i (y_i - p_i)^2."""
    y, p = _pair(y_true, y_pred, "mse")
    return float(np.mean((y - p) ** 2))


def r2_score(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Coefficient of determination, R^2 = 1 - sum_i (y_i - p_i)^2 / sum_i (y_i - mean(y))^2.

    Can be negative (worse than predicting the mean). When y_true is constant the ratio is
    undefined; as scikit-learn does, the result is then 1.0 for a perfect prediction and 0.0
    otherwise.
    """
    y, p = _pair(y_true, y_pred, "r2_score")
    ss_res = float(np.sum((y - p) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation, r = sum (x - mx)(y - my) / sqrt(sum (x - mx)^2 * sum (y - my)^2).

    NaN when either input is constant (r is undefined there), as scipy returns.
    """
    a, b = _pair(x, y, "pearson")
    if a.size < 2:
        raise ValueError("pearson: need at least 2 points")
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(a, b) / denom, -1.0, 1.0))


def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``method="average"``)."""
    a = np.asarray(x).reshape(-1)  # (N,)
    order = np.argsort(a, kind="mergesort")  # (N,) positions in ascending order
    s = a[order]
    new_group = np.r_[True, s[1:] != s[:-1]]  # (N,) True where a run of equal values starts
    group = np.cumsum(new_group) - 1  # (N,) run index of each sorted position
    bounds = np.r_[np.flatnonzero(new_group), a.size]  # (G+1,) run starts, then N
    # a run occupying sorted positions [start, end) holds ranks start+1 .. end; their mean:
    avg = 0.5 * (bounds[group] + 1 + bounds[group + 1])  # (N,)
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = avg
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: the Pearson correlation of the average ranks (ties averaged)."""
    a, b = _pair(x, y, "spearman")
    return pearson(rankdata(a), rankdata(b))


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Share of exact matches, (1/N) sum_i [y_i == p_i]. Labels may be ints or strings."""
    y, p = _pair(y_true, y_pred, "accuracy", numeric=False)
    return float(np.mean(y == p))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """Unweighted mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

    The classes are those in y_true or y_pred (as scikit-learn's ``f1_score(average="macro")``);
    a class never predicted correctly has F1 = 0.
    """
    y, p = _pair(y_true, y_pred, "macro_f1", numeric=False)
    classes = np.unique(np.concatenate([y, p]))  # (C,)
    f1s = []
    for c in classes:
        tp = int(np.sum((y == c) & (p == c)))
        fp = int(np.sum((y != c) & (p == c)))
        fn = int(np.sum((y == c) & (p != c)))
        f1s.append(2 * tp / (2 * tp + fp + fn))  # denominator > 0: c occurs in y or p
    return float(np.mean(f1s))


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Binary ROC AUC as the Mann-Whitney statistic, the probability that a random positive scores
    above a random negative (ties count one half):

    AUC = (sum of the positives' average ranks - P (P + 1) / 2) / (P * Q), P positives, Q negatives.

    ``y_true`` holds 0/1 (or False/True); it is an error when only one class is present.
    """
    y, s = _pair(y_true, scores, "roc_auc")
    labels = set(np.unique(y).tolist())
    if not labels <= {0.0, 1.0}:
        raise ValueError(f"roc_auc: y_true must be binary 0/1, got labels {sorted(labels)}")
    n_pos = int(np.sum(y == 1.0))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc: y_true holds only one class; AUC is undefined")
    ranks = rankdata(s)  # (N,)
    u = float(ranks[y == 1.0].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


# ---------------------------------------------------------------------------------------------
# entity F1 over BIO spans
# ---------------------------------------------------------------------------------------------
def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, sep, etype = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not etype:
        raise ValueError(f"entity tags: {tag!r} is not O, B-<type> or I-<type>")
    return prefix, etype


def entity_spans(tags: Sequence[str], scheme: Literal["conlleval", "strict"] = "conlleval"
                 ) -> list[tuple[str, int, int]]:
    """The entities of one BIO (IOB2) tag sequence as ``(type, start, end)``, ``end`` exclusive.

    A span starts at ``B-X`` and runs over the following ``I-X`` tags. A stray ``I-X`` (after ``O``,
    at the start, or after a span of another type) is treated by ``scheme``:

    * ``"conlleval"`` (default, as CoNLL-2003's conlleval script and seqeval's default mode): it
      starts a new span of type X, exactly as if it were ``B-X``;
    * ``"strict"``: it belongs to no entity and is dropped (so is every ``I-X`` continuing it).
    """
    spans: list[tuple[str, int, int]] = []
    cur_type, cur_start = None, 0  # the open span; None when there is none
    for t, tag in enumerate(list(tags) + ["O"]):  # the sentinel closes a span open at the end
        prefix, etype = _split_tag(tag)
        continues = prefix == "I" and etype == cur_type
        if cur_type is not None and not continues:
            spans.append((cur_type, cur_start, t))
            cur_type = None
        if prefix == "B" or (prefix == "I" and not continues and scheme == "conlleval"):
            cur_type, cur_start = etype, t
        # strict: a stray I-X opens nothing, so the I-X tags after it find no open span either
    return spans


def entity_scores(gold_tags: Sequence[Sequence[str]] | Sequence[str],
                  pred_tags: Sequence[Sequence[str]] | Sequence[str],
                  scheme: Literal["conlleval", "strict"] = "conlleval") -> dict:
    """Entity-level micro precision, recall and F1 (exact match of span and type), plus per type.

    precision = |gold ∩ pred| / |pred|, recall = |gold ∩ pred| / |gold|, F1 = 2 P R / (P + R); a
    ratio with a zero denominator is 0. Inputs are lists of sentences (lists of tags) or one flat
    list of tags; sentences are never joined, so a span cannot cross a sentence boundary.
    Returns ``{"precision", "recall", "f1", "n_gold", "n_pred", "n_correct", "per_type": {type:
    {"precision", "recall", "f1", "support"}}}``.
    """
    gold_s, pred_s = _as_sentences(gold_tags), _as_sentences(pred_tags)
    if len(gold_s) != len(pred_s):
        raise ValueError(f"entity_f1: {len(gold_s)} gold sentences but {len(pred_s)} predicted")
    gold, pred = set(), set()
    for i, (g, p) in enumerate(zip(gold_s, pred_s)):
        if len(g) != len(p):
            raise ValueError(f"entity_f1: sentence {i} has {len(g)} gold tags but {len(p)} predicted")
        gold.update((i, *s) for s in entity_spans(g, scheme))
        pred.update((i, *s) for s in entity_spans(p, scheme))
    correct = gold & pred
    out = _prf(len(correct), len(pred), len(gold))
    out.update(n_gold=len(gold), n_pred=len(pred), n_correct=len(correct))
    g_by, p_by, c_by = (Counter(s[1] for s in spans) for spans in (gold, pred, correct))
    out["per_type"] = {
        etype: {**_prf(c_by[etype], p_by[etype], g_by[etype]), "support": g_by[etype]}
        for etype in sorted(set(g_by) | set(p_by))
    }
    return out


def entity_f1(gold_tags: Sequence[Sequence[str]] | Sequence[str],
              pred_tags: Sequence[Sequence[str]] | Sequence[str],
              scheme: Literal["conlleval", "strict"] = "conlleval") -> float:
    """Entity-level micro F1 over BIO spans; see ``entity_scores`` for the counting rules."""
    return entity_scores(gold_tags, pred_tags, scheme)["f1"]


def _as_sentences(tags: Sequence) -> list[list[str]]:
    tags = list(tags)
    if tags and isinstance(tags[0], str):
        return [tags]
    return [list(s) for s in tags]


def _prf(n_correct: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------------------------
# perplexity
# ---------------------------------------------------------------------------------------------
def perplexity(mean_nll: float) -> float:
    """Perplexity = exp(mean negative log-likelihood per token, in nats). ``inf`` on overflow."""
    mean_nll = float(mean_nll)
    if math.isnan(mean_nll):
        raise ValueError("perplexity: mean_nll is NaN")
    return math.exp(mean_nll) if mean_nll < 709.0 else float("inf")


def perplexity_from_losses(total_nll: float, n_tokens: int) -> float:
    """Perplexity from a summed negative log-likelihood over ``n_tokens`` tokens: exp(total / n).

    Sum the per-token losses over batches (``loss * n_tokens_in_batch``) rather than averaging the
    batch means, which weighs short batches too much.
    """
    if n_tokens <= 0:
        raise ValueError(f"perplexity_from_losses: n_tokens must be positive, got {n_tokens}")
    return perplexity(float(total_nll) / n_tokens)


def lm_perplexity(model, examples: Sequence[Any], collate: Callable[[list], dict],
                  kind: Literal["causal", "masked"] = "causal", batch_size: int = 8) -> float:
    """Perplexity of a transformers language model on ``examples``: exp(sum of token NLL / N tokens).

    ``collate`` turns a list of examples into a batch of tensors with ``input_ids`` (B, L),
    ``labels`` (B, L; -100 marks a position that is not scored) and optionally ``attention_mask``.
    The NLL of a scored token y is -log softmax(logits)[y], summed over every scored token of every
    batch (not a mean of batch means). Causal LMs: the logits at position t predict token t+1, so
    the labels shift left by one (the first token is never scored, as in transformers' own loss);
    masked LMs: the logits at a labelled position predict that position. The model's train / eval
    mode is left as the caller set it; no gradients are kept. ``lm_nll_sum`` gives the sums themselves,
    for a part of the batches (one process's share under ``torchrun``).
    """
    return perplexity_from_losses(*lm_nll_sum(model, examples, collate, kind, batch_size))


def eval_batches(examples: Sequence[Any], collate: Callable[[list], dict], batch_size: int = 8,
                 shard: tuple[int, int] = (0, 1), batch_seed: int | None = None) -> Iterator[dict]:
    """The collated batches of ``examples`` (``batch_size`` consecutive examples each) that ``shard`` = (index,
    count) owns: batch i belongs to shard i mod count, so the shards together hold every batch once.

    With ``batch_seed``, batch i is collated with the torch CPU RNG seeded by ``batch_seed + i`` (and restored
    after): a masked LM's collator draws the same masks for batch i whichever shard collates it, and one shard
    draws what a single process draws.
    """
    import torch

    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"eval_batches: shard must be (index, count) with 0 <= index < count, got {shard}")
    for i, start in enumerate(range(0, len(examples), batch_size)):
        if i % count != index:
            continue
        chunk = list(examples[start:start + batch_size])
        if batch_seed is None:
            yield collate(chunk)
            continue
        with torch.random.fork_rng(devices=[]):  # the CPU generator, restored after
            # the CPU generator alone: torch.manual_seed would also reseed CUDA's, which fork_rng(devices=[]) does
            # not restore (a GPU run's dropout would then depend on the eval set and a resume would diverge)
            torch.default_generator.manual_seed(batch_seed + i)
            batch = collate(chunk)
        yield batch


def lm_nll_sum(model, examples: Sequence[Any], collate: Callable[[list], dict],
               kind: Literal["causal", "masked"] = "causal", batch_size: int = 8, shard: tuple[int, int] = (0, 1),
               batch_seed: int | None = None) -> tuple[float, int]:
    """The summed token NLL and the number of scored tokens behind ``lm_perplexity``, over the batches of
    ``eval_batches(examples, collate, batch_size, shard, batch_seed)``: the sums of all shards add up to the sums
    of one shard holding every batch (``perplexity_from_losses`` of the totals is the perplexity)."""
    import torch
    import torch.nn.functional as F

    if kind not in ("causal", "masked"):
        raise ValueError(f"lm_perplexity: kind must be 'causal' or 'masked', got {kind!r}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in eval_batches(examples, collate, batch_size, shard, batch_seed):
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if k in batch}
            labels = batch["labels"].to(device)  # (B, L)
            logits = model(**inputs).logits.float()  # (B, L, V)
            if kind == "causal":
                logits, labels = logits[:, :-1], labels[:, 1:]  # (B, L-1, V), (B, L-1): t predicts t+1
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),  # (B*L', V), (B*L',)
                                  ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels != -100).sum())
    return total, count


def _scored_labels(batch: dict, kind: str):
    """The labels ``lm_perplexity`` scores in one collated batch: (B, L-1) for causal LMs (position t
    predicts t+1), (B, L) for masked LMs; -100 marks positions not scored."""
    labels = batch["labels"]  # (B, L)
    return labels[:, 1:] if kind == "causal" else labels


def unigram_perplexity(train_examples: Sequence[Any], eval_examples: Sequence[Any], collate: Callable[[list], dict],
                       vocab_size: int, kind: Literal["causal", "masked"] = "causal", batch_size: int = 8) -> float:
    """Perplexity of a unigram model on the tokens ``lm_perplexity`` scores: the baseline a language model
    must beat.

    p(v) = (c_v + 1) / (N + V), with c_v the count of token v over every ``input_ids`` of ``train_examples``
    (N tokens in all, V = ``vocab_size``: add-one smoothing, so an unseen token has a finite cost);
    perplexity = exp(-sum log p(y) / n) over the n scored labels y of ``eval_examples`` collated in batches
    of ``batch_size`` (a masked LM's collator draws its masks from the global RNG: seed it as for the model).
    ``unigram_nll_sum`` gives the sums over a shard of the batches, as ``lm_nll_sum`` does.
    """
    return perplexity_from_losses(*unigram_nll_sum(train_examples, eval_examples, collate, vocab_size, kind,
                                                   batch_size))


def unigram_nll_sum(train_examples: Sequence[Any], eval_examples: Sequence[Any], collate: Callable[[list], dict],
                    vocab_size: int, kind: Literal["causal", "masked"] = "causal", batch_size: int = 8,
                    shard: tuple[int, int] = (0, 1), batch_seed: int | None = None) -> tuple[float, int]:
    """The summed unigram NLL and scored-token count behind ``unigram_perplexity``, over the batches of
    ``eval_batches(eval_examples, collate, batch_size, shard, batch_seed)`` (the tokens ``lm_nll_sum`` scores
    with the same arguments)."""
    import torch

    counts = torch.zeros(vocab_size, dtype=torch.float64)  # (V,)
    for ex in train_examples:
        counts += torch.bincount(torch.as_tensor(ex["input_ids"]).reshape(-1), minlength=vocab_size).double()
    logp = torch.log((counts + 1.0) / (counts.sum() + vocab_size))  # (V,)
    total, n = 0.0, 0
    for batch in eval_batches(eval_examples, collate, batch_size, shard, batch_seed):
        labels = _scored_labels(batch, kind)
        scored = labels[labels != -100]  # (n_batch,)
        total -= float(logp[scored].sum())
        n += int(scored.numel())
    return total, n
