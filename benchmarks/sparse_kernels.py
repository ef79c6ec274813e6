"""Real 2:4 sparse kernels vs dense, side by side (NVIDIA GPU with compute capability >= 8.0).

Two tables:

1. **matmul**: the matmul-shaped layers of ResNet-50 at 224² (every distinct 1×1 conv shape and
   the classifier) as ``F.linear`` with tokens = batch · H · W: dense weight vs the same 2:4 weight
   as ``torch.sparse.to_sparse_semi_structured``; fp16 and bf16; a few batch sizes.
2. **model**: a folded 2:4 model (``--run RUN_DIR`` for a trained one, else ResNet-50 sparsified
   2:4 with SR-STE magnitude masks at initialisation), dense vs
   :func:`maxq.kernels24.semi_structured_linearize` (1×1 convs and linears on 2:4 kernels; 3×3 convs
   stay dense, there is no semi-structured conv kernel), end to end.

Every row also checks the outputs (max abs / relative difference against dense). On a machine
without such a GPU the script says that no 2:4 kernel exists there and exits 0.

    python benchmarks/sparse_kernels.py [--run RUN_DIR] [--batch-sizes 1 8 64]
        [--dtypes float16 bfloat16] [--out results.csv] [--skip-model]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maxq import export, kernels24  # noqa: E402

#: ResNet-50 @224: (name, out, in, spatial positions per image) of its distinct matmul shapes
RESNET50_MATMULS = (
    ("layer1 1x1 reduce", 64, 256, 56 * 56),
    ("layer1 1x1 expand", 256, 64, 56 * 56),
    ("layer2 1x1 reduce", 128, 512, 28 * 28),
    ("layer2 1x1 expand", 512, 128, 28 * 28),
    ("layer3 1x1 reduce", 256, 1024, 14 * 14),
    ("layer3 1x1 expand", 1024, 256, 14 * 14),
    ("layer4 1x1 reduce", 512, 2048, 7 * 7),
    ("layer4 1x1 expand", 2048, 512, 7 * 7),
    ("layer4 downsample", 2048, 1024, 7 * 7),
    ("fc (if it were sparse)", 1000, 2048, 1),
)


def _two_four(out_f: int, in_f: int, dtype, generator) -> torch.Tensor:
    """A random weight with a 2:4 pattern along the input dim (the two largest of each 4 kept)."""
    w = torch.randn(out_f, in_f, generator=generator)
    blocks = w.reshape(-1, 4)
    keep = blocks.abs().topk(2, dim=1).indices
    mask = torch.zeros_like(blocks).scatter_(1, keep, 1.0)
    return (blocks * mask).reshape(out_f, in_f).to(device="cuda", dtype=dtype)


@torch.no_grad()
def matmul_table(batch_sizes, dtypes, log=print) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    rows = []
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for name, out_f, in_f, positions in RESNET50_MATMULS:
            w = _two_four(out_f, in_f, dtype, g)
            ok, why = kernels24.semi_structured_shape_ok(out_f, in_f, dtype)
            if not ok:
                log(f"skip {name}: {why}")
                continue
            ws = to_sparse_semi_structured(w)
            for batch in batch_sizes:
                tokens = batch * positions
                x = torch.randn(tokens, in_f, device="cuda", dtype=dtype)
                ref = F.linear(x, w)
                got = F.linear(x, ws)
                diff = float((ref.float() - got.float()).abs().max())
                rel = diff / max(float(ref.float().abs().max()), 1e-6)
                t_dense = kernels24.cuda_time(lambda: F.linear(x, w))
                t_sparse = kernels24.cuda_time(lambda: F.linear(x, ws))
                flops = 2.0 * tokens * in_f * out_f
                row = {"table": "matmul", "layer": name, "dtype": str(dtype).replace("torch.", ""),
                       "batch": batch, "m_tokens": tokens, "k_in": in_f, "n_out": out_f,
                       "dense_ms": t_dense, "sparse_ms": t_sparse, "speedup": t_dense / t_sparse,
                       "dense_tflops": flops / t_dense / 1e9, "max_abs_diff": diff,
                       "max_rel_diff": rel}
                rows.append(row)
                log(f"{row['dtype']:>8} {name:<24} batch {batch:>4} ({tokens:>7}x{in_f}x{out_f}): "
                    f"dense {t_dense:8.3f} ms  2:4 {t_sparse:8.3f} ms  {row['speedup']:5.2f}x  "
                    f"rel diff {rel:.1e}")
    return rows


def _model_for(run: str | None):
    if run is not None:
        loaded, stock, _ = export.load_folded(run)
        return stock, loaded.in_channels, loaded.image_size, f"{loaded.arch} {loaded.N}:{loaded.M}"
    from maxq import models, sparse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sparse.sparsify(models.build("resnet50"), "SoftSRSTEConv2dBN", 2, 4).eval()
    return sparse.fold(model), 3, 224, "resnet50 2:4 (init weights)"


def model_table(run, batch_sizes, dtypes, log=print) -> list[dict]:
    folded, chans, size, label = _model_for(run)
    log(f"model: {label} @ {size}x{size}")
    report = kernels24.sparse24_check(folded, None, image_size=size, in_channels=chans, dtypes=dtypes,
                               batch_sizes=batch_sizes, log=log)
    return [{"table": "model", "layer": label, **r} for r in report["rows"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="run directory of a 2:4-compatible run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"],
                        choices=["float16", "bfloat16"])
    parser.add_argument("--out", default=None, help="write the rows as CSV")
    parser.add_argument("--skip-model", action="store_true", help="matmul table only")
    parser.add_argument("--skip-matmul", action="store_true", help="model table only")
    args = parser.parse_args(argv)

    ok, reason = kernels24.sparse24_support()
    if not ok:
        print(reason)
        return 0
    dtypes = [getattr(torch, d) for d in args.dtypes]
    print(f"device: {torch.cuda.get_device_name()} (capability "
          f"{'.'.join(map(str, torch.cuda.get_device_capability()))}), torch {torch.__version__}")
    rows = []
    if not args.skip_matmul:
        rows += matmul_table(args.batch_sizes, dtypes)
    if not args.skip_model:
        rows += model_table(args.run, args.batch_sizes, dtypes)
    import pandas as pd

    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
