"""Tile encoders: a registry of builders, timm models by name, and a weight-free baseline.

``build_encoder(name, weights=None, options=None)`` returns a ``TileEncoder``: a module mapping a
batch of uint8 RGB tiles (B x T x T x 3) to features (B x D), with ``dim``. Names:

- ``baseline``: no weights. Colour deconvolution into haematoxylin / eosin optical densities
  (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 23:291, 2001: OD = -ln(I / I0), C = OD M^-1
  with M the rows of the H, E and residual stain vectors) followed by intensity and texture
  statistics of each stain (means, spread, quantiles, dense-stain fractions, gradient energy,
  neighbour differences) and RGB moments: 35 numbers that work on a fresh machine with no download;
  then (option ``lymph``, default on) 9 lymphocyte-object numbers (``lymph_features.py``: small
  round dense haematoxylin objects inside eosin-rich stroma, per-tile sTIL estimate, sharpness),
  with the stroma's eosin cut set per slide (option ``stroma_cut``, default ``slide``; a number
  fixes it): the encoder's ``finish_slide`` completes a slide's features once all its tiles are
  encoded, and every extraction path calls it (``extract.finish_slide``). Option ``centre`` says how
  ``finish_slide`` takes a site's staining strength out of the 35 stain / texture numbers, so that a site
  whose stain no training site shows does not make the MIL extrapolate from raw intensities (measured on
  synthetic cohorts with folds grouped by site, ``benchmarks/pathology/results_unseen.md``):
  ``scale`` (default): under Beer-Lambert a site staining k times stronger multiplies every optical density
  by k, so the numbers linear in a stain's concentration (``SCALE_COLUMNS``) are divided by the slide's
  median over its tiles of that stain's 99th percentile (the nuclei's / stroma's own density, which follows
  the stain more than the lymphocyte coverage), and the fixed-threshold fractions and RGB numbers minus
  their slide mean; a tile keeps its density relative to its slide's stain, so tile scores stay comparable
  across slides. ``true``: all 35 minus their slide mean (the slide's level then comes from the
  lymphocyte numbers alone; tile scores lose their level: tile Spearman 0.66 against 0.86 on the hard
  cohort, ``results_hard_cohort_centre.md``); ``intensity``: only the 22 stain-amount numbers minus their
  mean; ``false``: raw.
- ``timm:<model>``: any timm model by name, headless (``num_classes=0``), its features the pooled
  output. ``weights``: ``hf-hub:<org>/<name>`` (timm's hub loader; pathology foundation encoders
  such as UNI or Virchow ship this way), or a local ``.safetensors`` / ``.pth`` / ``.bin`` file;
  ``None`` leaves the random init (tests, benchmarks), drawn from a seed (``RANDOM_WEIGHTS_SEED``)
  so that every run gives the same features (``encoder.random_weights`` is then true). ``options``
  go to ``timm.create_model`` (e.g. ``img_size``, ``depth``, ``embed_dim`` to build a tiny ViT from config).

``add_adapter(encoder, method, options)`` puts an adapter of the core (``apply_adapter``) on the
encoder's timm model, e.g. LoRA on a ViT's attention (``target_modules: attention`` resolves to
``attn.qkv`` / ``attn.proj`` for model type ``timm_vit``).

Dimension letters: B batch, T tile side, C channels (3), P pixels per tile (T*T), D feature dim.

Not covered: slide-level encoders (TITAN, PRISM ...), test-time augmentation, stain normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adaptome.core.registry import Registry
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.stains import HE_OD

ENCODERS: Registry = Registry("tile encoder")
#: seed of a timm encoder built without weights, so that its (random) features are reproducible
RANDOM_WEIGHTS_SEED = 0


class TileEncoder(nn.Module):
    """Wraps a feature network: uint8 B x T x T x 3 tiles -> float B x D features."""

    def __init__(self, net: nn.Module, dim: int, name: str, input_size: int | None = None,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), normalise: bool = True):
        super().__init__()
        self.net, self.dim, self.name, self.input_size, self.normalise = net, dim, name, input_size, normalise
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)  # (C,) -> (1, C, 1, 1)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)  # (C,) -> (1, C, 1, 1)

    def prepare(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 B x T x T x 3 -> float B x 3 x S x S, resized and normalised as the net expects."""
        x = tiles.permute(0, 3, 1, 2).float() / 255.0  # (B, T, T, C) -> (B, C, T, T)
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.normalise:
            x = (x - self.mean) / self.std
        return x

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(tiles))

    @property
    def needs_slide_pass(self) -> bool:
        """True when ``forward``'s output is raw and ``finish_slide`` must see a whole slide's tiles."""
        return bool(getattr(self.net, "needs_slide_pass", False))

    def finish_slide(self, raw):
        """N x D' numbers ``forward`` gave for ALL tiles of one slide (numpy) -> N x ``dim`` features
        (identity for a network without a per-slide step)."""
        finish = getattr(self.net, "finish_slide", None)
        return raw if finish is None else finish(raw)


