from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import loki as lk


def small_section(n=30, seed=0, with_image=True):
    """A tiny SpatialData section: 200 px image mapped to global units by a scale of 2."""
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
    from spatialdata.transformations import Scale

    img = np.zeros((3, 200, 200), dtype=np.uint8)
    img[0, :, :100] = 200  # left half red, to check orientation
    image = Image2DModel.parse(
        img, dims=("c", "y", "x"), transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))}
    )
    table.obs["region"] = pd.Categorical(["S_spots"] * n)
    table.obs["spot_id"] = table.obs_names
    table = TableModel.parse(table, region="S_spots", region_key="region", instance_key="spot_id")
    table.uns["loki"] = {"image_key": "S_image"}
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(n, 5.0), index=table.obs_names)
    return sd.SpatialData(images={"S_image": image}, shapes={"S_spots": shapes}, tables={"S": table})


def _annotated(sdata_or_table):
    table = sdata_or_table.tables["S"] if hasattr(sdata_or_table, "tables") else sdata_or_table
    rng = np.random.default_rng(1)
    scores = pd.DataFrame(rng.random((table.n_obs, 3)), index=table.obs_names, columns=["a", "b", "c"])
    table.obsm["loki_annotation"] = scores
    table.obs["loki_annotation"] = pd.Categorical(np.array(["a", "b", "c"])[scores.to_numpy().argmax(1)])
    return table


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
        points = a.collections[0]
        # spots are drawn in image pixels (global / 2) and coloured by their score
        np.testing.assert_allclose(points.get_offsets(), table.obsm["spatial"] / 2)
        np.testing.assert_allclose(points.get_array(), table.obsm["loki_annotation"][cls])
    plt.close(fig)


def test_label_panel_on_anndata_and_class_subset(tmp_path):
    table = _annotated(small_section(with_image=False))
    fig = lk.pl.annotation(table, kind="label", show=False, save=tmp_path / "f.png")
    (ax,) = [a for a in fig.axes if a.get_title() == "loki_annotation"]
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
