"""Tiny models for the compression tests (built from config, seeded) and one torch thread.

One thread: the small SVDs and quantisations here are far faster single-threaded on a shared
machine (thread spin-waits dominate); the previous setting is restored after each test.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64)
    return BertForMaskedLM(cfg).eval()


def tiny_phi3(seed: int = 0):
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    cfg = Phi3Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    return Phi3ForCausalLM(cfg).eval()


def tiny_vit(seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=2, num_attention_heads=4, num_labels=3)
    return ViTForImageClassification(cfg).eval()


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
