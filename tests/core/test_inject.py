"""Model-level adapter bookkeeping: freezing adapters that stay active."""

import pytest
import torch
from torch import nn

from adaptome.core.adapters import api, inject
from adaptome.core.adapters.lora_native import LoraNativeConfig


def _trainable_names(model):
    return sorted({n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad})


def test_frozen_adapter_stays_frozen_across_set_adapter_until_unfrozen():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    api.apply_adapter(m, LoraNativeConfig(r=2, target_modules=["0", "2"]), "lang")
    api.apply_adapter(m, LoraNativeConfig(r=2, target_modules=["0", "2"]), "task")
    api.set_adapter(m, ["lang", "task"])
    assert _trainable_names(m) == ["lang", "task"]
    inject.freeze_adapters(m, ["lang"])
    assert _trainable_names(m) == ["task"]
    api.set_adapter(m, ["lang", "task"])
    assert _trainable_names(m) == ["task"]
    inject.freeze_adapters(m, ["lang"], frozen=False)
    assert _trainable_names(m) == ["lang", "task"]
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        inject.freeze_adapters(m, ["nope"])
