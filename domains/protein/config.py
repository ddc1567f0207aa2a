"""Run configs of the protein commands (dataclasses of plain values, loaded from YAML strictly).

``configs/pretrain.yaml`` / ``configs/instruct.yaml`` hold ProLLaMA's settings (stage 1: LoRA r 128 /
alpha 256 on the seven projections, ``embed_tokens`` and ``lm_head`` trained fully, blocks of 2048,
lr 5e-5 cosine, warmup 5 %; stage 2: r 64 / alpha 128, answer-only loss, 256 tokens);
``configs/*_tiny.yaml`` are the CPU presets the quickstart uses. Library functions never see a
config object: ``model_kwargs`` and ``stage_kwargs`` flatten a config into the keyword arguments
of ``model.load_model_and_tokenizer`` and ``pretrain.pretrain`` / ``instruct.instruct``, in this one
place, for both the command line and the quickstart (``stages.run_stage_config``).

Model presets (``MODEL_PRESETS``, ``model.preset``): named architectures of the LLaMA built from config.
``tiny`` (hidden 64, feed-forward 128, 2 layers, 4 heads; used for every field not given when no preset is
named, the quickstart's) and ``small`` (hidden 128, feed-forward 256, 4 layers, 8 heads; the generation preset:
its samples follow their family's length and low-complexity share more closely than the tiny model's, though
not yet within the targets of ``benchmarks/protein_generate/results_small.md``). A preset gives the four
architecture fields; a field given with another value than the named preset's is an error naming both (never
a silent choice between them), and a preset with ``name_or_path`` (a model that is loaded, not built) is an error.

Not covered: configs of the sampling, classification and evaluation commands (they take options).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from adaptome.core.optim.registry import OptimizerSpec
from adaptome.core.train.loop import TrainConfig
from adaptome.domains.protein.formats import ProteinError

#: named architectures of the LLaMA built from config (``model.preset``; see the module docstring)
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4},
    "small": {"hidden_size": 128, "intermediate_size": 256, "num_layers": 4, "num_heads": 8},
}


@dataclass
class ModelSection:
    """The causal LM a stage starts from.

    Args:
        name_or_path: hub id or folder of a causal LM (with its tokenizer); None builds the tiny
            LLaMA from the fields below with the character tokenizer, seeded by ``train.seed``.
        dtype: torch dtype name the checkpoint is loaded in (``float32``, ``bfloat16``, ``float16``).
        hidden_size: tiny LLaMA width (only when ``name_or_path`` is None); None: the preset's.
        intermediate_size: tiny LLaMA feed-forward width; None: the preset's.
        num_layers: tiny LLaMA decoder layers; None: the preset's.
        num_heads: tiny LLaMA attention heads (must divide ``hidden_size``); None: the preset's.
        max_position_embeddings: tiny LLaMA context length in tokens.
        preset: a name of ``MODEL_PRESETS`` (``tiny`` or ``small``, the generation preset) that gives
            ``hidden_size``, ``intermediate_size``, ``num_layers`` and ``num_heads`` (only when
            ``name_or_path`` is None); None: ``tiny`` for every field not given. A field given
            with a named preset must agree with it.
    """

    name_or_path: str | None = None
    dtype: str = "float32"
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    max_position_embeddings: int = 1024
    preset: str | None = None


def resolve_model_section(m: ModelSection) -> dict[str, Any]:
    """The model section's fields with its ``preset`` applied (``preset`` itself dropped): each
    architecture field not given takes the preset's value (``tiny`` when no preset is named). A
    ``ProteinError`` for an unknown preset, a named preset with ``name_or_path``, or a field given
    with another value than the named preset's (an explicit value is never silently replaced)."""
    out = dataclasses.asdict(m)
    name = out.pop("preset")
    if name is not None and name not in MODEL_PRESETS:
        raise ProteinError(f"unknown model.preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
    if name is not None and m.name_or_path is not None:
        raise ProteinError(f"model.preset {name!r} builds a model from config; it cannot be combined with "
                           f"model.name_or_path={m.name_or_path!r} (remove one of them)")
    for key, value in MODEL_PRESETS[name or "tiny"].items():
        given = out[key]
        if name is not None and given is not None and given != value:
            raise ProteinError(f"model.{key}={given} contradicts model.preset {name!r} ({key} {value}); "
                               "remove one of them")
        out[key] = value if given is None else given
    return out


@dataclass
class AdapterSection:
    """The adapter a stage trains.

    Args:
        method: a registered method name (``adaptome adapters list``).
        options: the method's config fields (ProLLaMA stage 1: LoRA r 128, alpha 256, dropout 0.05
            on the seven LLaMA projections, ``embed_tokens`` and ``lm_head`` trained fully).
    """

    method: str = "lora"
    options: dict[str, Any] = field(default_factory=lambda: {
        "r": 128, "lora_alpha": 256.0, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "modules_to_save": ["embed_tokens", "lm_head"]})


@dataclass
class PretrainConfig:
    """Stage 1: causal LM on ``Seq=<...>`` lines packed into blocks.

    Args:
        train_files: FASTA files or text files of ``Seq=<...>`` lines (told apart by content).
        residue_policy: letters outside the 20 standard amino acids: ``error``, ``skip`` the
            record, or ``keep`` the IUPAC extras B Z X U O J (``formats.clean_sequence``).
        max_residues: cut longer sequences into windows of at most N residues at a random phase, with
            ``Seq=<`` only on the window holding the real start and ``>`` only on the one holding the real
            end (``data.crop_windows``; None: whole sequences).
        block_size: tokens per packed training block.
        whole_windows: never split a window across two blocks: a window that does not fit the rest of
            the current block starts the next one, and the rest is padding without loss (False:
            ProLLaMA's ``group_texts``, which cuts the token stream anywhere, so a protein's start and
            end may land in different blocks; see ``pretrain.window_blocks``).
        model: the base model.
        adapter: the adapter method and options.
        train: the training loop's options (``core.train.loop.TrainConfig``).
        merge: also write a standalone merged checkpoint to ``<output_dir>/merged``.
    """

    train_files: list[str] = field(default_factory=list)
    residue_policy: str = "error"
    max_residues: int | None = None
    block_size: int = 2048
    whole_windows: bool = False
    model: ModelSection = field(default_factory=ModelSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/protein/stage1", max_steps=1000, batch_size=4, grad_accum=8, lr=5e-5,
        weight_decay=0.01, warmup_steps=50, schedule="cosine", seed=42))
    #: ``adamw`` (default) or ``galore`` with its options; ``adapter.method: sltrain`` pretrains from scratch
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    merge: bool = True


