from __future__ import annotations

import re

import numpy as np
import pytest
from anndata import AnnData
from hypothesis import given, settings
from hypothesis import strategies as st

import loki as lk
from loki.tl._candidates import PCA_FIT_ROWS, check_search, pca_axes, topk_cosine_pca, topk_search
from loki.tl._predict import predict_from_embeddings
from loki.tl._retrieve import l2_normalize, topk_cosine

SEED_MESSAGE = r"seed must be a non-negative integer, a numpy Generator or None"


def _low_rank(n, d, rank, noise, seed, basis_seed=7):
    # rows = latent (rank dims) x a fixed basis + isotropic noise: a fast-decaying covariance spectrum
    basis = np.random.default_rng(basis_seed).normal(size=(rank, d))
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, rank)) @ basis + noise * rng.normal(size=(n, d))).astype(np.float32)


def _assert_same_topk(idx, s, exact_idx, exact_s):
    np.testing.assert_allclose(s, exact_s, rtol=1e-5, atol=1e-5)
    # same rows, up to float ties between near-equal scores
    same = idx == exact_idx
    assert same.all() or np.allclose(s[~same], exact_s[~same], atol=1e-5)


def _recall(found, exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True)])


def _guaranteed_fraction(q, ref, exact_idx, n_components, n_candidates):
    """Fraction of the exact top-k that the candidate stage provably keeps.

    For unit q and r, the projected score (V'q).(V'(r - mean)) differs from q.(r - mean) by at most
    |q_perp| |(r - mean)_perp| (Cauchy-Schwarz on the parts outside the axes). A row whose exact score
    minus its bound is beaten by fewer than n_candidates rows' exact score plus their bound is certainly a
    candidate, and a true top-k candidate survives the exact re-rank.
    """
    qn, rn = l2_normalize(q), l2_normalize(ref)
    mean, axes = pca_axes(rn, n_components)  # all rows: n_ref <= PCA_FIT_ROWS
    rc = rn - mean
    exact = qn @ rc.T
    q_perp = np.linalg.norm(qn - (qn @ axes) @ axes.T, axis=1)
    r_perp = np.linalg.norm(rc - (rc @ axes) @ axes.T, axis=1)
    delta = q_perp[:, None] * r_perp[None, :] + 1e-4
    upper, lower = exact + delta, exact - delta
    kept = 0
    for i, rows in enumerate(exact_idx):
        for j in rows:
            kept += (upper[i] >= lower[i, j]).sum() <= n_candidates
    return kept / exact_idx.size


def test_pca_search_recall_on_low_rank_data_meets_the_bound():
    ref = _low_rank(3000, 96, 8, 0.05, 0)
    q = _low_rank(200, 96, 8, 0.05, 1)
    k, n_comp, n_cand = 10, 16, 80
    assert len(ref) <= PCA_FIT_ROWS
    exact_idx, exact_s = topk_cosine(q, ref, k)
    idx, scores = topk_cosine_pca(q, ref, k, n_components=n_comp, n_candidates=n_cand)
    bound = _guaranteed_fraction(q, ref, exact_idx, n_comp, n_cand)
    recall = _recall(idx, exact_idx)
    assert bound > 0.5  # the bound says something on this data
    assert recall >= bound
    assert recall >= 0.95
    # scores are the exact cosine similarities of the rows returned, best first
    np.testing.assert_allclose(
        scores, np.take_along_axis(l2_normalize(q) @ l2_normalize(ref).T, idx, 1), rtol=1e-5, atol=1e-6
    )
    assert (np.diff(scores, axis=1) <= 0).all()
    # an approximate search never beats the exact scores rank by rank
    assert (scores <= exact_s + 1e-5).all()


def test_pca_search_recall_is_poor_on_isotropic_data():
    # no low-rank structure: a few axes carry little of the similarity (documented worst case)
    rng = np.random.default_rng(3)
    ref, q = rng.normal(size=(2000, 128)), rng.normal(size=(100, 128))
    exact_idx, _ = topk_cosine(q, ref, 10)
    idx, _ = topk_cosine_pca(q, ref, 10, n_components=8, n_candidates=20)
    assert _recall(idx, exact_idx) < 0.5


