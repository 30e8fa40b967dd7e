from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import loki as lk
from loki.tl._predict import predict_from_embeddings, similarity_weights


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _section(n, genes, seed, name):
    # spots with a latent state that drives both the embedding and the expression
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    proj = np.random.default_rng(99).normal(size=(4, 16))
    load_all = np.random.default_rng(98).normal(size=(4, 64))
    load = load_all[:, [int(g[1:]) if g[1:].isdigit() else 63 for g in genes]]
    a = AnnData(X=np.exp(0.5 * z @ load).astype(np.float32))
    a.var_names = genes
    a.obs_names = [f"{name}_{i}" for i in range(n)]
    a.obsm["loki_text"] = (z @ proj + 0.1 * rng.normal(size=(n, 16))).astype(np.float32)
    a.obsm["loki_image"] = (z @ proj + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)
    a.obsm["spatial"] = rng.random((n, 2))
    return a


GENES = [f"g{i}" for i in range(12)]


def test_eq16_all_reference_spots_clip_and_keep():
    rng = np.random.default_rng(0)
    q, r, x = rng.normal(size=(9, 5)), rng.normal(size=(40, 5)), rng.random((40, 6))
    s = _cos(q, r)
    got, fb = predict_from_embeddings(q, r, x, chunk_size=4)
    w = np.maximum(s, 0)
    np.testing.assert_allclose(got, w @ x / w.sum(1, keepdims=True), rtol=1e-4)
    assert fb == 0
    got_keep, _ = predict_from_embeddings(q, r, x, negative="keep")
    np.testing.assert_allclose(got_keep, s @ x / s.sum(1, keepdims=True), rtol=1e-3, atol=1e-3)


