from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.colors import to_hex

import loki as lk


def small_section(n=30, seed=0, with_image=True, coordinate_system="global"):
    """A tiny SpatialData section: 200 px image mapped to ``coordinate_system`` units by a scale of 2."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(40, 360, size=(n, 2))  # global units; image pixel = global / 2
    table = AnnData(X=rng.poisson(2.0, (n, 5)).astype(np.float32))
    table.var_names = [f"g{i}" for i in range(5)]
    table.obs_names = [f"s{i}" for i in range(n)]
    table.obsm["spatial"] = xy
    if not with_image:
        return table
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    img = np.zeros((3, 200, 200), dtype=np.uint8)
    img[0, :, :100] = 200  # left half red, to check orientation
    image = Image2DModel.parse(
        img, dims=("c", "y", "x"), transformations={coordinate_system: Scale([2.0, 2.0], axes=("x", "y"))}
    )
    table.obs["region"] = pd.Categorical(["S_spots"] * n)
    table.obs["spot_id"] = table.obs_names
    table = TableModel.parse(table, region="S_spots", region_key="region", instance_key="spot_id")
    table.uns["loki"] = {"image_key": "S_image"}
    shapes = ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(n, 5.0),
        index=table.obs_names,
        transformations={coordinate_system: Identity()},
    )
    return sd.SpatialData(images={"S_image": image}, shapes={"S_spots": shapes}, tables={"S": table})


def _annotated(sdata_or_table):
    table = sdata_or_table.tables["S"] if hasattr(sdata_or_table, "tables") else sdata_or_table
    rng = np.random.default_rng(1)
    scores = pd.DataFrame(rng.random((table.n_obs, 3)), index=table.obs_names, columns=["a", "b", "c"])
    table.obsm["loki_annotation"] = scores
    table.obs["loki_annotation"] = pd.Categorical(np.array(["a", "b", "c"])[scores.to_numpy().argmax(1)])
    return table


def _assert_image_at(ax, pixels, data_xy):
    """The image of ``ax`` puts its ``pixels`` (x, y) at ``data_xy`` in the axes' data coordinates."""
    (image,) = ax.images
    drawn = image.get_transform().transform(np.asarray(pixels, dtype=float))
    np.testing.assert_allclose(drawn, ax.transData.transform(np.asarray(data_xy, dtype=float)), atol=1e-6)


def test_score_panels_over_he():
    sdata = small_section()
    table = _annotated(sdata)
    fig = lk.pl.annotation(sdata, show=False)
    axes = [a for a in fig.axes if a.get_title() in ("a", "b", "c")]
    assert [a.get_title() for a in axes] == ["a", "b", "c"]
    for a, cls in zip(axes, "abc", strict=True):
        assert len(a.images) == 1
        assert a.images[0].get_array().shape[:2] == (200, 200)
        # SpatialData's pixel (i, j) spans [j, j + 1] x [i, i + 1]: pixel centres at half-integers
        assert a.images[0].get_extent() == [0, 200, 200, 0]
        # drawn in "global", as spatialdata-plot: the image through its scale of 2, the spots (Identity
        # shapes) at their coordinates, coloured by their score
        _assert_image_at(
            a, [(0.0, 0.0), (200.0, 200.0), (0.5, 0.5)], [(0.0, 0.0), (400.0, 400.0), (1.0, 1.0)]
        )
        points = a.collections[0]
        np.testing.assert_allclose(points.get_offsets(), table.obsm["spatial"])
        np.testing.assert_allclose(points.get_array(), table.obsm["loki_annotation"][cls])
    plt.close(fig)


