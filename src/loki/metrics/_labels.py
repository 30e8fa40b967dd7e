"""Matching a truth and a prediction by their labels before they are compared as arrays, and labelling the scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def _is_positional(labels: pd.Index) -> bool:
    """Whether ``labels`` are pandas' default 0, 1, 2, ... (a frame built from an unlabelled array)."""
    return isinstance(labels, pd.RangeIndex) and labels.start == 0 and labels.step == 1


def _reordered(mine: pd.Index, theirs: pd.Index) -> bool:
    """Whether ``theirs`` holds ``mine``'s labels, each once, in another order (``a[::-1]`` of ``a``)."""
    return len(mine) == len(theirs) and mine.is_unique and theirs.is_unique and bool(theirs.isin(mine).all())


def align_labels(first, second, names: tuple[str, str]):
    """``second`` with its rows and columns in the order of ``first``'s labels, when both are pandas.

    Two DataFrames (or two Series) are matched by their labels, as a spots x cell types truth and a
    prediction must be: :func:`loki.pp.pseudo_spots` and :func:`loki.tl.decompose` can order the same
    cell types differently, and as arrays the columns would be compared by position. Labels that
    differ as sets raise a ValueError naming them. Default labels (0, 1, 2, ..., a frame built from an
    array) on either side stay positional unless the other side holds those same labels in another
    order (``a`` and ``a[::-1]`` of a Series built from an array); anything other than two pandas
    objects of one kind stays positional.
    """
    kinds = (pd.DataFrame, pd.Series)
    if not any(isinstance(first, k) and isinstance(second, k) for k in kinds):
        return second
    axes = [("rows", "index")] + ([("columns", "columns")] if isinstance(first, pd.DataFrame) else [])
    for what, attr in axes:
        mine, theirs = getattr(first, attr), getattr(second, attr)
        if mine.equals(theirs):
            continue
        if (_is_positional(mine) or _is_positional(theirs)) and not _reordered(mine, theirs):
            continue
        only_first, only_second = mine.difference(theirs), theirs.difference(mine)
        if len(only_first) or len(only_second) or mine.has_duplicates or theirs.has_duplicates:
            detail = (
                f"only in {names[0]}: {_few(only_first)}; only in {names[1]}: {_few(only_second)}"
                if len(only_first) or len(only_second)
                else "the same labels, but repeated ones, which cannot be matched"
            )
            if len(only_first) and set(map(str, mine)) == set(map(str, theirs)):
                detail += (
                    "; the same as text, but of different types: make both strings, e.g. "
                    f"{names[0]}.{attr} = {names[0]}.{attr}.astype(str) and so for {names[1]}"
                )
            raise ValueError(
                f"{names[0]} and {names[1]} have different {what} ({detail}). Both are matched by "
                f"label; select the shared ones on both sides (e.g. pred[truth.columns]), or pass "
                "arrays to compare by position."
            )
        second = second.reindex(**{attr: mine})
    return second


def _few(labels: pd.Index, k: int = 5) -> str:
    # a label as it is (1 is not '1'), numpy scalars as Python's (np.str_('a') as 'a')
    shown = ", ".join(repr(x.item() if isinstance(x, np.generic) else x) for x in labels[:k])
    return (shown or "none") + (", ..." if len(labels) > k else "")


def paired_arrays(x, y, names: tuple[str, str] = ("x", "y")):
    """``x`` and ``y`` as finite float64 arrays, ``y``'s labels matched to ``x``'s first.

    An AnnData becomes its ``.to_df()`` (spots x genes, labelled), so that two tables are matched by
    spot and gene name; two DataFrames (or two Series) are matched by label (:func:`align_labels`: as
    arrays a truth and a prediction whose genes are in different orders were compared gene against
    another gene without a word). A sparse matrix is made dense. A NaN or infinite value raises a
    ValueError saying how many each side holds: a NaN would come back as a NaN score, or be counted
    as a value.
    """
    x, y = (v.to_df() if isinstance(v, AnnData) else v for v in (x, y))
    y = align_labels(x, y, names)
    x, y = (np.asarray(v.toarray() if sparse.issparse(v) else v, dtype=np.float64) for v in (x, y))
    for name, values in zip(names, (x, y), strict=True):
        with np.errstate(over="ignore", invalid="ignore"):
            finite_sum = np.isfinite(values.sum())  # a NaN or inf anywhere makes the sum non-finite
        bad = 0 if finite_sum else int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ValueError(
                f"{names[0]} and {names[1]} must be finite; {name} holds {bad} NaN or infinite value(s)."
            )
    return x, y


def score_labels(first, second, axis: int | None) -> pd.Index | None:
    """The labels of a metric's scores along ``axis``: ``first``'s other axis, when both are DataFrames.

    A metric that reduces ``axis`` of two spots x cell types tables gives one score per cell type
    (``axis=0``) or per spot (``axis=1``); these are ``first``'s (the truth's) labels of the axis that
    remains, which :func:`align_labels` puts ``second`` in the order of. None when either input is not
    a DataFrame (arrays give arrays), or ``axis`` is None or not an axis of a table (the metric
    flattens, or refuses it).
    """
    both = isinstance(first, pd.DataFrame) and isinstance(second, pd.DataFrame)
    if not both or axis is None or axis not in (-2, -1, 0, 1):
        return None
    return first.axes[1 - axis % 2].copy()


def labelled_scores(out, labels: pd.Index | None) -> float | np.ndarray | pd.Series:
    """A metric's result as returned: a float for one score, a Series over ``labels`` when given, else the array."""
    out = np.asarray(out)
    if out.ndim == 0:
        return float(out)
    return out if labels is None else pd.Series(out, index=labels)
