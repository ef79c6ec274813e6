"""Module wrappers of LBC, Bi-Mask and SpRe on the kit's sparse layers (:mod:`maxq.sparse`).

Each is a subclass of :class:`maxq.sparse.SparseConv2d`, chosen by the method's registry field
``layer`` (:data:`LAYERS`); the rule itself is in :mod:`maxq.nm_methods`. Every layer keeps the
stock ``weight`` and the ``weight_mask`` buffer the kit's statistics, checks, snapshots and
export read, and adds its own state as parameters/buffers (so it is in every checkpoint):

* :class:`LBCConv2d`: the learned scores ``lbc_alpha`` (G, C(M, N)); ``weight_mask`` is the union of
  the live combinations, exactly N:M once the schedule ends (epoch ``t_f``).
* :class:`BiMaskConv2d`: the permutation ``bimask_perm`` and the step counter ``bimask_step``;
  ``weight_mask`` is the forward mask m_f (row groups); the permutation draws come from the
  layer's generator (its state is in the checkpoint's ``sparse_rng``).
* :class:`SpReConv2d` (3x3 convs; 1x1 convs stay SR-STE layers): the branch weight
  ``spre_weight``, its BatchNorm ``spre_bn`` and the spatial mask ``spre_spatial``. The branch
  output is added to the output of the BatchNorm that follows the conv (a forward hook on that
  BN), i.e. ``BN_a(conv(x, W_a⊙m)) + BN_b(conv(x, W_b⊙m⊙s))`` as in the authors' blocks.

Every layer folds its extra state away in :func:`maxq.sparse.fold` (``fold_method``), so the
exported model is the stock model with N:M weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maxq import nm_methods as rules
from maxq.sparse_layers import SparseConv2d, _weight_key


def _ensure_fresh(layer: SparseConv2d) -> None:
    """The stored mask is the current weight's (what :meth:`_SparseMixin.masked_weight` does)."""
    state = layer.maxq
    fresh, state.fresh_for = state.fresh_for == _weight_key(layer.weight), None
    if not fresh and state.every == 1:
        layer.refresh_mask()


# ============================================================================ LBC
class LBCConv2d(SparseConv2d):
    """LBC (NeurIPS'22): learned combination scores, removed on a cubic schedule."""

    #: t_f as a fraction of the run's epochs (the authors' README: t_i = 0, t_f = 60 of 120)
    SCHEDULE_END = 0.5

    def setup_method(self, model: nn.Module, name: str, seed: int, index: int) -> None:
        N, M = self.maxq.N, self.maxq.M
        groups = self.weight.numel() // M
        self.lbc_alpha = nn.Parameter(rules.lbc_initial_scores(groups, N, M).to(self.weight))
        self.register_buffer("lbc_combinations", rules.lbc_combinations(N, M).to(self.weight),
                             persistent=False)
        self.lbc_k = 0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        C = self.lbc_alpha.shape[1]
        self.lbc_k = rules.lbc_removed(epoch, C, 0, self.schedule_end(epochs))
        # the authors freeze the scores once one combination is left (no grad, no decay)
        self.lbc_alpha.requires_grad_(self.lbc_k < C - 1)

    @classmethod
    def schedule_end(cls, epochs: int) -> int:
        return max(1, int(round(cls.SCHEDULE_END * epochs)))

    def _mask(self) -> torch.Tensor:
        soft = rules.lbc_mask(self.lbc_alpha, self.lbc_combinations.to(self.lbc_alpha.dtype))
        return rules.from_input_groups(soft, self.weight.shape).to(self.weight.dtype)

    def refresh_mask(self) -> None:
        with torch.no_grad():
            self.weight_mask = self._mask()
        self.maxq.fresh_for = _weight_key(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            rules.lbc_remove_(self.lbc_alpha.data, self.lbc_k)
            mask = self._mask()
            self.weight_mask = mask.detach()
            self.maxq.fresh_for = None
            return self._conv_forward(x, self.weight * mask, self.bias)
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)

    def fold_method(self, model: nn.Module) -> None:
        del self._parameters["lbc_alpha"]
        del self._buffers["lbc_combinations"]