@settings(max_examples=25, deadline=None)
@given(
    n_ref=st.integers(5, 60),
    d=st.integers(2, 12),
    n_q=st.integers(1, 8),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_full_axes_and_all_candidates_equal_exact(n_ref, d, n_q, k, seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_ref, d)).astype(np.float32)
    q = rng.normal(size=(n_q, d)).astype(np.float32)
    k = min(k, n_ref)
    exact_idx, exact_s = topk_cosine(q, ref, k)
    idx, s = topk_cosine_pca(q, ref, k, n_components=d, n_candidates=n_ref)
    _assert_same_topk(idx, s, exact_idx, exact_s)


@settings(max_examples=15, deadline=None)
@given(n_ref=st.integers(20, 80), d=st.integers(2, 8), n_lists=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_ivf_probing_every_cell_equals_exact(n_ref, d, n_lists, seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_ref, d)).astype(np.float32)
    q = rng.normal(size=(5, d)).astype(np.float32)
    exact_idx, exact_s = topk_cosine(q, ref, 3)
    idx, s = topk_cosine_pca(q, ref, 3, n_components=d, n_candidates=n_ref, n_lists=n_lists, n_probe=n_lists)
    _assert_same_topk(idx, s, exact_idx, exact_s)


def test_ivf_recall_on_low_rank_data_and_few_probes():
    ref = _low_rank(3000, 96, 8, 0.05, 0)
    q = _low_rank(200, 96, 8, 0.05, 1)
    exact_idx, _ = topk_cosine(q, ref, 10)
    full, _ = topk_cosine_pca(q, ref, 10, n_components=16, n_candidates=80)
    few, _ = topk_cosine_pca(q, ref, 10, n_components=16, n_candidates=80, n_lists=50, n_probe=10)
    one, _ = topk_cosine_pca(q, ref, 10, n_components=16, n_candidates=80, n_lists=50, n_probe=1)
    # probing fewer cells can only lose candidates of the full scan: recall ordered, and still high
    assert _recall(one, exact_idx) <= _recall(few, exact_idx) + 0.02
    assert _recall(few, exact_idx) <= _recall(full, exact_idx) + 1e-9
    assert _recall(few, exact_idx) >= 0.9
    # a query whose probed cells hold fewer than k rows falls back to a full scan: still k distinct hits
    tiny, _ = topk_cosine_pca(q, ref, 10, n_components=16, n_candidates=80, n_lists=1000, n_probe=1)
    assert all(len(set(row)) == 10 and (row >= 0).all() for row in tiny)


def test_predict_pca_search_equals_exact_with_full_axes_and_candidates():
    rng = np.random.default_rng(2)
    q, r, x = rng.normal(size=(30, 12)), rng.normal(size=(150, 12)), rng.random((150, 7))
    exact, _ = predict_from_embeddings(q, r, x, top_k=10, temperature=0.1)
    approx, _ = predict_from_embeddings(
        q, r, x, top_k=10, temperature=0.1, search="pca", n_components=12, n_candidates=150
    )
    np.testing.assert_allclose(approx, exact, rtol=1e-4, atol=1e-6)


