from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import loki as lk
from loki.tl._annotate import cosine_scores, fuse_scores, minmax_per_row
from loki.tl._annotate_classes import marker_sentences

GENES = [f"G{i}" for i in range(40)]
MARKERS = {"tumour": ["G0", "G1", "G2"], "stroma": ["G10", "G11", "G12"], "fat": ["G20", "G21", "G22"]}


class BagOfGenes:
    """A stand-in text encoder: a sentence embeds to the sum of fixed random vectors of its genes."""

    def __init__(self, dim=32, seed=0):
        rng = np.random.default_rng(seed)
        self.vectors = {g.upper(): rng.normal(size=dim) for g in GENES}
        self.calls = []

    def encode_texts(self, sentences):
        self.calls.append(list(sentences))
        return np.stack([sum(self.vectors[g.upper()] for g in s.split()) for s in sentences])


def _spots(model, n_per_class=30, noise=0.8, seed=1):
    rng = np.random.default_rng(seed)
    classes = list(MARKERS)
    truth = np.repeat(classes, n_per_class)
    emb = np.stack([sum(model.vectors[g] for g in MARKERS[c]) for c in truth])
    emb = emb + noise * rng.normal(size=emb.shape)
    adata = AnnData(X=sparse.csr_matrix(rng.poisson(1.0, (len(truth), len(GENES))).astype(np.float32)))
    adata.var_names = GENES
    adata.obs_names = [f"s{i}" for i in range(len(truth))]
    adata.obsm["loki_image"] = emb.astype(np.float32)
    return adata, truth


def test_marker_annotation_recovers_classes_and_scores_are_cosines():
    model = BagOfGenes()
    adata, truth = _spots(model)
    lk.tl.annotate(adata, MARKERS, model=model)
    scores = adata.obsm["loki_annotation"]
    assert list(scores.columns) == list(MARKERS)
    assert model.calls == [["G0 G1 G2", "G10 G11 G12", "G20 G21 G22"]]
    cls = np.stack([sum(model.vectors[g] for g in MARKERS[c]) for c in MARKERS])
    x = adata.obsm["loki_image"]
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        cls / np.linalg.norm(cls, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(scores.to_numpy(), expected, atol=1e-5)
    label = adata.obs["loki_annotation"]
    assert isinstance(label.dtype, pd.CategoricalDtype)
    assert lk.metrics.weighted_f1(truth, label.astype(str)) > 0.9
    assert adata.uns["loki"]["loki_annotation"]["sentences"][0] == "G0 G1 G2"


def test_fusion_follows_eqs_8_11():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=5)
    rng = np.random.default_rng(3)
    other = pd.DataFrame(
        rng.normal(size=(adata.n_obs, 3)), columns=["fat", "tumour", "stroma"], index=adata.obs_names
    )
    out = lk.tl.annotate(adata, MARKERS, model=model, fuse_with=other, copy=True)
    s = out.obsm["loki_annotation"].to_numpy()
    o = other[list(MARKERS)].to_numpy()

    def norm(a):
        return (a - a.min(1, keepdims=True)) / (a.max(1, keepdims=True) - a.min(1, keepdims=True))

    combined = norm(s) + norm(o)
    np.testing.assert_allclose(out.obsm["loki_annotation_fused"].to_numpy(), combined, atol=1e-6)
    np.testing.assert_array_equal(out.obs["loki_annotation"].cat.codes.to_numpy(), combined.argmax(1))
    assert "loki_annotation" not in adata.obsm  # copy=True left the input alone

    # rows are matched by name: the same scores listed in another order give the same result
    shuffled = lk.tl.annotate(adata, MARKERS, model=model, fuse_with=other.iloc[::-1], copy=True)
    pd.testing.assert_frame_equal(shuffled.obsm["loki_annotation_fused"], out.obsm["loki_annotation_fused"])
    foreign = other.set_axis([f"x{i}" for i in range(adata.n_obs)])
    with pytest.raises(ValueError, match="fuse_with has no row for"):
        lk.tl.annotate(adata, MARKERS, model=model, fuse_with=foreign)
    assert "loki_annotation" not in adata.obsm
    # a later call without fuse_with drops the earlier fused scores
    lk.tl.annotate(adata, MARKERS, model=model, fuse_with=other)
    lk.tl.annotate(adata, MARKERS, model=model)
    assert "loki_annotation_fused" not in adata.obsm


