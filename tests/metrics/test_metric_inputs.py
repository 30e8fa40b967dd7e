"""Inputs each public metric used to score without a word: NaN and None, collapsed or sparse input,
matrices where vectors are meant, floats where positions are meant, Series in another order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats
from anndata import AnnData
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import calinski_harabasz_score

import loki as lk
from loki import metrics


def test_calinski_harabasz_of_a_collapsed_embedding_is_nan_and_of_repeated_points_inf():
    """All points at one position (e.g. an encoder that collapsed) scored 3.19, a rounding artefact
    of the centroids, where eq. 17 divides 0 by 0; clusters that are each one point repeated scored
    whatever the rounding left of WCSS instead of inf."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 10)
    collapsed = np.tile(rng.random(768), (30, 1))
    assert np.isnan(metrics.calinski_harabasz(collapsed, labels))
    assert np.isnan(metrics.calinski_harabasz(collapsed.astype(np.float32), labels))
    repeated = np.repeat(rng.random((3, 768)) * 0.1, 10, axis=0)
    assert metrics.calinski_harabasz(repeated, labels) == np.inf
    # scikit-learn: 1.0 where WCSS is exactly 0, else what the rounding left, as the docstring says
    assert calinski_harabasz_score(np.ones((30, 4)), labels) == 1.0
    assert 1 < calinski_harabasz_score(collapsed, labels) < np.inf
    # one point off its cluster's position: a finite score again, as scikit-learn's
    off = repeated.copy()
    off[0, 0] += 0.5
    assert metrics.calinski_harabasz(off, labels) == pytest.approx(calinski_harabasz_score(off, labels))


@settings(max_examples=80, deadline=None)
@given(
    st.tuples(st.integers(1, 3), st.integers(4, 40)).flatmap(
        lambda mn: st.tuples(
            arrays(np.float64, (mn[0], 3), elements=st.integers(-2, 2).map(lambda v: 0.1 * v)),
            arrays(np.int64, mn[1], elements=st.integers(0, mn[0] - 1)),
            arrays(np.int64, mn[1], elements=st.integers(0, 3)),
        )
    )
)
def test_calinski_harabasz_is_eq_17_on_repeated_points(data):
    """Points drawn from 1-3 positions (a collapsed embedding, clusters of one point repeated): the
    score is scikit-learn's wherever eq. 17 is defined, inf where WCSS is 0 and NaN where BCSS is
    0 too, however the centroids round (0.1 + 0.1 + 0.1 is not 0.3)."""
    positions, which, labels = data
    x = positions[which]
    k = len(np.unique(labels))
    if not 1 < k < len(x):
        return
    got = metrics.calinski_harabasz(x, labels)
    centroids = {c: x[labels == c].mean(axis=0) for c in np.unique(labels)}
    one_point = all((x[labels == c] == x[labels == c][0]).all() for c in centroids)
    if one_point and (x == x[0]).all():
        assert np.isnan(got)
    elif one_point:
        assert got == np.inf
    else:
        assert got == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-9, abs=1e-12)


