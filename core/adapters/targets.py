"""Which modules an adapter wraps: target patterns and per-architecture presets.

``resolve_targets(model, target_modules, exclude_modules)`` returns the dotted paths of the
``nn.Linear`` modules to wrap. Patterns follow peft: a list entry matches a path equal to it or
ending in ``.entry``; a single string other than a preset is a regex matched against the full path.
Every entry of a ``target_modules`` or ``exclude_modules`` list must match at least one linear (a
misspelt name or an embedding is an error, not a silent no-op); presets may hold names that only some
versions of an architecture use.
``"all-linear"`` takes every linear layer except the output head (the module the model reports as
its output embeddings, or one named ``lm_head`` / ``classifier`` / ``head``). Presets
(``attention``, ``mlp``, ``attention+mlp``) are resolved from the architecture: LLaMA, Phi-3 (fused
``qkv_proj`` / ``gate_up_proj``), BERT / XLM-R / ESM, Hugging Face ViT and timm ViT.

Not covered: convolution and embedding targets (native layers wrap ``nn.Linear``; GPT-2's ``Conv1D``
projections are named in the error when nothing matches); presets for
architectures not listed in ``ARCH_PRESETS`` (give module names or a regex).
"""

from __future__ import annotations

import re

from torch import nn

from adaptome.core.errors import AdaptomeError

#: model_type -> preset -> module-name suffixes
ARCH_PRESETS: dict[str, dict[str, list[str]]] = {
    "llama": {
        "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "mlp": ["gate_proj", "up_proj", "down_proj"],
    },
    "mistral": {
        "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "mlp": ["gate_proj", "up_proj", "down_proj"],
    },
    "phi3": {"attention": ["qkv_proj", "o_proj"], "mlp": ["gate_up_proj", "down_proj"]},
    "bert": {
        "attention": ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"],
        "mlp": ["intermediate.dense", "layer.*.output.dense"],
    },
    # transformers 5 names (attention.q_proj ..., mlp.fc1) and the 4.x names, so either version works
    "vit": {
        "attention": ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                      "attention.attention.query", "attention.attention.key", "attention.attention.value",
                      "attention.output.dense"],
        "mlp": ["mlp.fc1", "mlp.fc2", "intermediate.dense", "layer.*.output.dense"],
    },
    "timm_vit": {"attention": ["attn.qkv", "attn.proj"], "mlp": ["mlp.fc1", "mlp.fc2"]},
}
ARCH_PRESETS["xlm-roberta"] = ARCH_PRESETS["bert"]
ARCH_PRESETS["roberta"] = ARCH_PRESETS["bert"]
ARCH_PRESETS["esm"] = ARCH_PRESETS["bert"]

PRESETS = ("attention", "mlp", "attention+mlp")
_HEAD_NAMES = ("lm_head", "classifier", "head", "score")


class TargetError(AdaptomeError, ValueError):
    """Target patterns that match nothing or name an unknown preset."""


def model_type(model: nn.Module) -> str:
    """The architecture key used for presets (``config.model_type`` or a timm class name)."""
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if isinstance(mt, str):
        return mt
    inner = getattr(model, "model", None)  # peft / wrapper models
    if isinstance(inner, nn.Module) and inner is not model:
        return model_type(inner)
    if type(model).__name__ == "VisionTransformer":
        return "timm_vit"
    return type(model).__name__.lower()


def _pattern_matches(path: str, pattern: str) -> bool:
    if "*" in pattern:  # a glob over one dotted segment, e.g. layer.*.output.dense
        rx = re.escape(pattern).replace(r"\*", r"[^.]+")
        return re.fullmatch(rf"(.*\.)?{rx}", path) is not None
    return path == pattern or path.endswith("." + pattern)


def matches(path: str, spec: list[str] | str) -> bool:
    """Whether ``path`` matches a target spec: a list of names (equal, a dotted suffix, or a glob) or one regex."""
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None
    return any(_pattern_matches(path, p) for p in spec)


def _head_paths(model: nn.Module) -> set[str]:
    """The output layer and every linear inside a prediction head (``lm_head.dense`` of RoBERTa,
    ``cls.predictions.transform.dense`` of BERT): task heads are trained fully or left alone,
    not adapted."""
    heads = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        parts = path.split(".")
        if (out_emb is not None and mod is out_emb) or any(p in _HEAD_NAMES for p in parts) or parts[0] == "cls":
            heads.add(path)
    return heads