def test_minmax_and_fuse_helpers():
    np.testing.assert_allclose(minmax_per_row([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]]), [[0, 1, 0.5], [0, 0, 0]])
    with pytest.raises(ValueError, match="one shape"):
        fuse_scores(np.zeros((2, 3)), np.zeros((2, 2)))


def test_marker_sentences_match_vocabulary_case_and_report_missing():
    sentences, missing, given = marker_sentences({"a": ["ACTB", "Foo", "gfap", "Gfap"]}, ["Actb", "Gfap"])
    assert sentences == {"a": "Actb Gfap"}
    assert missing == {"a": ["Foo"]}
    assert given == {"a": 2}  # distinct markers in the vocabulary


def test_markers_as_a_series_of_gene_lists_from_a_long_table():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    long = pd.DataFrame(
        [(c, g) for c, genes in MARKERS.items() for g in genes], columns=["cell_type", "gene"]
    )
    series = long.groupby("cell_type", sort=False)["gene"].agg(list)
    lk.tl.annotate(adata, series, model=model, key_added="from_series")
    lk.tl.annotate(adata, MARKERS, model=model, key_added="from_dict")
    assert adata.obsm["from_series"].equals(adata.obsm["from_dict"])
    assert list(adata.uns["loki"]["from_series"]["sentences"]) == list(
        adata.uns["loki"]["from_dict"]["sentences"]
    )


def test_bulk_annotation_with_pseudobulk_groups():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=4)
    rng = np.random.default_rng(5)
    counts = rng.poisson(0.2, (6, len(GENES))).astype(np.float32)
    counts[:3, :3] += 50  # tumour-like samples express G0..G2
    counts[3:, 20:23] += 50
    bulk = AnnData(
        X=counts, obs=pd.DataFrame({"kind": ["t"] * 3 + ["f"] * 3}, index=[f"b{i}" for i in range(6)])
    )
    bulk.var_names = GENES
    lk.tl.annotate(
        adata, bulk, model=model, groupby="kind", sentence_kwargs={"n_genes": 3, "housekeeping": None}
    )
    uns = adata.uns["loki"]["loki_annotation"]
    assert uns["source"] == "bulk"
    assert sorted(uns["classes"]) == ["f", "t"]
    assert set(dict(zip(uns["classes"], uns["sentences"], strict=True))["t"].split()) == {"G0", "G1", "G2"}
    assert adata.obsm["loki_annotation"].shape == (adata.n_obs, 2)


def test_class_embeddings_shortcut():
    model = BagOfGenes()
    adata, truth = _spots(model)
    ce = pd.DataFrame({c: sum(model.vectors[g] for g in MARKERS[c]) for c in MARKERS}).T
    lk.tl.annotate(adata, class_embeddings=ce)
    assert lk.metrics.weighted_f1(truth, adata.obs["loki_annotation"].astype(str)) > 0.9