def test_default_blocks_match_explicit_blocks_and_bad_chunk_size_is_rejected(monkeypatch):
    from loki.tl import _predict

    rng = np.random.default_rng(3)
    q, r, x = rng.normal(size=(30, 5)), rng.normal(size=(40, 5)), rng.random((40, 6))
    monkeypatch.setattr(_predict, "_SCORE_BLOCK_BYTES", 4 * 40 * 7)  # blocks of 7 queries
    got, _ = predict_from_embeddings(q, r, x)
    np.testing.assert_allclose(got, predict_from_embeddings(q, r, x, chunk_size=30)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        predict_from_embeddings(q, r, x, chunk_size=0)


def test_topk_and_temperature_weights():
    rng = np.random.default_rng(1)
    q, r, x = rng.normal(size=(6, 5)), rng.normal(size=(30, 5)), rng.random((30, 4))
    s = _cos(q, r)
    idx = np.argsort(-s, axis=1)[:, :3]
    top = np.take_along_axis(s, idx, 1)
    w = np.exp((top - top.max(1, keepdims=True)) / 0.1)
    expected = np.einsum("qk,qkg->qg", w, x[idx]) / w.sum(1, keepdims=True)
    got, _ = predict_from_embeddings(q, r, x, top_k=3, temperature=0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    got_sparse, _ = predict_from_embeddings(q, r, sparse.csr_matrix(x), top_k=3, temperature=0.1)
    np.testing.assert_allclose(got_sparse, expected, rtol=1e-4)
    # top_k = all with the default weights equals the full average
    full, _ = predict_from_embeddings(q, r, x)
    np.testing.assert_allclose(predict_from_embeddings(q, r, x, top_k=30)[0], full, rtol=1e-4)


def test_negative_similarities_fall_back_to_uniform():
    w, fb = similarity_weights(np.array([[-0.2, -0.5], [0.3, -0.1]]))
    np.testing.assert_allclose(w, [[1, 1], [0.3, 0]], rtol=1e-6)
    assert fb.tolist() == [True, False]
    ref = AnnData(X=np.array([[1.0, 0.0], [3.0, 2.0]], dtype=np.float32))
    ref.obsm["loki_text"] = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    with pytest.warns(UserWarning, match="no positive similarity") as record:
        out = lk.tl.predict_expression(np.array([[-1.0, -1.0]]), ref)
    assert [w.filename for w in record if "uniform weights" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    np.testing.assert_allclose(out.X, [[2.0, 1.0]])
    assert out.uns["loki"]["loki_predicted"]["n_fallback"] == 1


def test_keep_with_cancelling_similarities_is_the_same_dense_and_sparse():
    """negative='keep': weights summing to exactly 0 leave the weighted mean undefined; every path falls
    back to the unweighted mean instead of returning the raw sum or infinities."""
    ref = np.array([[1, 0, 0], [-1, 0, 0]], np.float32)
    query = np.array([[1, 0, 0]], np.float32)
    x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    for top_k in (2, None):
        for expr in (x, sparse.csr_matrix(x)):
            out, n_fallback = predict_from_embeddings(query, ref, expr, top_k=top_k, negative="keep")
            np.testing.assert_allclose(out, [[2.0, 3.5]])
            assert n_fallback == 1


def test_duplicated_gene_names_are_named():
    ref = _section(20, ["g0", "g1", "g1"], 1, "r")
    query = _section(5, ["g0"], 2, "q")
    for kwargs in ({"genes": ["g0"]}, {"output": "layer"}):
        with pytest.raises(ValueError, match=r"reference.var_names has duplicated genes \('g1'\)"):
            lk.tl.predict_expression(query, ref, **kwargs)
    with pytest.raises(ValueError, match=r"sections\['a'\].var_names has duplicated genes"):
        lk.tl.predict_expression_loso({"a": ref, "b": _section(10, ["g0", "g1"], 3, "b")})


def test_predict_expression_anndata_and_layer_outputs():
    ref = _section(120, GENES, 0, "r")
    query = _section(40, GENES[::-1][:8], 1, "q")  # query genes: a reordered subset
    out = lk.tl.predict_expression(query, ref, genes=["g5", "g1"], top_k=10)
    assert list(out.var_names) == ["g5", "g1"]
    assert list(out.obs_names) == list(query.obs_names)
    np.testing.assert_array_equal(out.obsm["spatial"], query.obsm["spatial"])
    assert not np.shares_memory(out.obsm["spatial"], query.obsm["spatial"])  # editing one spares the other
    lk.tl.predict_expression(query, ref, output="layer", top_k=10)
    layer = query.layers["loki_predicted"]
    assert layer.shape == query.shape
    np.testing.assert_allclose(layer[:, list(query.var_names).index("g5")], out.X[:, 0], rtol=1e-5)
    # the latent state drives both modalities, so prediction beats the mean by far
    pcc = lk.metrics.pearson(query.X, layer, axis=0)
    assert np.nanmean(pcc) > 0.5


def test_loso_scores_every_section():
    sections = {name: _section(60, GENES, seed, name) for seed, name in enumerate(["A", "B", "C"])}
    preds, scores = lk.tl.predict_expression_loso(sections, top_k=15)
    assert set(preds) == {"A", "B", "C"}
    assert scores.shape == (3 * len(GENES), 4)
    a = preds["A"]
    np.testing.assert_allclose(a.layers["measured"], sections["A"].X)
    np.testing.assert_allclose(
        scores.loc[scores.section == "A", "pcc"], lk.metrics.pearson(sections["A"].X, a.X, axis=0), rtol=1e-6
    )
    assert scores["pcc"].mean() > 0.5


def test_loso_never_uses_the_held_out_section():
    """A held-out section must not be in its own reference: a leak only raises the scores, so it is made
    visible with a section-specific gene and with spots that would retrieve themselves."""
    sizes = {"A": 60, "B": 45, "C": 30}
    sections = {name: _section(n, GENES, seed, name) for seed, (name, n) in enumerate(sizes.items())}
    label = {"A": 1.0, "B": 2.0, "C": 3.0}
    for name, table in sections.items():  # add a gene that is constant within each section
        x = np.c_[table.X, np.full(table.n_obs, label[name], np.float32)]
        tagged = AnnData(X=x, obs=table.obs, obsm=dict(table.obsm))
        tagged.var_names = [*GENES, "section_id"]
        tagged.obsm["loki_image"] = tagged.obsm["loki_text"].copy()  # each spot is its own nearest text
        sections[name] = tagged
    for top_k in (1, 5, None):
        preds, scores = lk.tl.predict_expression_loso(sections, top_k=top_k)
        for held_out, pred in preds.items():
            others = [label[k] for k in sections if k != held_out]
            got = pred[:, "section_id"].X.ravel()
            # a weighted mean of the other sections' values only
            assert got.min() >= min(others) - 1e-5, (top_k, held_out)
            assert got.max() <= max(others) + 1e-5, (top_k, held_out)
            assert pred.uns["loki"]["loki_predicted"]["n_reference"] == sum(sizes.values()) - sizes[held_out]
        if top_k == 1:
            # with a leak every spot would retrieve itself (PCC 1 for every gene)
            pcc = scores.loc[scores.gene != "section_id", "pcc"].to_numpy()
            assert np.nanmax(pcc) < 0.99, np.nanmax(pcc)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"genes": ["nope"]}, KeyError, "reference.var_names"),
        ({"use_reference": "nope"}, KeyError, "reference.obsm"),
        (
            {"top_k": 500},
            ValueError,
            r"top_k=500 is larger than the reference \(50 spots\); pass top_k <= 50 or None",
        ),
        ({"top_k": 51, "search": "pca"}, ValueError, r"top_k=51 is larger than the reference \(50 spots\)"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"output": "layer", "use_query": "wrong"}, KeyError, "query.obsm"),
        ({"layer": "counts"}, KeyError, "reference.layers"),
    ],
)
def test_bad_input_writes_nothing(kwargs, error, match):
    ref = _section(50, GENES, 0, "r")
    query = _section(10, GENES, 1, "q")
    with pytest.raises(error, match=match):
        lk.tl.predict_expression(query, ref, **kwargs)
    assert "loki_predicted" not in query.layers
    assert "loki" not in query.uns


