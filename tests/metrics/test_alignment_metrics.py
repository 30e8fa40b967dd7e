from __future__ import annotations

import warnings

import anndata
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from scipy.stats import kendalltau
from tests.conftest import shared_path

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
    with pytest.raises(ValueError, match="unit must be a positive number, got nan"):
        lk.metrics.alignment_error(aligned, truth, unit=np.nan)


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


@pytest.fixture(scope="module")
def good_and_bad():
    """A section moved by 90 deg, scored at its true coordinates and at shuffled ones."""
    tgt = lk.datasets.synthetic_tissue(n_spots=300, n_genes=80, seed=4)
    src, truth = lk.datasets.transform_section(tgt, rotation_deg=90.0, thin_counts=0.5, seed=1)
    src.obsm["good"] = truth.coords
    src.obsm["bad"] = truth.coords[np.random.default_rng(0).permutation(len(truth.coords))]
    good = lk.metrics.alignment_expression_scores(src, tgt, aligned_key="good", n_top_genes=50)
    bad = lk.metrics.alignment_expression_scores(src, tgt, aligned_key="bad", n_top_genes=50)
    return src, tgt, good, bad


def test_alignment_expression_scores_rewards_correct_alignment(good_and_bad):
    src, tgt, good, bad = good_and_bad
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
    with pytest.raises(ValueError, match="n_top_genes must be an integer >= 2, got -2"):
        lk.metrics.alignment_expression_scores(src, tgt, aligned_key="good", n_top_genes=-2)
    dup = src.copy()
    dup.var_names = [dup.var_names[0], *dup.var_names[:-1]]
    with pytest.raises(ValueError, match=r"source\.var_names has duplicated genes"):
        lk.metrics.alignment_expression_scores(dup, tgt, aligned_key="good")
    xy = tgt.obsm["spatial"]
    with pytest.raises(ValueError, match="max_distance must be a number >= 0, got nan"):
        lk.metrics.matched_expression_correlation(tgt.X, xy, tgt.X, xy, max_distance=np.nan)


def _scores(values, target_index, n_target):
    return {
        "pearson": np.asarray(values, dtype=float),
        "kendall_tau": np.asarray(values, dtype=float) / 2,
        "target_index": np.asarray(target_index),
        "n_target": n_target,
    }


def test_paired_median_difference_exact_cases():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 1.0, size=60)
    a = _scores(base + 0.1, np.arange(60), 60)
    b = _scores(base, np.arange(60), 60)
    res = lk.metrics.paired_median_difference(a, b, n_boot=300)
    # a shift of every paired score shifts every resampled median by the same amount
    assert res["difference"] == pytest.approx(0.1)
    assert res["low"] == pytest.approx(0.1)
    assert res["high"] == pytest.approx(0.1)
    assert res["fraction_a_ge_b"] == 1.0
    tau = lk.metrics.paired_median_difference(a, b, measure="kendall_tau", n_boot=300)
    assert tau["difference"] == pytest.approx(0.05)
    same = lk.metrics.paired_median_difference(b, b, n_boot=300)
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


def test_paired_median_difference_large_target_in_chunks():
    # 50,000 spots: the bootstrap runs in chunks of 83 draws; a shift still moves every draw alike
    base = np.random.default_rng(3).normal(size=50_000)
    a = _scores(base + 0.25, np.arange(50_000), 50_000)
    b = _scores(base, np.arange(50_000), 50_000)
    res = lk.metrics.paired_median_difference(a, b, n_boot=200)
    assert res["low"] == pytest.approx(0.25)
    assert res["high"] == pytest.approx(0.25)


def test_paired_median_difference_unpaired_spots_and_seed():
    rng = np.random.default_rng(2)
    values = rng.uniform(-1.0, 1.0, size=80)
    a = _scores(values, np.arange(80), 100)
    # b pairs a different subset of the same target's spots
    b = _scores(values[:70] - 0.2, np.arange(10, 80), 100)
    res = lk.metrics.paired_median_difference(a, b, n_boot=500, seed=3)
    assert res["difference"] == pytest.approx(np.median(values) - np.median(values[:70] - 0.2))
    assert res["low"] <= res["difference"] <= res["high"]
    assert res == lk.metrics.paired_median_difference(a, b, n_boot=500, seed=3)
    assert res != lk.metrics.paired_median_difference(a, b, n_boot=500, seed=4)


