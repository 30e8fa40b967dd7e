from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial import cKDTree
from scipy.spatial.distance import jensenshannon
from skimage.metrics import structural_similarity
from sklearn.metrics import calinski_harabasz_score, f1_score, mean_squared_error, top_k_accuracy_score
from tests.conftest import shared_path

import loki as lk
from loki import metrics

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(3, 30), st.integers(1, 4)), elements=finite))
def test_pearson_matches_scipy_per_column(x):
    y = np.roll(x, 1, axis=0) + 0.5 * x
    r = metrics.pearson(x, y, axis=0)
    for j in range(x.shape[1]):
        if np.ptp(x[:, j]) < 1e-6 or np.ptp(y[:, j]) < 1e-6:
            continue
        assert r[j] == pytest.approx(scipy.stats.pearsonr(x[:, j], y[:, j])[0], abs=1e-7)


def test_pearson_axis_and_constant():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    np.testing.assert_allclose(metrics.pearson(x, y, axis=1), metrics.pearson(x.T, y.T, axis=0))
    assert isinstance(metrics.pearson(x[:, 0], y[:, 0]), float)
    assert np.isnan(metrics.pearson(np.ones(5), np.arange(5.0)))
    # a constant whose float mean is inexact: centring leaves ~1e-17, still constant
    third = np.c_[np.full(10, 1 / 3), np.arange(10.0)]
    np.testing.assert_array_equal(
        np.isnan(metrics.pearson(third, np.arange(20.0).reshape(10, 2))), [True, False]
    )
    with pytest.raises(ValueError, match="same shape"):
        metrics.pearson(x, y[:, :3])


