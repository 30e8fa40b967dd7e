from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from spatialdata.transformations import Affine, Identity, Sequence, get_transformation

import loki as lk
from loki._keys import Key


def _add_expr(sdata, key="X_expr"):
    for name in sdata.tables.keys():
        t = sdata.tables[name]
        x = t.X.tocsr().astype(np.float64)
        lib = np.asarray(x.sum(axis=1)).ravel()
        x = sp.diags(1e4 / np.maximum(lib, 1)) @ x
        x.data = np.log1p(x.data)
        t.obsm[key] = x.toarray().astype(np.float32)


@pytest.fixture(scope="module")
def mob_aligned():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _add_expr(sdata)
    lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", method="deformable")
    return sdata


def test_writes_transformations_and_shapes(mob_aligned):
    sdata = mob_aligned
    table = sdata.tables["MOB2"]
    info = table.uns[Key.UNS][Key.ALIGNED]
    assert info["target"] == "MOB1"
    assert info["coordinate_system"] == Key.ALIGNED_CS
    coords = table.obsm[Key.ALIGNED]
    assert coords.shape == (table.n_obs, 2)
    assert np.isfinite(coords).all()
    # source elements: existing global transformation followed by the affine part
    for name in ("MOB2_image", "MOB2_spots"):
        t = get_transformation(sdata[name], Key.ALIGNED_CS)
        assert isinstance(t, Sequence)
        assert isinstance(t.transformations[-1], Affine)
        np.testing.assert_allclose(t.transformations[-1].matrix, info["matrix"])
    # target elements keep their global transformation
    for name in ("MOB1_image", "MOB1_spots"):
        t = get_transformation(sdata[name], Key.ALIGNED_CS)
        g = get_transformation(sdata[name], Key.GLOBAL_CS)
        np.testing.assert_allclose(
            t.to_affine_matrix(("x", "y"), ("x", "y")), g.to_affine_matrix(("x", "y"), ("x", "y"))
        )
    shapes = sdata.shapes[info["shapes"]]
    assert info["shapes"] == "MOB2_spots_aligned"
    np.testing.assert_allclose(np.c_[shapes.geometry.x, shapes.geometry.y], coords)
    assert isinstance(get_transformation(shapes, Key.ALIGNED_CS), Identity)
    # the spots transformed into 'aligned' by the rigid part land near the non-rigid coordinates
    import spatialdata as sd

    moved = sd.transform(sdata["MOB2_spots"], to_coordinate_system=Key.ALIGNED_CS)
    spacing = lk.metrics.spot_spacing(sdata.tables["MOB1"].obsm["spatial"])
    rigid_xy = np.c_[moved.geometry.x, moved.geometry.y]
    assert np.linalg.norm(rigid_xy - coords, axis=1).mean() < 0.5 * spacing


def test_aligned_expression_agrees_better_than_unaligned(mob_aligned):
    src, tgt = mob_aligned.tables["MOB2"], mob_aligned.tables["MOB1"]
    after = lk.metrics.alignment_expression_scores(src, tgt, kendall=False)
    before = lk.metrics.alignment_expression_scores(src, tgt, aligned_key="spatial", kendall=False)
    assert after["pearson_median"] > before["pearson_median"] + 0.05
    assert after["n_pairs"] > 0.8 * tgt.n_obs


