"""Seeded randomness without touching global state."""

from __future__ import annotations

import numpy as np

SeedLike = int | np.random.Generator | None


def check_seed(seed: SeedLike) -> None:
    """Refuse what numpy would refuse deep inside a computation, or take silently (a bool)."""
    if seed is None or isinstance(seed, np.random.Generator):
        return
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool) and seed >= 0:
        return
    raise ValueError(f"seed must be a non-negative integer, a numpy Generator or None, got {seed!r}.")


def as_rng(seed: SeedLike) -> np.random.Generator:
    """Return a numpy Generator for ``seed`` (an int >= 0, a Generator, or None for fresh entropy)."""
    check_seed(seed)
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def as_seed(seed: SeedLike) -> int:
    """Return an int seed (for torch / numba) derived from ``seed`` without using global state."""
    check_seed(seed)
    if isinstance(seed, int | np.integer):
        return int(seed)
    return int(as_rng(seed).integers(0, 2**31 - 1))
