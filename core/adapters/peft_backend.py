"""Methods that peft ships, applied through peft's public API so checkpoints load in plain peft.

``lora`` (Hu et al. 2021, eq. 3) and ``dora`` (Liu et al. 2024, arXiv 2402.09353, eq. 5: the
weight split into magnitude m and direction, W' = m * (W0 + BA) / ||W0 + BA||_c). Target presets
(``attention``, ``mlp``) are expanded by ``targets.expand_preset`` before they reach peft, and
``all-linear`` are resolved by ``targets.resolve_targets`` too, so peft wraps exactly the modules a native
method would (the output head and prediction-head linears excluded), and a target tied to another module
(a tied LM head) is refused as for native methods.

Not covered: peft's other init schemes are reachable through ``init_lora_weights`` only where the
value is plain (``gaussian``, ``pissa``, ``olora``, ``orthogonal``); LoftQ needs its own config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig
from adaptome.core.adapters.targets import refuse_tied, resolve_targets


@ADAPTERS.register("lora")
@dataclass
class LoraConfig(AdapterConfig):
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_rslora: bool = False
    bias: str = "none"
    #: True (B = 0), False (B random, for tests), or one of peft's named schemes
    init_lora_weights: bool | str = True

    backend: ClassVar[str] = "peft"
    trains: ClassVar[str] = "A (r x in), B (out x r) per targeted linear, via peft"
    param_formula: ClassVar[str] = "r*(in+out)"
    paper: ClassVar[str] = "Hu et al. 2021, LoRA, arXiv 2106.09685, eq. 3"
    use_dora: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"r must be positive, got {self.r}")

    def identity_at_init(self) -> bool:
        return self.init_lora_weights is True

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * (in_features + out_features)

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=4, lora_alpha=8, init_lora_weights=False, target_modules="attention"),
                cls(r=2, lora_alpha=4, init_lora_weights=False, modules_to_save=None)]

    def to_peft(self, model: nn.Module):
        import peft

        # resolve presets, globs and all-linear ourselves, so native and peft methods wrap the same
        # modules (peft's all-linear would also adapt linears inside prediction heads)
        targets = _unwrapped_targets(model, self.target_modules, self.exclude_modules)
        refuse_tied(model, targets, "merging an adapter into it would change {other} too")
        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            use_rslora=self.use_rslora,
            bias=self.bias,
            init_lora_weights=self.init_lora_weights,
            target_modules=targets,
            modules_to_save=self.modules_to_save,
            use_dora=self.use_dora,
        )


@ADAPTERS.register("dora")
@dataclass
class DoraConfig(LoraConfig):
    trains: ClassVar[str] = "A, B and the column magnitude m (out) per targeted linear, via peft"
    param_formula: ClassVar[str] = "r*(in+out) + out"
    paper: ClassVar[str] = "Liu et al. 2024, DoRA, arXiv 2402.09353, eq. 5"
    use_dora: ClassVar[bool] = True
    no_lora_form: ClassVar[str | None] = ("DoRA rescales each column of W0 + B A by a learned magnitude, which a "
                                          "plain LoRA cannot express (its folder already loads in peft, use_dora)")
    atol: ClassVar[float] = 1e-4

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * (in_features + out_features) + out_features


def _unwrapped_targets(model: nn.Module, targets, exclude) -> list[str]:
    """``resolve_targets`` on a model that may already hold peft layers (a second named adapter):
    a wrapped linear is matched through its peft layer, never through its ``base_layer`` or the
    adapter's own linears inside it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [p for p, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    paths = resolve_targets(model, targets, exclude, layer_types=(nn.Linear, BaseTunerLayer))
    return [p for p in paths if not any(p.startswith(t + ".") for t in tuned)]
