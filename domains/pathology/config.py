"""Config dataclasses of the pathology stages (plain values; YAML in ``configs/``, ``--set`` overrides).

Each stage's resolved config is written as ``config.yaml`` into the folder the stage writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class SegmentConfig:
    slides: str = ""
    out_dir: str = "runs/pathology"
    thumb_size: int = 1024
    blur: int = 5
    close: int = 2
    min_area_frac: float = 0.001
    fill_holes: bool = True
    skip_errors: bool = False


@dataclass
class TileConfig:
    slides: str = ""
    out_dir: str = "runs/pathology"
    magnification: Optional[float] = 20.0
    mpp: Optional[float] = None
    tile_size: int = 256
    overlap: int = 0
    min_tissue: float = 0.5
    mpp_csv: Optional[str] = None
    roi_dir: Optional[str] = None  # folder of <slide_id>.geojson ROIs (e.g. tumour bed)
    thumb_size: int = 1024
    blur: int = 5
    close: int = 2
    min_area_frac: float = 0.001
    skip_errors: bool = False

    def __post_init__(self) -> None:
        if (self.magnification is None) == (self.mpp is None):
            raise ValueError("set exactly one of magnification or mpp (the other to null)")


@dataclass
class ExtractConfig:
    slides: str = ""
    tiles_dir: str = ""
    encoder: str = "baseline"
    weights: Optional[str] = None
    encoder_options: dict = field(default_factory=dict)
    batch_size: int = 64
    num_workers: int = 2
    device: str = "cpu"
    shared_loader: bool = True  # one reader-worker pool for all slides (False: one loader per slide)
    skip_errors: bool = False


@dataclass
class MILTrainConfig:
    features_dir: str = ""
    labels: str = ""
    out_dir: Optional[str] = None  # default: inside features_dir
    k: int = 5
    group_by: Literal["case_id", "site"] = "case_id"
    aggregation: Literal["mean", "attention"] = "attention"
    hidden: int = 128
    attn_hidden: int = 64
    dropout: float = 0.1
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_frac: float = 0.2
    eval_every: int = 25
    seed: int = 0
    shuffle_labels: bool = False


@dataclass
class ScoreConfig:
    slides: str = ""
    model: str = ""
    features_dir: str = ""  # empty: tile + encode on the fly with the recipe in model.json
    out_dir: Optional[str] = None
    encoder_weights: Optional[str] = None  # on the fly: weights of the recorded timm encoder
    mpp_csv: Optional[str] = None
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    heatmaps: bool = True
    thumb_size: int = 1024
    skip_errors: bool = False


@dataclass
class EvaluateConfig:
    predictions: str = ""
    out_dir: Optional[str] = None
    cutoff: float = 30.0


@dataclass
class PretrainConfig:
    slides: str = ""
    tiles_dir: str = ""
    out_dir: str = "runs/pathology/ssl"
    encoder: str = "timm:resnet18"
    encoder_options: dict = field(default_factory=dict)
    max_tiles: int = 2048
    max_steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    tau: float = 0.1
    proj_dim: int = 64
    seed: int = 0


@dataclass
class SynthConfig:
    out_dir: str = "runs/pathology/synth"
    n_slides: int = 24
    seed: int = 0
    grid: int = 12
    cell_px: int = 64
    mpp: float = 0.5
    n_sites: int = 4
    compression: Literal["zlib", "jpeg"] = "zlib"
