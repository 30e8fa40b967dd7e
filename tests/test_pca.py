from __future__ import annotations

import numpy as np
import pytest

from loki._utils import _pca
from loki._utils._pca import column_mean, fit_pca


def _svd_reference(x: np.ndarray, k: int):
    """Components (largest loading positive) and variance ratio of a thin SVD of the centred ``x``."""
    centred = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:k] * np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
    return comps, sv[:k] ** 2 / (sv**2).sum()


def _embedding(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Rows with a well separated spectrum (column scales 1, 0.8, 0.64, ...) and an offset."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return (rng.normal(size=(n, d)) * 0.8 ** np.arange(d)) @ basis.T + 3.0


@pytest.mark.parametrize(("n", "d"), [(700, 24), (15, 40)])  # covariance route; more columns than rows
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fit_pca_matches_the_svd_over_row_blocks(monkeypatch, n, d, dtype):
    monkeypatch.setattr(_pca, "_BLOCK_VALUES", 64 * d)  # 64-row blocks: the sums cross block borders
    x = _embedding(n, d).astype(dtype)
    before = x.copy()
    pca = fit_pca(x, 3)
    comps, ratio = _svd_reference(x.astype(np.float64), 3)
    np.testing.assert_allclose(pca.components, comps, atol=1e-8)
    np.testing.assert_allclose(pca.explained_variance_ratio, ratio, rtol=1e-8)
    np.testing.assert_allclose(pca.mean, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pca.transform(x), (x - x.mean(axis=0)) @ comps.T, atol=1e-5)
    np.testing.assert_array_equal(x, before)  # the input is not centred in place


def test_fit_pca_on_several_arrays_is_the_pca_of_their_rows():
    x = _embedding(300, 10)
    parts = [x[:120], x[120:]]
    whole, split = fit_pca(x, 2), fit_pca(parts, 2)
    np.testing.assert_allclose(split.components, whole.components, atol=1e-12)
    np.testing.assert_allclose(split.transform(parts), whole.transform(x), atol=1e-10)
    np.testing.assert_allclose(column_mean(parts), x.mean(axis=0), atol=1e-12)


def test_fit_pca_component_count_and_bad_input():
    x = _embedding(5, 8)
    assert fit_pca(x, 10).components.shape == (5, 8)  # at most min(n, d)
    none = fit_pca(x, 0)
    assert none.components.shape == (0, 8)
    assert none.transform(x).shape == (5, 0)
    with pytest.raises(ValueError, match="same number of columns"):
        fit_pca([x, x[:, :3]], 2)
