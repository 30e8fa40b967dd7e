from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage

import loki as lk


@pytest.fixture
def spots():
    rng = np.random.default_rng(0)
    n = 50
    adata = ad.AnnData(np.zeros((n, 3), np.float32))
    adata.obs_names = [f"s{i}" for i in range(n)]
    adata.obsm["spatial"] = rng.uniform(0, 200, size=(n, 2))
    props = rng.dirichlet(np.ones(3), size=n)
    adata.obsm["loki_proportions"] = pd.DataFrame(
        props, index=adata.obs_names, columns=["Tumour", "Immune", "Stroma"]
    )
    yield adata
    plt.close("all")


def _panels(fig):
    return [a for a in fig.axes if a.get_title()]


def test_one_panel_per_type_with_the_spot_values(spots, tmp_path):
    fig = lk.pl.proportions(spots, show_image=False, ncols=2, save=tmp_path / "p.png")
    panels = _panels(fig)
    assert [a.get_title() for a in panels] == ["Tumour", "Immune", "Stroma"]
    for panel in panels:
        (points,) = panel.collections
        np.testing.assert_allclose(points.get_offsets(), spots.obsm["spatial"])
        np.testing.assert_allclose(points.get_array(), spots.obsm["loki_proportions"][panel.get_title()])
        assert panel.yaxis_inverted()
    assert (tmp_path / "p.png").stat().st_size > 0


def test_subset_into_given_axes_over_an_image(spots):
    _, ax = plt.subplots()
    rgb = np.full((200, 200, 3), 200, np.uint8)
    fig = lk.pl.proportions(spots, cell_types=["Immune"], show_image=rgb, ax=ax)
    assert fig is ax.figure
    assert ax.get_title() == "Immune"
    (img,) = (a for a in ax.get_children() if isinstance(a, AxesImage))
    assert img.get_array().shape == (200, 200, 3)


def test_spatialdata_section_draws_its_image_in_spot_units(spots):
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    spots.obs["region"] = pd.Categorical(["sec_spots"] * spots.n_obs)
    spots.obs["spot_id"] = np.arange(spots.n_obs)
    image = Image2DModel.parse(
        np.full((3, 50, 50), 128, np.uint8),
        dims=("c", "y", "x"),
        transformations={"global": Scale([4.0, 4.0], axes=("x", "y"))},
    )
    shapes = ShapesModel.parse(spots.obsm["spatial"], geometry=0, radius=np.full(spots.n_obs, 2.0))
    table = TableModel.parse(spots, region="sec_spots", region_key="region", instance_key="spot_id")
    sdata = SpatialData(images={"sec_image": image}, shapes={"sec_spots": shapes}, tables={"sec": table})
    fig = lk.pl.proportions(sdata, cell_types=["Tumour"])
    (panel,) = _panels(fig)
    (img,) = (a for a in panel.get_children() if isinstance(a, AxesImage))
    # The 50 px image is scaled by 4 into spot units; SpatialData's pixel (i, j) spans [j, j + 1] x
    # [i, i + 1], so the image's far corner (50, 50) lands at 200 and pixel (0, 0) is centred at 2.
    for pixel, spot_units in (((50.0, 50.0), 200.0), ((0.5, 0.5), 2.0)):
        drawn = img.get_transform().transform([pixel])[0]
        np.testing.assert_allclose(drawn, panel.transData.transform([(spot_units, spot_units)])[0], atol=1e-6)
    np.testing.assert_allclose(img.get_extent(), (0, 50, 50, 0))


def test_bad_input(spots):
    with pytest.raises(KeyError, match=r"'nope' not found in adata\.obsm"):
        lk.pl.proportions(spots, key="nope")
    with pytest.raises(KeyError, match="'B cells' not found"):
        lk.pl.proportions(spots, cell_types=["B cells"])
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="ax holds 1 axes, but 3 panels are drawn"):
        lk.pl.proportions(spots, ax=ax)
    spots.obsm["raw"] = np.ones((spots.n_obs, 3))
    with pytest.raises(ValueError, match="must be a DataFrame"):
        lk.pl.proportions(spots, key="raw")


