"""The protein models: any ``transformers`` causal LM or ESM-style masked LM by hub id or local path,
or the tiny LLaMA built from config that the tests, quickstart and benchmarks use.

Where a model comes from (``resolve_model``): an argument that looks like a path (it exists, starts
with ``.``, ``~`` or ``/``, holds a backslash or more than one ``/``, or is not a valid hub id) is a
local folder, and a missing one is the one-line ``model folder not found: <path>`` (one without ``config.json``,
an adapter folder among them, is one line too, ``check_model_folder``); only a bare hub
id (``name`` or ``org/name``) goes to the hub. With ``HF_HUB_OFFLINE`` set, or when the hub's host
does not answer within a few seconds, a hub id is loaded from the local cache or refused with one
line saying the machine is offline (no download retries). A local folder is loaded by its absolute path, so
an adapter trained on it (stage 2 on stage 1's ``merged/``) names its base so in peft's ``adapter_config.json``.
Every ``*.safetensors`` file of a local folder is checked against its own header first and every ``*.json`` file
(config, tokenizer, ``training_data.json``) must parse, so a truncated file is one line naming it.

The tiny model is ``LlamaForCausalLM`` with ``tie_word_embeddings=False`` (ProLLaMA stage 1 trains
``embed_tokens`` and ``lm_head`` as separate modules, see ``core/adapters/modules_to_save.py``).
Adapter targets: LLaMA uses the seven projections ``q k v o gate up down``; Phi-3's fused
``qkv_proj`` / ``gate_up_proj`` and other architectures are reached with ``target_modules:
all-linear`` or the ``attention+mlp`` preset.

Not covered: quantized loading, gradient checkpointing, flash attention.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from adaptome.core.model_files import check_model_folder as check_model_folder_files
from adaptome.domains.protein.formats import ProteinError

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(tok, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
               num_heads: int = 4, max_position_embeddings: int = 1024, seed: int = 0):
    """A randomly initialised, seeded LLaMA sized for CPU (about 0.1 M parameters at the defaults)."""
    import torch

    from adaptome.core.text import tiny_causal_lm

    torch.manual_seed(seed)
    return tiny_causal_lm(len(tok), hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                          intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id)


#: ``config.model_type`` of the masked protein LMs (scored by masked marginals, classified with a head)
MASKED_LM_TYPES = ("esm",)
_HUB_ID_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class ModelNotFound(ProteinError, FileNotFoundError):
    """``--model`` names a local folder that does not exist."""


class HubUnavailable(ProteinError):
    """A hub id was given while the machine is offline and the model is not in the local cache."""


class CorruptCheckpoint(ProteinError):
    """A weights file of the checkpoint cannot be read (truncated or not safetensors)."""


def looks_like_path(arg: str) -> bool:
    """True unless ``arg`` is a bare hub id (``name`` or ``org/name``) that does not exist locally."""
    try:
        if Path(arg).expanduser().exists():
            return True
    except OSError:  # a name too long for the file system is no folder, and no hub id either
        return True
    if arg.startswith((".", "~", "/")) or "\\" in arg or arg.count("/") > 1:
        return True
    return not _HUB_ID_RX.match(arg)


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise ``CorruptCheckpoint`` naming ``path`` when the file is shorter than its header says or
    its header is not safetensors JSON (``core.model_files.check_safetensors``)."""
    from adaptome.core.model_files import check_safetensors as check

    check(path, CorruptCheckpoint)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection to the hub's host (``HF_ENDPOINT``), no retries."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((_hub_host(), port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_model_folder(name_or_path: str, folder: Path) -> None:
    """Refuse, in one line, a folder without the ``config.json`` of a transformers checkpoint: an adapter folder
    (``adapter_config.json``, e.g. a stage's ``adapter/``, whose base is named, not held) points to the merged
    checkpoint beside it; any other folder says what is missing."""
    if (folder / "config.json").is_file():
        return
    if (folder / "adapter_config.json").is_file():
        merged = folder.parent / "merged"
        hint = (f"give the merged checkpoint {merged}" if (merged / "config.json").is_file()
                else "give a merged checkpoint (the merged/ folder a stage writes with merge: true)")
        raise ProteinError(f"{name_or_path}: an adapter folder (adapter_config.json, no config.json), not a model; "
                           f"{hint}")
    raise ProteinError(f"{name_or_path}: no config.json: not a transformers model folder")


