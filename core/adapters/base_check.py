"""Which base an adapter was trained on: a signature saved with it and checked when it is loaded.

An adapter's update is only meaningful on the weights it was trained beside (LoRA-XS, LoRA-SB and LaMDA
even take their frozen factors from them), and some methods save no tensor whose shape pins the layer
(NOLA keeps a seed and coefficients; its bases are regenerated at whatever shape the layer has). So
``io.save_adapter`` records, for every layer the adapter wraps, the base weight's shape and a sample of
its values (``SAMPLES`` entries at fixed, evenly spaced flat positions, as float32), and ``io.load_adapter``
refuses a model whose layer differs: a shape exactly, values beyond a tolerance that bf16 / fp16 rounding
of the same weights stays well inside (relative 1e-2 of each value plus 1e-3 of the sample's mean size).

``base_weights_digest`` identifies the whole base under the adapters (``core.train.identity.weights_digest`` of the
plain base's parameters, by their plain names), so two adapters saved on one base record the same value whatever
layers they wrap. It hashes each parameter's dtype and exact values, so the same checkpoint loaded in float32 and in
bfloat16 gets two digests; ``base_weights_sample`` therefore records the sampled values themselves (``SAMPLES`` per
base parameter, 6 significant digits, with a digest of the parameters' names and shapes), and ``base_weights_differ``
compares two such records within the tolerance above. ``adaptome adapters merge`` compares the exact digests of two
folders whose bases were loaded in the same dtypes (the sample records them), the samples within that tolerance only
across dtypes (a merge of LoRAs trained on different weights under one name fits neither; a child of the base
fine-tuned a little is another base).
The sample costs ``SAMPLES`` numbers per parameter in ``adaptome.json`` (about 4,700 for a 7B LLaMA).

Not covered: bases whose weights are not floating point (quantized layers are skipped), modules trained
fully beside the adapter (``modules_to_save``: they are saved whole), a base that differs only outside
the sampled positions (a sample, not a checksum: hashing a 7B model at every load costs seconds).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

#: sampled values per wrapped base weight
SAMPLES = 16
RTOL, SCALE_TOL = 1e-2, 1e-3
#: float16's smallest step (its subnormal spacing): values below it in size round by up to this much in an fp16 load
FP16_STEP = 2.0 ** -24


def _inner_base(mod: nn.Module) -> nn.Module:
    """The plain module under any adapter wrappers (ours keep it as ``base_layer``, as peft's do)."""
    while isinstance(getattr(mod, "base_layer", None), nn.Module):
        mod = mod.base_layer
    return mod


def _weight(mod: nn.Module) -> torch.Tensor | None:
    w = getattr(_inner_base(mod), "weight", None)
    return w if isinstance(w, torch.Tensor) and w.is_floating_point() else None


def sample_values(w: torch.Tensor, n: int = SAMPLES) -> torch.Tensor:
    """``n`` values of ``w`` at evenly spaced flat positions, as float32 on the CPU (fewer if ``w`` is smaller)."""
    flat = w.detach().reshape(-1)  # (numel,)
    idx = torch.linspace(0, max(flat.numel() - 1, 0), min(n, flat.numel())).round().long().to(flat.device)
    return flat[idx].float().cpu()


def _sample(w: torch.Tensor) -> list[float]:
    return sample_values(w).tolist()


def wrapped_paths(base: nn.Module, adapter_name: str) -> list[str]:
    """Paths (in the plain base model) of the modules adapter ``adapter_name`` wraps, native or peft."""
    from adaptome.core.adapters.base import AdapterLayer

    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a core dependency
        BaseTunerLayer = ()  # noqa: N806
    out = []
    for path, mod in base.named_modules():
        if isinstance(mod, AdapterLayer) and adapter_name in mod.configs:
            out.append(path)
        elif BaseTunerLayer and isinstance(mod, BaseTunerLayer) and adapter_name in _peft_names(mod):
            out.append(path)
    return out


def _peft_names(mod: nn.Module) -> set[str]:
    names = set()
    for attr in getattr(mod, "adapter_layer_names", ()):
        holder = getattr(mod, attr, None)
        if hasattr(holder, "keys"):
            names.update(holder.keys())
    return names


def _saved_whole(path: str, modules_to_save: list[str] | None) -> bool:
    """Whether ``path`` is (or sits inside) a module the adapter trains fully and saves itself."""
    dotted = "." + path + "."
    return any(f".{t}." in dotted for t in modules_to_save or [])


def base_signature(base: nn.Module, adapter_name: str, modules_to_save: list[str] | None = None
                   ) -> dict[str, Any] | None:
    """{path: {"shape": [...], "sample": [...]}} for every wrapped layer with a floating weight, but those in
    ``modules_to_save`` (trained, so no longer the base's); None when an adapter is merged into the weights."""
    from adaptome.core.adapters.base import AdapterLayer

    sig = {}
    for path in wrapped_paths(base, adapter_name):
        if _saved_whole(path, modules_to_save):
            continue
        mod = base.get_submodule(path)
        if (isinstance(mod, AdapterLayer) and mod.merged) or getattr(mod, "merged_adapters", None):
            return None
        w = _weight(mod)
        if w is not None:
            sig[path] = {"shape": list(w.shape), "sample": _sample(w)}
    return sig


def base_mismatch(model: nn.Module, signature: dict[str, Any]) -> str | None:
    """What differs between ``model`` (the plain base, or one holding other adapters) and the recorded
    signature, in one line; None when every recorded layer that ``model`` has matches. A path the model
    lacks is left to the loader, which names the missing modules."""
    for path, rec in signature.items():
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        w = _weight(mod)
        if w is None:
            continue
        if list(w.shape) != list(rec["shape"]):
            return f"{path} has weight shape {tuple(w.shape)}; the adapter was trained on {tuple(rec['shape'])}"
        want = torch.tensor(rec["sample"], dtype=torch.float32)
        got = torch.tensor(_sample(w), dtype=torch.float32)
        tol = RTOL * want.abs() + SCALE_TOL * want.abs().mean()
        if got.shape != want.shape or bool(((got - want).abs() > tol).any()):
            return (f"{path} holds other weights than the base the adapter was trained on (sampled values differ "
                    f"by up to {float((got - want).abs().max()):.3g})")
    return None


class _PlainBase:
    """The base parameters of a model that holds adapters, named as in the plain base model (no peft
    ``base_model.model.`` prefix, no ``base_layer`` / ``original_module`` step, no adapter or
    modules_to_save copy): what ``weights_digest`` reads (``named_parameters``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def named_parameters(self):
        from adaptome.core.adapters.modules_to_save import ModulesToSaveWrapper

        try:
            from peft import PeftModel
            from peft.utils import ModulesToSaveWrapper as PeftModulesToSave
        except ImportError:  # pragma: no cover - peft is a core dependency
            PeftModel = PeftModulesToSave = ()  # noqa: N806
        root = self.model.base_model.model if PeftModel and isinstance(self.model, PeftModel) else self.model
        seen: set[int] = set()

        def walk(mod: nn.Module, prefix: str):
            while True:  # step through wrappers to the module the plain base has here
                if isinstance(mod, (ModulesToSaveWrapper, *((PeftModulesToSave,) if PeftModulesToSave else ()))):
                    mod = mod.original_module
                elif isinstance(getattr(mod, "base_layer", None), nn.Module):
                    mod = mod.base_layer
                else:
                    break
            for name, p in mod.named_parameters(recurse=False):
                if id(p) not in seen:  # a tied weight once, under its first name (as named_parameters does)
                    seen.add(id(p))
                    yield prefix + name, p
            for name, child in mod.named_children():
                yield from walk(child, f"{prefix}{name}.")

        yield from walk(root, "")


def _holds_merged(model: nn.Module) -> bool:
    from adaptome.core.adapters.base import AdapterLayer

    return any((isinstance(mod, AdapterLayer) and mod.merged) or getattr(mod, "merged_adapters", None)
               for mod in model.modules())


def base_weights_digest(model: nn.Module) -> str | None:
    """``weights_digest`` of the base weights under ``model``'s adapters (equal to that of the plain base model);
    None when an adapter is merged into them (they are then not the base's)."""
    from adaptome.core.train.identity import weights_digest

    return None if _holds_merged(model) else weights_digest(_PlainBase(model))


def base_weights_sample(model: nn.Module) -> dict[str, Any] | None:
    """``{"layout": SHA-256 of the base parameters' names and shapes (no dtype), "values": [[SAMPLES values] per
    parameter]}`` of the base weights under ``model``'s adapters, in the plain base's order; None when an adapter is
    merged into them. Unlike ``base_weights_digest`` it is the same, within ``base_weights_differ``'s tolerance, for
    one checkpoint loaded in float32, bfloat16 or float16."""
    if _holds_merged(model):
        return None
    h, dtypes = hashlib.sha256(), hashlib.sha256()
    values = []
    for name, p in _PlainBase(model).named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        dtypes.update(f"{p.dtype};".encode())
        values.append([float(f"{v:.6g}") for v in sample_values(p).tolist()])
    # dtypes: two records of one dtype layout are compared by their exact digests (``merge.factors``), not within
    # the rounding tolerance, which a short fine-tune of the base (every weight moved by 0.5 %) would pass
    return {"layout": h.hexdigest(), "dtypes": dtypes.hexdigest(), "values": values}


def valid_sample(record: Any) -> bool:
    """Whether ``record`` has the form ``base_weights_sample`` writes (anything else is ignored, as a missing one)."""
    return (isinstance(record, dict) and isinstance(record.get("layout"), str)
            and isinstance(record.get("values"), list)
            and all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in record["values"]))


def base_weights_differ(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """How two ``base_weights_sample`` records differ, in a few words; None when they are one base's (same names
    and shapes, every sampled value within relative 1e-2 plus 1e-3 of its parameter's mean size, as
    ``base_mismatch``, plus float16's subnormal step), whatever dtype each was loaded in."""
    if a["layout"] != b["layout"] or len(a["values"]) != len(b["values"]):
        return "other parameter names or shapes"
    worst = 0.0
    for va, vb in zip(a["values"], b["values"]):
        x, y = torch.tensor(va, dtype=torch.float64), torch.tensor(vb, dtype=torch.float64)
        if x.shape != y.shape:
            return "other parameter names or shapes"
        if not x.numel():
            continue
        size = torch.maximum(x.abs(), y.abs())  # symmetric: either record may be the rounded one
        diff = (x - y).abs()
        if bool((diff > RTOL * size + SCALE_TOL * size.mean() + FP16_STEP).any()):
            worst = max(worst, float(diff.max()))
    return f"values up to {worst:.3g} apart" if worst else None
