"""Task data and models: topic classification and sentiment (sentence labels), NER (word tags).

``TaskModel`` is the base's encoder (``AutoModel`` from the same hub id or folder) kept under the
attribute its masked-LM model uses (``roberta`` / ``bert``), so a language adapter trained by MLM
loads into it unchanged, plus a ``classifier`` (dropout + linear) on the pooled sentence
(topic, sentiment) or on every token (NER). Sentence pooling is the masked mean of the last hidden
states by default; ``cls`` takes the first token as AdapterHub's heads do. (The tiny base pretrained
here never trains its first-token output, whose spread across sentences we measured at a tenth of
the mean-pooled one's, so mean pooling is the default.) For sentence tasks the classifier starts
with a BatchNorm over the pooled features, so the head sees features of unit scale whatever the base.

NER label alignment (subword tokenizers split words): with ``label_mode="first"`` the first
subword of a word carries the word's tag and the others are ignored in the loss (-100); with
``"all"`` every subword carries it, a ``B-X`` becoming ``I-X`` after the first subword (so the
subword sequence stays valid BIO). Either way a word's prediction is the prediction at its first
subword, and entity F1 is computed on words. A sentence longer than ``max_length`` subwords is
split into word windows that fit (``TokenDataset``), so every word is predicted; a word with no
token at all is predicted ``O`` and counted in ``truncated_words``.

How adapters are set up (``setup_model``), following MAD-X / the reference's ``Stack``/``Fuse``:

* ``task``: a task adapter (and the classifier head, as ``modules_to_save``) on the frozen base;
* ``stack``: a language adapter is loaded frozen and the task adapter runs on top of it;
* ``fuse``: two language adapters (text, knowledge graph) are loaded frozen, combined by
  AdapterFusion (``core/adapters/fusion.py``), and the task adapter runs on top;
* ``full``: no adapter, every weight trains (the full fine-tuning baseline).

Not covered: CRF heads, sentence-pair tasks, label smoothing, class weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from adaptome.core.errors import AdaptomeError
from adaptome.domains.multilingual.readers import Example, Sentence

IGNORE = -100


class SetupError(AdaptomeError, ValueError):
    """Adapters that cannot be combined as asked (wrong count, peft with native, fusion of LoRA)."""


@dataclass
class TaskOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class TaskModel(nn.Module):
    """Encoder + classifier (module docstring); ``forward`` returns ``.loss`` (with labels) and ``.logits``.

    Args:
        encoder: a transformers encoder (``AutoModel``), without pooler.
        prefix: the attribute name its masked-LM model gives it (``base_model_prefix``).
        num_labels: classes.
        token_level: one prediction per token (NER) instead of per sentence.
        pooling: ``mean`` or ``cls`` (sentence tasks).
        dropout: dropout before the classifier.
    """

    def __init__(self, encoder: nn.Module, prefix: str, num_labels: int, token_level: bool,
                 pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.prefix, self.token_level, self.pooling = prefix, token_level, pooling
        setattr(self, prefix, encoder)
        d = encoder.config.hidden_size
        # sentence tasks: batch-normalised pooled features (mean pooling shrinks the spread between
        # sentences by about 1/sqrt(T), which a plain linear head trained for a few hundred steps cannot undo)
        norm = [] if token_level else [nn.BatchNorm1d(d)]
        self.classifier = nn.Sequential(*norm, nn.Dropout(dropout), nn.Linear(d, num_labels))

    @property
    def encoder_model(self) -> nn.Module:
        return getattr(self, self.prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder_model.get_input_embeddings()

    def get_output_embeddings(self) -> None:
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> TaskOutput:
        h = self.encoder_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        if self.token_level:
            logits = self.classifier(h)  # (B, T, C)
        else:
            if self.pooling == "cls":
                pooled = h[:, 0]  # (B, D)
            else:
                m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
            logits = self.classifier(pooled)  # (B, C)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                               ignore_index=IGNORE)  # (B*T, C) or (B, C)
        return TaskOutput(loss, logits)


def build_task_model(base: str, num_labels: int, token_level: bool, pooling: str = "mean"):
    """``(tokenizer, TaskModel)`` on the encoder of ``base`` (hub id or folder)."""
    from transformers import AutoConfig

    from adaptome.domains.multilingual.base import load_base, load_encoder

    tok = load_base(base, None)[0]
    encoder = load_encoder(base)
    prefix = _prefix(AutoConfig.from_pretrained(base))
    return tok, TaskModel(encoder, prefix, num_labels, token_level, pooling)


def _prefix(config) -> str:
    """The attribute under which the masked-LM model of this architecture keeps its encoder."""
    import transformers

    cls = transformers.MODEL_FOR_MASKED_LM_MAPPING[type(config)]
    return cls.base_model_prefix


class SentenceDataset(Dataset):
    """Tokenized sentences with integer labels."""

    def __init__(self, examples: Sequence[Example], tokenizer, label2id: dict[str, int], max_length: int):
        from adaptome.domains.multilingual.mlm import fit_length

        enc = tokenizer([e.text for e in examples], truncation=True, max_length=fit_length(tokenizer, max_length))
        self.items = [{"input_ids": enc["input_ids"][i], "labels": label2id[e.label]} for i, e in enumerate(examples)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def align_labels(word_ids: Sequence[int | None], tags: Sequence[str], label2id: dict[str, int],
                 mode: Literal["first", "all"] = "first") -> list[int]:
    """Token labels for one sentence from its word tags (module docstring)."""
    if mode not in ("first", "all"):
        raise ValueError(f"label mode must be 'first' or 'all', got {mode!r}")
    out, prev = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != prev:
            out.append(label2id[tags[w]])
        elif mode == "all":
            tag = tags[w]
            tag = "I-" + tag[2:] if tag.startswith("B-") else tag
            out.append(label2id[tag] if tag in label2id else label2id[tags[w]])
        else:
            out.append(IGNORE)
        prev = w
    return out


def word_predictions(word_ids: Sequence[int | None], token_preds: Sequence[int], n_words: int,
                     id2label: dict[int, str]) -> tuple[list[str], int]:
    """Word tags from token predictions (each word's first subword); words never seen (truncated)
    get ``O``. Returns the tags and the number of truncated words."""
    tags: list[str | None] = [None] * n_words
    for w, p in zip(word_ids, token_preds):
        if w is not None and tags[w] is None:
            tags[w] = id2label[int(p)]
    missing = sum(t is None for t in tags)
    return [t if t is not None else "O" for t in tags], missing


def word_windows(token_counts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive word ranges ``[start, end)`` whose token counts sum to at most ``budget`` (greedy, in
    order); a word longer than ``budget`` on its own gets a window of its own."""
    out, start, used = [], 0, 0
    for w, n in enumerate(token_counts):
        if w > start and used + n > budget:
            out.append((start, w))
            start, used = w, 0
        used += n
    if token_counts:
        out.append((start, len(token_counts)))
    return out


class TokenDataset(Dataset):
    """Tokenized NER sentences (pre-split words) with aligned token labels and their ``word_ids``.

    A sentence whose subwords do not fit ``max_length`` is split into consecutive word windows that do
    (``word_windows``), each an item of its own (``sentence``, ``offset``: where its words sit), so no
    word is cut off: ``sentence_tags`` joins the windows' word predictions back per sentence. Only a
    single word longer than ``max_length`` alone is truncated, and it keeps its first subword."""

    def __init__(self, sentences: Sequence[Sentence], tokenizer, label2id: dict[str, int], max_length: int,
                 mode: str = "first"):
        from adaptome.domains.multilingual.mlm import fit_length

        limit = fit_length(tokenizer, max_length)
        budget = max(1, limit - tokenizer.num_special_tokens_to_add(pair=False))
        # whole sentences, only to count each word's subwords (verbose=False: no "longer than the maximum" warning)
        full = tokenizer([s.words for s in sentences], is_split_into_words=True, add_special_tokens=False,
                         verbose=False)
        windows = []  # (sentence index, first word, end word)
        for i, s in enumerate(sentences):
            counts = [0] * len(s.words)
            for w in full.word_ids(i):
                if w is not None:
                    counts[w] += 1
            windows.extend((i, a, b) for a, b in word_windows(counts, budget))
        enc = tokenizer([sentences[i].words[a:b] for i, a, b in windows], is_split_into_words=True,
                        truncation=True, max_length=limit)
        self.n_sentences = len(sentences)
        self.items = []
        for k, (i, a, b) in enumerate(windows):
            wids = enc.word_ids(k)
            self.items.append({"input_ids": enc["input_ids"][k],
                               "labels": align_labels(wids, sentences[i].tags[a:b], label2id, mode),
                               "word_ids": wids, "n_words": b - a, "sentence": i, "offset": a})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def sentence_tags(self, preds: Sequence[Sequence[int]], id2label: dict[int, str]) -> tuple[list[list[str]], int]:
        """Word tags per sentence from the token predictions of every item (window), and the number of
        words that got no token (predicted ``O``)."""
        tags: list[list[str]] = [[] for _ in range(self.n_sentences)]
        missing = 0
        for item, p in zip(self.items, preds):
            words, cut = word_predictions(item["word_ids"], p, item["n_words"], id2label)
            assert len(tags[item["sentence"]]) == item["offset"], "windows out of order"
            tags[item["sentence"]].extend(words)
            missing += cut
        return tags, missing


class PadCollator:
    """Pads ``input_ids`` (pad id) and token ``labels`` (-100); sentence labels become a (B,) tensor."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        t = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), t), self.pad_id, dtype=torch.long)  # (B, T)
        attn = torch.zeros((len(items), t), dtype=torch.long)  # (B, T)
        token_level = isinstance(items[0]["labels"], list)
        labels = torch.full((len(items), t), IGNORE, dtype=torch.long) if token_level else torch.tensor(
            [it["labels"] for it in items], dtype=torch.long)  # (B, T) or (B,)
        for b, it in enumerate(items):
            n = len(it["input_ids"])
            ids[b, :n] = torch.tensor(it["input_ids"])
            attn[b, :n] = 1
            if token_level:
                labels[b, :n] = torch.tensor(it["labels"])
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def setup_model(model, mode: Literal["task", "stack", "fuse", "full"], task_method: str = "seq_bn",
                task_options: dict | None = None, lang_adapters: Sequence[str | Path] = ()):
    """Attach the adapters of ``mode`` (module docstring) to a task model; returns the model to train."""
    from adaptome.core.adapters import inject
    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.adapters.bottleneck import stack_adapters
    from adaptome.core.adapters.fusion import fuse_adapters
    from adaptome.core.adapters.io import load_adapter

    need = {"task": 0, "stack": 1, "fuse": 2, "full": 0}
    if mode not in need:
        raise SetupError(f"unknown mode {mode!r}; choose task, stack, fuse or full")
    if len(lang_adapters) != need[mode]:
        raise SetupError(f"mode {mode!r} takes {need[mode]} language adapter(s), got {len(lang_adapters)}")
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    lang_names = [f"lang{i}" for i in range(len(lang_adapters))]
    from adaptome.domains.multilingual.lang_adapter import adapter_dir

    for name, path in zip(lang_names, lang_adapters):
        model = load_adapter(model, adapter_dir(path), adapter_name=name)
        if inject.adapter_configs(model)[name].backend != "native":
            raise SetupError(f"{path}: a {inject.adapter_configs(model)[name].method} adapter (peft backend) cannot "
                             "be stacked with a native task adapter; train the language adapter with a native method "
                             "(seq_bn, seq_bn_inv, lora_native)")
    opts = {"modules_to_save": ["classifier"], **(task_options or {})}
    model = apply_adapter(model, make_config(task_method, opts, source="task adapter"), "task")
    if mode == "task":
        inject.set_adapter(model, ["task"])
    elif mode == "stack":
        stack_adapters(model, lang_names + ["task"])
    else:
        methods = [inject.adapter_configs(model)[n].method for n in lang_names]
        if not all(m in ("seq_bn", "seq_bn_inv") for m in methods):
            raise SetupError(f"{', '.join(map(str, lang_adapters))}: fusion mixes bottleneck adapters (seq_bn, "
                             f"seq_bn_inv), got {methods}")
        fuse_adapters(model, lang_names, top=["task"])
    return model


@torch.no_grad()
def predict(model, dataset: Dataset, collate, batch_size: int = 32) -> list:
    """Predicted label ids: one per sentence, or one list per sentence of token predictions."""
    model.eval()
    device = next(model.parameters()).device
    out: list = []
    for lo in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(lo, min(lo + batch_size, len(dataset)))]
        batch = collate(items)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits  # (B, C) or (B, T, C)
        pred = logits.argmax(-1).cpu()
        if pred.dim() == 1:
            out.extend(pred.tolist())
        else:
            out.extend(pred[b, :len(it["input_ids"])].tolist() for b, it in enumerate(items))
    return out
