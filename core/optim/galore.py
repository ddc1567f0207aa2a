"""GaLore: gradient low-rank projection, as an AdamW optimizer (Zhao et al., ICML 2024, arXiv 2403.03507).

Dimension letters: M rows and N columns of a weight (out, in), R the projection rank.

For a targeted 2-D weight with gradient G (M, N) the update is (paper Alg. 1 / Eq. 6-7)::

    P_t   = top-R singular vectors of G, recomputed when (t - 1) % update_proj_gap == 0
    R_t   = project(G_t)             right (M >= N): G Pᵀ (M, R);  left (M < N): Pᵀ G (R, N)
    N_t   = Adam(R_t)                moments live in the projected shape
    W    <- W - lr * scale * project_back(N_t)

Every other trainable parameter takes plain AdamW through the same code with no projection, so this
optimizer with no GaLore targets is ``torch.optim.AdamW`` step for step (same eps placement
``m̂ / (sqrt(v̂) + eps)`` and decoupled weight decay ``W *= 1 - lr * wd`` before the update).
Differences from the official ``galore_torch.GaLoreAdamW``: it adds eps to sqrt(v) before bias
correction and decays after the step (both O(lr * eps) / O(lr² * wd) apart); ``moments_on_refresh``
adds the choices ``reset`` and ``reproject`` to the official ``keep``.

Layerwise mode (``layerwise=True``) updates each parameter inside backward, from
``register_post_accumulate_grad_hook``, then frees its gradient, so full gradients of all layers
never coexist (the official code and transformers' layerwise GaLore do this only on one process and
without gradient accumulation). Here:

* gradient accumulation: the hook updates only when the current micro-batch is the last of the
  step (``set_micro_batch(index, count)``, called by ``fit`` before every backward; a user's own
  loop without accumulation needs no call). Earlier micro-batches accumulate into ``.grad`` as usual.
* DDP: DDP's reducer all-reduces gradients in buckets asynchronously and writes the averaged values
  back only at the end of backward, so a post-accumulate hook sees the *local* gradient. The hook
  therefore all-reduces its own parameter's gradient (SUM / world size, blocking) before updating,
  and ``fit`` runs every micro-batch of a layerwise optimizer under ``no_sync`` so that DDP does not
  reduce it a second time. Ranks run the same graph, so their hooks fire in the same order and
  the collectives match. Every rank must produce a gradient for the same parameters each step
  (DDP's rule without ``find_unused_parameters``). A user's own DDP loop must likewise run backward
  inside ``ddp_model.no_sync()``. Memory under DDP: DDP's reducer still allocates its buckets (one
  gradient-sized buffer) at wrap time; what layerwise saves there is the ``.grad`` copy and the
  optimizer-side temporaries. The blocking per-parameter all-reduce gives up DDP's bucketing and
  overlap: more, smaller messages.
* gradient clipping needs the global norm of all gradients before any update and is refused; fp16
  loss scaling (a GradScaler unscales before ``step``) is refused too; bf16 works.
* ``step()`` updates nothing in layerwise mode (the updates already happened); ``zero_grad`` is a no-op
  for the freed gradients.

State (tensors and plain values, so ``torch.load(weights_only=True)`` reads a checkpoint): per
parameter ``step`` (int), ``exp_avg`` / ``exp_avg_sq`` (projected shape for targets), and for targets
``proj`` (the projector: (M, R) left or (R, N) right) and ``proj_side`` (0 left, 1 right);
``adam_step`` counts the steps since the moments started (bias correction; ``reset`` restarts it).
8-bit moments (``eight_bit=True``) store the moments blockwise-quantized through bitsandbytes
(``exp_avg_q`` / ``exp_avg_absmax`` ...), dequantized around each update; bitsandbytes is imported only then.

Not covered: GaLore-Adafactor, tensor (>2-D) projectors (``galore_projector_tensor``), randomized
SVD, per-layer learning-rate schedules.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Literal

import torch
from torch import nn

from adaptome.core.errors import AdaptomeError
from adaptome.core.optim.registry import OPTIMIZERS


class GaLoreError(AdaptomeError, ValueError):
    """A GaLore option or a training setting it cannot honour."""


@OPTIMIZERS.register("galore")
@dataclass
class GaLoreConfig:
    """Options of the ``galore`` optimizer (defaults: transformers 5.24 ``optim_args`` / the C4 scripts).

    Args:
      rank: projection rank R (clipped to min(M, N) per matrix; a warning names how many matrices are then
        projected at full rank, where the state is not smaller than AdamW's).
      update_proj_gap: steps between projector refreshes (the SVD of the current gradient).
      scale: alpha multiplying the back-projected update.
      proj_type: ``std`` (right if M >= N else left, as the official code), ``left`` or ``right``.
      target_modules: ``all-linear``, a preset, module names or a regex (as adapters); the ``.weight`` of
        every matching ``nn.Linear`` is projected.
      exclude_modules: names or a regex removed from the targets.
      moments_on_refresh: what happens to Adam's moments when the projector changes: ``keep`` them
        as they are (official), ``reset`` them to zero (bias correction restarts), or ``reproject`` them
        into the new basis (first moment exactly, second moment through the squared change of basis,
        an approximation).
      layerwise: update each parameter inside backward and free its gradient (see the module docstring).
      eight_bit: keep the moments 8-bit blockwise-quantized (needs the ``galore8bit`` extra: bitsandbytes).
      eps: Adam's epsilon.
    """

    rank: int = 128
    update_proj_gap: int = 200
    scale: float = 0.25
    proj_type: Literal["std", "left", "right"] = "std"
    target_modules: list[str] | str = "all-linear"
    exclude_modules: list[str] | str | None = None
    moments_on_refresh: Literal["keep", "reset", "reproject"] = "keep"
    layerwise: bool = False
    eight_bit: bool = False
    eps: float = 1e-8

    summary: ClassVar[str] = "AdamW on low-rank projections of the gradient (GaLore, arXiv 2403.03507)"

    def build(self, model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
              groups: list[dict] | None = None) -> "GaLoreAdamW":
        return galore_optimizer(model, self, lr, weight_decay, betas, groups)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise GaLoreError(f"galore rank must be >= 1, got {self.rank}")
        if self.update_proj_gap < 1:
            raise GaLoreError(f"galore update_proj_gap must be >= 1, got {self.update_proj_gap}")
        if self.proj_type not in ("std", "left", "right"):
            raise GaLoreError(f"galore proj_type must be std, left or right, got {self.proj_type!r}")
        if self.moments_on_refresh not in ("keep", "reset", "reproject"):
            raise GaLoreError(f"galore moments_on_refresh must be keep, reset or reproject, got "
                              f"{self.moments_on_refresh!r}")


def svd_projector(grad: torch.Tensor, rank: int, side: str) -> torch.Tensor:
    """Top-``rank`` singular vectors of ``grad`` (M, N) in float32: (M, R) for ``left``, (R, N) for ``right``."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)  # u (M, K), vh (K, N), K = min(M, N)
    return u[:, :rank].contiguous() if side == "left" else vh[:rank].contiguous()


#: ``state["proj_side"]`` is an index into this (an int: optimizer state dicts hold tensors and numbers)
_SIDES = ("left", "right")


def _side(shape: torch.Size, proj_type: str) -> str:
    if proj_type == "std":
        return "right" if shape[0] >= shape[1] else "left"
    return proj_type


def project(g: torch.Tensor, proj: torch.Tensor, side: str) -> torch.Tensor:
    """(M, N) -> (M, R) right or (R, N) left."""
    return g @ proj.t() if side == "right" else proj.t() @ g  # (M,N)@(N,R) | (R,M)@(M,N)


def project_back(n: torch.Tensor, proj: torch.Tensor, side: str) -> torch.Tensor:
    """(M, R) right or (R, N) left -> (M, N)."""
    return n @ proj if side == "right" else proj @ n  # (M,R)@(R,N) | (M,R)@(R,N)


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose groups with ``galore=True`` are updated in a low-rank projection of the gradient.

    Build it with ``galore_optimizer(model, cfg, lr, ...)``, which splits the parameters into a GaLore
    group and a plain group. Group keys: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``galore`` and,
    for GaLore groups, ``rank``, ``update_proj_gap``, ``scale``, ``proj_type``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, rank: int = 128, update_proj_gap: int = 200,
                 scale: float = 0.25, proj_type: str = "std", moments_on_refresh: str = "keep",
                 layerwise: bool = False, eight_bit: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, galore=False, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type)
        super().__init__(params, defaults)
        self.moments_on_refresh = moments_on_refresh
        self.layerwise = layerwise
        self.eight_bit = eight_bit
        self._bnb = _import_bnb() if eight_bit else None
        self._last_micro_batch = True
        self._handles = []
        if layerwise:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.requires_grad:
                        self._handles.append(p.register_post_accumulate_grad_hook(self._make_hook(group)))

    # ``fit`` reads this: updates happen in backward, so no clipping / GradScaler and all micro-batches no_sync
    @property
    def updates_in_backward(self) -> bool:
        return self.layerwise

    def set_micro_batch(self, index: int, count: int) -> None:
        """Tell a layerwise optimizer which micro-batch the next backward belongs to (0-based of ``count``):
        it updates only on the last one."""
        self._last_micro_batch = index == count - 1

    def _make_hook(self, group: dict):
        def hook(p: torch.Tensor) -> None:
            if not self._last_micro_batch or p.grad is None:
                return
            _all_reduce_mean(p.grad)
            with torch.no_grad():
                self._update(p, group)
            p.grad = None

        return hook

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.layerwise:
                    raise GaLoreError("layerwise GaLore found a gradient at step(): a backward ran while "
                                      "set_micro_batch() said it was not the last micro-batch, or the "
                                      "gradient was produced without backward hooks")
                self._update(p, group)
        return loss

    # -- one parameter ------------------------------------------------------------------------------
    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad
        if grad.is_sparse:
            raise GaLoreError("GaLore does not support sparse gradients")
        state = self.state[p]
        galore = group["galore"] and p.dim() == 2
        if not state:
            state["step"] = 0
            state["adam_step"] = 0
        state["step"] += 1
        if galore:
            side = _SIDES[state["proj_side"]] if "proj_side" in state else _side(p.shape, group["proj_type"])
            if (state["step"] - 1) % group["update_proj_gap"] == 0:
                rank = min(group["rank"], *p.shape)
                new = svd_projector(grad, rank, side)
                self._on_refresh(state, state.get("proj"), new, side)
                state["proj"], state["proj_side"] = new, _SIDES.index(side)
            g = project(grad.float(), state["proj"], side)  # (M, R) or (R, N)
        else:
            g = grad
        m, v = self._moments(state, g)
        beta1, beta2 = group["betas"]
        state["adam_step"] += 1
        t = state["adam_step"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
        denom = (v.sqrt() / bc2 ** 0.5).add_(group["eps"])  # torch AdamW's order of operations
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        if galore:
            n = project_back(m / denom, state["proj"], side) * group["scale"]  # (M, N)
            p.add_(n.to(p.dtype), alpha=-group["lr"] / bc1)
        else:
            p.addcdiv_(m, denom, value=-group["lr"] / bc1)
        self._store_moments(state, m, v)

    def _moments(self, state: dict, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if "exp_avg" not in state and "exp_avg_q" not in state:
            return torch.zeros_like(g), torch.zeros_like(g)
        if self.eight_bit:
            return _dequant(self._bnb, state, "exp_avg"), _dequant(self._bnb, state, "exp_avg_sq")
        return state["exp_avg"], state["exp_avg_sq"]

    def _store_moments(self, state: dict, m: torch.Tensor, v: torch.Tensor) -> None:
        if self.eight_bit:
            _quant(self._bnb, state, "exp_avg", m)
            _quant(self._bnb, state, "exp_avg_sq", v)
        else:
            state["exp_avg"], state["exp_avg_sq"] = m, v

    def _on_refresh(self, state: dict, old: torch.Tensor | None, new: torch.Tensor, side: str) -> None:
        if old is None or self.moments_on_refresh == "keep" or ("exp_avg" not in state and "exp_avg_q" not in state):
            return
        m, v = self._moments(state, torch.empty(0))
        if self.moments_on_refresh == "reset":
            m, v = torch.zeros_like(m), torch.zeros_like(v)
            state["adam_step"] = 0
        else:  # reproject: coordinates in the old basis -> the new one
            if side == "right":
                c = old @ new.t()  # (R_old, N) @ (N, R_new) -> (R_old, R_new)
                m, v = m @ c, v @ (c * c)  # (M, R_new)
            else:
                c = new.t() @ old  # (R_new, M) @ (M, R_old) -> (R_new, R_old)
                m, v = c @ m, (c * c) @ v  # (R_new, N)
        self._store_moments(state, m, v)

    def remove_hooks(self) -> None:
        """Detach the layerwise hooks (before handing the parameters to another optimizer)."""
        for h in self._handles:
            h.remove()
        self._handles = []


def _all_reduce_mean(grad: torch.Tensor) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        grad.div_(dist.get_world_size())


def _import_bnb():
    try:
        import bitsandbytes.functional as bnbf
    except ImportError as e:
        raise GaLoreError("galore eight_bit=True needs bitsandbytes: pip install 'adaptome[galore8bit]'") from e
    return bnbf


def _quant(bnbf, state: dict, key: str, x: torch.Tensor) -> None:
    q, qs = bnbf.quantize_blockwise(x.float().contiguous())
    state[f"{key}_q"], state[f"{key}_absmax"], state[f"{key}_code"] = q, qs.absmax, qs.code
    state[f"{key}_shape"] = list(x.shape)


def _dequant(bnbf, state: dict, key: str) -> torch.Tensor:
    q, absmax, code = state[f"{key}_q"], state[f"{key}_absmax"], state[f"{key}_code"]
    out = bnbf.dequantize_blockwise(q, absmax=absmax.float(), code=code.float(), blocksize=4096)
    return out.view(state[f"{key}_shape"])


def galore_param_groups(model: nn.Module, cfg: GaLoreConfig) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(projected weights, the other trainable parameters) of ``model`` under ``cfg``'s targets."""
    from adaptome.core.adapters.targets import TargetError, resolve_targets

    try:
        paths = resolve_targets(model, cfg.target_modules, cfg.exclude_modules)
    except TargetError as e:  # name the optimizer's option: an adapter's own target_modules may be fine
        raise GaLoreError(f"optimizer.options.target_modules (galore): {e} (an adapter method that replaces the "
                          "linear layers, such as sltrain, leaves galore nothing to project)") from None
    targets = [model.get_submodule(p).weight for p in paths]
    targets = [w for w in targets if w.requires_grad and w.dim() == 2]
    ids = {id(w) for w in targets}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return targets, others


def galore_optimizer(model: nn.Module, cfg: GaLoreConfig, lr: float, weight_decay: float = 0.0,
                     betas: tuple[float, float] = (0.9, 0.999), method_groups: list[dict] | None = None) -> GaLoreAdamW:
    """A ``GaLoreAdamW`` over ``model``'s trainable parameters: targets projected, the rest plain AdamW.
    ``method_groups`` (the adapter methods' parameter groups, as ``fit`` passes them): the parameters that are
    not projected keep their group's options (SoRA's gates: ``gate_lr``, no weight decay)."""
    targets, others = galore_param_groups(model, cfg)
    if not targets:
        raise GaLoreError(f"galore target_modules {cfg.target_modules!r} matched no trainable nn.Linear weight")
    full = [w for w in targets if cfg.rank >= min(w.shape)]
    if full:  # the projection is then a rotation: no memory saved, and the projector comes on top
        warnings.warn(f"galore rank {cfg.rank} is >= min(out, in) of {len(full)} of the {len(targets)} projected "
                      f"weights (e.g. {tuple(full[0].shape)}): their gradients are projected at full rank, so "
                      "their optimizer state is not smaller than AdamW's (it adds the projector); set "
                      "optimizer.options.rank below the smaller dimension", UserWarning, stacklevel=2)
    groups = [{"params": targets, "galore": True}]
    rest = {id(p) for p in others}
    for g in method_groups or [{"params": others}]:
        params = [p for p in g["params"] if id(p) in rest]
        if params:
            groups.append({**g, "params": params, "galore": False})
    return GaLoreAdamW(groups, lr=lr, betas=betas, eps=cfg.eps, weight_decay=weight_decay, rank=cfg.rank,
                       update_proj_gap=cfg.update_proj_gap, scale=cfg.scale, proj_type=cfg.proj_type,
                       moments_on_refresh=cfg.moments_on_refresh, layerwise=cfg.layerwise,
                       eight_bit=cfg.eight_bit)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors of an optimizer's state (moments, projectors; step counters too)."""
    total = 0
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


__all__ = ["GaLoreConfig", "GaLoreAdamW", "GaLoreError", "galore_optimizer", "galore_param_groups",
           "svd_projector", "state_bytes"]
