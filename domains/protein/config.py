"""Run configs of the protein commands (dataclasses of plain values, loaded from YAML strictly).

``configs/pretrain.yaml`` / ``configs/instruct.yaml`` hold ProLLaMA's settings (stage 1: LoRA r 128 /
alpha 256 on the seven projections, ``embed_tokens`` and ``lm_head`` trained fully, blocks of 2048,
lr 5e-5 cosine, warmup 5 %; stage 2: r 64 / alpha 128, answer-only loss, 256 tokens);
``configs/*_tiny.yaml`` are the CPU presets the quickstart uses. Commands turn these into plain
arguments; library functions never see a config object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaptome.core.optim.registry import OptimizerSpec
from adaptome.core.train.loop import TrainConfig


@dataclass
class ModelSection:
    #: hub id or folder of a causal LM; None = the tiny LLaMA built from the fields below
    name_or_path: str | None = None
    dtype: str = "float32"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 1024


@dataclass
class AdapterSection:
    method: str = "lora"
    options: dict[str, Any] = field(default_factory=lambda: {
        "r": 128, "lora_alpha": 256.0, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "modules_to_save": ["embed_tokens", "lm_head"]})


@dataclass
class TaskSection:
    name: str = "superfamily"
    key: str = ""
    generate: str = ""
    determine: str = ""


@dataclass
class PretrainConfig:
    """Stage 1: causal LM on ``Seq=<...>`` lines packed into blocks."""

    #: FASTA files or text files of ``Seq=<...>`` lines
    train_files: list[str] = field(default_factory=list)
    residue_policy: str = "error"
    max_residues: int | None = None
    block_size: int = 2048
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
    """Stage 2: instruction tuning on ``{instruction, input, output}`` records."""

    #: JSONL (or JSON array) instruction files
    train_files: list[str] = field(default_factory=list)
    #: the stage-1 merged checkpoint (or any causal LM)
    model: ModelSection = field(default_factory=ModelSection)
    max_seq_length: int = 256
    adapter: AdapterSection = field(default_factory=lambda: AdapterSection(options={
        "r": 64, "lora_alpha": 128.0, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/protein/stage2", max_steps=1000, batch_size=16, grad_accum=4, lr=5e-5,
        warmup_steps=30, schedule="cosine", seed=42))
    merge: bool = True