def test_paired_median_difference_bad_input():
    a = _scores([0.1, 0.2], [0, 1], 3)
    with pytest.raises(ValueError, match="one target"):
        lk.metrics.paired_median_difference(a, _scores([0.1], [0], 4))
    with pytest.raises(ValueError, match="measure"):
        lk.metrics.paired_median_difference(a, a, measure="spearman")
    with pytest.raises(KeyError, match="kendall=True"):
        lk.metrics.paired_median_difference(
            a, {k: v for k, v in a.items() if k != "kendall_tau"}, measure="kendall_tau"
        )
    with pytest.raises(ValueError, match="n_boot"):
        lk.metrics.paired_median_difference(a, a, n_boot=0)


def test_paired_median_difference_on_alignment_scores(good_and_bad):
    _, tgt, good, bad = good_and_bad
    assert good["n_target"] == tgt.n_obs
    assert len(good["target_index"]) == good["n_pairs"]
    res = lk.metrics.paired_median_difference(good, bad, n_boot=500)
    assert res["difference"] == pytest.approx(good["pearson_median"] - bad["pearson_median"])
    assert res["low"] > 0.0
    assert res["fraction_a_ge_b"] == 1.0


def test_spot_spacing_uses_xy_and_distinct_positions():
    xy = np.random.default_rng(0).random((30, 2))
    spacing = lk.metrics.spot_spacing(xy)
    # a z column (stacked sections) is ignored, as alignment ignores it
    assert lk.metrics.spot_spacing(np.c_[xy, np.arange(30) * 10.0]) == spacing
    # repeated rows (two cells at one spot) do not pull the spacing to 0
    assert lk.metrics.spot_spacing(np.r_[xy, xy[:20]]) == spacing
    assert lk.metrics.spot_spacing(np.zeros((3, 2))) == 0.0
    with pytest.raises(ValueError, match=r"xy must be \(n, 2\) coordinates, got shape \(3,\)"):
        lk.metrics.spot_spacing(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="xy contains 1 non-finite"):
        lk.metrics.spot_spacing(np.array([[0.0, 0.0], [1.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="at least 2 points, got 1"):
        lk.metrics.spot_spacing(xy[:1])


def test_alignment_error_bad_input():
    xy = np.zeros((4, 2))
    with pytest.raises(ValueError, match="no spots"):
        lk.metrics.alignment_error(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="unit must be a positive number, got '1'"):
        lk.metrics.alignment_error(xy, xy, unit="1")
    with pytest.raises(ValueError, match="unit must be a positive number, got True"):
        lk.metrics.alignment_error(xy, xy, unit=True)


def test_alignment_expression_scores_warns_on_expression_that_is_not_counts(good_and_bad):
    src, tgt, good, _ = good_and_bad
    logged = src.copy()
    x = logged.X.toarray() if sp.issparse(logged.X) else np.asarray(logged.X, dtype=float)
    logged.layers["counts"] = x
    logged.X = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)  # scanpy's normalize + log1p
    with pytest.warns(
        lk.LokiWarning, match=r"source\.X looks log1p-transformed .*Pass layer= .*: none\)"
    ) as caught:
        lk.metrics.alignment_expression_scores(logged, tgt, aligned_key="good", n_top_genes=50)
    assert caught[0].filename == __file__
    target = tgt.copy()
    target.layers["counts"] = target.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counts, also as floats or in a layer: no warning
        src_float = src.copy()
        src_float.X = x
        again = lk.metrics.alignment_expression_scores(src_float, tgt, aligned_key="good", n_top_genes=50)
        layered = lk.metrics.alignment_expression_scores(
            logged, target, aligned_key="good", n_top_genes=50, layer="counts"
        )
    assert again["pearson_median"] == good["pearson_median"]
    for key in ("pearson", "kendall_tau", "target_index"):
        np.testing.assert_array_equal(layered[key], good[key])
    with pytest.raises(KeyError, match=r"'counts' not found in target\.layers; available: none"):
        lk.metrics.alignment_expression_scores(logged, tgt, aligned_key="good", layer="counts")


@pytest.fixture(scope="module", params=["MOB1", "her2st A1"])
def real_counts(request):
    """Raw counts of one real section: a bundled MOB section (1000 genes), a her2st one (15,045 genes)."""
    if request.param == "MOB1":
        return lk.datasets.mob(["MOB1"]).tables["MOB1"]
    folder = shared_path("her2st_A")
    sdata = lk.io.read_legacy_st(
        folder / "counts" / "A1.tsv.gz", folder / "spotfiles" / "A1_selection.tsv", name="A1"
    )
    return sdata.tables["A1"]


def _soupx_like(x: np.ndarray) -> np.ndarray:
    """Counts less ambient RNA as SoupX removes it: 10% of each spot's library, spread over the genes
    as the section's mean profile (the soup), clipped at 0; not whole numbers."""
    soup = x.sum(axis=0) / x.sum()
    return np.clip(x - 0.1 * x.sum(axis=1, keepdims=True) * soup, 0, None)


def _less_a_part_of_each_gene(x: np.ndarray) -> np.ndarray:
    """Counts less a small ambient part of each gene (up to 0.3 of a count), clipped at 0."""
    part = np.random.default_rng(0).uniform(0, 0.3, x.shape[1])
    return np.clip(x - np.where(x > 0, part, 0), 0, None)


def _scanpy(*steps):
    def run(x):
        adata = AnnData(x.astype(np.float32))
        for step, kwargs in steps:
            step(adata, **kwargs)
        return adata.X

    return run


_NORMALIZE, _LOG1P = (sc.pp.normalize_total, {}), (sc.pp.log1p, {})


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda x: x, None),
        (lambda x: x.astype(np.float32), None),
        (_soupx_like, None),
        (_less_a_part_of_each_gene, None),
        (_scanpy(_NORMALIZE), "normalised"),
        (_scanpy(_NORMALIZE, _LOG1P), "log1p-transformed"),
        (_scanpy(_LOG1P), "log1p-transformed"),  # log1p of the raw counts
        (_scanpy((sc.pp.normalize_total, {"target_sum": 1e6}), _LOG1P), "log1p-transformed"),
        (_scanpy(_NORMALIZE, (sc.pp.log1p, {"base": 2})), "log-transformed with base 2"),
    ],
    ids=["counts", "float32 counts", "SoupX-like", "less a part of each gene", "normalize_total",
         "normalize_total+log1p", "log1p", "CPM+log1p", "normalize_total+log2"],
)  # fmt: skip
def test_alignment_expression_scores_warns_on_transformed_counts_only(real_counts, make, kind):
    """Corrected counts that are not whole numbers (SoupX's) warned that they looked normalised."""
    source = real_counts.copy()
    source.X = sp.csr_matrix(make(real_counts.X.toarray()))
    if make in (_soupx_like, _less_a_part_of_each_gene):  # corrected counts: not whole numbers
        assert (source.X.data != np.round(source.X.data)).mean() > 0.5
    kwargs = {"aligned_key": "spatial", "n_top_genes": 50, "kendall": False}
    if kind is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = lk.metrics.alignment_expression_scores(source, real_counts, **kwargs)
        assert res["pearson_median"] > 0.5  # each spot paired with itself
        return
    with pytest.warns(lk.LokiWarning, match=rf"source\.X looks {kind} .*Pass layer= ") as caught:
        lk.metrics.alignment_expression_scores(source, real_counts, **kwargs)
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(lk.LokiWarning, match=rf"^alignment_expression_scores: source\.X looks {kind} .* and "):
        lk.metrics.alignment_expression_scores(source, source, **kwargs)  # target.X too


