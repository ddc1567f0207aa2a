"""Export a LoRA-family adapter as a plain peft LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained`` and tools reading peft's
LoRA format load.

Every method whose update of a linear layer is a product of rank-k factors declares it next to the
method: its layer's ``lora_factors(adapter_name) -> (B (out, k), A (k, in), s)`` with
``delta_weight == s * B @ A``. DyLoRA gives its first k components (any k <= r, ``rank``), SoRA drops
the zero-gate ranks and folds the kept gates into A, NOLA materialises A and B from its seeded bases,
LoRA-XS / LoRA-SB write B R A as (B R) A and LaMDA writes B S A as (B S) A. The scale s is folded into
peft's config: ``lora_alpha = s * k`` so peft's ``lora_alpha / r`` equals s (per layer through
``rank_pattern`` / ``alpha_pattern`` where ranks or scales differ, as after SoRA pruning or LaMDA++).
Layers whose rank is 0 after pruning are left out. ``modules_to_save`` copies go along as peft's
``modules_to_save``. peft-backed ``lora`` is already in the format and is re-saved by peft.

Methods with a ``no_lora_form`` reason (bottleneck adapters, DoRA) are refused with that reason.

peft writes the folder itself: a skeleton of the base model is built on the meta device (no memory
for its weights), wrapped by ``peft.get_peft_model`` with the exported config, given the factors, and
saved with peft's ``save_pretrained``, so the key names are the installed peft's own.

Dimension letters: O out_features, I in_features, K exported rank.

Not covered: models that are not transformers ``PreTrainedModel`` s (the skeleton needs a config),
cutting the rank of methods other than DyLoRA (a truncated SVD would change the outputs), tied
``modules_to_save`` copies, several adapters in one export (export each by name).
"""

from __future__ import annotations

import copy
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS, inject
from adaptome.core.adapters.api import adapter_config_of, is_peft_model
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer
from adaptome.core.atomic import atomic_dir
from adaptome.core.errors import AdaptomeError
from adaptome.core.model_files import check_model_folder
from adaptome.core.registry import RegistryError

WEIGHTS = "adapter_model.safetensors"
#: provenance of an export (peft ignores it): method, rank, source
EXPORT_META = "adaptome_export.json"


class ExportError(AdaptomeError, ValueError):
    """An adapter cannot be exported as asked."""


@dataclass
class ExportReport:
    """What an export wrote.

    Args:
        path: the peft LoRA folder.
        method: the adapter's method.
        layers: number of adapted linear layers written.
        ranks: the exported rank of each written layer (module path -> k).
        dropped: layers with no rank left (SoRA layers whose gates are all zero).
        exported_bytes: size of the exported ``adapter_model.safetensors``.
        native_bytes: size of the native checkpoint's ``adapter_model.safetensors`` (None when the
            export started from a model, not a folder).
    """

    path: Path
    method: str
    layers: int
    ranks: dict[str, int]
    dropped: list[str]
    exported_bytes: int
    native_bytes: int | None = None

    def size_line(self) -> str:
        """One sentence comparing the exported file to the native checkpoint."""
        ex = f"{WEIGHTS} {_human(self.exported_bytes)} ({self.exported_bytes:,} bytes)"
        if not self.native_bytes:
            return ex
        ratio = self.exported_bytes / self.native_bytes
        diff = self.exported_bytes - self.native_bytes
        if diff > 0:
            how = f"{ratio:.2f}x the native checkpoint, larger by {_human(diff)}"
        elif diff < 0:
            how = f"{ratio:.2f}x the native checkpoint, smaller by {_human(-diff)}"
        else:
            how = "the same size as the native checkpoint"
        return f"{ex} beside the native checkpoint's {_human(self.native_bytes)} ({self.native_bytes:,} bytes): {how}"


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def refusal(cfg: AdapterConfig | type[AdapterConfig]) -> str | None:
    """None when the method exports as a plain peft LoRA; otherwise one line saying why not and what
    to do instead."""
    cls = cfg if isinstance(cfg, type) else type(cfg)
    reason = cls.no_lora_form
    if reason is None and cls.backend == "native":
        layer_cls = cls.layer_cls
        if layer_cls is None or layer_cls.lora_factors is AdapterLayer.lora_factors:
            reason = f"its layer {getattr(layer_cls, '__name__', None)} does not declare lora_factors"
    if reason is None:
        return None
    if cls.supports_merge:
        what = ("merge it into the base weights instead (a standalone checkpoint: "
                "adaptome.core.adapters.io.save_merged, or train with save_merged: true)")
    else:
        what = "it cannot be merged either; serve it with adaptome (io.load_adapter)"
    return f"{cls.method} cannot be exported as a peft LoRA: {reason}; {what}"