@pytest.mark.parametrize("scale", [1e160, 1e-170, 1e300, 1e-300])
def test_pearson_at_extreme_scales_matches_scipy(scale):
    """The coefficient does not depend on the scale: the product of the two sums of squares used
    to overflow (1e160) or underflow (1e-170) and gave NaN for finite, varying input."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 3))
    y = x + rng.normal(size=(12, 3))
    expected = [scipy.stats.pearsonr(x[:, j], y[:, j])[0] for j in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(metrics.pearson(x * scale, y * scale, axis=0), expected, rtol=1e-12)
        # one variable at the scale, the other not; slices of other scales keep their values
        mixed = x * np.array([scale, 1.0, 1 / scale])
        np.testing.assert_allclose(metrics.pearson(mixed.T, y.T, axis=1), expected, rtol=1e-12)
        assert metrics.pearson(np.array([1.0, 2.0, 3.0]) * scale, [1.0, 2.0, 4.0]) == pytest.approx(
            scipy.stats.pearsonr([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])[0], rel=1e-12
        )
        assert np.isnan(metrics.pearson(np.full(4, scale), np.arange(4.0)))
    # sums that overflow float64: values near its largest
    big = np.array([1.0, 1.5, 1.7]) * 1e308
    assert metrics.pearson(big, [1.0, 2.0, 4.0]) == pytest.approx(
        scipy.stats.pearsonr([1.0, 1.5, 1.7], [1.0, 2.0, 4.0])[0], rel=1e-12
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pearson_refuses_non_finite_input_as_kendall_tau_does(bad):
    """NaN or inf used to come back silently as a NaN coefficient while kendall_tau raised."""
    x = np.arange(6.0).reshape(3, 2)
    y = x.copy()
    y[1, 1] = bad
    with pytest.raises(ValueError, match="x and y must be finite; y holds 1 NaN or infinite"):
        metrics.pearson(x, y, axis=0)
    with pytest.raises(ValueError, match="x and y must be finite; x holds 1 NaN or infinite"):
        metrics.pearson(y, x, axis=None)
    with pytest.raises(ValueError, match="x and y must be finite"):
        metrics.kendall_tau(x[:, 1], y[:, 1])


@settings(max_examples=80, deadline=None)
@given(
    st.integers(2, 60).flatmap(
        lambda n: st.tuples(
            arrays(np.float64, n, elements=st.integers(0, 6).map(float)),
            arrays(np.float64, n, elements=st.integers(0, 6).map(float)),
        )
    )
)
def test_kendall_tau_b_matches_scipy_with_ties(xy):
    x, y = xy
    expected = scipy.stats.kendalltau(x, y).statistic
    got = metrics.kendall_tau(x, y)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_large_continuous():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000)
    y = x + rng.normal(size=5000)
    assert metrics.kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_mse_matches_sklearn():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    assert metrics.mse(a, b) == pytest.approx(mean_squared_error(a.ravel(), b.ravel()))
    np.testing.assert_allclose(metrics.mse(a, b, axis=0), mean_squared_error(a, b, multioutput="raw_values"))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.just(2), st.integers(1, 12)), elements=st.floats(0, 10, width=64)))
def test_js_divergence_matches_scipy(pq):
    p, q = pq[0] + 1e-3, pq[1]
    q = q + (q.sum() == 0)
    got = metrics.js_divergence(p, q)
    assert 0.0 <= got <= 1.0
    # scipy returns NaN (sqrt of a rounding-negative value) for identical distributions
    with np.errstate(invalid="ignore"):
        ref = np.nan_to_num(jensenshannon(p, q, base=2)) ** 2
    assert got == pytest.approx(ref, abs=1e-9)


def test_js_divergence_axis_bounds_and_errors():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    q = np.array([[0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(metrics.js_divergence(p, q, axis=1), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(metrics.js_divergence(p.T, q.T, axis=0), [1.0, 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="negative"):
        metrics.js_divergence([-1.0, 2.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="^p sums to 0"):
        metrics.js_divergence([0.0, 0.0], [0.5, 0.5])
    # a cell type absent from every spot: the error names it (it named no slice)
    props = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(
        ValueError, match=r"^q has 1 slice\(s\) along axis 0 that sum to 0, at \[2\]: .*p \+ 1e-12"
    ):
        metrics.js_divergence(props + 1e-12, props, axis=0)


def test_js_divergence_of_weights_whose_sum_overflows():
    """Finite weights near float64's largest: the slice's sum overflowed to inf, every normalised
    weight became 0 and the divergence came out as 0.5 for disjoint (1) or equal (0) distributions."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.js_divergence([1e308, 1e308, 0.0], [0.0, 0.0, 1.0]) == pytest.approx(1.0, abs=1e-12)
        assert metrics.js_divergence([1e308, 1e308], [1.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
        p = np.array([[1e308, 1.0], [1e308, 3.0], [0.0, 2.0]])
        q = np.array([[0.0, 1.0], [0.0, 3.0], [5.0, 2.0]])
        np.testing.assert_allclose(metrics.js_divergence(p, q, axis=0), [1.0, 0.0], atol=1e-12)


def test_ssim_map_matches_skimage():
    rng = np.random.default_rng(3)
    x = rng.random((25, 30))
    y = x + 0.3 * rng.random((25, 30))
    _, ref = structural_similarity(x, y, data_range=1.3, full=True)
    np.testing.assert_allclose(metrics.ssim_map(x, y, data_range=1.3), ref, atol=1e-10)


def _array_spots(n_rows=14, n_cols=16, spacing=2.0):
    # a regular array of spots with a hole, like a tissue section on a slide
    xs, ys = np.meshgrid(np.arange(n_cols) * spacing, np.arange(n_rows) * spacing)
    coords = np.c_[xs.ravel(), ys.ravel()]
    keep = np.hypot(coords[:, 0] - 15, coords[:, 1] - 13) < 13
    return coords[keep]


def test_ssim_grid_matches_skimage_on_rasterised_images_and_masks_empty_pixels():
    rng = np.random.default_rng(4)
    coords = _array_spots()
    t = rng.random(len(coords))
    p = 0.6 * t + 0.4 * rng.random(len(coords))
    img_t, mask = metrics.rasterize(coords, t)
    img_p, _ = metrics.rasterize(coords, p)
    assert mask.sum() == len(coords)
    assert img_t[mask].sum() == pytest.approx(t.sum())
    dr = max(t.max(), p.max())
    _, ref = structural_similarity(img_t, img_p, data_range=dr, full=True)
    assert metrics.ssim_grid(coords, t, p) == pytest.approx(ref[mask].mean(), abs=1e-10)
    unmasked = metrics.ssim_grid(coords, t, p, mask_empty=False)
    assert unmasked == pytest.approx(ref.mean(), abs=1e-10)
    # empty pixels score ~1 and inflate the unmasked mean
    assert unmasked > metrics.ssim_grid(coords, t, p)
    assert metrics.ssim_grid(coords, t, t) == pytest.approx(1.0)


def test_ssim_grid_per_column_and_small_sections():
    rng = np.random.default_rng(5)
    coords = _array_spots()
    t = rng.random((len(coords), 3))
    p = rng.random((len(coords), 3))
    out = metrics.ssim_grid(coords, t, p)
    assert out.shape == (3,)
    for c in range(3):
        assert out[c] == pytest.approx(metrics.ssim_grid(coords, t[:, c], p[:, c]))
    tiny = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert np.isfinite(metrics.ssim_grid(tiny, [1.0, 2.0, 3.0], [1.0, 2.5, 3.0]))
    tiny[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"coords contains 1 non-finite value"):
        metrics.ssim_grid(tiny, [1.0, 2.0, 3.0], [1.0, 2.5, 3.0])
    with pytest.raises(ValueError, match="shape"):
        metrics.ssim_grid(coords, t, p[:, :2])


def _lattice(kind: str, n: int = 24, pitch: float = 3.0) -> np.ndarray:
    i, j = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n)))
    if kind == "square":
        return np.c_[i, j] * pitch
    # hexagonal: rows pitch * sqrt(3) / 2 apart, odd rows shifted by half a pitch (Visium)
    return np.c_[(i + 0.5 * (j % 2)) * pitch, j * pitch * np.sqrt(3) / 2]


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["square", "hex"]),
    angle=st.floats(0, 360),
    stretch=st.floats(0.8, 1.25),
    seed=st.integers(0, 2**16),
)
def test_rasterize_gives_each_spot_of_an_array_its_own_pixel_next_to_its_neighbours(
    kind, angle, stretch, seed
):
    rng = np.random.default_rng(seed)
    xy = _lattice(kind)
    xy = xy[np.hypot(*(xy - xy.mean(axis=0)).T) < 30]  # a round section
    xy = xy[rng.random(len(xy)) < 0.9]  # with holes
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    xy = (xy * [stretch, 1.0]) @ rot.T + rng.normal(0, 0.05, xy.shape) + 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spot shares a pixel
        _, mask = metrics.rasterize(xy, np.ones(len(xy)))
    assert mask.sum() == len(xy)
    img, _ = metrics.rasterize(xy, np.arange(len(xy), dtype=float))
    rows, cols = np.nonzero(mask)
    pixel = np.empty((len(xy), 2), dtype=int)
    pixel[np.rint(img[rows, cols]).astype(int)] = np.c_[rows, cols]
    # spots one pitch apart are in touching pixels
    d, nn = cKDTree(xy).query(xy, k=2)
    near = d[:, 1] < 1.1 * np.median(d[:, 1])
    assert (np.abs(pixel[near] - pixel[nn[near, 1]]).max(axis=1) <= 1).all()


