"""loki's results used by scanpy, squidpy and spatialdata(-plot), on real sections.

Each test runs loki the way a scverse user would and hands its output to the other tools: embeddings
to ``sc.pp.neighbors``, labels to ``sq.gr.nhood_enrichment`` and to the plots, a SpatialData written to
zarr and read back to loki, a section cut with ``spatialdata.bounding_box_query``. The model is the
untrained ``loki-tiny`` (the composition, not the accuracy, is under test).
"""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from tests.conftest import shared_path, spacexr_visium

import loki as lk
from loki import Key

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def model():
    return lk.models.load("loki-tiny", device="cpu", seed=0)


def _spatial_neighbors(table, spatial_key: str, key_added: str = "spatial") -> None:
    import squidpy as sq

    if hasattr(sq.gr, "spatial_neighbors_knn"):  # squidpy >= 1.8; spatial_neighbors goes in 1.9
        sq.gr.spatial_neighbors_knn(table, spatial_key=spatial_key, n_neighs=6, key_added=key_added)
    else:
        sq.gr.spatial_neighbors(
            table, spatial_key=spatial_key, coord_type="generic", n_neighs=6, key_added=key_added
        )


def _classes_from_spots(table, use: str, n: int = 3) -> pd.DataFrame:
    """Class embeddings that are the embeddings of ``n`` spots far apart: each labels at least itself."""
    xy = np.asarray(table.obsm["spatial"], dtype=float)
    picks = [int(np.argmin(xy[:, 0])), int(np.argmax(xy[:, 0])), int(np.argmax(xy[:, 1]))][:n]
    return pd.DataFrame(table.obsm[use][picks], index=[f"class {i}" for i in range(len(picks))])


def test_visium_embeddings_feed_scanpy_neighbors_umap_and_spatial_plots(model):
    import matplotlib.pyplot as plt
    import scanpy as sc

    folder = shared_path("scanpy_visium_testdata", "1.0.0")
    sdata = lk.io.read_visium(folder)
    (key,) = sdata.tables
    table = sdata.tables[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)  # Ensembl ids as gene names in the fixture
        lk.pp.gene_sentences(sdata, table_key=key)
    # the fixture's hires png is blank: cut the patches from the lowres image
    lk.tl.embed_image(sdata, model, table_key=key, image_key=f"{key}_lowres_image")
    lk.tl.embed_text(sdata, model, table_key=key)
    for rep in (Key.IMAGE, Key.TEXT):
        sc.pp.neighbors(table, use_rep=rep, n_neighbors=10, key_added=f"nn_{rep}")
        assert table.obsp[f"nn_{rep}_connectivities"].shape == (table.n_obs, table.n_obs)
    sc.tl.umap(table, neighbors_key=f"nn_{Key.TEXT}", random_state=0)
    assert np.isfinite(table.obsm["X_umap"]).all()

    lk.tl.annotate(sdata, class_embeddings=_classes_from_spots(table, Key.TEXT), use=Key.TEXT, table_key=key)
    labels = table.obs[Key.LABEL]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert len(labels.cat.categories) >= 2
    assert table.obs[Key.PATCH_OK].dtype == bool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scanpy points to squidpy's spatial_scatter
        sc.pl.spatial(table, color=[Key.LABEL, Key.PATCH_OK], library_id=key, img_key="lowres", show=False)
    sc.pl.embedding(table, basis="umap", color=Key.LABEL, show=False)
    plt.close("all")


