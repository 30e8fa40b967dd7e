"""Plots of Loki Align results: before/after overlays and the stacked side view of paper Fig. 2c."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from loki._keys import Key
from loki._logging import LokiWarning, user_stacklevel
from loki._utils import check_array_finite, loki_record, require_keys
from loki._utils._pca import fit_pca
from loki._utils._sections import stack_sections
from loki._utils._spatialdata import get_table, is_spatialdata

from ._common import (
    category_colours,
    check_spot_size,
    coordinates,
    finish,
    legend_beside,
    legend_columns,
    marker_size,
    panel_grid,
    plot_function,
    scatter_spots,
)
from ._docs import doc_params

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


def _tables(
    data, sections, key: str, library_key: str | None
) -> tuple[list[str], list[AnnData], list[str | None], list[Mapping | None]]:
    """Labels, tables, table keys (None for an AnnData, whose table has no name) and alignment records.

    The sections are labelled as :func:`loki.tl.align_sections` labels them (see :func:`alignment`).
    The sections of one AnnData (``library_key``) are views of its rows, their records those of its
    ``.uns['loki'][key]['sections']``.
    """
    if isinstance(sections, str):  # one section, not its letters
        sections = [sections]
    if is_spatialdata(data) and sections is None:
        sections = _aligned_and_targets(data, key)
    if library_key is None:
        items = stack_sections([data] if isinstance(data, AnnData) else data, sections, who="lk.pl.alignment")
        tables = [get_table(obj, table_key) for _, obj, table_key in items]
        records = [loki_record(t, key) for t in tables]
    else:
        items = stack_sections(data, sections, who="lk.pl.alignment", library_key=library_key)
        stack = loki_record(data, key) or {}
        recorded = stack.get("sections") if stack.get("library_key") == library_key else None
        recorded = recorded if isinstance(recorded, Mapping) else {}
        if sections is None and recorded:  # the sections the stack aligned (the others have no coordinates)
            items = [item for item in items if item[0] in recorded]
        left_out = [label for label, _, _ in items if recorded and label not in recorded]
        if left_out:
            raise ValueError(
                f"sections {left_out} were left out of the stack that adata.uns['loki'][{key!r}] records "
                f"(its sections: {list(recorded)}): their rows of .obsm[{key!r}] are NaN. Leave them out of "
                "sections=, or align them."
            )
        tables = [view for _, view, _ in items]
        records = [recorded.get(label) for label, _, _ in items]
    return [label for label, _, _ in items], tables, [k for _, _, k in items], records


def _recorded_target(table: AnnData, key: str) -> str | None:
    """The target table key that ``.uns['loki'][key]`` of an aligned table records (None if none)."""
    target = (loki_record(table, key) or {}).get("target")
    return target if isinstance(target, str) else None


def _aligned_and_targets(sdata: SpatialData, key: str) -> list[str]:
    """The tables with ``.obsm[key]`` and the targets they record, in ``sdata.tables`` order.

    All tables when none is aligned, so that the missing key is reported.
    """
    aligned = [k for k, t in sdata.tables.items() if key in t.obsm]
    if not aligned:
        return list(sdata.tables.keys())
    targets = {_recorded_target(sdata.tables[k], key) for k in aligned}
    return [k for k in sdata.tables.keys() if k in aligned or k in targets]


def _warn_unaligned(names, tables, table_keys, key: str, spatial_key: str) -> None:
    """Warn about sections drawn at ``spatial_key`` in the "after" panel that are no recorded target."""
    targets = {_recorded_target(t, key) for t in tables if key in t.obsm}
    unaligned = [
        name
        for name, t, table_key in zip(names, tables, table_keys, strict=True)
        if key not in t.obsm and table_key is not None and table_key not in targets
    ]
    if unaligned:
        recorded = ", ".join(sorted(map(repr, targets - {None}))) or "none"
        warnings.warn(
            f"Section(s) {', '.join(map(repr, unaligned))} have no .obsm[{key!r}] and are not the target "
            f"of an aligned section (recorded targets: {recorded}); the 'after' panel draws them at "
            f".obsm[{spatial_key!r}], unaligned. Align them first or leave them out of sections=.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


@plot_function
@doc_params
def alignment(
    data: SpatialData | AnnData | Mapping[str, AnnData | SpatialData] | Sequence[AnnData | SpatialData],
    *,
    sections: Sequence[str] | None = None,
    library_key: str | None = None,
    key: str = Key.ALIGNED,
    spatial_key: str = Key.SPATIAL,
    use: str | Sequence[str] | None = None,
    kind: str = "overlay",
    spot_size: float | None = 8.0,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Plot sections before and after alignment.

    Parameters
    ----------
    data
        The sections, as :func:`loki.tl.align_sections` takes them, each named in the legend (and
        the levels of ``kind="stack"``) by its label:

        - a SpatialData holding every section as a table: labelled by their table keys;
        - a dict ``{{label: section}}`` of AnnData / SpatialData (one table each), in stack order:
          labelled by its keys;
        - a list of them (or one AnnData), in stack order: labelled by ``sections=`` when given,
          else, as :func:`loki.tl.align_sections` labels them, by their table keys when every
          section is a SpatialData and no two share a key, else ``section0, section1, ...``;
        - one AnnData holding every section's rows, with ``library_key=``: labelled by the values of
          that ``.obs`` column.
    sections
        Which sections to draw, in stack order: table keys (SpatialData), keys (dict) or values of
        ``.obs[library_key]``; for a list, one label (a string) per section. Each section once.
        Default for a SpatialData: the tables with ``.obsm[key]`` and the targets their
        ``.uns['loki'][key]`` records, in ``sdata.tables`` order (tables never aligned are left out);
        with ``library_key``, the sections that the AnnData's ``.uns['loki'][key]`` records (all when
        it records none), in the column's order; for a dict, all its keys.
    library_key
        ``.obs`` column of one AnnData that labels each row's section, as
        :func:`loki.tl.align_sections` takes it: the sections are drawn as a dict of them would be,
        each at the height (``kind="stack"``) that the AnnData's ``.uns['loki'][key]`` records for it.
    key
        ``.obsm`` key of the aligned coordinates (the target, which has none unless written by
        :func:`loki.tl.align_sections`, is drawn at ``spatial_key``). A section without it that no
        aligned section records as its target is drawn unaligned in the "after" panel, with a
        warning naming it (a section given as an AnnData, whose table has no name, is not checked).
    spatial_key
        ``.obsm`` key of the original coordinates.
    use
        ``.obsm`` key of an embedding present in every section, or one key per section (e.g.
        ``["loki_text", "loki_image"]`` for an H&E section aligned onto an ST one): points are
        coloured by the top three principal components of the embeddings, pooled, mapped to RGB
        (paper Fig. 2c); default one colour per section (scanpy's default palette for that many).
    kind
        ``"overlay"``: two panels, before and after, sections overlaid; ``"stack"``: side view of the
        sections stacked along z (x horizontal, z vertical), before and after.
    spot_size
        Marker area of each spot in points^2, a finite number > 0; ``None``: shrinks as the number
        of spots drawn (all sections together) grows, as in the other spatial plots.
    ax
        Two axes to draw into (before, after), as a list or an array; default a new figure.
    show
        {show}
    save
        {save}

    Returns
    -------
    The matplotlib Figure.
    """
    if kind not in ("overlay", "stack"):
        raise ValueError(f"kind must be 'overlay' or 'stack', got {kind!r}.")
    check_spot_size(spot_size)
    names, tables, table_keys, records = _tables(data, sections, key, library_key)
    if len(tables) < 1:
        raise ValueError("No sections to plot.")
    where = [f"section {name!r} adata" for name in names]
    before = [coordinates(t, spatial_key, w) for t, w in zip(tables, where, strict=True)]
    try:
        require_keys({k: None for t in tables for k in t.obsm}, key, ".obsm of any section")
    except KeyError as err:
        raise KeyError(
            f"{err.args[0]} Run lk.tl.align or lk.tl.align_sections first, or pass key= the aligned "
            "coordinates' .obsm key."
        ) from None
    after = [
        coordinates(t, key, w) if key in t.obsm else xy
        for t, w, xy in zip(tables, where, before, strict=True)
    ]
    _warn_unaligned(names, tables, table_keys, key, spatial_key)
    if use is not None:
        keys = [use] * len(tables) if isinstance(use, str) else list(use)
        if len(keys) != len(tables):
            raise ValueError(
                f"use names {len(keys)} embedding key(s) for {len(tables)} sections; give one or one each."
            )
        for name, t, k, w in zip(names, tables, keys, where, strict=True):
            require_keys(t.obsm, k, f"{w}.obsm")
            check_array_finite(t.obsm[k], f"section {name!r} .obsm[{k!r}]")
        colours = embedding_rgb([t.obsm[k] for t, k in zip(tables, keys, strict=True)])
    else:
        palette = category_colours(len(tables))[:, :3]
        colours = [np.tile(rgb, (t.n_obs, 1)) for rgb, t in zip(palette, tables, strict=True)]

    if kind == "overlay":
        fig, axes = panel_grid(2, 2, ax, size=5.0, fit_text=True)
    else:
        fig, axes = panel_grid(2, 2, ax, size=4.0, aspect=1.25, fit_text=True)
    heights = [float((record or {}).get("z", z)) for z, record in enumerate(records)]
    size = marker_size(spot_size, sum(t.n_obs for t in tables))
    for panel, title, points in zip(axes, ("before", "after"), (before, after), strict=True):
        for name, c, xy, zpos in zip(names, colours, points, heights, strict=True):
            if kind == "overlay":
                scatter_spots(panel, xy, s=size, c=c, label=name, alpha=0.7, linewidths=0)
            else:
                scatter_spots(
                    panel,
                    np.column_stack([xy[:, 0], np.full(len(xy), zpos)]),
                    s=size,
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
            # once, on the left panel: the right one's level names would sit on it
            panel.set_ylabel("section (z)" if title == "before" else "")
            panel.set_yticks(heights, labels=names)  # each level named, not fractional z ticks
    if use is None:  # beside the panel, as in the other lk.pl plots: inside, it hides spots of many sections
        handles, labels = axes[1].get_legend_handles_labels()
        if kind == "stack":  # top to bottom, as the levels are drawn
            order = np.argsort(-np.asarray(heights), kind="stable")
            handles, labels = [handles[i] for i in order], [labels[i] for i in order]
        legend_beside(
            axes[1],
            handles,
            labels,
            widen=ax is None,
            fontsize="small",
            markerscale=2,
            ncol=legend_columns(len(names)),
        )
    finish(fig, show=show, save=save, created=ax is None)
    return fig
