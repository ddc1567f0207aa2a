"""Full fine-tuning: every weight of the loaded model trains, starting from its loaded weights.

``adapter: {method: full}`` in ``adaptome train`` (or ``adaptome protein pretrain`` / ``instruct``) replaces
nothing and adds nothing: ``apply`` marks every parameter trainable (but those ``freeze_modules`` /
``freeze_embeddings`` keep frozen) and tags the model as a whole-model method, so the run saves every weight
and buffer to ``adapter/`` (``model.safetensors`` + ``method.json``, ``from_scratch.save_pretrained_model``) and
the model itself, an ordinary transformers checkpoint, to ``merged/`` (``materialize`` only removes the tag).
With ``optimizer: {name: galore, ...}`` this is GaLore as the paper uses it (Zhao et al. 2024): the targeted
linear weights of the whole model get low-rank projected moments, every other parameter plain AdamW; with the
default ``adamw`` it is ordinary full fine-tuning. Checkpoints hold every trainable weight (``fit`` saves all
parameters that require grad), so a resumed run ends where an uninterrupted one does; frozen weights are
rebuilt from the base as for adapters. ``adaptome train`` reports the loaded model's held-out perplexity,
measured before training (and before any resume), as ``eval/perplexity_base``.

Not an adapter (why it is not in ``ADAPTERS``): there is no small set of added tensors to save, merge or
unload; the base weights themselves change. It is registered in ``PRETRAIN_METHODS`` (``from_scratch.py``),
the whole-model table of ``adaptome adapters list``.

Not covered: FSDP / ZeRO sharding of the weights and optimizer state (one full copy per process; under DDP
each process holds the whole model, its gradients and its optimizer state), CPU offload, peft-format export
(there is no adapter: use ``merged/``), and ``adaptome protein classify`` (its new head is trained through an
adapter's ``modules_to_save``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from adaptome.core.adapters.from_scratch import ATTR, PRETRAIN_METHODS


@PRETRAIN_METHODS.register("full")
@dataclass
class FullFinetuneConfig:
    """Options of full fine-tuning (defaults: every parameter trains).

    Args:
      freeze_embeddings: keep the input embeddings frozen (``model.get_input_embeddings()``; with a tied LM
        head the head is the same tensor and stays frozen too).
      freeze_modules: module names kept frozen, every parameter under them: an entry matches a module whose
        dotted path equals it or ends in ``.entry`` (e.g. ``[embed_tokens, layers.0]``); each entry must match.
    """

    freeze_embeddings: bool = False
    freeze_modules: list[str] = field(default_factory=list)

    method: ClassVar[str] = "full"
    trains: ClassVar[str] = "every weight of the loaded model, from its loaded values (none replaced)"
    param_formula: ClassVar[str] = "in*out + out (the layer itself)"
    paper: ClassVar[str] = "full fine-tuning (GaLore: arXiv 2403.03507)"
    #: the model before training is a base model (``generic_train`` reports its perplexity)
    trains_loaded_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        from adaptome.core.config import InvalidValue

        if isinstance(self.freeze_modules, str):
            self.freeze_modules = [self.freeze_modules]
        bad = [m for m in self.freeze_modules if not isinstance(m, str) or not m.strip(".")]
        if bad:
            raise InvalidValue("freeze_modules", f"entries must be module names, got {bad[0]!r}")

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        """Trainable parameters of one linear (all of it)."""
        return in_features * out_features + (out_features if bias else 0)

    def frozen_paths(self, model: nn.Module) -> list[str]:
        """Dotted paths of the modules ``freeze_modules`` names; an entry that matches none is an error."""
        from adaptome.core.config import ConfigError

        names = [n for n, _ in model.named_modules() if n]
        paths: list[str] = []
        for entry in self.freeze_modules:
            hits = [n for n in names if n == entry or n.endswith("." + entry)]
            if not hits:
                raise ConfigError(f"adapter.options.freeze_modules: {entry!r} matches no module of the model "
                                  f"(e.g. {', '.join(names[:3])})")
            paths += hits
        return paths

    def apply(self, model: nn.Module) -> nn.Module:
        """Every parameter of ``model`` trains, in place, but the frozen ones; nothing is replaced."""
        frozen = [model.get_submodule(p) for p in self.frozen_paths(model)]
        for p in model.parameters():
            p.requires_grad_(True)
        if self.freeze_embeddings:
            frozen.append(model.get_input_embeddings())
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            from adaptome.core.config import ConfigError

            raise ConfigError("adapter.options.freeze_modules: freezes every parameter; nothing would train")
        setattr(model, ATTR, {"full": self})
        return model

    def materialize(self, model: nn.Module) -> nn.Module:
        """The model as it is (its layers are ordinary already), without the whole-model tag."""
        if hasattr(model, ATTR):
            delattr(model, ATTR)
        return model
