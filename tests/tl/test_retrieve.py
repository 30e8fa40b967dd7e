from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import given, settings
from hypothesis import strategies as st

import loki as lk
from loki.tl._candidates import topk_cosine_pca
from loki.tl._retrieve import topk_cosine


def _brute(q, b, k):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = qn @ bn.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@settings(max_examples=30, deadline=None)
@given(
    n_q=st.integers(1, 20),
    n_b=st.integers(1, 300),
    d=st.integers(1, 12),
    k=st.integers(1, 20),
    chunk=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_topk_matches_brute_force_for_any_chunking(n_q, n_b, d, k, chunk, seed):
    k = min(k, n_b)
    rng = np.random.default_rng(seed)
    q, b = rng.normal(size=(n_q, d)), rng.normal(size=(n_b, d))
    idx, scores = topk_cosine(q, b, k, chunk_size=chunk)
    ref_idx, ref_scores = _brute(q, b, k)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    # every returned index is a distinct bank row whose similarity is the score returned with it
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    sim = qn @ bn.T
    np.testing.assert_allclose(np.take_along_axis(sim, idx, axis=1), scores, atol=1e-5)
    assert all(len(set(row)) == k for row in idx.tolist())
    # and the index is brute force's wherever no other bank row scores within float32 precision
    near = (np.abs(sim[:, None, :] - ref_scores[:, :, None]) <= 1e-5).sum(axis=2) > 1
    np.testing.assert_array_equal(idx[~near], ref_idx[~near])


def test_topk_splits_many_queries_into_blocks(monkeypatch):
    # the score block stays at q_block x chunk whatever the number of queries
    monkeypatch.setattr("loki.tl._retrieve.query_block_size", lambda chunk: 3)
    rng = np.random.default_rng(7)
    q, b = rng.normal(size=(10, 6)), rng.normal(size=(50, 6))
    idx, scores = topk_cosine(q, b, 4, chunk_size=16)
    ref_idx, ref_scores = _brute(q, b, 4)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    k=st.integers(1, 40),
    chunk=st.integers(1, 40),
    normalize=st.booleans(),
)
def test_topk_ties_keep_the_lower_bank_index(values, k, chunk, normalize):
    """Duplicated bank rows (identical sentences give identical text embeddings) score exactly alike:
    the kept ones, and their order, are those of a stable sort by score."""
    n = len(values)
    k = min(k, n)
    bank = np.column_stack([np.asarray(values, dtype=np.float32), np.ones(n, np.float32)])
    query = np.array([[1.0, 0.5]], np.float32)
    idx, _ = topk_cosine(query, bank, k, normalize=normalize, chunk_size=chunk)
    scores = (bank / np.linalg.norm(bank, axis=1, keepdims=True) if normalize else bank) @ query[0]
    np.testing.assert_array_equal(idx[0], np.lexsort((np.arange(n), -scores))[:k])


