"""The spatial plots draw a SpatialData in the coordinate system they are given, as spatialdata-plot does."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata as sd
from spatialdata.transformations import Scale, Sequence, Translation, get_transformation, set_transformation

import loki as lk
from loki._keys import Key

PLOTS = {
    "annotation": lambda sdata, **kw: lk.pl.annotation(
        sdata, table_key="MOB2", classes=["a"], show=False, **kw
    ),
    "expression": lambda sdata, **kw: lk.pl.expression(sdata, "Penk", table_key="MOB2", show=False, **kw),
    "proportions": lambda sdata, **kw: lk.pl.proportions(sdata, table_key="MOB2", show=False, **kw),
}


@pytest.fixture(scope="module")
def mob_aligned():
    """MOB2 aligned (rigid) onto MOB1, whose image and spots lie scaled and shifted in "global"."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    for table in sdata.tables.values():
        x = table.X.tocsr().astype(np.float64)
        x = sp.diags(1e4 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1)) @ x
        x.data = np.log1p(x.data)
        table.obsm["X_expr"] = x.toarray().astype(np.float32)
    # the target placed elsewhere, so that the aligned spots' shapes carry a transformation of their own
    move = Sequence([Scale([2.0, 2.0], ("x", "y")), Translation([1000.0, -500.0], ("x", "y"))])
    for name in ("MOB1_image", "MOB1_spots"):
        set_transformation(sdata[name], Sequence([get_transformation(sdata[name], "global"), move]), "global")
    lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", method="rigid")
    table = sdata.tables["MOB2"]
    rng = np.random.default_rng(0)
    table.obsm["loki_annotation"] = pd.DataFrame(
        rng.random((table.n_obs, 2)), index=table.obs_names, columns=["a", "b"]
    )
    table.obsm["loki_proportions"] = pd.DataFrame(
        rng.random((table.n_obs, 1)), index=table.obs_names, columns=["T"]
    )
    table.layers["loki_predicted"] = table.X.copy()
    yield sdata
    plt.close("all")


def _placed(sdata, shapes: str, cs: str) -> np.ndarray:
    """Centres of the MOB2 table's spots in ``shapes``, placed in ``cs`` by spatialdata, in table order."""
    moved = sd.transform(sdata.shapes[shapes], to_coordinate_system=cs)
    ids = sdata.tables["MOB2"].obs["spot_id"].to_numpy()
    return np.column_stack([moved.geometry.x.reindex(ids), moved.geometry.y.reindex(ids)])


def _panel(fig):
    return next(a for a in fig.axes if a.get_title() and a.collections)


@pytest.mark.parametrize("plot", list(PLOTS), ids=list(PLOTS))
def test_drawn_in_the_coordinate_system_as_spatialdata_places_it(mob_aligned, plot):
    draw = PLOTS[plot]
    drawn = {}
    for cs in (Key.GLOBAL_CS, Key.ALIGNED_CS):
        panel = _panel(draw(mob_aligned, coordinate_system=cs))
        drawn[cs] = offsets = np.asarray(panel.collections[0].get_offsets())
        np.testing.assert_allclose(offsets, _placed(mob_aligned, "MOB2_spots", cs), atol=1e-6)
        # the image through its own transformation: the corners of the drawn level land where spatialdata
        # places the corners of the full-resolution image
        (image,) = panel.images
        h, w = image.get_array().shape[:2]
        to_cs = get_transformation(mob_aligned.images["MOB2_image"], cs).to_affine_matrix(
            ("x", "y"), ("x", "y")
        )
        full = np.array([[0.0, 0.0, 1.0], [1905.0, 1905.0, 1.0], [1905.0, 0.0, 1.0]]) @ to_cs.T
        np.testing.assert_allclose(
            image.get_transform().transform([(0.0, 0.0), (w, h), (w, 0.0)]),
            panel.transData.transform(full[:, :2]),
            atol=1e-6,
        )
        # the view frames the spots
        low = np.array([panel.get_xlim()[0], panel.get_ylim()[1]])  # y downwards
        high = np.array([panel.get_xlim()[1], panel.get_ylim()[0]])
        assert (low < offsets.min(axis=0)).all()
        assert (offsets.max(axis=0) < high).all()
    assert (
        np.abs(drawn[Key.GLOBAL_CS] - drawn[Key.ALIGNED_CS]).max() > 100
    )  # turned and scaled by the alignment
    plt.close("all")


@pytest.mark.parametrize("plot", list(PLOTS), ids=list(PLOTS))
def test_aligned_spots_drawn_where_the_target_is(mob_aligned, plot):
    draw = PLOTS[plot]
    panel = _panel(draw(mob_aligned, coordinate_system=Key.ALIGNED_CS, spatial_key=Key.ALIGNED))
    offsets = np.asarray(panel.collections[0].get_offsets())
    # without coordinate_system=, an alignment's spots are drawn where it placed them (not in "global")
    default = _panel(draw(mob_aligned, spatial_key=Key.ALIGNED))
    np.testing.assert_array_equal(np.asarray(default.collections[0].get_offsets()), offsets)
    np.testing.assert_allclose(offsets, _placed(mob_aligned, "MOB2_spots_aligned", Key.ALIGNED_CS), atol=1e-6)
    # a rigid alignment: where its image and spots are placed in "aligned", and onto the target's spots
    np.testing.assert_allclose(offsets, _placed(mob_aligned, "MOB2_spots", Key.ALIGNED_CS), atol=1e-6)
    target = sd.transform(mob_aligned.shapes["MOB1_spots"], to_coordinate_system=Key.ALIGNED_CS)
    target = np.column_stack([target.geometry.x, target.geometry.y])
    nearest = np.linalg.norm(offsets[:, None] - target[None], axis=2).min(axis=1)
    assert np.median(nearest) < lk.metrics.spot_spacing(target)
    plt.close("all")


@pytest.mark.parametrize("plot", list(PLOTS), ids=list(PLOTS))
def test_coordinates_that_cannot_be_placed_are_refused(mob_aligned, plot):
    draw = PLOTS[plot]
    with pytest.raises(
        ValueError,
        match=r"sdata\.tables\['MOB2'\]\.obsm\['spatial_aligned'\] holds the spots of the alignment "
        r"'spatial_aligned', which placed them in coordinate system 'aligned', not 'global'\. "
        r"Pass coordinate_system='aligned'",
    ):
        draw(mob_aligned, spatial_key=Key.ALIGNED, coordinate_system=Key.GLOBAL_CS)
    with pytest.raises(
        KeyError, match=r"'elsewhere' not found in the coordinate systems of image 'MOB2_image'"
    ):
        draw(mob_aligned, coordinate_system="elsewhere")
    with pytest.raises(
        KeyError, match=r"'elsewhere' not found in the coordinate systems of the spot shapes 'MOB2_spots'"
    ):
        draw(mob_aligned, coordinate_system="elsewhere", show_image=False)
    shapes = mob_aligned.shapes["MOB2_spots_aligned"]
    del mob_aligned.shapes["MOB2_spots_aligned"]
    try:
        with pytest.raises(
            KeyError, match=r"'MOB2_spots_aligned' not found in sdata\.shapes; .* align again"
        ):
            draw(mob_aligned, coordinate_system=Key.ALIGNED_CS, spatial_key=Key.ALIGNED)
    finally:
        mob_aligned.shapes["MOB2_spots_aligned"] = shapes
    assert plt.get_fignums() == []  # nothing drawn is left open
