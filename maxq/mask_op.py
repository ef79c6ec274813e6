"""The MaxQ mask as one registered PyTorch op, ``torch.ops.maxq.maxq_mask``.

``maxq_mask(weights, N, M, dense_fraction, tau, axis, selection, progressive)`` takes a stack
``(L, *shape)`` of equal-shaped conv or linear weights and returns their masks, a new tensor of
the same shape and dtype: ``out[l]`` is ``torch.equal`` to
``maxq.masks.maxq_mask(weights[l], N, M, ...)``. ``axis="none"`` with ``dense_fraction=0`` is the
hard N:M mask (``nm_mask``). Random dense blocks need a generator per layer, which an op cannot
take: ``selection="random"`` is refused here (call :func:`maxq.masks.maxq_mask_stack`).

Being a ``torch.library.custom_op`` with a fake (meta) kernel, the op is opaque to
``torch.compile``: a whole model's mask refresh can sit inside a compiled training step, and the
op runs its device's kernel: on the CPU, where the C kernel is built (:mod:`maxq.native`), one
cold C call per layer (faster on the CPU than the torch formulation, benchmarks/masks.py); on
CUDA and everywhere else :func:`maxq.masks.maxq_mask_stack`, the sync-free torch formulation,
once for the whole stack. The mask has no gradient (the straight-through estimators of
:mod:`maxq.sparse` route it), so the op registers none; call it on detached weights.
"""
from __future__ import annotations

import torch

from maxq import masks

OP_NAME = "maxq::maxq_mask"


def _validate(weights, N, M, dense_fraction, tau, axis, selection) -> None:
    masks._check(weights, N, M, dense_fraction=dense_fraction, tau=tau, axis=axis,
                 selection=selection, stacked=True)
    if selection == "random":
        raise ValueError("selection='random' needs one generator per layer, which the op "
                         "cannot take: use maxq.masks.maxq_mask_stack")


@torch.library.custom_op(OP_NAME, mutates_args=())
def maxq_mask(weights: torch.Tensor, N: int, M: int, dense_fraction: float, tau: float,
              axis: str, selection: str, progressive: bool) -> torch.Tensor:
    """Masks of a stack of equal-shaped weights (see the module doc)."""
    _validate(weights, N, M, dense_fraction, tau, axis, selection)
    return masks.maxq_mask_stack(weights, N, M, dense_fraction=dense_fraction, tau=tau,
                                 axis=axis, selection=selection, progressive=progressive)


@maxq_mask.register_kernel("cpu")
def _maxq_mask_cpu(weights, N, M, dense_fraction, tau, axis, selection, progressive):
    _validate(weights, N, M, dense_fraction, tau, axis, selection)
    if N == M or not masks._use_native(weights):
        return masks.maxq_mask_stack(weights, N, M, dense_fraction=dense_fraction, tau=tau,
                                     axis=axis, selection=selection, progressive=progressive)
    return torch.stack([masks.maxq_mask(w, N, M, dense_fraction=dense_fraction, tau=tau,
                                        axis=axis, selection=selection, progressive=progressive)
                        for w in weights.unbind(0)])


@maxq_mask.register_fake
def _maxq_mask_fake(weights, N, M, dense_fraction, tau, axis, selection, progressive):
    _validate(weights, N, M, dense_fraction, tau, axis, selection)
    return torch.empty_like(weights, memory_format=torch.contiguous_format)
