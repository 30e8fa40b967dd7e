"""The NNLS kernels of ``lk.tl.decompose(method="nnls")`` against scipy and pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from loki.tl import _nnls
from loki.tl._nnls import nnls_weights, type_means


def _nonnegative(rng, shape, zeros):
    x = rng.gamma(0.7, 3.0, size=shape)
    x[rng.random(shape) < zeros] = 0.0
    return x


@settings(max_examples=40, deadline=None)
@given(
    n_spots=st.integers(1, 40),
    n_types=st.integers(1, 5),
    n_features=st.integers(1, 12),
    block=st.integers(1, 8),
    zeros=st.sampled_from([0.0, 0.5, 0.9]),
    as_sparse=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_nnls_weights_solve_every_spot_like_scipy(
    n_spots, n_types, n_features, block, zeros, as_sparse, seed
):
    """Row i of the result is scipy's NNLS solution for spot i, for any number of spot blocks."""
    rng = np.random.default_rng(seed)
    profiles = _nonnegative(rng, (n_types, n_features), 0.3)
    spots = _nonnegative(rng, (n_spots, n_features), zeros)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_nnls, "_SPOT_BLOCK", block)  # several blocks, the last one partial
        got = nnls_weights(profiles, sp.csr_matrix(spots) if as_sparse else spots.astype(np.float32))
    assert got.shape == (n_spots, n_types)
    spots = spots.astype(np.float32).astype(np.float64) if not as_sparse else spots
    expected = np.array([scipy.optimize.nnls(profiles.T, s, maxiter=50 * n_types)[0] for s in spots])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_nnls_weights_reject_a_feature_count_mismatch():
    with pytest.raises(ValueError, match="profiles have 3 features but spots have 4"):
        nnls_weights(np.ones((2, 3)), np.ones((5, 4)))


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=6),
    n_features=st.integers(1, 9),
    as_sparse=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_type_means_are_groupby_means(sizes, n_features, as_sparse, seed):
    """Unequal groups (some empty) in shuffled order: every row is its group's mean; an empty group is 0."""
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    x = _nonnegative(rng, (len(groups), n_features), 0.5).astype(np.float32)
    got = type_means(sp.csr_matrix(x) if as_sparse else x, groups, len(sizes))
    assert got.shape == (len(sizes), n_features)
    assert got.dtype == np.float64
    expected = (
        pd.DataFrame(x.astype(np.float64)).groupby(groups).mean().reindex(range(len(sizes)), fill_value=0.0)
    )
    np.testing.assert_allclose(got, expected.to_numpy(), rtol=1e-12, atol=1e-12)
