from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from tests.pl.test_annotation import small_section

import loki as lk


def test_measured_vs_predicted_layer_panels():
    sdata = small_section()
    table = sdata.tables["S"]
    rng = np.random.default_rng(2)
    pred = table.X + rng.normal(0, 0.5, table.X.shape).astype(np.float32)
    table.layers["loki_predicted"] = pred
    fig = lk.pl.expression(sdata, ["g1", "g3"], show_image=True, show=False)
    titled = [a for a in fig.axes if a.get_title()]
    assert [a.get_title().split(" (")[0] for a in titled] == [
        "g1 measured",
        "g1 predicted",
        "g3 measured",
        "g3 predicted",
    ]
    r = lk.metrics.pearson(table.X[:, 1], pred[:, 1])
    assert titled[1].get_title().endswith(f"(PCC {r:.2f})")
    np.testing.assert_allclose(titled[0].collections[0].get_array(), table.X[:, 1])
    np.testing.assert_allclose(titled[1].collections[0].get_array(), pred[:, 1], rtol=1e-6)
    # one shared colour scale per gene
    assert titled[0].collections[0].get_clim() == titled[1].collections[0].get_clim()
    assert len(titled[0].images) == 1
    plt.close(fig)


def test_prediction_as_separate_anndata():
    table = small_section(with_image=False)
    table.obsm["loki_text"] = np.random.default_rng(0).normal(size=(table.n_obs, 4)).astype(np.float32)
    table.obsm["loki_image"] = np.random.default_rng(1).normal(size=(table.n_obs, 4)).astype(np.float32)
    pred = lk.tl.predict_expression(table, table, top_k=3)
    fig = lk.pl.expression(table, "g0", predicted=pred, show=False)
    titled = [a for a in fig.axes if a.get_title()]
    assert len(titled) == 2
    measured, predicted = table[:, "g0"].X.ravel(), pred[:, "g0"].X.ravel()
    assert not np.allclose(measured, predicted)  # so the panels below tell the two apart
    np.testing.assert_allclose(titled[0].collections[0].get_array(), measured)
    np.testing.assert_allclose(titled[1].collections[0].get_array(), predicted, rtol=1e-6)
    assert titled[1].get_title() == f"g0 predicted (PCC {lk.metrics.pearson(measured, predicted):.2f})"
    plt.close(fig)
    with pytest.raises(KeyError, match=r"adata\.layers"):
        lk.pl.expression(table, "g0", show=False)
    with pytest.raises(KeyError, match="var_names"):
        lk.pl.expression(table, "nope", predicted=pred, show=False)
    with pytest.raises(ValueError, match="same spots"):
        lk.pl.expression(table[:5].copy(), "g0", predicted=pred, show=False)


def test_one_spot_section_has_no_correlation_to_show():
    table = small_section(with_image=False)[:1].copy()
    table.layers["loki_predicted"] = table.X.copy()
    fig = lk.pl.expression(table, "g0", show=False)
    assert [a.get_title() for a in fig.axes if a.get_title()][1] == "g0 predicted (PCC n/a, one spot)"
    plt.close(fig)


def test_a_constant_side_has_no_correlation_to_show():
    # a constant prediction (e.g. a gene the reference never expressed) was titled "PCC nan"
    table = small_section(with_image=False)
    table.layers["loki_predicted"] = np.zeros(table.shape, np.float32)
    fig = lk.pl.expression(table, "g0", show=False)
    assert [a.get_title() for a in fig.axes if a.get_title()][1] == "g0 predicted (PCC n/a, constant)"
    plt.close(fig)


