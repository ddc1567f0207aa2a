"""Text inputs for the generic language-model run: readers, a character tokenizer, block packing and
tiny models built from config.

* ``read_texts(path, text_field="text")``: one example per non-empty line of a plain-text file
  (``.txt`` / ``.text``; surrounding white space stripped), or one example per line of a JSON
  Lines file (``.jsonl``: each line a JSON object whose ``text_field`` holds a string). Any other
  suffix is an error (a domain's file format is read by that domain's commands, never taken as
  text); so is a missing or empty file, a line that is not JSON, or an object without a string
  ``text_field``; each error names the file (and line). A leading UTF-8 byte-order mark (as Windows
  editors write) is dropped, and Windows line endings read as plain ones.
* ``char_tokenizer()``: a real ``transformers.PreTrainedTokenizerFast`` with one token per printable
  ASCII character plus ``<pad> <s> </s> <unk> <mask>``; it saves and loads with
  ``save_pretrained`` / ``AutoTokenizer.from_pretrained``. Tiny models trained from scratch on a
  CPU learn much faster with it than with a subword vocabulary.
* ``pack_blocks(ids, block_size, eos_id)``: concatenate tokenized examples (each followed by EOS)
  and cut fixed blocks, dropping the remainder (as transformers' ``run_clm`` ``group_texts`` does);
  the one block packer of the code base.
* ``tiny_causal_lm`` / ``tiny_masked_lm``: LLaMA / BERT architectures from config, no weights.
* ``example_text_files()``: core's shipped example text (``core/data/example_*.txt``, card
  ``data_cards/core_example_text.md``), a training and a held-out file.

Not covered: paragraph examples spanning several lines (join them into one line or one JSONL
record); streaming of corpora larger than memory; domain formats (a domain package reads its own,
e.g. sequence files); non-ASCII text maps to ``<unk>`` in the character tokenizer (use a hub
tokenizer for such text; ``adaptome train`` refuses a file that is more than 5 % ``<unk>``).
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

from adaptome.core.errors import AdaptomeError

TEXT_SUFFIXES = (".txt", ".text")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
CHARS = "".join(ch for ch in string.printable if ch not in "\t\n\r\x0b\x0c")


class InputError(AdaptomeError, ValueError):
    """An input file is missing, empty or malformed; the message names the file."""


def unk_share(tok, ids: list[list[int]]) -> float:
    """Share of the token ids (lists of ids, special tokens left out by the caller) that are the tokenizer's
    ``<unk>``: how much of a text the tokenizer cannot read (0.0 for a tokenizer without one, or no tokens)."""
    unk = getattr(tok, "unk_token_id", None)
    n = sum(len(x) for x in ids)
    if unk is None or not n:
        return 0.0
    return sum(t == unk for x in ids for t in x) / n


def read_utf8(path: str | os.PathLike, error: type[Exception] = InputError) -> str:
    """The text of a UTF-8 file without a byte-order mark (Windows editors write one); bytes that are not
    UTF-8 are ``error`` naming the file, the line and the column of the first bad byte."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                    "convert the file to UTF-8") from None


def read_jsonl_records(path: str | os.PathLike, error: type[Exception] = InputError) -> list[tuple[int, dict]]:
    """(line number, record) for every non-empty line of a JSON Lines file. A missing file, bytes that are
    not UTF-8, a line that is not a JSON object, or a file without records is ``error`` naming the file (and
    the line)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    records = []
    for lineno, line in enumerate(read_utf8(path, error).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        records.append((lineno, obj))
    if not records:
        raise error(f"{path}: no records")
    return records


def read_texts(path: str | os.PathLike, text_field: str = "text") -> list[str]:
    """Examples of a plain-text file (one a non-empty line) or a ``.jsonl`` file (``text_field``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + (".jsonl",):
        raise InputError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; the generic reader takes "
                         f"plain text ({', '.join(TEXT_SUFFIXES)}: one example per line) or .jsonl")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if suffix != ".jsonl":
        texts = [ln.strip() for ln in read_utf8(path).splitlines() if ln.strip()]
        if not texts:
            raise InputError(f"{path}: no text lines")
        return texts
    texts = []
    for lineno, obj in read_jsonl_records(path):
        value = obj.get(text_field)
        if not isinstance(value, str):
            raise InputError(f"{path}:{lineno}: no string field {text_field!r} "
                             f"(set data.text_field to the field holding the text)")
        if value.strip():
            texts.append(value)
    if not texts:
        raise InputError(f"{path}: no JSONL records with text in field {text_field!r}")
    return texts


def example_text_files() -> tuple[Path, Path]:
    """Core's shipped example text: (training file, held-out file)."""
    from importlib.resources import files

    base = Path(str(files("adaptome.core") / "data"))
    return base / "example_train.txt", base / "example_heldout.txt"


def char_tokenizer(model_max_length: int = 4096, add_bos: bool = False):
    """One token per printable ASCII character; pad 0, bos 1, eos 2, unk 3, mask 4.

    With ``add_bos`` a post-processor puts ``<s>`` first (as LLaMA's tokenizer does); EOS is left
    to the callers that need it.
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>", model_max_length=model_max_length)


def pack_blocks(token_lists: list[list[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Concatenate examples (each followed by EOS) and cut ``block_size`` blocks; the rest is dropped."""
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(eos_id)
    n = len(stream) // block_size
    if n == 0:
        raise InputError(f"the data holds {len(stream)} tokens, fewer than one block of {block_size}")
    return [stream[i * block_size:(i + 1) * block_size] for i in range(n)]


def tiny_causal_lm(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                   intermediate_size: int = 128, max_position_embeddings: int = 1024, pad_token_id: int = 0,
                   bos_token_id: int = 1, eos_token_id: int = 2, num_kv_heads: int | None = None):
    """A small LLaMA (untied LM head, as LLaMA-2) with random weights from the global RNG."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads,
                      num_key_value_heads=num_kv_heads or num_heads, max_position_embeddings=max_position_embeddings,
                      tie_word_embeddings=False, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                      eos_token_id=eos_token_id)
    return LlamaForCausalLM(cfg)


def tiny_masked_lm(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                   intermediate_size: int = 128, max_position_embeddings: int = 512, pad_token_id: int = 0):
    """A small BERT masked LM with random weights."""
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=num_heads, intermediate_size=intermediate_size,
                     max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id)
    return BertForMaskedLM(cfg)