def test_calinski_harabasz_refuses_unlabelled_points_and_non_finite_values():
    """NaN labels formed a cluster of their own (np.unique gathers NaN), None labels raised numpy's
    "'<' not supported", and a NaN coordinate gave a NaN score."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2))
    with pytest.raises(ValueError, match=r"labels: 2 of 8 points have no label .*~pd.isna\(labels\)"):
        metrics.calinski_harabasz(x, [0, 0, 1, 1, 2, 2, np.nan, np.nan])
    with pytest.raises(ValueError, match="labels: 1 of 8 points have no label"):
        metrics.calinski_harabasz(x, ["a", "a", "b", "b", "c", "c", "c", None])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="x holds 1 NaN or infinite value"):
        metrics.calinski_harabasz(bad, [0, 0, 0, 0, 1, 1, 1, 1])


def test_calinski_harabasz_takes_sparse_points_and_labels_of_mixed_types():
    rng = np.random.default_rng(2)
    x = sp.random(60, 20, density=0.3, random_state=3, format="csr")
    labels = rng.integers(0, 3, 60)
    expected = calinski_harabasz_score(x.toarray(), labels)
    assert metrics.calinski_harabasz(x, labels) == pytest.approx(expected, rel=1e-12)
    assert metrics.calinski_harabasz(x.tocoo(), labels) == pytest.approx(expected, rel=1e-12)
    mixed = np.array(["tumour", 1, 2.5], dtype=object)[labels]  # np.unique cannot sort these
    assert metrics.calinski_harabasz(x.toarray(), mixed) == pytest.approx(expected, rel=1e-12)


def test_calinski_harabasz_on_real_expression_matches_sklearn():
    table = lk.datasets.mob("MOB1").tables["MOB1"]
    x = np.log1p(table.X.toarray() if sp.issparse(table.X) else np.asarray(table.X))
    labels = pd.cut(x[:, np.argmax(x.var(axis=0))], 4, labels=False)  # bins of the most variable gene
    assert metrics.calinski_harabasz(sp.csr_matrix(x), labels) == pytest.approx(
        calinski_harabasz_score(x, labels), rel=1e-10
    )


def test_kendall_tau_refuses_a_matrix_and_takes_a_sparse_row():
    """Two matrices gave one tau of all their values, columns mixed (pearson gives one per column)."""
    rng = np.random.default_rng(3)
    x, y = rng.random((5, 3)), rng.random((5, 3))
    with pytest.raises(
        ValueError, match=r"two vectors, but x has shape \(5, 3\); for one tau per column pass axis=0"
    ):
        metrics.kendall_tau(x, y)
    row_x, row_y = sp.csr_matrix(x)[1], sp.csr_matrix(y)[1]  # (1, 3) rows, as a sparse table gives them
    assert metrics.kendall_tau(row_x, row_y) == pytest.approx(scipy.stats.kendalltau(x[1], y[1]).statistic)
    assert metrics.kendall_tau(x[:, :1], y[:, 0]) == pytest.approx(
        scipy.stats.kendalltau(x[:, 0], y[:, 0]).statistic
    )
    y[2, 0] = np.nan  # the error says where, as pearson's does
    with pytest.raises(ValueError, match="x and y must be finite; y holds 1 NaN or infinite"):
        metrics.kendall_tau(x[:, 0], y[:, 0])


def test_kendall_tau_along_an_axis_gives_one_tau_per_column_or_row():
    """``kendall_tau`` refused tables, so one tau per gene (as ``pearson(..., axis=0)`` gives one
    coefficient per gene) took a loop over the columns."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, (7, 3)).astype(float)  # ties, as counts have
    y = x + rng.integers(0, 3, x.shape)
    expected = np.array([scipy.stats.kendalltau(x[:, j], y[:, j]).statistic for j in range(3)])
    np.testing.assert_allclose(metrics.kendall_tau(x, y, axis=0), expected, rtol=1e-12)
    np.testing.assert_allclose(metrics.kendall_tau(x.T, y.T, axis=1), expected, rtol=1e-12)
    np.testing.assert_allclose(metrics.kendall_tau(sp.csr_matrix(x), y, axis=-2), expected, rtol=1e-12)
    assert metrics.kendall_tau(x[:, 0], y[:, 0], axis=0) == pytest.approx(expected[0], rel=1e-12)
    with pytest.raises(ValueError, match=r"axis 2 is out of range for 2-D input of shape \(7, 3\)"):
        metrics.kendall_tau(x, y, axis=2)
    with pytest.raises(ValueError, match=r"same shape, got \(7, 3\) and \(7, 2\)"):
        metrics.kendall_tau(x, y[:, :2], axis=0)
    with pytest.raises(ValueError, match="needs at least 2 pairs, got 1"):
        metrics.kendall_tau(x[:1], y[:1], axis=0)
    with pytest.raises(ValueError, match=r"vectors or 2-D tables, got shape \(7, 3, 1\)"):
        metrics.kendall_tau(x[..., None], y[..., None], axis=0)


def test_pearson_names_an_axis_the_input_lacks():
    with pytest.raises(ValueError, match=r"axis 1 is out of range for 1-D input of shape \(3,\)"):
        metrics.pearson(np.arange(3.0), np.arange(3.0), axis=1)


def test_mse_refuses_non_finite_input_as_pearson_does():
    """One NaN made the error NaN (per gene: the gene's) while pearson refused it."""
    with pytest.raises(ValueError, match="y_true and y_pred must be finite; y_pred holds 1 NaN"):
        metrics.mse(np.ones((3, 2)), np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, 1.0]]), axis=0)


def test_js_divergence_and_ssim_take_sparse_proportions():
    """Sparse proportions (most spots hold few cell types) raised numpy's "setting an array element
    with a sequence", while pearson and mse take them."""
    rng = np.random.default_rng(4)
    p = rng.random((30, 4)) * (rng.random((30, 4)) < 0.5) + 1e-9
    q = rng.random((30, 4)) * (rng.random((30, 4)) < 0.5) + 1e-9
    np.testing.assert_array_equal(
        metrics.js_divergence(sp.csr_matrix(p), sp.csr_matrix(q), axis=0), metrics.js_divergence(p, q, axis=0)
    )
    np.testing.assert_array_equal(metrics.ssim(sp.csr_matrix(p), sp.csr_matrix(q)), metrics.ssim(p, q))


def test_ssim_map_refuses_nan_pixels_and_a_range_that_is_not_finite():
    """One NaN pixel turned 260 of 400 SSIM values NaN: the window sums run along each row."""
    rng = np.random.default_rng(5)
    x = rng.random((20, 20))
    y = x.copy()
    y[10, 3] = np.nan
    with pytest.raises(ValueError, match=r"y contains 1 non-finite value\(s\) .*rows \[10\]"):
        metrics.ssim_map(x, y, data_range=1.0)
    with pytest.raises(ValueError, match="data_range must be a positive number, got inf"):
        metrics.ssim_map(x, x, data_range=np.inf)


