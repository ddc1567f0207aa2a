"""LQ-LoRA: W ≈ Q + L1·L2 with a mixed, budgeted NormalFloat configuration per matrix, LoRA on top.

Guo et al., "LQ-LoRA: Low-rank Plus Quantized Matrix Decomposition for Efficient Language Model
Finetuning" (ICLR 2024, arXiv 2311.12023). Dimension letters: o out, i in, r rank.

* Decomposition (Sec. 3.1, Alg. 1): Q = 0; repeat up to ``max_iters``: L1 (o, r), L2 (r, i) = rank-r
  SVD of W − Q; Q = NF-quantise(W − L1L2); stop as soon as the error ‖W − Q − L1L2‖ rises (the
  previous iterate is kept). With ``quantize=False`` Q = W − L1L2 exactly (error 0).
* Fisher weighting (Sec. 3.3): F = Σ grad² over ``fisher_batches`` single-example batches of the
  calibration text; row / column weights ρ = √mean_cols(F), γ = √mean_rows(F); the weighted SVD is
  the SVD of diag(ρ)·M·diag(γ), un-weighted afterwards, and the cost is ‖√F ⊙ (W − Q − L1L2)‖².
* Mixed configuration (Sec. 3.2, Eq. 4): for every matrix and every configuration c of the grid
  (b, b0, b1, B0, B1) the decomposition error is measured; the integer program
  min Σ cost[m, c]·x[m, c] s.t. Σ_c x[m, c] = 1, Σ storage(c)·numel(m)·x[m, c] ≤ budget·Σ numel(m),
  x binary, is solved with ``scipy.optimize.milp`` (the reference uses Gurobi).
* LoRA on top (Sec. 3.4): Q is frozen (stored as codes), L1 and L2 are the trainable LoRA factors
  (``lora_B`` = L1, ``lora_A`` = L2, scale 1). ``to_peft(model)`` gives the same model as a peft LoRA
  over a dense base holding the dequantised Q (α = r, so s = 1 and A = L2, B = L1).

Our choices: the default grid is a 32-point subset of the paper's 432 (b ∈ {2, 3, 4, 8}, b0 ∈ {4, 8},
b1 = fp16, B0 ∈ {32, 64}, B1 ∈ {64, 256}); every field can be set to the full grid. The budget counts Q
only (as the paper's 2.75 bits); the report gives the low-rank part separately.
Not covered: the reference's randomised SVD, bitsandbytes NF4 interoperability (bitsandbytes is
not a dependency and is never imported), and a quantised peft export (``to_peft`` writes Q dense).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.layers import (
    LAYER_KINDS,
    CompressedLayer,
    CompressError,
    compressed_layers,
    linear_weight,
    replace_module,
)
from adaptome.core.compress.nf_quant import NFTensor, QuantConfig, quantize


@dataclass
class LQLoRAConfig:
    """Args:
        bits_budget: average bits per parameter of Q over the target matrices (the ILP constraint).
        rank: r of L1 (o, r) and L2 (r, i).
        quantize: False keeps Q = W − L1L2 unquantised (exact; a check, not compression).
        bits, bits0, scale_dtypes, block0, block1: the configuration grid (b, b0, b1, B0, B1).
        max_iters: most alternations per decomposition (the reference uses 100).
        fisher_batches: calibration examples for the Fisher weights (0 = unweighted).
        time_limit: seconds for the MILP solver.
    """

    bits_budget: float = 3.0
    rank: int = 8
    quantize: bool = True
    bits: tuple[int, ...] = (2, 3, 4, 8)
    bits0: tuple[int, ...] = (4, 8)
    scale_dtypes: tuple[str, ...] = ("fp16",)
    block0: tuple[int, ...] = (32, 64)
    block1: tuple[int, ...] = (64, 256)
    max_iters: int = 20
    fisher_batches: int = 0
    time_limit: float = 60.0

    def grid(self) -> list[QuantConfig]:
        return [QuantConfig(b, b0, d, n0, n1) for b, b0, d, n0, n1 in
                itertools.product(self.bits, self.bits0, self.scale_dtypes, self.block0, self.block1)]


def weighted_svd(m: torch.Tensor, rank: int, row_w: torch.Tensor | None = None,
                 col_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 (o, r), L2 (r, i) minimising ‖diag(ρ)(M − L1L2)diag(γ)‖ (plain SVD without weights)."""
    if row_w is not None:
        m = row_w[:, None] * m * col_w[None, :]  # diag(ρ) · (o, i) · diag(γ)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)  # (o, k), (k,), (k, i)
    root = s[:rank].sqrt()
    l1, l2 = u[:, :rank] * root, root[:, None] * vh[:rank]  # (o, r), (r, i)
    if row_w is not None:
        l1, l2 = l1 / row_w[:, None], l2 / col_w[None, :]
    return l1, l2


