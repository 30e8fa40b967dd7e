"""Recall@K in the quantile form of the paper (eqs. 32-33)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(similarity: np.ndarray, targets: Sequence[int] | None = None) -> np.ndarray:
    """1-based rank of each query's ground-truth candidate in its row of ``similarity``.

    Ties count against the target: its rank is the number of candidates scoring at least as high.

    Parameters
    ----------
    similarity
        Queries x candidates scores.
    targets
        Column of the ground-truth candidate of each query; default: the diagonal (query i is paired
        with candidate i).

    Returns
    -------
    int array ``(n_queries,)`` of 1-based ranks: 1 when the target scores strictly highest.

    """
    s = np.asarray(similarity)
    if s.ndim != 2:
        raise ValueError(f"similarity must be queries x candidates, got shape {s.shape}.")
    targets = np.arange(s.shape[0]) if targets is None else np.asarray(targets, dtype=np.int64)
    if targets.shape != (s.shape[0],):
        raise ValueError(f"targets must have one entry per query ({s.shape[0]}), got shape {targets.shape}.")
    if ((targets < 0) | (targets >= s.shape[1])).any():
        raise ValueError(f"targets must index the {s.shape[1]} candidates.")
    bad = np.flatnonzero(~np.isfinite(s).all(axis=1))
    if len(bad):  # a NaN target would outrank nothing and count as rank 0, a perfect hit
        raise ValueError(
            f"similarity has non-finite scores in {len(bad)} query row(s), e.g. {bad[:5].tolist()} "
            "(an all-zero embedding normalises to NaN)."
        )
    own = s[np.arange(s.shape[0]), targets]
    return (s >= own[:, None]).sum(axis=1)


def recall_at_k(
    similarity_or_ranks: np.ndarray,
    k: float | Sequence[float] = 0.05,
    *,
    targets: Sequence[int] | None = None,
    n_candidates: int | None = None,
) -> float | np.ndarray:
    """Fraction of queries whose ground-truth candidate ranks within the top ``k`` quantile (eq. 33).

    ``quantile(q) = rank(q) / n_candidates`` with 1-based ranks; a random ranking scores ``k``.

    Parameters
    ----------
    similarity_or_ranks
        Queries x candidates similarity matrix, or 1-D 1-based ranks of the targets (then
        ``n_candidates`` is required).
    k
        Quantile(s) in (0, 1], e.g. 0.05 for Recall@5%.
    targets
        Ground-truth column per query for a similarity matrix (default: the diagonal).
    n_candidates
        Number of candidates each query was ranked against (ranks input only).

    Returns
    -------
    Recall@k (a float, or an array for a sequence of ``k``).

    """
    x = np.asarray(similarity_or_ranks)
    if x.ndim == 2:
        ranks, n = target_ranks(x, targets), x.shape[1]
    elif x.ndim == 1:
        if n_candidates is None:
            raise ValueError("Pass n_candidates= with 1-D ranks.")
        ranks, n = x, int(n_candidates)
        if ((ranks < 1) | (ranks > n)).any():
            raise ValueError(f"ranks must be 1-based and at most n_candidates={n}.")
    else:
        raise ValueError(f"Expected a 2-D similarity matrix or 1-D ranks, got shape {x.shape}.")
    if len(ranks) == 0:
        raise ValueError("recall_at_k of zero queries is undefined.")
    ks = np.atleast_1d(np.asarray(k, dtype=np.float64))
    if ((ks <= 0) | (ks > 1)).any():
        raise ValueError(f"k must be a quantile in (0, 1], got {k}.")
    quantile = ranks / n
    # A small tolerance keeps rank/n == k (e.g. 5/100 vs 0.05) inside despite rounding.
    out = (quantile[None, :] <= ks[:, None] + 1e-12).mean(axis=1)
    return float(out[0]) if np.ndim(k) == 0 else out
