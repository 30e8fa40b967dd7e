"""A stack of sections as :func:`loki.tl.align_sections` and :func:`loki.pl.alignment` take it.

One parser for both, so that a stack is labelled, and its mistakes are named, alike wherever it is
given: a SpatialData holding every section as a table, a dict ``{label: section}``, a list of
sections (an AnnData or a SpatialData of one table each), or one AnnData whose ``.obs[library_key]``
labels each row's section (squidpy's ``library_key``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._spatialdata import is_spatialdata
from ._validation import require_keys


def stack_sections(
    data: Any, sections: Sequence[str] | None, *, who: str, library_key: str | None = None
) -> list[tuple[str, Any, str | None]]:
    """The sections of a stack in stack order, each as ``(label, object, table key)``.

    Parameters
    ----------
    data
        A SpatialData holding every section as a table, labelled by the table keys; a dict
        ``{label: section}``, labelled by its keys; or a list of sections, labelled by ``sections``
        when given, else by their table keys when every section is a SpatialData and no two share a
        key, else ``section0, section1, ...``. Each section of a dict or list is an AnnData or a
        SpatialData of one table. A single AnnData is refused without ``library_key`` (a caller that
        takes one section makes it a list first).
    sections
        Table keys (SpatialData), keys (dict) or labels (``library_key``) in stack order, default all
        in their order; for a list, one label (a non-empty string) per section. Each once; a single
        string is refused (a caller that takes one section as a string makes it a list first).
    who
        The caller, as messages name it (e.g. ``"lk.tl.align_sections"``).
    library_key
        ``.obs`` column of an AnnData ``data`` that labels each row's section: each section is a view
        of its rows, labelled as :func:`library_sections` labels it. Only for one AnnData.

    Returns
    -------
    ``(label, object, table key)`` for each section: for a SpatialData of several sections the
    object is ``data`` and the key its table's, for a SpatialData of one table that table's key,
    for an AnnData (whose table has no key) None.
    """
    if library_key is not None:
        return [
            (label, data[rows], None) for label, rows in library_sections(data, library_key, sections, who)
        ]
    if is_spatialdata(data):
        _refuse_one_key(
            sections, "table keys in stack order", f"The SpatialData holds {list(data.tables.keys())}."
        )
        labels = list(sections) if sections is not None else list(data.tables.keys())
        _refuse_repeated(labels)
        require_keys(data.tables, labels, "sdata.tables")
        return [(label, data, label) for label in labels]
    if isinstance(data, Mapping):
        given = list(data.keys())
        odd = [label for label in given if not isinstance(label, str) or not label]
        if odd:
            raise ValueError(
                f"a dict given to {who} maps labels (strings) to sections; {odd[0]!r} is not a label "
                f"(its keys: {given!r})."
            )
        _refuse_one_key(sections, "the dict's keys in stack order", f"The dict holds {given}.")
        labels = list(sections) if sections is not None else given
        _refuse_repeated(labels)
        require_keys(data, labels, "the dict of sections")
        objs = [data[label] for label in labels]
        _one_table_each(labels, objs, "dict", who)
        return [(label, obj, _only_table(obj)) for label, obj in zip(labels, objs, strict=True)]
    if isinstance(data, AnnData | str):  # list() would make an AnnData's spots, a path's letters sections
        raise TypeError(
            f"{who} takes a stack of sections: a SpatialData holding them as tables, a dict {{label: section}} "
            f"or a list of sections (AnnData / SpatialData of one table each), got one {type(data).__name__}."
            + (_split_hint(data) if isinstance(data, AnnData) else "")
        )
    objs = list(data)
    _one_table_each([f"section{i}" for i in range(len(objs))], objs, "list", who)
    keys = [_only_table(obj) for obj in objs]
    if sections is not None:
        _refuse_one_key(sections, "labels, one for each section", f"The list holds {len(objs)} sections.")
        labels = list(sections)
        odd = [label for label in labels if not isinstance(label, str) or not label]
        if len(labels) != len(objs) or odd:
            wrong = (
                f"sections gives {len(labels)} label(s) for {len(objs)} sections"
                if len(labels) != len(objs)
                else f"sections holds {odd[0]!r}, not a label"
            )
            raise ValueError(
                f"{wrong}; give one label (a string) for each of the {len(objs)} sections, got {labels!r}."
            )
        _refuse_repeated(labels)
    elif None not in keys and len(set(keys)) == len(keys):
        labels = list(keys)
    else:
        labels = [f"section{i}" for i in range(len(objs))]
    return list(zip(labels, objs, keys, strict=True))


def library_sections(
    adata: Any, library_key: str, sections: Sequence[str] | None, who: str
) -> list[tuple[str, np.ndarray]]:
    """The sections of one AnnData, labelled by ``.obs[library_key]``, each as ``(label, row mask)``.

    A section's label is its value of the column as a string; the stack order is the column's
    categories (those with rows) for a categorical column, else the order in which the values first
    appear, or ``sections`` (labels, each once) when given. A row without a value (NaN) is refused.
    """
    if not isinstance(adata, AnnData):
        kind = (
            "a SpatialData (its tables are the sections)"
            if is_spatialdata(adata)
            else f"a {type(adata).__name__}"
        )
        raise TypeError(
            f"library_key= names the .obs column that labels the sections kept in one AnnData; {who} got "
            f"{kind}. Give a SpatialData, a dict or a list of sections without library_key."
        )
    if not isinstance(library_key, str):
        raise TypeError(f"library_key must be the name of an .obs column, got {library_key!r}.")
    require_keys(adata.obs, library_key, "adata.obs")
    column = adata.obs[library_key]
    missing = int(column.isna().sum())
    if missing:
        raise ValueError(
            f"adata.obs[{library_key!r}] labels no section for {missing} of {adata.n_obs} rows (NaN); give "
            "each row its section's label, or drop those rows first."
        )
    if isinstance(column.dtype, pd.CategoricalDtype):
        values = list(column.cat.remove_unused_categories().cat.categories)
    else:
        values = list(pd.unique(column))
    labels = [str(v) for v in values]
    if len(set(labels)) < len(labels):  # e.g. 1 and "1" in one object column
        raise ValueError(
            f"adata.obs[{library_key!r}] holds distinct values that read alike as labels ({values!r}); "
            "give each section one label."
        )
    masks = dict(zip(labels, (np.asarray(column == v) for v in values), strict=True))
    if sections is None:
        return list(masks.items())
    _refuse_one_key(sections, f"labels of adata.obs[{library_key!r}] in stack order", f"Labels: {labels}.")
    _refuse_repeated(list(sections))
    require_keys(masks, sections, f"adata.obs[{library_key!r}]")
    return [(label, masks[label]) for label in sections]


# .obs columns that name the section of each spot in one AnnData of several (squidpy's library_key)
_SECTION_COLUMNS = ("library_id", "section", "slice", "sample", "batch")


def _split_hint(adata: AnnData) -> str:
    """How to give the sections of one AnnData (one ``.obs`` column per section label) as a dict."""
    column = next((c for c in _SECTION_COLUMNS if c in adata.obs), None)
    shown = column or "library_id"
    hint = (
        f" For sections kept in one AnnData, pass library_key={shown!r} (the .obs column that labels each "
        "spot's section): the results are written into that AnnData. Or pass them as a dict: "
        f"{{k: adata[adata.obs[{shown!r}] == k].copy() for k in adata.obs[{shown!r}].unique()}}; the results "
        "are then written into those copies."
    )
    return hint if column else f"{hint} (name the .obs column that labels each spot's section)"


def _one_table_each(labels: list[str], objs: list, holder: str, who: str) -> None:
    """Each item of a list or dict is one section: an AnnData or a SpatialData of one table."""
    for label, obj in zip(labels, objs, strict=True):
        if not isinstance(obj, AnnData) and not is_spatialdata(obj):
            raise TypeError(
                f"section {label!r} of the {holder} given to {who} is a {type(obj).__name__}; each section "
                "must be an AnnData or a SpatialData of one table."
            )
        if is_spatialdata(obj) and len(obj.tables) != 1:
            raise ValueError(
                f"a {holder} given to {who} holds one section per object, but {label} is a SpatialData with "
                f"{len(obj.tables)} tables ({', '.join(map(repr, obj.tables.keys())) or 'none'}). Pass a "
                "SpatialData of several sections on its own, with sections= its table keys in stack order."
            )


def _only_table(obj: Any) -> str | None:
    """The table key of a SpatialData of one section; None for an AnnData."""
    return next(iter(obj.tables.keys())) if is_spatialdata(obj) else None


def _refuse_one_key(sections: Any, what: str, available: str) -> None:
    # refused, as scanpy's rank_genes_groups refuses groups="a": a stack of one section aligns nothing
    if isinstance(sections, str):
        raise ValueError(f"sections must be a list of {what}, got the string {sections!r}. {available}")


def _refuse_repeated(labels: list) -> None:
    repeated = sorted({str(label) for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"sections= lists {repeated} more than once; give each section once.")
