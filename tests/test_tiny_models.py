"""The shared tiny models (``tests/tiny_models.py``): every test builds its tiny LLaMA / BERT / XLM-R /
ESM / Phi-3 / ViT there, the weights depend only on the arguments, and a bad head is an error.

The scan is textual over the test files (a transformers ``*Config`` class of those architectures, a call
of the library's ``tiny_causal_lm`` / ``tiny_masked_lm``, or ``timm.create_model``); it does not see a
model built through another name (``AutoConfig``, ``getattr``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tiny_models as tiny
import torch

TESTS = Path(__file__).resolve().parent
BUILD_RX = re.compile(r"\b(?:Llama|Bert|XLMRoberta|Esm|Phi3|ViT)Config\b|\btiny_(?:causal|masked)_lm\("
                      r"|\btimm\.create_model\(")


def test_only_the_shared_module_builds_tiny_models():
    offenders = [f"{path.relative_to(TESTS)}:{i}: {line.strip()}"
                 for path in sorted(TESTS.rglob("*.py")) if path.name not in ("tiny_models.py", Path(__file__).name)
                 for i, line in enumerate(path.read_text().splitlines(), 1) if BUILD_RX.search(line)]
    assert not offenders, "build tiny models through tests/tiny_models.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("build", [tiny.llama, tiny.bert], ids=["llama", "bert"])
def test_weights_depend_only_on_the_arguments(build):
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training and build(eval_mode=False).training


def test_sizes_reach_the_config():
    m = tiny.llama(vocab_size=16, hidden_size=48, num_layers=1, num_kv_heads=4, tie=True)
    assert m.config.vocab_size == 16 and m.config.hidden_size == 48 and len(m.model.layers) == 1
    assert m.config.num_key_value_heads == 4 and m.lm_head.weight is m.model.embed_tokens.weight
    assert tiny.bert(head=None, dropout=0.1).config.hidden_dropout_prob == 0.1


def test_unknown_head_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'pooler'"):
        tiny.bert(head="pooler")
