from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse
from tests.conftest import shared_path

import loki as lk
from loki import Key, LokiWarning
from loki.pp._sentences import gene_filter, looks_like_ensembl


def _reference_top(x: np.ndarray, n: int) -> list[np.ndarray]:
    """The published recipe: pandas ``nlargest`` per row of a dense frame; positive entries only."""
    df = pd.DataFrame(x)
    out = []
    for i in range(len(df)):
        row = df.iloc[i]
        idx = row.nlargest(n).index.to_numpy()
        out.append(idx[row.to_numpy()[idx] > 0])
    return out


def _adata(x, names=None) -> ad.AnnData:
    x = sparse.csr_matrix(x)
    names = names if names is not None else [f"G{i}" for i in range(x.shape[1])]
    return ad.AnnData(
        x, obs=pd.DataFrame(index=[f"s{i}" for i in range(x.shape[0])]), var=pd.DataFrame(index=names)
    )


# --- kernel --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    x=arrays(
        np.float32, st.tuples(st.integers(1, 12), st.integers(2, 40)), elements=st.integers(0, 3).map(float)
    ),
    n=st.integers(1, 39),
)
def test_top_gene_indices_matches_pandas_nlargest(x, n):
    # small integer values: many ties, which must be broken by column order as pandas does
    n = min(n, x.shape[1] - 1)
    top = lk.pp.top_gene_indices(sparse.csr_matrix(x), n)
    assert top.shape == (x.shape[0], n)
    for i, ref in enumerate(_reference_top(x, n)):
        got = top[i][top[i] >= 0]
        np.testing.assert_array_equal(got, ref)
        assert (top[i][len(got) :] == -1).all()


@settings(max_examples=30, deadline=None)
@given(
    x=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 30)), elements=st.floats(0, 1e6)),
    n=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_top_gene_indices_input_format_invariance(x, n, seed):
    # dense, CSC, unsorted and duplicated CSR entries give the same result; keep mask is honoured
    ref = lk.pp.top_gene_indices(x, n)
    np.testing.assert_array_equal(lk.pp.top_gene_indices(sparse.csc_matrix(x), n), ref)
    coo = sparse.coo_matrix(x)
    half = coo.data / 2
    dup = sparse.csr_matrix(
        (np.concatenate([half, coo.data - half]), (np.tile(coo.row, 2), np.tile(coo.col, 2))), shape=x.shape
    )
    dup.has_canonical_format = False
    np.testing.assert_array_equal(lk.pp.top_gene_indices(dup, n), ref)
    keep = np.random.default_rng(seed).random(x.shape[1]) < 0.5
    masked = lk.pp.top_gene_indices(x, n, keep=keep)
    assert np.isin(masked[masked >= 0], np.flatnonzero(keep)).all()
    np.testing.assert_array_equal(masked, lk.pp.top_gene_indices(x * keep, n))


def _lexsort_top(x: np.ndarray, n: int) -> np.ndarray:
    """Reference order: value descending, column ascending; positive entries only; -1 padded."""
    out = np.full((len(x), n), -1, dtype=np.int64)
    for i, row in enumerate(x):
        order = np.lexsort((np.arange(len(row)), -row))
        order = order[row[order] > 0][:n]
        out[i, : len(order)] = order
    return out


_VALUES = st.one_of(
    st.just(0.0),
    st.integers(1, 12).map(float),  # raw counts with ties: counting path
    st.integers(4090, 4100).map(float),  # around the counting path's overflow bin
    st.floats(0.01, 50.0),  # normalised values: heap path
)


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(np.float64, st.tuples(st.integers(1, 16), st.integers(1, 60)), elements=_VALUES),
    n=st.integers(1, 20),
    order=st.sampled_from(["as_drawn", "deep_first", "shallow_first"]),
)
def test_top_gene_indices_all_paths_match_reference(x, n, order):
    # rows of different depth in sequence exercise the floor guessed from the previous row
    depth = (x > 0).sum(1)
    if order != "as_drawn":
        x = x[np.argsort(-depth if order == "deep_first" else depth, kind="stable")]
    np.testing.assert_array_equal(lk.pp.top_gene_indices(sparse.csr_matrix(x), n), _lexsort_top(x, n))
    integer = np.floor(x)
    np.testing.assert_array_equal(
        lk.pp.top_gene_indices(sparse.csr_matrix(integer), n), _lexsort_top(integer, n)
    )