def test_a_reference_without_genes_is_refused():
    """Tiles of an H&E image (embeddings, no genes) given as the reference: no empty prediction."""
    query = _section(10, GENES, 1, "q")
    tiles = _section(30, GENES, 0, "t")[:, []].copy()
    assert tiles.n_vars == 0
    with pytest.raises(ValueError, match=r"The reference has no genes \(30 spots x 0 genes\)"):
        lk.tl.predict_expression(query, tiles, use_reference="loki_image")


def test_a_gene_named_twice_is_refused():
    ref, query = _section(50, GENES, 0, "r"), _section(10, GENES, 1, "q")
    with pytest.raises(ValueError, match=r"genes= names 'g1' more than once"):
        lk.tl.predict_expression(query, ref, genes=["g1", "g2", "g1"])
    with pytest.raises(ValueError, match=r"genes= names 'g1' more than once"):
        lk.tl.predict_expression_loso({"a": ref, "b": query}, genes=["g1", "g1"])


def test_loso_top_k_larger_than_a_fold_reference_is_refused_before_any_fold(monkeypatch):
    sizes = {"C": 30, "B": 45, "A": 60}  # references of 105, 90 and 75 spots: the last fold is too small
    sections = {name: _section(n, GENES, seed, name) for seed, (name, n) in enumerate(sizes.items())}

    def fold(*args, **kwargs):
        raise AssertionError("a fold ran before top_k was checked against every fold's reference")

    monkeypatch.setattr(lk.tl._predict, "predict_expression", fold)
    match = r"top_k=80 is larger than the reference when 'A' is held out \(75 spots\); pass top_k <= 75"
    with pytest.raises(ValueError, match=match):
        lk.tl.predict_expression_loso(sections, top_k=80)