def test_a_gene_named_twice_is_refused_before_drawing():
    # var_names with a repeated gene drew nothing: matplotlib's "'c' argument has 60 elements"
    table = small_section(with_image=False)
    table.var_names = ["g0", "g0", "g2", "g3", "g4"]
    plt.close("all")
    with pytest.raises(
        ValueError, match=r"adata\.var_names holds 'g0' more than once .* \.var_names_make_unique\(\)"
    ):
        lk.pl.expression(table, ["g2", "g0"], layer_predicted=None, show=False)
    predicted = table.copy()
    table.var_names = ["g0", "g1", "g2", "g3", "g4"]
    with pytest.raises(ValueError, match=r"predicted\.var_names holds 'g0' more than once"):
        lk.pl.expression(table, "g0", predicted=predicted, show=False)
    assert plt.get_fignums() == []
    assert (
        lk.pl.expression(table, "g2", predicted=predicted, show=False) is not None
    )  # its other genes are drawn
    plt.close("all")


def test_a_scale_per_panel_and_percentile_limits():
    table = small_section(with_image=False)
    rng = np.random.default_rng(3)
    table.X[:, 0] = rng.uniform(0, 100, table.n_obs)
    table.layers["loki_predicted"] = table.X * np.float32(0.1)  # a narrower prediction
    measured, pred = table.X[:, 0], table.layers["loki_predicted"][:, 0]
    fig = lk.pl.expression(table, "g0", scale="panel", show=False)
    panels = [a for a in fig.axes if a.get_title()]
    assert panels[0].collections[0].get_clim() == pytest.approx((measured.min(), measured.max()))
    assert panels[1].collections[0].get_clim() == pytest.approx((pred.min(), pred.max()))
    assert len(fig.axes) == 4  # two panels, a colour bar each
    plt.close(fig)
    fig = lk.pl.expression(table, "g0", vmin=0, vmax="p90", show=False)
    both = np.concatenate([measured, pred])
    for a in (a for a in fig.axes if a.get_title()):
        assert a.collections[0].get_clim() == pytest.approx((0.0, np.percentile(both, 90)))
    plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vmax": "99"}, "vmax must be a number, a percentile"),
        ({"vmin": "p101"}, "vmin must be a number, a percentile"),
        ({"vmin": 5, "vmax": 1}, "vmin must be below vmax"),
        ({"vmin": "p90", "vmax": "p10"}, "vmin must be below vmax"),
        ({"scale": "shared"}, "scale must be 'gene' or 'panel'"),
    ],
)
def test_bad_colour_limits_are_refused_before_drawing(kwargs, match):
    table = small_section(with_image=False)
    table.layers["loki_predicted"] = table.X.copy()
    plt.close("all")
    with pytest.raises(ValueError, match=match):
        lk.pl.expression(table, "g0", show=False, **kwargs)
    assert not plt.get_fignums()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vmin": 1e6}, r"colour scale of g0 would run from 1e\+06 \(vmin=1000000.0\) down to"),
        (
            {"vmin": 1, "vmax": "p10"},
            r"colour scale of g0 would run from 1 .* \(vmax='p10'\); its values are 0.5 to 2",
        ),
        ({"vmax": -1, "scale": "panel"}, r"colour scale of g0 measured would run from .* down to -1"),
    ],
)
def test_limits_that_cross_the_values_are_refused_before_drawing(kwargs, match):
    # a number beyond the values (or a percentile below a number) met matplotlib's "minvalue must be
    # less than or equal to maxvalue" half-way through drawing, leaving a figure open
    table = small_section(with_image=False)
    table.X[:, 0] = np.linspace(0.5, 2, table.n_obs)
    table.layers["loki_predicted"] = table.X.copy()
    plt.close("all")
    with pytest.raises(ValueError, match=match):
        lk.pl.expression(table, "g0", show=False, **kwargs)
    assert not plt.get_fignums()


