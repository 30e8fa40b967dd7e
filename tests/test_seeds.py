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


def _global_rng_states():
    import random

    import torch

    legacy = repr(np.random.get_state())  # noqa: NPY002 - the legacy global state is what is checked
    return legacy, torch.get_rng_state().numpy().tobytes(), random.getstate()


def test_seeded_tools_repeat_themselves_and_leave_the_global_generators_alone():
    """Same seed, same bits (seed=None draws from fresh entropy, not from np.random / torch / random);
    the global generators the caller seeded are neither read nor advanced."""
    import torch

    np.random.seed(1)  # noqa: NPY002 - a caller's seeded global generator
    torch.manual_seed(1)
    before = _global_rng_states()
    tissue = lk.datasets.synthetic_tissue(120, 20, 2, seed=0)
    moved = lk.datasets.transform_section(tissue, rotation_deg=20.0, warp=0.1, drop_fraction=0.1, seed=0)[0]
    reference = lk.datasets.synthetic_reference(tissue, 10, seed=0)

    def align(seed):
        kw = {"use": None, "method": "deformable", "max_iter": 10, "n_landmarks": 20, "max_points": 60}
        return lk.tl.align(moved, target=tissue, n_coarse=40, seed=seed, inplace=False, **kw).coords

    def decompose(seed):
        kw = {"cell_type_key": "cell_type", "method": "mapping", "epochs": 5, "seed": seed}
        return lk.tl.decompose(tissue, reference=reference, inplace=False, **kw).proportions.to_numpy()

    def finetune(seed):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 255, (8, 24, 24, 3), dtype=np.uint8)
        sentences = [f"G{i} G{i + 1} G{i + 2}" for i in range(8)]
        model = lk.models.load("loki-tiny", device="cpu", seed=seed)
        lk.models.finetune(model, images, sentences, epochs=1, batch_size=4, seed=seed, progress=False)
        return torch.cat([p.detach().flatten() for p in model.model.parameters()]).numpy()

    for run in (align, decompose, finetune):
        first, again, other = run(0), run(0), run(1)
        np.testing.assert_array_equal(first, again, err_msg=run.__name__)
        assert not np.array_equal(first, other), run.__name__
        run(None)
    assert _global_rng_states() == before