def test_rasterize_gives_each_real_visium_spot_its_own_pixel():
    path = shared_path("scanpy_visium_testdata", "1.0.0", "spatial", "tissue_positions_list.csv")
    pos = pd.read_csv(path, header=None)
    pos = pos[pos[1] == 1]
    xy = pos[[5, 4]].to_numpy(float)  # pixel column, row
    img, mask = metrics.rasterize(xy, np.arange(len(xy), dtype=float))
    assert mask.sum() == len(xy) == 4235
    # the pixels are Visium's own array coordinates: array_row and array_col // 2
    rows, cols = np.nonzero(mask)
    order = np.rint(img[rows, cols]).astype(int)
    array_row, array_col = pos[2].to_numpy()[order], pos[3].to_numpy()[order] // 2
    assert len(np.unique(rows - array_row)) == 1
    for parity in (0, 1):  # which of the two packings of shifted rows is a convention
        assert len(np.unique((cols - array_col)[array_row % 2 == parity])) == 1
    # swapping values between neighbouring spots is now seen by the local SSIM
    rng = np.random.default_rng(0)
    t = rng.random(len(xy))
    _, nn = cKDTree(xy).query(xy, k=2)
    swapped = t.copy()
    first = np.arange(len(xy)) < nn[:, 1]
    swapped[first], swapped[nn[first, 1]] = t[nn[first, 1]], t[first]
    assert metrics.ssim_grid(xy, t, swapped) < 0.9