def test_a_missing_value_keeps_the_colour_scale_and_the_correlation():
    table = small_section(n=50, with_image=False)
    rng = np.random.default_rng(0)
    table.X = rng.random((50, 5)).astype(np.float32) * 5
    table.layers["loki_predicted"] = table.X + rng.normal(0, 0.5, table.X.shape).astype(np.float32)
    finite = (table.X[1:, 0], table.layers["loki_predicted"][1:, 0])
    expected_clim = (min(v.min() for v in finite), max(v.max() for v in finite))
    expected_pcc = f"(PCC {lk.metrics.pearson(*finite):.2f})"
    for where in ("measured", "predicted"):
        bad = table.copy()
        (bad.X if where == "measured" else bad.layers["loki_predicted"])[0, 0] = np.nan
        fig = lk.pl.expression(bad, "g0", show=False)
        measured, predicted = fig.axes[:2]
        for panel in (measured, predicted):
            np.testing.assert_allclose(panel.collections[0].get_clim(), expected_clim, rtol=1e-6)
        assert predicted.get_title().endswith(expected_pcc)
        fig.canvas.draw()
        drawn = (measured if where == "measured" else predicted).collections[0].get_facecolors()
        assert len(drawn) == 50  # the spot with no value is drawn, in light grey
        np.testing.assert_allclose(drawn[0], (*plt.matplotlib.colors.to_rgb("lightgray"), 1.0))
        plt.close(fig)


def test_image_and_coordinate_system_of_a_section():
    sdata = small_section(coordinate_system="sample1")
    table = sdata.tables["S"]
    table.layers["loki_predicted"] = table.X.copy()
    for name in ("sample1", None):  # named, or the only one the spots and the image share
        fig = lk.pl.expression(sdata, "g0", show_image=True, coordinate_system=name, show=False)
        assert len(fig.axes[0].images) == 1
        np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), table.obsm["spatial"])
        plt.close(fig)
    del sdata.images["S_image"]
    with pytest.warns(UserWarning, match="has no image of its own"):
        fig = lk.pl.expression(sdata, "g0", show_image=True, coordinate_system="sample1", show=False)
    assert len(fig.axes[0].images) == 0
    # without an image the spots are still drawn in the coordinate system: one they lack is named
    with pytest.raises(KeyError, match=r"'global' not found .* spot shapes 'S_spots'; available: 'sample1'"):
        lk.pl.expression(sdata, "g0", coordinate_system="global", show=False)
    plt.close(fig)
    fig = lk.pl.expression(sdata, "g0", show=False)  # by default in the spots' only one
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), table.obsm["spatial"])
    plt.close(fig)


def test_the_image_is_drawn_by_default_as_in_the_other_spatial_plots():
    sdata = small_section()
    table = sdata.tables["S"]
    table.layers["loki_predicted"] = table.X.copy()
    fig = lk.pl.expression(sdata, "g0", show=False)
    assert [len(a.images) for a in fig.axes[:2]] == [1, 1]
    fig = lk.pl.expression(sdata, "g0", show_image=False, show=False)
    assert [len(a.images) for a in fig.axes[:2]] == [0, 0]
    plt.close("all")


@pytest.mark.parametrize(("stretch", "aspect"), [(1.0, None), (2.0, None), (10.0, 2.0)])
def test_new_panels_take_the_shape_of_the_section(stretch, aspect):
    table = small_section(with_image=False)
    xy = np.asarray(table.obsm["spatial"], dtype=np.float64)
    xy[:, 0] = xy[:, 0].min() + (xy[:, 0] - xy[:, 0].min()) * stretch
    table.obsm["spatial"] = xy
    table.layers["loki_predicted"] = table.X.copy()
    width, height = np.ptp(xy, axis=0)
    expected = aspect if aspect is not None else width / height  # a very wide section is capped at 2
    fig = lk.pl.expression(table, ["g1"], show=False)
    fig_width, fig_height = fig.get_size_inches()
    assert fig_width / fig_height == pytest.approx(2 * expected)  # two panels side by side
    plt.close(fig)


def test_missing_prediction_names_the_table_and_lk_tl_predict_expression():
    with pytest.raises(
        KeyError,
        match=r"'loki_predicted' not found in sdata\.tables\['S'\]\.layers; available: none\. "
        r"Run lk\.tl\.predict_expression\(\.\.\., output='layer'\) on this table first",
    ):
        lk.pl.expression(small_section(), "g0", table_key="S", show=False)
    with pytest.raises(KeyError, match=r"'G0' not found in sdata\.tables\['S'\]\.var_names"):
        lk.pl.expression(small_section(), "G0", show=False)


