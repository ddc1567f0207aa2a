"""Shared tiny models for the whole test suite, built from config (random weights, no download).

The builders live in ``tests/tiny_models.py`` (one place for every tiny LLaMA / BERT / XLM-R / ESM /
Phi-3 / ViT); this file puts ``tests/`` on ``sys.path`` so test modules can ``import tiny_models as tiny``
(the suite runs with ``--import-mode=importlib``, which adds nothing to ``sys.path`` itself).

Factories (session fixtures returning a function, so a test or a module fixture picks the sizes):

* ``tiny_llama_factory``: ``tiny_models.llama`` (``vocab_size=32, hidden_size=32, intermediate_size=64,
  num_layers=2, num_heads=4, num_kv_heads=2, tie=False, seed=0``): a ``LlamaForCausalLM`` in eval mode.
* ``tiny_bert_factory``: ``tiny_models.bert`` (``vocab_size=40, hidden_size=32, intermediate_size=64,
  num_layers=2, num_heads=4, head="masked_lm", dropout=0.0, seed=0``): a ``BertForMaskedLM`` (or the bare
  ``BertModel`` with ``head=None``) in eval mode.

Fixtures ``tiny_llama`` / ``tiny_bert``: one fresh model each with the defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

import tiny_models as tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_factory():
    return tiny.llama


@pytest.fixture(scope="session")
def tiny_bert_factory():
    return tiny.bert


@pytest.fixture
def tiny_llama():
    return tiny.llama()


@pytest.fixture
def tiny_bert():
    return tiny.bert()
