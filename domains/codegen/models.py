"""Model loading for code generation: a hub id / local path, or a tiny default built from config.

``code_tokenizer()`` is a real ``transformers.PreTrainedTokenizerFast`` with one token per
printable ASCII character *including newline and tab* (code needs them; core's character
tokenizer drops them), built offline with ``tokenizers``. ``tiny_code_lm(seed)`` is a small LLaMA
(core's ``text.tiny_causal_lm``) over it with a 4096-position context, random weights from
``seed``. ``load_model(spec)`` takes ``"tiny"`` (or an empty string), a folder written by
``save_tiny`` / ``codegen train`` (``merged/``), or a hub id.

Not covered: quantized loading, multi-GPU sharding (``device_map``); non-ASCII characters map to
``<unk>`` in the code tokenizer (use a hub tokenizer for such code).
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
CODE_CHARS = "".join(ch for ch in string.printable if ch not in "\r\x0b\x0c")
TINY_SPECS = {"tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)}


def code_tokenizer(model_max_length: int = 4096):
    """Character tokenizer for code: pad 0, bos 1, eos 2, unk 3, then printable ASCII + \\n + \\t."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in CODE_CHARS:
        vocab[ch] = len(vocab)
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=model_max_length)


def tiny_code_lm(seed: int = 0, vocab_size: int | None = None):
    """A tiny LLaMA for the code tokenizer, weights drawn from ``seed`` (same seed, same model)."""
    import torch

    from adaptome.core import text

    torch.manual_seed(seed)
    return text.tiny_causal_lm(vocab_size or len(SPECIALS) + len(CODE_CHARS), max_position_embeddings=4096,
                               **TINY_SPECS["tiny"])


def save_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder that ``load_model`` (and transformers) can read."""
    out = Path(out_dir)
    tiny_code_lm(seed).save_pretrained(out)
    code_tokenizer().save_pretrained(out)
    return out


def load_model(spec: str = "tiny", seed: int = 0, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) for ``"tiny"`` / a local folder / a hub id, in eval mode on ``device``."""
    import torch

    if spec in ("", "tiny"):
        model, tok = tiny_code_lm(seed), code_tokenizer()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=getattr(torch, dtype))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok
