"""Weighted F1 (eq. 31) and Calinski-Harabasz (eqs. 17-19)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from loki._logging import LokiWarning, user_stacklevel

_BLOCK = 1 << 21  # values (points x dimensions) taken at once by calinski_harabasz (16 MB of float64)


def weighted_f1(y_true: Sequence, y_pred: Sequence, *, labels: Sequence | None = None) -> float:
    """F1 score per class (eq. 31), averaged with weights proportional to each class's true support.

    Parameters
    ----------
    y_true, y_pred
        True and predicted labels (any hashable values), same length. Every item needs a true
        label: drop unlabelled items (NaN, None) first. A missing prediction counts as wrong.
    labels
        Classes to score; default: every label present in ``y_true`` or ``y_pred``. A class never
        predicted and never true contributes nothing (its support is 0).

    Returns
    -------
    The weighted F1 score in [0, 1].

    Warns
    -----
    LokiWarning
        When no predicted label equals any true label (e.g. integer cluster ids against the same
        ids as strings): the score is then 0.

    Notes
    -----
    Compare the score with a baseline: predicting the majority class for every item scores
    ``p * 2p / (1 + p)`` weighted F1, where ``p`` is that class's share (0.75 when it holds 83%).

    """
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of one length, got {y_true.shape} and {y_pred.shape}."
        )
    if y_true.size == 0:
        raise ValueError("weighted_f1 of empty label arrays is undefined.")
    unlabelled = pd.isna(y_true)
    if unlabelled.any():
        raise ValueError(
            f"y_true: {int(unlabelled.sum())} of {y_true.size} items have no true label (NaN or None); "
            "they are neither right nor wrong, so score the labelled ones: keep = ~pd.isna(y_true)."
        )
    shared = set(y_true.tolist()) & set(y_pred.tolist())
    if not shared:
        warnings.warn(
            f"weighted_f1: the true and predicted labels share no value (true e.g. {y_true[0]!r} of type "
            f"{type(y_true[0]).__name__}, predicted e.g. {y_pred[0]!r} of type {type(y_pred[0]).__name__}): "
            "the score is 0. Are they of one type (leiden writes strings)?",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    if labels is None:
        labels = list(dict.fromkeys([*y_true.tolist(), *y_pred.tolist()]))
    total, weight = 0.0, 0
    for c in labels:
        is_true, is_pred = y_true == c, y_pred == c
        tp = int(np.sum(is_true & is_pred))
        support = int(is_true.sum())
        denom = 2 * tp + int(np.sum(~is_true & is_pred)) + int(np.sum(is_true & ~is_pred))
        total += support * (2 * tp / denom if denom else 0.0)
        weight += support
    return total / weight if weight else 0.0


def calinski_harabasz(x: np.ndarray, labels: Sequence) -> float:
    """Calinski-Harabasz score: ``(BCSS / (k - 1)) / (WCSS / (n - k))`` (eqs. 17-19).

    Parameters
    ----------
    x
        Points, n x d (e.g. embeddings).
    labels
        Cluster label of each point.

    Returns
    -------
    The score (higher: tighter, better separated clusters); ``inf`` when every cluster is a single
    point repeated (WCSS = 0).

    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have one entry per point ({x.shape[0]}), got shape {labels.shape}.")
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.ravel()
    k, n = int(codes.max()) + 1, x.shape[0]
    if not 1 < k < n:
        raise ValueError(f"Calinski-Harabasz needs 2 <= k < n clusters, got k={k} for n={n} points.")
    sizes = np.bincount(codes, minlength=k).astype(np.float64)
    # points a block at a time, in float64: a float64 copy of x and the points' offsets from their
    # centroids are each n x d (GBs for 10^5-10^6 embeddings)
    step = max(1, _BLOCK // max(x.shape[1], 1))
    blocks = range(0, n, step)
    sums = np.zeros((k, x.shape[1]))
    for lo in blocks:
        np.add.at(sums, codes[lo : lo + step], np.asarray(x[lo : lo + step], dtype=np.float64))
    centroids = sums / sizes[:, None]
    mean = sums.sum(axis=0) / n
    bcss = float((sizes * ((centroids - mean) ** 2).sum(axis=1)).sum())
    wcss = 0.0
    for lo in blocks:
        block = np.asarray(x[lo : lo + step], dtype=np.float64)
        wcss += float(((block - centroids[codes[lo : lo + step]]) ** 2).sum())
    if wcss == 0:
        return float("inf")
    return (bcss / (k - 1)) / (wcss / (n - k))
