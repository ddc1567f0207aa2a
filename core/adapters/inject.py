"""Native injection: swap targeted ``nn.Linear`` modules for a method's ``AdapterLayer``.

Model-level operations over every adapter layer live here too: activate / disable adapters, merge,
unmerge, unload, delete, and the adapter-only state dict. State-dict keys follow peft: inside the
model a weight is ``<path>.lora_A.<adapter>.weight``; ``adapter_state_dict`` drops the adapter name
(``<path>.lora_A.weight``), which is also how an adapter is saved.

Per-model bookkeeping (the config of each named adapter) is kept in ``model.adaptome_configs``.

A linear whose weight is tied to another module (a tied LM head) is refused as a target: merging an
update into it would change the other module too. A layer that cannot honour an option (a rank above
its dimensions) is an ``AdapterOptionError`` naming its path. Injection is all or nothing: when any target
is refused, the layers already wrapped are put back, so the caller's model (modules and state dict) is
unchanged.

Not covered: non-linear targets other than through a method's own ``resolve_paths``;
adapters on quantized (bitsandbytes / GPTQ) base layers.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from adaptome.core.adapters.base import AdapterConfig, AdapterLayer, AdapterOptionError
from adaptome.core.adapters.modules_to_save import ModulesToSaveWrapper, wrap_modules_to_save
from adaptome.core.adapters.targets import refuse_tied, resolve_targets

CONFIGS_ATTR = "adaptome_configs"
FROZEN_ATTR = "adaptome_frozen"  # adapters that run but do not train (a language adapter under a task one)


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    for path, mod in model.named_modules():
        if isinstance(mod, AdapterLayer):
            yield path, mod


def adapter_configs(model: nn.Module) -> dict[str, AdapterConfig]:
    return getattr(model, CONFIGS_ATTR, {})


def inject_adapter(model: nn.Module, cfg: AdapterConfig, adapter_name: str = "default") -> nn.Module:
    """Add adapter ``adapter_name`` of method ``cfg`` to ``model`` in place and return the model.

    The base model's parameters are frozen; the adapter's parameters and ``modules_to_save`` train.
    """
    layer_cls = type(cfg).layer_cls
    if layer_cls is None:
        raise TypeError(f"{type(cfg).__name__} has no native layer (backend={cfg.backend!r})")
    configs = dict(adapter_configs(model))
    if adapter_name in configs:
        raise ValueError(f"model already has an adapter named {adapter_name!r}")
    # wrapped layers are found through their base_layer; exclude those paths' inner modules
    paths = cfg.resolve_paths(model)  # methods that wrap blocks, not linears (bottleneck)
    if paths is None:
        paths = resolve_targets(model, cfg.target_modules, cfg.exclude_modules, layer_types=(nn.Linear, AdapterLayer))
        refuse_tied(model, paths, "merging an adapter into it would change {other} too")
    wrapped = [p for p, _ in adapter_layers(model)]
    created: list[tuple[str, AdapterLayer]] = []  # layers this call wrapped (undone on failure)
    extended: list[AdapterLayer] = []  # layers that already held other adapters
    try:
        for path in paths:
            if any(path.startswith(w + ".") for w in wrapped):  # base_layer or an adapter's own linears
                continue
            mod = model.get_submodule(path)
            if isinstance(mod, AdapterLayer):
                if not isinstance(mod, layer_cls):
                    raise TypeError(f"{path} already holds a {type(mod).__name__}; cannot add a {layer_cls.__name__}")
                layer = mod
                extended.append(layer)
            else:
                layer = layer_cls(mod)
                _set_submodule(model, path, layer)
                created.append((path, layer))
            try:
                layer.add_adapter(adapter_name, cfg)
            except AdapterOptionError as e:
                raise AdapterOptionError(f"{path}: {e}") from None
        cfg.after_inject(model, adapter_name)  # fix-ups that need layer paths (per-layer ranks, shared modules)
        if cfg.modules_to_save:
            wrap_modules_to_save(model, _inside_adapter_layers(model, cfg.modules_to_save), adapter_name)
    except BaseException:  # all or nothing: a refused later target leaves the model as it was given
        _undo_inject(model, adapter_name, created, extended)
        raise
    configs[adapter_name] = cfg
    setattr(model, CONFIGS_ATTR, configs)
    if len(configs) == 1:
        set_adapter(model, adapter_name)
    mark_trainable(model)
    return model


def _undo_inject(model: nn.Module, adapter_name: str, created: list[tuple[str, AdapterLayer]],
                 extended: list[AdapterLayer]) -> None:
    """Take back what a failed ``inject_adapter`` did: the layers it wrapped go back to their base modules
    (in reverse order, so a path is restored before its parent), the adapter leaves the layers that held
    others, and its modules_to_save copies go (a wrapper left with none gives back its original module)."""
    for path, layer in reversed(created):
        layer.release()
        _set_submodule(model, path, layer.base_layer)
    for layer in extended:
        if adapter_name in layer.configs:
            layer.delete_adapter(adapter_name)
    for path, mod in list(model.named_modules()):
        if isinstance(mod, ModulesToSaveWrapper) and adapter_name in mod.modules_to_save:
            mod.delete_adapter(adapter_name)
            if not len(mod.modules_to_save):
                _set_submodule(model, path, mod.original_module)


def _inside_adapter_layers(model: nn.Module, names: list[str]) -> list[str]:
    """``modules_to_save`` entries, with a module that an adapter layer wraps (a bottleneck adapter's
    embeddings or LM head) named by its ``base_layer`` path, so the trained copy sits inside the layer."""
    out = []
    for name in names:
        hits = [p for p, m in model.named_modules() if (p == name or p.endswith("." + name))
                and isinstance(m, AdapterLayer)]
        out.extend(f"{p}.base_layer" for p in hits)
        if not hits:
            out.append(name)
    return out


def mark_trainable(model: nn.Module) -> None:
    """Freeze everything except the active, not frozen adapters' weights and their
    modules_to_save copies."""
    frozen = getattr(model, FROZEN_ATTR, set())
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in adapter_layers(model):
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr)
            for name in layer.active_adapters:
                if name in holder and name not in frozen:
                    item = holder[name]
                    params = item.parameters() if isinstance(item, nn.Module) else [item]
                    for p in params:
                        p.requires_grad_(True)
    for mod in model.modules():
        if isinstance(mod, ModulesToSaveWrapper):
            mod.mark_trainable()


def freeze_adapters(model: nn.Module, names: list[str], frozen: bool = True) -> None:
    """Keep ``names`` fixed while they stay active (``frozen=False`` lets them train again);
    ``set_adapter`` and every later ``mark_trainable`` respect it."""
    known = adapter_configs(model)
    for n in names:
        if n not in known:
            raise ValueError(f"unknown adapter {n!r}; the model has {sorted(known)}")
    current = set(getattr(model, FROZEN_ATTR, set()))
    current = current | set(names) if frozen else current - set(names)
    setattr(model, FROZEN_ATTR, current)
    mark_trainable(model)


def set_adapter(model: nn.Module, names: str | list[str]) -> None:
    """Make ``names`` the active adapters on every layer (and the ones that train)."""
    names_l = [names] if isinstance(names, str) else list(names)
    known = adapter_configs(model)
    for n in names_l:
        if n not in known:
            raise ValueError(f"unknown adapter {n!r}; the model has {sorted(known)}")
    for _, layer in adapter_layers(model):
        layer.set_adapter([n for n in names_l if n in layer.configs])
    for mod in model.modules():
        if isinstance(mod, ModulesToSaveWrapper):
            mod.set_adapter(names_l)
    mark_trainable(model)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Run the base model: every adapter bypassed inside the block."""
    layers = [layer for _, layer in adapter_layers(model)]
    wrappers = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    for layer in layers:
        layer.disabled = True
    for w in wrappers:
        w.disabled = True
    try:
        yield
    finally:
        for layer in layers:
            layer.disabled = False
        for w in wrappers:
            w.disabled = False