def test_rasterize_onto_a_grid_of_one_row_and_refuses_an_empty_grid():
    """grid=(1, n) gave 2 rows: the pixel scale took max(n_rows - 1, 1) rows of span."""
    coords = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    image, mask = metrics.rasterize(coords, np.arange(4.0), grid=(1, 4))
    assert image.shape == mask.shape == (1, 4)
    np.testing.assert_array_equal(image, [[0.0, 1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"at least 1 row and 1 column, got \(-3, 4\)"):
        metrics.rasterize(coords, np.arange(4.0), grid=(-3, 4))


def test_recall_at_k_refuses_nan_ranks_nan_k_and_float_targets():
    """A NaN rank counted as a miss, k=NaN gave 0, and targets 1.7 were truncated to column 1."""
    with pytest.raises(ValueError, match=r"1 are not, e.g. \[nan\]"):
        metrics.recall_at_k(np.array([1.0, np.nan, 3.0]), 0.5, n_candidates=4)
    with pytest.raises(ValueError, match=r"k must be a quantile in \(0, 1\], got nan"):
        metrics.recall_at_k(np.eye(4), float("nan"))
    with pytest.raises(ValueError, match="targets must be integer positions .*float64"):
        metrics.target_ranks(np.eye(3), [0.0, 1.7, 2.0])
    with pytest.raises(ValueError, match="targets must be integer positions"):
        metrics.recall_at_k(np.eye(3), 0.5, targets=np.array([0, np.nan, 2]))
    assert metrics.recall_at_k(np.eye(3), 1 / 3, targets=np.array([0, 1, 2], dtype=np.int32)) == 1.0


def test_impact_score_reads_series_by_method_and_refuses_unlike_cell_types():
    """A Series of means per method was iterated by value ("must name the same methods, got
    [0.1, 0.2]"); methods scored on different numbers of cell types were averaged as if alike."""
    js = pd.Series({"loki": 0.2, "tangram": 0.4, "uniform": 0.5})
    ssim = pd.Series({"uniform": 0.1, "loki": 0.7, "tangram": 0.5})
    expected = metrics.impact_score(js.to_dict(), ssim.to_dict())
    pd.testing.assert_series_equal(metrics.impact_score(js, ssim), expected)
    frame = pd.DataFrame({"loki": [0.1, 0.3], "tangram": [0.4, 0.4], "uniform": [0.5, 0.5]})
    pd.testing.assert_series_equal(metrics.impact_score(frame, ssim), expected)
    with pytest.raises(ValueError, match=r"differ in length: .*\"js_by_method\['b'\]\": 2"):
        metrics.impact_score({"a": [0.1, 0.2, 0.3], "b": [0.2, 0.3]}, {"a": 0.5, "b": 0.4})
    with pytest.raises(ValueError, match=r"ssim_by_method .* for method\(s\) \['b'\]"):
        metrics.impact_score({"a": 0.1, "b": 0.2}, {"a": [0.5, 0.5], "b": [0.3, np.nan]})
    with pytest.raises(TypeError, match="must map method names to values .*got list"):
        metrics.impact_score([0.1, 0.2], [0.5, 0.4])


def test_weighted_f1_matches_two_series_by_their_index():
    """Two .obs columns of tables whose spots are in different orders were compared by position."""
    truth = pd.Series(["tumour", "tumour", "stroma", "stroma", "fat"], index=list("abcde"))
    predicted = truth.iloc[[3, 0, 4, 1, 2]]  # the same labels, spots in another order
    assert metrics.weighted_f1(truth, predicted) == 1.0
    assert metrics.weighted_f1(truth.to_numpy(), predicted.to_numpy()) < 0.5  # arrays: by position
    with pytest.raises(ValueError, match="different rows .*only in y_pred: 'z'"):
        metrics.weighted_f1(truth, predicted.rename({"e": "z"}))


def test_matched_expression_correlation_matches_tables_by_gene_name():
    """A DataFrame was indexed by column where spot rows were meant (KeyError '[4, 5, ...] not in
    index'); two tables with their genes in different orders are matched by name, as pearson does."""
    rng = np.random.default_rng(6)
    genes = [f"g{i}" for i in range(6)]
    expr_t, expr_s = rng.random((12, 6)), rng.random((12, 6))
    xy = rng.random((12, 2)) * 10
    expected = metrics.matched_expression_correlation(expr_t, xy, expr_s, xy, max_distance=0.0)
    target = pd.DataFrame(expr_t, columns=genes)
    source = pd.DataFrame(expr_s, columns=genes)[genes[::-1]]
    got = metrics.matched_expression_correlation(target, xy, source, xy, max_distance=0.0)
    for key in ("pearson", "kendall_tau", "target_index", "source_index"):
        np.testing.assert_array_equal(got[key], expected[key])
    got = metrics.matched_expression_correlation(
        AnnData(expr_t, var=pd.DataFrame(index=genes)), xy, source, xy, max_distance=0.0
    )
    np.testing.assert_array_equal(got["pearson"], expected["pearson"])
    with pytest.raises(ValueError, match="only in expr_target: 'g0'; only in expr_source: 'G0'"):
        metrics.matched_expression_correlation(
            target, xy, source.rename(columns={"g0": "G0"}), xy, max_distance=0.0
        )
