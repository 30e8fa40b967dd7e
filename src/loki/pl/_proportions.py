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
from loki._utils._spatialdata import get_table

from ._common import (
    check_panel_size,
    draw_section,
    finish,
    marker_size,
    panel_grid,
    panel_title,
    plot_function,
    scatter_values,
    section_spots,
    table_name,
    value_colormap,
)
from ._docs import doc_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@plot_function
@doc_params
def proportions(
    data: AnnData | SpatialData,
    *,
    key: str = Key.PROPORTIONS,
    cell_types: Sequence[str] | None = None,
    table_key: str | None = None,
    spatial_key: str = Key.SPATIAL,
    show_image: bool | np.ndarray | None = None,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    ncols: int = 4,
    cmap: str | Colormap = "viridis",
    vmax: float | None = None,
    spot_size: float | None = None,
    alpha: float = 0.9,
    panel_size: float = 3.0,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
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
        {table_key}
    spatial_key
        {spatial_key}
    show_image
        {show_image}
        Or an RGB (y, x, 3) or grey (y, x) array to draw (its pixel coordinates are those of
        ``.obsm[spatial_key]``).
    image_key
        {image_key}
    coordinate_system
        {coordinate_system}
    ncols
        {ncols}
    cmap
        {cmap}
    vmax
        Upper end of the colour scale, which starts at 0 (default: each panel's maximum, or 1 for a
        type absent from every spot).
    spot_size
        {spot_size}
    alpha
        {alpha}
    panel_size
        {panel_size}
    ax
        Axes to draw into: one per cell type (a single Axes for one type), as a list or an array;
        default a new figure.
    show
        {show}
    save
        {save}

    Returns
    -------
    The figure; its axes hold one panel per cell type, titled with the type.
    """
    table = get_table(data, table_key)
    name = table_name(data, table, table_key)
    check_obsm_key(
        table, key, where=name, hint="Run lk.tl.decompose on this table first, or pass key= the key it wrote."
    )
    values = table.obsm[key]
    if not isinstance(values, pd.DataFrame):
        raise ValueError(f"{name}.obsm[{key!r}] must be a DataFrame with one column per cell type.")
    columns = [str(c) for c in values.columns]
    if cell_types is None:
        cell_types = columns
    else:
        cell_types = [str(c) for c in cell_types]
        require_keys(columns, cell_types, f"the columns of {name}.obsm[{key!r}]")
    if len(cell_types) == 0:
        raise ValueError("No cell types to plot.")
    if isinstance(show_image, np.ndarray) and show_image.ndim not in (2, 3):
        raise ValueError(f"show_image as an array must be (y, x) or (y, x, c), got shape {show_image.shape}.")
    if vmax is not None and not (np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a finite number > 0 (proportions start at 0), got {vmax!r}.")
    check_panel_size(panel_size)
    colours = value_colormap(cmap)
    background, xy = section_spots(
        data,
        table,
        spatial_key=spatial_key,
        show_image=show_image,
        table_key=table_key,
        image_key=image_key,
        coordinate_system=coordinate_system,
    )

    fig, axes = panel_grid(len(cell_types), ncols, ax, size=panel_size, aspect=1.15)
    size = marker_size(spot_size, len(xy), xy=xy, area=2.0e4, smallest=2.0)
    frame = values.set_axis(columns, axis=1)
    for panel, cell_type in zip(axes, cell_types, strict=True):
        draw_section(panel, background, xy)
        shares = frame[cell_type].to_numpy(dtype=float)
        sc = scatter_values(
            panel,
            xy,
            shares,
            cmap=colours,
            s=size,
            vmin=0.0,
            vmax=_upper(shares) if vmax is None else vmax,
            alpha=alpha,
            linewidths=0,
        )
        fig.colorbar(sc, ax=panel, fraction=0.046, pad=0.02)
        panel_title(panel, cell_type)
    finish(fig, show=show, save=save, created=ax is None)
    return fig


def _upper(shares: np.ndarray) -> float:
    """Top of a panel's colour scale: its largest finite proportion, or 1 when none is above 0.

    The scale starts at 0, so a type absent from every spot is drawn in the colour map's lowest colour.
    """
    finite = shares[np.isfinite(shares)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0