def resolve_model(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """(what to pass to ``from_pretrained``, its extra keyword arguments); see the module docstring."""
    if looks_like_path(name_or_path):
        folder = Path(name_or_path).expanduser()
        try:
            is_dir = folder.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            if folder.is_file():
                raise ModelNotFound(f"{name_or_path}: a file, not a model folder")
            raise ModelNotFound(f"model folder not found: {name_or_path}")
        check_model_folder(name_or_path, folder)
        check_model_folder_files(folder, CorruptCheckpoint)  # every *.safetensors and *.json file readable
        return str(folder.resolve()), {}  # absolute: an adapter trained on it records its base so (peft's config)
    if _hub_offline():
        if _in_hub_cache(name_or_path):
            return name_or_path, {"local_files_only": True}
        raise HubUnavailable(f"model folder not found: {name_or_path}; as a hub id it cannot be downloaded: the "
                             "machine is offline (HF_HUB_OFFLINE is set) and it is not in the local hub cache")
    if not _hub_reachable():
        if _in_hub_cache(name_or_path):
            return name_or_path, {"local_files_only": True}
        raise HubUnavailable(f"model folder not found: {name_or_path}; as a hub id it cannot be downloaded: the "
                             f"machine is offline ({_hub_host()} does not answer) and it is not in the local hub "
                             "cache")
    return name_or_path, {}


def from_pretrained_checked(cls, name_or_path: str, **kwargs):
    """``cls.from_pretrained`` on the resolved source; an unreadable weights file is one line."""
    from safetensors import SafetensorError

    src, extra = resolve_model(name_or_path)
    try:
        return cls.from_pretrained(src, **extra, **kwargs)
    except SafetensorError as e:
        raise CorruptCheckpoint(f"{name_or_path}: cannot read the weights ({e})") from None


def model_type(name_or_path: str) -> str:
    """``config.model_type`` of a checkpoint (``llama``, ``esm``, ...)."""
    from transformers import AutoConfig

    return from_pretrained_checked(AutoConfig, name_or_path).model_type


def is_masked_lm(name_or_path: str) -> bool:
    """True for an ESM-style masked protein LM (``MASKED_LM_TYPES``)."""
    return model_type(name_or_path) in MASKED_LM_TYPES


def load_causal_lm(name_or_path: str, dtype: str = "float32"):
    """``AutoModelForCausalLM.from_pretrained`` (hub id or folder) in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    kind = model_type(name_or_path)
    if kind in MASKED_LM_TYPES:
        raise ProteinError(f"{name_or_path}: a masked LM ({kind}); this command needs a causal LM (LLaMA, Phi-3...)")
    return from_pretrained_checked(AutoModelForCausalLM, name_or_path, dtype=getattr(torch, dtype))


_FROM_CLASSIFIER = "; give score-mutations the masked LM the classifier was trained from, not the classifier"
_MASKED_LM = "; give score-mutations a masked LM checkpoint (EsmForMaskedLM, e.g. facebook/esm2_t6_8M_UR50D)"


def check_masked_lm_architecture(name_or_path: str) -> None:
    """Refuse a checkpoint whose ``config.architectures`` names only heads other than a masked LM (a
    sequence classifier that ``classify`` saved, ESMFold): loading it as a masked LM would give it a
    randomly initialised LM head."""
    from transformers import AutoConfig

    archs = from_pretrained_checked(AutoConfig, name_or_path).architectures or []
    if archs and not any(a.endswith("ForMaskedLM") for a in archs):
        if any("SequenceClassification" in a for a in archs):
            raise ProteinError(f"{name_or_path}: holds a sequence classifier ({', '.join(archs)}) without a "
                               "masked-LM head" + _FROM_CLASSIFIER)
        raise ProteinError(f"{name_or_path}: holds {', '.join(archs)}, without a masked-LM head" + _MASKED_LM)


def load_masked_lm(name_or_path: str, dtype: str = "float32"):
    """(``AutoModelForMaskedLM`` in eval mode, its tokenizer) of an ESM-style checkpoint. A checkpoint
    without the masked-LM head's weights (``check_masked_lm_architecture``, or ``lm_head.*`` missing from
    the loaded weights) is refused: its head would be random."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    check_masked_lm_architecture(name_or_path)
    model, info = from_pretrained_checked(AutoModelForMaskedLM, name_or_path, dtype=getattr(torch, dtype),
                                          output_loading_info=True)
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith("lm_head."))
    if missing:
        raise ProteinError(f"{name_or_path}: the checkpoint has no masked-LM head weights ({', '.join(missing[:3])}"
                           f"{' ...' if len(missing) > 3 else ''} missing)" + _MASKED_LM)
    return model.eval(), from_pretrained_checked(AutoTokenizer, name_or_path)


def load_model_and_tokenizer(name_or_path: str | None, dtype: str = "float32", hidden_size: int = 64,
                             intermediate_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                             max_position_embeddings: int = 1024, seed: int = 0):
    """(model, tokenizer): a checkpoint with its own tokenizer, or the tiny LLaMA + character
    tokenizer when ``name_or_path`` is None."""
    from adaptome.domains.protein.tokenizer import build_tokenizer, load_tokenizer

    if name_or_path is None:
        tok = build_tokenizer()
        return tiny_llama(tok, hidden_size, intermediate_size, num_layers, num_heads,
                          max_position_embeddings, seed), tok
    model = load_causal_lm(name_or_path, dtype)
    src, extra = resolve_model(name_or_path)
    return model, load_tokenizer(src, **extra)