def test_one_gene_name_is_one_gene_and_empty_gene_lists_are_refused():
    ref = _section(50, [*GENES, "G", "A"], 0, "r")
    query = _section(10, GENES, 1, "q")
    with pytest.raises(KeyError, match="'GA' not found"):  # not the genes 'G' and 'A'
        lk.tl.predict_expression(query, ref, genes="GA", top_k=5)
    ref.var_names = [*GENES, "G", "GA"]
    out = lk.tl.predict_expression(query, ref, genes="GA", top_k=5)
    assert list(out.var_names) == ["GA"]
    with pytest.raises(ValueError, match="genes= is empty"):
        lk.tl.predict_expression(query, ref, genes=[])
    image_only = AnnData(obs=query.obs.copy(), obsm=dict(query.obsm))  # e.g. tiles of an H&E image
    with pytest.raises(ValueError, match="query table has no genes"):
        lk.tl.predict_expression(image_only, ref, output="layer")
    assert "loki" not in image_only.uns
    assert not image_only.layers


def test_loso_reference_stays_sparse_when_any_section_is_sparse():
    from loki.tl._predict import _concat_reference

    sections = {name: _section(20, GENES, seed, name) for seed, name in enumerate(["A", "B"])}
    sections["B"].X = sparse.csr_matrix(sections["B"].X)
    ref = _concat_reference(sections, GENES[:5], "loki_text", None)
    assert sparse.issparse(ref.X)
    np.testing.assert_allclose(ref.X.toarray()[:20], sections["A"].X[:, :5])


def test_mismatched_embedding_sizes_and_missing_query_genes():
    ref = _section(50, GENES, 0, "r")
    query = _section(10, GENES, 1, "q")
    query.obsm["loki_image"] = query.obsm["loki_image"][:, :5]
    with pytest.raises(ValueError, match="Embedding sizes differ"):
        lk.tl.predict_expression(query, ref, output="layer")
    q2 = _section(10, [*GENES[:3], "extra"], 1, "q")
    with pytest.raises(KeyError, match="extra"):
        lk.tl.predict_expression(q2, ref, output="layer")
    assert "loki_predicted" not in q2.layers


