"""Write results into AnnData containers, logging one line per write."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import pandas as pd

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel

#: The undo steps of the writes made inside the innermost :func:`all_or_nothing` block (None outside one).
_JOURNAL: ContextVar[list[Callable[[], None]] | None] = ContextVar("loki_write_journal", default=None)
_ABSENT = object()


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """Undo every ``write_*`` made inside the block when the block raises (an interrupt too), then re-raise.

    A tool writes its results (``.obs`` / ``.obsm`` / ``.layers`` columns and its ``.uns['loki']``
    record) inside one block, so that a failure between two writes leaves the table as it was
    before the call: the entries it replaced come back, the ones it added go. Writes made outside the
    helpers (``sdata.shapes[...]``, transformations) are the caller's to undo. Blocks nest: an inner
    block undoes its own writes when it raises, and hands them to the outer block when it does not.
    """
    journal: list[Callable[[], None]] = []
    token = _JOURNAL.set(journal)
    try:
        yield
    except BaseException:
        for undo in reversed(journal):
            undo()
        raise
    finally:
        _JOURNAL.reset(token)
    outer = _JOURNAL.get()
    if outer is not None:
        outer.extend(journal)


def _remember(mapping, key: str) -> None:
    """Inside an :func:`all_or_nothing` block, note how to put ``mapping[key]`` back as it is now."""
    journal = _JOURNAL.get()
    if journal is None:
        return
    # a copy of an .obs column: a DataFrame may write a new column's values into the old one's memory
    old = (
        mapping[key].copy()
        if key in mapping and isinstance(mapping, pd.DataFrame)
        else mapping.get(key, _ABSENT)
    )

    def undo() -> None:
        if old is _ABSENT:
            if key in mapping:
                del mapping[key]
        else:
            mapping[key] = old

    journal.append(undo)


def _actual(adata) -> None:
    """Inside an :func:`all_or_nothing` block, turn a view into an actual AnnData before its first write.

    anndata does so on the write itself, replacing ``.obs`` / ``.obsm`` / ``.uns``: an undo kept for
    the view's mappings would then put back nothing. A warning says so, as anndata's would.
    """
    if _JOURNAL.get() is None or not getattr(adata, "is_view", False):
        return
    warnings.warn(
        "Writing loki's results into a view of an AnnData: initializing the view as actual "
        "(as anndata does on any write into a view).",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )
    adata._init_as_actual(adata.copy())


#: The longest file name of common file systems, in UTF-8 bytes: zarr stores each key as a folder.
_MAX_NAME_BYTES = 255


def unstorable_reason(name: str, *, column: bool = False) -> str | None:
    """Why h5ad or zarr cannot store ``name`` as a key; None when both can.

    A key of ``.obs``, ``.obsm`` or ``.uns``, or with ``column`` a column of a DataFrame in ``.obsm``.
    """
    if "/" in name:
        return "'/' separates groups in zarr and h5ad"
    if name in ("", ".", ".."):
        return "h5ad and zarr refuse it as a name" if name else "an empty name"
    if column and name == "_index":
        return "anndata keeps '_index' for a DataFrame's index"
    if len(name.encode()) > _MAX_NAME_BYTES:
        return f"longer than {_MAX_NAME_BYTES} bytes, the longest file name of most file systems"
    return None


def write_obsm(adata, key: str, value: Any) -> None:
    """Store ``value`` in ``adata.obsm[key]`` and log it; warn of DataFrame columns zarr cannot store."""
    if isinstance(value, pd.DataFrame):
        unstorable = {str(c): unstorable_reason(str(c), column=True) for c in value.columns}
        unstorable = {c: why for c, why in unstorable.items() if why is not None}
        if unstorable:
            shown = "; ".join(
                f"{c if len(c) <= 40 else c[:40] + '...'!r}: {why}" for c, why in list(unstorable.items())[:5]
            )
            warnings.warn(
                f".obsm[{key!r}] has column names that zarr or h5ad cannot store as keys ({shown}), so "
                "SpatialData.write fails, part way (and anndata's h5ad writer refuses them or warns that it "
                "will). The result is computed: "
                f"rename its columns to write it, e.g. adata.obsm[{key!r}] = adata.obsm[{key!r}].rename("
                "columns=lambda c: c.replace('/', '-')); the labels in .obs and the record keep the names.",
                LokiWarning,
                stacklevel=user_stacklevel(),
            )
    _actual(adata)
    _remember(adata.obsm, key)
    adata.obsm[key] = value
    logger.info("added .obsm[%r]", key)


def _categories(values: Any) -> list | None:
    """The categories of a categorical column, in order; None for other values."""
    dtype = getattr(values, "dtype", None)
    return list(dtype.categories) if isinstance(dtype, pd.CategoricalDtype) else None


def write_obs(adata, key: str, value: Any) -> None:
    """Store ``value`` in ``adata.obs[key]`` and log it.

    The colours scanpy keeps for the column (``.uns[f"{key}_colors"]``, one per category) are removed
    when the categories change: scanpy would paint the new categories with the old ones' colours.
    """
    _actual(adata)
    _remember(adata.obs, key)
    colors = f"{key}_colors"
    stale = colors in adata.uns and _categories(adata.obs.get(key)) != _categories(pd.Series(value))
    adata.obs[key] = value  # first: it makes a view actual (deleting from a view's .uns does nothing)
    logger.info("added .obs[%r]", key)
    if stale:
        _remember(adata.uns, colors)
        del adata.uns[colors]
        logger.info("removed .uns[%r]: the categories of .obs[%r] changed", colors, key)


def write_layer(adata, key: str, value: Any) -> None:
    """Store ``value`` in ``adata.layers[key]`` and log it."""
    _actual(adata)
    _remember(adata.layers, key)
    adata.layers[key] = value
    logger.info("added .layers[%r]", key)


def drop_obsm(adata, key: str, why: str) -> None:
    """Remove ``adata.obsm[key]`` if present (put back by a failing :func:`all_or_nothing` block) and log ``why``."""
    if key not in adata.obsm:
        return
    _actual(adata)
    _remember(adata.obsm, key)
    del adata.obsm[key]
    logger.info("removed .obsm[%r] %s", key, why)


def write_uns(adata, key: str, value: dict[str, Any]) -> None:
    """Store ``value`` in ``adata.uns['loki'][key]`` (writeable types only) and log it.

    A tool's record names it first, ``{"tool": "tl.align", ...}``: :func:`check_result_key` keeps
    another tool from writing its result under the same key.
    """
    _actual(adata)
    _remember(adata.uns, Key.UNS)  # put back whole: the record's mapping when there was none
    records = adata.uns.setdefault(Key.UNS, {})
    _remember(records, key)
    records[key] = value
    logger.info("added .uns[%r][%r]", Key.UNS, key)


def loki_uns(adata) -> Mapping[str, Any]:
    """``adata.uns['loki']``, loki's records, or an empty mapping when there is none."""
    records = adata.uns.get(Key.UNS)
    return records if isinstance(records, Mapping) else {}


def loki_record(adata, key: str) -> Mapping[str, Any] | None:
    """The record ``adata.uns['loki'][key]`` a loki tool wrote for its result ``key``, or None."""
    record = loki_uns(adata).get(key)
    return record if isinstance(record, Mapping) else None