#: the stain-amount numbers among the 35 (per stain H, E at offset 14 s: mean 0, quantiles 2-5, dense-stain fractions
#: 6-9; then the RGB means 28-30 and the residual OD 34): the ones a site's staining strength shifts as a whole.
#: The spreads and textures (std 1, gradients 10-13, RGB std 31-33) say how heterogeneous a tile is.
INTENSITY_COLUMNS = tuple(14 * s + i for s in range(2) for i in (0, 2, 3, 4, 5, 6, 7, 8, 9)) + (28, 29, 30, 34)
#: within a stain's block, the numbers linear in its concentration (mean, std, quantiles, gradients, coarse spread):
#: a site staining k times stronger multiplies them by k, so ``centre: scale`` divides them by the slide's median
#: 99th percentile (offset 5) instead of subtracting a mean; the rest (fixed-threshold fractions, RGB) are centred
SCALE_COLUMNS = (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)
#: the numbers ``centre: scale`` centres instead: each stain's fixed-threshold fractions and every RGB / residual one
SCALE_CENTRED_COLUMNS = tuple(c for c in range(35) if c % 14 not in SCALE_COLUMNS or c >= 28)


class StainTextureFeatures(nn.Module):
    """The baseline encoder's feature network (no parameters); input B x 3 x T x T in [0, 1]. With
    ``lymph`` it appends the lymphocyte-object features of ``lymph_features.py`` (9 more numbers)."""

    def __init__(self, lymph: bool = True, lymph_radius: float = 3.0, stroma_cut: float | str = "slide",
                 centre: bool | str = "scale"):
        super().__init__()
        from adaptome.domains.pathology.lymph_features import LymphObjectFeatures

        self.lymph = LymphObjectFeatures(lymph_radius, stroma_cut) if lymph else None
        self.dim = 35 + (LymphObjectFeatures.dim if lymph else 0)
        #: how finish_slide takes the slide's staining strength out of the 35 stain / texture numbers: "scale",
        #: True (all minus their slide mean), "intensity" (``INTENSITY_COLUMNS`` minus it) or False (raw)
        self.centre = centre if centre in ("intensity", "scale") else bool(centre)
        #: forward gives raw numbers that finish_slide completes per slide (the per-slide stroma cut, centring)
        self.needs_slide_pass = bool(self.lymph is not None and self.lymph.per_slide) or bool(self.centre)
        h, e = torch.tensor(HE_OD[0]), torch.tensor(HE_OD[1])  # stains.py; H&E + residual, rows normalised
        h, e = h / h.norm(), e / e.norm()
        r = torch.linalg.cross(h, e)
        m = torch.stack([h, e, r / r.norm()])  # (3 stains, 3 channels)
        self.register_buffer("m_inv", torch.linalg.inv(m), persistent=False)

    def deconvolve(self, x: torch.Tensor) -> torch.Tensor:
        """Stain concentrations B x 3 x T x T (H, E, residual) from RGB in [0, 1]."""
        od = (-torch.log(x.clamp(min=1.0 / 255.0) * (255.0 / 250.0))).clamp(min=0)  # OD, I0 = 250 (background)
        conc = torch.einsum("bcyx,cs->bsyx", od, self.m_inv)  # OD (B,C,T,T) @ M^-1 (C,S) -> (B,S,T,T)
        return conc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conc = self.deconvolve(x)
        feats = []
        for s in range(2):  # H, E
            c = conc[:, s]  # (B, T, T)
            flat = c.flatten(1)  # (B, T, T) -> (B, P)
            q = torch.quantile(flat, torch.tensor([0.1, 0.5, 0.9, 0.99], device=x.device), dim=1).T  # (B, 4)
            thr = torch.tensor([0.25, 0.5, 0.8, 1.1], device=x.device)
            frac = (flat[:, :, None] > thr).float().mean(1)  # (B, P, 1) > (4,) -> (B, 4)
            gx = (c[:, :, 1:] - c[:, :, :-1]).abs().flatten(1).mean(1)  # (B, T, T-1) -> (B, P') -> (B,)
            gy = (c[:, 1:, :] - c[:, :-1, :]).abs().flatten(1).mean(1)  # (B, T-1, T) -> (B, P') -> (B,)
            gmag = ((c[:, 1:, 1:] - c[:, :-1, 1:]) ** 2 + (c[:, 1:, 1:] - c[:, 1:, :-1]) ** 2).sqrt()
            pooled = F.avg_pool2d(c[:, None], 4)[:, 0]  # (B, T/4, T/4): coarse-scale spread
            feats += [flat.mean(1, keepdim=True), flat.std(1, keepdim=True), q, frac,
                      # (B, T-1, T-1) and (B, T/4, T/4) flattened to (B, P'') -> 4 x (B,) -> (B, 4)
                      torch.stack([gx, gy, gmag.flatten(1).mean(1), pooled.flatten(1).std(1)], 1)]
        rgb = x.flatten(2)  # (B, C, T, T) -> (B, C, P)
        od_res = conc[:, 2].flatten(1)  # (B, T, T) -> (B, P)
        feats += [rgb.mean(2), rgb.std(2), od_res.abs().mean(1, keepdim=True)]
        if self.lymph is not None:
            feats.append(self.lymph(conc[:, :2]))
        out = torch.cat(feats, 1)
        assert out.shape[1] == self.dim or self.needs_slide_pass, out.shape
        return out

    def finish_slide(self, raw):
        """N x D' raw numbers of one slide's tiles -> N x ``dim`` (the lymphocyte part at the slide's cut;
        with ``centre`` the stain / texture part minus its mean over the slide's tiles)."""
        import numpy as np

        if not self.needs_slide_pass:
            return raw
        raw = np.asarray(raw, np.float32)
        stain = raw[:, :35]
        if self.centre == "scale" and len(raw):
            stain = stain.copy()
            for s in range(2):  # H, E: the concentration-linear numbers over the slide's median 99th percentile
                cols = [14 * s + i for i in SCALE_COLUMNS]
                ref = max(float(np.median(stain[:, 14 * s + 5])), 1e-3)  # the slide's typical nucleus / stroma OD
                stain[:, cols] /= ref
            cols = list(SCALE_CENTRED_COLUMNS)
            stain[:, cols] -= stain[:, cols].mean(0, keepdims=True)  # (N, c) - (1, c): thresholded and RGB ones
        elif self.centre is True and len(raw):
            stain = stain - stain.mean(0, keepdims=True)  # (N, 35) - (1, 35)
        elif self.centre and len(raw):  # "intensity"
            cols = list(INTENSITY_COLUMNS)
            stain = stain.copy()
            stain[:, cols] -= stain[:, cols].mean(0, keepdims=True)  # (N, c) - (1, c)
        rest = raw[:, 35:]
        if self.lymph is not None and self.lymph.per_slide:
            rest = self.lymph.finish_slide(rest)  # (N, 9 + 2K) -> (N, 9)
        return np.concatenate([stain, rest], 1)  # (N, 35) + (N, 9 or 0)


