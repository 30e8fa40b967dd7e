"""Annotation scores / labels of spots drawn over the section's H&E."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from loki._keys import Key
from loki._utils import check_obs_key, check_obsm_key, loki_uns, require_keys
from loki._utils._spatialdata import get_table

from ._common import (
    NA_COLOUR,
    SpotSize,
    as_categories,
    category_colours,
    draw_section,
    finish,
    legend_beside,
    legend_columns,
    marker_size,
    panel_grid,
    panel_title,
    plot_function,
    scatter_spots,
    scatter_values,
    section_spots,
    spots_aspect,
    stored_colours,
    table_name,
    value_colormap,
)
from ._docs import doc_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

_ANNOTATE_HINT = "Run lk.tl.annotate on this table first, or pass key= (label_key=) the keys it wrote."


@plot_function
@doc_params
def annotation(
    data: AnnData | SpatialData,
    *,
    kind: Literal["scores", "label"] = "scores",
    classes: Sequence[str] | None = None,
    key: str = Key.ANNOTATION,
    label_key: str | None = None,
    table_key: str | None = None,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    spatial_key: str = Key.SPATIAL,
    show_image: bool | None = None,
    spot_size: float | None = None,
    cmap: str | Colormap = "coolwarm",
    alpha: float = 0.8,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Heat map of annotation scores per class (or the labels) over the section's H&E.

    Parameters
    ----------
    data
        AnnData or SpatialData annotated by :func:`loki.tl.annotate`.
    kind
        ``"scores"``: one panel per class colouring spots by their score (spots without a score in
        light grey); ``"label"``: one panel with the predicted label of each spot (spots without a
        label in light grey, as "NA"). The label column must hold categories (categorical, strings
        or bools, as scanpy takes them); a numeric column is refused. Its colours are
        ``.uns[f"{{label_key}}_colors"]`` when that holds one per category of the column, taken as
        scanpy's plots store and read them: the i-th colour for the column's i-th category (it is
        read, never written). Without them, scanpy's default palette for that many categories; for
        the label :func:`loki.tl.annotate` wrote, without colours or with those it stored, the
        categories are every class it recorded, in its order, so a class keeps its colour on every
        section annotated with the same classes (a class that labels no spot is listed in the legend).
    classes
        Classes to draw (default: all).
    key, label_key
        ``.obsm`` key of the scores and ``.obs`` column of the labels (default: the column
        :func:`loki.tl.annotate` wrote with ``key``, recorded in ``.uns['loki'][key]``, else ``key``).
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
        {cmap} Used for ``kind="scores"``.
    alpha
        {alpha}
    ncols
        {ncols}
    ax
        Axes to draw into, one per panel (one per class, or one for ``kind="label"``): an Axes for
        one panel, else a list or an array; default a new figure.
    show
        {show}
    save
        {save}

    Returns
    -------
    The figure.
    """
    if kind not in ("scores", "label"):
        raise ValueError(f"kind must be 'scores' or 'label', got {kind!r}.")
    table = get_table(data, table_key)
    name = table_name(data, table, table_key)
    record, fused = _annotate_record(table, key)
    label_key = record.get("label_key", key) if label_key is None else label_key
    if kind == "scores":
        check_obsm_key(table, key, where=name, hint=_ANNOTATE_HINT)
        scores = table.obsm[key]
        if not isinstance(scores, pd.DataFrame):
            raise TypeError(
                f"{name}.obsm[{key!r}] must be a DataFrame of class scores (from lk.tl.annotate)."
            )
        classes = list(scores.columns) if classes is None else list(classes)
        require_keys(scores.columns, classes, f"the classes of {name}.obsm[{key!r}]")
        if not classes:
            raise ValueError(
                f"No classes to plot: pass classes= some of the columns of {name}.obsm[{key!r}] "
                f"({len(scores.columns)} columns), or None for all."
            )
        colours = value_colormap(cmap)
    else:
        check_obs_key(table, label_key, where=name, hint=_ANNOTATE_HINT)
        labels = as_categories(table.obs[label_key], label_key)
        # scanpy's colours are the column's: one per category, in category order
        colours = stored_colours(table, label_key, len(labels.categories))
        if label_key == record.get("label_key", key):  # loki's label, not a column the user named
            every = _with_all_classes(labels, record)
            palette = category_colours(len(every.categories))
            if colours is None or _are_annotates(colours, labels, every, palette):
                labels, colours = every, palette
        if colours is None:
            colours = category_colours(len(labels.categories))
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
    if kind == "scores":
        fig, axes = panel_grid(len(classes), ncols, ax, aspect=spots_aspect(xy))
        for a, cls in zip(axes, classes, strict=True):
            draw_section(a, background, xy)
            values = scores[cls].to_numpy(dtype=np.float64)
            points = scatter_values(a, xy, values, cmap=colours, s=size, alpha=alpha)
            fig.colorbar(points, ax=a, shrink=0.7, label="fused score" if fused else "cosine similarity")
            panel_title(a, str(cls))
    else:
        fig, (a,) = panel_grid(1, 1, ax, size=6.0, fit_text=True)
        draw_section(a, background, xy)
        _draw_labels(a, labels, colours, xy, size=size, alpha=alpha, widen=ax is None)
        a.set_title(label_key)
    finish(fig, show=show, save=save, created=ax is None)
    return fig