@torch.no_grad()
def merge_adapter(model: nn.Module, names: list[str] | None = None) -> None:
    for _, layer in adapter_layers(model):
        layer.merge(None if names is None else [n for n in names if n in layer.configs])


@torch.no_grad()
def unmerge_adapter(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()


@torch.no_grad()
def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Remove every adapter layer, putting ``base_layer`` back; with ``merge`` the active adapters'
    updates (and the active modules_to_save copies) are kept in the weights."""
    for path, layer in list(adapter_layers(model)):
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        layer.release()
        _set_submodule(model, path, layer.base_layer)
    for path, mod in list(model.named_modules()):
        if isinstance(mod, ModulesToSaveWrapper):
            _set_submodule(model, path, mod.active_module() if merge else mod.original_module)
    for attr in (CONFIGS_ATTR, FROZEN_ATTR):
        if hasattr(model, attr):
            delattr(model, attr)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    configs = dict(adapter_configs(model))
    if adapter_name not in configs:
        raise ValueError(f"unknown adapter {adapter_name!r}; the model has {sorted(configs)}")
    for _, layer in adapter_layers(model):
        if adapter_name in layer.configs:
            layer.delete_adapter(adapter_name)
    for mod in model.modules():
        if isinstance(mod, ModulesToSaveWrapper):
            mod.delete_adapter(adapter_name)
    del configs[adapter_name]
    setattr(model, CONFIGS_ATTR, configs)
    mark_trainable(model)


def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's own tensors (trainable weights, saved buffers, modules_to_save copies), keyed
    without the adapter name."""
    out: dict[str, torch.Tensor] = {}
    for path, layer in adapter_layers(model):
        for attr in layer.adapter_layer_names + layer.other_param_names:
            holder = getattr(layer, attr)
            if adapter_name not in holder:
                continue
            item = holder[adapter_name]
            if isinstance(item, nn.Module):
                for k, v in item.state_dict().items():
                    out[f"{path}.{attr}.{k}"] = v
            else:
                out[f"{path}.{attr}"] = item.data if isinstance(item, nn.Parameter) else item
    for path, mod in model.named_modules():
        if isinstance(mod, ModulesToSaveWrapper) and adapter_name in mod.modules_to_save:
            for k, v in mod.modules_to_save[adapter_name].state_dict().items():
                out[f"{path}.modules_to_save.{k}"] = v
    return {k: v.detach().clone() for k, v in out.items()}


@torch.no_grad()
def set_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str = "default",
                           source: str = "state dict") -> None:
    """Load ``state`` (keys as ``adapter_state_dict`` gives them) into adapter ``adapter_name``.

    Missing or unexpected keys and shape mismatches are errors naming ``source``.
    """
    own = adapter_state_dict(model, adapter_name)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not fit this model's adapter {adapter_name!r}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    targets = dict(model.state_dict(keep_vars=True))
    for key, value in state.items():
        full = _insert_name(key, adapter_name, targets)
        t = targets[full]
        if t.shape != value.shape:
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(t.shape)}")
        t.data.copy_(value.to(t.dtype))


def _insert_name(key: str, adapter_name: str, targets: dict) -> str:
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        cand = ".".join(parts[:i] + [adapter_name] + parts[i:])
        if cand in targets:
            return cand
    cand = f"{key}.{adapter_name}"  # ParameterDict entries: <path>.<attr>.<name>
    if cand in targets:
        return cand
    raise KeyError(key)


def trainable_report(model: nn.Module) -> dict[str, float]:
    """Trainable parameters: count, share of all parameters in percent, and bytes."""
    total = trainable = nbytes = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            nbytes += p.numel() * p.element_size()
    pct = 100.0 * trainable / total if total else 0.0
    return {"trainable": trainable, "total": total, "percent": pct, "bytes": nbytes}