@dataclass
class InstructConfig:
    """Stage 2: instruction tuning on ``{instruction, input, output}`` records (answer-only loss).

    Args:
        train_files: JSONL (or JSON array) instruction files.
        model: the stage-1 merged checkpoint (or any causal LM).
        max_seq_length: prompt + answer tokens kept per record (longer records are cut).
        adapter: the adapter method and options (ProLLaMA stage 2: LoRA r 64, alpha 128).
        train: the training loop's options (``core.train.loop.TrainConfig``).
        merge: also write a standalone merged checkpoint to ``<output_dir>/merged``.
        uncond_share: conditioning dropout, the chance that a generation record is shown without its instruction
            and label at each read (``instruct.py``; Ho & Salimans 2022 train with 0.1-0.2), so that the model
            also learns the unconditional branch of classifier-free guidance; 0 (ProLLaMA) is off.
    """

    train_files: list[str] = field(default_factory=list)
    model: ModelSection = field(default_factory=ModelSection)
    max_seq_length: int = 256
    uncond_share: float = 0.0
    adapter: AdapterSection = field(default_factory=lambda: AdapterSection(options={
        "r": 64, "lora_alpha": 128.0, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/protein/stage2", max_steps=1000, batch_size=16, grad_accum=4, lr=5e-5,
        warmup_steps=30, schedule="cosine", seed=42))
    merge: bool = True


def model_kwargs(cfg: PretrainConfig | InstructConfig) -> dict[str, Any]:
    """Keyword arguments of ``model.load_model_and_tokenizer`` (the tiny model is seeded by ``train.seed``)."""
    return {**resolve_model_section(cfg.model), "seed": cfg.train.seed}


def stage_kwargs(cfg: PretrainConfig | InstructConfig) -> dict[str, Any]:
    """Keyword arguments of ``pretrain.pretrain`` (a ``PretrainConfig``) or ``instruct.instruct``."""
    common = {"files": list(cfg.train_files), "adapter_method": cfg.adapter.method,
              "adapter_options": dict(cfg.adapter.options), "train_kwargs": dataclasses.asdict(cfg.train),
              "merge": cfg.merge}
    if isinstance(cfg, PretrainConfig):
        return {**common, "block_size": cfg.block_size, "residue_policy": cfg.residue_policy,
                "max_residues": cfg.max_residues, "whole_windows": cfg.whole_windows,
                "optimizer_name": cfg.optimizer.name,
                "optimizer_options": dict(cfg.optimizer.options), "base_model": cfg.model.name_or_path}
    return {**common, "max_seq_length": cfg.max_seq_length, "uncond_share": cfg.uncond_share,
            "base_model": cfg.model.name_or_path}