def decompose(w: torch.Tensor, rank: int, qcfg: QuantConfig | None, max_iters: int = 20,
              fisher: torch.Tensor | None = None) -> dict[str, Any]:
    """Alternate L = SVD_r(W − Q), Q = NF(W − L) until the (weighted) error rises; returns the best iterate."""
    row_w = col_w = None
    if fisher is not None:
        row_w = fisher.mean(dim=1).sqrt().clamp_min(1e-12)  # (o,)
        col_w = fisher.mean(dim=0).sqrt().clamp_min(1e-12)  # (i,)

    def err(e: torch.Tensor) -> float:
        return float((fisher * e.square()).sum()) if fisher is not None else float(e.square().sum())

    q_dense = torch.zeros_like(w)
    best: dict[str, Any] | None = None
    for it in range(max(1, max_iters)):
        l1, l2 = weighted_svd(w - q_dense, rank, row_w, col_w)
        resid = w - l1 @ l2  # (o, r) @ (r, i) -> (o, i)
        qt = quantize(resid, qcfg) if qcfg is not None else None
        q_dense = qt.dequantize() if qt is not None else resid
        e = err(w - q_dense - l1 @ l2)
        if best is not None and e > best["cost"]:
            break
        best = {"l1": l1, "l2": l2, "q": qt, "q_dense": q_dense, "cost": e, "iters": it + 1}
        if qcfg is None:
            break
    assert best is not None
    return best


def empirical_fisher(model: nn.Module, targets: list[str], batches: list[Any], loss_fn) -> dict[str, torch.Tensor]:
    """Σ grad² of each target weight over single-example ``batches`` (the empirical Fisher diagonal)."""
    weights = {p: model.get_submodule(p).weight for p in targets}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    fisher = {p: torch.zeros_like(w, dtype=torch.float32) for p, w in weights.items()}
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for p, w in weights.items():
                if w.grad is not None:
                    fisher[p] += w.grad.detach().float().square()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
        model.train(was_training)
    return fisher


