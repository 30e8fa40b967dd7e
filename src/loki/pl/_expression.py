"""Measured vs predicted spatial expression, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._utils import require_keys
from loki.metrics import pearson

from ._annotation import _draw_section, finish, panel_grid, section_background, spot_xy

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


def _column(adata: AnnData, gene: str, layer: str | None) -> np.ndarray:
    x = adata.X if layer is None else adata.layers[layer]
    col = x[:, adata.var_names.get_loc(gene)]
    return np.asarray(col.toarray() if sparse.issparse(col) else col, dtype=np.float64).ravel()


def expression(
    data: AnnData | SpatialData,
    genes: str | Sequence[str],
    *,
    predicted: AnnData | None = None,
    layer: str | None = None,
    layer_predicted: str = Key.PREDICTED,
    table_key: str | None = None,
    image_key: str | None = None,
    basis: str = Key.SPATIAL,
    show_image: bool = False,
    spot_size: float | None = None,
    cmap: str = "viridis",
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Measured (left) and predicted (right) expression of each gene on the spots, on one colour scale.

    Parameters
    ----------
    data
        The section (AnnData or SpatialData) with measured expression in ``.X`` / ``.layers[layer]``.
    genes
        Gene(s) to draw, one row each.
    predicted
        AnnData returned by :func:`loki.tl.predict_expression` (same spots); default: the
        ``layers[layer_predicted]`` of the section itself (``output="layer"``).
    layer
        Layer of the measured expression (``.X`` when None).
    layer_predicted
        Layer holding the prediction when ``predicted`` is None.
    table_key, image_key
        Table and image of a SpatialData.
    basis
        ``.obsm`` key of the spot coordinates.
    show_image
        Draw the H&E underneath (SpatialData only).
    spot_size, cmap
        Marker size and colour map.
    show, save
        Show the figure / save it to this path.

    Returns
    -------
    The figure; predicted panels are titled with the Pearson correlation to the measurement.

    """
    from loki._utils._spatialdata import get_table

    table = get_table(data, table_key)
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("Pass at least one gene.")
    require_keys(table.var_names, genes, "adata.var_names")
    if layer is not None:
        require_keys(table.layers, layer, "adata.layers")
    if predicted is None:
        require_keys(table.layers, layer_predicted, "adata.layers")
        pred_ad, pred_layer = table, layer_predicted
    else:
        require_keys(predicted.var_names, genes, "predicted.var_names")
        if not predicted.obs_names.equals(table.obs_names):
            raise ValueError("predicted must hold the same spots, in the same order, as the section.")
        pred_ad, pred_layer = predicted, None
    rgb, to_display = section_background(data, table_key, image_key) if show_image else (None, np.eye(3))
    xy = spot_xy(table, basis, to_display)
    size = spot_size if spot_size is not None else max(4.0, 8000.0 / max(table.n_obs, 1))
    fig, axes = panel_grid(2 * len(genes), 2, None)
    for i, gene in enumerate(genes):
        measured, pred = _column(table, gene, layer), _column(pred_ad, gene, pred_layer)
        lo, hi = min(measured.min(), pred.min()), max(measured.max(), pred.max())
        pcc = f"{pearson(measured, pred):.2f}" if len(measured) > 1 else "n/a, one spot"
        for a, values, title in (
            (axes[2 * i], measured, f"{gene} measured"),
            (axes[2 * i + 1], pred, f"{gene} predicted (PCC {pcc})"),
        ):
            _draw_section(a, rgb, xy)
            points = a.scatter(xy[:, 0], xy[:, 1], c=values, s=size, cmap=cmap, vmin=lo, vmax=hi)
            a.set_title(title, fontsize=9)
        fig.colorbar(points, ax=axes[2 * i : 2 * i + 2], shrink=0.7)
    finish(fig, show, save)
    return fig