def test_rasterize_warns_when_spots_share_a_pixel():
    xy = np.random.default_rng(1).random((300, 2)) * 100
    with pytest.warns(UserWarning, match=r"of 300 spots share a pixel") as record:
        _, mask = metrics.rasterize(xy, np.ones(300))
    assert [w.filename for w in record if "share a pixel" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    assert mask.sum() < 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.rasterize(xy, np.ones(300), grid=0.5)  # the caller's grid: no warning


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 3)), elements=st.floats(0, 1)), st.data()
)
def test_ssim_is_eq_25_over_whole_profiles(t, data):
    p = data.draw(arrays(np.float64, t.shape, elements=st.floats(0, 1)))
    out = np.atleast_1d(metrics.ssim(t, p, data_range=1.0))
    for c in range(t.shape[1]):
        x, y = t[:, c], p[:, c]
        cov = np.cov(x, y, bias=True)
        c1, c2 = 0.01**2, 0.03**2
        ref = ((2 * x.mean() * y.mean() + c1) * (2 * cov[0, 1] + c2)) / (
            (x.mean() ** 2 + y.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)
        )
        assert out[c] == pytest.approx(ref, rel=1e-9, abs=1e-12)
        assert -1 - 1e-12 <= out[c] <= 1 + 1e-12
    assert np.allclose(metrics.ssim(t, t), 1.0)
    perm = np.random.default_rng(0).permutation(len(t))  # where spots lie does not matter
    np.testing.assert_allclose(metrics.ssim(t[perm], p[perm]), metrics.ssim(t, p), rtol=1e-12, atol=1e-15)


def test_ssim_default_range_and_errors():
    t = np.array([0.0, 0.5, 1.0, 0.25])
    assert metrics.ssim(t, t[::-1]) == pytest.approx(metrics.ssim(t, t[::-1], data_range=1.0))
    assert metrics.ssim(2 * t, 2 * t[::-1]) == pytest.approx(metrics.ssim(t, t[::-1]))  # scale-free
    assert isinstance(metrics.ssim(t, t), float)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.ssim(t, t[:3])
    with pytest.raises(ValueError, match="finite"):
        metrics.ssim(t, np.array([0.0, np.nan, 1.0, 0.0]))
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(t, t, data_range=0.0)


def test_impact_score_follows_eqs_26_30():
    js = {"a": np.array([0.1, 0.3]), "b": np.array([0.4, 0.4]), "c": np.array([0.2, 0.2])}
    ss = {"a": 0.9, "b": 0.5, "c": np.array([0.6, 0.8])}
    out = metrics.impact_score(js, ss)
    js_m = np.array([0.2, 0.4, 0.2])
    ss_m = np.array([0.9, 0.5, 0.7])
    z = (scipy.stats.zscore(ss_m) - scipy.stats.zscore(js_m)) / 2
    np.testing.assert_allclose(out.loc[["a", "b", "c"]].to_numpy(), z)
    assert out.idxmax() == "a"
    assert out.idxmin() == "b"
    with pytest.raises(ValueError, match="same methods"):
        metrics.impact_score(js, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="at least 2"):
        metrics.impact_score({"a": 0.1}, {"a": 0.5})


def test_weighted_f1_matches_sklearn():
    rng = np.random.default_rng(6)
    classes = np.array(["tumour", "stroma", "fat", "immune"])
    y = classes[rng.integers(0, 4, 200)]
    pred = np.where(rng.random(200) < 0.6, y, classes[rng.integers(0, 3, 200)])
    assert metrics.weighted_f1(y, pred) == pytest.approx(f1_score(y, pred, average="weighted"))
    sub = ["tumour", "fat"]
    assert metrics.weighted_f1(y, pred, labels=sub) == pytest.approx(
        f1_score(y, pred, average="weighted", labels=sub)
    )
    assert metrics.weighted_f1(y, y) == 1.0


def test_weighted_f1_refuses_items_without_a_true_label():
    # labels joined onto spots with .reindex leave NaN where a spot was not labelled: such a spot is
    # neither right nor wrong, yet it would lower the precision of the class predicted there
    truth = pd.Series(["tumour", "stroma", np.nan, "stroma", None], dtype=object)
    predicted = pd.Series(["tumour", "stroma", "stroma", "stroma", "tumour"])
    keep = truth.notna().to_numpy()
    assert metrics.weighted_f1(truth[keep], predicted[keep]) == 1.0
    with pytest.raises(ValueError, match=r"2 of 5 items have no true label .*keep = ~pd.isna\(y_true\)"):
        metrics.weighted_f1(truth, predicted)
    # a missing prediction is a wrong one, as sklearn counts it
    assert metrics.weighted_f1(["a", "b"], ["a", None]) == pytest.approx(
        f1_score(["a", "b"], ["a", "c"], average="weighted")
    )