def test_missing_markers_warn_with_list():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    markers = {**MARKERS, "tumour": ["G0", "NOTAGENE", "G1"]}
    with pytest.warns(UserWarning, match="tumour: NOTAGENE") as record:
        lk.tl.annotate(adata, markers, model=model)
    assert [w.filename for w in record if "NOTAGENE" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    params = adata.uns["loki"]["loki_annotation"]
    assert dict(zip(params["classes"], params["missing_markers"], strict=True))["tumour"] == "NOTAGENE"


def test_results_of_any_class_names_can_be_saved(tmp_path):
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    numbered = {i: genes for i, genes in enumerate(MARKERS.values())}  # e.g. cluster numbers
    numbered[0] = [*numbered[0], "NOTAGENE"]
    with pytest.warns(UserWarning, match="0: NOTAGENE"):
        lk.tl.annotate(adata, numbered, model=model)
    adata.write_zarr(tmp_path / "numbered.zarr")
    back = ad.read_zarr(tmp_path / "numbered.zarr")
    params = back.uns["loki"]["loki_annotation"]
    assert list(params["classes"]) == ["0", "1", "2"]
    assert list(params["missing_markers"]) == ["NOTAGENE", "", ""]

    slashed = {"HSC/MPP cells": MARKERS["tumour"], "stroma": MARKERS["stroma"]}
    with pytest.warns(UserWarning, match=r"cannot store as keys \('HSC/MPP cells': '/' separates") as record:
        lk.tl.annotate(adata, slashed, model=model, key_added="hsc")
    assert [w.filename for w in record if "cannot store as keys" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    # the .uns record keeps the names as values; the columns, renamed as the warning says, write to both
    # formats (a coming anndata refuses '/' in h5ad keys too: tests/test_records.py checks both behaviours)
    adata.obsm["hsc"] = adata.obsm["hsc"].rename(columns=lambda c: c.replace("/", "-"))
    adata.write_h5ad(tmp_path / "slashed.h5ad")
    back = ad.read_h5ad(tmp_path / "slashed.h5ad")
    assert list(back.uns["loki"]["hsc"]["classes"]) == ["HSC/MPP cells", "stroma"]
    assert list(back.obsm["hsc"].columns) == ["HSC-MPP cells", "stroma"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"markers": {"a": []}}, ValueError, "empty"),
        # a marker table as read by pandas: its columns are not classes
        (
            {"markers": pd.DataFrame({"cell_type": ["tumour", "fat"], "gene": ["G0", "G20"]})},
            TypeError,
            r"markers is a DataFrame \(columns \['cell_type', 'gene'\]\); pass \{class: \[genes\]\}: .*"
            r"df\.groupby\(class_column\)\[gene_column\]\.agg\(list\)",
        ),
        ({"markers": [["G0"], ["G20"]]}, TypeError, r"markers must be \{class: \[genes\]\} .* got list"),
        (
            {"markers": pd.Series([["G0"], ["G1"]], index=["a", "a"])},
            ValueError,
            r"repeats classes \(\['a'\]\); give each class one list",
        ),
        ({"markers": MARKERS, "vocabulary": "G0"}, TypeError, r"vocabulary must be a list of gene symbols"),
        ({"markers": {}}, ValueError, "empty"),
        ({"markers": {"a": ["NOPE"]}}, ValueError, "None of the markers"),
        ({"markers": MARKERS, "use": "nope"}, KeyError, "adata.obsm"),
        ({"markers": MARKERS, "model": lambda s: np.ones((len(s), 7))}, ValueError, "Embedding sizes differ"),
        ({"markers": MARKERS, "fuse_with": np.zeros((2, 3))}, ValueError, "items x classes"),
        ({"markers": None}, ValueError, "Pass markers"),
        ({"markers": {1: ["G0"], "1": ["G3"]}}, ValueError, r"Marker classes \[1, '1'\] have the same name"),
        (
            {"markers": MARKERS, "max_markers": 0},
            ValueError,
            r"max_markers must be a positive integer \(the number of markers per class\), got 0",
        ),
        (
            {"markers": MARKERS, "max_markers": -1},
            ValueError,
            r"positive integer \(the number of markers per class\), got -1",
        ),
    ],
)
def test_bad_input_writes_nothing(kwargs, error, match):
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    before = (set(adata.obsm), set(adata.obs.columns), set(adata.uns))
    kwargs = {"model": model, **kwargs}
    with pytest.raises(error, match=match):
        lk.tl.annotate(adata, **kwargs)
    assert (set(adata.obsm), set(adata.obs.columns), set(adata.uns)) == before


def test_an_empty_table_is_refused():
    # decompose, retrieve and predict_expression refuse one too; annotate wrote empty results
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    empty = adata[:0].copy()
    with pytest.raises(ValueError, match=r"no observations \(0 spots or cells\)"):
        lk.tl.annotate(empty, MARKERS, model=model)
    assert (set(empty.obsm), set(empty.obs.columns), set(empty.uns)) == (
        set(adata.obsm),
        set(adata.obs.columns),
        set(adata.uns),
    )


def test_annotations_under_two_keys_keep_their_own_labels():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    lk.tl.annotate(adata, MARKERS, model=model, key_added="first")
    first = adata.obs["first"].copy()
    other = {"x": MARKERS[next(iter(MARKERS))], "y": MARKERS[list(MARKERS)[1]]}
    lk.tl.annotate(adata, other, model=model, key_added="second")
    pd.testing.assert_series_equal(adata.obs["first"], first)
    assert list(adata.obs["second"].cat.categories) == ["x", "y"]
    assert adata.uns["loki"]["first"]["label_key"] == "first"
    assert "loki_annotation" not in adata.obs


