"""``core.train.method_training``: what ``fit`` attaches from the adapter configs on a model.

* every method with training behaviour resumes exactly: an interrupted and resumed ``fit`` ends with
  the same adapter (trainable and frozen tensors, LoRA-SB's gradient-initialised A and B included) as
  an uninterrupted one, because the hooks' states and the data-initialised tensors are checkpointed;
* SoRA's gates sit in their own optimizer group without weight decay;
* an optimizer from ``make_optimizer`` that ignores a method's group gets a warning, one built from
  ``optimizer_groups`` does not;
* a frozen adapter (a language adapter under a task adapter) gets no hook; a wrapped model (a
  classifier around an adapted encoder) gets its encoder's hooks.
"""

from __future__ import annotations

import warnings

import pytest
import tiny_models as tiny
import torch
from stop_hooks import StopAt as _StopAt
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.api import adapter_state_dict, apply_adapter, make_config
from adaptome.core.adapters.base import AdapterConfig
from adaptome.core.adapters.inject import freeze_adapters, set_adapter
from adaptome.core.train.loop import fit
from adaptome.core.train.method_training import collect

# the tiny LLaMA's sizes (tests/tiny_models.py), built seeded and in train mode as a fresh module is
TINY = dict(vocab_size=16, num_layers=1, eval_mode=False)
OPTIONS = {"dylora": {"r": 4}, "sora": {"r": 4, "sparse_lambda": 20.0}, "lamda": {"r": 4},
           "allora": {"r": 4}, "lorasb": {"r": 4, "init_samples": 6, "init_batch_size": 3}}
WITH_BEHAVIOUR = [n for n in ADAPTERS.names()
                  if ADAPTERS.get(n).training_hooks is not AdapterConfig.training_hooks
                  or ADAPTERS.get(n).param_groups is not AdapterConfig.param_groups or ADAPTERS.get(n).needs_data_init]


def _model(method: str, **options):
    return apply_adapter(tiny.llama(**TINY), make_config(method, {**OPTIONS.get(method, {}), **options}))


def _data(n=32, t=10):
    g = torch.Generator().manual_seed(1)
    seqs = (torch.randint(0, 16, (n, 1), generator=g) + torch.arange(t)) % 16  # (n, t)
    return [{"input_ids": s, "labels": s} for s in seqs]


def _collate(b):
    return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)


KW = dict(collate_fn=_collate, max_steps=10, batch_size=4, lr=1e-2, progress=False, log_every=0)


class _Nothing:
    pass


def test_every_method_with_behaviour_is_covered():
    assert {"dylora", "sora", "lamda", "allora", "lorasb"} <= set(WITH_BEHAVIOUR)


@pytest.mark.parametrize("method", WITH_BEHAVIOUR)
def test_resume_is_exact(method, tmp_path):
    full = fit(_model(method), _data(), output_dir=tmp_path / "full", **KW)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(method), _data(), output_dir=tmp_path / "cut", save_every=4, hooks=[_StopAt(6)], **KW)
    resumed = fit(_model(method), _data(), output_dir=tmp_path / "cut", save_every=4, hooks=[_Nothing()], **KW)
    assert resumed.resumed_from == 4
    a, b = adapter_state_dict(full.model), adapter_state_dict(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if method == "lorasb":  # the data init ran in the fresh run and was restored, not redone, on resume
        fresh = adapter_state_dict(_model(method))
        key = next(k for k in a if k.endswith("loraxs_B"))
        assert not torch.equal(a[key], fresh[key])


def test_lorasb_loaded_adapter_is_not_reinitialised(tmp_path):
    """Continuing to train a saved LoRA-SB adapter keeps its factors (the gradient init is not redone)."""
    from adaptome.core.adapters import io

    first = fit(_model("lorasb"), _data(), output_dir=tmp_path / "a", **KW)
    saved = io.save_adapter(first.model, tmp_path / "adapter")
    loaded = io.load_adapter(tiny.llama(**TINY), saved, is_trainable=True)
    before = adapter_state_dict(loaded)
    # lr 1e-12 (0 is refused): one Adam step moves a weight by about 1e-12, a redone init moves it grossly
    fit(loaded, _data(), output_dir=tmp_path / "b", **{**KW, "max_steps": 1, "lr": 1e-12})
    after = adapter_state_dict(loaded)
    for k in before:  # a redone init would reset the trained R to S / s
        assert torch.allclose(before[k], after[k], rtol=0, atol=1e-9), k


def test_sora_gates_have_their_own_group_without_weight_decay():
    m = _model("sora", gate_lr=0.5)
    groups = collect(m).optimizer_groups(m, weight_decay=0.1)
    gates = {id(p) for n, p in m.named_parameters() if "sora_gate" in n}
    assert len(groups) == 2 and groups[0]["weight_decay"] == 0.1
    assert {id(p) for p in groups[1]["params"]} == gates
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 0.5
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in m.parameters() if p.requires_grad)  # each once


def test_an_optimizer_that_ignores_the_groups_is_warned_about(tmp_path):
    m = _model("sora")
    with pytest.warns(UserWarning, match="does not apply an adapter method's group"):
        fit(m, _data(), output_dir=tmp_path / "a", weight_decay=0.1, **{**KW, "max_steps": 1},
            make_optimizer=lambda mm: torch.optim.AdamW([p for p in mm.parameters() if p.requires_grad],
                                                        weight_decay=0.1))
    m = _model("sora")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fit(m, _data(), output_dir=tmp_path / "b", **{**KW, "max_steps": 1},
            make_optimizer=lambda mm: torch.optim.AdamW(collect(mm).optimizer_groups(mm, 0.1), lr=1e-2))


def test_frozen_adapter_gets_no_hook_and_wrapped_models_are_searched():
    m = apply_adapter(tiny.llama(**TINY), make_config("dylora", {"r": 4}), "lang")
    apply_adapter(m, make_config("dylora", {"r": 2}), "task")
    set_adapter(m, ["lang", "task"])
    freeze_adapters(m, ["lang"])
    hooks = collect(m).hooks
    assert [h.adapter_name for h in hooks] == ["task"]

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.head = inner, nn.Linear(2, 2)

    assert [h.adapter_name for h in collect(Wrapper(m)).hooks] == ["task"]