def test_same_seed_same_result_on_a_subsampled_fit():
    n = PCA_FIT_ROWS + 500  # the axes are fitted on a seeded subsample
    ref = _low_rank(n, 24, 4, 0.2, 0)
    q = _low_rank(50, 24, 4, 0.2, 1)
    a = topk_cosine_pca(q, ref, 5, n_components=4, n_candidates=10, seed=3)
    b = topk_cosine_pca(q, ref, 5, n_components=4, n_candidates=10, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_topk_search_runs_the_search_check_search_resolved():
    """predict_expression and retrieve share this dispatch: exact search keeps ``normalize`` and
    ``chunk_size``, approximate search gets the resolved sizes and the seed."""
    rng = np.random.default_rng(0)
    ref = _low_rank(600, 24, 4, 0.2, 0) * rng.uniform(0.1, 10, size=(600, 1)).astype(np.float32)
    q = _low_rank(40, 24, 4, 0.2, 1)
    for normalize in (True, False):
        got = topk_search(q, ref, 5, None, seed=1, normalize=normalize, chunk_size=70)
        want = topk_cosine(q, ref, 5, normalize=normalize, chunk_size=70)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # one probed cell of 16: the k-means cells, hence the hits, depend on the seed
    sizes = check_search("ivf", 5, len(ref), ref.shape[1], None, None, 16, 1, 0)
    by_seed = [topk_search(q, ref, 5, sizes, seed=seed, chunk_size=70) for seed in (1, 2)]
    assert (by_seed[0][0] != by_seed[1][0]).any()
    for seed, (idx, scores) in zip((1, 2), by_seed, strict=True):
        want_idx, want_scores = topk_cosine_pca(q, ref, 5, **sizes, seed=seed)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("search", [{}, {"n_lists": 8, "n_probe": 3}])
def test_a_float64_memory_map_gives_the_float32_result(tmp_path, search):
    """A float64 bank is not cast whole: only the candidates' rows are read; results equal float32's."""
    ref = _low_rank(3000, 24, 4, 0.2, 0).astype(np.float64)
    q = _low_rank(60, 24, 4, 0.2, 1)
    mapped = np.lib.format.open_memmap(tmp_path / "bank.npy", mode="w+", dtype=np.float64, shape=ref.shape)
    mapped[:] = ref
    mapped.flush()
    bank = np.load(tmp_path / "bank.npy", mmap_mode="r")
    idx64, s64 = topk_cosine_pca(q, bank, 7, n_components=4, n_candidates=40, seed=0, **search)
    idx32, s32 = topk_cosine_pca(
        q, ref.astype(np.float32), 7, n_components=4, n_candidates=40, seed=0, **search
    )
    np.testing.assert_array_equal(idx64, idx32)
    np.testing.assert_allclose(s64, s32, atol=1e-6)


def _tables(n_ref=300, n_q=40, d=32):
    rng = np.random.default_rng(0)
    ref = AnnData(X=rng.random((n_ref, 5)).astype(np.float32))
    ref.var_names = [f"g{i}" for i in range(5)]
    ref.obsm["loki_text"] = _low_rank(n_ref, d, 4, 0.1, 0)
    query = AnnData(X=rng.random((n_q, 5)).astype(np.float32))
    query.var_names = ref.var_names
    query.obsm["loki_image"] = _low_rank(n_q, d, 4, 0.1, 1)
    return query, ref


def test_predict_expression_records_search_settings():
    query, ref = _tables()
    out = lk.tl.predict_expression(query, ref, top_k=10, search="pca", n_components=8, seed=5)
    params = out.uns["loki"]["loki_predicted"]
    assert (params["search"], params["n_components"], params["n_candidates"], params["seed"]) == (
        "pca",
        8,
        40,
        5,
    )
    ivf = lk.tl.predict_expression(query, ref, top_k=10, search="ivf", n_lists=10, n_probe=3)
    p = ivf.uns["loki"]["loki_predicted"]
    assert (p["search"], p["n_components"], p["n_lists"], p["n_probe"]) == ("ivf", 32, 10, 3)
    exact = lk.tl.predict_expression(query, ref, top_k=10)
    p = exact.uns["loki"]["loki_predicted"]
    assert (p["search"], p["n_components"], p["n_candidates"]) == ("exact", -1, -1)
    # low-rank embeddings: the approximate prediction is close to the exact one
    assert np.corrcoef(out.X.ravel(), exact.X.ravel())[0, 1] > 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 10, "search": "annoy"}, "search must be"),
        ({"search": "pca"}, "needs top_k"),
        ({"top_k": 10, "search": "pca", "n_components": 0}, "n_components"),
        ({"top_k": 10, "search": "pca", "n_components": 33}, "n_components"),
        ({"top_k": 10, "search": "pca", "n_components": 4.5}, "n_components"),
        ({"top_k": 10, "search": "pca", "n_candidates": 5}, "n_candidates"),
        ({"top_k": 10, "search": "pca", "n_candidates": 301}, "n_candidates"),
        ({"top_k": 10, "search": "pca", "seed": "a"}, "seed"),
        ({"top_k": 10, "search": "pca", "seed": -1}, rf"{SEED_MESSAGE}, got -1\."),
        ({"top_k": 10, "search": "ivf", "seed": 1.5}, rf"{SEED_MESSAGE}, got 1\.5\."),
        ({"top_k": 10, "seed": True}, rf"{SEED_MESSAGE}, got True\."),
        ({"top_k": 10, "search": "ivf", "n_lists": 0}, "n_lists"),
        ({"top_k": 10, "search": "ivf", "n_lists": 10, "n_probe": 11}, "n_probe"),
    ],
)
def test_bad_search_options_write_nothing(kwargs, match):
    query, ref = _tables()
    with pytest.raises(ValueError, match=match):
        lk.tl.predict_expression(query, ref, output="layer", **kwargs)
    assert "loki_predicted" not in query.layers
    assert "loki" not in query.uns