def test_measured_expression_alone_without_a_prediction():
    """layer_predicted=None draws each gene's measurement on its own scale, four panels a row."""
    table = small_section(n=40, with_image=False)
    genes = ["g0", "g1", "g2", "g3", "g4"]
    with pytest.raises(KeyError, match="layer_predicted=None"):
        lk.pl.expression(table, genes, show=False)
    fig = lk.pl.expression(table, genes, layer_predicted=None, show=False)
    titled = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in titled] == [f"{g} measured" for g in genes]
    for a, gene in zip(titled, genes, strict=True):
        values = table[:, gene].X.ravel()
        np.testing.assert_allclose(a.collections[0].get_array(), values)
        assert a.collections[0].get_clim() == (values.min(), values.max())
    rows = {round(a.get_position().y0, 3) for a in titled}
    assert len(rows) == 2  # five panels: four in the first row, one in the second
    plt.close(fig)
    _, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="ax holds 2 axes, but 1 panels"):
        lk.pl.expression(table, "g0", layer_predicted=None, ax=axes, show=False)
    plt.close("all")


def test_the_prediction_of_tiles_without_genes_is_drawn_over_their_image():
    """A tile table has no genes: its prediction could not be drawn (the genes were looked up in it)."""
    import anndata as ad

    sdata = lk.datasets.mob("MOB2")
    tiles = lk.pp.tile_image(sdata, "MOB2_image", tile_um=200.0)
    assert tiles.n_vars == 0
    rng = np.random.default_rng(0)
    pred = ad.AnnData(rng.random((tiles.n_obs, 2)).astype(np.float32), obs=tiles.obs[[]].copy())
    pred.var_names = ["Penk", "Doc2g"]
    with pytest.raises(ValueError, match=r"has no genes .*pass predicted="):
        lk.pl.expression(sdata, "Penk", table_key="MOB2_image_tiles", show=False)
    fig = lk.pl.expression(sdata, ["Penk", "Doc2g"], table_key="MOB2_image_tiles", predicted=pred, show=False)
    titled = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in titled] == ["Penk predicted", "Doc2g predicted"]
    for a, gene in zip(titled, ["Penk", "Doc2g"], strict=True):
        np.testing.assert_allclose(a.collections[0].get_array(), pred[:, gene].X.ravel())
        assert len(a.images) == 1  # the H&E underneath
    plt.close(fig)


def test_a_prediction_with_the_spots_in_another_order_is_matched_by_name():
    """A prediction sorted (or concatenated) into another spot order was refused ("same spots, in the
    same order"), though its obs_names say which spot is which; other spots are counted."""
    table = small_section(with_image=False)
    table.obsm["loki_text"] = np.random.default_rng(0).normal(size=(table.n_obs, 4)).astype(np.float32)
    table.obsm["loki_image"] = np.random.default_rng(1).normal(size=(table.n_obs, 4)).astype(np.float32)
    pred = lk.tl.predict_expression(table, table, top_k=3)
    order = np.random.default_rng(2).permutation(table.n_obs)
    fig = lk.pl.expression(table, "g0", predicted=pred[order].copy(), show=False)
    titled = [a for a in fig.axes if a.get_title()]
    np.testing.assert_allclose(titled[1].collections[0].get_array(), pred[:, "g0"].X.ravel(), rtol=1e-6)
    assert (
        titled[1].get_title() == lk.pl.expression(table, "g0", predicted=pred, show=False).axes[1].get_title()
    )
    plt.close("all")
    with pytest.raises(
        ValueError, match=rf"{table.n_obs - 5} of the section's {table.n_obs} spots are not in predicted"
    ):
        lk.pl.expression(table, "g0", predicted=pred[:5].copy(), show=False)
