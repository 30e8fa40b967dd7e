"""The parameter names the lk.pl functions share: new names draw the figure, the old ones are refused."""

from __future__ import annotations

import inspect

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from tests.pl.test_annotation import small_section
from tests.pl.test_contract import _HITS, _IMGS, PLOTS, _section

import loki as lk

MOVED = np.array([10.0, -5.0])


def _scored_section(key="spatial"):
    """small_section with annotation scores and a prediction; its spots at ``spatial + MOVED`` in ``key``."""
    sdata = small_section()
    table = sdata.tables["S"]
    rng = np.random.default_rng(3)
    table.obsm["loki_annotation"] = pd.DataFrame(
        rng.random((table.n_obs, 2)), columns=["a", "b"], index=table.obs_names
    )
    table.layers["loki_predicted"] = table.X + rng.random(table.X.shape).astype(np.float32)
    table.obsm[key] = table.obsm["spatial"] + MOVED
    return sdata


def _drawn(fig):
    """What a figure shows, panel by panel: title, images, and each collection's offsets, sizes, values."""
    panels = []
    for a in fig.axes:
        points = [
            (c.get_offsets().tolist(), c.get_sizes().tolist(), np.asarray(c.get_array()).tolist())
            for c in a.collections
            if isinstance(c, PathCollection)
        ]
        images = [np.asarray(i.get_array()).tolist() for i in a.images]
        panels.append((a.get_title(), len(a.collections), images, points))
    return panels, fig.get_size_inches().tolist()


def _same_figure(new, reference):
    got, want = _drawn(new), _drawn(reference)
    assert got == want
    assert any(points or images for _, _, images, points in got[0])  # something was drawn
    plt.close("all")


@pytest.mark.parametrize(
    ("plot", "old"),
    [
        (lambda data, **kw: lk.pl.annotation(data, table_key="S", show=False, **kw), "basis"),
        (lambda data, **kw: lk.pl.expression(data, ["g0", "g2"], table_key="S", show=False, **kw), "basis"),
    ],
    ids=["annotation", "expression"],
)
def test_spatial_key_names_the_spot_coordinates(plot, old):
    new = plot(_scored_section("moved"), spatial_key="moved")
    _same_figure(new, plot(_scored_section()))  # the same spots under the default key
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{old}'"):
        plot(_scored_section("moved"), **{old: "moved"})


def test_proportions_show_image():
    section = _section()
    rgb = np.full((100, 100, 3), 120, np.uint8)
    (panel,) = (a for a in lk.pl.proportions(section, show_image=rgb, show=False).axes if a.get_title())
    (image,) = panel.images
    np.testing.assert_array_equal(image.get_array(), rgb)
    (points,) = panel.collections
    np.testing.assert_allclose(points.get_offsets(), section.obsm["spatial"])
    plain = lk.pl.proportions(section, show_image=False, show=False)
    assert [len(a.images) for a in plain.axes if a.get_title()] == [0]
    _same_figure(plain, lk.pl.proportions(section, show=False))  # an AnnData has no image of its own
    with pytest.raises(TypeError, match="unexpected keyword argument 'image'"):
        lk.pl.proportions(section, image=rgb, show=False)


def test_alignment_spot_size_is_the_marker_size():
    sections = [_section(), _section(seed=1)]
    _same_figure(lk.pl.alignment(sections, spot_size=8.0, show=False), lk.pl.alignment(sections, show=False))
    fig = lk.pl.alignment(sections, spot_size=20.0, show=False)
    assert {s for a in fig.axes for c in a.collections for s in c.get_sizes()} == {20.0}
    plt.close(fig)
    for old in ("point_size", "size"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{old}'"):
            lk.pl.alignment(sections, **{old: 20.0}, show=False)


def test_retrieval_gallery_panel_size_is_inches_per_panel():
    def gallery(**kw):
        return lk.pl.retrieval_gallery(_HITS, _IMGS, _IMGS, n_hits=2, show=False, **kw)

    _same_figure(gallery(panel_size=1.8), gallery())
    assert gallery(panel_size=1.0).get_size_inches().tolist() == [3.0, 1.0]  # 1 query, 2 hits
    plt.close("all")
    with pytest.raises(TypeError, match="unexpected keyword argument 'size'"):
        gallery(size=1.0)


def test_no_plot_keeps_an_old_name():
    for func in (
        lk.pl.annotation,
        lk.pl.expression,
        lk.pl.proportions,
        lk.pl.alignment,
        lk.pl.retrieval_gallery,
    ):
        names = set(inspect.signature(func).parameters)
        assert not names & {"basis", "image", "point_size"}, func.__name__
    assert "size" not in inspect.signature(lk.pl.retrieval_gallery).parameters
    assert "size" not in inspect.signature(lk.pl.alignment).parameters
    assert "spatial_key" in inspect.signature(lk.pl.annotation).parameters


@pytest.mark.parametrize("name", PLOTS)
def test_ax_annotation_says_whether_one_axes_is_taken(name):
    """``Axes | Sequence[Axes]`` where a single Axes can be drawn into, ``Sequence[Axes]`` where it never can."""
    plot, n_axes = PLOTS[name]
    takes_one = n_axes == 1  # alignment and retrieval_gallery draw two panels or more
    if name == "expression":  # two panels per gene, but one when a single gene is drawn on one side only
        plot, takes_one = (lambda **kw: lk.pl.expression(_section(), "g0", layer_predicted=None, **kw)), True
    _, ax = plt.subplots()
    if takes_one:
        plot(ax=ax, show=False)
    else:
        with pytest.raises(ValueError, match="ax holds 1 axes"):
            plot(ax=ax, show=False)
    plt.close("all")
    annotation = inspect.signature(getattr(lk.pl, name)).parameters["ax"].annotation
    assert annotation == ("Axes | Sequence[Axes] | None" if takes_one else "Sequence[Axes] | None")


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_retrieval_gallery_needs_a_query_and_a_hit(n):
    with pytest.raises(ValueError, match=f"n_hits must be a positive integer, got {n}"):
        lk.pl.retrieval_gallery(_HITS, _IMGS, _IMGS, n_hits=n, show=False)
    with pytest.raises(ValueError, match=f"n_queries must be a positive integer, got {n}"):
        lk.pl.retrieval_gallery(_HITS, _IMGS, _IMGS, n_queries=n, show=False)
    assert plt.get_fignums() == []
