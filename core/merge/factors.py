"""Read plain peft LoRA folders as scaled factors, write merged factors as a peft LoRA folder, and
re-factorise a dense update to rank k.

A LoRA is read as ``{module path: (B (out, r), A (r, in))}`` with its scale s folded in as sqrt(s)
on each factor, so ``B @ A`` is the module's update s B A and every rank i is a unit
``[B[:, i]; A[i, :]]`` whose size does not depend on how the scale was split between alpha and r.
peft's ``rank_pattern`` / ``alpha_pattern`` and ``use_rslora`` give each module its own r and s.
The merged folder has scale 1 (``lora_alpha = r``), the base model named by the first input, and the
key names of peft's own files (``base_model.model.<path>.lora_A.weight``), so
``PeftModel.from_pretrained`` loads it without adaptome.

Dimension letters: O out_features, I in_features, R rank, K merged rank, M min(O, I).

Not covered: DoRA, LoRA bias terms, embedding / convolution LoRAs, ``modules_to_save`` (refused:
there is no single right way to merge fully trained copies), LoRAs saved unconverted from an init that
rewrites the base weights (PiSSA, OLoRA, CorDA, LoftQ: refused, their ``B A`` is not their update),
adaptome's native folders (export them first with ``adaptome adapters export --to peft-lora``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adaptome.core.atomic import atomic_dir
from adaptome.core.errors import AdaptomeError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
#: peft inits that rewrite the base weights (W - B0 A0, or a quantised W): such a folder's B A is not its update
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


class MergeError(AdaptomeError, ValueError):
    """Adapters that cannot be merged as asked."""


@dataclass
class LoraFolder:
    """One input LoRA.

    Args:
        path: the folder.
        config: its ``adapter_config.json``.
        factors: ``{module path: (B (out, r), A (r, in))}`` with sqrt(s) folded into each factor.
        base_weights: the digest of the base weights adaptome recorded beside the folder (``recorded_base_weights``),
            None for a folder without one (saved by peft itself).
        base_sample: the sampled base values adaptome recorded beside it (``base_check.base_weights_sample``), None
            for a folder without them (saved by peft itself, or by adaptome before they were recorded).
    """

    path: Path
    config: dict
    factors: Factors
    base_weights: str | None = None
    base_sample: dict | None = None

    def delta(self, module: str) -> torch.Tensor:
        b, a = self.factors[module]
        return b @ a  # (O, R) @ (R, I) -> (O, I)


def _pattern_value(patterns: dict, module: str, default):
    for key, value in patterns.items():  # peft's rule: the key matches a suffix of the module path
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_lora(path: str | os.PathLike) -> LoraFolder:
    """Read a peft LoRA folder (float64 factors with the scale folded in)."""
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        hint = " (an adaptome adapter? export it first: adaptome adapters export --to peft-lora)" \
            if (path / "adaptome.json").is_file() else ""
        raise MergeError(f"{path}: not a peft LoRA folder, {CONFIG} or {WEIGHTS} is missing{hint}")
    try:
        cfg = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MergeError(f"{path / CONFIG}: not valid JSON ({e})") from None
    if cfg.get("peft_type") != "LORA":
        hint = " (an adaptome adapter? export it first: adaptome adapters export --to peft-lora)" \
            if "adaptome_method" in cfg else ""
        raise MergeError(f"{path / CONFIG}: peft_type is {cfg.get('peft_type')!r}, not 'LORA'{hint}")
    for key, why in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save")):
        if cfg.get(key):
            raise MergeError(f"{path / CONFIG}: {why} adapters cannot be merged here (not covered)")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise MergeError(f"{path / CONFIG}: init_lora_weights is {init!r}: the LoRA was trained on base weights that "
                         "its init changed, so its A and B alone are not its update to the base (merging them would be "
                         "silently wrong); save it converted (peft's save_pretrained(..., "
                         "path_initial_model_for_weight_conversion=...)) and merge that")
    if cfg.get("bias", "none") != "none":
        raise MergeError(f"{path / CONFIG}: LoRA bias terms are not covered")
    try:
        state = load_file(str(path / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise MergeError(f"{path / WEIGHTS}: unreadable ({e})") from None
    factors: Factors = {}
    for key in state:
        m = re.fullmatch(r"(.*)\.lora_A(?:\.[^.]+)?\.weight", key)
        if not m:
            if not re.fullmatch(r"(.*)\.lora_B(?:\.[^.]+)?\.weight", key):
                raise MergeError(f"{path / WEIGHTS}: unexpected tensor {key} (only LoRA A and B are covered)")
            continue
        module = m.group(1).removeprefix(PREFIX)
        b_key = key.replace(".lora_A", ".lora_B")
        if b_key not in state:
            raise MergeError(f"{path / WEIGHTS}: {key} has no matching {b_key}")
        a, b = state[key].double(), state[b_key].double()  # (R, I), (O, R)
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise MergeError(f"{path / WEIGHTS}: {module}: A {tuple(a.shape)} and B {tuple(b.shape)} "
                             "do not form a LoRA")
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        if r != a.shape[0]:
            raise MergeError(f"{path}: {module} has rank {a.shape[0]} but the config says {r}")
        s = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
        root = math.sqrt(abs(s))
        factors[module] = (b * (root if s >= 0 else -root), a * root)
    if not factors:
        raise MergeError(f"{path / WEIGHTS}: holds no LoRA weights")
    return LoraFolder(path, cfg, factors, recorded_base_weights(path), recorded_base_sample(path))


#: files adaptome writes beside a peft LoRA (train / save_adapter, export, merge), each may record ``base_weights``
#: and ``base_weights_sample``
RECORDS = ("adaptome.json", "adaptome_export.json", "adaptome_merge.json")


def _recorded(path: Path, key: str, valid) -> Any:
    for name in RECORDS:
        try:
            value = json.loads((path / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if valid(value):
            return value
    return None


def recorded_base_weights(path: Path) -> str | None:
    """The base-weights digest (``adapters.base_check.base_weights_digest``) that adaptome recorded in the folder
    when it saved, exported or merged it; None when there is none (or the record is unreadable)."""
    return _recorded(path, "base_weights", lambda v: isinstance(v, str) and bool(v))


def recorded_base_sample(path: Path) -> dict | None:
    """The sampled base values (``adapters.base_check.base_weights_sample``) adaptome recorded in the folder; None
    when there are none (a folder saved before they were recorded) or the record is unreadable."""
    from adaptome.core.adapters.base_check import valid_sample

    return _recorded(path, "base_weights_sample", valid_sample)


def check_compatible(loras: list[LoraFolder]) -> None:
    """Modules present in several inputs must have the same shape."""
    shapes: dict[str, tuple[tuple[int, int], Path]] = {}
    for lora in loras:
        for module, (b, a) in lora.factors.items():
            shape = (b.shape[0], a.shape[1])
            if module in shapes and shapes[module][0] != shape:
                raise MergeError(f"{lora.path}: {module} is {shape[0]} x {shape[1]} but {shapes[module][1]} has "
                                 f"{shapes[module][0][0]} x {shapes[module][0][1]}: different base models?")
            shapes.setdefault(module, (shape, lora.path))


def base_name(lora: LoraFolder) -> str | None:
    """The base model a LoRA names (``base_model_name_or_path``): an existing local folder as its resolved path,
    a hub id as written, None when the config names none."""
    name = (lora.config.get("base_model_name_or_path") or "").strip()
    if not name:
        return None
    return os.path.realpath(name) if os.path.isdir(name) else name


def base_difference(lora: LoraFolder, first: LoraFolder) -> str | None:
    """How the base weights two folders recorded differ (None: one base): by their exact digests when both bases
    were loaded in the same dtypes (a base fine-tuned a little differs), by their sampled values within bf16 / fp16
    rounding across dtypes (one checkpoint loaded in float32 and in bfloat16 / float16 passes), else by their
    digests (folders saved before the samples were recorded: the digest includes the dtype). For two folders that
    both record samples, or both digests."""
    same_dtypes = (lora.base_sample is not None and first.base_sample is not None
                   and lora.base_sample.get("dtypes") is not None
                   and lora.base_sample.get("dtypes") == first.base_sample.get("dtypes"))
    if same_dtypes and lora.base_weights and first.base_weights:  # one dtype: the exact digests must agree
        if lora.base_weights != first.base_weights:
            return "the digests adaptome recorded when it saved them differ (the bases were loaded in one dtype)"
        return None
    if lora.base_sample is not None and first.base_sample is not None:
        from adaptome.core.adapters.base_check import base_weights_differ

        why = base_weights_differ(lora.base_sample, first.base_sample)
        return f"the samples of base weights adaptome recorded when it saved them differ: {why}" if why else None
    if lora.base_weights != first.base_weights:
        return "the digests adaptome recorded when it saved them differ"
    return None


def check_same_base(loras: list[LoraFolder]) -> None:
    """Inputs must come from one base. Two folders that both record adaptome's sample or digest of their base
    weights (``base_weights_sample``, ``base_weights``) are compared by it (``base_difference``): LoRAs trained on
    different weights under one name (a base folder re-trained in place, two checkpoints saved to one path) are
    refused, and one base under two names, or loaded in two dtypes, passes.
    Other pairs are compared by the base model they name (``base_model_name_or_path``): LoRAs of two bases of the
    same shape pass ``check_compatible``, but their merged update fits neither base. Inputs that name no base and
    record no digest are not compared."""
    for i, lora in enumerate(loras):
        for first in loras[:i]:
            both_samples = lora.base_sample is not None and first.base_sample is not None
            if both_samples or (lora.base_weights and first.base_weights):
                why = base_difference(lora, first)
                if why:
                    raise MergeError(f"{lora.path} and {first.path} were trained on different base weights ({why}"
                                     f"{_same_name(lora, first)}): a merge of LoRAs of different base models fits "
                                     "neither; pass --allow-different-bases (allow_different_bases=True) only if "
                                     "they were trained on one model")
                continue
            b, b0 = base_name(lora), base_name(first)
            if b is not None and b0 is not None and b != b0:
                raise MergeError(f"{lora.path} was trained on base model {b!r} but {first.path} on {b0!r} "
                                 f"({CONFIG} base_model_name_or_path): a merge of LoRAs of different base models fits "
                                 "neither; pass --allow-different-bases (allow_different_bases=True) if both name the "
                                 "same model")


def common_base(loras: list[LoraFolder]) -> dict[str, Any]:
    """``{"base_weights": ..., "base_weights_sample": ...}`` for a merge of ``loras``: the first input's records when
    every input holds them and ``base_difference`` finds them one base ({} otherwise, e.g. with
    ``allow_different_bases``), so the merged folder is checked as its inputs were."""
    first = loras[0]
    out: dict[str, Any] = {}
    if all(lo.base_sample is not None for lo in loras) and not any(base_difference(lo, first) for lo in loras[1:]):
        out["base_weights_sample"] = first.base_sample
        if first.base_weights:
            out["base_weights"] = first.base_weights
    elif len({lo.base_weights for lo in loras}) == 1 and first.base_weights:
        out["base_weights"] = first.base_weights
    return out


def _same_name(a: LoraFolder, b: LoraFolder) -> str:
    name = base_name(a)
    return f", though both name {name!r}" if name is not None and name == base_name(b) else ""


def modules(loras: list[LoraFolder]) -> list[str]:
    return sorted({m for lora in loras for m in lora.factors})


def refactor(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-k factors (B (O, k), A (k, I)) of ``delta`` (O, I) by SVD, sqrt(S) on each side;
    zero-padded when k exceeds min(O, I)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # (O, M), (M,), (M, I)
    m = min(k, s.numel())
    root = s[:m].sqrt()
    b = torch.zeros(delta.shape[0], k, dtype=delta.dtype)
    a = torch.zeros(k, delta.shape[1], dtype=delta.dtype)
    b[:, :m] = u[:, :m] * root  # (O, M) * (M,) -> (O, M)
    a[:m] = root[:, None] * vh[:m]  # (M, 1) * (M, I) -> (M, I)
    return b, a


def write_lora(out: str | os.PathLike, factors: Factors, template: dict, meta: dict, overwrite: bool = False,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write ``factors`` (scale folded in) as a peft LoRA folder with scale 1 (``lora_alpha = r`` per
    module); ``template`` is an input's ``adapter_config.json`` (base model, task type)."""
    ranks = {m: a.shape[0] for m, (_, a) in factors.items()}
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    cfg = dict(template)
    cfg.update(r=r0, lora_alpha=r0, target_modules=sorted(factors), use_rslora=False, lora_dropout=0.0,
               rank_pattern={re.escape(m): k for m, k in ranks.items() if k != r0},
               alpha_pattern={re.escape(m): k for m, k in ranks.items() if k != r0},
               init_lora_weights=True, inference_mode=True, layers_to_transform=None, layers_pattern=None)
    state = {}
    for m, (b, a) in factors.items():
        state[f"{PREFIX}{m}.lora_A.weight"] = a.to(dtype).contiguous()  # (K, I)
        state[f"{PREFIX}{m}.lora_B.weight"] = b.to(dtype).contiguous()  # (O, K)
    with atomic_dir(out, overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        (tmp / "adaptome_merge.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return Path(out)