def test_weighted_f1_warns_when_true_and_predicted_labels_share_no_value():
    truth = np.array([0, 1, 1, 2])  # cluster ids as integers, predicted as strings (leiden writes strings)
    with pytest.warns(lk.LokiWarning, match=r"share no value .*type int.*'0' of type str") as caught:
        assert metrics.weighted_f1(truth, truth.astype(str)) == 0.0
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.weighted_f1(truth, np.array([0, 2, 2, 1]))  # one shared value is enough


@given(st.integers(1, 50), st.integers(1, 50))
def test_weighted_f1_of_the_majority_class_as_documented(n_major, n_minor):
    truth = ["major"] * max(n_major, n_minor) + ["minor"] * min(n_major, n_minor)
    p = max(n_major, n_minor) / len(truth)
    assert metrics.weighted_f1(truth, ["major"] * len(truth)) == pytest.approx(p * 2 * p / (1 + p))


def test_recall_at_k_matches_sklearn_top_k():
    rng = np.random.default_rng(7)
    n = 200
    s = rng.normal(size=(n, n)) + 1.5 * np.eye(n)
    for frac in (0.05, 0.10):
        kk = round(frac * n)
        expected = top_k_accuracy_score(np.arange(n), s, k=kk, labels=np.arange(n))
        assert metrics.recall_at_k(s, frac) == pytest.approx(expected)
    np.testing.assert_allclose(
        metrics.recall_at_k(s, [0.05, 0.1]), [metrics.recall_at_k(s, 0.05), metrics.recall_at_k(s, 0.1)]
    )
    ranks = metrics.target_ranks(s)
    assert metrics.recall_at_k(ranks, 0.05, n_candidates=n) == metrics.recall_at_k(s, 0.05)


def test_recall_at_k_random_baseline_and_ties():
    rng = np.random.default_rng(8)
    s = rng.normal(size=(2000, 400))
    targets = rng.integers(0, 400, 2000)
    assert metrics.recall_at_k(s, 0.10, targets=targets) == pytest.approx(0.10, abs=0.02)
    # a model that scores everything equal must not get credit
    assert metrics.recall_at_k(np.zeros((10, 100)), 0.05) == 0.0
    with pytest.raises(ValueError, match="quantile"):
        metrics.recall_at_k(np.zeros((4, 4)), 5)
    with pytest.raises(ValueError, match="n_candidates"):
        metrics.recall_at_k(np.array([1, 2]))
    nan_query = np.eye(3)
    nan_query[0] = np.nan  # an all-zero embedding normalised: it must not count as a hit
    with pytest.raises(ValueError, match=r"non-finite scores in 1 query row\(s\), e.g. \[0\]"):
        metrics.recall_at_k(nan_query, 1 / 3)


def test_calinski_harabasz_matches_sklearn():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(90, 6))
    labels = rng.integers(0, 4, 90)
    x[labels == 1] += 2
    assert metrics.calinski_harabasz(x, labels) == pytest.approx(calinski_harabasz_score(x, labels))
    with pytest.raises(ValueError, match="2 <= k"):
        metrics.calinski_harabasz(x, np.zeros(90))


def _pairwise_angular_counts(angles: np.ndarray, width: float) -> np.ndarray:
    # the direct O(n^2) count: angles less than width apart around the circle
    gap = np.abs(np.angle(np.exp(1j * (angles[None, :] - angles[:, None]))))
    return (gap < width).sum(axis=1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 300))
def test_lattice_direction_counts_match_pairwise_counts(seed, n):
    from loki.metrics._lattice import _angular_counts

    rng = np.random.default_rng(seed)
    # clusters of directions, some straddling the wrap at +-pi, as the doubled angles of lattice steps are
    centres = rng.choice([-np.pi, -np.pi / 3, 0.0, np.pi / 3, np.pi], size=n)
    angles = centres + rng.normal(0, 0.2, n)
    width = 2 * np.deg2rad(10)
    np.testing.assert_array_equal(_angular_counts(angles, width), _pairwise_angular_counts(angles, width))