def test_retrieve_accepts_the_approximate_searches():
    rng = np.random.default_rng(4)
    bank, q = rng.normal(size=(120, 8)), rng.normal(size=(6, 8))
    exact = lk.tl.retrieve(q, bank, k=5)
    full = lk.tl.retrieve(q, bank, k=5, search="pca", n_components=8, n_candidates=120)
    np.testing.assert_allclose(full["score"], exact["score"], rtol=1e-5, atol=1e-6)
    ivf = lk.tl.retrieve(q, bank, k=5, search="ivf", n_components=8, n_candidates=120, n_lists=4, n_probe=4)
    np.testing.assert_allclose(ivf["score"], exact["score"], rtol=1e-5, atol=1e-6)
    assert list(ivf.columns) == list(exact.columns)
    with pytest.raises(ValueError, match="n_candidates"):
        lk.tl.retrieve(q, bank, k=5, search="pca", n_candidates=3)
    with pytest.raises(ValueError, match="normalize=True"):
        lk.tl.retrieve(q, bank, k=5, search="pca", normalize=False)


@pytest.mark.parametrize("search", ["exact", "pca", "ivf"])
@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_retrieve_refuses_a_bad_seed_whatever_the_search(search, seed):
    """numpy refused -1 and 1.5 with its own words deep inside, and True passed as 1."""
    rng = np.random.default_rng(4)
    bank, q = rng.normal(size=(40, 8)), rng.normal(size=(3, 8))
    with pytest.raises(ValueError, match=f"^{SEED_MESSAGE}, got {re.escape(repr(seed))}\\.$"):
        lk.tl.retrieve(q, bank, k=5, search=search, seed=seed)


@pytest.mark.parametrize("search", ["pca", "ivf"])
def test_a_generator_seed_is_recorded_as_the_int_that_repeats_the_run(search):
    """A Generator or None is taken as by the other seeded tools; the int drawn is recorded."""
    query, ref = _tables(n_ref=PCA_FIT_ROWS + 300)  # the axes are fitted on a seeded subsample
    options = {"top_k": 10, "search": search, "n_components": 4}
    first = lk.tl.predict_expression(query, ref, seed=np.random.default_rng(11), **options)
    again = lk.tl.predict_expression(query, ref, seed=np.random.default_rng(11), **options)
    used = first.uns["loki"]["loki_predicted"]["seed"]
    assert isinstance(used, int)
    assert used >= 0
    assert again.uns["loki"]["loki_predicted"]["seed"] == used
    repeated = lk.tl.predict_expression(query, ref, seed=used, **options)
    np.testing.assert_array_equal(repeated.X, first.X)
    fresh = lk.tl.predict_expression(query, ref, seed=None, **options)
    assert fresh.uns["loki"]["loki_predicted"]["seed"] >= 0
    hits = lk.tl.retrieve(query, ref, k=5, search=search, seed=np.random.default_rng(11))
    np.testing.assert_array_equal(
        hits["bank_index"],
        lk.tl.retrieve(query, ref, k=5, search=search, seed=np.random.default_rng(11))["bank_index"],
    )
