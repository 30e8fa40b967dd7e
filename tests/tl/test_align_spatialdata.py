from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata as sd
from spatialdata.transformations import Affine, Identity, Scale, Sequence, get_transformation

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


_FAST = {"use": None, "method": "rigid", "mirror": False, "n_rotations": 1}


def _written(sdata, source="MOB2", targets=("MOB1_image", "MOB1_spots")):
    """What a call wrote: the source's .obsm/.uns entry, shapes, and 'aligned' on any element."""
    table = sdata.tables[source]
    placed = [
        name
        for name in (f"{source}_image", f"{source}_spots", *targets)
        if name in sdata and Key.ALIGNED_CS in get_transformation(sdata[name], get_all=True)
    ]
    entry = Key.ALIGNED in table.obsm or Key.ALIGNED in table.uns.get(Key.UNS, {})
    return entry, placed, sorted(n for n in sdata.shapes if n.endswith("_aligned"))


def _in_own_units(sdata, section, factor, to_global=None):
    """The section's spots in units ``factor`` times finer, scaled back into 'global' (by default).

    The layout is SpatialData's: ``.obsm['spatial']`` holds the spot shapes' own coordinates.
    """
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale

    table, spots = sdata.tables[section], sdata.shapes[f"{section}_spots"]
    sdata.shapes[f"{section}_spots"] = ShapesModel.parse(
        np.c_[spots.geometry.x, spots.geometry.y] * factor,
        geometry=0,
        radius=spots["radius"].to_numpy() * factor,
        index=spots.index,
        transformations={"global": to_global or Scale([1 / factor, 1 / factor], axes=("x", "y"))},
    )
    table.obsm["spatial"] = table.obsm["spatial"] * factor
    table.uns[Key.UNS]["microns_per_unit"] /= factor


def _rescaled(case: str):
    """MOB1 and MOB2, MOB2's spots in other units that keep their physical size; MOB2's radius in MOB1's units."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    radius = sdata.shapes["MOB2_spots"]["radius"].to_numpy()
    in_target_units = (
        radius
        * sdata.tables["MOB2"].uns[Key.UNS]["microns_per_unit"]
        / sdata.tables["MOB1"].uns[Key.UNS]["microns_per_unit"]
    )
    if case == "scanned at 2x":  # own pixels at 2x, scaled back into 'global'
        _in_own_units(sdata, "MOB2", 2.0)
    if case == "stored at 1/4":  # a quarter-scale image's pixels
        _in_own_units(sdata, "MOB2", 0.25)
    if case == "own pixels at 2x":  # as a reader stores a section scanned at 2x: Identity to 'global'
        _in_own_units(sdata, "MOB2", 2.0, Identity())
    return sdata, in_target_units


@pytest.mark.parametrize("case", ["scanned at 2x", "stored at 1/4", "own pixels at 2x"])
def test_aligned_shapes_radius_in_the_aligned_units(case):
    sdata, radius = _rescaled(case)
    lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    # the spots keep their physical size
    np.testing.assert_allclose(sdata.shapes["MOB2_spots_aligned"]["radius"].to_numpy(), radius, rtol=1e-9)


def _positions(sdata, name, cs=Key.ALIGNED_CS):
    from spatialdata import transform

    moved = transform(sdata.shapes[name], to_coordinate_system=cs)
    return np.c_[moved.geometry.x, moved.geometry.y]


def test_a_change_of_the_global_unit_scales_the_result():
    """Scale(f) on every element of both sections changes 'global's unit only: 'aligned' scales by f."""
    from spatialdata.transformations import Scale, set_transformation

    placed = {}
    for f in (1.0, 2.5):
        sdata = lk.datasets.mob(("MOB1", "MOB2"))
        for name in ("MOB1_image", "MOB1_spots", "MOB2_image", "MOB2_spots"):
            set_transformation(sdata[name], Scale([f, f], axes=("x", "y")), to_coordinate_system="global")
        lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
        placed[f] = {n: _positions(sdata, n) for n in ("MOB1_spots", "MOB2_spots", "MOB2_spots_aligned")}
        # the rigid placement and the aligned spots agree (a rigid fit has no non-rigid part)
        np.testing.assert_allclose(placed[f]["MOB2_spots"], placed[f]["MOB2_spots_aligned"], atol=1e-6 * f)
    for name, xy in placed[1.0].items():
        np.testing.assert_allclose(placed[2.5][name], 2.5 * xy, rtol=1e-9, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", ["scanned at 2x", "stored at 1/4"])
def test_sections_in_their_own_units_land_where_unscaled_ones_do(case):
    """The source's spots in other own units, scaled into 'global': the same placement in 'aligned'."""
    reference = lk.datasets.mob(("MOB1", "MOB2"))
    lk.tl.align(reference, source="MOB2", target="MOB1", **_FAST)
    sdata, _ = _rescaled(case)
    lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    expected = _positions(reference, "MOB2_spots")
    np.testing.assert_allclose(_positions(sdata, "MOB2_spots"), expected, atol=1e-6)
    np.testing.assert_allclose(_positions(sdata, "MOB2_spots_aligned"), expected, atol=1e-6)
    # and the image goes with them: its corner lands where the unscaled layout puts it
    corner = {}
    for name, data in (("reference", reference), ("rescaled", sdata)):
        from spatialdata.transformations import get_transformation

        matrix = get_transformation(data["MOB2_image"], Key.ALIGNED_CS).to_affine_matrix(
            ("x", "y"), ("x", "y")
        )
        corner[name] = np.asarray(matrix, dtype=np.float64)[:2, 2]
    np.testing.assert_allclose(corner["rescaled"], corner["reference"], atol=1e-6)


