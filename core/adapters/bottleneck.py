"""Bottleneck adapters: ``seq_bn`` (Pfeiffer et al. 2021, AdapterFusion, arXiv 2005.00247, Sec. 3)
and ``seq_bn_inv`` (MAD-X, Pfeiffer et al. 2020, arXiv 2005.00052, eq. 1-2), with stacking and
averaging. Native: AdapterHub ``adapters`` pins transformers 4.x, and peft has no bottleneck adapter.

One adapter sits after each FFN block. With h the FFN output, x the block's residual input, r its
reduction factor and delta(z) = s * up(ReLU(down(z))) (down: d -> d/r, up: d/r -> d, with bias):

* post-LN blocks (BERT, XLM-R, RoBERTa; the layer's ``output`` module):
  out = LN(h + x + delta(LN(h + x)))  (AdapterHub's seq_bn: original LN before and after, residual
  before LN, no new LayerNorm);
* pre-LN decoders (LLaMA-style ``mlp``): the adapter reads the residual stream x + h, as AdapterHub
  does for LLaMA (no LayerNorm passed, residual before LN): the block's output becomes
  x + h + delta(x + h). The wrapped ``mlp`` returns h + delta(x + h) and the decoder adds x itself;
  x (the input of ``post_attention_layernorm``) is read by a forward pre-hook on that norm, which
  ``after_inject`` installs and ``unload`` removes.

``seq_bn_inv`` adds MAD-X's invertible NICE block on the embedding output (BERT: the whole
``embeddings`` module; LLaMA: ``embed_tokens``): x = [x1, x2], y1 = x1 + F(x2), y2 = x2 + G(y1), with
F, G = Linear(d/2 -> d/(2 r_inv)) - ReLU - Linear(-> d/2); its exact inverse runs on the input of the
output embeddings (the LM head, tied or not) when the model has one.

Init: ``"bert"`` (AdapterHub's default: N(0, 0.02) weights, zero biases, so the model is NOT exactly
the base at init) or ``"mam"`` (AdapterHub's ``mam_adapter``: down-projection kaiming-uniform(a=sqrt(5)),
up-projection and biases zero; our NICE output layers zero too: exact identity).

Several named adapters: with more than one active, ``stack_adapters(model, names)`` runs them in
sequence (adapter k+1 reads LN of the stream that adapter k wrote; on pre-LN decoders the stream
itself) and trains only the top one (MAD-X: a frozen language adapter under a task adapter). Of the
invertible blocks only the first active adapter's runs (AdapterHub's ``Stack``: the language
adapter's NICE; ``invertible="all"`` chains every one);
``average_adapters(model, names, weights)`` adds the weighted mean of their deltas.

Merging is NOT supported (``supports_merge = False``): a ReLU bottleneck is not a weight update.
Dimension letters: B batch, T tokens, D hidden, M bottleneck (D / r).
Not covered: Houlsby's double adapter (``double_seq_bn``), learned AdapterFusion attention, GLOW
invertible blocks, parallel adapters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer
from adaptome.core.adapters.targets import TargetError, matches

_POST_LN = re.compile(r"(.*\.)?layer\.\d+\.output")
_PRE_LN = re.compile(r"(.*\.)?layers\.\d+\.mlp")


@ADAPTERS.register("seq_bn")
@dataclass
class SeqBnConfig(AdapterConfig):
    #: ``"ffn"``: every FFN block (found by architecture); else block paths to keep, as names (a path equal
    #: to one or ending in ``.name``, e.g. ``layer.11.output`` / ``layers.0.mlp``) or one regex; ``exclude_modules``
    #: removes blocks the same way. Either matching no FFN block is an error.
    target_modules: list[str] | str = "ffn"
    reduction_factor: int = 16
    scaling: float = 1.0
    init_weights: Literal["bert", "mam"] = "bert"

    trains: ClassVar[str] = "down (d -> d/r) and up (d/r -> d) with biases after every FFN block"
    param_formula: ClassVar[str] = "per FFN block: 2*d*(d/r) + d/r + d"
    paper: ClassVar[str] = "Pfeiffer et al. 2021, AdapterFusion, arXiv 2005.00247, Sec. 3"
    supports_merge: ClassVar[bool] = False
    no_lora_form: ClassVar[str | None] = ("a bottleneck adapter is a ReLU MLP after each FFN block, not a weight "
                                          "update B A of a linear layer")
    init_is_identity: ClassVar[bool] = False
    architectures: ClassVar[frozenset[str]] = frozenset({"bert", "roberta", "xlm-roberta", "llama", "mistral"})
    invertible: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.reduction_factor <= 0:
            raise ValueError(f"reduction_factor must be positive, got {self.reduction_factor}")

    def identity_at_init(self) -> bool:
        return self.init_weights == "mam"

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        d, m = in_features, max(1, in_features // self.reduction_factor)
        return 2 * d * m + m + d

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(reduction_factor=4, init_weights="mam"), cls(reduction_factor=8, init_weights="bert")]

    # -- hooks used by inject_adapter and the contract tests -------------------------------------
    def resolve_paths(self, model: nn.Module) -> list[str]:
        paths = [p.replace(".base_layer", "") for p, _ in model.named_modules()
                 if _POST_LN.fullmatch(p.replace(".base_layer", "")) or _PRE_LN.fullmatch(p.replace(".base_layer", ""))]
        paths = list(dict.fromkeys(paths))
        if not paths:
            raise TargetError(f"{self.method}: no FFN block (layer.N.output or layers.N.mlp) in {type(model).__name__}")
        paths = self._select_blocks(paths)
        if self.invertible:
            paths = [_embedding_path(model)] + paths
            head = _output_embedding_path(model)
            if head is not None:
                paths.append(head)
        return paths

    def _select_blocks(self, blocks: list[str]) -> list[str]:
        """The FFN blocks ``target_modules`` keeps and ``exclude_modules`` does not remove; an option that
        removes every block, or a list entry of either that names no block, is an error, never ignored."""
        kept = blocks
        if self.target_modules != "ffn":
            kept = [p for p in blocks if matches(p, self.target_modules)]
            if not kept:
                raise TargetError(f"{self.method}: target_modules {self.target_modules!r} matched no FFN block; "
                                  f"the blocks are {', '.join(blocks)} (or 'ffn' for all)")
        for option, spec in (("target_modules", self.target_modules), ("exclude_modules", self.exclude_modules)):
            for entry in spec if isinstance(spec, list) else []:  # a misspelt entry is an error, never dropped
                if not any(matches(p, [entry]) for p in blocks):
                    raise TargetError(f"{self.method}: {option} entry {entry!r} names no FFN block; the blocks are "
                                      f"{', '.join(blocks)}")
        if self.exclude_modules:
            kept = [p for p in kept if not matches(p, self.exclude_modules)]
            if not kept:
                raise TargetError(f"{self.method}: exclude_modules {self.exclude_modules!r} removes every FFN block "
                                  f"({', '.join(blocks)})")
        return kept

    def count_expected(self, model: nn.Module) -> int:
        blocks = [p for p in self.resolve_paths(model) if _POST_LN.fullmatch(p) or _PRE_LN.fullmatch(p)]
        d = _hidden_size(model.get_submodule(blocks[0]))
        total = len(blocks) * self.expected_params(d, d, True)
        if self.invertible:
            half, hid = d // 2, max(1, d // (2 * self.inv_reduction_factor))
            total += 2 * (half * hid + hid + hid * half + half)
        for target in self.modules_to_save or []:  # trained fully beside the adapter
            for path, mod in model.named_modules():
                if path == target or path.endswith("." + target):
                    total += sum(p.numel() for p in mod.parameters())
        return total

    def after_inject(self, model: nn.Module, adapter_name: str) -> None:
        layers = [(p, m) for p, m in model.named_modules()
                  if isinstance(m, BottleneckLayer) and adapter_name in m.configs]
        embed = [m for _, m in layers if m.role == "embed"]
        for path, m in layers:
            if m.role == "head":
                m._nice_owner = embed[:1]
            elif m.role == "pre_ln":
                parent = model.get_submodule(path.rpartition(".")[0])
                norm = getattr(parent, "post_attention_layernorm", None)
                if norm is None:
                    raise TargetError(f"{self.method}: {path} has no sibling post_attention_layernorm to read the "
                                      "residual stream from (pre-LN decoders: LLaMA, Mistral)")
                m.read_residual_from(norm)


@ADAPTERS.register("seq_bn_inv")
@dataclass
class SeqBnInvConfig(SeqBnConfig):
    inv_reduction_factor: int = 2

    trains: ClassVar[str] = "seq_bn per FFN block + an invertible NICE block (F, G) on the embeddings"
    param_formula: ClassVar[str] = "seq_bn + NICE: 2*(2*(d/2)*(d/(2r_inv)) + d/(2r_inv) + d/2)"
    paper: ClassVar[str] = "Pfeiffer et al. 2020, MAD-X, arXiv 2005.00052, eq. 1-2"
    invertible: ClassVar[bool] = True

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(reduction_factor=4, init_weights="mam"), cls(reduction_factor=8, inv_reduction_factor=4)]


def _path_of(model: nn.Module, module: nn.Module) -> str:
    for p, m in model.named_modules():
        if m is module:
            return p.replace(".base_layer", "")
    raise TargetError(f"module {type(module).__name__} is not part of {type(model).__name__}")


def _embedding_path(model: nn.Module) -> str:
    emb = model.get_input_embeddings()
    path = _path_of(model, emb)
    parent, _, _ = path.rpartition(".")
    if parent.endswith("embeddings") and hasattr(model.get_submodule(parent), "word_embeddings"):
        return parent  # BERT-style: the whole embedding module (words + positions + LN)
    return path


def _output_embedding_path(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return _path_of(model, head) if isinstance(head, (nn.Linear, BottleneckLayer)) else None


def _hidden_size(block: nn.Module) -> int:
    block = getattr(block, "base_layer", block)
    if hasattr(block, "dense") and hasattr(block, "LayerNorm"):
        return block.dense.out_features
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features  # LLaMA mlp: down_proj


class NiceBlock(nn.Module):
    """NICE additive coupling (Dinh et al. 2015, eq. 5): exactly invertible for any weights."""

    def __init__(self, d: int, reduction: int):
        super().__init__()
        half, hid = d // 2, max(1, d // (2 * reduction))
        self.F = nn.Sequential(nn.Linear(d - half, hid), nn.ReLU(), nn.Linear(hid, half))
        self.G = nn.Sequential(nn.Linear(half, hid), nn.ReLU(), nn.Linear(hid, d - half))
        self.half = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : self.half], x[..., self.half:]  # (B, T, D/2) each
        y1 = x1 + self.F(x2)
        y2 = x2 + self.G(y1)
        return torch.cat([y1, y2], dim=-1)  # (B, T, D)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[..., : self.half], y[..., self.half:]  # (B, T, D/2) each
        x2 = y2 - self.G(y1)
        x1 = y1 - self.F(x2)
        return torch.cat([x1, x2], dim=-1)  # (B, T, D)


def _init(module: nn.Module, kind: str, zero_last: list[nn.Linear], down: nn.Linear | None = None) -> None:
    """AdapterHub's inits: "bert" N(0, 0.02) everywhere; "mam" kaiming-uniform ``down``, zero ``zero_last``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    if kind == "mam":
        if down is not None:
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        for lin in zero_last:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)


