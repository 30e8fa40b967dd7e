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
    coordinates,
    draw_image,
    finish,
    frame_spots,
    panel_grid,
    plot_function,
    scatter_values,
    section_image,
    table_name,
    value_colormap,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


@plot_function
def proportions(
    data: AnnData | SpatialData,
    *,
    key: str = Key.PROPORTIONS,
    cell_types: Sequence[str] | None = None,
    table_key: str | None = None,
    spatial_key: str = Key.SPATIAL,
    show_image: bool | np.ndarray | None = None,
    image_key: str | None = None,
    coordinate_system: str = Key.GLOBAL_CS,
    ncols: int = 4,
    cmap: str = "viridis",
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
        Table of a SpatialData (may be omitted when there is one).
    spatial_key
        ``.obsm`` key of spot centres (in the units of the table's spot shapes).
    show_image
        Draw the H&E underneath: by default when ``data`` is a SpatialData whose table has an image;
        ``True`` warns when there is none; ``False`` never. Or an RGB (y, x, 3) or grey (y, x) array
        to draw (its pixel coordinates are the spot coordinates).
    image_key
        Image of a SpatialData (default: the section's image).
    coordinate_system
        Coordinate system of a SpatialData in which the image and the spot shapes are placed.
    ncols
        Panels per row.
    cmap
        Colour map of the proportions; spots with a missing (NaN) value are drawn in light grey.
    vmax
        Upper end of the colour scale (default: each panel's maximum).
    spot_size
        Marker area in points^2 (default: from the number of spots).
    alpha
        Opacity of the spots.
    panel_size
        Side of one panel in inches.
    ax
        Axes to draw into: one per cell type (a single Axes for one type), as a list or an array;
        default a new figure.
    show
        Show the figure; by default when it is new (no ``ax``) and the backend is interactive.
    save
        Path to save the figure to; a new figure saved and not shown is closed (the returned Figure
        stays usable).

    Returns
    -------
    The figure; its axes hold one panel per cell type, titled with the type.

    """
    table = get_table(data, table_key)
    name = table_name(data, table, table_key)
    check_obsm_key(
        table, key, where=name, hint="Run lk.tl.decompose on this table first, or pass key= the key it wrote."
    )
    coords = coordinates(table, spatial_key, name)
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
    colours = value_colormap(cmap)
    if isinstance(show_image, np.ndarray):
        background = show_image, None  # drawn in spot coordinates as it is
    else:
        background = section_image(
            data,
            table_key=table_key,
            image_key=image_key,
            coordinate_system=coordinate_system,
            requested=show_image,
        )

    fig, axes = panel_grid(len(cell_types), ncols, ax, size=panel_size, aspect=1.15)
    size = spot_size if spot_size is not None else max(2.0, 2.0e4 / max(len(coords), 1))
    frame = values.set_axis(columns, axis=1)
    for panel, cell_type in zip(axes, cell_types, strict=True):
        if background is not None:
            draw_image(panel, *background)
        sc = scatter_values(
            panel,
            coords,
            frame[cell_type].to_numpy(dtype=float),
            cmap=colours,
            s=size,
            vmin=0.0,
            vmax=vmax,
            alpha=alpha,
            linewidths=0,
        )
        fig.colorbar(sc, ax=panel, fraction=0.046, pad=0.02)
        panel.set_title(cell_type)
        panel.set_aspect("equal")
        if background is not None:  # the image's extent would pull the view away from the spots
            frame_spots(panel, coords)
        elif not panel.yaxis_inverted():
            panel.invert_yaxis()
        panel.set_xticks([])
        panel.set_yticks([])
    finish(fig, show=show, save=save, created=ax is None)
    return fig
