"""Class and cell-type names as users have them, through annotate / decompose and on into scverse.

Names with spaces, ``+``, unicode letters (``µ``, ``β``), a leading digit, two names that differ only
in case, long names, integer labels: the results keep them through scanpy, squidpy, loki's plots and a
zarr / h5ad round trip. A ``/`` (ScTypeDB's ``'HSC/MPP cells'``) is warned of at the call, and the
computed result is written once its ``.obsm`` columns are renamed. Real sections: HER2+ breast cancer
A1 (annotation; the untrained ``loki-tiny``: the names, not the accuracy, are under test) and
spacexr's Visium example (decomposition).
"""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.conftest import shared_path, spacexr_visium

import loki as lk
from loki import Key

matplotlib.use("Agg")

#: one class per kind of name; the genes are in the A1 table
MESSY_MARKERS = {
    "CD8+ T cells": ["CD8A", "CD8B", "GZMK"],
    "µ-opioid+ cells": ["OPRM1", "PENK", "MGP"],
    "β cells": ["INS", "IAPP", "KRT5"],
    "1st-line tumour (HER2+)": ["ERBB2", "GRB7", "KRT19", "EPCAM"],
    "Macrophages": ["CD68", "CD163"],
    "macrophages": ["C1QA", "C1QB", "LYZ"],
    "Fibroblasts, " + "very long name " * 10: ["COL1A1", "COL1A2", "DCN"],
    "Adipocytes": ["ADIPOQ", "PLIN1", "FABP4"],
}


def _spatial_neighbors(table) -> None:
    import squidpy as sq

    if hasattr(sq.gr, "spatial_neighbors_knn"):  # squidpy >= 1.8; spatial_neighbors goes in 1.9
        sq.gr.spatial_neighbors_knn(table, spatial_key="spatial", n_neighs=6)
    else:
        sq.gr.spatial_neighbors(table, spatial_key="spatial", coord_type="generic", n_neighs=6)


@pytest.fixture(scope="module")
def model():
    return lk.models.load("loki-tiny", device="cpu", seed=0)


@pytest.fixture(scope="module")
def her2st_a1(model):
    """Section A1 with its spots' text embeddings and the pathologist's labels (a categorical)."""
    root = shared_path("her2st_A")
    sdata = lk.io.read_legacy_st(
        root / "counts" / "A1.tsv.gz",
        root / "spotfiles" / "A1_selection.tsv",
        root / "images" / "A1_HE_image_dark.png",
        name="A1",
        image_scale=2000 / 6954,
    )
    table = sdata.tables["A1"]
    labels = pd.read_csv(root / "labels" / "A1_labeled_coordinates.tsv", sep="\t")
    spot = labels["x"].round().astype(int).astype(str) + "x" + labels["y"].round().astype(int).astype(str)
    labels = labels.assign(spot=spot).drop_duplicates("spot").set_index("spot")["label"]
    table.obs["pathology"] = pd.Categorical(labels.reindex(table.obs_names).to_numpy())
    lk.pp.gene_sentences(sdata, table_key="A1")
    lk.tl.embed_text(sdata, model, table_key="A1")
    return sdata