@ENCODERS.register("baseline")
def build_baseline(weights: str | None = None, options: dict | None = None) -> TileEncoder:
    """Stain-deconvolution + texture (+ lymphocyte-object) features; no weights. Options: ``lymph``
    (default true), ``lymph_radius`` (pixels at the tile resolution, default 3), ``stroma_cut``
    (``slide``, the default: the stroma's eosin cut estimated per slide; or a number: that fixed cut) and
    ``centre`` (default ``scale``; ``true``, ``intensity`` or ``false``: see the module docstring)."""
    options = dict(options or {})
    unknown = set(options) - {"lymph", "lymph_radius", "stroma_cut", "centre"}
    if weights is not None or unknown:
        raise PathologyError(f"the baseline encoder takes no weights and only the options lymph, lymph_radius, "
                             f"stroma_cut, centre (got weights={weights!r}, unknown options {sorted(unknown)})")
    centre = options.get("centre", "scale")
    if not isinstance(centre, bool) and centre not in ("intensity", "scale"):
        raise PathologyError(f"baseline encoder option centre must be true, false, intensity or scale, got "
                             f"{centre!r}")
    cut = options.get("stroma_cut", "slide")
    if cut != "slide":
        try:
            cut = float(cut)
        except (TypeError, ValueError):
            raise PathologyError(f"baseline encoder option stroma_cut must be 'slide' or a number, got {cut!r}") \
                from None
    net = StainTextureFeatures(bool(options.get("lymph", True)), float(options.get("lymph_radius", 3.0)), cut, centre)
    enc = TileEncoder(net, net.dim, "baseline", normalise=False)
    #: every option with its value in force (defaults included): what made the features, for reuse checks
    enc.recipe = {"lymph": bool(options.get("lymph", True)), "lymph_radius": float(options.get("lymph_radius", 3.0)),
                  "stroma_cut": cut, "centre": centre}
    return enc