def is_exportable(cfg: AdapterConfig | type[AdapterConfig]) -> bool:
    return refusal(cfg) is None


@contextmanager
def _at_rank(layers: list[tuple[str, AdapterLayer]], adapter_name: str, method: str, rank: int | None
             ) -> Iterator[None]:
    """Run the layers at ``rank`` (methods trained for every rank: a ``set_rank`` layer method), then
    restore their ranks."""
    if rank is None:
        yield
        return
    if not all(callable(getattr(layer, "set_rank", None)) for _, layer in layers):
        raise ExportError(f"--rank applies to methods trained for every prefix rank (dylora); cutting {method}'s "
                          f"factors to rank {rank} would change its outputs")
    before = {path: layer.rank[adapter_name] for path, layer in layers}
    try:
        for _, layer in layers:
            try:
                layer.set_rank(adapter_name, rank)
            except ValueError as e:
                raise ExportError(f"{method}: {e}") from None
        yield
    finally:
        for path, layer in layers:
            layer.rank[adapter_name] = before[path]


def collect_factors(model: nn.Module, adapter_name: str = "default", rank: int | None = None
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{path: (B (out, k), A (k, in), s)}`` of every layer of a native adapter (k may be 0)."""
    cfg = adapter_config_of(model, adapter_name)
    why = refusal(cfg)
    if why:
        raise ExportError(why)
    layers = [(p, m) for p, m in inject.adapter_layers(model) if adapter_name in m.configs]
    if not layers:
        raise ExportError(f"the model has no layers of adapter {adapter_name!r}")
    out = {}
    with _at_rank(layers, adapter_name, cfg.method, rank):
        for path, layer in layers:
            b, a, s = layer.lora_factors(adapter_name)
            out[path] = (b.detach().clone(), a.detach().clone(), float(s))
    return out


def _peft_config(factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]], cfg: AdapterConfig):
    """A ``peft.LoraConfig`` whose ``lora_alpha / r`` is each layer's scale s (alpha = s k)."""
    import peft

    ranks = {p: a.shape[0] for p, (_, a, _) in factors.items()}
    alphas = {p: s * ranks[p] for p, (_, _, s) in factors.items()}
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)  # the most common rank
    scales = {s for _, _, s in factors.values()}
    a0 = next(iter(scales)) * r0 if len(scales) == 1 else float(r0)
    rank_pattern = {re.escape(p): k for p, k in ranks.items() if k != r0}
    alpha_pattern = {re.escape(p): al for p, al in alphas.items() if not (ranks[p] == r0 and al == a0)}
    return peft.LoraConfig(r=r0, lora_alpha=a0, target_modules=sorted(factors), rank_pattern=rank_pattern,
                           alpha_pattern=alpha_pattern, lora_dropout=float(getattr(cfg, "lora_dropout", 0.0)),
                           modules_to_save=list(cfg.modules_to_save) if cfg.modules_to_save else None,
                           init_lora_weights=False)


