"""The ``OPTIMIZERS`` registry: optimizer name -> options dataclass with ``build(model, lr, weight_decay, betas)``.

``adamw`` (the default, ``torch.optim.AdamW`` over every trainable parameter) and ``galore``
(``galore.py``) are registered. A run's YAML picks one with an ``optimizer:`` section
(``name`` + ``options``); ``make_optimizer_factory`` turns that into the ``make_optimizer`` callable
that ``train.loop.fit`` takes.

Not covered: optimizers over parameter groups that a method declares itself (those belong to the method).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from adaptome.core.registry import Registry


def _load() -> None:
    importlib.import_module("adaptome.core.optim.galore")


OPTIMIZERS: Registry = Registry("optimizer", loader=_load)


@OPTIMIZERS.register("adamw")
@dataclass
class AdamWOptions:
    """Plain AdamW (decoupled weight decay) over every trainable parameter.

    Args:
      eps: Adam's epsilon.
    """

    eps: float = 1e-8

    summary: ClassVar[str] = "torch.optim.AdamW over every trainable parameter (the default)"

    def build(self, model, lr: float, weight_decay: float, betas: tuple[float, float], groups=None):
        """``groups``: the adapter methods' parameter groups (``fit`` passes
        ``method_training.MethodTraining.optimizer_groups``: SoRA's gates at ``gate_lr`` without weight decay),
        used as given; without them, one group of every trainable parameter."""
        import torch

        params = groups or [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (did you apply an adapter?)")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=self.eps)


@dataclass
class OptimizerSpec:
    """The ``optimizer:`` section of a run's YAML.

    Args:
      name: an ``OPTIMIZERS`` name (``adamw``, ``galore``); see ``adaptome optimizers list``.
      options: that optimizer's options (``galore``: rank, update_proj_gap, scale, target_modules, layerwise ...).
    """

    name: str = "adamw"
    options: dict[str, Any] = field(default_factory=dict)


def make_optimizer_options(name: str, options: dict[str, Any] | None = None, source: str | None = None):
    """The options dataclass of optimizer ``name`` from a mapping (strictly checked: unknown keys are errors)."""
    from adaptome.core.config import from_dict

    return from_dict(OPTIMIZERS.get(name), dict(options or {}), source=source, prefix=f"optimizer[{name}]")


def make_optimizer_factory(name: str, options: dict[str, Any] | None, lr: float, weight_decay: float,
                           betas: tuple[float, float]) -> Callable:
    """``(model, groups=None) -> optimizer`` for ``fit(make_optimizer=...)``; options are checked now, not at fit
    time. ``fit`` passes the adapter methods' parameter groups as ``groups``, so their options (SoRA's gate
    learning rate, no weight decay on its gates) hold under every registered optimizer."""
    opts = make_optimizer_options(name, options)

    def make(model, groups=None):
        return opts.build(model, lr, weight_decay, tuple(betas), groups=groups)

    return make