def test_a_layer_over_genes_the_reference_lacks_says_so_and_how_to_predict_the_shared_ones():
    """The error named the query's genes as missing from reference.var_names, without saying that
    output='layer' predicts the query's own genes nor what to do instead."""
    ref = _section(50, GENES, 0, "r")
    query = _section(10, [*GENES[:4], "TMEM88B", "X1", "X2", "X3", "X4", "G5"], 1, "q")
    with pytest.raises(KeyError) as error:
        lk.tl.predict_expression(query, ref, output="layer", top_k=5)
    message = str(error.value)
    assert "output='layer' writes a layer over the query's own genes (its var_names)" in message
    assert "the reference lacks 6 of the query's 10 genes ('TMEM88B', 'X1', 'X2', 'X3', 'X4', ...)" in message
    assert "1 of them differs from a reference gene only in case (e.g. 'G5' -> 'g5')" in message
    assert "For the 4 genes both have" in message
    assert "output='anndata', genes=query.var_names[query.var_names.isin(reference.var_names)]" in message
    assert "query[:, query.var_names.isin(reference.var_names)]" in message
    assert "loki_predicted" not in query.layers
    assert "loki" not in query.uns
    # both ways out predict the shared genes alike
    shared = query.var_names[query.var_names.isin(ref.var_names)]
    out = lk.tl.predict_expression(query, ref, output="anndata", genes=shared, top_k=5)
    assert list(out.var_names) == GENES[:4]
    subset = query[:, query.var_names.isin(ref.var_names)].copy()
    lk.tl.predict_expression(subset, ref, output="layer", top_k=5)
    np.testing.assert_array_equal(subset.layers["loki_predicted"], out.X)
    foreign = _section(10, ["TMEM88B"], 1, "q")
    with pytest.raises(
        KeyError, match=r"lacks all 1 of the query's 1 genes .* share no gene: output='anndata'"
    ):
        lk.tl.predict_expression(foreign, ref, output="layer")


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_backed_reference_predicts_as_in_memory(tmp_path, monkeypatch, fmt):
    """An h5ad read with backed='r' (a reference bank kept on disk) predicts what the same table does in
    memory: .X is then an h5py dataset (dense) or anndata's backed CSR / CSC dataset."""
    import anndata as ad

    from loki._utils import _backed

    to = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt]
    sections = {name: _section(n, GENES, seed, name) for seed, (name, n) in enumerate([("A", 50), ("B", 40)])}
    backed = {}
    for name, table in sections.items():
        table.X = to(table.X)
        table.layers["counts"] = to(2 * table.X)
        table.write_h5ad(tmp_path / f"{name}.h5ad")
        backed[name] = ad.read_h5ad(tmp_path / f"{name}.h5ad", backed="r")
    ref, query = sections["A"], sections["B"]
    try:
        assert not isinstance(backed["A"].X, np.ndarray | sparse.spmatrix)
        for kwargs in ({}, {"top_k": 7}, {"layer": "counts"}, {"genes": ["g7", "g2", "g9"], "top_k": 7}):
            got = lk.tl.predict_expression(query, backed["A"], **kwargs)
            want = lk.tl.predict_expression(query, ref, **kwargs)
            np.testing.assert_allclose(got.X, want.X, rtol=1e-6, err_msg=str(kwargs))
            assert list(got.var_names) == list(want.var_names)
        monkeypatch.setattr(_backed, "READ_BLOCK_VALUES", 3 * 7)  # the chosen genes read 7 rows at a time
        got = lk.tl.predict_expression(query, backed["A"], genes=["g7", "g2", "g9"])
        want = lk.tl.predict_expression(query, ref, genes=["g7", "g2", "g9"])
        np.testing.assert_allclose(got.X, want.X, rtol=1e-6)
        # leave-one-section-out on backed sections: references and measured expression read from disk
        preds, scores = lk.tl.predict_expression_loso(backed, genes=GENES[::-1], top_k=5)
        want_preds, want_scores = lk.tl.predict_expression_loso(sections, genes=GENES[::-1], top_k=5)
        for name in sections:
            np.testing.assert_allclose(preds[name].X, want_preds[name].X, rtol=1e-6)
            np.testing.assert_allclose(preds[name].layers["measured"], want_preds[name].layers["measured"])
        np.testing.assert_allclose(scores["pcc"], want_scores["pcc"], rtol=1e-5)
    finally:
        for table in backed.values():
            table.file.close()


@pytest.mark.parametrize(
    ("negative", "top_k", "says"),
    [
        ("clip", None, r"no positive similarity to any of the reference spots \(negative='clip'"),
        ("clip", 2, r"no positive similarity to any of their top-2 reference spots \(negative='clip'"),
        ("keep", None, r"similarities to the reference spots that sum to 0 \(negative='keep'"),
    ],
)
def test_fallback_warning_names_the_weighting_in_use(negative, top_k, says):
    """The fallback warning describes the negative= mode of the call, also the default 'clip'."""
    ref = AnnData(X=np.array([[1.0, 0.0], [3.0, 2.0]], dtype=np.float32))
    ref.obsm["loki_text"] = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    query = np.array([[0.0, 1.0]], dtype=np.float32)  # orthogonal to both: no positive similarity, sum 0
    with pytest.warns(UserWarning, match=says) as record:
        out = lk.tl.predict_expression(query, ref, negative=negative, top_k=top_k)
    assert f"negative='{'keep' if negative == 'clip' else 'clip'}'" not in str(record[0].message)
    assert "uniform weights" in str(record[0].message)
    np.testing.assert_allclose(out.X, [[2.0, 1.0]])