def _with_proportions(sdata, table_key="S"):
    table = sdata.tables[table_key]
    table.obsm["loki_proportions"] = pd.DataFrame(
        {"T": np.linspace(0, 1, table.n_obs)}, index=table.obs_names
    )
    return table


def test_view_frames_the_spots_of_a_translated_image():
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale, Sequence, Translation, set_transformation
    from tests.pl.test_annotation import small_section

    sdata = small_section()
    # the section placed far from the origin of "global", e.g. beside other sections
    shift = np.array([5000.0, 8000.0])
    to_global = Sequence([Scale([2.0, 2.0], ("x", "y")), Translation(shift, ("x", "y"))])
    set_transformation(sdata.images["S_image"], to_global, "global")
    table = _with_proportions(sdata)
    table.obsm["spatial"] = xy = table.obsm["spatial"] + shift
    sdata.shapes["S_spots"] = ShapesModel.parse(
        xy, geometry=0, radius=np.full(len(xy), 5.0), index=table.obs_names
    )
    fig = lk.pl.proportions(sdata)
    (panel,) = _panels(fig)
    view = np.array([panel.get_xlim(), panel.get_ylim()[::-1]])  # per axis (low, high); y downwards
    assert (view[:, 0] <= xy.min(axis=0)).all()
    assert (xy.max(axis=0) <= view[:, 1]).all()
    assert (np.diff(view, axis=1).ravel() < 1.2 * np.ptp(xy, axis=0)).all()  # not out to the origin
    # the image is still drawn in spot units: pixel (0.5, 0.5) is centred on (5001, 8001)
    (img,) = panel.images
    drawn = img.get_transform().transform([(0.5, 0.5)])[0]
    np.testing.assert_allclose(drawn, panel.transData.transform([shift + 1.0])[0], atol=1e-6)


def test_image_less_table_beside_other_sections_and_other_coordinate_systems(recwarn):
    from spatialdata.models import ShapesModel, TableModel
    from tests.pl.test_annotation import small_section

    sdata = small_section()
    # a second section without an image of its own; S_image belongs to table S
    xy = np.random.default_rng(3).uniform(0, 100, (10, 2))
    ids = [f"x{i}" for i in range(10)]
    sdata.shapes["X_spots"] = ShapesModel.parse(xy, geometry=0, radius=np.full(10, 2.0), index=pd.Index(ids))
    other = ad.AnnData(np.ones((10, 2), np.float32), obs=pd.DataFrame(index=ids))
    other.obs["region"] = pd.Categorical(["X_spots"] * 10)
    other.obs["spot_id"] = ids
    other.obsm["spatial"] = xy
    sdata.tables["X"] = TableModel.parse(other, region="X_spots", region_key="region", instance_key="spot_id")
    _with_proportions(sdata, "X")
    (panel,) = _panels(lk.pl.proportions(sdata, table_key="X"))
    assert len(panel.images) == 0
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    with pytest.warns(UserWarning, match="table 'X' has no image of its own"):
        lk.pl.proportions(sdata, table_key="X", show_image=True)

    moved = small_section(coordinate_system="sample1")
    _with_proportions(moved)
    with pytest.raises(KeyError, match=r"available: 'sample1'\. Pass coordinate_system="):
        lk.pl.proportions(moved, coordinate_system="global")
    for name in ("sample1", None):  # named, or the only one the spots and the image share
        (panel,) = _panels(lk.pl.proportions(moved, coordinate_system=name))
        assert len(panel.images) == 1


def test_grey_image_is_drawn_in_grey(spots):
    grey = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (200, 1))
    (panel,) = _panels(lk.pl.proportions(spots, cell_types=["Immune"], show_image=grey))
    assert panel.images[0].get_cmap().name == "gray"


