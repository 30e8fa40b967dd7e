from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import loki as lk


def test_pixel_features_block_average():
    patches = np.zeros((2, 24, 24, 3), np.uint8)
    patches[0] = 51  # constant 0.2
    patches[1, :, :12] = 255  # left half white
    feats = lk.baselines.pixel_features(patches, side=12)
    assert feats.shape == (2, 12 * 12 * 3)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats[0], 0.2, atol=1e-6)
    grid = feats[1].reshape(12, 12, 3)
    np.testing.assert_allclose(grid[:, :5], 1.0, atol=1e-3)
    np.testing.assert_allclose(grid[:, 7:], 0.0, atol=1e-3)


def test_pixel_features_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\)"):
        lk.baselines.pixel_features(np.zeros((2, 8, 8), np.uint8))


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")
def test_log_normalized_matches_scanpy():
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(30, 40)).astype(np.float32)
    counts[3] = 0  # an empty spot stays zero instead of dividing by zero
    adata = ad.AnnData(counts.copy())
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    np.testing.assert_allclose(lk.baselines.log_normalized(counts), adata.X, rtol=1e-5)
    np.testing.assert_allclose(lk.baselines.log_normalized(sp.csr_matrix(counts)), adata.X, rtol=1e-5)
    assert np.all(lk.baselines.log_normalized(counts)[3] == 0)


def _colour_coded(n, rng):
    """Patches whose mean red and blue drive two genes linearly, plus noise genes."""
    red, blue = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    patches = np.zeros((n, 16, 16, 3), np.uint8)
    patches[..., 0] = (red * 255).astype(np.uint8)[:, None, None]
    patches[..., 2] = (blue * 255).astype(np.uint8)[:, None, None]
    expression = np.column_stack([3 * red, 2 * blue, rng.normal(0, 0.05, (n, 3))])
    return patches, expression


def test_pixel_ridge_learns_a_linear_pixel_signal():
    rng = np.random.default_rng(1)
    train, y_train = _colour_coded(200, rng)
    test, y_test = _colour_coded(50, rng)
    ridge = lk.baselines.PixelRidge(n_pcs=None, side=4).fit(train, y_train)
    pred = ridge.predict_expression(test)
    assert pred.shape == y_test.shape
    for gene in (0, 1):
        assert np.corrcoef(pred[:, gene], y_test[:, gene])[0, 1] > 0.99
    mean_error = np.mean((y_train.mean(0) - y_test)[:, :2] ** 2)
    assert np.mean((pred - y_test)[:, :2] ** 2) < 0.01 * mean_error


def test_pixel_ridge_retrieval_ranks_own_spot_first():
    rng = np.random.default_rng(2)
    train, y_train = _colour_coded(200, rng)
    test, y_test = _colour_coded(40, rng)
    ridge = lk.baselines.PixelRidge(n_pcs=2, side=4).fit(train, y_train)
    sim = ridge.retrieval_similarity(test, y_test)
    assert sim.shape == (40, 40)
    assert lk.metrics.recall_at_k(sim, [0.05])[0] > 0.8  # random would give 0.05


def test_pixel_ridge_input_errors():
    rng = np.random.default_rng(3)
    patches, expression = _colour_coded(20, rng)
    with pytest.raises(ValueError, match="20 patches but 19 expression rows"):
        lk.baselines.PixelRidge(n_pcs=2).fit(patches, expression[:19])
    ridge = lk.baselines.PixelRidge(n_pcs=None, side=4).fit(patches, expression)
    with pytest.raises(ValueError, match="needs n_pcs"):
        ridge.retrieval_similarity(patches, expression)