# ============================================================================ Bi-Mask
class BiMaskConv2d(SparseConv2d):
    """Bi-Mask (ICML'23): forward mask over row groups, sparser backward over permuted outputs."""

    #: the README's ``--iter 100 --greedy_num 100``
    PERMUTATION_INTERVAL = 100
    CANDIDATES = 100

    def setup_method(self, model: nn.Module, name: str, seed: int, index: int) -> None:
        out = self.weight.shape[0]
        self.register_buffer("bimask_perm", torch.arange(out, device=self.weight.device))
        self.register_buffer("bimask_step", torch.zeros((), dtype=torch.long,
                                                        device=self.weight.device))
        self.maxq.generator = torch.Generator().manual_seed(seed * 100003 + index)

    def refresh_mask(self) -> None:
        with torch.no_grad():
            self.weight_mask = rules.row_nm_mask(self.weight, self.maxq.N, self.maxq.M)
        self.maxq.fresh_for = _weight_key(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv_forward(x, self.weight * self.weight_mask, self.bias)
        _ensure_fresh(self)
        N, M = self.maxq.N, self.maxq.M
        with torch.no_grad():
            self.bimask_step += 1
            if int(self.bimask_step) % self.PERMUTATION_INTERVAL == 0:
                self.bimask_perm.copy_(rules.bimask_search_permutation(
                    self.weight, self.weight_mask, N, M, self.CANDIDATES, self.maxq.generator))
            backward_mask = rules.bimask_backward_mask(self.weight, self.weight_mask,
                                                       self.bimask_perm, N, M)
        return rules.BiMaskConv2dFunction.apply(
            x, self.weight, self.weight_mask, backward_mask, self.bias, self.stride,
            self.padding, self.dilation, self.groups)

    def fold_method(self, model: nn.Module) -> None:
        del self._buffers["bimask_perm"]
        del self._buffers["bimask_step"]


# ============================================================================ SpRe
def _add_branch(bn: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of the BatchNorm after a :class:`SpReConv2d`: add the branch output."""
    (conv,) = bn._spre_source
    branch, conv._spre_branch = conv._spre_branch, None
    return output if branch is None else output + branch


def _following_bn(model: nn.Module, name: str, channels: int) -> str | None:
    """Name of the first BatchNorm2d with ``channels`` features after module ``name`` in
    ``named_modules`` order (the authors pair branches by that order too)."""
    seen = False
    for other, module in model.named_modules():
        if other == name:
            seen = True
        elif seen and isinstance(module, nn.BatchNorm2d) and module.num_features == channels:
            return other
        elif seen and isinstance(module, nn.Conv2d):
            return None
    return None


class SpReConv2d(SparseConv2d):
    """SpRe: an SR-STE 3x3 conv plus a training-time branch W_b ⊙ m ⊙ s with its own BN."""

    def setup_method(self, model: nn.Module, name: str, seed: int, index: int) -> None:
        bn_name = _following_bn(model, name, self.out_channels)
        if bn_name is None:
            raise ValueError(f"SpRe: no BatchNorm2d follows conv {name}; the branch has nothing "
                             f"to be added to")
        bn = model.get_submodule(bn_name)
        branch = torch.empty_like(self.weight)
        nn.init.kaiming_uniform_(branch, a=math.sqrt(5))      # the stock conv initialisation
        self.spre_weight = nn.Parameter(branch)
        self.spre_bn = nn.BatchNorm2d(self.out_channels, eps=bn.eps, momentum=bn.momentum).to(
            self.weight.device)
        kh, kw = self.weight.shape[2:]
        self.register_buffer("spre_spatial", torch.ones(kh, kw, dtype=self.weight.dtype,
                                                        device=self.weight.device))
        self.spre_target = bn_name
        self._spre_branch = None
        bn._spre_source = [self]          # a list: not registered as a submodule
        bn.register_forward_hook(_add_branch)

    def branch_weight(self) -> torch.Tensor:
        """W_b ⊙ m ⊙ s: the branch shares the main branch's N:M support; W_b's pruned entries get
        no loss gradient (no straight-through)."""
        return self.spre_weight * (self.weight_mask * self.spre_spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.masked_weight(), self.bias)
        if self.training:
            with torch.no_grad():
                self.spre_spatial.copy_(rules.spre_spatial_mask(self.weight, self.maxq.N,
                                                                self.maxq.M))
        self._spre_branch = self.spre_bn(F.conv2d(x, self.branch_weight(), None, self.stride,
                                                  self.padding, self.dilation, self.groups))
        return out

    @torch.no_grad()
    def fold_method(self, model: nn.Module) -> None:
        """Fold the branch and its BN into this conv and the following BN (eval statistics);
        ``self.weight`` already holds W_a ⊙ m."""
        bn = model.get_submodule(self.spre_target)
        weight, bias = rules.spre_fold_stock(self.weight, bn, self.branch_weight(), self.spre_bn)
        self.weight.copy_(weight)
        bn.bias.copy_(bias)
        for key, hook in list(bn._forward_hooks.items()):
            if hook is _add_branch:
                del bn._forward_hooks[key]
        del bn._spre_source
        del self._parameters["spre_weight"]
        del self._modules["spre_bn"]
        del self._buffers["spre_spatial"]
        del self._spre_branch, self.spre_target


#: layer family (``MethodSpec.layer``) -> (layer class for kxk convs, for 1x1 convs)
LAYERS: dict[str, tuple[type, type]] = {
    "lbc": (LBCConv2d, LBCConv2d),
    "bimask": (BiMaskConv2d, BiMaskConv2d),
    "spre": (SpReConv2d, SparseConv2d),
}


def layer_class(family: str, module: nn.Module) -> type:
    """The sparse class of ``module`` (a Conv2d) for the method family ``family``."""
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"method layer {family!r} handles convolutions only; got "
                         f"{type(module).__name__}")
    kxk, one = LAYERS[family]
    return kxk if tuple(module.kernel_size) != (1, 1) else one