def _annotate_record(table: AnnData, key: str) -> tuple[Mapping, bool]:
    """What :func:`loki.tl.annotate` recorded for the scores in ``.obsm[key]``, and whether they are fused.

    Fused scores (``f"{key_added}_fused"``) are min-max normalised sums, not cosine similarities.
    """
    records = loki_uns(table)
    if isinstance(records.get(key), Mapping):
        return records[key], False
    base = records.get(key.removesuffix("_fused"))
    if key.endswith("_fused") and isinstance(base, Mapping) and base.get("fused"):
        return base, True
    return {}, False


def _with_all_classes(categorical: pd.Categorical, record: Mapping) -> pd.Categorical:
    """The labels as a categorical over every class :func:`loki.tl.annotate` recorded, in its order.

    The label column holds only the classes some spot won; colouring by position in the full class
    list gives a class one colour, and the legend one list, on every section annotated with the same
    classes.
    """
    classes = [str(c) for c in record.get("classes", [])]
    if not classes or not set(map(str, categorical.categories)) <= set(classes):
        return categorical
    values = pd.Series(categorical, dtype=object)
    return pd.Categorical(values.where(values.isna(), values.astype(str)), categories=classes)


def _are_annotates(
    colours: np.ndarray, labels: pd.Categorical, every: pd.Categorical, palette: np.ndarray
) -> bool:
    """Whether the stored ``colours`` are those :func:`loki.tl.annotate` stores: the palette over every class.

    The legend then lists every class, as without stored colours; other colours (the user's) are
    the column's alone. Stored colours are hex, so they match to the nearest 8-bit step.
    """
    position = {str(c): i for i, c in enumerate(every.categories)}
    if not all(str(c) in position for c in labels.categories):
        return False
    expected = palette[[position[str(c)] for c in labels.categories]]
    return bool(np.allclose(colours[: len(expected), :3], expected[:, :3], atol=1.0 / 255))


def _draw_labels(
    ax: Axes,
    labels: pd.Categorical,
    colours: np.ndarray,
    xy: np.ndarray,
    *,
    size: SpotSize,
    alpha: float,
    widen: bool,
) -> None:
    for i, cat in enumerate(labels.categories):
        sel = labels.codes == i
        scatter_spots(ax, xy[sel], color=colours[i], s=size, alpha=alpha, label=str(cat))
    missing = labels.codes == -1
    if missing.any():  # last in the legend, as in scanpy; under the labelled spots, over the image
        scatter_spots(ax, xy[missing], color=NA_COLOUR, s=size, alpha=alpha, label="NA", zorder=0.5)
    n = len(labels.categories) + int(missing.any())
    legend_beside(ax, widen=widen, markerscale=2, ncol=legend_columns(n))