@settings(max_examples=30, deadline=None)
@given(q_exp=st.integers(-90, 90), b_exp=st.integers(-90, 90), seed=st.integers(0, 2**16))
def test_cosine_search_ignores_the_embeddings_scale(q_exp, b_exp, seed):
    """Cosine similarity does not depend on the rows' scale: embeddings of any float32 magnitude
    (2**66 is about 1e20, 2**-83 about 1e-25; their squares leave float32) give the search of the
    unscaled ones, bit for bit, since a power of two scales exactly."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(4, 6)).astype(np.float32)
    b = rng.normal(size=(40, 6)).astype(np.float32)
    qs, bs = q * np.float32(2.0**q_exp), b * np.float32(2.0**b_exp)
    for search in (topk_cosine, lambda x, y, k: topk_cosine_pca(x, y, k, n_components=3, n_candidates=10)):
        idx, scores = search(q, b, 5)
        idx_s, scores_s = search(qs, bs, 5)
        np.testing.assert_array_equal(idx_s, idx)
        np.testing.assert_array_equal(scores_s, scores)


def test_retrieve_tidy_frame_with_anndata_bank_and_metadata():
    rng = np.random.default_rng(0)
    bank = AnnData(
        obs=pd.DataFrame({"section": ["A"] * 50 + ["B"] * 50}, index=[f"b{i}" for i in range(100)])
    )
    bank.obsm["loki_text"] = rng.normal(size=(100, 16)).astype(np.float32)
    query = AnnData(obs=pd.DataFrame(index=[f"q{i}" for i in range(7)]))
    query.obsm["loki_image"] = bank.obsm["loki_text"][[3, 10, 20, 30, 40, 60, 99]] + 0.01
    res = lk.tl.retrieve(query, bank, k=5, bank_metadata=["section"], chunk_size=13)
    assert list(res.columns) == ["query", "query_index", "rank", "bank_id", "bank_index", "score", "section"]
    assert len(res) == 35
    top1 = res[res["rank"] == 1]
    assert top1["bank_id"].tolist() == ["b3", "b10", "b20", "b30", "b40", "b60", "b99"]
    assert top1["section"].tolist() == ["A"] * 5 + ["B"] * 2
    _idx, scores = _brute(query.obsm["loki_image"], bank.obsm["loki_text"], 5)
    np.testing.assert_allclose(res["score"].to_numpy().reshape(7, 5), scores, atol=1e-5)
    assert set(query.obsm) == {"loki_image"}  # nothing written

    # a metadata frame indexed by the bank's names is matched by name, in any order
    frame = bank.obs[["section"]].iloc[::-1].rename(columns={"section": "part"})
    by_name = lk.tl.retrieve(query, bank, k=5, bank_metadata=frame)
    assert by_name["part"].tolist() == res["section"].tolist()
    with pytest.raises(ValueError, match=r"column\(s\) \['score'\] would clash"):
        lk.tl.retrieve(query, bank, k=5, bank_metadata=frame.rename(columns={"part": "score"}))
    # one name misspelt: joined by position, every row of the reversed frame went to the wrong hit
    misspelt = frame.rename(index={frame.index[0]: frame.index[0].upper()})
    with pytest.raises(ValueError, match=r"not the bank's rows one to one \(e\.g\. \['B"):
        lk.tl.retrieve(query, bank, k=5, bank_metadata=misspelt)
    by_position = lk.tl.retrieve(query, bank, k=5, bank_metadata=frame.iloc[::-1].reset_index(drop=True))
    assert by_position["part"].tolist() == res["section"].tolist()


def test_retrieve_array_bank_memmap(tmp_path):
    rng = np.random.default_rng(1)
    b = rng.normal(size=(500, 8)).astype(np.float32)
    np.save(tmp_path / "bank.npy", b)
    bank = np.load(tmp_path / "bank.npy", mmap_mode="r")
    q = rng.normal(size=(4, 8))
    res = lk.tl.retrieve(q, bank, k=3, bank_ids=[f"t{i}" for i in range(500)], chunk_size=100)
    ref_idx, _ = _brute(q, b, 3)
    assert res["bank_index"].to_numpy().reshape(4, 3).tolist() == ref_idx.tolist()
    assert res["bank_id"].iloc[0] == f"t{ref_idx[0, 0]}"


@pytest.mark.parametrize(
    ("q", "b", "k", "match"),
    [
        (np.ones((2, 3)), np.ones((5, 4)), 2, "Embedding sizes differ"),
        (np.ones((2, 3)), np.ones((5, 3)), 6, "larger than the bank"),
        (np.ones((2, 3)), np.ones((5, 3)), 0, "positive integer"),
        (np.ones((2, 3)), np.zeros((5, 3)), 1, "zero, non-finite"),
        # a norm whose inverse leaves float32 gave infinite scores and wrong neighbours
        (np.ones((2, 3)), np.full((5, 3), 1e-40, np.float32), 1, r"bank has 5 .*out-of-range"),
        (np.full((2, 3), 1e-40, np.float32), np.ones((5, 3)), 1, r"queries has 2 .*out-of-range"),
        (np.ones((2, 3)), np.full((5, 3), 3e38, np.float32), 1, r"out-of-range \(norm outside"),
        (np.full((2, 3), np.nan), np.ones((5, 3)), 1, "NaN"),
    ],
)
def test_retrieve_bad_input(q, b, k, match):
    with pytest.raises(ValueError, match=match):
        lk.tl.retrieve(q, b, k=k)


def test_retrieve_missing_key():
    a = AnnData(obs=pd.DataFrame(index=["x"]))
    with pytest.raises(KeyError, match=r"query\.obsm"):
        lk.tl.retrieve(a, np.ones((3, 2)), k=1)


def test_sparse_and_dataframe_embeddings_give_the_dense_result():
    # a sparse .obsm (e.g. kept by a pipeline that stores every matrix as CSR) raised
    # "setting an array element with a sequence"
    from scipy import sparse

    rng = np.random.default_rng(2)
    bank = AnnData(obs=pd.DataFrame(index=[f"b{i}" for i in range(30)]))
    bank.obsm["loki_text"] = rng.normal(size=(30, 6)).astype(np.float32)
    bank.obsm["csr"] = sparse.csr_matrix(bank.obsm["loki_text"])
    q = rng.normal(size=(4, 6))
    dense = lk.tl.retrieve(q, bank, k=3)
    pd.testing.assert_frame_equal(lk.tl.retrieve(q, bank, k=3, use_bank="csr"), dense)
    pd.testing.assert_frame_equal(lk.tl.retrieve(sparse.csr_matrix(q), bank, k=3), dense)
    for search in ("pca", "ivf"):
        pd.testing.assert_frame_equal(
            lk.tl.retrieve(q, bank, k=3, use_bank="csr", search=search),
            lk.tl.retrieve(q, bank, k=3, search=search),
        )


@pytest.mark.parametrize(
    ("query", "error", "match"),
    [
        ("spot_1", ValueError, r"query must be a 2-D array of embeddings .* got shape \(\)"),
        (np.ones(3), ValueError, r"got shape \(3,\) \(one embedding: pass x\[None, :\]\)"),
        (np.full((2, 3), "a"), TypeError, r"query must hold real numbers, got dtype <U1"),
        (np.ones((2, 3), dtype=complex), TypeError, r"query must hold real numbers, got dtype complex128"),
    ],
)
def test_input_that_is_not_a_2d_array_of_numbers_is_named(query, error, match):
    # a string gave "IndexError: tuple index out of range"
    with pytest.raises(error, match=match):
        lk.tl.retrieve(query, np.ones((5, 3)), k=1)


def test_spatialdata_with_several_tables_names_the_parameter_to_pass():
    # the message said "pass table_key=", which retrieve does not take
    import spatialdata as sd

    def table(n):
        t = AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]))
        t.obsm["loki_text"] = t.obsm["loki_image"] = np.eye(n, 4, dtype=np.float32) + 0.1
        return t

    sdata = sd.SpatialData(tables={"A": table(4), "B": table(3)})
    with pytest.raises(
        ValueError, match=r"bank SpatialData holds 2 tables \('A', 'B'\); pass bank_table_key="
    ):
        lk.tl.retrieve(np.ones((1, 4)), sdata, k=1)
    with pytest.raises(ValueError, match=r"query SpatialData .* pass query_table_key="):
        lk.tl.retrieve(sdata, np.ones((2, 4)), k=1)
    hits = lk.tl.retrieve(sdata, sdata, k=1, query_table_key="B", bank_table_key="A")
    assert hits["bank_id"].tolist() == ["s0", "s1", "s2"]


def test_repeated_bank_names_warn_that_bank_id_is_ambiguous():
    # sections joined by anndata.concat without index_unique repeat spot names: bank_id named
    # several rows, silently
    import anndata as ad

    rng = np.random.default_rng(3)
    sections = []
    for _ in ("S1", "S2"):
        s = AnnData(obs=pd.DataFrame(index=[f"{r}x{c}" for r in range(3) for c in range(3)]))
        s.obsm["loki_text"] = rng.normal(size=(9, 5)).astype(np.float32)
        sections.append(s)
    q = rng.normal(size=(2, 5))
    with pytest.warns(UserWarning, match="not unique"):  # anndata's own warning
        library = ad.concat(sections, label="section", keys=["S1", "S2"])
    with pytest.warns(lk.LokiWarning, match=r"9 bank row name\(s\) repeat .* 'bank_id' does not tell"):
        hits = lk.tl.retrieve(q, library, k=3, bank_metadata="section")
    unique = ad.concat(sections, label="section", keys=["S1", "S2"], index_unique="-")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = lk.tl.retrieve(q, unique, k=3, bank_metadata="section")
    pd.testing.assert_frame_equal(again.drop(columns="bank_id"), hits.drop(columns="bank_id"))
    with pytest.warns(lk.LokiWarning, match=r"1 bank row name\(s\) repeat \(e\.g\. \['x'\]\)"):
        lk.tl.retrieve(q, library, k=3, bank_ids=["x"] * 18)
    with pytest.raises(
        ValueError, match=r"bank_ids must be a sequence of one name per bank row \(18\), got str"
    ):
        lk.tl.retrieve(q, library, k=3, bank_ids="abc")


def test_bank_metadata_labelled_by_position_joins_by_label_and_a_series_is_one_column():
    rng = np.random.default_rng(4)
    bank = AnnData(obs=pd.DataFrame({"x": np.arange(20)}, index=[f"b{i}" for i in range(20)]))
    bank.obsm["loki_text"] = rng.normal(size=(20, 4)).astype(np.float32)
    q = rng.normal(size=(3, 4))
    # frame[::-1] keeps a RangeIndex (19..0): it was joined by position, so bank row 6 got x=13
    for meta in (
        bank.obs.reset_index(drop=True).iloc[::-1],
        bank.obs.reset_index(drop=True).sample(frac=1, random_state=0),
    ):
        hits = lk.tl.retrieve(q, bank, k=5, bank_metadata=meta)
        np.testing.assert_array_equal(hits["x"], hits["bank_index"])
    # a Series was read as a list of column names ("'0', '1', ... not found in bank.obs")
    hits = lk.tl.retrieve(q, bank, k=5, bank_metadata=bank.obs["x"])
    np.testing.assert_array_equal(hits["x"], hits["bank_index"])
    with pytest.raises(ValueError, match=r"not the bank's rows one to one \(e\.g\. \[1, 2, 3\]"):
        lk.tl.retrieve(q, bank, k=5, bank_metadata=bank.obs.set_index(np.arange(1, 21)))