def test_table_coordinates_in_global_units_beside_scaled_shapes_are_refused():
    """The table holding 'global' positions while its shapes carry a Scale would be placed twice."""
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    spots = sdata.shapes["MOB2_spots"]
    xy = np.c_[spots.geometry.x, spots.geometry.y]
    sdata.shapes["MOB2_spots"] = ShapesModel.parse(
        xy / 4,
        geometry=0,
        radius=spots["radius"].to_numpy() / 4,
        index=spots.index,
        transformations={"global": Scale([4.0, 4.0], axes=("x", "y"))},
    )
    with pytest.raises(ValueError, match=r"own coordinates .* nothing was written"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    assert _written(sdata) == (False, [], [])


@pytest.mark.parametrize(
    ("key_added", "match"),
    [
        ("spatial aligned", "'MOB2_spots_spatial aligned' .* not a valid SpatialData element name"),
        ("spatial/v2", r"key_added=.spatial/v2. cannot be written to h5ad or zarr"),
        ("", "non-empty string"),
        ("spatial_image", r"'MOB2_spots_image' .* sdata.images already holds"),
        ("spatial", "spatial_key"),
        ("X_expr", "embedding"),
    ],
)
def test_bad_key_added_is_refused_before_anything_is_written(key_added, match):
    from spatialdata.models import Image2DModel

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _add_expr(sdata)
    sdata.images["MOB2_spots_image"] = Image2DModel.parse(np.zeros((3, 8, 8), np.uint8), dims=("c", "y", "x"))
    spatial = sdata.tables["MOB2"].obsm["spatial"].copy()
    with pytest.raises(ValueError, match=match):
        lk.tl.align(sdata, source="MOB2", target="MOB1", key_added=key_added, **{**_FAST, "use": "X_expr"})
    assert _written(sdata) == (False, [], [])
    assert sorted(sdata.tables["MOB2"].obsm) == ["X_expr", "spatial"]
    np.testing.assert_array_equal(sdata.tables["MOB2"].obsm["spatial"], spatial)
    assert "MOB2_spots_image" not in sdata.shapes


def test_a_failing_shapes_element_leaves_nothing_written(monkeypatch):
    from spatialdata.models import ShapesModel

    def refuse(cls, *args, **kwargs):
        raise RuntimeError("refused")

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    monkeypatch.setattr(ShapesModel, "parse", classmethod(refuse))
    with pytest.raises(RuntimeError, match="refused"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    assert _written(sdata) == (False, [], [])


def test_table_ids_missing_from_the_shapes_are_refused_before_writing():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    table = sdata.tables["MOB2"]
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    table.obs[instance_key] = table.obs[instance_key].astype(str) + "_x"  # no circle has these ids
    with pytest.raises(ValueError, match=r"no shape in sdata.shapes\['MOB2_spots'\]"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    assert _written(sdata) == (False, [], [])


def test_align_sections_checks_the_stack_before_writing():
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    for sections in (["MOB2", "MOB1", "MOB1"], ["MOB2", "MOB1", "MOB2"]):
        with pytest.raises(ValueError, match=r"lists .* more than once"):
            lk.tl.align_sections(sdata, target="MOB1", sections=sections, progress=False, **_FAST)
    del sdata.images["MOB3_image"]
    # MOB3 imaged on the target's slide: MOB2 is aligned first, MOB3 then fails
    sdata.tables["MOB3"].uns[Key.UNS]["image_key"] = "MOB1_image"
    with pytest.raises(ValueError, match="sections 'MOB1' and 'MOB3' share the element 'MOB1_image'"):
        lk.tl.align_sections(sdata, target="MOB1", progress=False, **_FAST)
    # MOB2 and MOB3 on one slide: each would place the image with its own transformation
    sdata.tables["MOB3"].uns[Key.UNS]["image_key"] = "MOB2_image"
    with pytest.raises(ValueError, match="sections 'MOB2' and 'MOB3' share the element 'MOB2_image'"):
        lk.tl.align_sections(sdata, target="MOB1", progress=False, **_FAST)
    for source in ("MOB2", "MOB3"):
        assert _written(sdata, source, targets=("MOB1_image", "MOB1_spots", "MOB3_spots")) == (False, [], [])


def _one_section_with_more_elements(name: str):
    """A one-section SpatialData with an outline, cell labels, transcripts and an unplaceable image."""
    import geopandas as gpd
    from shapely.geometry import Polygon
    from spatialdata.models import Image2DModel, Labels2DModel, PointsModel, ShapesModel

    sdata = lk.datasets.mob(name)
    outline = gpd.GeoDataFrame(geometry=[Polygon([(200, 200), (1700, 200), (1700, 1700), (200, 1700)])])
    sdata.shapes[f"{name}_outline"] = ShapesModel.parse(outline, transformations={"global": Identity()})
    sdata.labels[f"{name}_cells"] = Labels2DModel.parse(
        np.zeros((64, 64), dtype=np.int32), dims=("y", "x"), transformations={"global": Identity()}
    )
    sdata.points[f"{name}_transcripts"] = PointsModel.parse(
        pd.DataFrame({"x": [300.0, 900.0], "y": [400.0, 1000.0]}), transformations={"global": Identity()}
    )
    sdata.images[f"{name}_if"] = Image2DModel.parse(  # only in another coordinate system
        np.zeros((1, 8, 8), np.uint8), dims=("c", "y", "x"), transformations={"pixels": Identity()}
    )
    return sdata


def test_one_section_spatialdata_places_every_element(caplog):
    source, target = _one_section_with_more_elements("MOB2"), _one_section_with_more_elements("MOB1")
    with caplog.at_level("INFO", logger="loki"):
        lk.tl.align(source, target=target, **_FAST)
    for sdata, name in ((source, "MOB2"), (target, "MOB1")):
        for element in ("image", "spots", "outline", "cells", "transcripts"):
            assert Key.ALIGNED_CS in get_transformation(sdata[f"{name}_{element}"], get_all=True), element
        assert Key.ALIGNED_CS not in get_transformation(sdata[f"{name}_if"], get_all=True)
    matrix = source.tables["MOB2"].uns[Key.UNS][Key.ALIGNED]["matrix"]
    t = get_transformation(source["MOB2_transcripts"], Key.ALIGNED_CS)
    np.testing.assert_allclose(t.to_affine_matrix(("x", "y"), ("x", "y")), matrix)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("source section 'MOB2': ['MOB2_if'] (no transformation to 'global')" in w for w in warnings)
    assert any("target section 'MOB1': ['MOB1_if']" in w for w in warnings)


def test_image_keys_of_both_sections_in_one_spatialdata():
    from spatialdata.models import Image2DModel

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    for name in ("MOB1", "MOB2"):
        sdata.images[f"{name}_lowres"] = Image2DModel.parse(
            np.zeros((3, 8, 8), np.uint8),
            dims=("c", "y", "x"),
            transformations={"global": Scale([240.0, 240.0], axes=("x", "y"))},
        )
    lk.tl.align(
        sdata,
        source="MOB2",
        target="MOB1",
        image_key=["MOB2_image", "MOB2_lowres"],
        target_image_key=["MOB1_image", "MOB1_lowres"],
        **_FAST,
    )
    matrix = sdata.tables["MOB2"].uns[Key.UNS][Key.ALIGNED]["matrix"]
    for name, expect in (
        ("MOB2_lowres", matrix @ np.diag([240.0, 240.0, 1.0])),
        ("MOB1_lowres", np.diag([240.0, 240.0, 1.0])),
    ):
        placed = get_transformation(sdata[name], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(placed, expect)
    # without an image of its own, the target's warning says which section and which parameter
    other = lk.datasets.mob(("MOB1", "MOB2"))
    del other.images["MOB1_image"]
    with pytest.warns(UserWarning, match="no image of the target section 'MOB1' found") as record:
        lk.tl.align(other, source="MOB2", target="MOB1", **_FAST)
    (warned,) = (w for w in record if "no image of the" in str(w.message))  # once per call
    assert "pass target_image_key= to name it" in str(warned.message)
    assert warned.filename == __file__  # the caller's line


def test_sequential_stack_in_own_units_lands_where_unscaled_one_does():
    """Target and sources each in their own units: every section lands as in the unscaled stack."""
    sections = ("MOB1", "MOB2", "MOB3")
    reference = lk.datasets.mob(sections)
    lk.tl.align_sections(reference, target="MOB1", sequential=True, progress=False, **_FAST)
    sdata = lk.datasets.mob(sections)
    for section, factor in (("MOB1", 3.0), ("MOB2", 2.0), ("MOB3", 0.25)):
        _in_own_units(sdata, section, factor)
    lk.tl.align_sections(sdata, target="MOB1", sequential=True, progress=False, **_FAST)
    for name in ("MOB1_spots", "MOB2_spots", "MOB3_spots", "MOB2_spots_aligned", "MOB3_spots_aligned"):
        np.testing.assert_allclose(
            _positions(sdata, name), _positions(reference, name), atol=1e-6, err_msg=name
        )


def test_a_second_key_added_keeps_the_first_placement():
    """Alignments under different keys get their own coordinate systems; sharing one is warned about."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    first = get_transformation(sdata["MOB2_image"], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
    lk.tl.align(sdata, source="MOB2", target="MOB1", key_added="spatial_rigid", **{**_FAST, "mirror": True})
    after = get_transformation(sdata["MOB2_image"], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_array_equal(after, first)
    assert sdata.tables["MOB2"].uns[Key.UNS]["spatial_rigid"]["coordinate_system"] == "rigid"
    np.testing.assert_allclose(
        _positions(sdata, "MOB2_spots_rigid", "rigid"), _positions(sdata, "MOB2_spots", "rigid")
    )
    with pytest.warns(
        UserWarning, match="holds the placement of section 'MOB2' by the alignment 'spatial_aligned'"
    ):
        lk.tl.align(
            sdata,
            source="MOB2",
            target="MOB1",
            key_added="spatial_again",
            coordinate_system="aligned",
            **_FAST,
        )


@pytest.mark.parametrize("key_added", ["microns_per_unit", "image_key"])
def test_section_metadata_names_are_refused_as_key_added(key_added):
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    uns = dict(sdata.tables["MOB2"].uns[Key.UNS])
    with pytest.raises(ValueError, match="section metadata"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", key_added=key_added, **_FAST)
    with pytest.raises(ValueError, match="section metadata"):
        lk.tl.align_sections(sdata, target="MOB1", key_added=key_added, progress=False, **_FAST)
    assert sdata.tables["MOB2"].uns[Key.UNS] == uns
    assert not any(key_added in sdata.tables[s].obsm for s in ("MOB2", "MOB3"))


def test_frames_alone_give_the_scale_without_microns_per_unit():
    """spatialdata-io records no microns_per_unit: the spots' Scale alone must bring the source to size."""
    reference, sdata = lk.datasets.mob(("MOB1", "MOB2")), lk.datasets.mob(("MOB1", "MOB2"))
    _in_own_units(sdata, "MOB2", 2.0)
    for data in (reference, sdata):
        for table in data.tables.values():
            del table.uns[Key.UNS]["microns_per_unit"]
        lk.tl.align(data, source="MOB2", target="MOB1", **_FAST)
    np.testing.assert_allclose(
        _positions(sdata, "MOB2_spots"), _positions(reference, "MOB2_spots"), atol=1e-6
    )
    assert sdata.tables["MOB2"].uns[Key.UNS]["spatial_aligned"]["unit_scale"] == pytest.approx(
        0.5
    )  # the Scale


def test_a_target_stored_in_a_rotated_frame_is_registered_in_its_placement():
    """The target's spots in a frame rotated by 90 deg, an Affine back to 'global': with one start and no
    mirror (sections known to be mounted alike) the source still lands where the plain layout puts it."""
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Affine

    reference, sdata = lk.datasets.mob(("MOB1", "MOB2")), lk.datasets.mob(("MOB1", "MOB2"))
    spots = sdata.shapes["MOB1_spots"]
    xy = np.c_[spots.geometry.x, spots.geometry.y]
    centre, rotation = xy.mean(axis=0), np.array([[0.0, -1.0], [1.0, 0.0]])
    own = (xy - centre) @ rotation.T
    back = np.eye(3)
    back[:2, :2], back[:2, 2] = rotation.T, centre
    sdata.shapes["MOB1_spots"] = ShapesModel.parse(
        own,
        geometry=0,
        radius=spots["radius"].to_numpy(),
        index=spots.index,
        transformations={"global": Affine(back, input_axes=("x", "y"), output_axes=("x", "y"))},
    )
    sdata.tables["MOB1"].obsm["spatial"] = own
    for data in (reference, sdata):
        lk.tl.align(data, source="MOB2", target="MOB1", **_FAST)
    for name in ("MOB2_spots", "MOB2_spots_aligned", "MOB1_spots"):
        np.testing.assert_allclose(
            _positions(sdata, name), _positions(reference, name), atol=1e-6, err_msg=name
        )


def test_aligning_onto_a_placed_target_is_warned_about(caplog, recwarn):
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    caplog.clear()
    recwarn.clear()
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.align(sdata, source="MOB3", target="MOB2", target_spatial_key=Key.ALIGNED, **_FAST)
    assert not [m for m in _warnings(caplog, recwarn) if "was placed in coordinate system" in m]  # chained
    with pytest.warns(
        UserWarning, match="the target section 'MOB2' was placed in coordinate system 'aligned'"
    ) as record:
        lk.tl.align(sdata, source="MOB3", target="MOB2", **_FAST)
    assert any("target_spatial_key='spatial_aligned'" in str(w.message) for w in record)


def test_aligned_tiles_keep_their_area():
    """An image-only section of square tiles (polygons): its aligned circles have the tiles' area."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    tiles = lk.pp.tile_image(sdata, "MOB2_image", tile_um=100, key_added="MOB2_tiles")
    lk.tl.align(sdata, source="MOB2_tiles", target="MOB1", **_FAST)
    polygons = sdata.shapes[tiles.uns["spatialdata_attrs"]["region"]]
    side = np.sqrt(polygons.geometry.area.to_numpy())
    record = tiles.uns[Key.UNS][Key.ALIGNED]
    radius = sdata.shapes[record["shapes"]]["radius"].to_numpy()
    scale = np.sqrt(abs(np.linalg.det(record["matrix"][:2, :2])))  # the tiles' units into MOB1's
    np.testing.assert_allclose(np.pi * radius**2, (side * scale) ** 2, rtol=1e-6)


def test_transformations_and_microns_per_unit_that_disagree_are_warned_about(caplog):
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _in_own_units(sdata, "MOB2", 2.0)
    sdata.tables["MOB2"].uns[Key.UNS]["microns_per_unit"] *= 2  # stale: the units of before
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    assert "the spots' transformations scale the source by 0.5" in caplog.text
    record = sdata.tables["MOB2"].uns[Key.UNS][Key.ALIGNED]
    np.testing.assert_allclose(record["unit_scale"], np.sqrt(abs(np.linalg.det(record["matrix"][:2, :2]))))


def _warnings(caplog, recwarn) -> list[str]:
    """What loki warned of about placements: logged warnings and UserWarnings (see loki._logging for which
    is which), without the iteration-cap warnings of the coordinates-only _FAST fits."""
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    warned = [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]
    return [m for m in logged + warned if not m.startswith("CPD stopped at max_iter")]


def test_restacking_onto_another_target_is_said_once_without_align_options(caplog, recwarn):
    """A stack onto MOB1, then onto MOB2: the replaced placement of MOB2 is no per-call warning that
    suggests target_spatial_key= (which align_sections sets itself)."""
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    lk.tl.align_sections(sdata, target="MOB1", progress=False, **_FAST)
    caplog.clear()
    recwarn.clear()
    with caplog.at_level("INFO", logger="loki"):
        lk.tl.align_sections(sdata, target="MOB2", progress=False, **_FAST)
    assert _warnings(caplog, recwarn) == []  # the stack replaces its own key's placement, as asked
    assert "target_spatial_key" not in caplog.text
    assert caplog.text.count("of the target section 'MOB2'") == 1
    # an alignment under another key that placed the target in the same coordinate system: one warning
    lk.tl.align(
        sdata, source="MOB3", target="MOB1", key_added="spatial_other", coordinate_system="aligned", **_FAST
    )
    caplog.clear()
    recwarn.clear()
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.align_sections(sdata, target="MOB3", progress=False, **_FAST)
    assert _warnings(caplog, recwarn) == [
        "the target section 'MOB3' was placed in coordinate system 'aligned' by its alignment 'spatial_other'; "
        "the stack puts it back where it lies in the input coordinate system, so that alignment's shapes and "
        "its elements no longer agree there. Pass coordinate_system= to keep both."
    ]


@pytest.mark.parametrize("sequential", [False, True])
def test_restacking_onto_another_target_gives_a_fresh_stack(sequential):
    """The new target's aligned shapes of the first stack (when it was a source) are removed: its entry,
    elements and shapes agree, as in a stack onto it alone."""
    sections = ("MOB1", "MOB2", "MOB3")
    fresh, sdata = lk.datasets.mob(sections), lk.datasets.mob(sections)
    lk.tl.align_sections(fresh, target="MOB2", sequential=sequential, progress=False, **_FAST)
    lk.tl.align_sections(sdata, target="MOB1", sequential=sequential, progress=False, **_FAST)
    assert "MOB2_spots_aligned" in sdata.shapes
    lk.tl.align_sections(sdata, target="MOB2", sequential=sequential, progress=False, **_FAST)
    assert sorted(sdata.shapes) == sorted(fresh.shapes)
    assert "MOB2_spots_aligned" not in sdata.shapes
    for name in sdata.shapes:
        np.testing.assert_allclose(_positions(sdata, name), _positions(fresh, name), atol=1e-6, err_msg=name)
    for name in sdata.images:
        np.testing.assert_allclose(
            get_transformation(sdata[name], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y")),
            get_transformation(fresh[name], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y")),
            atol=1e-9,
            err_msg=name,
        )
    for section in sections:
        np.testing.assert_allclose(
            sdata[section].obsm[Key.ALIGNED], fresh[section].obsm[Key.ALIGNED], atol=1e-6
        )
        assert sorted(sdata[section].uns[Key.UNS][Key.ALIGNED]) == sorted(
            fresh[section].uns[Key.UNS][Key.ALIGNED]
        )


def test_restacking_a_stored_section_names_the_stale_shapes_left_on_disk(tmp_path, caplog):
    """The stale shapes are removed in memory only; a SpatialData read from zarr is told how to drop them."""
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    lk.tl.align_sections(sdata, target="MOB1", progress=False, **_FAST)
    sdata.write(tmp_path / "stack.zarr")
    stored = sd.read_zarr(tmp_path / "stack.zarr")
    caplog.clear()
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.align_sections(stored, target="MOB2", progress=False, **_FAST)
    assert "MOB2_spots_aligned" not in stored.shapes
    assert "shapes/MOB2_spots_aligned" in stored.elements_paths_on_disk()
    assert [r.getMessage() for r in caplog.records if "zarr store" in r.getMessage()] == [
        f"the shapes element 'MOB2_spots_aligned' was removed in memory but is still in the zarr store "
        f"{str(stored.path)!r}: remove it there with sdata.delete_element_from_disk('MOB2_spots_aligned') "
        "before writing the result back."
    ]


def _in_a_scaled_rotated_global(sections):
    """Every element of the sections with Scale 0.5 and a 30 deg rotation (plus a shift) into 'global'."""
    from spatialdata.transformations import set_transformation

    sdata = lk.datasets.mob(sections)
    theta = np.deg2rad(30)
    rotation = np.array(
        [[np.cos(theta), -np.sin(theta), 100.0], [np.sin(theta), np.cos(theta), -50.0], [0.0, 0.0, 1.0]]
    )
    for name in [*sdata.images, *sdata.shapes]:
        placed = Sequence(
            [
                get_transformation(sdata[name], Key.GLOBAL_CS),
                Scale([0.5, 0.5], axes=("x", "y")),
                Affine(rotation, input_axes=("x", "y"), output_axes=("x", "y")),
            ]
        )
        set_transformation(sdata[name], placed, Key.GLOBAL_CS)
    return sdata


def test_chaining_onto_a_stack_target_lands_where_aligning_onto_it_does(caplog, recwarn):
    """A stack target's recorded coordinates are its own: chained onto them (target_spatial_key=key_added),
    a section lands where aligning it onto the target directly puts it, also when the target's spots are
    scaled and rotated into 'global'."""
    sections = ("MOB1", "MOB2", "MOB3")
    direct, chained = _in_a_scaled_rotated_global(sections), _in_a_scaled_rotated_global(sections)
    lk.tl.align(direct, source="MOB3", target="MOB1", **_FAST)
    lk.tl.align_sections(chained, target="MOB1", sections=["MOB1", "MOB2"], progress=False, **_FAST)
    caplog.clear()
    recwarn.clear()
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.align(chained, source="MOB3", target="MOB1", target_spatial_key=Key.ALIGNED, **_FAST)
    assert _warnings(caplog, recwarn) == []  # no physical_units disagreement between the frames
    for name in ("MOB1_spots", "MOB3_spots", "MOB3_spots_aligned"):
        np.testing.assert_allclose(
            _positions(chained, name), _positions(direct, name), atol=1e-6, err_msg=name
        )


def test_chaining_onto_an_alignment_in_another_coordinate_system_is_refused():
    """The target's coordinates of an alignment placed in 'rigid' do not place it in 'aligned': the call
    is refused, naming the coordinate system to chain in, where the chain is consistent."""
    sdata, reference = lk.datasets.mob(("MOB1", "MOB2", "MOB3")), lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    _in_own_units(sdata, "MOB1", 2.0)  # MOB2's 'spatial_rigid' coordinates are in MOB1's units
    for data in (sdata, reference):
        lk.tl.align(data, source="MOB2", target="MOB1", key_added="spatial_rigid", **_FAST)
    with pytest.raises(ValueError, match="Pass coordinate_system='rigid' to chain onto it there"):
        lk.tl.align(sdata, source="MOB3", target="MOB2", target_spatial_key="spatial_rigid", **_FAST)
    assert _written(sdata, source="MOB3", targets=("MOB2_image", "MOB2_spots")) == (False, [], [])
    for data in (sdata, reference):
        lk.tl.align(
            data,
            source="MOB3",
            target="MOB2",
            target_spatial_key="spatial_rigid",
            coordinate_system="rigid",
            **_FAST,
        )
    for name in ("MOB1_spots", "MOB2_spots_rigid", "MOB3_spots", "MOB3_spots_aligned"):
        np.testing.assert_allclose(
            _positions(sdata, name, "rigid"), _positions(reference, name, "rigid"), atol=1e-6, err_msg=name
        )


def test_a_stack_keeps_its_targets_shapes_placed_in_another_coordinate_system():
    """The target's earlier alignment under key_added placed it in 'other': the stack (in 'aligned')
    leaves its elements there, so it keeps the shapes that agree with them."""
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    lk.tl.align(sdata, source="MOB1", target="MOB2", coordinate_system="other", **_FAST)
    lk.tl.align_sections(sdata, target="MOB1", sections=["MOB1", "MOB3"], progress=False, **_FAST)
    assert "MOB1_spots_aligned" in sdata.shapes
    np.testing.assert_allclose(
        _positions(sdata, "MOB1_spots_aligned", "other"), _positions(sdata, "MOB1_spots", "other"), atol=1e-6
    )


def test_an_image_of_another_section_warns():
    """target_image_key='MOB3_image' (not MOB1's) was moved into 'aligned' with MOB1 without a word."""
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    with pytest.warns(
        lk.LokiWarning,
        match=r"^target_image_key='MOB3_image' is the image of section 'MOB3', not of the target section 'MOB1'",
    ):
        lk.tl.align(sdata, source="MOB2", target="MOB1", target_image_key="MOB3_image", **_FAST)
    # a section's own image, also when tiles cut from it record it too
    lk.pp.tile_image(sdata, "MOB1_image", tile_um=200.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is the image of section", category=lk.LokiWarning)
        own = {"image_key": "MOB2_image", "target_image_key": "MOB1_image"}
        lk.tl.align(sdata, source="MOB2", target="MOB1", **own, **_FAST)
        lk.tl.align(
            sdata, source="MOB1", target="MOB2", image_key="MOB1_image", key_added="spatial_back", **_FAST
        )


def test_a_stack_target_records_the_coordinate_system_it_is_placed_in():
    """The target's entry had no coordinate_system: plots of its aligned coordinates looked in 'global'."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    lk.tl.align_sections(sdata, target="MOB1", coordinate_system="stack", progress=False, **_FAST)
    assert sdata.tables["MOB1"].uns["loki"]["spatial_aligned"]["coordinate_system"] == "stack"
    assert sdata.tables["MOB2"].uns["loki"]["spatial_aligned"]["coordinate_system"] == "stack"


def test_tiles_and_named_images_of_the_source_image_move_with_it():
    """Tiles cut from a section's image and its other images (``MOB2_lowres_image``) stayed behind in
    'global' when the section was aligned: they could not be drawn in 'aligned' with it."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    lk.pp.tile_image(sdata, "MOB2_image", tile_um=200.0)
    lk.pp.tile_image(sdata, "MOB1_image", tile_um=200.0)
    low = np.zeros((3, 20, 20), np.uint8)
    sdata.images["MOB2_lowres_image"] = Image2DModel.parse(
        low, dims=("c", "y", "x"), transformations={"global": Scale([10.0, 10.0], axes=("x", "y"))}
    )
    lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    spots = get_transformation(sdata["MOB2_spots"], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
    tiles = get_transformation(sdata["MOB2_image_tiles_shapes"], Key.ALIGNED_CS)
    np.testing.assert_allclose(tiles.to_affine_matrix(("x", "y"), ("x", "y")), spots)
    lowres = get_transformation(sdata["MOB2_lowres_image"], Key.ALIGNED_CS)
    assert isinstance(lowres, Sequence)
    np.testing.assert_allclose(
        lowres.to_affine_matrix(("x", "y"), ("x", "y")), spots @ np.diag([10.0, 10.0, 1.0])
    )
    # the target's tiles stay with the target, and the source's table is the only one aligned
    target_tiles = get_transformation(sdata["MOB1_image_tiles_shapes"], get_all=True)
    assert list(target_tiles) == ["global", Key.ALIGNED_CS]
    assert Key.ALIGNED not in sdata.tables["MOB2_image_tiles"].obsm
    # aligning the tiles moves their image and the spots laid over it
    again = lk.datasets.mob(("MOB1", "MOB2"))
    lk.pp.tile_image(again, "MOB2_image", tile_um=200.0)
    lk.tl.align(again, source="MOB2_image_tiles", target="MOB1", **_FAST)
    for name in ("MOB2_image", "MOB2_spots", "MOB2_image_tiles_shapes"):
        assert Key.ALIGNED_CS in get_transformation(again[name], get_all=True)


def test_a_section_recording_the_others_image_is_not_placed_with_it():
    """MOB2 records MOB1's image (one slide), each section's image named: the target claimed MOB2's
    spots and image as tables laid over its image, and the call was refused as sharing them."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    sdata.tables["MOB2"].uns[Key.UNS]["image_key"] = "MOB1_image"
    lk.tl.align(
        sdata, source="MOB2", target="MOB1", image_key="MOB2_image", target_image_key="MOB1_image", **_FAST
    )
    source = get_transformation(sdata["MOB2_spots"], Key.ALIGNED_CS)
    target = get_transformation(sdata["MOB1_spots"], Key.ALIGNED_CS)
    assert not np.allclose(source.to_affine_matrix(("x", "y"), ("x", "y")), np.eye(3))
    np.testing.assert_allclose(target.to_affine_matrix(("x", "y"), ("x", "y")), np.eye(3))
    image = get_transformation(sdata["MOB2_image"], Key.ALIGNED_CS).to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(image, source.to_affine_matrix(("x", "y"), ("x", "y")))