@pytest.mark.parametrize("kind", ["square", "hex"])
def test_lattice_pixels_unchanged_by_the_sorted_direction_count(kind, monkeypatch):
    from loki.metrics import _lattice as lattice_module

    rng = np.random.default_rng(3)
    a = np.deg2rad(37.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    xy = _lattice(kind, n=30) @ rot.T + rng.normal(0, 0.05, (900, 2))
    spacing = metrics.spot_spacing(xy)
    fast = lattice_module.lattice_pixels(xy, spacing)
    monkeypatch.setattr(lattice_module, "_angular_counts", _pairwise_angular_counts)
    np.testing.assert_array_equal(fast, lattice_module.lattice_pixels(xy, spacing))
    assert len(np.unique(fast, axis=0)) == len(xy)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n_rows=st.integers(0, 30), n=st.integers(2, 40), levels=st.integers(1, 6))
def test_kendall_tau_rows_is_kendall_tau_of_each_row_pair(seed, n_rows, n, levels):
    # few levels give many ties, and rows constant in x or y (NaN), as log expression of sparse spots does
    from loki.metrics._correlation import kendall_tau_rows

    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, (n_rows, n)) * 0.5
    y = np.where(rng.random((n_rows, n)) < 0.5, x, rng.integers(0, levels, (n_rows, n)) - 0.0)
    expected = np.array([metrics.kendall_tau(a, b) for a, b in zip(x, y, strict=True)])
    np.testing.assert_array_equal(kendall_tau_rows(x, y), expected.reshape(n_rows))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_calinski_harabasz_is_the_same_taken_a_block_of_points_at_a_time(dtype, monkeypatch):
    from loki.metrics import _classification

    rng = np.random.default_rng(2)
    labels = rng.choice(["a", "b", "c", "d"], 500)
    x = (rng.normal(size=(500, 6)) + (labels == "a")[:, None] * 2).astype(dtype)
    whole = metrics.calinski_harabasz(x, labels)
    monkeypatch.setattr(_classification, "_BLOCK", 6 * 37)  # 37 points a block, the last one short
    assert metrics.calinski_harabasz(x, labels) == pytest.approx(whole, rel=1e-12)
    assert whole == pytest.approx(calinski_harabasz_score(x.astype(np.float64), labels), rel=1e-10)


def test_truth_and_prediction_frames_are_matched_by_cell_type_and_spot_labels():
    """Pseudo-spots whose cells list their types in another order than the reference: the truth's
    columns and decompose's differ in order, and as arrays the metrics compared a type with another
    one without a word (JS 0.29 became 0.92 on the MERFISH pseudo-spots)."""
    rng = np.random.default_rng(0)
    spots = [f"s{i}" for i in range(64)]
    truth = pd.DataFrame(rng.dirichlet(np.ones(3), 64), index=spots, columns=["B cell", "T cell", "3"])
    xy = np.c_[np.repeat(np.arange(8.0), 8), np.tile(np.arange(8.0), 8)]
    pred = truth + rng.uniform(0, 0.05, truth.shape)
    expected = (
        metrics.js_divergence(truth.to_numpy(), pred.to_numpy(), axis=0),
        metrics.ssim(truth.to_numpy(), pred.to_numpy()),
        metrics.ssim_grid(xy, truth.to_numpy(), pred.to_numpy()),
    )
    shuffled = pred.iloc[rng.permutation(64), [2, 0, 1]]  # other spot and cell-type order
    got = (
        metrics.js_divergence(truth, shuffled, axis=0),
        metrics.ssim(truth, shuffled),
        metrics.ssim_grid(xy, truth, shuffled),
    )
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-12)
    col = "T cell"
    assert metrics.ssim(truth[col], shuffled[col]) == pytest.approx(expected[1][1], rel=1e-12)
    # a frame built from an array has default labels: compared by position, as an array is
    unlabelled = pd.DataFrame(pred.to_numpy())
    np.testing.assert_allclose(metrics.ssim(truth, unlabelled), expected[1], rtol=1e-12)
    # a type missing from the prediction (absent from the reference) is named
    with pytest.raises(ValueError, match=r"different columns \(only in p: '3'; only in q: 'NK'\)"):
        metrics.js_divergence(truth, shuffled.rename(columns={"3": "NK"}), axis=0)
    with pytest.raises(ValueError, match=r"values_true and values_pred have different rows \(only in"):
        metrics.ssim(truth, shuffled.rename(index={"s0": "x"}))


