"""Masked-LM data, masking and pseudo-perplexity.

Masking (Devlin et al. 2019, BERT, Sec. 3.1): each non-special token is chosen with probability
``p`` (0.15); a chosen token becomes the mask token 80 % of the time, a random token 10 % and
stays itself 10 %; the loss is taken on chosen tokens only (label -100 elsewhere). At least one
token per sentence is chosen. With ``whole_word`` a word (the tokenizer's ``word_ids``) is chosen
with probability ``p`` and all of its subwords are masked together.

Pseudo-perplexity (Salazar et al. 2020, "Masked Language Model Scoring", eq. 2-3):
PPPL = exp(-(1/N) sum_sentences sum_t log P(w_t | W without t)), N the number of scored tokens
(special tokens are not scored). ``pseudo_perplexity`` builds, for a sentence of n scored tokens,
n copies each with one position masked, packs the copies of all sentences into padded batches
(``max_batch`` copies at most) and applies the LM head only at each copy's masked position;
``pseudo_perplexity_naive`` runs one full forward pass per masked token; both give the same
number (tested).

Tokenizer coverage (``check_coverage``): a text file more than ``MAX_UNK_SHARE`` of whose tokens are
the tokenizer's ``<unk>`` is refused, naming the file and the share (a script the base never saw: Ge'ez
under a Latin-only tokenizer is about half ``<unk>``, one per word; training or pseudo-perplexity on it
measures nothing); above ``WARN_UNK_SHARE`` the commands warn (emoji-heavy tweets under the tiny base).

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


#: a file more than this share of whose tokens are ``<unk>`` is refused (module docstring)
MAX_UNK_SHARE = 0.2
#: above this share the commands warn
WARN_UNK_SHARE = 0.05


def unk_share(tokenizer, texts: Sequence[str]) -> float:
    """Share of the tokens of ``texts`` (special tokens not counted) that are the tokenizer's ``<unk>``
    (``core.text.unk_share``)."""
    from adaptome.core.text import unk_share as share_of_ids

    if not texts:
        return 0.0
    return share_of_ids(tokenizer, tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"])


def check_coverage(path, texts: Sequence[str], tokenizer) -> float:
    """``unk_share`` of a file's texts; an error naming the file above ``MAX_UNK_SHARE``."""
    from adaptome.domains.multilingual.readers import DataError

    share = unk_share(tokenizer, texts)
    if share > MAX_UNK_SHARE:
        raise DataError(f"{path}: {share:.0%} of its tokens are {tokenizer.unk_token} (the base's tokenizer does not "
                        f"cover this text, e.g. its script); choose a base whose tokenizer covers it")
    return share


def coverage_warning(path, share: float) -> str | None:
    """The warning line for a file whose ``unk_share`` is above ``WARN_UNK_SHARE`` (None below)."""
    if share <= WARN_UNK_SHARE:
        return None
    return f"warning: {path}: {share:.0%} of its tokens are <unk> (the base's tokenizer does not cover them)"


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


def encoder_and_head(model):
    """``(encoder, head)`` of a transformers ``*ForMaskedLM`` whose head maps each hidden state to its
    logits on its own (BERT's ``cls``, RoBERTa / XLM-R / ESM ``lm_head``: dense, activation, layer norm,
    decoder), or ``None`` when the model is not split that way. With the split, the head runs only at
    the masked position of each copy instead of at every position."""
    enc = getattr(model, "base_model", None)
    for name in ("lm_head", "cls"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module) and isinstance(enc, torch.nn.Module) and enc is not model:
            return enc, head
    return None


def _copies(sentences_ids: list[list[int]], specials: set[int]) -> list[tuple[int, int]]:
    """Every (sentence, scored position) pair, sentences sorted by length so a batch pads little."""
    order = sorted(range(len(sentences_ids)), key=lambda i: len(sentences_ids[i]))
    return [(i, p) for i in order for p in _scored_positions(sentences_ids[i], specials)]


@torch.inference_mode()
def masked_copies_nll(model, sentences_ids: list[list[int]], specials: set[int], mask_id: int, pad_id: int,
                      max_batch: int) -> tuple[float, int]:
    """Summed -log P(w_t | rest) over every scored position of every sentence, and the number of positions.

    The masked copies of all sentences are packed into batches of at most ``max_batch`` copies (right
    padding, attention mask); with ``encoder_and_head`` the LM head runs on the K masked states only.
    """
    device = next(model.parameters()).device
    split = encoder_and_head(model)
    copies = _copies(sentences_ids, specials)
    total = 0.0
    for lo in range(0, len(copies), max_batch):
        chunk = copies[lo:lo + max_batch]
        t = max(len(sentences_ids[i]) for i, _ in chunk)
        batch = torch.full((len(chunk), t), pad_id, dtype=torch.long)  # (K, T)
        attn = torch.zeros((len(chunk), t), dtype=torch.long)  # (K, T)
        for k, (i, _) in enumerate(chunk):
            batch[k, :len(sentences_ids[i])] = torch.tensor(sentences_ids[i])
            attn[k, :len(sentences_ids[i])] = 1
        batch, attn = batch.to(device), attn.to(device)
        rows = torch.arange(len(chunk), device=device)  # (K,)
        pos = torch.tensor([p for _, p in chunk], device=device)  # (K,)
        target = batch[rows, pos].clone()  # (K,)
        batch[rows, pos] = mask_id
        if split is not None:
            enc, head = split
            hidden = enc(input_ids=batch, attention_mask=attn)[0]  # (K, T, H)
            logits = head(hidden[rows, pos])  # (K, H) -> (K, V)
        else:
            logits = model(input_ids=batch, attention_mask=attn).logits[rows, pos]  # (K, T, V) -> (K, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (K, V)
        total -= float(logp[rows, target].sum())
    return total, len(copies)


def pseudo_perplexity(model, tokenizer, sentences: Sequence[str], max_length: int = 128,
                      max_batch: int = 128) -> float:
    """PPPL of ``sentences`` (module docstring): the masked copies of all sentences in batches of at most
    ``max_batch`` copies, the LM head applied only at the masked positions."""
    model.eval()
    specials = set(tokenizer.all_special_ids)
    ids = tokenizer(list(sentences), truncation=True, max_length=fit_length(tokenizer, max_length))["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.mask_token_id
    nll, n = masked_copies_nll(model, ids, specials, tokenizer.mask_token_id, pad_id, max_batch)
    return perplexity_from_losses(nll, n) if n else math.nan


@torch.inference_mode()
def pseudo_perplexity_naive(model, tokenizer, sentences: Sequence[str], max_length: int = 128) -> float:
    """The reference: one full forward pass (the head at every position) per masked token."""
    model.eval()
    device = next(model.parameters()).device
    specials = set(tokenizer.all_special_ids)
    nll, n = 0.0, 0
    for ids in tokenizer(list(sentences), truncation=True, max_length=fit_length(tokenizer, max_length))["input_ids"]:
        for p in _scored_positions(ids, specials):
            x = torch.tensor([ids], device=device)  # (1, T)
            x[0, p] = tokenizer.mask_token_id
            logits = model(input_ids=x).logits[0, p]  # (1, T, V) -> (V,)
            nll -= float(torch.log_softmax(logits.float(), dim=-1)[ids[p]])
            n += 1
    return perplexity_from_losses(nll, n) if n else math.nan