@ENCODERS.register("timm")
def build_timm(model_name: str, weights: str | None = None, options: dict | None = None,
               seed: int = RANDOM_WEIGHTS_SEED) -> TileEncoder:
    """A headless timm model with weights from a hub id (``hf-hub:org/name``), a local file, or none
    (random, drawn from ``seed``)."""
    import timm

    options = dict(options or {})
    if weights and weights.startswith("hf-hub:"):
        net = timm.create_model(weights, pretrained=True, num_classes=0, **options)
    elif weights:
        net = timm.create_model(model_name, pretrained=False, num_classes=0, **options)
        _load_weights(net, weights)
    else:  # random weights, drawn from a fixed seed: the same features on every run (global RNG untouched)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = timm.create_model(model_name, pretrained=False, num_classes=0, **options)
    cfg = net.pretrained_cfg or {}
    size = options.get("img_size") or (cfg.get("input_size") or (3, 224, 224))[-1]
    enc = TileEncoder(net, int(net.num_features), f"timm:{model_name}", input_size=int(size),
                      mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                      std=tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    enc.random_weights = not weights
    #: the timm keyword options it was built with (None: none), recorded in feature files for ``score``
    enc.recipe = options or None
    return enc


def _load_weights(net: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict (safetensors, or a weights-only torch file); classifier-head keys that
    the headless model lacks are dropped, any other mismatch is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
    own = net.state_dict()
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(("head", "fc.", "classifier"))}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise PathologyError(f"{path}: weights do not fit the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")


def build_encoder(name: str, weights: str | None = None, options: dict | None = None,
                  seed: int = RANDOM_WEIGHTS_SEED) -> TileEncoder:
    """An encoder by name: a registered one (``baseline``) or ``timm:<model name>`` (``seed``: of its
    random weights when it has none)."""
    if name.startswith("timm:"):
        enc = ENCODERS.get("timm")(name.split(":", 1)[1], weights=weights, options=options, seed=seed)
        enc.weights_id = weights_id(weights, seed)  # recorded in feature files; ``score`` checks it
        return enc
    if name == "timm":
        raise PathologyError("name a timm model as 'timm:<model name>', e.g. timm:resnet18")
    enc = ENCODERS.get(name)(weights=weights, options=options)
    enc.weights_id = weights_id(weights, seed) if weights else "none"
    return enc


def weights_id(weights: str | None, seed: int = RANDOM_WEIGHTS_SEED) -> str:
    """What identifies an encoder's weights across machines and copies: ``sha256:<hex>`` of a local file
    (its content, not its name or time), the hub id, or ``random:<seed>`` / ``none``-like random init."""
    import hashlib

    if not weights:
        return f"random:{seed}"
    if weights.startswith("hf-hub:"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def encoder_tag(name: str) -> str:
    """A folder-safe form of an encoder name (``timm:vit_small`` -> ``timm-vit_small``)."""
    return name.replace(":", "-").replace("/", "_")


def add_adapter(encoder: TileEncoder, method: str = "lora_native", options: dict | None = None,
                adapter_name: str = "default") -> TileEncoder:
    """Put an adapter of the core on the encoder's network (only the adapter then trains)."""
    from adaptome.core.adapters.api import apply_adapter, make_config

    cfg = make_config(method, options or {"target_modules": "attention"})
    for p in encoder.net.parameters():
        p.requires_grad_(False)
    encoder.net = apply_adapter(encoder.net, cfg, adapter_name)
    return encoder