def test_classes_that_label_no_spot_are_not_categories(caplog, tmp_path):
    """A class that is the argmax of no spot is left out of the label's categories (scanpy / squidpy
    group tools fail on empty groups) and recorded in .uns; the scores keep every class."""
    import scanpy as sc

    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=10)
    markers = {"tumour": MARKERS["tumour"], "absent": ["G30", "G31", "G32"], **MARKERS}
    with caplog.at_level("INFO", logger="loki"):
        lk.tl.annotate(adata, markers, model=model)
    label = adata.obs["loki_annotation"]
    assert list(label.cat.categories) == ["tumour", "stroma", "fat"]  # class order kept
    assert (label.value_counts() > 0).all()
    np.testing.assert_array_equal(label.astype(str), adata.obsm["loki_annotation"].idxmax(axis=1))
    assert list(adata.obsm["loki_annotation"].columns) == ["tumour", "absent", "stroma", "fat"]
    record = adata.uns["loki"]["loki_annotation"]
    assert record["classes"] == ["tumour", "absent", "stroma", "fat"]
    assert record["classes_without_spots"] == ["absent"]
    assert "1 of 4 classes are the label of no item" in caplog.text
    assert "'absent'" in caplog.text
    sc.tl.rank_genes_groups(adata, "loki_annotation", method="t-test")  # fails on an empty group
    assert list(adata.uns["rank_genes_groups"]["names"].dtype.names) == ["tumour", "stroma", "fat"]
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns["loki"]["loki_annotation"]
    assert list(back["classes_without_spots"]) == ["absent"]
    lk.tl.annotate(adata, MARKERS, model=model)  # every class labels a spot
    assert len(adata.uns["loki"]["loki_annotation"]["classes_without_spots"]) == 0
    assert list(adata.obs["loki_annotation"].cat.categories) == list(MARKERS)


def test_bulk_samples_without_a_group_are_named():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=2)
    bulk = AnnData(
        X=np.ones((3, len(GENES)), dtype=np.float32),
        obs=pd.DataFrame({"kind": ["t", None, "f"]}, index=["b0", "b1", "b2"]),
    )
    bulk.var_names = GENES
    with pytest.raises(ValueError, match=r"1 of 3 samples have no label in bulk.obs\['kind'\]"):
        lk.tl.annotate(adata, bulk, model=model, groupby="kind")
    assert "loki_annotation" not in adata.obsm


def test_a_warning_of_the_bulk_sentences_points_at_the_annotate_call():
    adata, _ = _spots(BagOfGenes(), n_per_class=2)
    bulk = AnnData(X=np.ones((2, 3), dtype=np.float32), obs=pd.DataFrame(index=["b0", "b1"]))
    bulk.var_names = ["ENSG00000141510", "ENSG00000111640", "Actb"]
    with pytest.warns(UserWarning, match="look like Ensembl ids") as record:
        lk.tl.annotate(
            adata, bulk, model=lambda s: np.ones((len(s), 32)), sentence_kwargs={"housekeeping": None}
        )
    assert [w.filename for w in record if "Ensembl" in str(w.message)] == [__file__]  # not loki's line


def test_bulk_profile_without_expression_is_an_error():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=2)
    bulk = AnnData(X=np.zeros((2, len(GENES)), dtype=np.float32), obs=pd.DataFrame(index=["b0", "b1"]))
    bulk.var_names = GENES
    bulk.X[0, 3] = 5
    with pytest.raises(ValueError, match=r"\['b1'\]"):
        lk.tl.annotate(adata, bulk, model=model, sentence_kwargs={"housekeeping": None})
    assert "loki_annotation" not in adata.obsm


def _contents(adata):
    """What annotate could write or remove: the entries of .obsm, .uns and .uns['loki'], and .obs."""
    entries = {"obsm": dict(adata.obsm), "uns": dict(adata.uns), "loki": dict(adata.uns.get("loki", {}))}
    return entries, adata.obs.copy()


def _assert_untouched(adata, before):
    (entries, obs), (now, now_obs) = before, _contents(adata)
    assert {k: set(v) for k, v in now.items()} == {k: set(v) for k, v in entries.items()}
    assert all(now[n][k] is entries[n][k] for n in entries for k in entries[n])
    pd.testing.assert_frame_equal(now_obs, obs)


@pytest.mark.parametrize("fuse", [False, True])
def test_inplace_false_returns_what_inplace_writes_and_writes_nothing(fuse):
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=5)
    other = pd.DataFrame(
        np.random.default_rng(3).normal(size=(adata.n_obs, 3)), columns=list(MARKERS), index=adata.obs_names
    )
    kwargs = {"model": model, "label_key": "label", "fuse_with": other if fuse else None}
    lk.tl.annotate(adata, MARKERS, model=model, fuse_with=other, label_key="label")  # an earlier call's
    before = _contents(adata)
    result = lk.tl.annotate(adata, MARKERS, inplace=False, **kwargs)
    _assert_untouched(adata, before)  # the earlier fused scores are not removed either
    assert isinstance(result, lk.tl.Annotation)
    scores, labels, fused = result
    assert lk.tl.annotate(adata, MARKERS, **kwargs) is None
    pd.testing.assert_frame_equal(scores, adata.obsm["loki_annotation"])
    pd.testing.assert_series_equal(labels, adata.obs["label"])
    if fuse:
        pd.testing.assert_frame_equal(fused, adata.obsm["loki_annotation_fused"])
    else:
        assert fused is None
        assert "loki_annotation_fused" not in adata.obsm


