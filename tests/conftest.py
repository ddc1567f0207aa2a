"""Shared tiny models for the whole test suite, built from config (random weights, no download).

Factories (session fixtures returning a function, so a test or a module fixture picks the sizes):

* ``tiny_llama_factory(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
  num_heads=4, num_kv_heads=2, tie=False, seed=0)``: a ``LlamaForCausalLM`` in eval mode, seeded
  (the weights depend only on the arguments). Grouped-query attention (2 key/value heads for 4
  query heads) and an untied LM head by default, as the adapter tests need.
* ``tiny_bert_factory(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2,
  num_heads=4, head="masked_lm", dropout=0.0, seed=0)``: a ``BertForMaskedLM`` (or the bare
  ``BertModel`` with ``head=None``) in eval mode, dropout off by default so outputs are
  deterministic.

Fixtures ``tiny_llama`` / ``tiny_bert``: one fresh model each with the defaults.
"""

from __future__ import annotations

import pytest


def _tiny_llama(vocab_size: int = 32, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, num_kv_heads: int = 2, tie: bool = False, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def _tiny_bert(vocab_size: int = 40, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
               num_heads: int = 4, head: str | None = "masked_lm", dropout: float = 0.0, seed: int = 0):
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    if head not in ("masked_lm", None):
        raise ValueError(f"tiny_bert: head must be 'masked_lm' or None, got {head!r}")
    return (BertForMaskedLM(cfg) if head == "masked_lm" else BertModel(cfg)).eval()


@pytest.fixture(scope="session")
def tiny_llama_factory():
    return _tiny_llama


@pytest.fixture(scope="session")
def tiny_bert_factory():
    return _tiny_bert


@pytest.fixture
def tiny_llama():
    return _tiny_llama()


@pytest.fixture
def tiny_bert():
    return _tiny_bert()
