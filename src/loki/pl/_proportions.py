"""Spatial maps of cell-type proportions (one panel per type), optionally over the H&E image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from loki._keys import Key
from loki._utils import check_obsm_key, require_keys
from loki._utils._spatialdata import get_table, is_spatialdata, lowres_image, section_image_key

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


def proportions(
    data: AnnData | SpatialData,
    *,
    key: str = Key.PROPORTIONS,
    cell_types: Sequence[str] | None = None,
    table_key: str | None = None,
    spatial_key: str = Key.SPATIAL,
    image: bool | np.ndarray = True,
    image_key: str | None = None,
    ncols: int = 4,
    cmap: str = "viridis",
    vmax: float | None = None,
    spot_size: float | None = None,
    alpha: float = 0.9,
    panel_size: float = 3.0,
    ax: Axes | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Figure:
    """Plot one spatial map per cell type of the proportions written by :func:`loki.tl.decompose`.

    Parameters
    ----------
    data
        AnnData with ``.obsm[key]`` and ``.obsm[spatial_key]``, or a SpatialData section.
    key
        ``.obsm`` key of a DataFrame spots x cell types (e.g. ``"loki_proportions"``, its
        ``"_refined"`` variant, or the truth ``"proportions"`` of pseudo-spots).
    cell_types
        Types to plot (default: all columns).
    table_key
        Table of a SpatialData (may be omitted when there is one).
    spatial_key
        ``.obsm`` key of spot centres.
    image
        ``True``: draw the section's H&E under the spots when ``data`` is a SpatialData with an
        image; an RGB array: draw it (pixel coordinates = spot coordinates); ``False``: no image.
    image_key
        Image of a SpatialData (default: the section's image).
    ncols
        Panels per row.
    cmap
        Colour map of the proportions.
    vmax
        Upper end of the colour scale (default: each panel's maximum).
    spot_size
        Marker area in points^2 (default: from the number of spots).
    alpha
        Opacity of the spots.
    panel_size
        Side of one panel in inches.
    ax
        Axes to draw into; only with a single cell type.
    show
        Call :func:`matplotlib.pyplot.show`.
    save
        Path to save the figure to.

    Returns
    -------
    The figure; its axes hold one panel per cell type, titled with the type.

    """
    import matplotlib.pyplot as plt

    table = get_table(data, table_key)
    check_obsm_key(table, key)
    check_obsm_key(table, spatial_key)
    values = table.obsm[key]
    if not isinstance(values, pd.DataFrame):
        raise ValueError(f"adata.obsm[{key!r}] must be a DataFrame with one column per cell type.")
    columns = [str(c) for c in values.columns]
    if cell_types is None:
        cell_types = columns
    else:
        cell_types = [str(c) for c in cell_types]
        require_keys(columns, cell_types, f"the columns of adata.obsm[{key!r}]")
    if len(cell_types) == 0:
        raise ValueError("No cell types to plot.")
    if ax is not None and len(cell_types) != 1:
        raise ValueError(
            f"ax= draws one cell type; {len(cell_types)} were asked for (pass cell_types=[...])."
        )
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}.")
    coords = np.asarray(table.obsm[spatial_key], dtype=float)[:, :2]
    background = _background(data, table_key, image, image_key)

    if ax is None:
        ncols = min(ncols, len(cell_types))
        nrows = int(np.ceil(len(cell_types) / ncols))
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(panel_size * ncols * 1.15, panel_size * nrows), squeeze=False
        )
        axes = axes.ravel()
        for extra in axes[len(cell_types) :]:
            extra.remove()
    else:
        fig, axes = ax.figure, [ax]
    size = spot_size if spot_size is not None else max(2.0, 2.0e4 / max(len(coords), 1))
    frame = values.set_axis(columns, axis=1)
    for panel, cell_type in zip(axes, cell_types, strict=False):
        if background is not None:
            _draw_image(panel, *background)
        sc = panel.scatter(
            coords[:, 0],
            coords[:, 1],
            c=frame[cell_type].to_numpy(dtype=float),
            s=size,
            cmap=cmap,
            vmin=0.0,
            vmax=vmax,
            alpha=alpha,
            linewidths=0,
        )
        fig.colorbar(sc, ax=panel, fraction=0.046, pad=0.02)
        panel.set_title(cell_type)
        panel.set_aspect("equal")
        if not panel.yaxis_inverted():
            panel.invert_yaxis()
        panel.set_xticks([])
        panel.set_yticks([])
    if save is not None:
        fig.savefig(save, bbox_inches="tight")
    if show:
        plt.show()
    return fig


def _background(data, table_key, image, image_key):
    """(rgb array, 3x3 pixel->table-units affine) or None."""
    if image is False or image is None:
        return None
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"image must be (y, x) or (y, x, c), got shape {image.shape}.")
        return image, np.eye(3)
    if not is_spatialdata(data) or len(data.images) == 0:
        return None
    table = get_table(data, table_key)
    tkey = table_key if table_key is not None else next(k for k, t in data.tables.items() if t is table)
    name = section_image_key(data, tkey, image_key)
    return lowres_image(data.images[name])


def _draw_image(ax, rgb: np.ndarray, matrix: np.ndarray) -> None:
    from matplotlib.transforms import Affine2D

    h, w = rgb.shape[:2]
    # SpatialData's pixel (i, j) spans [j, j + 1] x [i, i + 1]
    artist = ax.imshow(rgb, extent=(0, w, h, 0), origin="upper", zorder=0)
    artist.set_transform(Affine2D(matrix) + ax.transData)
    x0, y0 = (matrix @ np.array([0.0, 0.0, 1.0]))[:2]
    x1, y1 = (matrix @ np.array([w, h, 1.0]))[:2]
    ax.update_datalim([(x0, y0), (x1, y1)])