def _random_rows(rng, depth, n_cols, kind):
    """Rows with ``depth[i]`` stored values each (some explicit zeros), depth-dependent levels."""
    rows, cols, vals = [], [], []
    for i, d in enumerate(depth):
        c = np.sort(rng.choice(n_cols, size=min(d, n_cols), replace=False))
        level = rng.lognormal(0.0, 1.0, len(c)) * rng.uniform(0.2, 30.0)
        if kind == "counts":
            v = rng.poisson(level).astype(float)  # zeros stay stored: explicit zeros
        elif kind == "large":
            v = np.floor(4000 + 40 * level)  # around and above the counting path's overflow bin
        else:
            v = level * (rng.random(len(c)) < 0.95)
        rows.append(np.full(len(c), i))
        cols.append(c)
        vals.append(v)
    x = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(depth), n_cols)
    )
    return x


@settings(max_examples=40, deadline=None)
@given(
    depth=st.lists(st.integers(0, 250), min_size=1, max_size=12),
    n_cols=st.integers(20, 300),
    n=st.integers(1, 60),
    kind=st.sampled_from(["counts", "large", "normalised"]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32]),
    masked=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_top_gene_indices_long_rows_masks_and_dtypes(depth, n_cols, n, kind, dtype, masked, seed):
    # long rows (block gather), depths that jump between rows (mispredicted thresholds), masks that
    # remove many candidates (retries at lower thresholds), explicit zeros, integer and float dtypes
    rng = np.random.default_rng(seed)
    x = _random_rows(rng, depth, n_cols, kind)
    x.data = x.data.astype(dtype)
    keep = rng.random(n_cols) >= masked
    dense = x.toarray().astype(np.float64)
    got = lk.pp.top_gene_indices(x, n, keep=keep)
    np.testing.assert_array_equal(got, _lexsort_top(dense * keep, n))


def test_top_gene_indices_parallel_path_matches_reference():
    from loki.pp._topk import _PARALLEL_MIN_NNZ

    rng = np.random.default_rng(0)
    depth = rng.integers(200, 3000, size=int(1.2 * _PARALLEL_MIN_NNZ / 1600))
    x = _random_rows(rng, depth, 4000, "counts").astype(np.float32)
    assert x.nnz >= _PARALLEL_MIN_NNZ
    keep = rng.random(4000) > 0.05
    got = lk.pp.top_gene_indices(x, 50, keep=keep)
    rows = rng.choice(x.shape[0], 60, replace=False)
    np.testing.assert_array_equal(got[rows], _lexsort_top(x[rows].toarray() * keep, 50))


def test_top_gene_indices_unsorted_columns():
    x = sparse.csr_matrix(
        (np.array([1.0, 3.0, 3.0, 2.0]), np.array([2, 0, 3, 1]), np.array([0, 4])), shape=(1, 4)
    )
    x.has_sorted_indices = False
    np.testing.assert_array_equal(lk.pp.top_gene_indices(x, 3), [[0, 3, 1]])
    assert x.indices.tolist() == [2, 0, 3, 1]  # the input is not modified


def test_top_gene_indices_rejects_bad_values():
    x = np.array([[1.0, np.nan, 2.0], [0.0, 1.0, 1.0], [1.0, -2.0, 0.0]])
    with pytest.raises(ValueError, match=r"2 NaN, infinite or negative value\(s\) in 2 row"):
        lk.pp.top_gene_indices(x, 2)
    with pytest.raises(ValueError, match="positive integer"):
        lk.pp.top_gene_indices(np.ones((2, 2)), 0)


# --- gene_sentences ------------------------------------------------------------------------------


