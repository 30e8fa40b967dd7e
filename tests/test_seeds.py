"""Every seeded tool refuses a seed numpy cannot take, in its own words and before any work."""

from __future__ import annotations

import re

import numpy as np
import pytest

import loki as lk
from loki._utils._rng import as_rng, as_seed

MESSAGE = r"^seed must be a non-negative integer, a numpy Generator or None, got {}\.$"


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", np.float64(2.0)])
def test_bad_seeds_are_refused_by_the_seeded_tools(seed):
    """numpy said "expected non-negative integer" or "SeedSequence expects int" (naming no parameter), and
    took True as 1."""
    match = MESSAGE.format(re.escape(repr(seed)))
    with pytest.raises(ValueError, match=match):
        lk.datasets.synthetic_tissue(20, 10, 2, seed=seed)
    tissue = lk.datasets.synthetic_tissue(20, 10, 2, seed=0)
    with pytest.raises(ValueError, match=match):
        lk.datasets.synthetic_reference(tissue, 5, seed=seed)
    with pytest.raises(ValueError, match=match):
        lk.datasets.transform_section(tissue, rotation_deg=10.0, seed=seed)
    moved = lk.datasets.transform_section(tissue, rotation_deg=10.0, seed=0)[0]
    with pytest.raises(ValueError, match=match):
        lk.tl.align(moved, target=tissue, method="rigid", seed=seed)
    assert "spatial_aligned" not in moved.obsm


@pytest.mark.parametrize(
    "seed",
    [
        0,
        np.int64(7),
        np.uint64(2**40),
        None,
        np.random.default_rng(1),
        np.random.SeedSequence(3),
        np.random.PCG64(4),
    ],
)
def test_good_seeds_pass(seed):
    assert isinstance(as_rng(seed), np.random.Generator)
    assert as_seed(seed) >= 0


def test_a_random_state_is_pointed_to_default_rng():
    with pytest.raises(ValueError, match=r"for a RandomState, pass np\.random\.default_rng\(seed\) instead"):
        as_rng(np.random.RandomState(0))
