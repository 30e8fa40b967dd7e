"""Plots of Loki Align results: before/after overlays and the stacked side view of paper Fig. 2c."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from loki._keys import Key
from loki._utils import check_array_finite, check_obsm_key
from loki._utils._pca import fit_pca
from loki._utils._spatialdata import get_table, is_spatialdata

from ._common import finish

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

__all__ = ["alignment", "embedding_rgb"]


def embedding_rgb(embeddings: Sequence[np.ndarray], n_components: int = 3) -> list[np.ndarray]:
    """Map embeddings of several sections to RGB by their top three principal components.

    The PCA is fitted on all sections together (over row blocks, without stacking them; each
    component's largest loading is positive), and each component is min-max scaled to [0, 1] over
    all sections, so equal colours mean equal embeddings across sections.

    Returns
    -------
    One (n_i, 3) float array in [0, 1] per section.
    """
    mats = [np.asarray(e) for e in embeddings]
    pcs = fit_pca(mats, n_components).transform(mats)
    k = pcs.shape[1]
    if k < 3:
        pcs = np.hstack([pcs, np.zeros((len(pcs), 3 - k))])
    lo, hi = pcs.min(axis=0), pcs.max(axis=0)
    rgb = (pcs - lo) / np.where(hi > lo, hi - lo, 1.0)
    splits = np.cumsum([len(m) for m in mats])[:-1]
    return np.split(rgb, splits)


def _tables(data, sections) -> tuple[list[str], list[AnnData]]:
    if is_spatialdata(data):
        names = list(sections) if sections is not None else list(data.tables.keys())
        return names, [get_table(data, n) for n in names]
    items = list(data) if not isinstance(data, AnnData) else [data]
    names = list(sections) if sections is not None else [f"section{i}" for i in range(len(items))]
    if len(names) != len(items):
        raise ValueError(f"sections gives {len(names)} label(s) for {len(items)} sections; give one each.")
    return names, [get_table(d) for d in items]


def alignment(
    data: SpatialData | AnnData | Sequence[AnnData | SpatialData],
    *,
    sections: Sequence[str] | None = None,
    key: str = Key.ALIGNED,
    spatial_key: str = Key.SPATIAL,
    use: str | Sequence[str] | None = None,
    kind: str = "overlay",
    point_size: float = 8.0,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Figure:
    """Plot sections before and after alignment.

    Parameters
    ----------
    data
        SpatialData with the sections' tables, or a list of AnnData / SpatialData (one per section).
    sections
        Table keys (SpatialData) or labels (list) in stack order; default all tables.
    key
        ``.obsm`` key of the aligned coordinates (the target, which has none unless written by
        :func:`loki.tl.align_sections`, is drawn at ``spatial_key``).
    spatial_key
        ``.obsm`` key of the original coordinates.
    use
        ``.obsm`` key of an embedding present in every section, or one key per section (e.g.
        ``["loki_text", "loki_image"]`` for an H&E section aligned onto an ST one): points are
        coloured by the top three principal components of the embeddings, pooled, mapped to RGB
        (paper Fig. 2c); default one colour per section.
    kind
        ``"overlay"``: two panels, before and after, sections overlaid; ``"stack"``: side view of the
        sections stacked along z (x horizontal, z vertical), before and after.
    point_size
        Marker size.
    ax
        Two axes to draw into (before, after); default a new figure.
    show
        Show the figure; by default when it is new (no ``ax``) and the backend is interactive.
    save
        Path to save the figure to; a new figure saved and not shown is closed (the returned Figure
        stays usable).

    Returns
    -------
    The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if kind not in ("overlay", "stack"):
        raise ValueError(f"kind must be 'overlay' or 'stack', got {kind!r}.")
    names, tables = _tables(data, sections)
    if len(tables) < 1:
        raise ValueError("No sections to plot.")
    for t in tables:
        check_obsm_key(t, spatial_key)
    if not any(key in t.obsm for t in tables):
        raise KeyError(f"{key!r} not found in .obsm of any section; run lk.tl.align first.")
    if use is not None:
        keys = [use] * len(tables) if isinstance(use, str) else list(use)
        if len(keys) != len(tables):
            raise ValueError(
                f"use names {len(keys)} embedding key(s) for {len(tables)} sections; give one or one each."
            )
        for name, t, k in zip(names, tables, keys, strict=True):
            check_obsm_key(t, k)
            check_array_finite(t.obsm[k], f"section {name!r} .obsm[{k!r}]")
        colours = embedding_rgb([t.obsm[k] for t, k in zip(tables, keys, strict=True)])
    else:
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        colours = [np.tile(matplotlib_rgb(cycle[i % len(cycle)]), (t.n_obs, 1)) for i, t in enumerate(tables)]

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 5 if kind == "overlay" else 4))
    else:
        axes = list(ax)
        if len(axes) != 2:
            raise ValueError("ax must hold two axes (before, after).")
        fig = axes[0].figure
    for panel, title in zip(axes, ("before", "after"), strict=True):
        for z, (name, t, c) in enumerate(zip(names, tables, colours, strict=True)):
            xy = np.asarray(t.obsm[key] if (title == "after" and key in t.obsm) else t.obsm[spatial_key])[
                :, :2
            ]
            if kind == "overlay":
                panel.scatter(xy[:, 0], xy[:, 1], s=point_size, c=c, label=name, alpha=0.7, linewidths=0)
            else:
                zpos = (
                    t.uns.get(Key.UNS, {}).get(key, {}).get("z", z)
                    if isinstance(t.uns.get(Key.UNS), dict)
                    else z
                )
                panel.scatter(
                    xy[:, 0],
                    np.full(len(xy), float(zpos)),
                    s=point_size,
                    c=c,
                    label=name,
                    alpha=0.7,
                    linewidths=0,
                )
        panel.set_title(f"{title} alignment")
        if kind == "overlay":
            panel.set_aspect("equal")
            if not panel.yaxis_inverted():  # image convention; a user's axes may have it already
                panel.invert_yaxis()
            panel.set_xlabel("x")
            panel.set_ylabel("y")
        else:
            panel.set_xlabel("x")
            panel.set_ylabel("section (z)")
    if use is None:
        axes[1].legend(loc="best", fontsize="small", markerscale=2)
    finish(fig, show=show, save=save, created=ax is None)
    return fig


def matplotlib_rgb(colour: str) -> np.ndarray:
    """An RGB triple in [0, 1] for a matplotlib colour spec."""
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(colour))
