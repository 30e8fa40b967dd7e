"""Measured vs predicted spatial expression, side by side (or the measured expression alone)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._utils import is_real, require_keys
from loki._utils._spatialdata import get_table
from loki.metrics import pearson

from ._common import (
    draw_section,
    finish,
    marker_size,
    panel_grid,
    panel_title,
    plot_function,
    scatter_values,
    section_spots,
    spots_aspect,
    table_name,
    value_colormap,
)
from ._docs import doc_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from spatialdata import SpatialData


def _column(adata: AnnData, gene: str, layer: str | None) -> np.ndarray:
    x = adata.X if layer is None else adata.layers[layer]
    col = x[:, adata.var_names.get_loc(gene)]
    return np.asarray(col.toarray() if sparse.issparse(col) else col, dtype=np.float64).ravel()


@plot_function
@doc_params
def expression(
    data: AnnData | SpatialData,
    genes: str | Sequence[str],
    *,
    predicted: AnnData | None = None,
    layer: str | None = None,
    layer_predicted: str | None = Key.PREDICTED,
    table_key: str | None = None,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    spatial_key: str = Key.SPATIAL,
    show_image: bool | None = None,
    spot_size: float | None = None,
    cmap: str | Colormap = "viridis",
    vmin: float | str | None = None,
    vmax: float | str | None = None,
    scale: Literal["gene", "panel"] = "gene",
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Measured (left) and predicted (right) expression of each gene on the spots, on one colour scale.

    A prediction (a weighted average of reference spots) usually spans a narrower range than the
    measurement: ``scale="panel"`` gives each panel its own colour scale, and ``vmax="p99"`` caps a
    scale at a percentile, as in scanpy.

    With ``layer_predicted=None`` and no ``predicted``, the measured expression is drawn alone, one
    panel per gene (four per row), e.g. a source section's genes at its aligned positions. A table
    without genes (the tiles of an H&E image) shows the ``predicted`` expression alone, the same way.

    Parameters
    ----------
    data
        The section (AnnData or SpatialData) with measured expression in ``.X`` / ``.layers[layer]``
        (or no genes at all, with ``predicted``).
    genes
        Gene(s) to draw, one row each.
    predicted
        AnnData returned by :func:`loki.tl.predict_expression` (the section's spots, matched by
        ``obs_names`` whatever their order); default: the
        ``layers[layer_predicted]`` of the section itself (``output="layer"``).
    layer
        Layer of the measured expression (``.X`` when None).
    layer_predicted
        Layer holding the prediction when ``predicted`` is None; None draws no prediction.
    table_key
        {table_key}
    image_key
        {image_key}
    coordinate_system
        {coordinate_system}
    spatial_key
        {spatial_key}
    show_image
        {show_image}
    spot_size
        {spot_size}
    cmap
        {cmap}
    vmin, vmax
        Limits of each colour scale: a number, a percentile of the scale's finite values written
        ``"p1"`` ... ``"p99.5"`` (as scanpy takes them), or None for their minimum / maximum. A
        scale whose vmin would lie above its vmax (``vmin=5`` over values up to 1) raises a
        ``ValueError`` before anything is drawn.
    scale
        ``"gene"``: one colour scale (and bar) for a gene's measured and predicted panels;
        ``"panel"``: one per panel.
    ax
        ``2 * len(genes)`` axes to draw into (measured, predicted for each gene in turn), or
        ``len(genes)`` when one side only is drawn (no prediction, or a table without genes), as a
        list or an array (an Axes for one panel); default a new figure.
    show
        {show}
    save
        {save}

    Returns
    -------
    The figure; predicted panels are titled with the Pearson correlation to the measurement, over
    the spots where both values are finite ("n/a" with the reason when there are fewer than two such
    spots or either side is constant over them).
    """
    table = get_table(data, table_key)
    name = table_name(data, table, table_key)
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("Pass at least one gene.")
    measured_too = table.n_vars > 0  # tiles of an H&E image have a prediction only
    if measured_too:
        require_keys(table.var_names, genes, f"{name}.var_names")
        _check_unique(table.var_names, genes, f"{name}.var_names")
    elif predicted is None:
        raise ValueError(
            f"{name} has no genes (e.g. the tiles of an H&E image); pass predicted= the AnnData "
            "lk.tl.predict_expression returned for it to draw the prediction alone."
        )
    if layer is not None:
        require_keys(table.layers, layer, f"{name}.layers")
    if predicted is None and layer_predicted is None:
        pred_ad, pred_layer = None, None
    elif predicted is None:
        require_keys(
            table.layers,
            layer_predicted,
            f"{name}.layers",
            hint="Run lk.tl.predict_expression(..., output='layer') on this table first, pass "
            "predicted= the AnnData it returns (output='anndata'), or pass layer_predicted=None to "
            "draw the measured expression alone.",
        )
        pred_ad, pred_layer = table, layer_predicted
    else:
        require_keys(predicted.var_names, genes, "predicted.var_names")
        _check_unique(predicted.var_names, genes, "predicted.var_names")
        pred_ad, pred_layer = _same_spots(predicted, table, name), None
    if scale not in ("gene", "panel"):
        raise ValueError(f"scale must be 'gene' or 'panel', got {scale!r}.")
    quantiles = [_percentile(vmin, "vmin"), _percentile(vmax, "vmax")]  # checked before anything is drawn
    numbers = [v for v, q in zip((vmin, vmax), quantiles, strict=True) if v is not None and q is None]
    ranks = [q for q in quantiles if q is not None]
    if (len(numbers) == 2 and numbers[0] >= numbers[1]) or (len(ranks) == 2 and ranks[0] >= ranks[1]):
        raise ValueError(f"vmin must be below vmax, got vmin={vmin!r}, vmax={vmax!r}.")
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
    size = marker_size(spot_size, table.n_obs, xy=xy)
    per_gene = 2 if measured_too and pred_ad is not None else 1
    # every gene's values and colour scales first: limits that cross (vmin=5 over values up to 1) are
    # refused before a figure is made
    drawn = []
    for gene in genes:
        measured = _column(table, gene, layer) if measured_too else None
        panels = [] if measured is None else [(measured, f"{gene} measured")]
        if pred_ad is not None:
            pred = _column(pred_ad, gene, pred_layer)
            pcc = "" if measured is None else f" (PCC {_pcc_text(measured, pred)})"
            panels.append((pred, f"{gene} predicted{pcc}"))
        if scale == "gene":
            groups = [(list(range(len(panels))), _limits([v for v, _ in panels], vmin, vmax, gene))]
        else:
            groups = [([k], _limits([v], vmin, vmax, title)) for k, (v, title) in enumerate(panels)]
        drawn.append((panels, groups))
    fig, axes = panel_grid(per_gene * len(genes), 2 if per_gene == 2 else 4, ax, aspect=spots_aspect(xy))
    for i, (panels, groups) in enumerate(drawn):
        gene_axes = axes[per_gene * i : per_gene * (i + 1)]
        for members, (lo, hi) in groups:
            for k in members:
                draw_section(gene_axes[k], background, xy)
                points = scatter_values(
                    gene_axes[k], xy, panels[k][0], cmap=colours, s=size, vmin=lo, vmax=hi
                )
            fig.colorbar(points, ax=[gene_axes[k] for k in members], shrink=0.7)
        for a, (_, title) in zip(gene_axes, panels, strict=True):  # wrapped to the width the colour bar left
            panel_title(a, title, fontsize=9)
    finish(fig, show=show, save=save, created=ax is None)
    return fig