def test_zarr_round_trip_then_loki_squidpy_and_spatialdata_plot(model, tmp_path):
    """Embed, write, read back, align and annotate the read-back object, use the results, write again."""
    import matplotlib.pyplot as plt
    import spatialdata
    import spatialdata_plot  # noqa: F401
    import squidpy as sq

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    for s in ("MOB1", "MOB2"):
        lk.pp.gene_sentences(sdata, table_key=s)
        lk.tl.embed_text(sdata, model, table_key=s)
    lk.tl.embed_image(sdata, model, table_key="MOB2", diameter_um=lk.models.TINY_PATCH_UM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zarr's notices about its next format
        sdata.write(tmp_path / "embedded.zarr")
    back = spatialdata.read_zarr(tmp_path / "embedded.zarr")
    table = back.tables["MOB2"]
    assert table.obs[Key.PATCH_OK].dtype == bool
    assert table.obs[Key.EMPTY_SPOT].dtype == bool
    np.testing.assert_array_equal(table.obsm[Key.IMAGE], sdata.tables["MOB2"].obsm[Key.IMAGE])

    assert lk.tl.align(back, source="MOB2", target="MOB1", use=Key.TEXT, method="rigid") is None
    assert "MOB2_spots_aligned" in back.shapes
    assert Key.ALIGNED_CS in back.coordinate_systems
    classes = _classes_from_spots(table, Key.IMAGE)
    assert lk.tl.annotate(back, class_embeddings=classes, table_key="MOB2") is None
    assert isinstance(table.obs[Key.LABEL].dtype, pd.CategoricalDtype)

    _spatial_neighbors(table, Key.ALIGNED)
    sq.gr.nhood_enrichment(table, cluster_key=Key.LABEL, n_perms=20, seed=0, show_progress_bar=False)
    n_labels = len(table.obs[Key.LABEL].cat.categories)
    assert table.uns[f"{Key.LABEL}_nhood_enrichment"]["zscore"].shape == (n_labels, n_labels)

    ax = plt.figure().add_subplot()
    (
        back.pl.render_images("MOB1_image")
        .pl.render_shapes("MOB2_spots", color=Key.LABEL, table_name="MOB2")
        .pl.show(coordinate_systems=Key.ALIGNED_CS, ax=ax)
    )
    assert len(ax.collections) >= 1
    sq.pl.spatial_scatter(table, color=Key.LABEL, shape=None, spatial_key=Key.ALIGNED)
    plt.close("all")

    # the results of the read-back object are stored (spatialdata writes tables with anndata) and read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table.write_zarr(tmp_path / "results.zarr")
    again = ad.read_zarr(tmp_path / "results.zarr")
    pd.testing.assert_series_equal(again.obs[Key.LABEL], table.obs[Key.LABEL])
    np.testing.assert_allclose(again.obsm[Key.ALIGNED], table.obsm[Key.ALIGNED])
    record = again.uns[Key.UNS]
    assert list(record[Key.ANNOTATION]["classes"]) == list(classes.index)
    assert np.asarray(record[Key.ALIGNED]["matrix"]).shape == (3, 3)
    assert record[Key.ALIGNED]["method"] == "rigid"


def test_bounding_box_subset_cuts_the_same_patches(model):
    """A section cut by ``bounding_box_query`` (image translated) gives its spots the same patches."""
    import spatialdata

    sdata = lk.datasets.mob("MOB1")
    full = np.asarray(lk.pp.spot_patches(sdata, table_key="MOB1", size=32))
    sub = spatialdata.bounding_box_query(
        sdata,
        axes=("x", "y"),
        min_coordinate=[700, 800],
        max_coordinate=[1150, 1250],
        target_coordinate_system="global",
        filter_table=True,
    )
    table = sub.tables["MOB1"]
    assert 0 < table.n_obs < sdata.tables["MOB1"].n_obs
    part = np.asarray(lk.pp.spot_patches(sub, table_key="MOB1", size=32, key_added="inside"))
    rows = sdata.tables["MOB1"].obs_names.get_indexer(table.obs_names)
    inside = table.obs["inside"].to_numpy()
    assert inside.sum() > 0.5 * table.n_obs
    np.testing.assert_array_equal(part[inside], full[rows[inside]])
    assert not inside.all()  # the spots on the cut edge are padded and flagged

    lk.pp.gene_sentences(sub, table_key="MOB1")
    lk.tl.embed_text(sub, model, table_key="MOB1")
    lk.tl.embed_image(sub, model, table_key="MOB1")
    assert table.obsm[Key.IMAGE].shape == (table.n_obs, model.embed_dim)
    np.testing.assert_array_equal(table.obs[Key.PATCH_OK].to_numpy(), inside)


def test_decomposed_proportions_plot_with_scanpy_and_squidpy_and_survive_zarr(tmp_path):
    """The recipe of the decompose tutorial: proportions copied from ``.obsm`` to ``.obs`` for plots."""
    import matplotlib.pyplot as plt
    import scanpy as sc
    import squidpy as sq

    spots, reference = spacexr_visium()
    assert lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type") is None
    proportions = spots.obsm[Key.PROPORTIONS]
    assert isinstance(proportions, pd.DataFrame)
    np.testing.assert_allclose(proportions.sum(axis=1), 1.0, atol=1e-6)
    props = proportions.add_prefix("prop_")
    spots.obs[props.columns] = props
    sc.pl.embedding(spots, basis="spatial", color=list(props.columns[:2]), show=False)
    sq.pl.spatial_scatter(spots, color=list(props.columns[:2]), shape=None)
    # squidpy's own helper does the same copy into a new AnnData
    extracted = sq.pl.extract(spots, Key.PROPORTIONS, prefix="x")
    np.testing.assert_allclose(extracted.obs[[f"x_{c}" for c in proportions.columns]], proportions)
    plt.close("all")

    spots.write_zarr(tmp_path / "spots.zarr")
    back = ad.read_zarr(tmp_path / "spots.zarr")
    pd.testing.assert_frame_equal(back.obsm[Key.PROPORTIONS], proportions)
    assert list(back.uns[Key.UNS][Key.PROPORTIONS]["cell_types"]) == list(proportions.columns)
    # loki runs again on the read-back AnnData, under the same key
    lk.tl.decompose(back, reference=reference, cell_type_key="cell_type")
    pd.testing.assert_frame_equal(back.obsm[Key.PROPORTIONS], proportions)


def test_anndata_copy_and_inplace_follow_scanpy(model):
    """``copy=True`` returns a changed copy and leaves the input alone; the default writes, returns None."""
    adata = lk.datasets.mob("MOB1").tables["MOB1"].copy()
    copied = lk.pp.gene_sentences(adata, copy=True)
    assert isinstance(copied, ad.AnnData)
    assert Key.SENTENCE in copied.obs
    assert Key.SENTENCE not in adata.obs
    assert lk.pp.gene_sentences(adata) is None
    assert Key.SENTENCE in adata.obs

    copied = lk.tl.embed_text(adata, model, copy=True)
    assert Key.TEXT in copied.obsm
    assert Key.TEXT not in adata.obsm
    values = lk.tl.embed_text(adata, model, inplace=False)
    assert Key.TEXT not in adata.obsm
    assert lk.tl.embed_text(adata, model) is None
    np.testing.assert_array_equal(adata.obsm[Key.TEXT], values)
    before = adata.obsm[Key.TEXT].copy()
    lk.tl.embed_text(adata, model)  # a second run replaces its own result with the same values
    np.testing.assert_array_equal(adata.obsm[Key.TEXT], before)

    classes = _classes_from_spots(adata, Key.TEXT)
    copied = lk.tl.annotate(adata, class_embeddings=classes, use=Key.TEXT, copy=True)
    assert Key.LABEL in copied.obs
    assert Key.LABEL not in adata.obs
    lk.tl.annotate(adata, class_embeddings=classes, use=Key.TEXT, key_added="second")
    assert "second" in adata.obs
    assert "second" in adata.obsm
    assert Key.LABEL not in adata.obs


def test_obsm_spatial_rewritten_by_squidpy_is_refused_not_used(model):
    import squidpy as sq

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    table = sdata.tables["MOB2"]
    table.obsm["X_expr"] = np.asarray(table.X[:, :200].todense(), dtype=np.float32)
    sdata.tables["MOB1"].obsm["X_expr"] = np.asarray(
        sdata.tables["MOB1"].X[:, :200].todense(), dtype=np.float32
    )
    lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", method="rigid")
    before = np.asarray(lk.pp.spot_patches(sdata, table_key="MOB2", size=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sq.gr.spatial_neighbors(
            sdata,
            table_key="MOB2",
            elements_to_coordinate_systems={"MOB2_spots": Key.ALIGNED_CS},
            coord_type="generic",
            n_neighs=6,
        )
    # squidpy wrote the spots' 'aligned' positions where loki reads their own coordinates: both the
    # patches and a new alignment are refused, naming the coordinate system, instead of moving silently
    with pytest.raises(ValueError, match=r"positions in 'aligned' .* nothing was written"):
        lk.pp.spot_patches(sdata, table_key="MOB2", size=16)
    with pytest.raises(ValueError, match=r"source table 'MOB2' holds its spots' positions in .*'aligned'"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", method="rigid")
    assert before.shape[0] == table.n_obs