def test_label_panel_on_anndata_and_class_subset(tmp_path):
    table = _annotated(small_section(with_image=False))
    fig = lk.pl.annotation(table, kind="label", show=False, save=tmp_path / "f.png")
    (ax,) = (a for a in fig.axes if a.get_title() == "loki_annotation")
    assert len(ax.images) == 0
    sizes = sorted(len(c.get_offsets()) for c in ax.collections)
    assert sizes == sorted(table.obs["loki_annotation"].value_counts().to_list())
    assert (tmp_path / "f.png").stat().st_size > 0
    plt.close(fig)
    fig, ax = plt.subplots()
    out = lk.pl.annotation(table, classes=["b"], ax=ax, show=False)
    assert out is fig
    assert ax.get_title() == "b"
    lk.pl.annotation(table, classes=["b"], ax=ax, show=False)  # again on the same axes: not flipped back
    assert ax.yaxis_inverted()
    plt.close(fig)


def test_errors():
    table = small_section(with_image=False)
    with pytest.raises(KeyError, match=r"adata\.obsm"):
        lk.pl.annotation(table, show=False)
    _annotated(table)
    with pytest.raises(KeyError, match="classes"):
        lk.pl.annotation(table, classes=["zzz"], show=False)
    with pytest.raises(ValueError, match="kind"):
        lk.pl.annotation(table, kind="nope", show=False)


def test_no_classes_is_refused_before_drawing():
    # classes=[] reached matplotlib: "Number of rows must be a positive integer, not 0"
    table = _annotated(small_section(with_image=False))
    plt.close("all")
    with pytest.raises(
        ValueError,
        match=r"^No classes to plot: pass classes= some of the columns of adata\.obsm\['loki_annotation'\]",
    ):
        lk.pl.annotation(table, classes=[], show=False)
    assert plt.get_fignums() == []


def test_coordinate_system_of_the_section_and_its_spot_shapes():
    from spatialdata.transformations import Affine, Scale, Sequence, set_transformation

    sdata = small_section(coordinate_system="sample1")  # as lk.io.read_visium(coordinate_system=...)
    table = _annotated(sdata)
    for name in ("sample1", None):  # named, or the only one the spots and the image share
        fig = lk.pl.annotation(sdata, classes=["a"], coordinate_system=name, show=False)
        np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), table.obsm["spatial"])
    # drawn in the coordinate system (as spatialdata-plot), each element through its own transformation:
    # the spots' shapes scaled by 3 then turned, the image scaled by 2 then turned
    turn = Affine(np.array([[0.0, -1.0, 50.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), ("x", "y"), ("x", "y"))
    set_transformation(sdata.images["S_image"], Sequence([Scale([2.0, 2.0], ("x", "y")), turn]), "moved")
    set_transformation(sdata.shapes["S_spots"], Sequence([Scale([3.0, 3.0], ("x", "y")), turn]), "moved")
    fig = lk.pl.annotation(sdata, classes=["a"], coordinate_system="moved", show=False)
    x, y = table.obsm["spatial"].T
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), np.column_stack([50 - 3 * y, 3 * x]))
    _assert_image_at(
        fig.axes[0], [(0.0, 0.0), (200.0, 0.0), (0.0, 100.0)], [(50.0, 0.0), (50.0, 400.0), (-150.0, 0.0)]
    )
    with pytest.raises(KeyError, match=r"'nowhere' not found in the coordinate systems of image 'S_image'"):
        lk.pl.annotation(sdata, coordinate_system="nowhere", show=False)
    with pytest.raises(  # two shared systems, neither 'global': no guess
        KeyError,
        match=r"share the coordinate systems 'sample1', 'moved', none of them 'global': pass coordinate_system=",
    ):
        lk.pl.annotation(sdata, show=False)
    plt.close("all")


