"""MaxQ reproducibility kit: N:M sparse training with multi-axis soft masks (CVPR 2024).

The package keeps the method in pure tensor functions (:mod:`maxq.masks`), the module wrapper
separate (:mod:`maxq.sparse`), and everything else (training, data, records, reports) around them.
Heavy submodules are imported lazily so ``import maxq`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "nm_mask": "maxq.masks",
    "maxq_mask": "maxq.masks",
    "sparsify": "maxq.sparse",
    "fold": "maxq.sparse",
    "check_nm": "maxq.sparse",
    "describe": "maxq.sparse",
    "set_dense_fraction": "maxq.sparse",
    "srste_decay_": "maxq.sparse",
    "refresh_masks": "maxq.sparse",
    "set_mask_interval": "maxq.sparse",
    "build_model": "maxq.models",
    "METHODS": "maxq.methods",
    "ARCHS": "maxq.models",
    "cost": "maxq.cost",
}
_SUBMODULES = {
    "masks", "schedules", "methods", "models", "sparse", "data", "records", "config", "train",
    "distributed", "studies", "results", "stats", "plots", "batch", "executors", "cost", "export",
    "kernels24", "int8", "cli",
}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        attr = "build" if name == "build_model" else name
        return getattr(module, attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"maxq.{name}")
    raise AttributeError(f"module 'maxq' has no attribute {name!r}")
