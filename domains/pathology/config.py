"""Config dataclasses of the pathology stages (plain values; YAML in ``configs/``, ``--set`` overrides).

Each stage's resolved config is written as ``config.yaml`` into the folder the stage writes. Every
field is documented in its class's ``Args:`` block; ``field_help(cls, name)`` returns that text, so
the command-line flags that set a field show the same words in ``--help``.

Not covered: validation across stages (e.g. that ``tiles_dir`` was made from ``slides``; the stages
check that when they read their inputs).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field, fields
from typing import Literal, Optional


@dataclass
class SegmentConfig:
    """Tissue segmentation (``segment``): Otsu threshold on the saturation of a thumbnail.

    Args:
        slides: a slide file or a folder of slides.
        out_dir: the job folder; outputs go to ``<out_dir>/segment_otsu_b<blur>_c<close>/``.
        thumb_size: longest side of the thumbnail the mask is computed on, in pixels.
        blur: median-filter size applied to the saturation before thresholding (<= 1: none).
        close: iterations of binary closing after thresholding (0: none).
        min_area_frac: tissue pieces smaller than this share of the thumbnail are dropped.
        fill_holes: fill holes inside tissue pieces.
        artefacts: remove pen ink (blue, green, black) from the tissue mask (``segment.artefact_mask``;
            off by default: on the shipped real slide it also cut 6 of 33 tissue tiles).
        skip_errors: record a slide that cannot be read and go on (default: stop at the first).
        overwrite: redo results in the output folder that were made with other parameters (default:
            refuse and name what changed; results made from other input files are redone anyway).
    """

    slides: str = ""
    out_dir: str = "runs/pathology"
    thumb_size: int = 1024
    blur: int = 5
    close: int = 2
    min_area_frac: float = 0.001
    fill_holes: bool = True
    artefacts: bool = False
    skip_errors: bool = False
    overwrite: bool = False


@dataclass
class TileConfig:
    """Tiling (``tile``): a grid of tiles at one magnification over the tissue mask.

    Args:
        slides: a slide file or a folder of slides.
        out_dir: the job folder; tiles go to ``<out_dir>/tiles_<mag>x_<size>px_<overlap>ov/``.
        magnification: target objective magnification (20x = 0.5 um/px); set exactly one of this
            and ``mpp``.
        mpp: target resolution in microns per pixel (instead of ``magnification``).
        tile_size: tile side in pixels at the target resolution.
        overlap: pixels shared by neighbouring tiles (0 <= overlap < tile_size).
        min_tissue: keep a tile when at least this share of it is tissue.
        mpp_csv: CSV ``slide,mpp`` giving the resolution of slides without it in their metadata.
        roi_dir: folder of ``<slide_id>.geojson`` regions of interest (e.g. the tumour bed); tiles
            outside them are dropped.
        roi_classes: classification names (QuPath's ``properties.classification.name``) of the ROI
            polygons that bound the region, e.g. ``[Tumor]``; empty: every polygon, and a file whose
            polygons carry several classes (a region and an ``Ignore*`` one) is refused.
        thumb_size: longest side of the thumbnail the tissue mask is computed on, in pixels.
        blur: median-filter size of the tissue mask (see ``SegmentConfig``).
        close: closing iterations of the tissue mask.
        min_area_frac: smallest tissue piece kept, as a share of the thumbnail.
        artefacts: remove pen ink from the tissue mask before choosing tiles (``segment.artefact_mask``;
            off by default, see ``benchmarks/pathology/results_hard_cohort.md``).
        stain_norm: ``macenko``: estimate each slide's stain from its tiles and read every tile
            normalised to the reference stain (``stain_norm.py``); ``none`` (default, see
            ``benchmarks/pathology/results_hard_cohort.md``): tiles as scanned.
        allow_upsample: tile a slide scanned coarser than the target resolution (e.g. a 20x scan at
            ``--mag 40``) by enlarging its pixels; off: such a slide fails, naming both resolutions
            (10 % slack for scanners' nominal resolutions, e.g. 0.263 um/px at 40x).
        skip_errors: record a slide that cannot be read and go on (default: stop at the first).
        overwrite: redo results in the output folder that were made with other parameters (default:
            refuse and name what changed; results made from other input files are redone anyway).
    """

    slides: str = ""
    out_dir: str = "runs/pathology"
    magnification: Optional[float] = 20.0
    mpp: Optional[float] = None
    tile_size: int = 256
    overlap: int = 0
    min_tissue: float = 0.5
    mpp_csv: Optional[str] = None
    roi_dir: Optional[str] = None
    roi_classes: list = field(default_factory=list)
    thumb_size: int = 1024
    blur: int = 5
    close: int = 2
    min_area_frac: float = 0.001
    artefacts: bool = False
    stain_norm: Literal["macenko", "macenko_tiles", "none"] = "none"
    allow_upsample: bool = False
    skip_errors: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if (self.magnification is None) == (self.mpp is None):
            raise ValueError("set exactly one of magnification or mpp (the other to null)")
        if self.roi_classes and not self.roi_dir:  # it would be ignored: every tissue tile kept
            raise ValueError(f"roi_classes {self.roi_classes}: names the classes of the ROIs in roi_dir, and no "
                             "roi_dir is given (every tissue tile would be kept); give --set roi_dir=<folder> too, "
                             "or leave roi_classes out")


@dataclass
class ExtractConfig:
    """Feature extraction (``extract``): one HDF5 feature file per slide.

    Args:
        slides: a slide file or a folder of slides.
        tiles_dir: the tiling folder written by ``tile``; features go to
            ``<tiles_dir>/features_<encoder>/``.
        encoder: ``baseline`` (stain + texture features, no weights) or ``timm:<model name>``.
        weights: ``hf-hub:<org>/<name>`` (timm's hub loader) or a local weights file (e.g. from
            ``pretrain-encoder``); null: random weights, drawn from a fixed seed (the same features on
            every run; the CLI warns that they are not pretrained).
        encoder_options: keyword arguments of the encoder constructor (timm ``create_model``; for
            ``baseline``: ``lymph``, ``lymph_radius``, ``stroma_cut`` = ``slide`` or a fixed number,
            ``centre`` = ``scale`` (default: each stain's concentration numbers over the slide's median 99th
            percentile, the rest minus their slide mean), true (all minus their slide mean), ``intensity`` or
            false; see ``encoders.py``).
        batch_size: tiles per forward pass.
        num_workers: tile-reading worker processes.
        device: torch device of the encoder (``cpu``, ``cuda``).
        shared_loader: one reader-worker pool for all slides (False: one loader per slide).
        skip_errors: record a slide that cannot be read and go on (default: stop at the first).
        reader: how tiles are decoded: ``openslide`` (reader worker processes on the CPU) or
            ``tiff-jpeg`` (the raw JPEG tiles of generic / Aperio TIFFs read with tifffile and decoded
            by torchvision on ``device``, nvJPEG on a GPU; slides it cannot decode are read by
            OpenSlide, with a warning naming them; see ``readers_gpu.py``).
        decode_threads: ``tiff-jpeg``: CPU threads (libjpeg-turbo) decoding a share of each batch's JPEG tiles
            at the same time as the device's decoder (on a CPU device: the batch is decoded by this many
            threads plus the main one; the features are the same). 0: the device decodes everything.
        decode_cpu_share: ``tiff-jpeg`` on an accelerator with ``decode_threads``: the share of each batch's
            JPEG tiles the CPU threads decode (fixed, so every run gives the same features; nvJPEG and
            libjpeg differ by a few grey levels). Measured on an H200 with 16 cores (14 threads), no share
            from 0.3 to 0.6 made ResNet-18 extraction clearly faster than nvJPEG alone (of the forward rate:
            at best 0.54-0.58 against 0.53-0.55 on one slide, 0.35-0.36 against 0.41-0.46 on the other, over
            the GIL intervals tried; ``benchmarks/pathology_decode/results.md``, run ``h200-steady``): keep
            ``decode_threads`` at 0 there; it may pay on machines with many more cores per GPU.
        dist_timeout_s: launched as several processes (``torchrun``, ``accelerate launch``): how long a
            rank that finished its share of the slides waits for the others before the run fails
            (a stalled peer); the slides are shared out by tile count so that ranks finish together.
        overwrite: redo results in the output folder that were made with other parameters (default:
            refuse and name what changed; results made from other input files are redone anyway).
    """

    slides: str = ""
    tiles_dir: str = ""
    encoder: str = "baseline"
    weights: Optional[str] = None
    encoder_options: dict = field(default_factory=dict)
    batch_size: int = 64
    num_workers: int = 2
    device: str = "cpu"
    shared_loader: bool = True
    skip_errors: bool = False
    reader: Literal["openslide", "tiff-jpeg"] = "openslide"
    decode_threads: int = 0
    decode_cpu_share: float = 0.5
    dist_timeout_s: float = 3600.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.decode_threads and self.reader != "tiff-jpeg":  # it would be ignored: say so instead
            raise ValueError(f"decode_threads {self.decode_threads}: only the tiff-jpeg reader decodes in threads; "
                             f"pass --set reader=tiff-jpeg, or leave decode_threads at 0 (reader {self.reader})")
        if self.decode_threads < 0 or not 0.0 <= self.decode_cpu_share <= 1.0:
            raise ValueError(f"decode_threads must be 0 or more and decode_cpu_share within 0..1, got "
                             f"{self.decode_threads} and {self.decode_cpu_share}")
        if self.decode_cpu_share != ExtractConfig.decode_cpu_share and not self.decode_threads:
            raise ValueError(f"decode_cpu_share {self.decode_cpu_share}: the share of each batch the decode_threads "
                             "decode, and decode_threads is 0 (the device decodes every tile); set decode_threads "
                             "too (with reader=tiff-jpeg), or leave decode_cpu_share out")


@dataclass
class MILTrainConfig:
    """Cross-validated MIL regression of the slide sTIL % (``train``; see ``train.py``).

    Args:
        features_dir: the feature folder written by ``extract``.
        labels: CSV ``slide_id,case_id,target[,site]`` with target = sTIL % in 0..100.
        out_dir: parent folder of the ``mil_<aggregation>_<group_by>_k<k>`` run folder (default:
            ``features_dir``).
        k: cross-validation folds.
        group_by: slides sharing this column fall in one fold: ``case_id`` (patient) or ``site`` (a case
            whose slides carry two sites is refused: its slides would be split over folds).
        aggregation: tile scores to a slide score: ``mean``, gated ``attention`` (softmax weights) or
            ``ratio`` (default: sum_i w_i s_i / sum_i w_i with a learned stroma amount w_i >= 0, the form
            of the sTIL label; ``mil.py``; see ``benchmarks/pathology/results_hard_cohort.md``).
        hidden: width H of the per-tile hidden layer.
        attn_hidden: width A of the gated-attention layer.
        dropout: dropout on the per-tile hidden features.
        max_steps: optimizer steps per fold.
        batch_size: slides (bags) per step.
        lr: AdamW learning rate (cosine schedule).
        weight_decay: AdamW weight decay.
        val_frac: grouped share of each fold's training slides held out to pick the best step (default
            0: every training slide is fitted and the step with the lowest training MSE is kept; on the
            hard cohort a 20 % hold-out of ~6 slides picked noisy steps and cost R^2, see the benchmark).
        eval_every: steps between validation checks.
        seed: seed of the folds, the validation split, the weights and the label shuffle.
        shuffle_labels: permute the targets across slides first (the negative control).
        tile_dropout: training augmentation: each time a bag is drawn, each of its tiles is left out with
            this probability (ECTIL's tile dropout; 0 = whole bags). Predictions use whole bags.
        cutoff: sTIL-high cut-off in % for the per-fold ROC AUC in the run's summary (does not
            change the models).
        overwrite: redo results in the output folder that were made with other parameters (default:
            refuse and name what changed; results made from other input files are redone anyway).
    """

    features_dir: str = ""
    labels: str = ""
    out_dir: Optional[str] = None
    k: int = 5
    group_by: Literal["case_id", "site"] = "case_id"
    aggregation: Literal["mean", "attention", "ratio"] = "ratio"
    hidden: int = 128
    attn_hidden: int = 64
    dropout: float = 0.1
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_frac: float = 0.0
    eval_every: int = 25
    seed: int = 0
    shuffle_labels: bool = False
    tile_dropout: float = 0.0
    cutoff: float = 30.0
    overwrite: bool = False

    def __post_init__(self) -> None:  # an option the model would not read: say so instead
        if self.aggregation == "mean" and self.attn_hidden != MILTrainConfig.attn_hidden:
            raise ValueError(f"attn_hidden {self.attn_hidden}: the width of the attention layer, and aggregation "
                             "mean has none (the slide score is the plain mean of the tile scores); use aggregation "
                             "attention or ratio, or leave attn_hidden out")


@dataclass
class ScoreConfig:
    """Scoring slides with a trained MIL model (``score``).

    Args:
        slides: a slide file or a folder of slides.
        model: a ``mil_*`` CV folder (its folds are averaged) or one ``fold_<k>`` folder.
        features_dir: stored features of the slides (refused when their encoder, its options or weights,
            or their resolution differ from the model's recorded recipe); empty: tile and encode on the fly
            with the recipe recorded in the model's ``model.json`` (tiling, encoder, its options and weights).
        out_dir: output folder (default: ``<model>/scores``).
        encoder_weights: on the fly: weights of the recorded timm encoder; they must be the ones the
            training features were made with (checked by content hash), or scoring is refused.
        mpp_csv: CSV ``slide,mpp`` for slides without resolution metadata (on the fly).
        roi_dir: on the fly: folder of ``<slide_id>.geojson`` regions of interest; only tiles inside them are
            scored. Required when the model was trained on ROI-restricted tiles (its recipe says so), so that
            it never scores tissue of a kind it was not trained on; allowed for any model (e.g. the tumour bed).
        roi_classes: on the fly: the ROI classes that bound the region (default: the ones the model's tiles
            were restricted by).
        allow_upsample: on the fly: score a slide scanned coarser than the resolution the model's tiles were
            made at (its pixels enlarged); off: such a slide fails naming both resolutions, as ``tile`` does.
        batch_size: tiles per forward pass (on the fly).
        num_workers: tile-reading worker processes (on the fly).
        device: torch device.
        heatmaps: also write heatmap PNGs of the tile scores and attention.
        thumb_size: longest side of the heatmap thumbnail, in pixels.
        skip_errors: record a slide that cannot be scored and go on (default: stop at the first).
        overwrite: redo results in the output folder that were made with other parameters (default:
            refuse and name what changed; results made from other input files are redone anyway).
        labels: label CSV whose ``slide_id,case_id`` columns give each slide's case (patient) for ``cases.csv``
            (one row per case, the mean of its slides' sTIL %); without it, or for a slide it does not list,
            the case is the first three fields of a TCGA slide barcode (``TCGA-<site>-<patient>``).
    """

    slides: str = ""
    model: str = ""
    features_dir: str = ""
    out_dir: Optional[str] = None
    encoder_weights: Optional[str] = None
    mpp_csv: Optional[str] = None
    roi_dir: Optional[str] = None
    roi_classes: Optional[list] = None
    allow_upsample: bool = False
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    heatmaps: bool = True
    thumb_size: int = 1024
    skip_errors: bool = False
    overwrite: bool = False
    labels: Optional[str] = None

    def __post_init__(self) -> None:  # options that would be ignored: say so instead
        for name in ("roi_dir", "mpp_csv", "encoder_weights", "allow_upsample") if self.features_dir else ():
            if getattr(self, name):
                raise ValueError(f"{name} {getattr(self, name)}: used only when scoring on the fly; stored "
                                 "features (--features-dir) keep the tiles and encoder they were extracted "
                                 f"with; leave {name} out, or score without --features-dir")
        if self.roi_classes is not None and not self.roi_dir:
            raise ValueError(f"roi_classes {self.roi_classes}: names the classes of the ROIs in roi_dir; give "
                             "--set roi_dir=<folder> too (on the fly), or leave roi_classes out")
        if not self.heatmaps and self.thumb_size != ScoreConfig.thumb_size:
            raise ValueError(f"thumb_size {self.thumb_size}: the size of the heatmap thumbnail, and heatmaps is off; "
                             "leave thumb_size out, or turn heatmaps on")


@dataclass
class EvaluateConfig:
    """Evaluating cross-validated predictions (``evaluate``).

    Args:
        predictions: ``predictions.csv`` written by ``train`` (``slide_id,fold,pred,target,case_id``).
        out_dir: report folder (default: ``eval_cut<cutoff>`` beside the predictions).
        cutoff: sTIL-high cut-off in % for the ROC AUC (target >= cutoff is positive).
        baselines: also fit the simple baselines (constant, dark-pixel fraction, mean baseline-encoder
            features) on the same folds and report them beside the MIL result.
        tiles_dir: tiling folder the baselines read tiles from (default: the one the run's features
            were made from, found through the run's ``config.yaml``).
        labels: label CSV for the per-site MAE, and for each slide's case when ``predictions`` has no
            ``case_id`` column (default: the run's).
    """

    predictions: str = ""
    out_dir: Optional[str] = None
    cutoff: float = 30.0
    baselines: bool = True
    tiles_dir: Optional[str] = None
    labels: Optional[str] = None


@dataclass
class PretrainConfig:
    """SimCLR pretraining of a tile encoder on unlabelled tiles (``pretrain-encoder``; see ``ssl.py``).

    Args:
        slides: a slide file or a folder of slides.
        tiles_dir: the tiling folder written by ``tile``.
        out_dir: output folder (``encoder.safetensors``, ``train/``).
        encoder: ``timm:<model name>`` built with random weights.
        encoder_options: keyword arguments of timm ``create_model``.
        max_tiles: tiles read for training, sampled evenly over the slides.
        max_steps: optimizer steps.
        batch_size: tiles per step (two augmented views each).
        lr: learning rate (cosine schedule).
        tau: temperature of the NT-Xent loss.
        proj_dim: output width of the projection head.
        seed: seed of the tile sample, the augmentations and the weights.
    """

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
    """A SYNTHETIC cohort with a planted sTIL % (``synth``; see ``synth.py`` and ``synth_hard.py``).

    Args:
        out_dir: output folder (slides, ``labels.csv``, ``truth/``).
        n_slides: slides to write.
        seed: seed of every random choice (tissue shape, densities, sites, artefacts).
        grid: cells per side of the slide's square grid (the slide is ``grid * cell_px`` pixels wide).
        cell_px: side of one cell in level-0 pixels at 0.5 um/px (``hard``: the truth-table tile).
        mpp: level-0 resolution; 0.5 / k for an integer k (0.25 writes a 40x-like slide).
        n_sites: acquisition sites the slides are spread over (the ``site`` column); ``hard``:
            balanced against the target, each with its own stain.
        compression: TIFF tile compression, ``zlib`` (lossless) or ``jpeg``.
        kind: ``hard`` (stroma-only label among confounders, ``synth_hard.py``) or ``simple`` (the
            easy tissue-wide cohort of ``synth.render_slide``; the switches below do not apply).
        stain_variation: per-site stain vectors, strengths and background: 0 = every site stains
            like the reference, 1 = the full site table of ``synth_hard.SITES``.
        pen_prob: share of slides with pen strokes (blue, green, black ink over glass and tissue).
        fold_prob: share of slides with a tissue fold (a band where the tissue lies twice).
        blur_prob: share of slides with an out-of-focus patch.
        intratumoral: draw lymphocytes inside tumour nests (not counted; density independent of the target).
        grade_variation: tumour nuclear grade 1-3 per slide (size and darkness); off: grade 2 everywhere.
        tumour_share_min: smallest tumour share of the tissue (drawn uniformly per slide).
        tumour_share_max: largest tumour share of the tissue.
        dark_confounders: fibroblasts at a per-slide density, vessels with red cells; off: few pale
            fibroblasts, no vessels.
        pair_frac: share of cases with a second slide (another section of the same case).
    """

    out_dir: str = "runs/pathology/synth"
    n_slides: int = 24
    seed: int = 0
    grid: int = 12
    cell_px: int = 64
    mpp: float = 0.5
    n_sites: int = 4
    compression: Literal["zlib", "jpeg"] = "zlib"
    kind: Literal["hard", "simple"] = "hard"
    stain_variation: float = 1.0
    pen_prob: float = 0.3
    fold_prob: float = 0.25
    blur_prob: float = 0.25
    intratumoral: bool = True
    grade_variation: bool = True
    tumour_share_min: float = 0.15
    tumour_share_max: float = 0.65
    dark_confounders: bool = True
    pair_frac: float = 0.25

    def __post_init__(self) -> None:
        for name in ("pen_prob", "fold_prob", "blur_prob", "stain_variation", "pair_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.tumour_share_min <= self.tumour_share_max < 1.0:
            raise ValueError("need 0 <= tumour_share_min <= tumour_share_max < 1")
        if self.kind == "simple":  # the switches of the hard cohort: the simple one would ignore them
            hard = [f.name for f in fields(self) if f.name in _HARD_ONLY and getattr(self, f.name) != f.default]
            if hard:
                raise ValueError(f"{', '.join(hard)}: only the hard cohort draws these, and kind is simple; set "
                                 "kind=hard, or leave them out")


#: ``SynthConfig`` fields that only ``kind: hard`` reads (``synth_hard.Confounders``)
_HARD_ONLY = ("stain_variation", "pen_prob", "fold_prob", "blur_prob", "intratumoral", "grade_variation",
              "tumour_share_min", "tumour_share_max", "dark_confounders", "pair_frac")


def field_help(cls: type, name: str) -> str:
    """The ``Args:`` text of field ``name`` in ``cls``'s docstring (one line, white space joined)."""
    doc = inspect.getdoc(cls) or ""
    args = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    m = re.search(rf"^\s*{re.escape(name)}: (.*?)(?=^\s*\w+: |\Z)", args, re.S | re.M)
    if m is None:
        raise KeyError(f"{cls.__name__}.{name} has no entry in its Args: block")
    return " ".join(m.group(1).split())
