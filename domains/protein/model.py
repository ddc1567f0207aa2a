"""The causal LM: any ``transformers`` checkpoint by hub id or local path, or the tiny LLaMA built
from config that the tests, quickstart and benchmarks use.

The tiny model is ``LlamaForCausalLM`` with ``tie_word_embeddings=False`` (ProLLaMA stage 1 trains
``embed_tokens`` and ``lm_head`` as separate modules, see ``core/adapters/modules_to_save.py``).
Adapter targets: LLaMA uses the seven projections ``q k v o gate up down``; Phi-3's fused
``qkv_proj`` / ``gate_up_proj`` and other architectures are reached with ``target_modules:
all-linear`` or the ``attention+mlp`` preset.

Not covered: quantized loading, gradient checkpointing, flash attention.
"""

from __future__ import annotations

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(tok, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
               num_heads: int = 4, max_position_embeddings: int = 1024, seed: int = 0):
    """A randomly initialised, seeded LLaMA sized for CPU (about 0.1 M parameters at the defaults)."""
    import torch

    from adaptome.core.text import tiny_causal_lm

    torch.manual_seed(seed)
    return tiny_causal_lm(len(tok), hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                          intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id)


def load_causal_lm(name_or_path: str, dtype: str = "float32"):
    """``AutoModelForCausalLM.from_pretrained`` (hub id or folder) in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype))


def load_model_and_tokenizer(name_or_path: str | None, dtype: str = "float32", hidden_size: int = 64,
                             intermediate_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                             max_position_embeddings: int = 1024, seed: int = 0):
    """(model, tokenizer): a checkpoint with its own tokenizer, or the tiny LLaMA + character
    tokenizer when ``name_or_path`` is None."""
    from adaptome.domains.protein.tokenizer import build_tokenizer, load_tokenizer

    if name_or_path is None:
        tok = build_tokenizer()
        return tiny_llama(tok, hidden_size, intermediate_size, num_layers, num_heads,
                          max_position_embeddings, seed), tok
    return load_causal_lm(name_or_path, dtype), load_tokenizer(name_or_path)
