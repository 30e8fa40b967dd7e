from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData
from scipy.stats import kendalltau

import loki as lk


def test_alignment_error_and_spacing():
    truth = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    aligned = truth + np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    assert lk.metrics.alignment_error(aligned, truth) == pytest.approx(7.0 / 3.0)
    assert lk.metrics.alignment_error(aligned, truth, unit=0.5) == pytest.approx(14.0 / 3.0)
    assert lk.metrics.spot_spacing(truth) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        lk.metrics.alignment_error(aligned[:2], truth)
    with pytest.raises(ValueError, match="non-finite"):
        lk.metrics.alignment_error(np.where(aligned > 3, np.nan, aligned), truth)


def test_matched_expression_correlation_pairs_and_values():
    rng = np.random.default_rng(0)
    xy_t = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    xy_s = np.array([[2.1, 0.0], [0.05, 0.0], [1.0, 0.1]])
    et = rng.poisson(5, size=(4, 25)).astype(float)
    es = rng.poisson(5, size=(3, 25)).astype(float)
    res = lk.metrics.matched_expression_correlation(et, xy_t, sp.csr_matrix(es), xy_s, max_distance=0.5)
    np.testing.assert_array_equal(res["target_index"], [0, 1, 2])
    np.testing.assert_array_equal(res["source_index"], [1, 2, 0])
    for k, (i, j) in enumerate(zip(res["target_index"], res["source_index"], strict=True)):
        assert res["pearson"][k] == pytest.approx(np.corrcoef(et[i], es[j])[0, 1])
        assert res["kendall_tau"][k] == pytest.approx(kendalltau(et[i], es[j]).statistic)


def test_alignment_expression_scores_rewards_correct_alignment():
    tgt = lk.datasets.synthetic_tissue(n_spots=300, n_genes=80, seed=4)
    src, truth = lk.datasets.transform_section(tgt, rotation_deg=90.0, thin_counts=0.5, seed=1)
    src.obsm["good"] = truth.coords
    src.obsm["bad"] = truth.coords[np.random.default_rng(0).permutation(len(truth.coords))]
    good = lk.metrics.alignment_expression_scores(src, tgt, aligned_key="good", n_top_genes=50)
    bad = lk.metrics.alignment_expression_scores(src, tgt, aligned_key="bad", n_top_genes=50)
    assert good["n_pairs"] == tgt.n_obs
    assert good["pearson_median"] > bad["pearson_median"] + 0.1
    assert good["kendall_tau_median"] > bad["kendall_tau_median"]
    with pytest.raises(KeyError, match="spatial_aligned"):
        lk.metrics.alignment_expression_scores(src, tgt)
    other = AnnData(np.ones((3, 2)))
    other.var_names = ["x", "y"]
    other.obsm["spatial_aligned"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match="share"):
        lk.metrics.alignment_expression_scores(other, tgt)
