"""Seeded randomness without touching global state."""

from __future__ import annotations

import numpy as np

SeedLike = int | np.random.Generator | None


def check_seed(seed: SeedLike) -> None:
    """Refuse what numpy would refuse deep inside a computation, or take silently (a bool).

    numpy's other seeds (a ``SeedSequence`` or a ``BitGenerator``) are taken as ``default_rng`` takes
    them; the legacy ``RandomState`` is refused with a pointer to ``default_rng``.
    """
    if seed is None or isinstance(
        seed, np.random.Generator | np.random.SeedSequence | np.random.BitGenerator
    ):
        return
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool) and seed >= 0:
        return
    hint = (
        " (for a RandomState, pass np.random.default_rng(seed) instead)"
        if isinstance(seed, np.random.RandomState)
        else ""
    )
    raise ValueError(f"seed must be a non-negative integer, a numpy Generator or None, got {seed!r}{hint}.")


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
