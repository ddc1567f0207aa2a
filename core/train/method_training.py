"""What each adapter method needs from training, collected from the model and attached by ``fit``.

A method declares its training behaviour on its config class (``core/adapters/base.py``:
``training_hooks``, ``param_groups``, ``needs_data_init`` / ``data_init``; the rank it evaluates
and saves at is its hooks' business, e.g. DyLoRA's sampler puts the resting rank back after every
step). ``collect(model)`` reads the adapter configs found on ``model`` (native or peft-backed) and
returns one ``MethodTraining``; ``fit`` calls it before building the optimizer, so no train path
(``adaptome train``, a domain's stage, a user's script) can forget a method's training step:

* ``hooks``: step hooks, put before the user's own hooks; their ``state_dict`` goes into checkpoints;
* ``optimizer_groups(...)``: the trainable parameters split into the default group and the methods'
  groups (SoRA's gates without weight decay), for the default AdamW;
* ``initialise(...)``: the data-driven inits (LoRA-SB's gradient SVD), run once before the first
  step of a fresh run, never on resume;
* ``checkpoint_params``: non-trainable adapter tensors a data init writes (LoRA-SB's A and B), saved
  with the checkpoint beside the trainable ones so that a resumed run restores them.

Only adapters that train are collected: a frozen or inactive adapter (a language adapter under a
task adapter) gets no hook. Not covered: methods whose behaviour needs a custom optimizer class
(the groups are for ``torch.optim.AdamW``; an optimizer from a user's ``make_optimizer`` that does
not apply them gets a warning).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn


@dataclass
class MethodTraining:
    #: step hooks of the methods on the model, in adapter order
    hooks: list[Any] = field(default_factory=list)
    #: the methods' optimizer groups, each {"params": [...], **options}
    groups: list[dict[str, Any]] = field(default_factory=list)
    #: (adapter name, config) of adapters whose ``data_init`` runs on a fresh run
    inits: list[tuple[str, Any]] = field(default_factory=list)
    #: name -> parameter: non-trainable tensors written by a data init, checkpointed with the trainables
    checkpoint_params: dict[str, nn.Parameter] = field(default_factory=dict)

    def optimizer_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Every trainable parameter once: the default group (``weight_decay``) and the methods' groups."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        claimed: set[int] = set()
        groups = []
        for g in self.groups:
            params = [p for p in g["params"] if p.requires_grad and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            if params:
                groups.append({**g, "params": params})
        rest = [p for p in trainable if id(p) not in claimed]
        return ([{"params": rest, "weight_decay": weight_decay}] if rest else []) + groups

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Warn when a caller's optimizer (``fit(make_optimizer=...)``) misses a method group's options
        (e.g. SoRA's gates with weight decay): build it from ``optimizer_groups`` to keep them."""
        where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for group in self.groups:
            options = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                got = where.get(id(p))
                if p.requires_grad and (got is None or any(got.get(k) != v for k, v in options.items())):
                    warnings.warn(f"fit: the optimizer from make_optimizer does not apply an adapter method's group "
                                  f"options {options} (e.g. SoRA's gates without weight decay); build its groups "
                                  "with method_training.collect(model).optimizer_groups(model, weight_decay)",
                                  stacklevel=3)
                    return

    def initialise(self, model: nn.Module, dataset: Sequence[Any], collate_fn: Callable | None,
                   loss_fn: Callable[[nn.Module, Any], torch.Tensor], lr: float, device: torch.device,
                   move: Callable[[Any, torch.device], Any]) -> None:
        """Run every data init on the first examples of ``dataset`` (in order, the same on every process),
        with the global RNG untouched (a collator that masks at random does not shift the run's RNG)."""
        from torch.utils.data import DataLoader, Subset

        for name, cfg in self.inits:
            n, bs = cfg.init_batches()
            subset = Subset(dataset, range(min(n, len(dataset))))
            loader = DataLoader(subset, batch_size=bs, shuffle=False, collate_fn=collate_fn)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                cfg.data_init(model, name, (move(b, device) for b in loader), loss_fn, lr)


def _adapters(model: nn.Module) -> list[tuple[str, Any]]:
    """(adapter name, config) of every adapter on ``model`` or on any of its submodules (a classifier
    that wraps an adapted encoder); the first config of a name wins."""
    from adaptome.core.adapters import api, inject

    found: dict[str, Any] = {}
    for m in model.modules():
        configs = getattr(m, "adaptome_method", {}) if api.is_peft_model(m) else inject.adapter_configs(m)
        for name, cfg in configs.items():
            found.setdefault(name, cfg)
    return list(found.items())


def _trains(model: nn.Module, adapter_name: str) -> bool:
    """Whether any of the adapter's own weights train; a peft-backed adapter (no native layer) counts as
    training (peft's own ``requires_grad`` bookkeeping is not read)."""
    from adaptome.core.adapters import inject

    for _, layer in inject.adapter_layers(model):
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr)
            if adapter_name in holder:
                item = holder[adapter_name]
                params = item.parameters() if isinstance(item, nn.Module) else [item]
                if any(p.requires_grad for p in params):
                    return True
    return not any(adapter_name in layer.configs for _, layer in inject.adapter_layers(model))


def _data_init_params(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """The adapter's non-trainable tensors (``other_param_names``), by their names in ``model``."""
    from adaptome.core.adapters import inject

    ids = set()
    for _, layer in inject.adapter_layers(model):
        for attr in layer.other_param_names:
            holder = getattr(layer, attr)
            if adapter_name in holder:
                ids.add(id(holder[adapter_name]))
    return {n: p for n, p in model.named_parameters() if id(p) in ids and not p.requires_grad}


def collect(model: nn.Module) -> MethodTraining:
    """The training behaviour of every adapter on ``model`` (or a submodule) that trains; the methods'
    hooks and inits get the whole ``model`` (the one ``fit`` trains and passes to the loss)."""
    out = MethodTraining()
    for name, cfg in _adapters(model):
        if not _trains(model, name):
            continue
        out.hooks.extend(cfg.training_hooks(model, name))
        out.groups.extend(cfg.param_groups(model, name))
        if cfg.needs_data_init:
            out.inits.append((name, cfg))
            out.checkpoint_params.update(_data_init_params(model, name))
    return out