def test_scores_of_two_frames_are_labelled_by_the_truths_cell_types():
    """Two labelled frames gave unlabelled arrays: which value was which type depended on knowing
    that the scores follow the first argument's column order (``pearson``, ``kendall_tau`` and ``mse``
    still did after ``js_divergence`` and ``ssim`` were labelled; ``kendall_tau`` refused tables)."""
    from loki.metrics._correlation import kendall_tau_rows

    rng = np.random.default_rng(0)
    spots = pd.Index([f"s{i}" for i in range(36)], name="spot")
    types = pd.Index(["B", "T", "NK"], name="cell_type")
    truth = pd.DataFrame(rng.dirichlet(np.ones(3), 36), index=spots, columns=types)
    pred = (truth * 0.8 + rng.uniform(0, 0.2, truth.shape))[["NK", "T", "B"]]  # other type order
    xy = np.c_[np.repeat(np.arange(6.0), 6), np.tile(np.arange(6.0), 6)]
    arrays = (truth.to_numpy(), pred[types].to_numpy())
    for score, args, labels in [
        (metrics.js_divergence, {"axis": 0}, types),
        (metrics.js_divergence, {"axis": -2}, types),
        (metrics.js_divergence, {"axis": 1}, spots),
        (metrics.ssim, {}, types),
        (lambda t, p: metrics.ssim_grid(xy, t, p), {}, types),
        (metrics.pearson, {"axis": 0}, types),
        (metrics.pearson, {"axis": 1}, spots),
        (metrics.kendall_tau, {"axis": 0}, types),
        (metrics.kendall_tau, {"axis": -1}, spots),
        (kendall_tau_rows, {}, spots),
        (metrics.mse, {"axis": 0}, types),
        (metrics.mse, {"axis": 1}, spots),
    ]:
        got = score(truth, pred, **args)
        assert isinstance(got, pd.Series)
        assert got.index.equals(labels)
        assert got.index.name == labels.name
        np.testing.assert_array_equal(got.to_numpy(), score(*arrays, **args))
        # an array on either side is compared by position, and the result stays an array
        assert type(score(truth, arrays[1], **args)) is np.ndarray
        assert type(score(arrays[0], pred[types], **args)) is np.ndarray
    # one cell type (two Series), or all values at once, still gives a float
    for score in (metrics.ssim, metrics.js_divergence, metrics.pearson, metrics.kendall_tau, metrics.mse):
        assert isinstance(score(truth["NK"], pred["NK"]), float)
    assert isinstance(metrics.pearson(truth, pred, axis=None), float)
    assert isinstance(metrics.mse(truth, pred), float)


def test_labels_of_different_types_are_shown_as_they_are():
    """Integer cell types against their text: the message listed '1', '2' as only in p and '1', '2' as
    only in q, the same words on both sides."""
    rng = np.random.default_rng(0)
    truth = pd.DataFrame(rng.dirichlet(np.ones(2), 5), columns=[1, 2])
    with pytest.raises(
        ValueError,
        match=r"only in p: 1, 2; only in q: '1', '2'; the same as text, but of different types: make "
        r"both strings, e\.g\. p\.columns = p\.columns\.astype\(str\)",
    ):
        metrics.js_divergence(truth, truth.rename(columns=str))
    with pytest.raises(ValueError, match=r"only in values_true: 'a'; only in values_pred: 'b'\)"):
        metrics.ssim(truth.set_axis(["a", 2], axis=1), truth.set_axis(["b", 2], axis=1))


