"""The sparse layer classes and their state: :class:`SparseConv2d` / :class:`SparseLinear`
(stock torch layers whose forward uses W ⊙ S), :class:`SparseState` (a layer's method, N:M,
tau, mask cache) and the straight-through gradients (method.md §6).

Below :mod:`maxq.sparse` (which puts these layers into models and re-exports every name here)
and :mod:`maxq.nm_layers` (the LBC, Bi-Mask and SpRe subclasses), so neither imports the other
back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from maxq import masks as mask_math
from maxq.methods import MethodSpec


# ----------------------------------------------------------------------------- gradients
class _SoftSTE(torch.autograd.Function):
    """Forward W ⊙ S; backward passes the gradient to W unchanged (straight-through)."""

    @staticmethod
    def forward(ctx, weight, mask):
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _HardSTE(torch.autograd.Function):
    """Forward W ⊙ S; backward multiplies the gradient by S."""

    @staticmethod
    def forward(ctx, weight, mask):
        ctx.save_for_backward(mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


_GRADIENTS = {"soft": _SoftSTE, "hard": _HardSTE}


# ----------------------------------------------------------------------------- layer state
@dataclass
class SparseState:
    """Per-layer settings of a sparse layer (plain attribute; not part of state_dict)."""

    method: MethodSpec
    N: int
    M: int
    tau: float
    dense_fraction: float = 0.0
    generator: torch.Generator | None = None
    cache: dict = field(default_factory=dict)
    every: int = 1                    # recompute the mask on every ``every``-th training forward
    workers: int | None = None        # threads for the model's refresh (None: torch's threads)
    forwards: int = 0                 # training forwards of the model so far (see refresh_masks)
    fresh_for: tuple | None = None    # (weight storage, version) the stored mask was made for

    @property
    def trainable(self) -> bool:
        """Whether training recomputes this layer's mask (all methods but the fixed ASP mask)."""
        return self.method.mask != "fixed"

    def compute_mask(self, weight: torch.Tensor) -> torch.Tensor:
        spec = self.method
        if spec.mask == "nm":
            return mask_math.nm_mask(weight, self.N, self.M)
        if spec.mask == "maxq_v1":
            return mask_math.maxq_v1_mask(weight, self.N, self.M)
        return mask_math.maxq_mask(
            weight, self.N, self.M,
            dense_fraction=self.dense_fraction if spec.incremental else 0.0,
            tau=self.tau, axis=spec.axis, selection=spec.selection,
            progressive=spec.progressive, generator=self.generator, cache=self.cache,
        )


class _SparseMixin:
    """Shared forward logic of :class:`SparseConv2d` and :class:`SparseLinear`."""

    maxq: SparseState
    weight_mask: torch.Tensor

    def masked_weight(self) -> torch.Tensor:
        state = self.maxq
        if self.training and state.trainable:
            fresh, state.fresh_for = state.fresh_for == _weight_key(self.weight), None
            if not fresh and state.every == 1:
                self.refresh_mask()       # called outside the model's forward (no pre-hook)
        return _GRADIENTS[state.method.gradient].apply(self.weight, self.weight_mask)

    def refresh_mask(self) -> None:
        """Recompute the stored mask from the current weight (what a training forward does)."""
        with torch.no_grad():
            self.weight_mask = self.maxq.compute_mask(self.weight.detach())
        self.maxq.fresh_for = _weight_key(self.weight)


def _weight_key(weight: torch.Tensor) -> tuple:
    """Identifies a weight's current values: its storage and in-place version counter."""
    return weight.data_ptr(), weight._version


class SparseConv2d(_SparseMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


class SparseLinear(_SparseMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.masked_weight(), self.bias)