def expand_preset(model: nn.Module, target_modules: list[str] | str) -> list[str] | str:
    """Turn a preset name into the architecture's module suffixes; other values pass through."""
    if not isinstance(target_modules, str) or target_modules == "all-linear":
        return target_modules
    if target_modules in PRESETS:
        mt = model_type(model)
        if mt not in ARCH_PRESETS:
            raise TargetError(
                f"no target preset for architecture {mt!r}; known: {', '.join(sorted(ARCH_PRESETS))}. "
                "Give target_modules as a list of module names or 'all-linear'"
            )
        parts = target_modules.split("+")
        return [name for part in parts for name in ARCH_PRESETS[mt][part]]
    return target_modules


def resolve_targets(
    model: nn.Module,
    target_modules: list[str] | str,
    exclude_modules: list[str] | str | None = None,
    layer_types: tuple[type, ...] = (nn.Linear,),
) -> list[str]:
    """Dotted paths of the modules to wrap, in model order; an error if none match."""
    spec = expand_preset(model, target_modules)
    heads = _head_paths(model) if spec == "all-linear" else set()
    found = []
    for path, mod in model.named_modules():
        if not path or not isinstance(mod, layer_types):
            continue
        if spec == "all-linear":
            ok = path not in heads
        else:
            ok = matches(path, spec)
        if ok and exclude_modules and matches(path, exclude_modules):
            ok = False
        if ok:
            found.append(path)
    if found and isinstance(target_modules, list):  # the user's own names (not a preset): every entry must match
        _check_entries(model, target_modules, layer_types)
    if isinstance(exclude_modules, list):  # a misspelt exclusion would leave that module adapted
        _check_entries(model, exclude_modules, layer_types, "exclude_modules")
    if not found:
        linears = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
        sample = ", ".join(linears[:6]) + (" ..." if len(linears) > 6 else "")
        conv1d = [p for p, m in model.named_modules() if type(m).__name__ == "Conv1D"]  # transformers' GPT-2 layer
        why = (f"; its projections ({', '.join(conv1d[:3])}{' ...' if len(conv1d) > 3 else ''}) are transformers "
               "Conv1D layers (GPT-2 style), which adaptome does not wrap (nn.Linear only)") if conv1d else ""
        other = _non_linear_matches(model, spec, layer_types) if spec != "all-linear" else ""
        raise TargetError(
            f"target_modules {target_modules!r} matched no linear module in {type(model).__name__} "
            f"(linear modules: {sample or 'none'}){why}{other}"
        )
    return found


def _non_linear_matches(model: nn.Module, spec: list[str] | str, layer_types: tuple[type, ...]) -> str:
    """'; it matches <path> (<type>) ...' for modules the spec names that are not of ``layer_types``."""
    hits = [f"{p} ({type(m).__name__})" for p, m in model.named_modules()
            if p and not isinstance(m, layer_types) and matches(p, spec)]
    if not hits:
        return ""
    return (f"; it matches {', '.join(hits[:3])}{' ...' if len(hits) > 3 else ''}, which adaptome does not "
            "wrap (nn.Linear only)")


def _check_entries(model: nn.Module, entries: list[str], layer_types: tuple[type, ...],
                   option: str = "target_modules") -> None:
    """Refuse a ``target_modules`` (or ``exclude_modules``) list with an entry that matches no module of
    ``layer_types``: a misspelt name or an embedding would otherwise be dropped silently."""
    paths = [p for p, m in model.named_modules() if p and isinstance(m, layer_types)]
    if not paths:
        return
    for entry in entries:
        if any(_pattern_matches(p, entry) for p in paths):
            continue
        other = _non_linear_matches(model, [entry], layer_types)
        what = f"matched no linear module{other}" if other else "matched no module"
        raise TargetError(f"{option} entry {entry!r} {what} (the list was {entries!r}; linear modules "
                          f"are named like {paths[0]}); remove or correct it")



def refuse_tied(model: nn.Module, paths: list[str], why: str) -> None:
    """A ``TargetError`` when the weight of a module at one of ``paths`` is shared with another module (a
    tied LM head and input embedding); ``why`` says what would go wrong (``{other}``: the other module)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name.rpartition(".")[0])
    for path in paths:
        mod = model.get_submodule(path)
        weight = getattr(getattr(mod, "base_layer", mod), "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        others = [o for o in owners.get(id(weight), []) if o not in (path, f"{path}.base_layer")]
        if others:
            raise TargetError(
                f"target {path}: its weight is tied to {others[0]} (tied embeddings): "
                f"{why.format(other=others[0])}. Leave it out of the targets, or load the model with its weights "
                "untied (tie_word_embeddings: false)"
            )