def test_section_without_an_image_is_drawn_without_one(recwarn):
    sdata = small_section()
    _annotated(sdata)
    del sdata.images["S_image"]
    sdata.tables["S"].uns["loki"].pop("image_key")
    fig = lk.pl.annotation(sdata, classes=["a"], show=False)
    assert len(fig.axes[0].images) == 0
    assert len(fig.axes[0].collections[0].get_offsets()) == sdata.tables["S"].n_obs
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    with pytest.warns(UserWarning, match="has no image of its own") as record:  # asked for explicitly
        lk.pl.annotation(sdata, classes=["a"], show_image=True, show=False)
    assert record[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(UserWarning, match="an AnnData holds no image"):
        lk.pl.annotation(sdata.tables["S"], classes=["a"], show_image=True, show=False)
    with pytest.raises(KeyError, match=r"'nope' not found in sdata\.images"):  # a named image must exist
        lk.pl.annotation(sdata, image_key="nope", show=False)
    plt.close("all")


def test_label_panel_reads_the_label_column_annotate_wrote():
    rng = np.random.default_rng(0)
    adata = small_section(with_image=False)
    emb = rng.normal(size=(adata.n_obs, 8))
    adata.obsm["loki_image"] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    lk.tl.annotate(adata, class_embeddings={"A": rng.normal(size=8), "B": rng.normal(size=8)})
    classes = {c: rng.normal(size=8) for c in "XYZ"}
    lk.tl.annotate(adata, class_embeddings=classes, label_key="region")  # same key, labels elsewhere
    fig = lk.pl.annotation(adata, kind="label", show=False)
    (ax,) = fig.axes
    assert ax.get_title() == "region"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == list(adata.obs["region"].cat.categories)
    assert set(legend) <= set("XYZ")
    plt.close(fig)


def test_fused_scores_are_not_labelled_cosine_similarity():
    rng = np.random.default_rng(0)
    adata = small_section(with_image=False)
    emb = rng.normal(size=(adata.n_obs, 8))
    adata.obsm["loki_image"] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    classes = {"A": rng.normal(size=8), "B": rng.normal(size=8)}
    lk.tl.annotate(adata, class_embeddings=classes, fuse_with=rng.random((adata.n_obs, 2)))
    colorbar_labels = lambda fig: {a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"}  # noqa: E731
    assert colorbar_labels(lk.pl.annotation(adata, key="loki_annotation_fused", show=False)) == {
        "fused score"
    }
    assert colorbar_labels(lk.pl.annotation(adata, show=False)) == {"cosine similarity"}
    # the fused key's labels are the ones annotate wrote (from the fused scores)
    fig = lk.pl.annotation(adata, key="loki_annotation_fused", kind="label", show=False)
    assert fig.axes[0].get_title() == "loki_annotation"
    plt.close("all")


def test_label_panel_draws_unlabelled_spots_and_many_classes_apart():
    table = small_section(n=60, with_image=False)
    table.obs["lab"] = pd.Categorical(["A"] * 20 + ["B"] * 20 + [np.nan] * 20, categories=["A", "B", "C"])
    fig = lk.pl.annotation(table, kind="label", label_key="lab", show=False)
    (ax,) = fig.axes
    assert sum(len(c.get_offsets()) for c in ax.collections) == 60
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B", "C", "NA"]
    plt.close(fig)
    cats = [f"c{i}" for i in range(25)]
    table.obs["lab"] = pd.Categorical([cats[i % 25] for i in range(60)], categories=cats)
    fig = lk.pl.annotation(table, kind="label", label_key="lab", show=False)
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in fig.axes[0].collections}
    assert len(colours) == 25
    plt.close(fig)


def test_label_colours_follow_the_classes_across_sections():
    """A section where one class wins no spot has the same legend, in the same colours."""
    rng = np.random.default_rng(0)
    classes = pd.DataFrame(np.eye(3, 8), index=["stroma", "tumour", "immune"])

    def annotated(which):
        labels = rng.choice(which, 30)
        emb = np.zeros((30, 8), np.float32)
        emb[np.arange(30), [list(classes.index).index(c) for c in labels]] = 1
        section = AnnData(np.zeros((30, 1), np.float32))
        section.obsm["loki_image"] = emb + 0.01 * rng.random((30, 8))
        section.obsm["spatial"] = rng.random((30, 2)) * 100
        lk.tl.annotate(section, class_embeddings=classes)
        legend = lk.pl.annotation(section, kind="label", show=False).axes[0].get_legend()
        return {
            t.get_text(): tuple(h.get_facecolor()[0])
            for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
        }

    every, without_stroma = annotated(["stroma", "tumour", "immune"]), annotated(["tumour", "immune"])
    assert every == without_stroma
    plt.close("all")


def _legend_colours(fig):
    from matplotlib.colors import to_hex

    legend = fig.axes[0].get_legend()
    return {
        t.get_text(): to_hex(h.get_facecolor()[0])
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }


def test_label_colours_are_scanpys():
    import scanpy as sc

    table = small_section(n=60, with_image=False)
    table.obs["lab"] = pd.Categorical(np.array(["A", "B", "C"])[np.arange(60) % 3])
    table.uns["lab_colors"] = ["#ff0000", "#00ff00", "#0000ff"]  # e.g. written by sc.pl.*
    assert _legend_colours(lk.pl.annotation(table, kind="label", label_key="lab", show=False)) == {
        "A": "#ff0000",
        "B": "#00ff00",
        "C": "#0000ff",
    }
    # without them (or too few, or not colours): the colours scanpy would give and store
    for stored in (None, ["#ff0000"], ["#ff0000", "#00ff00", "no colour"]):
        if stored is None:
            del table.uns["lab_colors"]
        else:
            table.uns["lab_colors"] = stored
        not_colours = stored is not None and "no colour" in stored  # the user is warned to fix the key
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig = lk.pl.annotation(table, kind="label", label_key="lab", show=False)
        ours = [w for w in caught if "holds values that are not colours" in str(w.message)]
        assert len(ours) == int(not_colours)
        assert all(w.category is lk.LokiWarning and w.filename == __file__ for w in ours)  # the user's line
        assert table.uns.get("lab_colors") is stored  # read, never written
        reference = table.copy()
        reference.uns.pop("lab_colors", None)
        sc.pl.embedding(reference, basis="spatial", color="lab", show=False)
        assert _legend_colours(fig) == dict(zip("ABC", reference.uns["lab_colors"], strict=True))
    for n in (25, 60):  # scanpy's 28- and 102-colour palettes
        table.obs["lab"] = pd.Categorical([f"c{i % n:02d}" for i in range(60)])
        reference = table.copy()
        sc.pl.embedding(reference, basis="spatial", color="lab", show=False)
        colours = _legend_colours(lk.pl.annotation(table, kind="label", label_key="lab", show=False))
        assert list(colours.values()) == [c.lower() for c in reference.uns["lab_colors"]]
    plt.close("all")


def test_label_colours_stored_for_the_classes_annotate_recorded():
    adata = small_section(with_image=False)
    adata.obsm["loki_image"] = np.eye(8, dtype=np.float32)[np.arange(adata.n_obs) % 3]
    classes = pd.DataFrame(np.eye(4, 8), index=["x", "y", "z", "never"])  # no spot is near "never"
    lk.tl.annotate(adata, class_embeddings=classes)
    assert list(adata.obs["loki_annotation"].cat.categories) == ["x", "y", "z"]
    # without stored colours: the palette over the class list, as on every other section annotated
    # with these classes, and the class that labels no spot in the legend
    colours = _legend_colours(lk.pl.annotation(adata, kind="label", show=False))
    assert colours == {"x": "#1f77b4", "y": "#ff7f0e", "z": "#2ca02c", "never": "#d62728"}
    # stored colours are the column's, as sc.pl.* stores and reads them: one per category, in order
    for stored in (["#ff0000", "#00ff00", "#0000ff"], ["#ff0000", "#00ff00", "#0000ff", "#000000"]):
        adata.uns["loki_annotation_colors"] = stored
        colours = _legend_colours(lk.pl.annotation(adata, kind="label", show=False))
        assert colours == {"x": "#ff0000", "y": "#00ff00", "z": "#0000ff"}
    plt.close("all")


def test_label_colours_are_scanpys_when_a_class_labels_no_spot():
    """A class that won no spot shifts no colour: each label is drawn in sc.pl.embedding's colour."""
    import scanpy as sc

    adata = small_section(with_image=False)
    adata.obsm["loki_image"] = np.eye(8, dtype=np.float32)[np.array([0, 2, 3])[np.arange(adata.n_obs) % 3]]
    lk.tl.annotate(adata, class_embeddings=pd.DataFrame(np.eye(4, 8), index=["x", "never", "y", "z"]))
    assert list(adata.obs["loki_annotation"].cat.categories) == ["x", "y", "z"]
    sc.pl.embedding(adata, basis="spatial", color="loki_annotation", show=False)  # stores its colours
    scanpys = dict(zip(["x", "y", "z"], adata.uns["loki_annotation_colors"], strict=True))
    fig = lk.pl.annotation(adata, kind="label", show=False)
    legend = _legend_colours(fig)  # annotate stored these colours: every class is listed, as without them
    assert list(legend) == ["x", "never", "y", "z"]
    assert {c: legend[c] for c in scanpys} == scanpys
    collections = [c for c in fig.axes[0].collections if len(c.get_offsets())]
    drawn = {c.get_label(): to_hex(c.get_facecolor()[0]) for c in collections}
    assert drawn == scanpys  # the spots themselves, not only the legend
    plt.close("all")


def test_label_column_of_numbers_is_refused_strings_and_bools_are_categories():
    table = small_section(n=40, with_image=False)
    rng = np.random.default_rng(0)
    for values in (rng.random(40), rng.integers(0, 3, 40)):
        table.obs["num"] = values
        with pytest.raises(ValueError, match=r"adata\.obs\['num'\] holds numbers .* kind='scores'"):
            lk.pl.annotation(table, kind="label", label_key="num", show=False)
    assert plt.get_fignums() == []
    table.obs["num"] = pd.Categorical(rng.integers(0, 3, 40))  # made categorical: one entry per value
    fig = lk.pl.annotation(table, kind="label", label_key="num", show=False)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["0", "1", "2"]
    table.obs["text"] = np.array(["b", "a"], dtype=object)[np.arange(40) % 2]
    table.obs["flag"] = np.arange(40) % 3 == 0
    for column, legend in (("text", ["a", "b"]), ("flag", ["False", "True"])):
        fig = lk.pl.annotation(table, kind="label", label_key=column, show=False)
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == legend
        assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 40
    plt.close("all")


@pytest.mark.parametrize(("n", "ncol"), [(14, 1), (15, 2), (30, 2), (31, 3)])
def test_long_legends_take_more_columns(n, ncol):
    table = small_section(n=62, with_image=False)
    table.obs["lab"] = pd.Categorical([f"c{i % n:02d}" for i in range(62)])
    legend = lk.pl.annotation(table, kind="label", label_key="lab", show=False).axes[0].get_legend()
    assert len(legend.get_texts()) == n
    assert legend._ncols == ncol
    plt.close("all")


def test_missing_annotation_names_the_table_and_the_tool_that_writes_it():
    sdata = small_section()  # table "S", never annotated
    with pytest.raises(
        KeyError,
        match=r"'loki_annotation' not found in sdata\.tables\['S'\]\.obsm; available: 'spatial'\. "
        r"Run lk\.tl\.annotate on this table first",
    ):
        lk.pl.annotation(sdata, table_key="S", show=False)
    with pytest.raises(KeyError, match=r"not found in sdata\.tables\['S'\]\.obs; .* Run lk\.tl\.annotate"):
        lk.pl.annotation(sdata, kind="label", show=False)  # the only table, found without table_key
    with pytest.raises(KeyError, match=r"not found in adata\.obsm; .* Run lk\.tl\.annotate"):
        lk.pl.annotation(sdata.tables["S"], show=False)
    assert plt.get_fignums() == []