def _same_spots(predicted: AnnData, table: AnnData, name: str) -> AnnData:
    """``predicted`` with its spots in the section's order, matched by name (obs_names)."""
    mine, theirs = table.obs_names, predicted.obs_names
    if theirs.equals(mine):
        return predicted
    if (
        not (mine.has_duplicates or theirs.has_duplicates)
        and len(mine) == len(theirs)
        and mine.isin(theirs).all()
    ):
        return predicted[mine]  # the same spots in another order (e.g. sorted): matched by name
    missing, extra = mine.difference(theirs), theirs.difference(mine)
    if len(missing) or len(extra):
        example = f" (e.g. {missing[0]!r})" if len(missing) else ""
        detail = (
            f"{len(missing)} of the section's {len(mine)} spots are not in predicted{example} and "
            f"{len(extra)} of predicted's {len(theirs)} are not in the section"
        )
    else:
        detail = "spot names repeat, so they cannot be matched"
    raise ValueError(
        f"predicted must hold the same spots as {name}, matched by obs_names: {detail}. Predict the section's "
        "own spots (lk.tl.predict_expression(section, ...)), or subset the section to the predicted spots."
    )


def _check_unique(var_names, genes: Sequence[str], where: str) -> None:
    """Refuse genes that name several columns: which one to draw is not known."""
    repeated = [g for g in dict.fromkeys(genes) if int((var_names == g).sum()) > 1]
    if repeated:
        raise ValueError(
            f"{where} holds {repeated[0]!r} more than once ({len(repeated)} of the genes drawn are repeated); "
            "call .var_names_make_unique() first."
        )


def _percentile(value: float | str | None, bound: str) -> float | None:
    """The percentile a ``"pN"`` bound names (None for a number or None); other values are refused."""
    if value is None or (is_real(value) and np.isfinite(value)):
        return None
    if isinstance(value, str) and value.startswith("p"):
        try:
            q = float(value[1:])
        except ValueError:
            q = float("nan")
        if 0 <= q <= 100:
            return q
    raise ValueError(f"{bound} must be a number, a percentile such as 'p99' (0-100), or None; got {value!r}.")


def _limits(arrays: list[np.ndarray], vmin, vmax, what: str) -> tuple[float | None, float | None]:
    """A colour scale's limits over the finite values of its panels (None where there are none).

    Limits that cross (a number above the values' maximum, say) raise a ValueError naming ``what``.
    """
    values = np.concatenate(arrays)
    values = values[np.isfinite(values)]
    limits = []
    for value, extreme in ((vmin, np.min), (vmax, np.max)):
        q = _percentile(value, "")
        if q is not None:
            value = float(np.percentile(values, q)) if values.size else None
        elif value is None:
            value = float(extreme(values)) if values.size else None
        limits.append(None if value is None else float(value))
    lo, hi = limits
    if lo is not None and hi is not None and lo > hi:
        span = f"{values.min():g} to {values.max():g}" if values.size else "none finite"
        raise ValueError(
            f"The colour scale of {what} would run from {lo:g} (vmin={vmin!r}) down to {hi:g} "
            f"(vmax={vmax!r}); its values are {span}. Pass limits that keep vmin below vmax."
        )
    return lo, hi


def _pcc_text(measured: np.ndarray, pred: np.ndarray) -> str:
    if len(measured) < 2:
        return "n/a, one spot"
    both = np.isfinite(measured) & np.isfinite(pred)
    if both.sum() < 2:
        return "n/a, fewer than two finite pairs"
    if np.ptp(measured[both]) == 0 or np.ptp(pred[both]) == 0:
        return "n/a, constant"
    return f"{pearson(measured[both], pred[both]):.2f}"
