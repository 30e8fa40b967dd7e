"""Default marker sizes of spatial plots follow the spots' spacing, so that neighbours touch, not cover."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

import loki as lk

SPACING = 10.0


@pytest.fixture
def lattice():
    """A 20 x 20 square lattice of spots, with proportions, labels, scores and one gene."""
    n = 20
    gx, gy = np.meshgrid(np.arange(n), np.arange(n))
    xy = np.column_stack([gx.ravel(), gy.ravel()]).astype(float) * SPACING
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, (len(xy), 1)).astype(np.float32))
    adata.var_names = ["G0"]
    adata.obs_names = [f"s{i}" for i in range(len(xy))]
    adata.obsm["spatial"] = xy
    classes = ["Tumour", "Immune", "Stroma"]
    values = pd.DataFrame(rng.dirichlet(np.ones(3), len(xy)), index=adata.obs_names, columns=classes)
    adata.obsm["loki_proportions"] = values
    adata.obsm["loki_annotation"] = values
    adata.obs["loki_annotation"] = pd.Categorical(np.asarray(classes)[values.to_numpy().argmax(1)])
    yield adata
    plt.close("all")


def _spots(fig) -> list[PathCollection]:
    """The spots of every panel (a colour bar's lines are not spots)."""
    return [
        c for a in fig.axes for c in a.collections if isinstance(c, PathCollection) and len(c.get_offsets())
    ]


def _diameters(fig) -> list[float]:
    """The drawn diameter, in data units, of the spots of each panel (marker and edge line)."""
    fig.canvas.draw()
    out = []
    for points in _spots(fig):
        edge = float(np.max(points.get_linewidths(), initial=0.0)) if len(points.get_edgecolor()) else 0.0
        pixels = (np.sqrt(points.get_sizes()[0]) + edge) * fig.dpi / 72.0
        origin, right = points.axes.transData.transform([[0.0, 0.0], [1.0, 0.0]])
        out.append(pixels / np.hypot(*(right - origin)))
    return out


PLOTS = {
    "proportions": lambda adata, **kw: lk.pl.proportions(adata, show_image=False, panel_size=1.5, **kw),
    "annotation labels": lambda adata, **kw: lk.pl.annotation(adata, kind="label", show_image=False, **kw),
    "annotation scores": lambda adata, **kw: lk.pl.annotation(
        adata, kind="scores", show_image=False, ncols=3, **kw
    ),
    "expression": lambda adata, **kw: lk.pl.expression(
        adata, genes=["G0"], layer_predicted=None, show_image=False, **kw
    ),
}


@pytest.mark.parametrize("plot", list(PLOTS))
def test_neighbouring_spots_touch_without_covering_each_other(lattice, plot):
    """The count-based default (2e4 / 400 points^2 in 1.5-inch proportion panels) drew disks 1.4 times
    as wide as the lattice's spacing; the default now fits them to it whatever the panel's size."""
    fig = PLOTS[plot](lattice, show=False)
    diameters = _diameters(fig)
    assert diameters
    for d in diameters:
        assert 0.9 * SPACING <= d <= 1.05 * SPACING, d


def test_spot_size_stays_the_users_override(lattice):
    fig = lk.pl.proportions(lattice, show_image=False, spot_size=7.0, show=False)
    fig.canvas.draw()
    assert all(np.allclose(c.get_sizes(), 7.0) for c in _spots(fig))


def test_spacing_is_the_median_nearest_neighbour_distance_and_ignores_repeats():
    from loki.pl._common import marker_size, spot_spacing

    xy = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [3.0, 4.0], [np.nan, 1.0]])
    assert spot_spacing(xy) == pytest.approx(3.0)  # nearest: 3, 3, 4 -> median 3
    assert spot_spacing(np.zeros((4, 2))) is None
    assert marker_size(None, 1, xy=np.zeros((1, 2))).spacing is None  # one spot: the count rule stays
    sections = [np.array([[0.0, 0], [2, 0]]), np.array([[0.0, 0], [4, 0]]), np.array([[0.0, 0], [9, 0]])]
    assert marker_size(None, 6, xy=sections).spacing == pytest.approx(4.0)