def test_alignment_expression_scores_refuses_negative_values_naming_them():
    """Scaled expression was log1p-transformed into NaN, and the error named NaN the input did not hold."""
    source = lk.datasets.mob(["MOB1"]).tables["MOB1"]
    scaled = source.copy()
    scaled.layers["counts"] = scaled.X.copy()
    scaled.X = scaled.X.toarray()  # scale centres every gene: dense
    sc.pp.normalize_total(scaled)
    sc.pp.log1p(scaled)
    sc.pp.scale(scaled, max_value=10)
    negative = int((scaled.X < 0).sum())
    assert negative > 0
    with pytest.raises(
        ValueError,
        match=rf"^alignment_expression_scores: source\.X holds {negative} negative value\(s\), as scaled "
        r"expression .*Pass layer= the layer of counts \(layers of both sections: none\)\.$",
    ):
        lk.metrics.alignment_expression_scores(scaled, source, aligned_key="spatial", n_top_genes=50)
    source.layers["counts"] = source.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the counts in a layer: no warning
        res = lk.metrics.alignment_expression_scores(
            scaled, source, aligned_key="spatial", n_top_genes=50, layer="counts"
        )
    assert res["pearson_median"] == 1.0


def test_alignment_expression_scores_target_with_repeated_spots(good_and_bad):
    src, tgt, good, _ = good_and_bad
    moved = src.copy()
    step = lk.metrics.spot_spacing(tgt.obsm["spatial"])
    moved.obsm["good"] = moved.obsm["good"] + 0.1 * step  # pairs at a distance > 0
    once = lk.metrics.alignment_expression_scores(moved, tgt, aligned_key="good", n_top_genes=50)
    twice = lk.metrics.alignment_expression_scores(
        moved, anndata.concat([tgt, tgt], index_unique="-"), aligned_key="good", n_top_genes=50
    )
    assert once["n_pairs"] == tgt.n_obs
    assert twice["n_pairs"] == 2 * tgt.n_obs
    assert twice["pearson_median"] == pytest.approx(once["pearson_median"])
    one_place = np.zeros((3, 2))
    with pytest.raises(ValueError, match="xy_target has fewer than 2 distinct spot positions.*max_distance"):
        lk.metrics.matched_expression_correlation(np.eye(3), one_place, np.eye(3), one_place)


