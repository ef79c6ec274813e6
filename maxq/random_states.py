"""Random states of a run: every RNG seeded from ``(seed, *parts)`` (the run's seed and, per
epoch, the epoch), and the RNG states a checkpoint stores and a resumed run restores."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

def seed_everything(seed: int, *parts: int) -> None:
    """Seed python, numpy and torch (all devices) from ``(seed, *parts)``."""
    s = int(np.random.SeedSequence([int(seed), *map(int, parts)]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
