"""Annotation scores / labels of spots drawn over the section's H&E."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from loki._keys import Key
from loki._utils import require_keys
from loki._utils._spatialdata import get_table, is_spatialdata, lowres_image, section_image_key

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


def section_background(
    data: AnnData | SpatialData, table_key: str | None, image_key: str | None, max_side: int = 2000
) -> tuple[np.ndarray | None, np.ndarray]:
    """The section's H&E at a level of at most ``max_side`` pixels and the global -> display-pixel affine.

    For an AnnData (no image) returns None and the identity.
    """
    if not is_spatialdata(data):
        return None, np.eye(3)
    table = get_table(data, table_key)
    key = table_key if table_key is not None else next(k for k, t in data.tables.items() if t is table)
    rgb, to_global = lowres_image(data.images[section_image_key(data, key, image_key)], max_side)
    return rgb[..., :3], np.linalg.inv(to_global)


def spot_xy(table: AnnData, basis: str, to_display: np.ndarray) -> np.ndarray:
    """Spot centres of ``.obsm[basis]`` mapped into display coordinates."""
    require_keys(table.obsm, basis, "adata.obsm")
    xy = np.asarray(table.obsm[basis], dtype=np.float64)[:, :2]
    return xy @ to_display[:2, :2].T + to_display[:2, 2]


def panel_grid(n: int, ncols: int, ax: Axes | None, size: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels (or the given single axes)."""
    import matplotlib.pyplot as plt

    if ax is not None:
        if n != 1:
            raise ValueError(f"ax= draws one panel, but {n} panels were asked for; leave ax=None.")
        return ax.figure, [ax]
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for extra in axes.ravel()[n:]:
        extra.set_visible(False)
    return fig, list(axes.ravel()[:n])


def finish(fig: Figure, show: bool | None, save: str | Path | None) -> None:
    """Save and/or show a figure the scanpy way (show defaults to True outside non-interactive backends)."""
    import matplotlib.pyplot as plt

    if save is not None:
        fig.savefig(save, bbox_inches="tight", dpi=150)
    if show is None:
        show = plt.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template")
    if show:
        plt.show()


def _draw_section(ax: Axes, rgb: np.ndarray | None, xy: np.ndarray) -> None:
    if rgb is not None:  # display units are the level's pixels, pixel (i, j) spanning [j, j + 1] x [i, i + 1]
        ax.imshow(rgb, origin="upper", extent=(0, rgb.shape[1], rgb.shape[0], 0))
        pad = 0.05 * max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1.0)
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
    elif not ax.yaxis_inverted():  # image convention; a user's axes may have it already
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def annotation(
    data: AnnData | SpatialData,
    *,
    kind: Literal["scores", "label"] = "scores",
    classes: Sequence[str] | None = None,
    key: str = Key.ANNOTATION,
    label_key: str | None = None,
    table_key: str | None = None,
    image_key: str | None = None,
    basis: str = Key.SPATIAL,
    show_image: bool = True,
    spot_size: float | None = None,
    cmap: str = "coolwarm",
    alpha: float = 0.8,
    ncols: int = 3,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Heat map of annotation scores per class (or the labels) over the section's H&E.

    Parameters
    ----------
    data
        AnnData or SpatialData annotated by :func:`loki.tl.annotate`.
    kind
        ``"scores"``: one panel per class colouring spots by their similarity; ``"label"``: one panel
        with the predicted label of each spot.
    classes
        Classes to draw (default: all).
    key, label_key
        ``.obsm`` key of the scores and ``.obs`` column of the labels (default ``key``, as
        :func:`loki.tl.annotate` writes them).
    table_key, image_key
        Table and image of a SpatialData.
    basis
        ``.obsm`` key of the spot coordinates (in the image's global coordinate system).
    show_image
        Draw the H&E underneath (SpatialData only).
    spot_size
        Marker size (points^2); default scales with the number of spots.
    cmap, alpha
        Colour map of the scores and spot opacity.
    ncols
        Panels per row.
    ax
        Axes to draw a single panel into.
    show, save
        Show the figure / save it to this path.

    Returns
    -------
    The figure.

    """
    table = get_table(data, table_key)
    label_key = key if label_key is None else label_key
    rgb, to_display = section_background(data, table_key, image_key) if show_image else (None, np.eye(3))
    if kind == "scores":
        require_keys(table.obsm, key, "adata.obsm")
        scores = table.obsm[key]
        if not isinstance(scores, pd.DataFrame):
            raise TypeError(f"adata.obsm[{key!r}] must be a DataFrame of class scores (from lk.tl.annotate).")
        classes = list(scores.columns) if classes is None else list(classes)
        require_keys(scores.columns, classes, f"the classes of adata.obsm[{key!r}]")
    elif kind == "label":
        require_keys(table.obs.columns, label_key, "adata.obs")
    else:
        raise ValueError(f"kind must be 'scores' or 'label', got {kind!r}.")
    xy = spot_xy(table, basis, to_display)
    size = spot_size if spot_size is not None else max(4.0, 8000.0 / max(table.n_obs, 1))
    if kind == "scores":
        fig, axes = panel_grid(len(classes), ncols, ax)
        for a, cls in zip(axes, classes, strict=True):
            _draw_section(a, rgb, xy)
            points = a.scatter(xy[:, 0], xy[:, 1], c=scores[cls].to_numpy(), s=size, cmap=cmap, alpha=alpha)
            fig.colorbar(points, ax=a, shrink=0.7, label="cosine similarity")
            a.set_title(str(cls))
    else:
        import matplotlib.pyplot as plt

        fig, (a,) = panel_grid(1, 1, ax, size=6.0)
        _draw_section(a, rgb, xy)
        labels = pd.Categorical(table.obs[label_key])
        colours = plt.get_cmap("tab20")(np.arange(len(labels.categories)) % 20)
        for i, cat in enumerate(labels.categories):
            sel = labels.codes == i
            a.scatter(xy[sel, 0], xy[sel, 1], color=colours[i], s=size, alpha=alpha, label=str(cat))
        a.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2)
        a.set_title(label_key)
    finish(fig, show, save)
    return fig