def solve_allocation(costs: np.ndarray, storage: np.ndarray, numels: np.ndarray, budget: float,
                     time_limit: float = 60.0) -> np.ndarray:
    """One configuration index per matrix: argmin Σ cost s.t. Σ storage·numel ≤ budget·Σ numel (MILP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_mat, n_cfg = costs.shape
    floor = float(storage.min())
    if budget < floor - 1e-9:
        raise CompressError(f"--budget (bits_budget) {budget} bits per parameter cannot be met: the cheapest "
                            f"configuration of the grid needs {floor:.4f}")
    scale = max(float(costs.max()), 1e-30)
    c = (costs / scale).reshape(-1)  # x is laid out (n_mat, n_cfg) row-major
    one_hot = np.kron(np.eye(n_mat), np.ones((1, n_cfg)))  # (n_mat, n_mat*n_cfg)
    store = (numels[:, None] * storage[None, :]).reshape(1, -1) / numels.sum()  # bits per parameter
    res = milp(c, integrality=np.ones_like(c), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one_hot, 1, 1), LinearConstraint(store, -np.inf, budget + 1e-9)],
               options={"time_limit": time_limit})
    if res.x is None:
        raise CompressError(f"--budget (bits_budget) {budget}: the allocation program found no solution "
                            f"({res.message})")
    return res.x.reshape(n_mat, n_cfg).argmax(axis=1)


@LAYER_KINDS.register("lqlora")
class LQLoRALinear(CompressedLayer):
    """y = x·Qᵀ + (x·L2ᵀ)·L1ᵀ + b with Q frozen (NF codes, or dense when unquantised), L1 / L2 trainable."""

    kind = "lqlora"

    def __init__(self, q: NFTensor | None, q_dense: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor,
                 bias: torch.Tensor | None):
        super().__init__()
        self.q = q
        self.out_features, self.in_features = q_dense.shape
        self.rank = l2.shape[0]
        self.register_buffer("q_weight", q_dense.clone(), persistent=False)  # decoded once, (o, i)
        self.lora_A = nn.Parameter(l2.clone())  # (r, i) = L2
        self.lora_B = nn.Parameter(l1.clone())  # (o, r) = L1
        self.bias = nn.Parameter(bias.clone(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.q_weight.to(x.dtype), self.bias)  # (..., i) -> (..., o)
        return base + F.linear(F.linear(x, self.lora_A), self.lora_B)  # (..., i) -> (..., r) -> (..., o)

    def meta(self) -> dict[str, Any]:
        return {"q": self.q.meta() if self.q is not None else None, "rank": self.rank,
                "shape": [self.out_features, self.in_features], "bias": self.bias is not None}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"lora_A": self.lora_A.data, "lora_B": self.lora_B.data}
        if self.q is not None:
            out.update({f"q.{k}": v for k, v in self.q.tensors().items()})
        else:
            out["q_dense"] = self.q_weight
        if self.bias is not None:
            out["bias"] = self.bias.data
        return out

    def stored_params(self) -> int:
        return self.lora_A.numel() + self.lora_B.numel() + (0 if self.q is not None else self.q_weight.numel())

    @classmethod
    def from_tensors(cls, meta: dict[str, Any], t: dict[str, torch.Tensor]) -> "LQLoRALinear":
        if meta["q"] is not None:
            q = NFTensor.from_tensors(meta["q"], {k[2:]: v for k, v in t.items() if k.startswith("q.")})
            dense = q.dequantize()
        else:
            q, dense = None, t["q_dense"]
        return cls(q, dense, t["lora_B"], t["lora_A"], t.get("bias"))


@COMPRESSORS.register("lqlora")
class LQLoRA:
    """Registry entry: config, budget field, compression and the trainable set (the LoRA factors)."""

    Config = LQLoRAConfig
    budget_field = "bits_budget"
    budget_help = "average bits per parameter of the quantised part, e.g. 3"
    #: options that replace the budget when set (``--budget`` beside them is refused, not ignored)
    overrides_budget: tuple[str, ...] = ()

    @staticmethod
    def compress(model: nn.Module, targets: list[str], cfg: LQLoRAConfig, calib=None) -> list[dict]:
        fishers: dict[str, torch.Tensor] = {}
        if cfg.fisher_batches > 0:
            if calib is None:
                raise CompressError("fisher_batches > 0 needs calibration text (--train-text)")
            fishers = empirical_fisher(model, targets, calib["batches"][: cfg.fisher_batches], calib["loss_fn"])
        weights = {p: linear_weight(model, p) for p in targets}
        for p, (w, _) in weights.items():
            if cfg.rank >= min(w.shape):
                raise CompressError(f"rank {cfg.rank} >= min{tuple(w.shape)} of {p}: nothing left to quantise; "
                                    "lower --set rank=... or leave the matrix out of --targets")
        grid = cfg.grid() if cfg.quantize else [None]
        results = {p: [decompose(w, cfg.rank, c, cfg.max_iters, fishers.get(p)) for c in grid]
                   for p, (w, _) in weights.items()}
        if cfg.quantize:
            costs = np.array([[r["cost"] for r in results[p]] for p in targets])
            storage = np.array([c.bits_per_param() for c in grid])
            numels = np.array([weights[p][0].numel() for p in targets], dtype=np.float64)
            choice = solve_allocation(costs, storage, numels, cfg.bits_budget, cfg.time_limit)
        else:
            choice = np.zeros(len(targets), dtype=int)
        rows = []
        for p, ci in zip(targets, choice):
            w, b = weights[p]
            r = results[p][int(ci)]
            dtype = model.get_submodule(p).weight.dtype
            replace_module(model, p, LQLoRALinear(r["q"], r["q_dense"], r["l1"], r["l2"], b).to(dtype))
            o, i = w.shape
            rel = float((w - r["q_dense"] - r["l1"] @ r["l2"]).norm() / w.norm().clamp_min(1e-30))
            rows.append({"path": p, "shape": [o, i], "config": grid[int(ci)].name() if grid[int(ci)] else "none",
                         "bits_per_param": grid[int(ci)].bits_per_param() if grid[int(ci)] else 32.0,
                         "rank": cfg.rank, "iters": r["iters"], "rel_error": rel, "cost": r["cost"],
                         "params_before": o * i, "params_after": cfg.rank * (o + i),
                         "extra_bits": (grid[int(ci)].bits_per_param() if grid[int(ci)] else 32.0) * o * i})
        return rows

    @staticmethod
    def mark_trainable(model: nn.Module) -> list[nn.Parameter]:
        """L1 and L2 (lora_B, lora_A) of every LQ-LoRA layer; Q and biases stay frozen."""
        return [p for _, layer in compressed_layers(model) if isinstance(layer, LQLoRALinear)
                for p in (layer.lora_A, layer.lora_B)]


def loftq_uniform(w: torch.Tensor, rank: int, qcfg: QuantConfig, iters: int = 1) -> dict[str, Any]:
    """LoftQ (Li et al., arXiv 2310.08659, Alg. 1) with one uniform configuration: A, B = 0; T times
    Q = NF(W − AB), A, B = SVD_r(W − Q). This is the algorithm of peft's ``loftq_init`` (which needs
    bitsandbytes); it is used beside LQ-LoRA at equal bits. Returns q (NFTensor), q_dense, l1, l2
    and rel_error = ‖W − Q − L1L2‖ / ‖W‖."""
    lr = torch.zeros_like(w)
    for _ in range(max(1, iters)):
        qt = quantize(w - lr, qcfg)
        q = qt.dequantize()
        l1, l2 = weighted_svd(w - q, rank)
        lr = l1 @ l2  # (o, r) @ (r, i)
    return {"q": qt, "q_dense": q, "l1": l1, "l2": l2, "rel_error": float((w - q - lr).norm() / w.norm())}


def to_peft(model: nn.Module) -> nn.Module:
    """A peft ``PeftModel`` with the same outputs: each LQ-LoRA layer becomes an ``nn.Linear`` holding the
    dequantised Q, with a peft LoRA (r = rank, α = r so s = 1; A = L2, B = L1) on it. ``save_pretrained``
    of the result writes a plain peft adapter; the base with Q must be saved beside it
    (``result.get_base_model()``). The copy is dense (fp32 Q), not quantised."""
    import copy

    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(model)
    layers = dict((p, layer) for p, layer in compressed_layers(model) if isinstance(layer, LQLoRALinear))
    if not layers:
        raise CompressError("the model has no LQ-LoRA layers to export")
    ranks = {layer.rank for layer in layers.values()}
    if len(ranks) != 1:
        raise CompressError(f"LQ-LoRA layers have different ranks {sorted(ranks)}; peft export needs one")
    for path, layer in layers.items():
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(layer.q_weight)
            if layer.bias is not None:
                lin.bias.copy_(layer.bias)
        replace_module(model, path, lin)
    r = ranks.pop()
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=list(layers),
                                                  init_lora_weights=False))
    with torch.no_grad():
        for path, layer in layers.items():
            mod = peft_model.base_model.model.get_submodule(path)
            mod.lora_A["default"].weight.copy_(layer.lora_A)
            mod.lora_B["default"].weight.copy_(layer.lora_B)
    return peft_model