def _stash_residual(norm: nn.Module, args: tuple) -> None:
    """Forward pre-hook on a decoder's ``post_attention_layernorm``: keep its input, the residual x."""
    norm.adaptome_residual = args[0]


class BottleneckLayer(AdapterLayer):
    """Wraps an FFN output block, the embeddings (NICE) or the LM head (NICE inverse).

    A sibling of the ``nn.Linear`` layers: same bookkeeping (``configs``, ``active_adapters``,
    ``disabled``, ModuleDicts keyed by adapter name), but no weight update to merge.
    """

    adapter_layer_names = ("bn_down", "bn_up", "bn_nice")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.bn_down, self.bn_up, self.bn_nice = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.composition: str = "stack"
        self.weights: list[float] | None = None
        #: "first": only the first active adapter's NICE block runs (AdapterHub's Stack); "all": every one
        self.invertible: str = "first"
        self._nice_owner: list[BottleneckLayer] = []
        self._residual_norm: list[nn.Module] = []  # pre-LN: the norm whose input is the residual (not a submodule)

    def feature_sizes(self, base_layer: nn.Module) -> tuple[int, int]:
        """The hidden size d (in = out = d), and the role: what the wrapped module is."""
        if isinstance(base_layer, nn.Linear):
            self.role, d = "head", base_layer.in_features
        elif isinstance(base_layer, nn.Embedding):
            self.role, d = "embed", base_layer.embedding_dim
        elif hasattr(base_layer, "word_embeddings"):
            self.role, d = "embed", base_layer.word_embeddings.embedding_dim
        elif hasattr(base_layer, "dense") and hasattr(base_layer, "LayerNorm"):
            self.role, d = "post_ln", base_layer.dense.out_features
        else:
            self.role, d = "pre_ln", _hidden_size(base_layer)
        return d, d

    def __getattr__(self, name: str) -> Any:  # reach the wrapped module's attributes (word_embeddings, weight)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def update_layer(self, adapter_name: str, cfg: SeqBnConfig) -> None:
        d = self.in_features
        if self.role in ("post_ln", "pre_ln"):
            m = max(1, d // cfg.reduction_factor)
            self.bn_down[adapter_name] = nn.Linear(d, m)
            self.bn_up[adapter_name] = nn.Linear(m, d)
            _init(self.bn_down[adapter_name], cfg.init_weights, [], down=self.bn_down[adapter_name])
            _init(self.bn_up[adapter_name], cfg.init_weights, [self.bn_up[adapter_name]])
        elif self.role == "embed":
            nice = NiceBlock(d, cfg.inv_reduction_factor)
            _init(nice, cfg.init_weights, [nice.F[2], nice.G[2]])
            self.bn_nice[adapter_name] = nice

    def _match_device(self, adapter_name: str) -> None:
        p = next(self.base_layer.parameters())
        for holder in (self.bn_down, self.bn_up, self.bn_nice):
            if adapter_name in holder:
                holder[adapter_name].to(device=p.device, dtype=p.dtype if p.dtype.is_floating_point else None)

    def merge(self, adapter_names: list[str] | None = None) -> None:
        raise TypeError("bottleneck adapters cannot be merged into the weights (a ReLU bottleneck is not a "
                        "weight update); use unload() or keep the adapter")

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        raise TypeError("bottleneck adapters have no weight update (supports_merge = False)")

    def _delta(self, name: str, z: torch.Tensor) -> torch.Tensor:
        s = self.configs[name].scaling
        return self.bn_up[name](torch.relu(self.bn_down[name](z))) * s  # (B, T, D) -> (B, T, M) -> (B, T, D)

    def _deltas(self, r: torch.Tensor, norm) -> torch.Tensor | float:
        """The active adapters' summed deltas on the stream ``r``: stacked (each reads the stream the ones
        below wrote) or averaged (all read ``r``)."""
        names = [n for n in self.active_adapters if n in self.bn_down]
        fused: torch.Tensor | float = 0.0
        fusion = self._modules.get("adapter_fusion")  # set by fusion.fuse_adapters; the rest stack above it
        if fusion is not None and all(n in names for n in fusion.names):
            z = norm(r) if norm is not None else r
            fused = fusion(z, torch.stack([self._delta(n, z) for n in fusion.names]))  # (N, B, T, D) -> (B, T, D)
            r = r + fused
            names = [n for n in names if n not in fusion.names]
        if self.composition == "average" and len(names) > 1:
            w = self.weights or [1.0 / len(names)] * len(names)
            z = norm(r) if norm is not None else r
            return fused + sum(wi * self._delta(n, z) for wi, n in zip(w, names))
        total: torch.Tensor | float = 0.0
        for n in names:
            s = r + total
            total = total + self._delta(n, norm(s) if norm is not None else s)
        return fused + total

    def read_residual_from(self, norm: nn.Module) -> None:
        """Pre-LN: take the residual x from the input of ``norm`` (installed once per layer)."""
        if not self._residual_norm:
            norm.register_forward_pre_hook(_stash_residual)
            self._residual_norm = [norm]

    def release(self) -> None:
        for norm in self._residual_norm:
            for key, fn in list(norm._forward_pre_hooks.items()):
                if fn is _stash_residual:
                    del norm._forward_pre_hooks[key]
            norm.__dict__.pop("adaptome_residual", None)
        self._residual_norm = []

    def _nice_names(self) -> list[str]:
        names = [n for n in self.active_adapters if n in self.bn_nice]
        return names[:1] if self.invertible == "first" else names

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disabled or not self.active_adapters:
            return self.base_layer(*args, **kwargs)
        if self.role == "post_ln":  # BertOutput(hidden_states, input_tensor)
            base = self.base_layer
            hidden, residual = args[0], args[1] if len(args) > 1 else kwargs["input_tensor"]
            r = base.dropout(base.dense(hidden)) + residual  # (B, T, D)
            return base.LayerNorm(r + self._deltas(r, base.LayerNorm))
        if self.role == "pre_ln":
            x = self._residual_norm[0].__dict__.pop("adaptome_residual", None) if self._residual_norm else None
            if x is None:
                raise RuntimeError("seq_bn on a pre-LN decoder reads the residual from post_attention_layernorm's "
                                   "input; call the decoder layer, not its mlp alone")
            h = self.base_layer(*args, **kwargs)  # (B, T, D)
            return h + self._deltas(x + h, None)
        if self.role == "embed":
            out = self.base_layer(*args, **kwargs)
            for n in self._nice_names():
                out = self.bn_nice[n](out)
            return out
        # head: undo the NICE blocks (in reverse order) before the output embeddings
        h = args[0]
        owner = self._nice_owner[0] if self._nice_owner else None
        if owner is not None and not owner.disabled:
            for n in reversed(owner._nice_names()):
                h = owner.bn_nice[n].inverse(h)
        return self.base_layer(h, *args[1:], **kwargs)


SeqBnConfig.layer_cls = BottleneckLayer
SeqBnInvConfig.layer_cls = BottleneckLayer


def _layers(model: nn.Module) -> list[BottleneckLayer]:
    return [m for m in model.modules() if isinstance(m, BottleneckLayer)]


def stack_adapters(model: nn.Module, names: list[str], train: list[str] | None = None,
                   invertible: Literal["first", "all"] = "first") -> None:
    """Run ``names`` in sequence (bottom first) and train only ``train`` (default: the top one);
    the others are frozen (``inject.freeze_adapters``), so a later ``set_adapter`` keeps them fixed.
    ``invertible``: "first" runs only the first adapter's NICE block (AdapterHub), "all" chains them."""
    from adaptome.core.adapters.inject import freeze_adapters, set_adapter

    if invertible not in ("first", "all"):
        raise ValueError(f"invertible must be 'first' or 'all', got {invertible!r}")
    train = [names[-1]] if train is None else train
    set_adapter(model, names)
    for layer in _layers(model):
        layer.composition, layer.weights, layer.invertible = "stack", None, invertible
    freeze_adapters(model, [n for n in names if n not in train])
    freeze_adapters(model, [n for n in names if n in train], frozen=False)


def average_adapters(model: nn.Module, names: list[str], weights: list[float] | None = None) -> None:
    """Add the (weighted) mean of the adapters' deltas; all of them are frozen
    (``inject.freeze_adapters(model, names, frozen=False)`` makes them trainable again)."""
    from adaptome.core.adapters.inject import freeze_adapters, set_adapter

    if weights is not None and len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} adapters")
    set_adapter(model, names)
    for layer in _layers(model):
        layer.composition, layer.weights = "average", weights
    freeze_adapters(model, names)
