"""Weighted F1 (eq. 31) and Calinski-Harabasz (eqs. 17-19)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from loki._logging import LokiWarning, user_stacklevel

from ._labels import align_labels

_BLOCK = 1 << 21  # values (points x dimensions) taken at once by calinski_harabasz (16 MB of float64)


def weighted_f1(y_true: Sequence, y_pred: Sequence, *, labels: Sequence | None = None) -> float:
    """F1 score per class (eq. 31), averaged with weights proportional to each class's true support.

    Parameters
    ----------
    y_true, y_pred
        True and predicted labels (any hashable values), same length. Every item needs a true
        label: drop unlabelled items (NaN, None) first. A missing prediction counts as wrong. Two
        Series are matched by their index (e.g. ``.obs`` columns of two tables whose spots are in
        different orders), as :func:`loki.metrics.pearson` matches them; labels that differ raise a
        ValueError naming them.
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
    y_pred = align_labels(y_true, y_pred, ("y_true", "y_pred"))
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
        Points, n x d (e.g. embeddings), finite, dense or sparse.
    labels
        Cluster label of each point (any hashable values); every point needs one: drop unlabelled
        points (NaN, None) first.

    Returns
    -------
    The score (higher: tighter, better separated clusters); ``inf`` when every cluster is a single
    point repeated (WCSS = 0), NaN when all points coincide (BCSS = WCSS = 0: e.g. a collapsed
    embedding, which has no clusters to score). Both are decided exactly, not from the rounded
    centroids. scikit-learn's ``calinski_harabasz_score`` returns 1.0 where WCSS is exactly 0 and
    otherwise what the rounding leaves (141 for 30 copies of one random 768-d point in 3
    clusters); this follows eq. 17.

    Raises
    ------
    ValueError
        If ``x`` holds NaN or infinite values, a point has no label, or there are not
        ``2 <= k < n`` clusters.

    """
    if sparse.issparse(x):
        x = sparse.csr_matrix(x)  # rows taken a block at a time
    else:
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"x must be points x dimensions, got shape {x.shape}.")
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have one entry per point ({x.shape[0]}), got shape {labels.shape}.")
    unlabelled = pd.isna(labels)
    if unlabelled.any():
        raise ValueError(
            f"labels: {int(unlabelled.sum())} of {labels.size} points have no label (NaN or None); NaN "
            "labels would form a cluster of their own, so score the labelled ones: "
            "keep = ~pd.isna(labels)."
        )
    codes, _ = pd.factorize(labels, sort=True)
    k, n = int(codes.max()) + 1 if len(codes) else 0, x.shape[0]
    if not 1 < k < n:
        raise ValueError(f"Calinski-Harabasz needs 2 <= k < n clusters, got k={k} for n={n} points.")
    sizes = np.bincount(codes, minlength=k).astype(np.float64)
    # points a block at a time, in float64: a float64 copy of x and the points' offsets from their
    # centroids are each n x d (GBs for 10^5-10^6 embeddings)
    step = max(1, _BLOCK // max(x.shape[1], 1))
    blocks = range(0, n, step)

    def dense(rows) -> np.ndarray:
        return np.asarray(rows.toarray() if sparse.issparse(rows) else rows, dtype=np.float64)

    sums = np.zeros((k, x.shape[1]))
    for lo in blocks:
        np.add.at(sums, codes[lo : lo + step], dense(x[lo : lo + step]))
    if not np.isfinite(sums).all():  # a NaN or inf point leaves its cluster's sum non-finite
        non_finite = sum(int(np.count_nonzero(~np.isfinite(dense(x[lo : lo + step])))) for lo in blocks)
        if non_finite:
            raise ValueError(f"x holds {non_finite} NaN or infinite value(s); the points must be finite.")
    centroids = sums / sizes[:, None]
    mean = sums.sum(axis=0) / n
    bcss = float((sizes * ((centroids - mean) ** 2).sum(axis=1)).sum())
    # Whether each cluster is one point repeated is decided exactly, against its first point: the
    # rounded centroid of repeated points differs from them in the last bits, which left a WCSS of
    # ~1e-30 and a score of any size instead of inf (or NaN).
    firsts = dense(x[np.unique(codes, return_index=True)[1]])
    wcss, repeated = 0.0, True
    for lo in blocks:
        block = dense(x[lo : lo + step])
        wcss += float(((block - centroids[codes[lo : lo + step]]) ** 2).sum())
        repeated = repeated and bool((block == firsts[codes[lo : lo + step]]).all())
    if repeated:
        return float("nan") if (firsts == firsts[0]).all() else float("inf")
    return (bcss / (k - 1)) / (wcss / (n - k))
