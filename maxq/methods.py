"""Registry of sparse-training methods, named as the seed's ``--conv-bn-type``.

Each :class:`MethodSpec` says what the mask is, how it is computed and how gradients flow; the
module wrapper in :mod:`maxq.sparse` reads only these fields (no if-chains on names).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    name: str
    #: "none" (dense), "nm" (hard N:M every step), "maxq" (soft multi-axis mask every step),
    #: "maxq_v1" (the authors' V1 mask every step), "fixed" (N:M by magnitude once, at sparsify
    #: time, then frozen: ASP)
    mask: str
    #: "soft": straight-through, the gradient reaches every latent weight unchanged;
    #: "hard": gradient multiplied by the mask
    gradient: str = "soft"
    #: axis queries of MaxQ: "soft" (sigmoid), "hard" (0/1 indicators, the authors' V1), "none"
    axis: str = "none"
    #: grow the share of N:M blocks over the --increase-start..--increase-end window
    incremental: bool = False
    #: which blocks stay dense while the share grows: "smallest" | "largest" | "random" L1 norm
    selection: str = "smallest"
    #: progressive-N arm: every block prunes floor((M-N)(1-rho)) weights instead
    progressive: bool = False
    description: str = ""
    #: short name for tables and legends (a study may override it in [study].method_labels)
    label: str = ""
    #: matplotlib colour of the method in every figure; None: one picked by position
    color: str | None = None
    #: layer family of a method with its own layer class and state (maxq.nm_layers.LAYERS:
    #: "lbc", "bimask", "spre"); "" for the kit's SparseConv2d/SparseLinear
    layer: str = ""
    #: N:M groups of the mask: "input" (M consecutive input channels at fixed (o, kh, kw)) or
    #: "row" (M consecutive entries of the flattened (in, kh, kw) row: Bi-Mask's forward mask)
    grouping: str = "input"
    #: the training loop adds the SR-STE term lambda (1 - m) W (--decay) to this method's gradient
    srste_decay: bool = True

    @property
    def sparse(self) -> bool:
        return self.mask != "none"

    @property
    def maxq(self) -> bool:
        """A MaxQ variant (full method or ablation arm): its masks are multi-axis soft masks
        whose N:M share grows, the curves and heatmaps the report shows for MaxQ."""
        return self.mask in ("maxq", "maxq_v1")


_SPECS = [
    MethodSpec("DenseConv2dBN", "none", description="dense baseline, no mask", label="dense",
               color="0.45"),
    MethodSpec("SoftSRSTEConv2dBN", "nm", "soft",
               description="SR-STE: hard N:M mask every step, straight-through gradient",
               label="SR-STE", color="C1"),
    MethodSpec("HardSRSTEConv2dBN", "nm", "hard",
               description="SR-STE with the gradient masked", label="SR-STE (hard grad)"),
    MethodSpec("SoftMaxQConv2DBN", "maxq", "soft", "soft", True,
               description="full MaxQ: soft multi-axis mask, incremental N:M share, soft STE",
               label="MaxQ", color="C0"),
    MethodSpec("HardMaxQConv2DBN", "maxq", "hard", "soft", True,
               description="full MaxQ with the gradient multiplied by the mask",
               label="MaxQ (hard grad)"),
    MethodSpec("MaxQHardAxis", "maxq", "soft", "hard", True,
               description="ablation: full MaxQ with 0/1 axis indicators instead of sigmoids "
                           "(kernel-axis term on kxk convs only, incremental share); not the "
                           "authors' V1", label="MaxQ hard axis"),
    MethodSpec("MaxQV1", "maxq_v1", "soft", "hard", False,
               description="ablation: the authors' V1 (mullt_axis_query_v1): 0/1 filter- and "
                           "kernel-axis indicators, the kernel term on 1x1 convs too, no "
                           "incremental sparsity", label="MaxQV1"),
    MethodSpec("MaxQNoIncremental", "maxq", "soft", "soft", False,
               description="ablation: soft-axis MaxQ, plain N:M from the first step",
               label="MaxQ no incremental"),
    MethodSpec("MaxQInverseSelection", "maxq", "soft", "soft", True, "largest",
               description="ablation: largest-L1 blocks stay dense", label="MaxQ largest dense"),
    MethodSpec("MaxQRandomSelection", "maxq", "soft", "soft", True, "random",
               description="ablation: random blocks stay dense (redrawn each update)",
               label="MaxQ random dense"),
    MethodSpec("MaxQProgressiveN", "maxq", "soft", "soft", True, progressive=True,
               description="ablation: every block prunes floor((M-N)(1-rho)) weights",
               label="MaxQ progressive N"),
    MethodSpec("LBC", "lbc", "hard", layer="lbc", srste_decay=False,
               description="LBC (Zhang et al., NeurIPS'22): learned scores over the C(M,N) "
                           "combinations per group, removed on a cubic schedule to epoch "
                           "epochs/2; masked weight gradient, no SR-STE term; denser than N:M "
                           "until the schedule ends", label="LBC", color="C2"),
    MethodSpec("BiMask", "nm", "soft", layer="bimask", grouping="row",
               description="Bi-Mask (Zhang et al., ICML'23): forward top-N over the flattened "
                           "(in, kh, kw) row, backward mask over permuted output channels for "
                           "dL/dx, dense dL/dW + SR-STE term", label="Bi-Mask", color="C3"),
    MethodSpec("SpRe", "nm", "soft", layer="spre",
               description="SpRe (Zhang et al., TPAMI'25): SR-STE plus a training-time 3x3 "
                           "branch W_b*m*s with its own BN, s from unstructured spatial "
                           "density; folded into the one N:M conv at export",
               label="SpRe", color="C4"),
    MethodSpec("ASPFixedMask", "fixed", "hard",
               description="ASP-style: magnitude N:M of the given (dense) weights, mask frozen",
               label="ASP"),
]

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}


def label(name: str) -> str:
    """The short name of a method for tables and legends (the name itself if unknown)."""
    spec = METHODS.get(name)
    return spec.label if spec is not None and spec.label else str(name)


def is_maxq(name: str) -> bool:
    """Whether ``name`` is a registered MaxQ variant (:attr:`MethodSpec.maxq`)."""
    spec = METHODS.get(name)
    return spec is not None and spec.maxq


def is_dense(name: str) -> bool:
    """Whether ``name`` is a registered method without a mask (the dense baseline)."""
    spec = METHODS.get(name)
    return spec is not None and not spec.sparse


def get(name: str) -> MethodSpec:
    """The spec of a method name; ``ValueError`` listing the allowed names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"method (--conv-bn-type) must be one of {', '.join(METHODS)}; got {name!r}"
        ) from None