def test_alignment_expression_scores_nan_outcomes(good_and_bad):
    src, tgt, _, _ = good_and_bad
    far = src.copy()
    far.obsm["good"] = far.obsm["good"] + 1e3
    with pytest.warns(
        UserWarning, match=r"No target spot .* within max_distance=\d.*spot spacing is"
    ) as record:
        res = lk.metrics.alignment_expression_scores(far, tgt, aligned_key="good", n_top_genes=50)
    assert [w.filename for w in record if "No target spot" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    assert res["n_pairs"] == 0
    assert np.isnan([res["pearson_median"], res["kendall_tau_median"]]).all()
    # every source profile constant: each pair's coefficient, and so the medians, are NaN, silently
    empty = src.copy()
    empty.X = empty.X * 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = lk.metrics.alignment_expression_scores(empty, tgt, aligned_key="good", n_top_genes=50)
    assert res["n_pairs"] == tgt.n_obs
    assert np.isnan([res["pearson_median"], res["kendall_tau_median"]]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_boot": 2.5}, "n_boot must be a positive integer, got 2.5"),
        ({"n_boot": True}, "n_boot must be a positive integer, got True"),
        ({"level": "0.9"}, "level must be a number in \\(0, 1\\), got '0.9'"),
        ({"level": 1.0}, "level must be a number in \\(0, 1\\), got 1.0"),
        ({"seed": 2.5}, "seed must be a non-negative integer, a numpy Generator or None, got 2.5"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_paired_median_difference_bad_parameters(kwargs, message):
    a = _scores([0.1, 0.2], [0, 1], 3)
    with pytest.raises(ValueError, match=message):
        lk.metrics.paired_median_difference(a, a, **kwargs)


def test_paired_median_difference_without_pairs_is_nan_silently():
    a = _scores([0.1, 0.2], [0, 1], 3)
    none = _scores([], np.array([], dtype=int), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = lk.metrics.paired_median_difference(none, a, n_boot=50)
    assert all(np.isnan(v) for v in res.values())


def _counts_section(x: np.ndarray, xy: np.ndarray, key: str) -> AnnData:
    adata = AnnData(x, obs={"i": np.arange(len(x))})
    adata.var_names = [f"g{i}" for i in range(x.shape[1])]
    adata.obsm[key] = xy
    return adata


def test_alignment_expression_scores_value_from_its_recipe_and_empty_spots_left_out():
    """The scores equal the documented recipe written out, and empty barcodes move nothing.

    Before, a spot without counts entered the median library size as 1 (60 empty spots took the
    median from 145 to 1) and the variance that picks the genes, so the 40 tissue pairs scored
    differently once empty barcodes were added far away.
    """
    rng = np.random.default_rng(0)
    n, g = 40, 30
    xy = np.c_[np.arange(n) % 8, np.arange(n) // 8].astype(float)
    lam = rng.gamma(1.0, 5.0, (n, g))
    tx, sx = rng.poisson(lam).astype(float), rng.poisson(lam).astype(float)

    def log_norm(x):
        lib = x.sum(axis=1)
        return np.log1p(x * (np.median(lib) / lib)[:, None])

    lt, ls = log_norm(tx), log_norm(sx)
    top = np.argsort(-lt.var(axis=0), kind="stable")[:20]
    expected = [np.corrcoef(lt[i, top], ls[i, top])[0, 1] for i in range(n)]
    expected_tau = [kendalltau(lt[i, top], ls[i, top]).statistic for i in range(n)]
    res = lk.metrics.alignment_expression_scores(
        _counts_section(sx, xy, "spatial_aligned"), _counts_section(tx, xy, "spatial"), n_top_genes=20
    )
    np.testing.assert_allclose(res["pearson"], expected, rtol=1e-12)
    np.testing.assert_allclose(res["kendall_tau"], expected_tau, rtol=1e-12)
    assert res["pearson_median"] == pytest.approx(np.median(expected), rel=1e-12)

    far = np.c_[100 + np.arange(60) % 10, 100 + np.arange(60) // 10].astype(float)
    empty = np.zeros((60, g))
    with_empty = lk.metrics.alignment_expression_scores(
        _counts_section(np.vstack([sx, empty]), np.vstack([xy, far]), "spatial_aligned"),
        _counts_section(np.vstack([tx, empty]), np.vstack([xy, far]), "spatial"),
        n_top_genes=20,
    )
    assert with_empty["n_pairs"] == 100
    np.testing.assert_allclose(with_empty["pearson"][:40], res["pearson"], rtol=1e-12)
    assert np.isnan(with_empty["pearson"][40:]).all()
    assert with_empty["pearson_median"] == res["pearson_median"]
    assert with_empty["kendall_tau_median"] == res["kendall_tau_median"]


@pytest.mark.parametrize("kendall", [True, False])
@pytest.mark.parametrize("sparse_input", [False, True])
def test_matched_expression_correlation_names_non_finite_expression(kendall, sparse_input):
    """With kendall=False a NaN gave its pair NaN and left it out of the median without a word; with
    kendall=True the error named "x and y"."""
    xy = np.c_[np.arange(4.0), np.zeros(4)]
    expr = np.arange(12.0).reshape(4, 3) % 5
    bad = expr.copy()
    bad[2, 1] = np.nan
    as_input = sp.csr_matrix if sparse_input else np.asarray
    with pytest.raises(ValueError, match=r"^expr_source \(the source's expression\) holds 1 NaN or infinite"):
        lk.metrics.matched_expression_correlation(as_input(expr), xy, as_input(bad), xy, kendall=kendall)
    with pytest.raises(ValueError, match=r"^expr_target \(the target's expression\) holds 1 NaN"):
        lk.metrics.matched_expression_correlation(as_input(bad), xy, as_input(expr), xy, kendall=kendall)


def test_matched_expression_correlation_is_the_same_taken_a_block_of_pairs_at_a_time(monkeypatch):
    from loki.metrics import _alignment

    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 30, (300, 2))
    et = sp.random(300, 40, density=0.3, random_state=1, format="csr") * 10
    es = rng.poisson(1.0, (300, 40)).astype(float)
    es[:5] = 0.0  # constant profiles: NaN pairs
    whole = lk.metrics.matched_expression_correlation(et, xy, es, xy + 0.3, max_distance=1.0)
    monkeypatch.setattr(_alignment, "_PAIR_BLOCK", 7 * 40)  # 7 pairs a block, the last one short
    blocks = lk.metrics.matched_expression_correlation(et, xy, es, xy + 0.3, max_distance=1.0)
    assert whole.keys() == blocks.keys()
    assert len(whole["pearson"]) > 200
    assert np.isnan(whole["pearson"]).any()
    for key in whole:
        np.testing.assert_array_equal(whole[key], blocks[key])
    pairs = zip(whole["target_index"], whole["source_index"], strict=True)
    tau = [lk.metrics.kendall_tau(et[i].toarray().ravel(), es[j]) for i, j in pairs]
    np.testing.assert_array_equal(whole["kendall_tau"], tau)


@pytest.mark.parametrize("dense", [False, True])
def test_gene_variances_of_log_normalised_counts_over_the_spots_with_counts(dense, monkeypatch):
    # as scanpy's normalize_total + log1p, then the variance over spots with counts; X is not touched
    from loki.metrics import _alignment

    rng = np.random.default_rng(5)
    counts = rng.poisson(0.8, (60, 12)).astype(np.float32)
    counts[[3, 17]] = 0.0  # spots without counts
    counts[3, 4] = 1.0
    x = sp.csr_matrix(counts)
    x.data[x.indptr[3] : x.indptr[4]] = 0.0  # an explicit zero in a spot without counts
    counts[3, 4] = 0.0
    a = AnnData(counts.copy() if dense else x.copy())
    a.var_names = [f"g{i}" for i in range(12)]
    before = a.X.copy()
    genes = a.var_names[[7, 2, 5, 0, 11]]
    norm = _alignment._LogCounts(a, genes)
    sub = counts[:, [7, 2, 5, 0, 11]].astype(np.float64)
    lib = sub.sum(axis=1)
    expected = np.log1p(sub * (np.median(lib[lib > 0]) / np.where(lib > 0, lib, 1.0))[:, None])
    np.testing.assert_allclose(norm.rows(slice(None)).toarray(), expected, rtol=1e-14)
    np.testing.assert_array_equal(norm.has_counts, lib > 0)
    var, non_finite = norm.gene_variances()
    np.testing.assert_allclose(var, expected[lib > 0].var(axis=0), rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(non_finite, 0)
    np.testing.assert_array_equal(a.X if dense else a.X.toarray(), before if dense else before.toarray())
    # a few spots at a time: the same values and sums, bit for bit
    monkeypatch.setattr(_alignment, "_PAIR_BLOCK", 7 * 5)
    in_blocks = _alignment._LogCounts(a, genes)
    np.testing.assert_array_equal(in_blocks.rows(slice(None)).toarray(), norm.rows(slice(None)).toarray())
    np.testing.assert_array_equal(in_blocks.gene_variances()[0], var)


def test_log_normalised_counts_of_a_matrix_storing_an_entry_twice():
    """A CSR matrix may store one entry as two values (summed by scipy): log1p was taken of each."""
    from loki.metrics._alignment import _LogCounts

    x = sp.csr_matrix(
        (np.array([1.0, 1.0, 2.0, 3.0]), np.array([0, 0, 1, 1]), np.array([0, 3, 4])), shape=(2, 2)
    )
    a = AnnData(x)
    a.var_names = ["g0", "g1"]
    norm = _LogCounts(a, a.var_names)
    dense = x.toarray()  # [[2, 2], [0, 3]]
    lib = dense.sum(axis=1)
    expected = np.log1p(dense * (np.median(lib) / lib)[:, None])
    np.testing.assert_allclose(norm.rows(slice(None)).toarray(), expected, rtol=1e-14)
    np.testing.assert_allclose(
        norm.rows(np.array([1, 0, 1]), np.array([1])).toarray(), expected[[1, 0, 1]][:, [1]]
    )
    np.testing.assert_allclose(norm.gene_variances()[0], expected.var(axis=0), rtol=1e-12)


def _messy_counts(n: int, g: int, seed: int) -> sp.csr_matrix:
    # entries stored twice or three times, unsorted within their spot, explicit zeros, fractions
    rng = np.random.default_rng(seed)
    nnz = n * g // 3
    rows = np.sort(rng.integers(0, n - 5, nnz))  # the last 5 spots without counts
    values = rng.gamma(1.0, 2.0, nnz) * rng.choice([1.0, 0.1, 1 / 3], nnz)
    values[rng.random(nnz) < 0.05] = 0.0
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))]
    x = sp.csr_matrix((values, rng.integers(0, g, nnz), indptr), shape=(n, g))
    assert not x.has_canonical_format
    return x


def test_alignment_expression_scores_the_same_a_few_spots_at_a_time(tmp_path, monkeypatch):
    """Spots are log-normalised a block at a time, so that no float64 copy of every gene is made;
    the genes chosen and every coefficient are the same, bit for bit, as with the whole matrix
    normalised at once (written out here densely), for duplicated entries and backed tables too."""
    from loki.metrics import _alignment

    n, g = 300, 40
    xy = np.c_[np.arange(n) % 20, np.arange(n) // 20].astype(float)
    xt, xs = _messy_counts(n, g, 1), _messy_counts(n, g, 2)
    target = AnnData(xt)
    target.var_names = [f"g{i}" for i in range(g)]
    target.obsm["spatial"] = xy
    source = AnnData(sp.hstack([xs[:, ::-1], _messy_counts(n, 3, 3)]).tocsr())  # other order, more genes
    source.var_names = [f"g{i}" for i in range(g)][::-1] + ["a", "b", "c"]
    source.obsm["spatial_aligned"] = xy + 0.3

    def log_norm(x):
        x = x.toarray()
        lib = x.sum(axis=1)
        return np.log1p(x * (np.median(lib[lib > 0]) / np.where(lib > 0, lib, 1.0))[:, None])

    lt, ls = log_norm(xt), log_norm(xs[:, ::-1])[:, ::-1]
    top = np.argsort(-lt[:-5].var(axis=0), kind="stable")[:15]
    expected = [np.corrcoef(lt[i, top], ls[i, top])[0, 1] for i in range(n - 5)]

    whole = lk.metrics.alignment_expression_scores(source, target, n_top_genes=15)
    np.testing.assert_allclose(whole["pearson"][: n - 5], expected, rtol=1e-12)
    assert np.isnan(whole["pearson"][n - 5 :]).all()
    target.write_h5ad(tmp_path / "t.h5ad")
    source.write_h5ad(tmp_path / "s.h5ad")
    monkeypatch.setattr(_alignment, "_PAIR_BLOCK", 7 * 15)  # 2 spots (40 genes) or 7 pairs a block
    for src, tgt in [
        (source, target),
        (
            anndata.read_h5ad(tmp_path / "s.h5ad", backed="r"),
            anndata.read_h5ad(tmp_path / "t.h5ad", backed="r"),
        ),
    ]:
        blocks = lk.metrics.alignment_expression_scores(src, tgt, n_top_genes=15)
        assert blocks.keys() == whole.keys()
        for key in whole:
            np.testing.assert_array_equal(blocks[key], whole[key])


@pytest.mark.parametrize("logged", [False, True])
def test_alignment_expression_scores_makes_no_float64_copy_of_the_counts(monkeypatch, logged):
    """Both sections were held as float64 over all shared genes (2.8 GB over the inputs at 200,000
    spots x 500 genes) until the top genes were chosen. Values that are not counts are told apart a
    block of spots at a time too."""
    import tracemalloc

    from loki.metrics import _alignment

    monkeypatch.setattr(_alignment, "_PAIR_BLOCK", 1 << 14)  # blocks of 54 spots (300 genes)
    n, g = 4000, 300
    rng = np.random.default_rng(0)
    xy = np.c_[np.arange(n) % 64, np.arange(n) // 64].astype(float)
    sections = []
    for seed in (0, 1):
        x = sp.random(n, g, density=0.5, format="csr", dtype=np.float32, random_state=seed)
        x.data = np.ceil(x.data * 5)
        if logged:
            x.data = np.log1p(x.data)
        a = AnnData(x)
        a.var_names = [f"g{i}" for i in range(g)]
        a.obsm["spatial"] = a.obsm["spatial_aligned"] = xy + rng.uniform(0, 0.1, (n, 2))
        sections.append(a)
    copy_mb = sections[0].X.nnz * 12 / 2**20  # a float64 CSR copy of one section
    tracemalloc.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lk.metrics.alignment_expression_scores(*sections, n_top_genes=50, kendall=False)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert peak_mb < 0.5 * copy_mb, (peak_mb, copy_mb)
    told = [str(w.message) for w in caught if "looks log1p-transformed" in str(w.message)]
    assert len(told) == logged


def test_alignment_expression_scores_reads_tables_opened_backed(tmp_path):
    """Sections opened with backed='r' score as in memory (a faster path read .X by column indexing,
    which anndata's backed matrices refuse)."""
    import anndata as ad

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    target, source = sdata.tables["MOB1"].copy(), sdata.tables["MOB2"].copy()
    source.obsm["spatial_aligned"] = source.obsm["spatial"]
    in_memory = lk.metrics.alignment_expression_scores(source, target)
    target.write_h5ad(tmp_path / "t.h5ad")
    source.write_h5ad(tmp_path / "s.h5ad")
    backed = lk.metrics.alignment_expression_scores(
        ad.read_h5ad(tmp_path / "s.h5ad", backed="r"), ad.read_h5ad(tmp_path / "t.h5ad", backed="r")
    )
    for key in ("pearson_median", "kendall_tau_median", "n_pairs"):
        assert backed[key] == in_memory[key]


def test_alignment_expression_scores_pairs_in_the_frame_the_alignment_was_registered_onto(good_and_bad):
    """A source chained onto its target's aligned coordinates (``align_sections(sequential=True)``)
    is scored against those by default, not against the target's own ``"spatial"``."""
    src, tgt, good, _ = good_and_bad
    src, tgt = src.copy(), tgt.copy()
    # the target's aligned coordinates: its own, moved; the source's aligned coordinates follow them
    shift = np.array([500.0, -300.0])
    tgt.obsm["spatial_aligned"] = tgt.obsm["spatial"] + shift
    src.obsm["spatial_aligned"] = src.obsm["good"] + shift
    src.uns["loki"] = {"spatial_aligned": {"params": {"target_spatial_key": "spatial_aligned"}}}
    chained = lk.metrics.alignment_expression_scores(src, tgt, n_top_genes=50)
    assert chained["n_pairs"] == good["n_pairs"] == tgt.n_obs
    assert chained["pearson_median"] == pytest.approx(good["pearson_median"])
    # named, the key is used as given
    with pytest.warns(lk.LokiWarning, match="No target spot"):
        lk.metrics.alignment_expression_scores(src, tgt, target_key="spatial", n_top_genes=50)
    # a target without the recorded coordinates is refused, naming them
    del tgt.obsm["spatial_aligned"]
    with pytest.raises(KeyError, match=r"'spatial_aligned' not found in target\.obsm.*target_spatial_key"):
        lk.metrics.alignment_expression_scores(src, tgt, n_top_genes=50)
    # an alignment onto the target's own coordinates (and the unaligned "before") pair with "spatial"
    src.uns["loki"]["spatial_aligned"]["params"]["target_spatial_key"] = "spatial"
    src.obsm["spatial_aligned"] = src.obsm["good"]
    again = lk.metrics.alignment_expression_scores(src, tgt, n_top_genes=50)
    assert again["pearson_median"] == pytest.approx(good["pearson_median"])
