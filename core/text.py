"""Text inputs for the generic language-model run: readers, a character tokenizer, block packing and
tiny models built from config.

* ``read_texts(path)``: ``.txt`` (one example a non-empty line) or FASTA (``.fasta .fa .faa``: one
  example a record, wrapped lines joined). An empty file or a FASTA without records is an error
  naming the file.
* ``char_tokenizer()``: a real ``transformers.PreTrainedTokenizerFast`` with one token per printable
  ASCII character plus ``<pad> <s> </s> <unk> <mask>``; it saves and loads with
  ``save_pretrained`` / ``AutoTokenizer.from_pretrained``. Tiny models trained from scratch on a
  CPU learn much faster with it than with a subword vocabulary.
* ``pack_blocks(ids, block_size)``: concatenate tokenized examples (each ending in EOS) and cut
  fixed blocks, dropping the remainder (as transformers' ``run_clm`` does).
* ``tiny_causal_lm`` / ``tiny_masked_lm``: LLaMA / BERT architectures from config, no weights.

Not covered: streaming of corpora larger than memory; non-ASCII text maps to ``<unk>`` in the
character tokenizer (use a hub tokenizer for such text).
"""

from __future__ import annotations

from adaptome.core.errors import AdaptomeError
import os
import string
from pathlib import Path

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
CHARS = "".join(ch for ch in string.printable if ch not in "\t\n\r\x0b\x0c")


class InputError(AdaptomeError, ValueError):
    """An input file is missing, empty or malformed; the message names the file."""


def read_fasta_sequences(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(header, sequence) pairs of a FASTA file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    records: list[tuple[str, list[str]]] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                records.append((line[1:].strip(), []))
            elif not records:
                raise InputError(f"{path}:{lineno}: sequence data before the first '>' header; not FASTA")
            else:
                records[-1][1].append(line)
    if not records:
        raise InputError(f"{path}: no FASTA records")
    out = [(h, "".join(parts)) for h, parts in records]
    empty = [h for h, s in out if not s]
    if empty:
        raise InputError(f"{path}: record {empty[0]!r} has an empty sequence")
    return out


def read_texts(path: str | os.PathLike) -> list[str]:
    """Examples from a text or FASTA file (chosen by suffix)."""
    path = Path(path)
    if path.suffix.lower() in FASTA_SUFFIXES:
        return [s for _, s in read_fasta_sequences(path)]
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{path}: no text lines")
    return lines


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
    """Concatenate examples (each followed by EOS) and cut ``block_size`` blocks."""
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
