"""Retrieval gallery: each query patch beside the patches paired with its top hits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from loki._utils import check_int, require_keys

from ._common import check_panel_size, finish, panel_grid, plot_function
from ._docs import doc_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_COLUMNS = ("query_index", "rank", "bank_index", "score")


def _as_hwc(images, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"{what} must be n x h x w x 3 (or n x 3 x h x w) images, got shape {arr.shape}.")
    if arr.shape[-1] not in (3, 4) and arr.shape[1] in (3, 4):
        arr = np.moveaxis(arr, 1, -1)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(
            f"{what} must hold numbers (uint8 0-255 or floats in [0, 1]), got dtype {arr.dtype}."
        )
    return arr[..., :3]


def _check_range(images: np.ndarray, what: str) -> None:
    """Refuse the patches to draw when imshow would clip them: floats in 0-255 would be drawn white."""
    top = 1.0 if np.issubdtype(images.dtype, np.floating) else 255
    lo, hi = (np.nanmin(images), np.nanmax(images)) if images.size else (0, 0)
    if lo < 0 or hi > top:
        raise ValueError(
            f"{what} hold values in [{lo}, {hi}], outside [0, {top}] for {images.dtype} images; pass "
            "uint8 (0-255) or floats in [0, 1] (e.g. divide 0-255 floats by 255)."
        )


def _positions(hits: pd.DataFrame, queries) -> list[int]:
    """Query positions of ``queries``: integer positions as they are, names looked up in ``hits["query"]``."""
    queries = [queries] if isinstance(queries, str) or np.ndim(queries) == 0 else list(queries)
    out, unknown = [], []
    for q in queries:
        if isinstance(q, str):
            if "query" not in hits.columns:
                raise KeyError(
                    f"Query {q!r} is a name, but hits hold no 'query' column; pass query positions."
                )
            rows = hits.loc[hits["query"] == q, "query_index"].unique()
            if len(rows) > 1:
                raise ValueError(
                    f"Query name {q!r} names {len(rows)} queries (positions {rows[:5].tolist()}); pass positions."
                )
            if len(rows) == 0:
                unknown.append(q)
            else:
                out.append(int(rows[0]))
        elif (
            isinstance(q, int | np.integer | float | np.floating)
            and not isinstance(q, bool | np.bool_)
            and float(q).is_integer()
        ):
            out.append(int(q))  # a position (an integral float, e.g. from a float array, too)
        else:
            raise ValueError(
                f"queries must be query positions (integers) or names in hits['query'], got {q!r}."
            )
    if unknown:
        raise ValueError(
            f"Queries {unknown[:5]} are not named in hits['query'] (e.g. {list(pd.unique(hits['query'])[:3])})."
        )
    return out


@plot_function
@doc_params
def retrieval_gallery(
    hits: pd.DataFrame,
    query_images: np.ndarray,
    bank_images: np.ndarray,
    *,
    queries: Sequence[int] | None = None,
    n_queries: int = 4,
    n_hits: int = 5,
    truth: Sequence[int] | None = None,
    panel_size: float = 1.8,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Draw query patches (first column) beside the patches paired with their top retrieved transcriptomes.

    Parameters
    ----------
    hits
        Output of :func:`loki.tl.retrieve` (needs ``query_index``, ``rank``, ``bank_index``, ``score``).
    query_images
        Patches of the queries, indexed by ``query_index``: n x h x w x 3 (or n x 3 x h x w), uint8
        0-255 or floats in [0, 1]; patches to draw outside that range are refused (matplotlib would
        clip them, e.g. draw 0-255 floats white).
    bank_images
        Patches paired with the bank transcriptomes, indexed by ``bank_index``.
    queries
        Queries to show: positions (``query_index``) or names (``query``, e.g. spot barcodes); default
        the first ``n_queries`` in ``hits``.
    n_queries, n_hits
        How many queries (rows) and hits per query (columns); at least one each.
    truth
        Bank position of each query's own pair (indexed by query position); a hit that is the true
        pair gets a green frame.
    panel_size
        {panel_size} A panel is square and holds one patch.
    ax
        Axes to draw into, one per patch: a rows x columns grid (one row per query; the query, then
        ``n_hits`` hits), or the same axes flattened row by row; default a new figure.
    show
        {show}
    save
        {save}

    Returns
    -------
    The figure; each hit's axes title reads ``#rank score``.
    """
    require_keys(hits.columns, _COLUMNS, "hits.columns")
    check_int(n_queries, "n_queries")
    check_int(n_hits, "n_hits")
    check_panel_size(panel_size)
    qimg, bimg = _as_hwc(query_images, "query_images"), _as_hwc(bank_images, "bank_images")
    queries = (
        list(pd.unique(hits["query_index"]))[:n_queries] if queries is None else _positions(hits, queries)
    )
    if not queries:
        raise ValueError("No query to draw.")
    bad = [q for q in queries if not 0 <= q < len(qimg)]
    if bad:
        raise ValueError(f"Query positions {bad} are outside query_images ({len(qimg)} images).")
    bank = hits["bank_index"].to_numpy()
    outside = sorted({int(b) for b in bank[(bank < 0) | (bank >= len(bimg))]})
    if outside:
        raise ValueError(
            f"hits refer to bank rows {outside[:10]} outside bank_images ({len(bimg)} images, rows 0 to "
            f"{len(bimg) - 1})."
        )
    if truth is not None and len(truth) <= max(queries):
        raise ValueError(
            f"truth holds {len(truth)} entries, but query {max(queries)} is drawn; give one bank row per query."
        )
    tops = [hits[hits["query_index"] == q].sort_values("rank").head(n_hits) for q in queries]
    empty = [q for q, top in zip(queries, tops, strict=True) if top.empty]
    if empty:
        raise ValueError(f"hits hold no row for queries {empty}.")
    _check_range(qimg[queries], "query_images")
    _check_range(
        bimg[np.unique(np.concatenate([top["bank_index"].to_numpy(int) for top in tops]))], "bank_images"
    )
    fig, flat = panel_grid(len(queries) * (n_hits + 1), n_hits + 1, ax, size=panel_size)
    axes = np.reshape(np.asarray(flat, dtype=object), (len(queries), n_hits + 1))
    for row, q, top in zip(axes, queries, tops, strict=True):
        row[0].imshow(qimg[q])
        row[0].set_title(f"query {q}", fontsize=8)
        for a, (_, h) in zip(row[1:], top.iterrows(), strict=False):
            a.imshow(bimg[int(h["bank_index"])])
            a.set_title(f"#{int(h['rank'])} {h['score']:.3f}", fontsize=8)
            if truth is not None and int(truth[q]) == int(h["bank_index"]):
                for spine in a.spines.values():
                    spine.set_edgecolor("green")
                    spine.set_linewidth(3)
        for a in row:
            a.set_xticks([])
            a.set_yticks([])
    finish(fig, show=show, save=save, created=ax is None)
    return fig
