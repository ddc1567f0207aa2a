"""Masked-LM data, masking and pseudo-perplexity.

Masking (Devlin et al. 2019, BERT, Sec. 3.1): each non-special token is chosen with probability
``p`` (0.15); a chosen token becomes the mask token 80 % of the time, a random token 10 % and
stays itself 10 %; the loss is taken on chosen tokens only (label -100 elsewhere). At least one
token per sentence is chosen. With ``whole_word`` a word (the tokenizer's ``word_ids``) is chosen
with probability ``p`` and all of its subwords are masked together.

Pseudo-perplexity (Salazar et al. 2020, "Masked Language Model Scoring", eq. 2-3):
PPPL = exp(-(1/N) sum_sentences sum_t log P(w_t | W without t)), N the number of scored tokens
(special tokens are not scored). ``pseudo_perplexity`` builds, for a sentence of n scored tokens,
n copies each with one position masked and runs them as one batch (chunked at ``max_batch``
copies); ``pseudo_perplexity_naive`` runs one forward pass per masked token; both give the same
number (tested).

Dimension letters: B batch, T tokens, V vocabulary, K masked copies of one sentence.
Not covered: span masking, dynamic padding to multiples of 8, PPPL of texts longer than the model's
maximum length (they are truncated to ``max_length`` tokens, as for training).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.data import Dataset

from adaptome.core.evaluation import perplexity_from_losses


def fit_length(tokenizer, max_length: int) -> int:
    """``max_length`` capped at the tokenizer's ``model_max_length`` (the base's position limit)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return min(max_length, int(limit)) if isinstance(limit, int) and limit > 0 else max_length


class TextDataset(Dataset):
    """Sentences tokenized once: ``input_ids`` and ``word_ids`` (None for special tokens)."""

    def __init__(self, lines: Sequence[str], tokenizer, max_length: int):
        enc = tokenizer(list(lines), truncation=True, max_length=fit_length(tokenizer, max_length))
        self.items = [{"input_ids": enc["input_ids"][i], "word_ids": enc.word_ids(i)} for i in range(len(lines))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class MaskingCollator:
    """Pads a list of ``TextDataset`` items and masks them (see the module docstring).

    Args:
        tokenizer: gives the pad, mask and special token ids and the vocabulary size.
        mlm_probability: share of tokens (or words, with ``whole_word``) chosen for the loss.
        whole_word: choose whole words and mask all their subwords.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, whole_word: bool = False):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.specials = set(tokenizer.all_special_ids)
        self.p, self.whole_word = mlm_probability, whole_word

    def choose(self, item: dict) -> list[bool]:
        """Which positions of one sentence enter the loss."""
        ids, words = item["input_ids"], item["word_ids"]
        scorable = [w is not None and t not in self.specials for t, w in zip(ids, words)]
        if self.whole_word:
            uniq = sorted({w for w, s in zip(words, scorable) if s})
            draw = torch.rand(len(uniq)) < self.p
            picked = {w for w, d in zip(uniq, draw.tolist()) if d}
            chosen = [s and w in picked for w, s in zip(words, scorable)]
        else:
            draw = (torch.rand(len(ids)) < self.p).tolist()
            chosen = [s and d for s, d in zip(scorable, draw)]
        if not any(chosen) and any(scorable):  # at least one target per sentence
            cand = [i for i, s in enumerate(scorable) if s]
            pick = cand[int(torch.randint(len(cand), (1,)))]
            target = words[pick] if self.whole_word else None
            chosen = [i == pick or (target is not None and w == target and s)
                      for i, (w, s) in enumerate(zip(words, scorable))]
        return chosen

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        t = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), t), self.pad_id, dtype=torch.long)  # (B, T)
        attn = torch.zeros((len(items), t), dtype=torch.long)  # (B, T)
        chosen = torch.zeros((len(items), t), dtype=torch.bool)  # (B, T)
        for b, it in enumerate(items):
            n = len(it["input_ids"])
            ids[b, :n] = torch.tensor(it["input_ids"])
            attn[b, :n] = 1
            chosen[b, :n] = torch.tensor(self.choose(it))
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))  # (B, T)
        r = torch.rand(ids.shape)  # (B, T): < 0.8 mask, 0.8-0.9 random token, else keep
        inputs = ids.clone()
        inputs[chosen & (r < 0.8)] = self.mask_id
        rand_pos = chosen & (r >= 0.8) & (r < 0.9)
        inputs[rand_pos] = torch.randint(self.vocab_size, (int(rand_pos.sum()),))
        return {"input_ids": inputs, "attention_mask": attn, "labels": labels}


def _scored_positions(ids: list[int], specials: set[int]) -> list[int]:
    return [i for i, t in enumerate(ids) if t not in specials]


@torch.no_grad()
def sentence_nll(model, ids: list[int], positions: list[int], mask_id: int, max_batch: int) -> float:
    """Summed -log P(w_t | rest) over ``positions``: K masked copies per forward pass."""
    device = next(model.parameters()).device
    base = torch.tensor(ids, device=device)  # (T,)
    total = 0.0
    for lo in range(0, len(positions), max_batch):
        pos = torch.tensor(positions[lo:lo + max_batch], device=device)  # (K,)
        batch = base.unsqueeze(0).repeat(len(pos), 1)  # (K, T)
        rows = torch.arange(len(pos), device=device)  # (K,)
        batch[rows, pos] = mask_id
        logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits  # (K, T, V)
        logp = torch.log_softmax(logits[rows, pos].float(), dim=-1)  # (K, V)
        total -= float(logp[rows, base[pos]].sum())
    return total


def pseudo_perplexity(model, tokenizer, sentences: Sequence[str], max_length: int = 128,
                      max_batch: int = 128) -> float:
    """PPPL of ``sentences`` (module docstring), all masked copies of a sentence in one forward pass
    (``max_batch`` copies at most per pass)."""
    model.eval()
    specials = set(tokenizer.all_special_ids)
    nll, n = 0.0, 0
    for ids in tokenizer(list(sentences), truncation=True, max_length=fit_length(tokenizer, max_length))["input_ids"]:
        pos = _scored_positions(ids, specials)
        if pos:
            nll += sentence_nll(model, ids, pos, tokenizer.mask_token_id, max_batch)
            n += len(pos)
    return perplexity_from_losses(nll, n) if n else math.nan


def pseudo_perplexity_naive(model, tokenizer, sentences: Sequence[str], max_length: int = 128) -> float:
    """The reference: one forward pass per masked token."""
    return pseudo_perplexity(model, tokenizer, sentences, max_length, max_batch=1)