def test_anndata_output_of_a_spatialdata_table_annotates_its_spots():
    """output='anndata' keeps the query table's spatialdata_attrs (its obs keeps region / instance id), so
    the result can be put into the SpatialData as a table of the query's spots without re-parsing."""
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel

    ref = _section(30, ["g0", "g1"], 1, "r")
    query = _section(8, ["g0"], 2, "q")
    query.obs["region"] = pd.Categorical(["q_spots"] * query.n_obs)
    query.obs["spot_id"] = np.arange(query.n_obs)
    table = TableModel.parse(query, region="q_spots", region_key="region", instance_key="spot_id")
    shapes = ShapesModel.parse(query.obsm["spatial"], geometry=0, radius=np.full(query.n_obs, 0.1))
    sdata = sd.SpatialData(shapes={"q_spots": shapes}, tables={"q": table})
    pred = lk.tl.predict_expression(sdata, ref, query_table_key="q", temperature=0.1)
    assert pred.uns["spatialdata_attrs"] == table.uns["spatialdata_attrs"]
    assert pred.uns["spatialdata_attrs"] is not table.uns["spatialdata_attrs"]  # a copy, not shared
    TableModel().validate(pred)
    sdata.tables["q_predicted"] = pred
    assert sd.get_element_annotators(sdata, "q_spots") == {"q", "q_predicted"}
    # a plain AnnData query has no attrs, and gets none
    plain = _section(8, ["g0"], 2, "q")
    assert "spatialdata_attrs" not in lk.tl.predict_expression(plain, ref, temperature=0.1).uns


def test_a_prediction_from_log1p_expression_keeps_scanpys_record(monkeypatch):
    """The average of log1p values is on the log scale; without scanpy's ``.uns['log1p']`` the predicted
    AnnData looked like counts, and ``sc.pp.log1p`` took the log a second time without a word."""
    import scanpy as sc

    sections = {name: _section(40, GENES, seed, name) for seed, name in enumerate(["A", "B", "C"])}
    for table in sections.values():
        sc.pp.log1p(table, base=2)
    query, ref = sections["A"], sections["B"]
    pred = lk.tl.predict_expression(query, ref, top_k=5)
    assert pred.uns["log1p"] == {"base": 2}
    assert pred.uns["log1p"] is not ref.uns["log1p"]  # a copy
    logged = []
    monkeypatch.setattr("scanpy.logging.warning", lambda msg, *a, **k: logged.append(msg))
    sc.pp.log1p(pred)
    assert logged == ["adata.X seems to be already log-transformed."]
    # a layer is not what the record describes; counts have no record
    ref.layers["counts"] = ref.X.copy()
    assert "log1p" not in lk.tl.predict_expression(query, ref, layer="counts", top_k=5).uns
    assert "log1p" not in lk.tl.predict_expression(query, _section(40, GENES, 5, "r"), top_k=5).uns
    preds, _ = lk.tl.predict_expression_loso(sections, top_k=5)
    assert all(p.uns["log1p"] == {"base": 2} for p in preds.values())
    del sections["C"].uns["log1p"]  # one reference section is not log1p: no record
    preds, _ = lk.tl.predict_expression_loso(sections, top_k=5)
    assert "log1p" in preds["C"].uns  # its reference, A and B, is
    assert "log1p" not in preds["A"].uns


def test_output_layer_warns_before_replacing_a_layer_it_did_not_write():
    """key_added naming the user's own layer (their counts, another method's prediction) replaced it
    silently; a rerun under the key of an earlier prediction stays silent."""
    import warnings

    ref = _section(50, GENES, 0, "r")
    query = _section(10, GENES, 1, "q")
    query.layers["counts"] = query.X.copy()
    with pytest.warns(
        lk.LokiWarning, match=r"replaces the query's \.layers\['counts'\], which lk\.tl\.predict"
    ):
        lk.tl.predict_expression(query, ref, output="layer", key_added="counts", top_k=5)
    assert query.uns["loki"]["counts"]["tool"] == "tl.predict_expression"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lk.tl.predict_expression(query, ref, output="layer", key_added="counts", top_k=3)  # a rerun
        lk.tl.predict_expression(query, ref, output="layer", top_k=3)  # a new key


