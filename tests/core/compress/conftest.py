"""Tiny models for the compression tests (from ``tests/tiny_models.py``, seeded) and one torch thread.

One thread: the small SVDs and quantisations here are far faster single-threaded on a shared
machine (thread spin-waits dominate); the previous setting is restored after each test.
"""

from __future__ import annotations

import pytest
import tiny_models as tiny
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_llama(seed: int = 0):
    return tiny.llama(seed=seed, vocab_size=40)


def tiny_bert(seed: int = 0):
    return tiny.bert(seed=seed, dropout=0.1, max_position_embeddings=64)


def tiny_phi3(seed: int = 0):
    return tiny.phi3(seed=seed, vocab_size=40, pad_token_id=0)


def tiny_vit(seed: int = 0):
    return tiny.vit(head="classification", seed=seed, image_size=16, num_labels=3)


def token_batch(seed: int = 1, vocab: int = 40, shape=(2, 12)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, shape, generator=g)


class TokenData(torch.utils.data.Dataset):
    """Fixed random causal-LM examples for a few fine-tuning steps."""

    def __init__(self, n: int = 16, length: int = 12, vocab: int = 40):
        g = torch.Generator().manual_seed(7)
        self.ids = torch.randint(3, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def builders():
    """name -> function building that tiny model from config."""
    return {"llama": tiny_llama, "bert": tiny_bert, "phi3": tiny_phi3, "vit": tiny_vit}


@pytest.fixture
def batch():
    return token_batch()


@pytest.fixture
def token_data():
    return TokenData()
