"""Blockwise NormalFloat quantisation with double-quantised scales, in plain PyTorch.

NormalFloat codebook (Dettmers et al., QLoRA, arXiv 2305.14314, Sec. 3 "4-bit NormalFloat"): 2^b
levels at quantiles of N(0, 1), 2^(b−1) positive, 2^(b−1) − 1 negative and an exact zero, scaled
to [−1, 1]; generalised here to any b in 2..8 (LQ-LoRA, arXiv 2311.12023, Sec. 3.1, uses b ∈ {2, 3, 4, 8}).

A tensor is flattened and cut into blocks of ``block0`` values (B0). Each block keeps its absmax s
(first-level scale); its values are coded as the nearest codebook level of x / ŝ. The first-level
scales are themselves quantised (double quantisation): in groups of ``block1`` (B1) scales, each
group stores its maximum m in the ``scale_dtype`` (b1: bf16 / fp16 / fp32) and every scale as an
unsigned ``bits0``-bit (b0) code c with ŝ = c / (2^b0 − 1) · m̂. Storage per parameter is
b + b0/B0 + bits(b1)/(B0·B1) (LQ-LoRA's ``estimate_storage_from_config``).

Our choices where the papers leave room: the scale codes are rounded UP (ceil) and m̂ is nudged
up before the cast, so ŝ ≥ s and no value is clipped; QLoRA instead subtracts the scales' mean and
codes them as 8-bit floats. Codes are held as uint8 tensors (one byte each, not bit-packed): the
bit counts in reports are those of the packed format. ``encode(x, ŝ)`` maps decoded values back to
exactly their own codes (codebook levels are fixed points of nearest-level rounding).

Not covered: bit-packing on disk, fused dequantise-matmul kernels, and conversion to or from
bitsandbytes' NF4 layout (bitsandbytes is not a dependency; nothing here imports it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

SCALE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SCALE_BITS = {"bf16": 16, "fp16": 16, "fp32": 32}


@dataclass(frozen=True)
class QuantConfig:
    """Args:
        bits: b, bits per value code (2..8).
        bits0: b0, bits per first-level (absmax) scale code; 0 = no double quantisation (each block's
            absmax is stored directly in ``scale_dtype``, as bitsandbytes NF4 without
            ``compress_statistics`` and peft's LoftQ do).
        scale_dtype: b1, dtype of the second-level scales: ``bf16``, ``fp16`` or ``fp32``.
        block0: B0, values per first-level block.
        block1: B1, first-level scales per second-level block.
    """

    bits: int = 4
    bits0: int = 8
    scale_dtype: str = "fp32"
    block0: int = 64
    block1: int = 256

    def bits_per_param(self) -> float:
        if self.bits0 == 0:  # no double quantisation: one b1 scale per block
            return self.bits + SCALE_BITS[self.scale_dtype] / self.block0
        return self.bits + self.bits0 / self.block0 + SCALE_BITS[self.scale_dtype] / (self.block0 * self.block1)

    def name(self) -> str:
        return f"b{self.bits}-b0{self.bits0}-{self.scale_dtype}-B0{self.block0}-B1{self.block1}"


def nf_codebook(bits: int) -> torch.Tensor:
    """The 2^bits NormalFloat levels, sorted, in [−1, 1] with an exact 0 (QLoRA's offset 0.9677)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"NormalFloat bits must be in 2..8, got {bits}")
    offset = 0.9677083
    half = 2 ** (bits - 1)
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)])
    levels = levels / levels.abs().max()
    return torch.sort(levels).values.float()


@dataclass
class NFTensor:
    """A quantised tensor: value codes, scale codes, second-level scales, and how to decode them."""

    codes: torch.Tensor  # uint8 (n_blocks0, B0)
    scale_codes: torch.Tensor  # uint8 (n_blocks1, B1)
    scale_max: torch.Tensor  # (n_blocks1,) in the b1 dtype
    shape: tuple[int, ...]
    config: QuantConfig

    def scales(self) -> torch.Tensor:
        """ŝ per first-level block, (n_blocks0,)."""
        if self.config.bits0 == 0:
            return self.scale_max.float()
        q = self.scale_codes.float() / (2 ** self.config.bits0 - 1)  # (n_blocks1, B1)
        return (q * self.scale_max.float()[:, None]).reshape(-1)  # (n_blocks1, B1) -> (n_blocks1*B1,)

    def dequantize(self) -> torch.Tensor:
        book = nf_codebook(self.config.bits)
        s = self.scales()[: self.codes.shape[0]]
        vals = book[self.codes.long()] * s[:, None]  # (n_blocks0, B0)
        n = 1
        for d in self.shape:
            n *= d
        return vals.reshape(-1)[:n].reshape(self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"codes": self.codes, "scale_codes": self.scale_codes, "scale_max": self.scale_max}

    def meta(self) -> dict:
        return {"shape": list(self.shape), "config": asdict(self.config)}

    @classmethod
    def from_tensors(cls, meta: dict, t: dict[str, torch.Tensor]) -> "NFTensor":
        return cls(t["codes"], t["scale_codes"], t["scale_max"], tuple(meta["shape"]), QuantConfig(**meta["config"]))


def encode(x: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest-level codes (uint8) of blocks ``x`` (n, B0) against per-block scales (n,)."""
    book = nf_codebook(bits)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    y = (x / safe[:, None]).clamp(-1, 1)  # (n, B0)
    mids = (book[1:] + book[:-1]) / 2
    codes = torch.bucketize(y, mids)  # index of the nearest level
    zero = int(torch.nonzero(book == 0)[0])
    codes = torch.where(scales[:, None] > 0, codes, torch.full_like(codes, zero))
    return codes.to(torch.uint8)


def quantize(w: torch.Tensor, cfg: QuantConfig) -> NFTensor:
    """Blockwise NF quantisation of ``w`` with double-quantised scales (see the module docstring)."""
    x = w.detach().float().reshape(-1)
    group = cfg.block0 * cfg.block1
    pad = (-x.numel()) % group
    x = torch.cat([x, x.new_zeros(pad)])
    blocks = x.reshape(-1, cfg.block0)  # (n_blocks0, B0)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks0,)
    groups = absmax.reshape(-1, cfg.block1)  # (n_blocks1, B1)
    dtype = SCALE_DTYPES[cfg.scale_dtype]
    if cfg.bits0 == 0:
        s_hat = (absmax * (1 + 2.0 ** -7)).to(dtype)
        q = NFTensor(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8), s_hat, tuple(w.shape), cfg)
        q.codes = encode(blocks, q.scales(), cfg.bits)
        return q
    m = groups.amax(dim=1)
    m_hat = (m * (1 + 2.0 ** -7)).to(dtype)  # nudged up so that m̂ >= m after rounding to b1
    levels = 2 ** cfg.bits0 - 1
    mf = m_hat.float()
    safe = torch.where(mf > 0, mf, torch.ones_like(mf))
    scale_codes = torch.ceil(groups / safe[:, None] * levels - 1e-6).clamp(0, levels)
    # ceil keeps ŝ >= s up to the 1e-6 guard; recompute so ŝ never falls below s
    s_hat = scale_codes / levels * mf[:, None]
    scale_codes = torch.where(s_hat < groups, (scale_codes + 1).clamp(max=levels), scale_codes)
    q = NFTensor(torch.empty(0, dtype=torch.uint8), scale_codes.to(torch.uint8), m_hat, tuple(w.shape), cfg)
    q.codes = encode(blocks, q.scales(), cfg.bits)
    return q
