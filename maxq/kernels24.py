"""Real 2:4 kernels: matmul-shaped layers of a folded 2:4 model on semi-structured weights.

:func:`semi_structured_linearize` swaps matmul-shaped layers (linear, 1×1 conv) of a folded 2:4
model for ``torch.sparse.to_sparse_semi_structured`` weights (NVIDIA GPUs with compute capability
>= 8.0 only); :func:`sparse24_check` compares and times them against dense end to end, and
``benchmarks/sparse_kernels.py`` per layer. 3×3 convs stay dense: cuSPARSELt has no conv kernel.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from maxq import sparse as sp

__all__ = ["SPARSE24_CPU_MESSAGE", "sparse24_support", "SemiStructuredLinear",
           "SemiStructuredConv1x1", "semi_structured_linearize", "cuda_time", "sparse24_check"]

SPARSE24_CPU_MESSAGE = ("no 2:4 sparse kernel on CPU: torch.sparse.to_sparse_semi_structured needs an "
                        "NVIDIA GPU with compute capability >= 8.0")


def sparse24_support() -> tuple[bool, str]:
    """(available, reason): semi-structured kernels need CUDA and compute capability >= 8.0."""
    if not torch.cuda.is_available():
        return False, SPARSE24_CPU_MESSAGE
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return False, (f"no 2:4 sparse kernel on this GPU (compute capability {major}.{minor}): "
                       f"torch.sparse.to_sparse_semi_structured needs >= 8.0")
    return True, ""


class SemiStructuredLinear(nn.Module):
    """A linear layer whose weight is a ``SparseSemiStructuredTensor`` (2:4 kernels)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(to_sparse_semi_structured(weight.contiguous()), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = nn.functional.linear(x.reshape(-1, shape[-1]), self.weight, self.bias)
        return y.reshape(*shape[:-1], y.shape[-1])


class SemiStructuredConv1x1(nn.Module):
    """A 1×1 conv run as a matmul: (B·H·W, Ci) @ (Ci, Co) with a 2:4 sparse weight."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.stride = conv.stride
        self.linear = SemiStructuredLinear(conv.weight.detach().reshape(conv.out_channels, -1),
                                           conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1):
            x = x[:, :, ::self.stride[0], ::self.stride[1]]
        b, c, h, w = x.shape
        y = self.linear(x.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return y.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def semi_structured_shape_ok(rows: int, cols: int, dtype: torch.dtype) -> tuple[bool, str]:
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    cls = (SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS
           else SparseSemiStructuredTensorCUSPARSELT)
    c = cls._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if c is None:
        return False, f"dtype {dtype} not supported by {cls.__name__}"
    if rows % c.sparse_min_rows or cols % c.sparse_min_cols or rows < c.sparse_min_rows \
            or cols < c.sparse_min_cols:
        return False, (f"weight {rows}x{cols} not a multiple of ({c.sparse_min_rows}, "
                       f"{c.sparse_min_cols})")
    return True, ""


def semi_structured_linearize(model: nn.Module, *, dtype: torch.dtype = torch.float16,
                              layers: Iterable[str] | None = None) -> tuple[nn.Module, list[dict]]:
    """A copy of a folded model on CUDA in ``dtype`` with 2:4 matmul-shaped layers made sparse.

    Converted: every ``nn.Linear`` and 1×1 ``nn.Conv2d`` (groups 1, no padding/dilation) whose
    weight is a valid 2:4 pattern along the input channels and fits the kernel's shape
    constraints; ``layers`` restricts the candidates. Returns ``(model, rows)`` with one row per
    candidate: layer, converted, reason. 3×3 convs stay dense (cuSPARSELt has no conv kernel).
    """
    ok, reason = sparse24_support()
    if not ok:
        raise RuntimeError(reason)
    wanted = set(layers) if layers is not None else None
    model = copy.deepcopy(model).to(device="cuda", dtype=dtype).eval()
    rows = []
    for name, module in list(model.named_modules()):
        if wanted is not None and name not in wanted:
            continue
        if isinstance(module, nn.Linear):
            weight = module.weight.detach()
        elif (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
              and module.padding in ((0, 0), 0) and module.dilation == (1, 1)):
            weight = module.weight.detach().reshape(module.out_channels, -1)
        else:
            continue
        if weight.shape[1] % 4 or int(sp.block_nonzeros(weight, 4).max()) > 2:
            rows.append({"layer": name, "converted": False, "reason": "weight is not 2:4"})
            continue
        fits, why = semi_structured_shape_ok(*weight.shape, dtype)
        if not fits:
            rows.append({"layer": name, "converted": False, "reason": why})
            continue
        new = (SemiStructuredLinear(weight, module.bias) if isinstance(module, nn.Linear)
               else SemiStructuredConv1x1(module))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        rows.append({"layer": name, "converted": True, "reason": "2:4 semi-structured",
                     "shape": list(weight.shape)})
    return model, rows


def cuda_time(fn, *, warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


@torch.no_grad()
def sparse24_check(folded: nn.Module, loaded: Any = None, *,
                   image_size: int | None = None, in_channels: int | None = None,
                   dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16),
                   batch_sizes: Sequence[int] = (1, 8, 64), log=print) -> dict:
    """Convert, compare outputs and time dense vs 2:4 end to end (CUDA only). ``loaded`` (a
    :class:`maxq.export.LoadedRun` or None) gives the input size and channels unless given."""
    ok, reason = sparse24_support()
    if not ok:
        return {"skipped": reason}
    size = image_size or (loaded.image_size if loaded else 224)
    chans = in_channels or (loaded.in_channels if loaded else 3)
    results = []
    for dtype in dtypes:
        dense = copy.deepcopy(folded).to(device="cuda", dtype=dtype).eval()
        sparse, rows = semi_structured_linearize(folded, dtype=dtype)
        n_conv = sum(r["converted"] for r in rows)
        for batch in batch_sizes:
            x = torch.randn(batch, chans, size, size, device="cuda", dtype=dtype)
            ref, got = dense(x).float(), sparse(x).float()
            diff = float((ref - got).abs().max())
            rel = diff / max(float(ref.abs().max()), 1e-6)
            t_dense = cuda_time(lambda: dense(x))
            t_sparse = cuda_time(lambda: sparse(x))
            row = {"dtype": str(dtype).replace("torch.", ""), "batch": batch,
                   "converted_layers": n_conv, "dense_ms": t_dense, "sparse_ms": t_sparse,
                   "speedup": t_dense / t_sparse, "max_abs_diff": diff, "max_rel_diff": rel}
            results.append(row)
            log(f"{row['dtype']:>8} batch {batch:>4}: dense {t_dense:.3f} ms, 2:4 {t_sparse:.3f} ms "
                f"({row['speedup']:.2f}x), {n_conv} layers converted, max abs diff {diff:.3g}")
    return {"device": torch.cuda.get_device_name(), "image_size": size, "rows": results,
            "converted": rows}
