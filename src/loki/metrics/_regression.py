"""Errors of predicted expression."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._labels import labelled_scores, paired_arrays, score_labels


def mse(y_true: np.ndarray, y_pred: np.ndarray, axis: int | None = None) -> float | np.ndarray | pd.Series:
    """Mean squared error between measured and predicted values.

    Parameters
    ----------
    y_true, y_pred
        Finite arrays of the same shape (e.g. spots x genes), dense or sparse. Two DataFrames (or
        two Series, or two AnnData, taken as ``.to_df()``) are matched by their labels, as in
        :func:`loki.metrics.pearson`: ``y_pred``'s rows and columns are put in ``y_true``'s order.
    axis
        Axis to average over; ``None`` averages everything, ``axis=0`` gives one value per gene.

    Returns
    -------
    The mean squared error: a float, or one per slice with ``axis`` removed, as a
    :class:`pandas.Series` labelled by ``y_true``'s other axis (e.g. its genes with ``axis=0``) for
    two DataFrames, else as an array.

    Raises
    ------
    ValueError
        If the shapes differ, the arrays are empty, or either holds NaN or an infinite value (as
        :func:`loki.metrics.pearson`): one NaN made the whole error NaN.

    """
    labels = score_labels(y_true, y_pred, axis)
    y_true, y_pred = paired_arrays(y_true, y_pred, ("y_true", "y_pred"))
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}."
        )
    if y_true.size == 0:
        raise ValueError("mse of empty arrays is undefined.")
    return labelled_scores(np.mean((y_true - y_pred) ** 2, axis=axis), labels)