def test_gene_sentences_writes_sentences_flags_and_params():
    x = np.array(
        [
            [0, 5, 1, 3, 0],  # G1 G3 G2
            [0, 0, 0, 0, 0],  # zero-count spot
            [2, 0, 0, 0, 9],  # only ACTB (housekeeping, any case) and a dotted name
            [1, 1, 1, 0, 0],  # ties: column order
        ],
        dtype=np.float32,
    )
    adata = _adata(x, ["Actb", "G1", "G2", "G3", "AC1.2"])
    with pytest.warns(UserWarning, match="2 of 4 spots have no expressed gene") as record:
        assert lk.pp.gene_sentences(adata, n_genes=3) is None
    assert [w.filename for w in record if "no expressed gene" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    assert adata.obs[Key.SENTENCE].tolist() == ["G1 G3 G2", "", "", "G1 G2"]
    assert adata.obs[Key.EMPTY_SPOT].tolist() == [False, True, True, False]
    params = adata.uns["loki"][Key.SENTENCE]
    assert params["n_genes"] == 3
    assert params["n_genes_excluded"] == 2
    assert params["n_genes_ranked"] == 3
    assert params["n_empty"] == 2
    assert params["empty_key"] == Key.EMPTY_SPOT


def test_each_sentence_key_keeps_its_own_empty_flags():
    x = np.array([[0, 5, 1], [3, 0, 0]], dtype=np.float32)
    adata = _adata(x, ["ACTB", "G1", "G2"])  # ACTB is housekeeping: spot 2 is empty only when filtered
    with pytest.warns(UserWarning, match="1 of 2 spots"):
        lk.pp.gene_sentences(adata)
    lk.pp.gene_sentences(adata, housekeeping=None, key_added="all_genes")
    assert adata.obs[Key.EMPTY_SPOT].tolist() == [False, True]
    assert adata.obs["all_genes_empty"].tolist() == [False, False]
    assert adata.obs["all_genes"].tolist() == ["G1 G2", "ACTB"]
    assert adata.uns["loki"]["all_genes"]["empty_key"] == "all_genes_empty"


def test_gene_sentences_filters_are_options():
    names = ["MT-CO1", "RPL13", "Rps2", "GENE.1", "Actb", "KEEP"]
    x = np.array([[6, 5, 4, 3, 2, 1]], dtype=np.float32)
    adata = _adata(x, names)
    lk.pp.gene_sentences(adata, housekeeping=None, exclude_patterns=())
    assert adata.obs[Key.SENTENCE].iloc[0] == " ".join(names)
    lk.pp.gene_sentences(
        adata, housekeeping=["actb"], exclude_patterns=(), exclude_mito=True, exclude_ribo=True
    )
    assert adata.obs[Key.SENTENCE].iloc[0] == "GENE.1 KEEP"
    lk.pp.gene_sentences(adata, key_added="s")  # reference defaults: HSIAO (holds RPL13, RPS2), no '-' / '.'
    assert adata.obs["s"].iloc[0] == "KEEP"
    with pytest.raises(TypeError, match="sequence of patterns"):
        lk.pp.gene_sentences(adata, exclude_patterns="-")
    with pytest.raises(ValueError, match="All 6 genes are excluded"):
        lk.pp.gene_sentences(adata, exclude_patterns=(".",))


def test_housekeeping_list_bundled():
    hk = lk.pp.housekeeping_genes("hsiao")
    assert len(hk) == 397
    assert len(set(hk)) == 397
    assert "ACTB" in hk
    assert "GAPDH" in hk
    keep, n = gene_filter(["actb", "Gapdh", "Snap25"])
    assert keep.tolist() == [False, False, True]
    assert n == 2
    with pytest.raises(ValueError, match="Unknown housekeeping list"):
        lk.pp.housekeeping_genes("nope")


def test_gene_sentences_normalisation_does_not_change_ranks():
    rng = np.random.default_rng(0)
    x = sparse.random(50, 300, density=0.2, random_state=1, data_rvs=lambda k: rng.integers(1, 30, k)).astype(
        np.float32
    )
    adata = _adata(x)
    adata.layers["counts"] = adata.X.copy()
    lib = np.asarray(x.sum(1)).ravel()
    adata.layers["lognorm"] = sparse.csr_matrix(sparse.diags(1e4 / lib) @ x).log1p()
    lk.pp.gene_sentences(adata, layer="counts", key_added="a")
    lk.pp.gene_sentences(adata, layer="lognorm", normalize=False, key_added="b")
    lk.pp.gene_sentences(adata, key_added="c", normalize=False)
    assert (adata.obs["a"] == adata.obs["b"]).all()
    assert (adata.obs["a"] == adata.obs["c"]).all()
    assert adata.uns["loki"]["a"]["layer"] == "counts"


def test_gene_sentences_copy_and_spatialdata():
    adata = _adata(np.array([[1, 2, 0]], dtype=np.float32))
    out = lk.pp.gene_sentences(adata, copy=True)
    assert out.obs[Key.SENTENCE].iloc[0] == "G1 G0"
    assert Key.SENTENCE not in adata.obs
    assert "loki" not in adata.uns

    import spatialdata as sd

    sdata = sd.SpatialData(tables={"S": adata})
    lk.pp.gene_sentences(sdata)
    assert sdata.tables["S"].obs[Key.SENTENCE].iloc[0] == "G1 G0"
    with pytest.raises(ValueError, match="copy=True applies to AnnData"):
        lk.pp.gene_sentences(sdata, copy=True)
    with pytest.raises(KeyError, match=r"sdata\.tables"):
        lk.pp.gene_sentences(sdata, table_key="nope")


def _state(adata) -> tuple:
    """Everything a call could write into a table: .obs, the .obsm keys and the .uns entries."""
    return adata.obs.copy(), list(adata.obsm), list(adata.uns), sorted(adata.uns.get("loki", {}))


def _assert_same_state(adata, before) -> None:
    pd.testing.assert_frame_equal(adata.obs, before[0])
    assert _state(adata)[1:] == before[1:]


def test_gene_sentences_inplace_false_returns_the_sentences_and_writes_nothing():
    import spatialdata as sd

    x = np.array([[0, 5, 1, 3], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=np.float32)
    adata = _adata(x)
    sdata = sd.SpatialData(tables={"S": _adata(x)})
    with pytest.warns(UserWarning, match=r"\.obs\['words_empty'\] = True"):
        written = lk.pp.gene_sentences(adata, n_genes=2, key_added="words", copy=True)
    for data, table in ((adata, adata), (sdata, sdata.tables["S"])):
        before = _state(table)
        with pytest.warns(UserWarning, match="1 of 3 spots have no expressed gene") as record:
            out = lk.pp.gene_sentences(data, n_genes=2, key_added="words", inplace=False)
        assert "words_empty" not in str(record[0].message)  # no flag column is written
        pd.testing.assert_series_equal(out, written.obs["words"], check_names=False)
        assert out.name == "words"
        assert out.tolist() == ["G1 G3", "", "G0 G1"]
        _assert_same_state(table, before)
        # validation runs first: a bad argument still raises, and writes nothing
        with pytest.raises(KeyError, match=r"'counts' not found in adata.layers"):
            lk.pp.gene_sentences(data, layer="counts", inplace=False)
        with pytest.raises(ValueError, match="copy=True writes into a copy and inplace=False"):
            lk.pp.gene_sentences(data, copy=True, inplace=False)
        _assert_same_state(table, before)
    assert list(sdata.tables) == ["S"]


def _assert_untouched(adata, obs_cols):
    assert list(adata.obs.columns) == obs_cols
    assert "loki" not in adata.uns


@pytest.mark.parametrize(
    ("value", "match"),
    [(np.nan, r"1 NaN, infinite or negative value\(s\) in 1 row\(s\), e.g. 's1'"), (-1.0, "negative")],
)
def test_gene_sentences_bad_values_write_nothing(value, match):
    x = np.ones((3, 4), dtype=np.float32)
    x[1, 2] = value
    adata = _adata(x)
    with pytest.raises(ValueError, match=match):
        lk.pp.gene_sentences(adata)
    _assert_untouched(adata, [])


def test_gene_sentences_duplicate_names_and_bad_params_write_nothing():
    adata = _adata(np.ones((2, 4), dtype=np.float32), ["A", "B", "A", "B"])
    adata.obs["x"] = 1
    with pytest.raises(ValueError, match=r"2 duplicated gene name\(s\): 'A', 'B'.*var_names_make_unique"):
        lk.pp.gene_sentences(adata)
    _assert_untouched(adata, ["x"])
    adata = _adata(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(KeyError, match=r"'counts' not found in adata.layers"):
        lk.pp.gene_sentences(adata, layer="counts")
    with pytest.raises(ValueError, match="n_genes must be a positive integer"):
        lk.pp.gene_sentences(adata, n_genes=0)
    with pytest.raises(ValueError, match="target_sum"):
        lk.pp.gene_sentences(adata, target_sum=-1)
    with pytest.raises(ValueError, match="'loki_empty' is the column of the empty-spot flag"):
        lk.pp.gene_sentences(adata, key_added=lk.Key.EMPTY_SPOT)
    _assert_untouched(adata, [])


@pytest.mark.parametrize("fail", ["write_obs", "write_uns"])
def test_gene_sentences_failing_while_it_writes_leaves_the_table_as_it_was(monkeypatch, fail):
    """The sentences were written, then the flags or the record failed: the sentences stayed (a half
    result whose record still described the earlier call)."""
    import loki.pp._sentences as sentences_module

    adata = lk.datasets.synthetic_tissue(60, 40, 2, seed=0)
    lk.pp.gene_sentences(adata, n_genes=3)
    obs, record = adata.obs.copy(), dict(adata.uns["loki"][Key.SENTENCE])
    fresh = lk.datasets.synthetic_tissue(60, 40, 2, seed=0)
    fresh_obs = fresh.obs.copy()
    write_before, calls = getattr(sentences_module, fail), []

    def failing(*args, **kwargs):
        calls.append(1)
        if fail == "write_uns" or len(calls) == 2:  # the record, or the flags after the sentences
            raise RuntimeError("interrupted while writing")
        return write_before(*args, **kwargs)

    monkeypatch.setattr(sentences_module, fail, failing)
    for table in (adata, fresh):
        calls.clear()
        with pytest.raises(RuntimeError, match="interrupted while writing"):
            lk.pp.gene_sentences(table, n_genes=7)
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert adata.uns["loki"][Key.SENTENCE] == record
    pd.testing.assert_frame_equal(fresh.obs, fresh_obs)
    assert "loki" not in fresh.uns


def test_gene_sentences_warns_on_ensembl_ids():
    names = ["ENSMUSG00000064339.1", "ENSG00000141510", "Snap25"]
    assert looks_like_ensembl(names).tolist() == [True, True, False]
    adata = _adata(np.array([[1, 2, 3]], dtype=np.float32), names)
    with pytest.warns(UserWarning, match="look like Ensembl ids.*map_gene_ids") as record:
        lk.pp.gene_sentences(adata, exclude_patterns=())
    assert [w.filename for w in record if "Ensembl" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    assert adata.obs[Key.SENTENCE].iloc[0] == "Snap25 ENSG00000141510 ENSMUSG00000064339.1"


# --- real data: the published recipe on real counts ----------------------------------------------


def _reference_sentences(adata: ad.AnnData, n: int) -> list[str]:
    """The reference recipe on a dense normalised frame (filters as in gene_sentences' defaults)."""
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    hk = pd.Index(lk.pp.housekeeping_genes()).str.upper()
    names = adata.var_names
    keep = (
        ~names.str.upper().isin(hk)
        & ~names.str.contains("-", regex=False)
        & ~names.str.contains(".", regex=False)
    )
    expr = pd.DataFrame(x[:, keep], index=adata.obs_names, columns=names[keep])
    out = []
    for _, row in expr.iterrows():
        top = row.nlargest(n)
        out.append(" ".join(top.index[top.to_numpy() > 0]))
    return out


def test_gene_sentences_match_published_recipe_on_mob():
    mob = shared_path("stutility_mob")
    counts = pd.read_csv(mob / "MOB1.tsv", sep="\t", index_col=0).iloc[:400]
    adata = ad.AnnData(
        sparse.csr_matrix(counts.to_numpy(dtype=np.float32)), obs=pd.DataFrame(index=counts.index)
    )
    adata.var_names = counts.columns
    lk.pp.map_gene_ids(adata, mob / "mouse_genes.tsv.gz")
    lk.pp.gene_sentences(adata)
    expected = _reference_sentences(adata, 50)
    assert adata.obs[Key.SENTENCE].tolist() == expected
    lengths = adata.obs[Key.SENTENCE].str.split().str.len()
    assert (lengths == 50).mean() > 0.5  # most spots have >= 50 expressed genes


def test_gene_sentences_match_published_recipe_on_her2st():
    counts_dir = shared_path("her2st_A", "counts")
    path = sorted(counts_dir.glob("A1*"))[0]
    counts = pd.read_csv(path, sep="\t", index_col=0).iloc[:150]
    counts = counts.loc[:, ~counts.columns.duplicated()]
    adata = ad.AnnData(
        sparse.csr_matrix(counts.to_numpy(dtype=np.float32)), obs=pd.DataFrame(index=counts.index)
    )
    adata.var_names = counts.columns.astype(str)
    lk.pp.gene_sentences(adata)
    assert adata.obs[Key.SENTENCE].tolist() == _reference_sentences(adata, 50)
    hk = set(lk.pp.housekeeping_genes())
    words = set(" ".join(adata.obs[Key.SENTENCE]).split())
    assert not words & hk


def test_gene_sentences_column_round_trips_h5ad_and_zarr(tmp_path):
    # the sentences are a plain object column of str that anndata writes and reads back unchanged
    rng = np.random.default_rng(3)
    x = rng.poisson(1.0, size=(30, 80)).astype(np.float32)
    x[4] = 0  # an empty spot: empty string
    adata = _adata(x, [f"G{i}" if i % 7 else f"gene-{i}" for i in range(80)])
    with pytest.warns(UserWarning, match="no expressed gene"):
        lk.pp.gene_sentences(adata, n_genes=10)
    col = adata.obs[Key.SENTENCE]
    assert col.dtype == object
    assert all(type(s) is str for s in col)
    assert col.iloc[4] == ""
    expected = [
        " ".join(f"G{j}" for j in row[row >= 0]) for row in _lexsort_top(x * (np.arange(80) % 7 > 0), 10)
    ]
    assert col.tolist() == expected
    adata.write_h5ad(tmp_path / "a.h5ad")
    adata.write_zarr(tmp_path / "a.zarr")
    for back in (ad.read_h5ad(tmp_path / "a.h5ad"), ad.read_zarr(tmp_path / "a.zarr")):
        assert back.obs[Key.SENTENCE].astype(str).tolist() == expected
        assert back.obs[Key.EMPTY_SPOT].tolist() == adata.obs[Key.EMPTY_SPOT].tolist()


def test_gene_name_checks_match_per_name_rules():
    # the batched filters agree with per-name rules, including a name holding a newline
    names = ["Actb", "GAPDH", "MT-CO1", "AC1.2", "Snap25", "ENSG00000141510", "ENSG1", "a\nb", "ß"]
    keep, n_excluded = gene_filter(names)
    hk = {g.upper() for g in lk.pp.housekeeping_genes()}
    expected = [not (n.upper() in hk or "-" in n or "." in n) for n in names]
    assert keep.tolist() == expected
    assert n_excluded == expected.count(False)
    assert looks_like_ensembl(np.array(names, dtype=object)).tolist() == [
        False,
        False,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]


def test_join_names_parallel_path_matches_python_join():
    # from _PARALLEL_MIN_ROWS rows up the rows are joined in parallel blocks; row i must hold row i's names
    from loki.pp._topk import _PARALLEL_MIN_ROWS, join_names

    rng = np.random.default_rng(5)
    names = [f"g{i}" * (1 + i % 3) for i in range(40)]
    n_rows = _PARALLEL_MIN_ROWS + 300
    top = rng.integers(0, 40, size=(n_rows, 4)).astype(np.int32)
    counts = rng.integers(0, 5, size=n_rows).astype(np.int32)
    got = join_names(top, counts, names, sep=";")
    assert got.dtype == object
    assert got.shape == (n_rows,)
    assert got.tolist() == [";".join(names[g] for g in top[i, : counts[i]]) for i in range(n_rows)]


def _counts(seed: int = 0, shape=(23, 200)) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2, shape).astype(np.float32)


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_gene_sentences_on_a_backed_h5ad(tmp_path, monkeypatch, fmt):
    import loki.pp._topk as topk

    monkeypatch.setattr(topk, "_BLOCK_ROWS", 5)  # several row blocks, the last one short
    x = _counts()
    mem = _adata(x)
    lk.pp.gene_sentences(mem, housekeeping=None)
    stored = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[fmt](x)
    ad.AnnData(stored, obs=mem.obs[[]], var=mem.var[[]]).write_h5ad(tmp_path / "b.h5ad")
    backed = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    try:
        lk.pp.gene_sentences(backed, housekeeping=None)
        assert backed.obs[Key.SENTENCE].tolist() == mem.obs[Key.SENTENCE].tolist()
        np.testing.assert_array_equal(lk.pp.top_gene_indices(backed.X, 7), lk.pp.top_gene_indices(x, 7))
    finally:
        backed.file.close()


@pytest.mark.parametrize("lazy", ["sparse_h5", "dense"])
def test_gene_sentences_on_a_lazy_dask_matrix(tmp_path, lazy):
    import dask.array as da
    import h5py

    x = _counts(1)
    mem = _adata(x)
    lk.pp.gene_sentences(mem, housekeeping=None)
    ad.AnnData(sparse.csr_matrix(x)).write_h5ad(tmp_path / "l.h5ad")
    read_elem_lazy = getattr(ad.experimental, "read_elem_lazy", None)
    if read_elem_lazy is None:
        pytest.skip("anndata.experimental.read_elem_lazy needs anndata >= 0.12")
    with h5py.File(tmp_path / "l.h5ad") as f:
        lazy_x = (
            da.from_array(x, chunks=(4, 50)) if lazy == "dense" else read_elem_lazy(f["X"], chunks=(5, -1))
        )
        a = ad.AnnData(lazy_x, obs=mem.obs[[]], var=mem.var[[]])
        lk.pp.gene_sentences(a, housekeeping=None)
    assert a.obs[Key.SENTENCE].tolist() == mem.obs[Key.SENTENCE].tolist()
    empty = da.from_array(np.zeros((0, 5), np.float32), chunks=(1, 5))
    assert lk.pp.top_gene_indices(empty, 3).shape == (0, 3)


def test_gene_sentences_on_float16_and_unreadable_matrices():
    x = _counts(2, (6, 40))
    a, b = _adata(x), ad.AnnData(x.astype(np.float16), obs=pd.DataFrame(index=[f"s{i}" for i in range(6)]))
    b.var_names = a.var_names
    lk.pp.gene_sentences(a, housekeeping=None)
    lk.pp.gene_sentences(b, housekeeping=None)  # scipy.sparse has no float16
    assert b.obs[Key.SENTENCE].tolist() == a.obs[Key.SENTENCE].tolist()
    with pytest.raises(TypeError, match=r"Expected a matrix .* got object; load it into memory"):
        lk.pp.top_gene_indices(object(), 3)


def test_scaled_values_name_the_layers_and_raw_to_use_instead():
    """Scaled X (sc.pp.scale): the error says which matrix was read, lists the layers and .raw."""
    counts = np.array([[3.0, 0.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0]], dtype=np.float32)
    adata = _adata(counts)
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata
    adata.X = np.asarray(counts - counts.mean(axis=0))  # scaled: negative values
    with pytest.raises(ValueError, match=r"not scaled values") as err:
        lk.pp.gene_sentences(adata)
    message = str(err.value)
    assert "The values are adata.X; its layers are 'counts' (pass layer= one holding counts)." in message
    assert "adata.raw holds 4 genes; pass use_raw=True to rank them." in message
    _assert_untouched(adata, [])
    # what the message suggests works
    lk.pp.gene_sentences(adata, layer="counts")
    from_counts = adata.obs["loki_sentence"].tolist()
    lk.pp.gene_sentences(adata, use_raw=True, key_added="s_raw")
    assert adata.obs["s_raw"].tolist() == from_counts == ["G0 G3 G2", "G1 G2 G3"]
    assert adata.uns["loki"]["s_raw"]["use_raw"] is True
    with pytest.raises(
        KeyError,
        match=r"'raw' not found in adata\.layers; available: 'counts'\. adata\.raw holds 4 genes; pass use_raw=True",
    ):
        lk.pp.gene_sentences(adata, layer="raw", key_added="s_other")
    bare = _adata(-counts)
    with pytest.raises(ValueError, match=r"adata\.X; it has no other layer\. adata\.raw is not set\."):
        lk.pp.gene_sentences(bare)


def test_use_raw_ranks_all_genes_of_a_table_cut_to_some():
    """use_raw=True ranks .raw's genes (a table cut to highly variable genes keeps all in .raw)."""
    counts = np.array([[5.0, 0.0, 1.0, 2.0], [0.0, 4.0, 2.0, 7.0]], dtype=np.float32)
    full = _adata(counts)
    expected = lk.pp.gene_sentences(full, housekeeping=None, inplace=False)
    full.raw = full
    cut = full[:, ["G1", "G2"]].copy()
    lk.pp.gene_sentences(cut, housekeeping=None, use_raw=True)
    assert cut.obs[Key.SENTENCE].tolist() == expected.tolist() == ["G0 G3 G2", "G3 G1 G2"]
    # the cut table alone ranks only its two genes: said by default, silenced by use_raw=False
    with pytest.warns(LokiWarning, match=r"adata\.X holds 2 of the 4 genes of adata\.raw .* use_raw=True"):
        assert lk.pp.gene_sentences(cut, housekeeping=None, inplace=False).tolist() == ["G2", "G1 G2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lk.pp.gene_sentences(cut, housekeeping=None, use_raw=False, inplace=False).tolist() == [
            "G2",
            "G1 G2",
        ]
    # log-normalised values in .raw rank the same way
    import scanpy as sc

    lognorm = full.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    lognorm.raw = lognorm
    assert lk.pp.gene_sentences(lognorm, housekeeping=None, use_raw=True, inplace=False).equals(expected)


def test_use_raw_refusals_write_nothing():
    adata = _adata(np.array([[1.0, 2.0, 0.0, 3.0]], dtype=np.float32))
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(ValueError, match=r"use_raw=True but adata\.raw is not set; its layers are 'counts'"):
        lk.pp.gene_sentences(adata, use_raw=True)
    adata.raw = adata
    with pytest.raises(ValueError, match=r"either layer= or use_raw=True, not both \(got layer='counts'\)"):
        lk.pp.gene_sentences(adata, use_raw=True, layer="counts")
    with pytest.raises(TypeError, match=r"use_raw must be True, False or None, got 'yes'"):
        lk.pp.gene_sentences(adata, use_raw="yes")
    _assert_untouched(adata, [])


def test_a_table_without_genes_is_refused_by_name():
    """It used to fail with "Gene names must not contain newlines" (an empty name list)."""
    adata = _adata(np.array([[1.0, 2.0]], dtype=np.float32))[:, []].copy()
    with pytest.raises(
        ValueError, match=r"^The table has no genes \(0 var_names\), so there is nothing to rank\.$"
    ):
        lk.pp.gene_sentences(adata, housekeeping=None)
    _assert_untouched(adata, [])


@pytest.mark.parametrize("bad", ["Snap25 x", "", "Gfap\t2"])
def test_a_gene_name_a_sentence_cannot_hold_is_refused_by_name(bad):
    """A name with whitespace (or none) used to land in the sentence as several genes (or as a double space)."""
    x = np.array([[1.0, 5.0, 3.0], [2.0, 4.0, 0.0]], dtype=np.float32)
    adata = _adata(x, ["Apoe", bad, "Mbp"])
    name = re.escape(repr(bad))
    with pytest.raises(
        ValueError, match=rf"1 gene name\(s\) left by the filters .* \({name}\).*exclude_patterns="
    ):
        lk.pp.gene_sentences(adata, housekeeping=None)
    _assert_untouched(adata, [])
    # the pattern the message offers leaves the name out
    out = lk.pp.gene_sentences(
        adata, housekeeping=None, exclude_patterns=("-", r"\.", r"\s", "^$"), inplace=False
    )
    assert out.tolist() == ["Mbp Apoe", "Apoe"]


def test_duplicated_names_hint_merges_them_by_summing():
    """The error's recipe sums the counts of repeated symbols, and the sentence then ranks the sum."""
    x = np.array([[3.0, 4.0, 0.0, 5.0]], dtype=np.float32)
    adata = _adata(x, ["Apoe", "Mbp", "Ttr", "Apoe"])
    with pytest.raises(
        ValueError, match=r"map_gene_ids\(adata, dict\(zip\(adata\.var_names, adata\.var_names\)\)\)"
    ):
        lk.pp.gene_sentences(adata, housekeeping=None)
    lk.pp.map_gene_ids(adata, dict(zip(adata.var_names, adata.var_names, strict=True)))
    assert lk.pp.gene_sentences(adata, housekeeping=None, inplace=False).tolist() == ["Apoe Mbp"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target_sum": None}, ValueError, r"target_sum must be a positive number, got None"),
        ({"target_sum": "1e4"}, ValueError, r"target_sum must be a positive number, got '1e4'"),
        ({"exclude_mito": "False"}, TypeError, r"exclude_mito must be True or False, got 'False'"),
        ({"exclude_ribo": 1}, TypeError, r"exclude_ribo must be True or False, got 1"),
        ({"normalize": None}, TypeError, r"normalize must be True or False, got None"),
    ],
)
def test_option_types_are_checked_before_anything_is_written(kwargs, error, match):
    """target_sum=None (scanpy's default) failed with numpy's "ufunc 'isfinite' not supported"; a string flag
    such as exclude_mito="False" was read as True."""
    adata = _adata(np.array([[1.0, 2.0, 0.0, 3.0]], dtype=np.float32))
    with pytest.raises(error, match=match):
        lk.pp.gene_sentences(adata, **kwargs)
    _assert_untouched(adata, [])


def test_ensembl_ids_in_raw_say_how_to_map_raw():
    """map_gene_ids maps var_names only; the warning on .raw's ids used to repeat "map them first"."""
    ids = [f"ENSMUSG0000000000{i}" for i in range(4)]
    adata = _adata(np.array([[1.0, 2.0, 0.0, 3.0]], dtype=np.float32), ids)
    adata.raw = adata
    lk.pp.map_gene_ids(adata, dict(zip(ids, ["Apoe", "Mbp", "Ttr", "Plp1"], strict=True)))
    with pytest.warns(LokiWarning, match=r"adata\.raw\.var_names look like Ensembl ids.*adata\.raw = raw"):
        lk.pp.gene_sentences(adata, housekeeping=None, use_raw=True, inplace=False)


def test_hvg_subset_with_raw_warns_on_real_her2st():
    """scanpy's recipe (raw kept, .X cut to highly variable genes) ranked only the kept genes, silently."""
    import scanpy as sc

    counts = pd.read_csv(shared_path("her2st_A", "counts", "A1.tsv.gz"), sep="\t", index_col=0).iloc[:60]
    adata = ad.AnnData(
        sparse.csr_matrix(counts.to_numpy(dtype=np.float32)),
        obs=pd.DataFrame(index=counts.index.astype(str)),
        var=pd.DataFrame(index=counts.columns.astype(str)),
    )
    full = lk.pp.gene_sentences(adata, inplace=False)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata.raw = adata
    sc.pp.highly_variable_genes(adata, n_top_genes=500)
    adata = adata[:, adata.var["highly_variable"]].copy()
    with pytest.warns(LokiWarning, match=rf"adata\.X holds 500 of the {counts.shape[1]} genes of adata\.raw"):
        lk.pp.gene_sentences(adata)
    assert not adata.obs[Key.SENTENCE].equals(full)
    assert adata.uns["loki"][Key.SENTENCE]["n_genes_ranked"] <= 500
    lk.pp.gene_sentences(adata, use_raw=True)
    assert adata.obs[Key.SENTENCE].tolist() == full.tolist()
    assert adata.uns["loki"][Key.SENTENCE]["use_raw"] is True