def test_correlations_match_truth_and_prediction_by_gene_and_spot_name():
    """A measured and a predicted spots x genes table with their genes in other orders: as arrays
    ``pearson`` compared each gene with another one without a word (MOB4 with the untrained
    loki-tiny: a mean PCC of -0.09 read -0.04). Frames, Series and AnnData are matched by label; sparse truth is taken as is (it was
    refused with numpy's "setting an array element with a sequence")."""
    from anndata import AnnData
    from scipy import sparse

    from loki.metrics._correlation import kendall_tau_rows

    rng = np.random.default_rng(0)
    spots, genes = [f"s{i}" for i in range(30)], ["Penk", "Nrgn", "Doc2g", "Apoe"]
    truth = pd.DataFrame(rng.random((30, 4)), index=spots, columns=genes)
    pred = truth + rng.normal(0, 0.3, truth.shape)
    expected = metrics.pearson(truth.to_numpy(), pred.to_numpy(), axis=0)
    shuffled = pred.iloc[rng.permutation(30), [3, 1, 0, 2]]
    np.testing.assert_allclose(metrics.pearson(truth, shuffled, axis=0), expected, rtol=1e-12)
    np.testing.assert_allclose(
        metrics.pearson(AnnData(truth), AnnData(shuffled), axis=0), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        metrics.pearson(sparse.csr_matrix(truth.to_numpy()), pred.to_numpy(), axis=0), expected, rtol=1e-12
    )
    assert metrics.pearson(truth["Nrgn"], shuffled["Nrgn"]) == pytest.approx(expected[1], rel=1e-12)
    assert metrics.kendall_tau(truth["Nrgn"], shuffled["Nrgn"]) == pytest.approx(
        metrics.kendall_tau(truth["Nrgn"].to_numpy(), pred["Nrgn"].to_numpy()), rel=1e-12
    )
    np.testing.assert_allclose(
        kendall_tau_rows(truth, shuffled),
        kendall_tau_rows(truth.to_numpy(), pred.to_numpy()),
        rtol=1e-12,
    )
    with pytest.raises(
        ValueError, match=r"x and y have different columns \(only in x: 'Apoe'; only in y: 'Ptgds'\)"
    ):
        metrics.pearson(truth, shuffled.rename(columns={"Apoe": "Ptgds"}), axis=0)


def test_mse_matches_truth_and_prediction_by_label():
    """``mse`` of a Series and itself in reverse order was 5.0, not 0: compared by position."""
    from anndata import AnnData
    from scipy import sparse

    a = pd.Series([1.0, 2.0, 3.0, 4.0], index=list("abcd"))
    assert metrics.mse(a, a[::-1]) == 0.0
    rng = np.random.default_rng(1)
    truth = pd.DataFrame(
        rng.random((12, 3)), index=[f"s{i}" for i in range(12)], columns=["Penk", "Nrgn", "Apoe"]
    )
    pred = truth + rng.normal(0, 0.2, truth.shape)
    expected = metrics.mse(truth.to_numpy(), pred.to_numpy(), axis=0)
    shuffled = pred.iloc[rng.permutation(12), [2, 0, 1]]
    np.testing.assert_allclose(metrics.mse(truth, shuffled, axis=0), expected, rtol=1e-12)
    np.testing.assert_allclose(metrics.mse(AnnData(truth), AnnData(shuffled), axis=0), expected, rtol=1e-6)
    assert metrics.mse(sparse.csr_matrix(truth.to_numpy()), pred.to_numpy()) == pytest.approx(
        metrics.mse(truth.to_numpy(), pred.to_numpy()), rel=1e-12
    )
    with pytest.raises(ValueError, match=r"only in y_true: 'Apoe'; only in y_pred: 'Ptgds'"):
        metrics.mse(truth, shuffled.rename(columns={"Apoe": "Ptgds"}))


def test_default_labels_are_matched_when_the_other_side_holds_them_in_another_order():
    """``a[::-1]`` of a Series (or frame) built from an array keeps its labels 4, 3, 2, 1, 0: the
    default 0..n-1 of ``a`` made the pair positional, so ``mse(a, a[::-1])`` read 8.0, not 0."""
    a = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0])
    assert metrics.mse(a, a[::-1]) == 0.0
    assert metrics.mse(a[::-1], a) == 0.0
    assert metrics.pearson(a, a.sort_values(ascending=False)) == pytest.approx(1.0)
    truth = pd.DataFrame(np.random.default_rng(2).random((6, 3)))
    shuffled = truth.sample(frac=1, random_state=0)
    np.testing.assert_allclose(metrics.js_divergence(truth, shuffled, axis=1), 0.0, atol=1e-12)
    # other labels against default ones stay positional (a frame built from an array)
    named = truth.set_axis([f"s{i}" for i in range(6)])
    assert metrics.mse(named, truth) == 0.0


def test_multiindex_labels_that_differ_are_named():
    """The old message failed in pandas' words ("Setting a MultiIndex dtype to anything other than
    object is not supported") while building its hint."""
    x = pd.Series([1.0, 2.0, 3.0], index=pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)]))
    y = pd.Series([1.0, 2.0, 3.0], index=pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("c", 1)]))
    with pytest.raises(ValueError, match=r"only in y_true: \('b', 1\); only in y_pred: \('c', 1\)"):
        metrics.mse(x, y)
