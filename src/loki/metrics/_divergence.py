"""Jensen-Shannon divergence (eqs. 22-24)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._labels import labelled_scores, paired_arrays, score_labels


def _normalise(p: np.ndarray, name: str, axis: int) -> np.ndarray:
    if (p < 0).any():
        raise ValueError(f"{name} holds negative values; JS divergence needs non-negative weights.")
    with np.errstate(over="ignore"):
        total = p.sum(axis=axis, keepdims=True)
    overflowed = ~np.isfinite(total)
    if overflowed.any():
        # finite weights whose sum overflows (e.g. two of 1e308): divide those slices by their
        # largest weight first, which leaves the distribution as it is
        p = p / np.where(overflowed, p.max(axis=axis, keepdims=True), 1.0)
        total = p.sum(axis=axis, keepdims=True)
    if p.ndim == 1 and total.item() <= 0:
        raise ValueError(f"{name} sums to 0: it is not a distribution.")
    empty = np.squeeze(total <= 0, axis=axis)
    if empty.any():
        where = [
            idx[0] if len(idx) == 1 else tuple(idx) for idx in np.argwhere(np.atleast_1d(empty)).tolist()
        ]
        raise ValueError(
            f"{name} has {len(where)} slice(s) along axis {axis} that sum to 0, at {where[:5]}"
            f"{' ...' if len(where) > 5 else ''}: no distribution (e.g. a cell type absent from every "
            "spot). Leave them out, or add a small constant to both sides (p + 1e-12) to compare them as "
            "uniform."
        )
    return p / total


def _kl(p: np.ndarray, m: np.ndarray, axis: int) -> np.ndarray:
    # 0 * log(0 / m) = 0; m > 0 wherever p > 0 because m = (p + q) / 2.
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
    return terms.sum(axis=axis)


def js_divergence(p: np.ndarray, q: np.ndarray, axis: int = -1) -> float | np.ndarray | pd.Series:
    """Jensen-Shannon divergence in base 2, so that it lies in [0, 1] (eqs. 22-24).

    Each slice along ``axis`` is normalised to sum to 1 first, so raw proportions or counts can be
    passed. For the paper's per-cell-type comparison of spatial distributions pass spots x types
    proportion matrices with ``axis=0``.

    Parameters
    ----------
    p, q
        Finite, non-negative arrays of the same shape, dense or sparse. Two DataFrames (or two Series) are matched by their
        labels: ``q``'s rows and columns are put in ``p``'s order (a truth and a prediction may list
        the cell types in different orders), and labels that differ raise a ValueError naming them.
        Default labels (0, 1, 2, ...) on either side are matched by position, unless the other side
        holds the same labels in another order (``a`` and ``a[::-1]``).
    axis
        Axis holding the distribution.

    Returns
    -------
    The divergence: a float for 1-D input; for two DataFrames a :class:`pandas.Series` indexed by
    ``p``'s labels along the other axis (its cell types with ``axis=0``); else an array with
    ``axis`` removed.

    """
    labels = score_labels(p, q, axis)
    p, q = paired_arrays(p, q, ("p", "q"))
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}.")
    p = _normalise(p, "p", axis)
    q = _normalise(q, "q", axis)
    m = 0.5 * (p + q)
    out = np.clip(0.5 * _kl(p, m, axis) + 0.5 * _kl(q, m, axis), 0.0, 1.0)
    return labelled_scores(out, labels)