def test_messy_class_names_survive_annotate_scanpy_squidpy_plots_and_zarr(her2st_a1, model, tmp_path):
    import matplotlib.pyplot as plt
    import scanpy as sc
    import spatialdata
    import squidpy as sq

    sdata = her2st_a1
    table = sdata.tables["A1"]
    lk.tl.annotate(sdata, MESSY_MARKERS, model=model, use=Key.TEXT, table_key="A1", key_added="messy")
    by_series = lk.tl.annotate(
        sdata, pd.Series(MESSY_MARKERS), model=model, use=Key.TEXT, table_key="A1", inplace=False
    )
    pd.testing.assert_frame_equal(by_series.scores, table.obsm["messy"])
    lk.tl.annotate(
        sdata,
        {0: ["ERBB2", "GRB7"], 1: ["COL1A1", "DCN"], 10: ["ADIPOQ", "PLIN1"]},
        model=model,
        use=Key.TEXT,
        table_key="A1",
        key_added="numbered",
    )
    # the pathologist's regions summed into pseudo-bulk classes
    lk.tl.annotate(
        sdata, table, groupby="pathology", model=model, use=Key.TEXT, table_key="A1", key_added="bulk"
    )

    classes = list(MESSY_MARKERS)
    assert list(table.obsm["messy"].columns) == classes
    assert list(table.obsm["numbered"].columns) == ["0", "1", "10"]
    assert list(table.obsm["bulk"].columns) == sorted(table.obs["pathology"].cat.categories)
    for key in ("messy", "numbered", "bulk"):
        labels = table.obs[key]
        assert set(labels.cat.categories) <= set(table.obsm[key].columns)
        assert (labels.value_counts() > 0).all()

    for key in ("messy", "numbered", "bulk"):
        if table.obs[key].nunique() < 2:  # rank_genes_groups needs two groups
            continue
        sc.tl.rank_genes_groups(table, key, method="t-test", key_added=f"rank_{key}")
        assert list(table.uns[f"rank_{key}"]["names"].dtype.names) == list(table.obs[key].cat.categories)
    _spatial_neighbors(table)
    for key in ("messy", "bulk"):
        sq.gr.nhood_enrichment(table, cluster_key=key, n_perms=10, seed=0, show_progress_bar=False)
        n = len(table.obs[key].cat.categories)
        assert table.uns[f"{key}_nhood_enrichment"]["zscore"].shape == (n, n)
    sq.pl.spatial_scatter(table, color="messy", shape=None)
    sc.pl.embedding(table, basis="spatial", color=["messy", "bulk"], show=False)
    lk.pl.annotation(sdata, kind="scores", key="messy", table_key="A1", show=False)
    lk.pl.annotation(sdata, kind="label", key="messy", table_key="A1", show=False)
    plt.close("all")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zarr's notices about its next format
        sdata.write(tmp_path / "a1.zarr")
    back = spatialdata.read_zarr(tmp_path / "a1.zarr").tables["A1"]
    for key in ("messy", "numbered", "bulk"):
        pd.testing.assert_frame_equal(back.obsm[key], table.obsm[key])
        pd.testing.assert_series_equal(back.obs[key], table.obs[key])
        assert list(back.uns[Key.UNS][key]["classes"]) == list(table.obsm[key].columns)
    table.write_h5ad(tmp_path / "a1.h5ad")
    again = ad.read_h5ad(tmp_path / "a1.h5ad")
    pd.testing.assert_frame_equal(again.obsm["messy"], table.obsm["messy"])
    pd.testing.assert_series_equal(again.obs["messy"], table.obs["messy"])


