"""A character-level tokenizer for ProLLaMA's text forms, as a real ``transformers`` tokenizer.

ProLLaMA keeps LLaMA-2's SentencePiece vocabulary; a tiny model trained from scratch on CPU learns
far faster with one token per character. The vocabulary (the core's character tokenizer) is the
specials ``<pad> <s> </s> <unk> <mask>`` followed by every printable ASCII character, so amino-acid
letters, ``=<>[]``, spaces and label words (``[Generate by superfamily] Superfamily=<...>``) all
encode. ``<s>`` is prepended by the post-processor; ``</s>`` is appended by the callers that need it
(stage 1 and stage 2, as ProLLaMA's ``add_eos_token``). It is a ``PreTrainedTokenizerFast`` built
from a ``tokenizers`` WordLevel model with a split-every-character pre-tokenizer and a ``Fuse``
decoder, so it saves and loads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.

Not covered: non-ASCII label text (it maps to ``<unk>``).
"""

from __future__ import annotations


def build_tokenizer(model_max_length: int = 4096):
    """The character-level ``PreTrainedTokenizerFast`` with ``<s>`` prepended (pad 0, bos 1, eos 2,
    unk 3); the core's ``adaptome.core.text.char_tokenizer``."""
    from adaptome.core.text import char_tokenizer

    return char_tokenizer(model_max_length=model_max_length, add_bos=True)


def load_tokenizer(name_or_path: str | None, **kwargs):
    """The tokenizer saved beside a checkpoint, or the character tokenizer when ``None``.

    ``kwargs`` go to ``from_pretrained`` (``local_files_only``). A tokenizer without a pad token gets
    ``pad = eos`` (as ProLLaMA does).
    """
    if name_or_path is None:
        return build_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def encode(tok, text: str, bos: bool = True) -> list[int]:
    """Token ids of ``text`` (with ``<s>`` first when ``bos``), no truncation."""
    return tok(text, add_special_tokens=bos)["input_ids"]