def test_zarr_round_trip_plot_and_neighbors(mob_aligned, tmp_path):
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401
    import squidpy as sq

    path = tmp_path / "aligned.zarr"
    mob_aligned.write(path)
    back = sd.read_zarr(path)
    for name in ("MOB2_image", "MOB2_spots", "MOB1_spots", "MOB2_spots_aligned"):
        a = get_transformation(mob_aligned[name], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
        b = get_transformation(back[name], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(
        back.tables["MOB2"].obsm[Key.ALIGNED], mob_aligned.tables["MOB2"].obsm[Key.ALIGNED]
    )
    starts = mob_aligned.tables["MOB2"].uns[Key.UNS][Key.ALIGNED]["starts"]
    pd.testing.assert_frame_equal(back.tables["MOB2"].uns[Key.UNS][Key.ALIGNED]["starts"], starts)

    import matplotlib.pyplot as plt

    ax = plt.figure().add_subplot()
    (
        back.pl.render_images("MOB1_image")
        .pl.render_images("MOB2_image")
        .pl.render_shapes("MOB2_spots_aligned")
        .pl.show(coordinate_systems=Key.ALIGNED_CS, ax=ax)
    )
    assert len(ax.get_images()) >= 2
    assert len(ax.collections) >= 1
    plt.close("all")

    table = back.tables["MOB2"]
    if hasattr(sq.gr, "spatial_neighbors_knn"):  # squidpy >= 1.8; spatial_neighbors goes in 1.9
        sq.gr.spatial_neighbors_knn(table, spatial_key=Key.ALIGNED, n_neighs=6)
    else:
        sq.gr.spatial_neighbors(table, spatial_key=Key.ALIGNED, coord_type="generic", n_neighs=6)
    assert table.obsp["spatial_connectivities"].shape == (table.n_obs, table.n_obs)
    assert table.obsp["spatial_connectivities"].sum() >= 6 * table.n_obs


def test_bad_inputs_write_nothing():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _add_expr(sdata)
    n_shapes = len(sdata.shapes)
    with pytest.raises(KeyError, match="loki_text"):
        lk.tl.align(sdata, source="MOB2", target="MOB1")  # no shared embedding key
    with pytest.raises(KeyError, match="nowhere"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", input_coordinate_system="nowhere")
    with pytest.raises(KeyError, match="MOB9"):
        lk.tl.align(sdata, source="MOB9", target="MOB1", use="X_expr")
    with pytest.raises(ValueError, match="coordinate_system"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", coordinate_system="global")
    with pytest.raises(ValueError, match="copy=True applies to AnnData input"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", copy=True)
    assert len(sdata.shapes) == n_shapes
    assert Key.ALIGNED not in sdata.tables["MOB2"].obsm
    for name in ("MOB2_image", "MOB2_spots", "MOB1_spots"):
        assert Key.ALIGNED_CS not in get_transformation(sdata[name], get_all=True)


def test_separate_spatialdata_objects_mob3_mob4():
    # MOB3/MOB4: serial sections about 175 deg apart, as two SpatialData objects
    one = lk.datasets.mob("MOB4")
    two = lk.datasets.mob("MOB3")
    _add_expr(one)
    _add_expr(two)
    lk.tl.align(one, target=two, use="X_expr", method="rigid")
    assert Key.ALIGNED_CS in get_transformation(one["MOB4_image"], get_all=True)
    assert Key.ALIGNED_CS in get_transformation(two["MOB3_spots"], get_all=True)
    info = one.tables["MOB4"].uns[Key.UNS][Key.ALIGNED]
    angle = np.degrees(np.arctan2(info["matrix"][1, 0], info["matrix"][0, 0]))
    assert abs(abs(angle) - 175) < 20
    after = lk.metrics.alignment_expression_scores(one.tables["MOB4"], two.tables["MOB3"], kendall=False)
    before = lk.metrics.alignment_expression_scores(
        one.tables["MOB4"], two.tables["MOB3"], aligned_key="spatial", kendall=False
    )
    assert after["pearson_median"] > before["pearson_median"]


def test_a_section_without_an_image_leaves_its_neighbours_image_alone():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _add_expr(sdata)
    del sdata.images["MOB2_image"]  # only the target was imaged
    with pytest.raises(KeyError, match=r"'MOB2_he' not found in sdata\.images"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", method="rigid", image_key="MOB2_he")
    assert Key.ALIGNED not in sdata.tables["MOB2"].obsm
    lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", method="rigid")
    for name in ("MOB1_image", "MOB1_spots"):  # the target's elements stay where the target is
        matrix = get_transformation(sdata[name], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
        glob = get_transformation(sdata[name], Key.GLOBAL_CS).to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(matrix, glob)
    with pytest.raises(KeyError, match="'MOB1_image' belongs to other tables"):
        lk.pp.spot_patches(sdata, table_key="MOB2")


def test_realigning_the_other_way_replaces_the_targets_placement():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _add_expr(sdata)
    lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_expr", method="rigid")
    lk.tl.align(sdata, source="MOB1", target="MOB2", use="X_expr", method="rigid")
    # MOB2 is now the target: its placement in 'aligned' is its own, not the first call's
    for name in ("MOB2_image", "MOB2_spots"):
        matrix = get_transformation(sdata[name], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
        glob = get_transformation(sdata[name], Key.GLOBAL_CS).to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(matrix, glob)
