"""Seeded randomness without touching global state."""

from __future__ import annotations

import numpy as np

SeedLike = int | np.random.Generator | None


def as_rng(seed: SeedLike) -> np.random.Generator:
    """Return a numpy Generator for ``seed`` (an int, a Generator, or None for fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def as_seed(seed: SeedLike) -> int:
    """Return an int seed (for torch / numba) derived from ``seed`` without using global state."""
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return int(seed)
    return int(as_rng(seed).integers(0, 2**31 - 1))
