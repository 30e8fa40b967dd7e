"""The contract every lk.pl function keeps: ax=, show= and save= (see the lk.pl module docstring)."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")
import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

import loki as lk


def _section(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a = ad.AnnData(rng.poisson(3, (n, 3)).astype(np.float32), var=pd.DataFrame(index=["g0", "g1", "g2"]))
    a.obsm["spatial"] = rng.uniform(0, 100, (n, 2))
    a.obsm["spatial_aligned"] = a.obsm["spatial"] + 1
    a.layers["loki_predicted"] = rng.random((n, 3))
    a.obsm["loki_proportions"] = pd.DataFrame({"T": rng.random(n)}, index=a.obs_names)
    a.obsm["loki_annotation"] = pd.DataFrame({"x": rng.random(n)}, index=a.obs_names)
    return a


_HITS = pd.DataFrame({"query_index": [0, 0], "rank": [1, 2], "bank_index": [0, 1], "score": [0.9, 0.8]})
_IMGS = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)

# name -> (call with keyword arguments, number of axes ax= takes)
PLOTS = {
    "alignment": (lambda **kw: lk.pl.alignment([_section(), _section(seed=1)], **kw), 2),
    "annotation": (lambda **kw: lk.pl.annotation(_section(), **kw), 1),
    "expression": (lambda **kw: lk.pl.expression(_section(), "g0", **kw), 2),
    "proportions": (lambda **kw: lk.pl.proportions(_section(), **kw), 1),
    "retrieval_gallery": (lambda **kw: lk.pl.retrieval_gallery(_HITS, _IMGS, _IMGS, n_hits=2, **kw), 3),
    "loss_curve": (
        lambda **kw: lk.pl.loss_curve({"step_loss": [3, 2, 1, 1], "epoch_loss": [2.5, 1]}, **kw),
        1,
    ),
}


@pytest.fixture
def interactive(monkeypatch):
    """An interactive backend as far as loki can tell; returns the list of plt.show() calls."""
    shown = []
    monkeypatch.setattr(plt, "get_backend", lambda: "qtagg")
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    yield shown
    plt.close("all")


def _axes(n):
    fig, axes = plt.subplots(1, n, squeeze=False)
    return fig, axes[0][0] if n == 1 else list(axes[0])


@pytest.mark.parametrize("name", PLOTS)
def test_show_only_a_new_figure_never_the_callers(name, interactive):
    plot, n_axes = PLOTS[name]
    plot()
    assert len(interactive) == 1  # a new figure on an interactive backend is shown
    fig, ax = _axes(n_axes)
    out = plot(ax=ax)
    assert len(interactive) == 1  # drawing into the caller's axes shows nothing (e.g. Jupyter inline)
    assert (out if isinstance(out, plt.Figure) else out.figure) is fig
    plot(ax=ax, show=True)
    assert len(interactive) == 2


@pytest.mark.parametrize("name", PLOTS)
def test_a_saved_figure_is_closed_the_callers_is_not(name, tmp_path):
    plot, n_axes = PLOTS[name]
    plt.close("all")
    out = plot(show=False, save=tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0
    assert plt.get_fignums() == []  # saved and not shown: closed
    (out if isinstance(out, plt.Figure) else out.figure).savefig(tmp_path / "b.png")  # still usable
    assert plot(show=False) is not None
    assert len(plt.get_fignums()) == 1  # not saved: left open for the caller, as scanpy does
    fig, ax = _axes(n_axes)
    plot(ax=ax, show=False, save=tmp_path / "c.png")
    assert plt.fignum_exists(fig.number)  # the caller's figure stays open
    plt.close("all")


def test_retrieval_gallery_checks_every_query_before_drawing():
    plt.close("all")
    with pytest.raises(ValueError, match=r"hits hold no row for queries \[1\]"):
        lk.pl.retrieval_gallery(_HITS, _IMGS, _IMGS, queries=[0, 1], n_hits=2, show=False)
    assert plt.get_fignums() == []


def test_gallery_and_expression_draw_into_given_axes():
    _, axes = plt.subplots(1, 3)
    lk.pl.retrieval_gallery(_HITS, _IMGS, _IMGS, n_hits=2, ax=axes, show=False)
    assert [a.get_title() for a in axes] == ["query 0", "#1 0.900", "#2 0.800"]
    _, axes = plt.subplots(2, 2)
    lk.pl.expression(_section(), ["g0", "g1"], ax=axes, show=False)
    assert [a.get_title().split(" (")[0] for a in axes.ravel()] == [
        "g0 measured",
        "g0 predicted",
        "g1 measured",
        "g1 predicted",
    ]
    with pytest.raises(ValueError, match="ax holds 2 axes, but 4 panels are drawn"):
        lk.pl.expression(_section(), ["g0", "g1"], ax=axes[0], show=False)
    plt.close("all")


@pytest.mark.parametrize("name", PLOTS)
def test_a_failing_call_leaves_no_figure_and_save_must_be_a_path(name, tmp_path):
    plot, n_axes = PLOTS[name]
    plt.close("all")
    with pytest.raises(ValueError, match=r"save must be a file path .* got True\. scanpy's save=True"):
        plot(show=False, save=True)
    assert plt.get_fignums() == []
    buffer = io.BytesIO()  # a binary file object is a place to save to, as for Figure.savefig
    plot(show=False, save=buffer)
    assert buffer.getvalue().startswith(b"\x89PNG")
    assert plt.get_fignums() == []
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        plot(show=False, save=tmp_path / "file" / "a.png")
    assert plt.get_fignums() == []  # the figure it created is closed, not left half-saved
    fig, ax = _axes(n_axes)
    with pytest.raises(NotADirectoryError):
        plot(ax=ax, show=False, save=tmp_path / "file" / "b.png")
    assert plt.get_fignums() == [fig.number]  # the caller's figure stays open
    plt.close("all")


@pytest.mark.parametrize("name", PLOTS)
def test_save_creates_missing_folders_and_removes_them_when_saving_fails(name, tmp_path):
    plot, _ = PLOTS[name]
    plot(show=False, save=tmp_path / "figures" / "sub" / "a.png")  # as scanpy does with its figdir
    assert (tmp_path / "figures" / "sub" / "a.png").stat().st_size > 0
    plot(show=False, save=str(tmp_path / "figures" / "b.png"))
    assert (tmp_path / "figures" / "b.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not supported"):  # an unknown format: nothing is left behind
        plot(show=False, save=tmp_path / "new" / "deeper" / "a.nope")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="not supported"):  # a folder that existed stays
        plot(show=False, save=tmp_path / "figures" / "more" / "a.nope")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["b.png", "sub"]
    plt.close("all")


@pytest.mark.parametrize("name", PLOTS)
def test_ax_takes_one_axes_a_list_or_an_array(name):
    plot, n_axes = PLOTS[name]
    for wrap in (list, lambda axes: np.asarray(axes, dtype=object).reshape(1, -1)):
        fig, axes = plt.subplots(1, n_axes, squeeze=False)
        out = plot(ax=wrap(list(axes[0])), show=False)
        assert (out if isinstance(out, plt.Figure) else out.figure) is fig
        assert all(a.has_data() for a in axes[0])  # every given axes got its panel
        plt.close(fig)
    fig, axes = plt.subplots(1, n_axes + 1)
    with pytest.raises(ValueError, match=rf"ax holds {n_axes + 1} axes, but {n_axes} panels are drawn"):
        plot(ax=axes, show=False)
    assert not any(a.has_data() for a in axes)
    plt.close("all")


def _nan_annotation(a):
    a.obsm["loki_annotation"].iloc[0, 0] = np.nan
    return lk.pl.annotation(a, show=False).axes[0]


def _nan_proportions(a):
    a.obsm["loki_proportions"].iloc[0, 0] = np.nan
    return lk.pl.proportions(a, show=False).axes[0]


def _nan_expression(a):
    a.layers["loki_predicted"][0, 0] = np.nan
    return lk.pl.expression(a, "g0", show=False).axes[1]  # the predicted panel


@pytest.mark.parametrize("plot", [_nan_annotation, _nan_proportions, _nan_expression])
def test_a_spot_without_a_value_is_drawn_light_grey(plot):
    from matplotlib.colors import to_rgb

    section = _section()
    panel = plot(section)
    (points,) = panel.collections
    panel.figure.canvas.draw()
    colours = points.get_facecolors()
    assert len(colours) == section.n_obs
    np.testing.assert_allclose(colours[0, :3], to_rgb("lightgray"))
    assert colours[0, 3] == colours[1, 3] > 0  # as opaque as the spots with a value
    assert not np.isclose(colours[1:, :3], to_rgb("lightgray")).all(axis=1).any()
    plt.close("all")


@pytest.mark.parametrize("name", ["alignment", "annotation", "expression", "proportions"])
def test_coordinates_need_two_columns(name):
    plt.close("all")
    section = _section()
    section.obsm["spatial"] = section.obsm["spatial"][:, :1]
    call = {
        "alignment": lambda: lk.pl.alignment([_section(seed=1), section], sections=["A", "B"], show=False),
        "annotation": lambda: lk.pl.annotation(section, show=False),
        "expression": lambda: lk.pl.expression(section, "g0", show=False),
        "proportions": lambda: lk.pl.proportions(section, show=False),
    }[name]
    where = "section 'B' adata" if name == "alignment" else "adata"
    with pytest.raises(
        ValueError, match=rf"^{where}\.obsm\['spatial'\] must be \(n_obs, 2\+\), got \(40, 1\)\.$"
    ):
        call()
    assert plt.get_fignums() == []


SPOT_PLOTS = {
    "alignment": lambda a, **kw: lk.pl.alignment([a, a], key="spatial_aligned", **kw),
    "alignment_stack": lambda a, **kw: lk.pl.alignment([a, a], key="spatial_aligned", kind="stack", **kw),
    "annotation": lambda a, **kw: lk.pl.annotation(a, **kw),
    "annotation_label": lambda a, **kw: lk.pl.annotation(a, kind="label", label_key="label", **kw),
    "expression": lambda a, **kw: lk.pl.expression(a, "g0", **kw),
    "proportions": lambda a, **kw: lk.pl.proportions(a, **kw),
}


@pytest.mark.parametrize("name", SPOT_PLOTS)
def test_spots_are_rasterised_in_a_vector_file(name):
    # as scanpy draws them: the spots one image in a PDF or SVG (not a path per spot, tens of MB at
    # 10^5 spots), axes, colour bars and legends still vector graphics
    from matplotlib.collections import PathCollection

    a = _section(300)
    a.obs["label"] = pd.Categorical(np.where(np.arange(300) % 2, "A", "B"))
    fig = SPOT_PLOTS[name](a, show=False)
    spots = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert spots
    assert all(c.get_rasterized() for c in spots)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf")
    plt.close(fig)
    assert b"/Subtype /Image" in buf.getvalue()


# every plot that draws spots, as (call on a section, parameters it takes besides ax/show/save)
_SPOTS = {
    "alignment": lambda a, **kw: lk.pl.alignment([_section(seed=1), a], sections=["A", "B"], **kw),
    "annotation": lambda a, **kw: lk.pl.annotation(a, **kw),
    "annotation_label": lambda a, **kw: lk.pl.annotation(a, kind="label", label_key="label", **kw),
    "expression": lambda a, **kw: lk.pl.expression(a, "g0", **kw),
    "proportions": lambda a, **kw: lk.pl.proportions(a, **kw),
}


def _labelled(n=40):
    a = _section(n)
    a.obs["label"] = pd.Categorical(np.where(np.arange(n) % 2, "u", "v"))
    return a


@pytest.mark.parametrize("name", _SPOTS)
def test_an_empty_selection_is_refused_before_drawing(name):
    # a subset that kept no spot drew empty panels (and a matplotlib warning about an empty legend)
    plt.close("all")
    where = "section 'B' adata" if name == "alignment" else "adata"
    with pytest.raises(ValueError, match=rf"^{where} has no spots \(n_obs = 0\): nothing to draw"):
        _SPOTS[name](_labelled()[:0], show=False)
    assert plt.get_fignums() == []


@pytest.mark.parametrize("name", _SPOTS)
@pytest.mark.parametrize("spot_size", [0, -1.0, np.nan, "big"])
def test_a_spot_size_that_draws_nothing_is_refused(name, spot_size):
    # a negative size drew no spot, with a RuntimeWarning from matplotlib's sqrt
    plt.close("all")
    with pytest.raises(ValueError, match=r"spot_size must be a marker area in points\^2 > 0"):
        _SPOTS[name](_labelled(), spot_size=spot_size, show=False)
    assert plt.get_fignums() == []
    from matplotlib.collections import PathCollection

    fig = _SPOTS[name](_labelled(), spot_size=30.0, show=False)
    spots = [c for a in fig.axes for c in a.collections if isinstance(c, PathCollection)]
    assert spots
    assert all(np.allclose(c.get_sizes(), 30.0) for c in spots)
    plt.close("all")


@pytest.mark.parametrize("name", ["annotation", "expression", "proportions"])
def test_a_bad_cmap_is_named(name):
    plt.close("all")
    with pytest.raises(ValueError, match=r"^cmap must be a matplotlib colormap or its name, got 'nope'"):
        _SPOTS[name](_section(), cmap="nope", show=False)
    assert plt.get_fignums() == []


@pytest.mark.parametrize("name", ["proportions", "retrieval_gallery"])
@pytest.mark.parametrize("panel_size", [0, -1.0, np.nan, np.inf, "3", True])
def test_a_panel_size_that_makes_no_figure_is_refused(name, panel_size):
    # 0 drew an empty 0 x 0 inch figure; -1 and nan failed in matplotlib, naming the figure size only
    plot, _ = PLOTS[name]
    plt.close("all")
    with pytest.raises(ValueError, match=r"^panel_size must be the height of a panel in inches, a finite"):
        plot(panel_size=panel_size, show=False)
    assert plt.get_fignums() == []
    fig = plot(panel_size=2.0, show=False)
    assert fig.get_size_inches()[1] == pytest.approx(2.0)
    plt.close("all")


def _long_names(a, n=30):
    # names as long as some cell types' (e.g. "Olfactory ensheathing glia (OEC)"), many of them
    a.obs["label"] = pd.Categorical([f"Cell type {i % n} with a long name" for i in range(a.n_obs)])
    return a


# every plot, and plots whose legend of long names sits beside the panels
BOUNDED = {
    **{name: plot for name, (plot, _) in PLOTS.items()},
    "annotation_label_long_names": lambda **kw: lk.pl.annotation(
        _long_names(_section(120)), kind="label", label_key="label", **kw
    ),
    "alignment_long_names": lambda **kw: lk.pl.alignment(
        {
            "a section with a long name, A1": _section(),
            "another section with a long name, B2": _section(seed=1),
        },
        **kw,
    ),
}


def _outside(extent, figure_box) -> bool:
    # one pixel of slack for rounding
    return bool(
        extent.x0 < figure_box.x0 - 1
        or extent.y0 < figure_box.y0 - 1
        or extent.x1 > figure_box.x1 + 1
        or extent.y1 > figure_box.y1 + 1
    )


@pytest.mark.parametrize("name", BOUNDED)
def test_a_plain_savefig_cuts_off_no_label_title_or_legend(name):
    """loss_curve's x label "step" lay below the figure: only save= (bbox_inches="tight") kept it, not
    the returned figure's own savefig. Legends of long names beside the panels ran off the right edge."""
    plt.close("all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "constrained_layout not applied"
        out = BOUNDED[name](show=False)
        fig = out if isinstance(out, plt.Figure) else out.figure
        fig.savefig(io.BytesIO(), format="png")  # as a user saves the returned figure
    renderer = fig.canvas.get_renderer()
    texts = []
    for a in fig.axes:
        if a.get_visible():
            texts += [t for t in (a.xaxis.label, a.yaxis.label, a.title) if t.get_text()]
            texts += [] if a.get_legend() is None else [a.get_legend()]
    assert texts  # the x label "step" of loss_curve among them
    cut = [t for t in texts if _outside(t.get_window_extent(renderer), fig.bbox)]
    assert [t.get_text() if isinstance(t, Text) else "legend" for t in cut] == []
    plt.close("all")


def test_a_legend_widens_only_a_figure_the_plot_made():
    plt.close("all")
    fig, ax = plt.subplots(figsize=(4, 3))
    lk.pl.annotation(_long_names(_section(120)), kind="label", label_key="label", ax=ax, show=False)
    assert fig.get_size_inches().tolist() == [4.0, 3.0]  # the caller's figure keeps its size
    made = lk.pl.annotation(_long_names(_section(120)), kind="label", label_key="label", show=False)
    assert made.get_size_inches()[0] > made.get_size_inches()[1] == 6.0  # a square panel and its legend
    plt.close("all")


@pytest.mark.parametrize("name", BOUNDED)
def test_the_returned_figure_takes_tight_layout(name):
    # a layout engine on a figure with colour bars made fig.tight_layout() raise a RuntimeError
    plt.close("all")
    out = BOUNDED[name](show=False)
    (out if isinstance(out, plt.Figure) else out.figure).tight_layout()
    plt.close("all")