def test_inplace_false_on_spatialdata_writes_nothing():
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=5)
    sdata = SpatialData(tables={"sec": TableModel.parse(adata)})
    table = sdata.tables["sec"]
    before = _contents(table)
    result = lk.tl.annotate(sdata, MARKERS, model=model, inplace=False)
    assert isinstance(result, lk.tl.Annotation)
    scores, labels, fused = result
    _assert_untouched(table, before)
    assert fused is None
    lk.tl.annotate(sdata, MARKERS, model=model)
    pd.testing.assert_frame_equal(scores, table.obsm["loki_annotation"])
    pd.testing.assert_series_equal(labels, table.obs["loki_annotation"])
    with pytest.raises(ValueError, match="copy=True applies to AnnData"):
        lk.tl.annotate(sdata, MARKERS, model=model, copy=True)


def test_inplace_false_validates_first_and_still_reports_left_out_classes_and_markers(caplog):
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=5)
    before = _contents(adata)
    with pytest.raises(ValueError, match="pass one of them"):
        lk.tl.annotate(adata, MARKERS, model=model, copy=True, inplace=False)
    with pytest.raises(KeyError, match="adata.obsm"):
        lk.tl.annotate(adata, MARKERS, model=model, use="nope", inplace=False)
    markers = {"absent": ["G30", "G31", "NOTAGENE"], **MARKERS}
    with pytest.warns(UserWarning, match="absent: NOTAGENE"), caplog.at_level("INFO", logger="loki"):
        scores, labels, _ = lk.tl.annotate(adata, markers, model=model, inplace=False)
    assert "1 of 4 classes are the label of no item" in caplog.text
    assert list(scores.columns.difference(labels.cat.categories)) == ["absent"]
    _assert_untouched(adata, before)


