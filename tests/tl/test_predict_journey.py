"""Expression prediction from H&E end to end on real sections (bundled MOB), composed with scanpy.

The embeddings come from the untrained ``loki-tiny`` (random weights, CPU, a few seconds): the scores
mean nothing, but every step a user takes runs on real counts, real patches and real spot layouts.
"""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import loki as lk

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SECTIONS = ("MOB1", "MOB2", "MOB3")


@pytest.fixture(scope="module")
def mob():
    """Three MOB sections with text and image embeddings and log-normalised expression (scanpy)."""
    sc = pytest.importorskip("scanpy")
    sdata = lk.datasets.mob(list(SECTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)  # the model is untrained, and says so
        model = lk.models.load("loki-tiny", device="cpu", seed=0)
        for name in SECTIONS:
            lk.pp.gene_sentences(sdata, table_key=name)
            lk.tl.embed_text(sdata, model, table_key=name)
            lk.tl.embed_image(sdata, model, table_key=name)
    for name in SECTIONS:
        table = sdata.tables[name]
        table.layers["counts"] = table.X.copy()
        sc.pp.normalize_total(table, target_sum=1e4)
        sc.pp.log1p(table)
    return sdata


@pytest.fixture(scope="module")
def reference(mob):
    # uns_merge="same" keeps scanpy's log1p record, which both sections share (concat drops uns by default)
    tables = [mob.tables["MOB1"], mob.tables["MOB2"]]
    return ad.concat(tables, label="section", index_unique="-", uns_merge="same")


def _top_genes(table, n):
    x = table.X.toarray()
    return list(table.var_names[np.argsort(-x.var(axis=0))[:n]])


def test_predict_a_held_out_section_score_plot_and_store(mob, reference, tmp_path, monkeypatch):
    sc = pytest.importorskip("scanpy")
    query = mob.tables["MOB3"]
    genes = _top_genes(query, 40)
    pred = lk.tl.predict_expression(mob, reference, query_table_key="MOB3", genes=genes, top_k=20)
    assert list(pred.var_names) == genes
    assert pred.obs_names.equals(query.obs_names)
    assert pred.X.dtype == np.float32
    # the prediction is an average of log1p values: scanpy knows it
    assert pred.uns["log1p"] == {"base": None}
    # per-gene PCC against the truth, matched by gene name whatever the order
    truth = query[:, genes]
    pcc = lk.metrics.pearson(truth.X.toarray(), pred.X, axis=0)
    np.testing.assert_allclose(lk.metrics.pearson(truth, pred[:, genes[::-1]], axis=0), pcc, rtol=1e-6)
    np.testing.assert_allclose(lk.metrics.pearson(truth.X, pred.X, axis=0), pcc, rtol=1e-12)  # sparse truth
    assert np.isfinite(pcc).all()
    # plots: loki's over the H&E, scanpy's and squidpy's on the predicted AnnData
    fig = lk.pl.expression(mob, genes[:2], predicted=pred, table_key="MOB3", show=False)
    assert len([a for a in fig.axes if a.get_title()]) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scanpy points at squidpy
        sc.pl.spatial(pred, color=genes[0], spot_size=20, show=False)
    sq = pytest.importorskip("squidpy")
    sq.pl.spatial_scatter(pred, color=genes[0], shape=None, size=5)
    plt.close("all")
    # scanpy on the prediction; the SpatialData takes it as a table of the same spots
    logged = []
    monkeypatch.setattr("scanpy.logging.warning", lambda msg, *a, **k: logged.append(msg))
    sc.pp.log1p(pred.copy())
    assert logged == ["adata.X seems to be already log-transformed."]
    mob.tables["MOB3_predicted"] = pred
    try:
        assert mob.tables["MOB3_predicted"].uns["spatialdata_attrs"] == query.uns["spatialdata_attrs"]
    finally:
        del mob.tables["MOB3_predicted"]
    # zarr round trip keeps the values and the record
    pred.write_zarr(tmp_path / "pred.zarr")
    back = ad.read_zarr(tmp_path / "pred.zarr")
    np.testing.assert_array_equal(back.X, pred.X)
    assert back.uns["loki"]["loki_predicted"]["top_k"] == 20
    assert back.var_names.equals(pred.var_names)


def test_same_seed_same_prediction_and_a_failing_call_writes_nothing(mob, reference):
    kwargs = {"query_table_key": "MOB3", "top_k": 10, "search": "ivf", "n_lists": 8}
    a = lk.tl.predict_expression(mob, reference, seed=3, **kwargs)
    b = lk.tl.predict_expression(mob, reference, seed=3, **kwargs)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.uns["loki"]["loki_predicted"]["seed"] == 3
    query = mob.tables["MOB3"]
    layers, records = set(query.layers), set(query.uns["loki"])
    for bad in ({"use_query": "X_uni"}, {"layer": "raw"}, {"top_k": 10**6}, {"genes": ["Penk", "nope"]}):
        with pytest.raises((KeyError, ValueError)):
            lk.tl.predict_expression(mob, reference, query_table_key="MOB3", output="layer", **bad)
    assert set(query.layers) == layers
    assert set(query.uns["loki"]) == records


def test_leave_one_section_out_on_the_tables_of_one_spatialdata(mob):
    genes = _top_genes(mob.tables["MOB1"], 20)
    preds, scores = lk.tl.predict_expression_loso({s: mob for s in SECTIONS}, genes=genes, top_k=20)
    assert list(preds) == list(SECTIONS)
    assert scores.shape == (len(SECTIONS) * len(genes), 4)
    for name, pred in preds.items():
        assert pred.obs_names.equals(mob.tables[name].obs_names)
        assert "log1p" in pred.uns
        got = scores.loc[scores.section == name].set_index("gene")["pcc"]
        measured = pd.DataFrame(pred.layers["measured"], index=pred.obs_names, columns=genes)
        np.testing.assert_allclose(got, lk.metrics.pearson(measured, pred.to_df(), axis=0), rtol=1e-6)
