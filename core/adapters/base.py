"""The adapter contract shared by every method.

Two parts:

* ``AdapterConfig``: the dataclass every method's config extends. Class attributes describe the
  method to the registry, the CLI and the contract tests (backend, what trains, the parameter
  formula, whether the model equals the base at init, whether the update can be merged).
* ``AdapterLayer``: the native layer contract, following peft's conventions. A layer keeps the
  wrapped module as ``base_layer``; its adapter weights live in ``nn.ModuleDict`` /
  ``nn.ParameterDict`` attributes whose names start with the method prefix (``lora_A``) and whose keys
  are adapter names, so several named adapters sit on one layer. ``delta_weight(name)`` returns the
  dense update (out, in); ``merge`` / ``unmerge`` add and subtract it; ``active_adapters`` chooses
  which adapters run; ``disable_adapters`` bypasses all of them.

A method adds a config subclass (registered by name in ``ADAPTERS``) and, for native methods, an
``AdapterLayer`` subclass implementing ``update_layer``, ``adapter_forward`` and ``delta_weight``.
Every member a method may override is declared below with one comment; nothing is read with
``getattr``. The config also declares the method's training behaviour (step hooks, optimizer groups,
a data-driven init); ``core.train.method_training`` collects them and ``fit`` attaches them, so no
train path can forget them.
Not covered here: convolution and embedding layers (native layers wrap ``nn.Linear``), quantized
base weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Literal

import torch
from torch import nn

from adaptome.core.errors import AdaptomeError


class AdapterOptionError(AdaptomeError, ValueError):
    """An adapter option that one targeted layer cannot honour (a rank above its dimensions);
    ``inject_adapter`` prefixes the layer's path."""


@dataclass
class AdapterConfig:
    """Fields shared by every method.

    target_modules: ``"all-linear"``, a preset (``"attention"``, ``"mlp"``, ``"attention+mlp"``)
      resolved per architecture, a list of module names (a name matches a module whose dotted
      path equals it or ends with ``.name``; every name must match a linear), or a single regex
      matched against full paths. A linear whose weight is tied to another module is refused.
    exclude_modules: names (each must match a linear) or a regex removed from the matches.
    modules_to_save: modules trained fully and saved with the adapter (ProLLaMA stage 1 trains
      ``embed_tokens`` and ``lm_head`` this way).
    """

    target_modules: list[str] | str = "all-linear"
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None

    # --- class-level description of the method (not config fields) ---
    #: the registry name, set by ``@ADAPTERS.register(name)`` (written once, in the decorator)
    method: ClassVar[str] = ""
    #: "native": our own layers (``layer_cls``) injected by ``inject.py``; "peft": applied through peft
    backend: ClassVar[Literal["native", "peft"]] = "native"
    #: one line for ``adaptome adapters list``: which tensors train
    trains: ClassVar[str] = ""
    #: trainable parameters per targeted layer, as a formula in in / out / r (shown by ``adapters list``)
    param_formula: ClassVar[str] = ""
    #: whether the default config leaves the model equal to the base at init (``identity_at_init``)
    init_is_identity: ClassVar[bool] = True
    #: whether the update is a weight delta that ``merge`` can add to the base weights
    supports_merge: ClassVar[bool] = True
    #: absolute tolerance of the contract tests' output comparisons for this method
    atol: ClassVar[float] = 1e-5
    #: the paper and equations the method follows (docs and ``adapters list``)
    paper: ClassVar[str] = ""
    #: a note shown by ``adapters list`` where our implementation is a reading, not the paper's exact rule
    note: ClassVar[str] = ""
    #: the native ``AdapterLayer`` subclass (None for peft-backed methods)
    layer_cls: ClassVar[type | None] = None
    #: None when the update is a product of rank-r factors that ``export.py`` writes as a plain peft
    #: LoRA (native layers then implement ``AdapterLayer.lora_factors``); otherwise one line saying why not
    no_lora_form: ClassVar[str | None] = None
    #: ``config.model_type`` values the method supports (None: any model that has the targeted modules)
    architectures: ClassVar[frozenset[str] | None] = None

    def identity_at_init(self) -> bool:
        """Whether a freshly injected adapter leaves the model's outputs unchanged."""
        return self.init_is_identity

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        """Trainable parameters this method adds to one targeted ``nn.Linear``."""
        raise NotImplementedError

    @classmethod
    def examples(cls) -> list["AdapterConfig"]:
        """Small configs run by the contract tests (non-zero init where the method allows it)."""
        return [cls()]

    # --- injection (native methods; ``inject.inject_adapter`` calls these) ---
    def resolve_paths(self, model: nn.Module) -> list[str] | None:
        """The modules this method wraps when they are not the ``target_modules`` linears (bottleneck
        adapters wrap FFN blocks and embeddings); None: ``targets.resolve_targets`` picks them."""
        return None

    def after_inject(self, model: nn.Module, adapter_name: str) -> None:
        """Fix-ups once every wrapped layer holds adapter ``adapter_name`` (per-layer ranks, modules shared
        between layers, hooks on neighbouring modules)."""

    def count_expected(self, model: nn.Module) -> int | None:
        """The trainable parameters this adapter adds to ``model`` (the base, before injection) when they
        do not sit one per targeted ``nn.Linear``; None: the sum of ``expected_params`` over the targets."""
        return None

    # --- training behaviour (collected by ``core.train.method_training.collect``, which ``fit`` calls) ---
    def training_hooks(self, model: nn.Module, adapter_name: str) -> list[Any]:
        """Step hooks (``core.train.hooks``) every training run of this adapter needs (rank sampling,
        proximal steps, freezing, adaptive rates). Their ``state_dict`` goes into checkpoints."""
        return []

    def param_groups(self, model: nn.Module, adapter_name: str) -> list[dict[str, Any]]:
        """Optimizer groups for some of this adapter's parameters, each ``{"params": [...], **options}``
        (e.g. ``weight_decay``); the other trainable parameters stay in the default group."""
        return []

    #: whether ``data_init`` must run before the first step of a fresh (not resumed) run
    needs_data_init: ClassVar[bool] = False

    def data_init(self, model: nn.Module, adapter_name: str, batches: Iterable[Any],
                  loss_fn: Callable[[nn.Module, Any], torch.Tensor], lr: float) -> None:
        """A data-driven initialisation from training ``batches``, the training loss and the first step's
        learning rate ``lr`` (LoRA-SB). Not run on resume: the checkpoint restores the factors."""

    def init_batches(self) -> tuple[int, int]:
        """(examples, batch size) that ``data_init`` reads from the start of the training set."""
        return 0, 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lora_factors(r: int, in_features: int, out_features: int, init: str,
                 dtype: torch.dtype) -> tuple[nn.Parameter, nn.Parameter]:
    """LoRA's A (r, in) and B (out, r) as parameters in ``dtype`` (float32 for integer bases).

    A ~ kaiming-uniform(a=sqrt(5)) as ``nn.Linear`` (``init="gaussian"``: N(0, 1/r^2) as peft);
    B = 0, so the update starts at zero, or N(0, 0.02) for ``init="random_b"`` (a non-zero start
    the contract tests use to see real merges and round trips).
    """
    import math

    a = torch.empty(r, in_features)  # (R, I)
    if init == "gaussian":
        nn.init.normal_(a, std=1.0 / r)
    else:
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    b = torch.zeros(out_features, r)  # (O, R)
    if init == "random_b":
        nn.init.normal_(b, std=0.02)
    dtype = dtype if dtype.is_floating_point else torch.float32
    return nn.Parameter(a.to(dtype)), nn.Parameter(b.to(dtype))