def _skeleton(model: nn.Module) -> nn.Module:
    """The base architecture of ``model`` on the meta device (no weight memory)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ExportError(f"{type(model).__name__} is not a transformers model; the export needs its config")
    with torch.device("meta"):
        return type(model)(copy.deepcopy(model.config))


def _mts_copies(model: nn.Module, adapter_name: str) -> dict[str, dict[str, torch.Tensor]]:
    from adaptome.core.adapters.modules_to_save import ModulesToSaveWrapper

    return {p: {k: v.detach().clone() for k, v in m.modules_to_save[adapter_name].state_dict().items()}
            for p, m in model.named_modules()
            if isinstance(m, ModulesToSaveWrapper) and adapter_name in m.modules_to_save}


def export_model(model: nn.Module, out: str | os.PathLike, adapter_name: str = "default", rank: int | None = None,
                 overwrite: bool = False, base_model_name_or_path: str | None = None,
                 base_weights: str | None = None, base_weights_sample: dict | None = None) -> ExportReport:
    """Write adapter ``adapter_name`` of ``model`` (native or peft-backed) to ``out`` as a plain peft
    LoRA. ``model`` is left as it was. ``rank``: DyLoRA's rank k (default: its active rank).
    ``base_weights`` / ``base_weights_sample``: the base's digest and sampled values recorded in
    ``adaptome_export.json`` for ``adapters merge`` (default: ``base_check.base_weights_digest`` /
    ``base_weights_sample`` of ``model``)."""
    import peft

    from adaptome.core.adapters.base_check import base_weights_digest
    from adaptome.core.adapters.base_check import base_weights_sample as sample_of

    if base_weights is None:
        base_weights = base_weights_digest(model)
    if base_weights_sample is None:
        base_weights_sample = sample_of(model)
    base = {"base_weights": base_weights, "base_weights_sample": base_weights_sample}

    cfg = adapter_config_of(model, adapter_name)
    why = refusal(cfg)
    if why:
        raise ExportError(why)
    out = Path(out)
    if is_peft_model(model):
        if rank is not None:
            raise ExportError(f"--rank applies to methods trained for every prefix rank (dylora), not {cfg.method}")
        with atomic_dir(out, overwrite) as tmp:
            model.save_pretrained(tmp, selected_adapters=[adapter_name])
            if adapter_name != "default":  # peft puts non-default adapters in a sub-folder
                for f in (tmp / adapter_name).iterdir():
                    os.replace(f, tmp / f.name)
                (tmp / adapter_name).rmdir()
            _write_meta(tmp, cfg, rank, adapter_name, base=base)
        pcfg = model.peft_config[adapter_name]
        ranks = {p: pcfg.r for p in pcfg.target_modules} if isinstance(pcfg.target_modules, (list, set)) else {}
        return ExportReport(out, cfg.method, len(ranks), ranks, [], (out / WEIGHTS).stat().st_size)

    factors = collect_factors(model, adapter_name, rank)
    dropped = sorted(p for p, (_, a, _) in factors.items() if a.shape[0] == 0)
    factors = {p: f for p, f in factors.items() if f[1].shape[0] > 0}
    if not factors:
        raise ExportError(f"every layer of {cfg.method} adapter {adapter_name!r} has rank 0 (all SoRA gates are "
                          "zero): the exported LoRA would be empty")
    mts = _mts_copies(model, adapter_name)
    skeleton = _skeleton(model)
    pmodel = peft.get_peft_model(skeleton, _peft_config(factors, cfg), adapter_name="default")
    inner = pmodel.base_model.model
    for path, (b, a, _) in factors.items():
        layer = inner.get_submodule(path)
        layer.lora_A["default"].weight = nn.Parameter(a.contiguous(), requires_grad=False)  # (K, I)
        layer.lora_B["default"].weight = nn.Parameter(b.contiguous(), requires_grad=False)  # (O, K)
    for path, state in mts.items():
        wrapper = inner.get_submodule(path)
        if not hasattr(wrapper, "modules_to_save"):
            raise ExportError(f"peft did not wrap modules_to_save entry {path}")  # pragma: no cover
        wrapper.modules_to_save["default"].load_state_dict(state, assign=True)
    pmodel.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    with atomic_dir(out, overwrite) as tmp:
        pmodel.save_pretrained(tmp, save_embedding_layers=False)
        _write_meta(tmp, cfg, rank, adapter_name, dropped, base)
    return ExportReport(out, cfg.method, len(factors), {p: f[1].shape[0] for p, f in factors.items()}, dropped,
                        (out / WEIGHTS).stat().st_size)


def _write_meta(tmp: Path, cfg: AdapterConfig, rank: int | None, adapter_name: str,
                dropped: list[str] | None = None, base: dict | None = None) -> None:
    """``base``: ``{"base_weights": digest, "base_weights_sample": sample}`` (``base_check``), for adapters merge."""
    meta = {"format": "adaptome-export", "to": "peft-lora", "method": cfg.method, "config": cfg.to_dict(),
            "adapter_name": adapter_name, "rank": rank, "dropped_layers": dropped or [], **(base or {})}
    (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_base(base: str, meta: dict) -> nn.Module:
    """The base model at ``base`` (local path or hub id), of the class named in the adapter's
    ``adaptome.json`` (``base_model_class``)."""
    import transformers

    name = meta.get("base_model_class", "")
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ExportError(f"adaptome.json names base model class {name!r}, which transformers does not have")
    check_model_folder(base)  # a truncated weights / config file: one line naming it
    return cls.from_pretrained(base).eval()


def _peft_recorded_base(src: Path) -> str | None:
    try:
        cfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return cfg.get("base_model_name_or_path") if cfg.get("peft_type") else None


def export_adapter_dir(src: str | os.PathLike, out: str | os.PathLike, base: str | nn.Module | None = None,
                       rank: int | None = None, overwrite: bool = False) -> ExportReport:
    """Export the adaptome adapter folder ``src`` as a plain peft LoRA in ``out``.

    ``base``: the base model the adapter was trained on, as a loaded model or a local path / hub id
    (default: the base the folder records, ``base_model_name_or_path`` in ``adaptome.json`` or, for
    peft-backed methods, in peft's ``adapter_config.json``). The
    base is needed because some methods' checkpoints do not hold their factors (NOLA keeps a seed and
    coefficients; the layer shapes come from the base).
    """
    from adaptome.core.adapters.io import META, load_adapter, read_adapter_meta

    src, out = Path(src), Path(out)
    meta = read_adapter_meta(src)
    try:
        cls = ADAPTERS.get(meta["method"])
    except RegistryError as e:
        raise ExportError(f"{src / META}: {e}") from None
    why = refusal(cls)
    if why:
        raise ExportError(why)
    if rank is not None and not callable(getattr(cls.layer_cls, "set_rank", None)):
        raise ExportError(f"--rank applies to methods trained for every prefix rank (dylora); cutting "
                          f"{cls.method}'s factors to rank {rank} would change its outputs")
    if out.resolve() == src.resolve():
        raise ExportError(f"{out}: the output folder is the source folder; choose another")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    if base is None:  # what the folder records: adaptome.json, else peft's own config (peft-backed methods)
        base = meta.get("base_model_name_or_path") or _peft_recorded_base(src)
    if not base:
        raise ExportError(f"{src / META} does not record the base model; pass it (--base PATH_OR_HUB_ID)")
    name = base if isinstance(base, str) else None
    if isinstance(base, str):
        if base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists():  # a path: no hub lookup
            raise ExportError(f"{src}: its base model folder {base} does not exist; pass --base PATH_OR_HUB_ID")
        try:
            model = load_base(base, meta)
        except (OSError, ValueError) as e:  # neither a folder here nor a reachable hub id
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ExportError(f"{src}: its base model {base!r} cannot be loaded ({why}); pass --base PATH_OR_HUB_ID")
    else:
        model = copy.deepcopy(base)
    model = load_adapter(model, src).eval()
    report = export_model(model, out, "default", rank, overwrite, base_model_name_or_path=name,
                          base_weights=meta.get("base_weights"),  # the digest and sample recorded when it was
                          base_weights_sample=meta.get("base_weights_sample"))  # trained
    report.native_bytes = (src / WEIGHTS).stat().st_size
    return report