def test_one_given_axes_per_type(spots):
    fig, axes = plt.subplots(2, 2)
    with pytest.raises(ValueError, match="ax holds 4 axes, but 3 panels are drawn"):
        lk.pl.proportions(spots, ax=axes)
    assert lk.pl.proportions(spots, ax=axes.ravel()[:3]) is fig
    assert [a.get_title() for a in axes.ravel()] == ["Tumour", "Immune", "Stroma", ""]
    for a in axes.ravel()[:3]:
        np.testing.assert_allclose(
            a.collections[0].get_array(), spots.obsm["loki_proportions"][a.get_title()]
        )


def test_missing_proportions_name_the_table_and_lk_tl_decompose():
    from tests.pl.test_annotation import small_section

    with pytest.raises(
        KeyError,
        match=r"'loki_proportions' not found in sdata\.tables\['S'\]\.obsm; available: 'spatial'\. "
        r"Run lk\.tl\.decompose on this table first",
    ):
        lk.pl.proportions(small_section(), table_key="S", show=False)


def test_colour_scale_starts_at_zero_for_a_type_absent_everywhere(spots):
    spots.obsm["loki_proportions"]["Absent"] = 0.0
    panels = {a.get_title(): a for a in _panels(lk.pl.proportions(spots, show=False))}
    (points,) = panels["Absent"].collections
    assert points.get_clim() == (0.0, 1.0)
    panels["Absent"].figure.canvas.draw()
    lowest = plt.get_cmap("viridis")(0.0)
    np.testing.assert_allclose(points.get_facecolors()[:, :3], np.tile(lowest[:3], (spots.n_obs, 1)))
    # a panel with values keeps its own maximum; a vmax that would not start the scale at 0 is refused
    expected = (0.0, spots.obsm["loki_proportions"]["Tumour"].max())
    np.testing.assert_allclose(panels["Tumour"].collections[0].get_clim(), expected)
    for vmax in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="vmax must be a finite number > 0"):
            lk.pl.proportions(spots, vmax=vmax, show=False)
    assert plt.get_fignums() == [panels["Absent"].figure.number]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("plot", ["proportions", "annotation"])
def test_long_names_are_wrapped_to_the_panel_not_run_into_the_next_one(spots, plot):
    # one line each, "Olfactory ensheathing glia (OEC)" ran over the next panel's title and colour bar
    names = ["Olfactory ensheathing glia (OEC)", "Granule cells of the olfactory bulb", "Mitral cells"]
    frame = pd.DataFrame(spots.obsm["loki_proportions"].to_numpy(), index=spots.obs_names, columns=names)
    if plot == "proportions":
        spots.obsm["loki_proportions"] = frame
        fig = lk.pl.proportions(spots, show=False)
    else:
        spots.obsm["loki_annotation"] = frame
        fig = lk.pl.annotation(spots, show=False)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = _panels(fig)
    titles = [a.title.get_window_extent(renderer) for a in panels]
    others = [a.get_window_extent(renderer) for a in fig.axes]  # panels and colour bars
    for panel, title in zip(panels, titles, strict=True):
        assert title.width <= panel.get_window_extent(renderer).width  # within its own panel
        assert not any(_overlap(title, o) for o in others)
        assert panel.get_title().replace("\n", " ") in names  # wrapped at spaces, nothing lost
    assert [a.get_title() for a in panels][2] == "Mitral cells"  # a title that fits is left as it is
    assert not any(_overlap(a, b) for i, a in enumerate(titles) for b in titles[i + 1 :])


def test_a_word_wider_than_its_panel_is_not_cut(spots):
    # textwrap cut a long word to fit ("Oligodendroc" / "yte" over two lines)
    names = [
        "Oligodendrocyteprogenitorcells of the bulb",
        "Neurogenesis-associated-astrocytes",
        "Mitral cells",
    ]
    frame = pd.DataFrame(spots.obsm["loki_proportions"].to_numpy(), index=spots.obs_names, columns=names)
    spots.obsm["loki_proportions"] = frame
    fig = lk.pl.proportions(spots, show=False)
    for panel, name in zip(_panels(fig), names, strict=True):
        assert panel.get_title().split() == name.split()  # lines break between words only