class AdapterLayer(nn.Module):
    """Base of native layers that wrap one ``nn.Linear`` and add a weight update to it."""

    #: attribute names holding per-adapter trainable weights (each a ModuleDict or ParameterDict)
    adapter_layer_names: ClassVar[tuple[str, ...]] = ()
    #: attribute names holding per-adapter non-trainable state saved with the adapter (buffers)
    other_param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        self.configs: dict[str, AdapterConfig] = {}
        self.in_features, self.out_features = self.feature_sizes(base_layer)

    def feature_sizes(self, base_layer: nn.Module) -> tuple[int, int]:
        """(in, out) of the wrapped module; layers that wrap other modules than ``nn.Linear``
        (bottleneck adapters wrap blocks) override this."""
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps nn.Linear, got {type(base_layer).__name__}")
        return base_layer.in_features, base_layer.out_features

    # -- to implement per method -------------------------------------------------------------
    def update_layer(self, adapter_name: str, cfg: AdapterConfig) -> None:
        raise NotImplementedError

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter's additive contribution to the output for input ``x`` (..., in)."""
        raise NotImplementedError

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """Dense update (out, in) such that the merged weight is ``W0 + delta_weight``."""
        raise NotImplementedError

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(B (out, k), A (k, in), s) with ``delta_weight == s * B @ A``, detached: the update as a plain
        LoRA (``export.py`` writes it for peft). Methods whose update has no such form do not implement it
        and say why in their config's ``no_lora_form``."""
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, cfg: AdapterConfig) -> None:
        if adapter_name in self.configs:
            raise ValueError(f"adapter {adapter_name!r} already exists on this layer")
        self.configs[adapter_name] = cfg
        self.update_layer(adapter_name, cfg)
        self._match_device(adapter_name)
        if not self.active_adapters:
            self.active_adapters = [adapter_name]

    def _match_device(self, adapter_name: str) -> None:
        w = self.base_layer.weight
        for attr in self.adapter_layer_names + self.other_param_names:
            holder = getattr(self, attr)
            if adapter_name in holder:
                item = holder[adapter_name]
                if isinstance(item, nn.Module):
                    item.to(w.device)
                else:
                    holder[adapter_name] = nn.Parameter(item.data.to(w.device), requires_grad=item.requires_grad)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge it before deleting")
        for attr in self.adapter_layer_names + self.other_param_names:
            holder = getattr(self, attr)
            if adapter_name in holder:
                del holder[adapter_name]
        self.configs.pop(adapter_name, None)
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]

    def set_adapter(self, names: str | list[str]) -> None:
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            if n not in self.configs:
                raise ValueError(f"unknown adapter {n!r}; this layer has {sorted(self.configs)}")
        self.active_adapters = names

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def merge(self, adapter_names: list[str] | None = None) -> None:
        """Add the active (or given) adapters' updates into ``base_layer.weight``."""
        names = list(self.active_adapters if adapter_names is None else adapter_names)
        for name in names:
            if name in self.merged_adapters:
                continue
            w = self.base_layer.weight
            w.data += self.delta_weight(name).to(w.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged update from ``base_layer.weight`` (in reverse order)."""
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w = self.base_layer.weight
            w.data -= self.delta_weight(name).to(w.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            if self.merged:
                raise RuntimeError("adapters are merged into the weights; unmerge before disabling them")
            return result
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            result = result + self.adapter_forward(name, x).to(result.dtype)
        return result

    def release(self) -> None:
        """Undo what the layer installed outside itself (hooks on other modules); ``unload`` calls it."""

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.configs)}, active={self.active_adapters}, merged={self.merged_adapters}"