def test_annotate_normalises_its_own_copy_of_the_embeddings_in_place():
    """float64 embeddings were copied to float32, then copied again normalised (two copies of the
    embeddings over the input); the float32 copy is normalised in place, the table's own array and
    any float32 array it shares (a view's, a DataFrame's) never."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n, d = 20000, 256
    emb = rng.normal(size=(n, d))
    classes = pd.DataFrame(rng.normal(size=(4, d)), index=list("abcd"))
    expected = lk.tl.annotate(
        AnnData(obsm={"loki_image": emb.astype(np.float32)}), class_embeddings=classes, inplace=False
    )
    a = AnnData(obsm={"loki_image": emb.copy()})
    tracemalloc.start()
    got = lk.tl.annotate(a, class_embeddings=classes, inplace=False)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert peak_mb < 1.5 * n * d * 4 / 2**20, peak_mb  # one float32 copy, not two
    pd.testing.assert_frame_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(a.obsm["loki_image"], emb)
    for table in (
        AnnData(obsm={"loki_image": emb.astype(np.float32)}),
        AnnData(obsm={"loki_image": emb.astype(np.float32)})[::2],
        AnnData(obsm={"loki_image": pd.DataFrame(emb.astype(np.float32), index=[str(i) for i in range(n)])}),
    ):
        before = np.array(table.obsm["loki_image"], copy=True)
        scores = lk.tl.annotate(table, class_embeddings=classes, inplace=False).scores
        np.testing.assert_array_equal(scores.to_numpy(), cosine_scores(before, classes.to_numpy()))
        np.testing.assert_array_equal(np.asarray(table.obsm["loki_image"]), before)


def test_classes_without_a_measured_marker_are_all_named_with_the_table_genes():
    """A marker table for a whole tissue on a small panel (spacexr's 276-gene Visium vignette against
    PanglaoDB's brain classes: 16 of 34 classes without any marker measured): one error names every
    such class and what the table holds, rather than the first class alone; nothing is written."""
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    markers = {**MARKERS, "neuron": ["RBFOX3", "SNAP25"], "glia": ["GFAP"]}
    with pytest.raises(
        ValueError, match=r"of 2 of the 5 classes is in the table's var_names \(40 genes, e\.g\. 'G0'"
    ) as e:
        lk.tl.annotate(adata, markers, model=model, unmatched="raise")
    assert "'neuron' (RBFOX3, SNAP25)" in str(e.value)
    assert "'glia' (GFAP)" in str(e.value)
    assert "Pass unmatched='drop'" in str(e.value)
    assert "if c not in ['neuron', 'glia']}" in str(e.value)  # code the user can run as it is
    assert "loki_annotation" not in adata.obsm
    assert "loki" not in adata.uns


def test_classes_without_a_measured_marker_are_dropped_by_default_named_and_recorded():
    """PanglaoDB's brain classes on MOB's 1000 genes: 4 of 34 classes have no marker measured. By
    default they are left out with a warning naming each, and recorded; the others annotate."""
    model = BagOfGenes()
    adata, truth = _spots(model, n_per_class=10, noise=0.1)
    markers = {**MARKERS, "neuron": ["RBFOX3", "SNAP25"], "glia": ["GFAP"]}
    with pytest.warns(lk.LokiWarning, match=r"2 of the 5 marker classes have no marker") as caught:
        lk.tl.annotate(adata, markers, model=model)
    message = " ".join(str(w.message) for w in caught)
    assert "'neuron', 'glia'" in message
    assert "['classes_dropped']" in message
    record = adata.uns["loki"]["loki_annotation"]
    assert list(record["classes_dropped"]) == ["neuron", "glia"]
    assert list(record["classes"]) == list(MARKERS)
    assert list(adata.obsm["loki_annotation"].columns) == list(MARKERS)
    assert (adata.obs["loki_annotation"].astype(str).to_numpy() == truth).mean() > 0.9


def test_no_measured_marker_error_gives_code_that_runs_for_many_classes():
    """With more than five such classes the error cannot list a dict to paste; it gives a comprehension
    that keeps the classes the table measures, and that comprehension runs as written."""
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    markers = {**MARKERS, **{f"absent{i}": [f"NOPE{i}", "ALSO_NOT"] for i in range(6)}}
    with pytest.raises(ValueError, match=r"of 6 of the 9 classes") as e:
        lk.tl.annotate(adata, markers, model=model, unmatched="raise")
    code = str(e.value).split("markers=", 1)[1].split(", or give them")[0]
    comprehension, measured = code.split(", where ")
    scope = {"markers": markers, "adata": adata}
    exec(measured, scope)  # "measured = set(adata.var_names.str.upper())"
    kept = eval(comprehension, scope)
    assert list(kept) == list(MARKERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lk.tl.annotate(adata, kept, model=model, unmatched="raise")
    assert "loki_annotation" in adata.obs


def test_unmatched_must_be_raise_or_drop_and_no_class_left_is_an_error():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    with pytest.raises(ValueError, match=r"unmatched must be 'raise' or 'drop', got 'skip'"):
        lk.tl.annotate(adata, MARKERS, model=model, unmatched="skip")
    with pytest.raises(ValueError, match=r"unmatched must be 'raise' or 'drop'"):
        lk.tl.annotate(adata, class_embeddings={"a": np.ones(32)}, unmatched=None)
    with pytest.raises(ValueError, match=r"None of the markers of 2 of the 2 classes"):
        lk.tl.annotate(adata, {"a": ["NOPE"], "b": ["NADA"]}, model=model, unmatched="drop")
    assert "loki" not in adata.uns


def test_one_class_warns_that_its_label_says_nothing_but_scores_are_written():
    """One class (a single bulk profile, or what is left after dropping) labels every spot alike: a
    warning says so, naming it and the classes dropped; the scores, a similarity map, are written."""
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    with pytest.warns(lk.LokiWarning, match=r"Only one class, 'tumour': it is the label of every item"):
        lk.tl.annotate(adata, {"tumour": MARKERS["tumour"]}, model=model, key_added="one")
    assert list(adata.obsm["one"].columns) == ["tumour"]
    assert set(adata.obs["one"]) == {"tumour"}
    with pytest.warns(
        lk.LokiWarning, match=r"Only one class, 'tumour' \(left after dropping 1 without a marker\)"
    ):
        lk.tl.annotate(adata, {"tumour": MARKERS["tumour"], "neuron": ["RBFOX3"]}, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lk.tl.annotate(adata, MARKERS, model=model, key_added="three")


def test_label_colours_are_stored_as_scanpy_stores_them_and_a_users_are_kept():
    """``.uns[f"{label_key}_colors"]``: one colour per category, each class the colour of its position
    among all classes in lk.pl's palette (so scanpy, spatialdata-plot and lk.pl agree); colours the user
    set for the same categories survive a rerun, and go when the categories change."""
    from matplotlib.colors import to_hex

    from loki.pl._common import category_colours

    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=10, noise=0.1)
    classes = ["unused", *MARKERS]  # "unused" labels no spot: not a category, but it holds position 0
    markers = {"unused": ["G30", "G31"], **MARKERS}
    lk.tl.annotate(adata, markers, model=model, label_key="cell_type")
    categories = list(adata.obs["cell_type"].cat.categories)
    assert categories == list(MARKERS)
    palette = [to_hex(c) for c in category_colours(len(classes))]
    assert list(adata.uns["cell_type_colors"]) == [palette[classes.index(c)] for c in categories]
    mine = ["#000000", "#111111", "#222222"]
    adata.uns["cell_type_colors"] = mine
    lk.tl.annotate(adata, markers, model=model, label_key="cell_type")
    assert list(adata.uns["cell_type_colors"]) == mine
    lk.tl.annotate(
        adata, {"tumour": MARKERS["tumour"], "fat": MARKERS["fat"]}, model=model, label_key="cell_type"
    )
    two = [to_hex(c) for c in category_colours(2)]
    won = list(adata.obs["cell_type"].cat.categories)
    assert list(adata.uns["cell_type_colors"]) == [two[["tumour", "fat"].index(c)] for c in won]


def test_no_measured_marker_on_ensembl_ids_points_at_map_gene_ids():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]  # scanpy's Visium test folder: ids only
    with pytest.raises(
        ValueError, match=r"look like Ensembl ids: map them to symbols first with lk\.pp\.map_gene_ids"
    ):
        lk.tl.annotate(adata, MARKERS, model=model)


def test_missing_markers_warning_lists_a_few_per_class_and_says_where_all_are():
    model = BagOfGenes()
    adata, _ = _spots(model, n_per_class=3)
    absent = [f"ABSENT{i}" for i in range(40)]
    markers = {**MARKERS, "tumour": ["G0", *absent]}
    with pytest.warns(
        UserWarning, match="tumour: ABSENT0, ABSENT1, ABSENT2, ABSENT3, ABSENT4 and 35 more"
    ) as rec:
        lk.tl.annotate(adata, markers, model=model)
    message = next(str(w.message) for w in rec if "ABSENT0" in str(w.message))
    assert "ABSENT5" not in message
    assert "recorded in .uns['loki']['loki_annotation']['missing_markers']" in message
    params = adata.uns["loki"]["loki_annotation"]
    assert dict(zip(params["classes"], params["missing_markers"], strict=True))["tumour"] == " ".join(absent)


class ContextBag(BagOfGenes):
    """A stand-in text encoder that reads only the genes its context holds, and counts them as loki's does."""

    context_length = 6  # tokens: start, four genes of one token each, end

    def encode_texts(self, sentences, *, return_word_counts=False):
        kept = [s.split()[: self.context_length - 2] for s in sentences]
        emb = super().encode_texts([" ".join(k) for k in kept])
        counts = np.array([[len(k), len(s.split())] for k, s in zip(kept, sentences, strict=True)])
        return (emb, counts) if return_word_counts else emb


def _cut_warnings(record):
    return [w for w in record if "reach the text encoder" in str(w.message)]


def test_markers_cut_by_max_markers_or_the_context_are_named_once():
    """62 markers became a 50-gene sentence of which the encoder read 19, without a word: one
    LokiWarning now names each class cut, with the genes kept of those given, and .uns records them."""
    model = ContextBag()
    adata, _ = _spots(model, n_per_class=3)
    markers = {"tumour": GENES[:10], "stroma": GENES[10:13], "fat": GENES[20:26]}
    with pytest.warns(lk.LokiWarning) as record:
        lk.tl.annotate(adata, markers, model=model, max_markers=8)
    (warning,) = _cut_warnings(record)
    assert warning.filename == __file__  # at the caller's line
    message = str(warning.message)
    assert "Only the first markers of 2 of 3 classes reach the text encoder" in message
    assert "'tumour' 4 of 10 (cut by max_markers=8, then by the model's 6-token context)" in message
    assert "'fat' 4 of 6 (cut by the model's 6-token context)" in message
    assert "stroma" not in message
    assert "put the most telling first" in message
    assert "counts are in .uns['loki']['loki_annotation']['genes_given'] and ['genes_encoded']" in message
    params = adata.uns["loki"]["loki_annotation"]
    assert list(params["classes"]) == ["tumour", "stroma", "fat"]
    assert list(params["genes_given"]) == [10, 3, 6]
    assert list(params["genes_encoded"]) == [4, 3, 4]
    assert [len(s.split()) for s in params["sentences"]] == [8, 3, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # markers that all fit: no warning
        lk.tl.annotate(adata, MARKERS, model=model, key_added="short")
    assert list(adata.uns["loki"]["short"]["genes_encoded"]) == [3, 3, 3]


def test_a_model_that_does_not_count_words_still_hears_of_max_markers():
    model = BagOfGenes()  # encode_texts without return_word_counts: what reaches it is unknown
    adata, _ = _spots(model, n_per_class=3)
    markers = {**MARKERS, "tumour": GENES[:10]}
    with pytest.warns(lk.LokiWarning) as record:
        lk.tl.annotate(adata, markers, model=model, max_markers=8, inplace=False)
    (warning,) = _cut_warnings(record)
    assert "1 of 3 classes" in str(warning.message)
    assert "'tumour' 8 of 10 (cut by max_markers=8)." in str(warning.message)
    assert ".uns" not in str(warning.message)  # nothing is written
    with pytest.warns(lk.LokiWarning, match="'tumour' 8 of 10"):
        lk.tl.annotate(adata, markers, model=lambda s: model.encode_texts(s), max_markers=8)
    params = adata.uns["loki"]["loki_annotation"]
    assert list(params["genes_given"]) == [10, 3, 3]
    assert list(params["genes_encoded"]) == [-1, -1, -1]
    ce = pd.DataFrame({c: sum(model.vectors[g] for g in MARKERS[c]) for c in MARKERS}).T
    lk.tl.annotate(adata, class_embeddings=ce, key_added="given")
    params = adata.uns["loki"]["given"]
    assert list(params["genes_given"]) == list(params["genes_encoded"]) == [-1, -1, -1]


@pytest.fixture(scope="module")
def tiny():
    return lk.models.load("loki-tiny", device="cpu", seed=0)


def _tiny_spots(model, genes, n=12):
    rng = np.random.default_rng(0)
    adata = AnnData(X=sparse.csr_matrix(rng.poisson(1.0, (n, len(genes))).astype(np.float32)))
    adata.var_names = genes
    adata.obsm["loki_image"] = rng.normal(size=(n, model.embed_dim)).astype(np.float32)
    return adata


def test_loki_tiny_reads_about_twenty_markers_and_annotate_says_which(tiny):
    genes = [f"Gene{i}" for i in range(60)]
    adata = _tiny_spots(tiny, genes)
    markers = {"long": genes[:40], "short": genes[40:45]}
    with pytest.warns(lk.LokiWarning) as record:
        lk.tl.annotate(adata, markers, model=tiny)
    params = adata.uns["loki"]["loki_annotation"]
    _, counts = tiny.tokenizer.ids(list(params["sentences"]), return_word_counts=True)
    assert list(params["genes_encoded"]) == counts[:, 0].tolist()
    kept = int(counts[0, 0])
    assert 10 < kept < 40
    assert counts[1, 0] == 5  # the context (76 tokens) holds the short class whole
    (warning,) = _cut_warnings(record)
    assert f"'long' {kept} of 40 (cut by the model's 76-token context)" in str(warning.message)
    assert "'short'" not in str(warning.message)


def test_bulk_sentences_cut_by_the_context_are_logged_as_embed_text_logs_the_spots(tiny, caplog):
    """Bulk sentences follow the spots' recipe (50 genes), which the context always cuts: logged at
    INFO, as lk.tl.embed_text logs the spots' sentences, and recorded, with no warning."""
    genes = [f"Gene{i}" for i in range(60)]
    adata = _tiny_spots(tiny, genes)
    bulk = AnnData(X=np.arange(120, dtype=np.float32).reshape(2, 60) + 1, obs=pd.DataFrame(index=["a", "b"]))
    bulk.var_names = genes
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="loki"):
        warnings.simplefilter("error", lk.LokiWarning)
        lk.tl.annotate(adata, bulk, model=tiny, sentence_kwargs={"housekeeping": None})
    assert caplog.text.count("class sentences are longer than the model's 76-token context") == 1
    assert "2 of 2 class sentences" in caplog.text
    params = adata.uns["loki"]["loki_annotation"]
    _, counts = tiny.tokenizer.ids(list(params["sentences"]), return_word_counts=True)
    assert list(params["genes_given"]) == counts[:, 1].tolist() == [50, 50]
    assert list(params["genes_encoded"]) == counts[:, 0].tolist()