def test_loso_takes_the_tables_of_a_spatialdata_by_section_name():
    """A SpatialData per section (the tables of one SpatialData, as lk.datasets.mob returns) failed with
    "'SpatialData' object has no attribute 'n_obs'"."""
    import spatialdata as sd

    tables = {name: _section(30, GENES, seed, name) for seed, name in enumerate(["A", "B", "C"])}
    sdata = sd.SpatialData(tables={name: t.copy() for name, t in tables.items()})
    expected, expected_scores = lk.tl.predict_expression_loso(tables, top_k=5)
    got, scores = lk.tl.predict_expression_loso({name: sdata for name in tables}, top_k=5)
    pd.testing.assert_frame_equal(scores, expected_scores)
    np.testing.assert_array_equal(got["B"].X, expected["B"].X)
    only = {name: sd.SpatialData(tables={"table": t}) for name, t in tables.items()}  # one table each
    pd.testing.assert_frame_equal(lk.tl.predict_expression_loso(only, top_k=5)[1], expected_scores)
    with pytest.raises(
        ValueError, match=r"sections\['D'\] is a SpatialData with tables 'A', 'B', 'C', none named"
    ):
        lk.tl.predict_expression_loso({"A": sdata, "D": sdata})
    with pytest.raises(TypeError, match=r"sections must map section names to tables"):
        lk.tl.predict_expression_loso(list(tables.values()))
    with pytest.raises(TypeError, match=r"sections\['A'\] must be an AnnData or a SpatialData, got ndarray"):
        lk.tl.predict_expression_loso({"A": np.zeros((3, 3)), "B": tables["B"]})


def test_a_reference_of_several_tables_names_reference_table_key():
    """The error named ``table_key=``, which predict_expression does not take."""
    import loki as lk

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    rng = np.random.default_rng(0)
    for table in sdata.tables.values():
        table.obsm[lk.Key.TEXT] = rng.standard_normal((table.n_obs, 8)).astype(np.float32)
    query = rng.standard_normal((5, 8)).astype(np.float32)
    with pytest.raises(
        ValueError,
        match=r"reference SpatialData holds 2 tables \('MOB1', 'MOB2'\); pass reference_table_key=",
    ):
        lk.tl.predict_expression(query, sdata)
    assert (
        lk.tl.predict_expression(query, sdata, reference_table_key="MOB2").n_vars
        == sdata.tables["MOB2"].n_vars
    )


def test_predict_expression_on_an_empty_reference_says_it_is_empty():
    rng = np.random.default_rng(0)
    query = ad.AnnData(np.zeros((3, 0), np.float32))
    query.obsm[lk.Key.IMAGE] = rng.normal(size=(3, 8)).astype(np.float32)
    reference = ad.AnnData(np.zeros((0, 5), np.float32))
    reference.obsm[lk.Key.TEXT] = np.zeros((0, 8), np.float32)
    with pytest.raises(ValueError, match=r"reference.*(no spots|0 spots|empty)") as info:
        lk.tl.predict_expression(query, reference, top_k=5)
    # top_k must be positive: advice to pass top_k <= 0 cannot be followed
    assert "top_k <= 0" not in str(info.value)


def test_predicting_a_table_from_itself_warns():
    rng = np.random.default_rng(0)
    table = ad.AnnData(rng.random((6, 4)).astype(np.float32))
    table.obsm[lk.Key.IMAGE] = rng.normal(size=(6, 8)).astype(np.float32)
    table.obsm[lk.Key.TEXT] = rng.normal(size=(6, 8)).astype(np.float32)
    with pytest.warns(lk.LokiWarning, match="one table, so each query spot finds itself") as caught:
        lk.tl.predict_expression(table, table, top_k=2)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lk.tl.predict_expression(table, table.copy(), top_k=2)  # another section (here a copy)
        lk.tl.predict_expression(table.obsm[lk.Key.IMAGE], table, top_k=2)  # an array query


def test_one_shared_gene_is_named_in_the_singular():
    """The way out of a layer over genes the reference lacks read "For the 1 genes both have"."""
    ref = _section(50, GENES, 0, "r")
    query = _section(10, [GENES[0], "X1", "X2"], 1, "q")
    with pytest.raises(KeyError) as error:
        lk.tl.predict_expression(query, ref, output="layer", top_k=5)
    message = str(error.value)
    assert "For the 1 gene both have, either predict it into a new AnnData" in message
    assert "subset the query to it first" in message
