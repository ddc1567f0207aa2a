"""Per-example gradients of a model's trainable (LoRA) parameters, batched with ``torch.func``
(``vmap`` over ``grad`` of a per-example loss through ``functional_call``), with a one-at-a-time
loop as the fallback and the reference (LESS, arXiv 2402.04333, Sec. 4.1, uses batch size 1).

The loss of one example is the causal-LM loss over its non-padding tokens (labels -100 are ignored),
with right padding and no attention mask: a causal model's real tokens never attend to later pads, so
each padded row gives the same loss as the unpadded example (this is also what keeps the forward
free of data-dependent mask code that ``vmap`` cannot trace). For the same reason the columns after
the last labelled token of a call's rows are cut off before the gradients are taken (``trim``):
nothing before them attends to them, so the gradients are unchanged and a call of short rows does not
pay for the pool's longest one.

Speed notes (benchmarks/select/results_throughput.md): ``vmap`` runs every op once for the whole call
instead of once per example; the examples per call (``LessConfig.grad_batch``) trade speed for memory
(the call holds N x D gradients). PyTorch has no ``vmap`` batching rule for CPU SDPA attention, so that
op falls back to a per-example loop inside ``vmap``; switching the model to eager attention, or SDPA
to its decomposed math backend, under ``vmap`` was measured and was slower on CPU than that fallback
(the fused per-example kernel wins), so the model's attention is left as it is. Differentiating the
sum of a vmapped per-example loss with respect to per-example copies of the LoRA parameters (grad of
vmap instead of vmap of grad) was also measured and was slower.

Dimension letters: N examples, T tokens, D trainable parameters (flattened).

Not covered: masked LMs (they need the attention mask), models whose forward ``vmap`` cannot trace
(``batched=None`` falls back to the loop and says so).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that get gradients (detached), in ``named_parameters`` order."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _loss_one(model: nn.Module):
    from torch.func import functional_call

    def loss(params, ids, labels):  # ids, labels: (T,)
        return functional_call(model, params, args=(), kwargs={"input_ids": ids[None], "labels": labels[None]}).loss

    return loss


def trim(input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) (N, T) without the trailing columns where no row has a label (N, T' <= T)."""
    labelled = (labels != -100).any(dim=0).nonzero()  # (k, 1)
    width = int(labelled.max()) + 1 if labelled.numel() else 1
    return input_ids[:, :width], labels[:, :width]


def _flat(g: dict[str, torch.Tensor], names: list[str], n: int) -> torch.Tensor:
    return torch.cat([g[k].reshape(n, -1) for k in names], dim=1)  # (N, D)


def per_example_grads(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                      batched: bool | None = True) -> tuple[torch.Tensor, bool]:
    """(gradients (N, D) flattened in ``trainable`` order, whether vmap was used).

    ``batched=True``: vmap (errors propagate); ``False``: one backward per example; ``None``: vmap,
    falling back to the loop with a warning when the model cannot be traced.
    """
    from torch.func import grad, vmap

    params = trainable(model)
    names = list(params)
    fn = grad(_loss_one(model))
    input_ids, labels = trim(input_ids, labels)
    if batched is not False:
        try:
            g = vmap(fn, in_dims=(None, 0, 0))(params, input_ids, labels)  # name -> (N, *shape)
            return _flat(g, names, input_ids.shape[0]), True
        except (RuntimeError, NotImplementedError) as e:
            if batched:
                raise
            warnings.warn(f"per-example gradients: vmap failed ({e}); using one backward pass per example")
    rows = [_flat(fn(params, i, lab), names, 1) for i, lab in zip(input_ids, labels)]
    return torch.cat(rows, dim=0), False