def test_slash_in_a_class_name_is_warned_at_the_call_and_the_result_written_once_renamed(
    her2st_a1, model, tmp_path
):
    """zarr cannot store a '/' in a column name of an .obsm DataFrame: the call says so, and renaming
    the columns of the computed result (not the classes, not a rerun) lets the SpatialData be written."""
    import spatialdata

    sdata = her2st_a1
    table = sdata.tables["A1"]
    markers = {
        "HSC/MPP cells": ["CD34", "KIT"],
        "T/NK cells": ["NKG7", "PTPRC"],
        "Fibroblasts": ["COL1A1", "DCN"],
    }
    with pytest.warns(
        lk.LokiWarning,
        match=r"\.obsm\['slashed'\] has column names that zarr or h5ad cannot store as keys \('HSC/MPP cells': '/' separates",
    ) as record:
        lk.tl.annotate(sdata, markers, model=model, use=Key.TEXT, table_key="A1", key_added="slashed")
    assert [w.filename for w in record if "'/'" in str(w.message)] == [__file__]  # once, at this call
    labels = table.obs["slashed"].copy()

    table.obsm["slashed"] = table.obsm["slashed"].rename(columns=lambda c: c.replace("/", "-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sdata.write(tmp_path / "renamed.zarr")
    back = spatialdata.read_zarr(tmp_path / "renamed.zarr").tables["A1"]
    assert list(back.obsm["slashed"].columns) == ["HSC-MPP cells", "T-NK cells", "Fibroblasts"]
    # the labels and the record keep the classes' own names: only the column keys were renamed
    pd.testing.assert_series_equal(back.obs["slashed"], labels)
    assert list(back.uns[Key.UNS]["slashed"]["classes"]) == list(markers)
    del table.obsm["slashed"], table.obs["slashed"], table.uns[Key.UNS]["slashed"]


def test_bulk_classes_follow_the_order_decompose_gives_the_same_labels():
    """A pseudo-bulk reference grouped by clusters (scanpy's leiden: categories '0', '1', ..., '11')
    keeps the clusters' order, numbers as numbers, as decompose orders the same labels."""
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(60)]
    bulk = ad.AnnData(
        sp.csr_matrix(rng.poisson(2.0, (120, 60)).astype(np.float32)), var=pd.DataFrame(index=genes)
    )
    clusters = np.arange(120) % 12
    bulk.obs["leiden"] = pd.Categorical(clusters.astype(str), categories=[str(i) for i in range(12)])
    bulk.obs["number"] = clusters
    bulk.obs["declared"] = pd.Categorical(
        np.array(["b cells", "a cells", "c cells"])[clusters % 3],
        categories=["c cells", "b cells", "unused", "a cells"],
    )
    spots = ad.AnnData(
        sp.csr_matrix(rng.poisson(2.0, (20, 60)).astype(np.float32)), var=pd.DataFrame(index=genes)
    )
    spots.obsm[Key.IMAGE] = rng.normal(size=(20, 8)).astype(np.float32)

    def encoder(sentences):
        return np.random.default_rng(len(sentences)).normal(size=(len(sentences), 8))

    in_order = [str(i) for i in range(12)]
    for groupby in ("leiden", "number"):
        result = lk.tl.annotate(spots, bulk, groupby=groupby, model=encoder, inplace=False)
        assert list(result.scores.columns) == in_order
        decomposed = lk.tl.decompose(spots, reference=bulk, cell_type_key=groupby, inplace=False)
        assert list(decomposed.proportions.columns) == in_order
    result = lk.tl.annotate(spots, bulk, groupby="declared", model=encoder, inplace=False)
    assert list(result.scores.columns) == ["c cells", "b cells", "a cells"]  # 'unused' has no sample


def test_read_markers_names_spellings_that_differ_by_case_or_spaces():
    """CellMarker 2.0 spells some classes twice ('Naive B Cell', 'Naive B cell') and some with a no-break
    space: reading says so, and a cell type asked for in another spelling is answered with the table's."""
    path = shared_path("marker_genes", "CellMarker2_Human_Aug.csv")
    with pytest.warns(
        lk.LokiWarning, match=r"differ only in case or spacing \(.*'Naive B Cell' / 'Naive B cell'"
    ):
        markers = lk.pp.read_markers(path)
    assert "Naive B Cell" in markers  # kept as the table spells them
    assert "Naive B cell" in markers
    with pytest.raises(
        KeyError, match=r"Spelled differently .* 'CD8\+ intraepithelial cell': 'CD8\+\\+xa0intra"
    ):
        lk.pp.read_markers(path, cell_types=["CD8+ intraepithelial cell"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)  # one spelling per class in this tissue
        assert "Adipocyte" in lk.pp.read_markers(path, tissue="Breast")


def test_messy_cell_types_survive_decompose_plots_squidpy_and_zarr(tmp_path):
    import matplotlib.pyplot as plt
    import squidpy as sq

    renamed = {
        "CA1": "CA1+ pyramidal",
        "CA3": "ca1+ pyramidal",  # differs from the one above only in case
        "Cajal_Retzius": "µ-Cajal Retzius",
        "Choroid": "β choroid",
        "Denate": "1st dentate",
        "Endothelial_Stalk": "Endothelial " + "stalk " * 30,
    }
    spots, reference = spacexr_visium(renamed)
    reference.obs["number"] = pd.Categorical(reference.obs["cell_type"]).codes * 5
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    lk.tl.decompose(
        spots, reference=reference, cell_type_key="cell_type", method="mapping", epochs=30, key_added="mapped"
    )
    lk.tl.decompose(spots, reference=reference, cell_type_key="number", key_added="numbered")
    types = sorted(reference.obs["cell_type"].unique())
    for key in (Key.PROPORTIONS, "mapped"):
        assert list(spots.obsm[key].columns) == types
        assert list(spots.uns[Key.UNS][key]["cell_types"]) == types
    assert list(spots.obsm["numbered"].columns) == [str(5 * i) for i in range(len(types))]

    lk.pl.proportions(spots, show=False)
    lk.pl.proportions(spots, key="mapped", cell_types=list(renamed.values())[:3], show=False)
    dominant = spots.obsm[Key.PROPORTIONS].idxmax(axis=1)
    spots.obs["dominant"] = pd.Categorical(dominant, categories=[t for t in types if (dominant == t).any()])
    _spatial_neighbors(spots)
    sq.gr.nhood_enrichment(spots, cluster_key="dominant", n_perms=10, seed=0, show_progress_bar=False)
    sq.pl.spatial_scatter(spots, color="dominant", shape=None)
    plt.close("all")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spots.write_zarr(tmp_path / "spots.zarr")
    back = ad.read_zarr(tmp_path / "spots.zarr")
    for key in (Key.PROPORTIONS, "mapped", "numbered"):
        pd.testing.assert_frame_equal(back.obsm[key], spots.obsm[key])
    pd.testing.assert_series_equal(back.obs["dominant"], spots.obs["dominant"])
