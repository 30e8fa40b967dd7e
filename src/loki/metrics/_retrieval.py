"""Recall@K in the quantile form of the paper (eqs. 32-33)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from loki._utils import require_keys

#: Tolerance that keeps rank / n == k (e.g. 5 / 100 against 0.05) inside the quantile despite rounding.
_TOL = 1e-12


def target_ranks(similarity: np.ndarray, targets: Sequence[int] | None = None) -> np.ndarray:
    """1-based rank of each query's ground-truth candidate in its row of ``similarity``.

    Ties count against the target: its rank is the number of candidates scoring at least as high.

    Parameters
    ----------
    similarity
        Queries x candidates scores.
    targets
        Column of the ground-truth candidate of each query, integers; default: the diagonal (query
        i is paired with candidate i).

    Returns
    -------
    int array ``(n_queries,)`` of 1-based ranks: 1 when the target scores strictly highest.

    """
    s = np.asarray(similarity)
    if s.ndim != 2:
        raise ValueError(f"similarity must be queries x candidates, got shape {s.shape}.")
    targets = np.arange(s.shape[0]) if targets is None else _positions(targets)
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


def _positions(targets) -> np.ndarray:
    """``targets`` as int64 positions; floats (1.7, NaN) are refused, not truncated to 1 or garbage."""
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise ValueError(
            f"targets must be integer positions of the candidates, got dtype {targets.dtype} (e.g. "
            f"{targets.ravel()[:3].tolist()}); a float would be truncated to another candidate."
        )
    return targets.astype(np.int64)


def _hit_ranks(
    hits: pd.DataFrame, targets: Sequence[int] | None, n_candidates: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the targets in a hit table, and whether each is exact (else a lower bound).

    A target found among a query's hits gets the rank :func:`target_ranks` gives it (the hits scoring
    at least as high), unless it ties with the query's last hit and rows beyond the hits might tie too;
    a target not found ranks after all of its query's hits.
    """
    require_keys(hits.columns, ("query_index", "bank_index", "score"), "hits.columns")
    if targets is None or n_candidates is None:
        raise ValueError(
            "With a hit table (lk.tl.retrieve's output), pass targets= (the bank row of each query's "
            "true pair, by query position) and n_candidates= (the number of bank rows)."
        )
    n = int(n_candidates)
    targets = _positions(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be a 1-D array of bank row positions, got shape {targets.shape}.")
    if ((targets < 0) | (targets >= n)).any():
        raise ValueError(f"targets must index the n_candidates={n} bank rows.")
    qi = hits["query_index"].to_numpy(np.int64)
    bi = hits["bank_index"].to_numpy(np.int64)
    sc = hits["score"].to_numpy(np.float64)
    n_q = len(targets)
    if len(qi) and (qi.min() < 0 or qi.max() >= n_q):
        raise ValueError(
            f"hits refer to query positions {qi.min()}-{qi.max()}, but targets hold {n_q} entries "
            "(one bank row per query)."
        )
    depth = np.bincount(qi, minlength=n_q)
    if (depth == 0).any():
        raise ValueError(f"hits hold no row for queries {np.flatnonzero(depth == 0)[:5].tolist()}.")
    if (depth > n).any():
        raise ValueError(f"hits hold more rows for a query ({depth.max()}) than n_candidates={n}.")
    if not np.isfinite(sc).all():
        raise ValueError("hits hold non-finite scores.")
    own = bi == targets[qi]
    t_score = np.full(n_q, np.nan)
    t_score[qi[own]] = sc[own]
    found = ~np.isnan(t_score)
    ranks = np.bincount(qi, weights=sc >= np.where(found, t_score, np.inf)[qi], minlength=n_q).astype(
        np.int64
    )
    last = np.full(n_q, np.inf)
    np.minimum.at(last, qi, sc)
    exact = found & ((t_score > last) | (depth == n))
    ranks[~found] = depth[~found] + 1  # after every hit of its query
    return ranks, exact


def recall_at_k(
    similarity_or_ranks: np.ndarray | pd.DataFrame,
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
        Queries x candidates similarity matrix; 1-D 1-based ranks of the targets (then
        ``n_candidates`` is required); or the hit table of :func:`loki.tl.retrieve` (then ``targets``
        and ``n_candidates``, the bank's size, are required): a bank too large for the similarity
        matrix is evaluated from its top hits, which must reach the quantile (``k * n_candidates``
        hits per query; fewer are refused, since a target outside the hits could still count). The
        ranks are those of the search that made the hits: exact with ``search="exact"``; an
        approximate search that misses a better candidate ranks the target too high.
    k
        Quantile(s) in (0, 1], e.g. 0.05 for Recall@5%. An integer is refused: ``k=1`` would be
        100 %, not the top hit (for that, pass ``1 / n_candidates``).
    targets
        Ground-truth column per query for a similarity matrix (default: the diagonal); for a hit
        table, the bank position (``bank_index``) of each query's true pair, indexed by query position.
    n_candidates
        Number of candidates each query was ranked against (ranks and hit-table input).

    Returns
    -------
    Recall@k (a float, or an array for a sequence of ``k``).

    """
    ks = np.atleast_1d(np.asarray(k))
    if ks.dtype.kind in "iub":
        raise ValueError(
            f"k is a quantile in (0, 1] (e.g. 0.05 for Recall@5%), got the integer {k}: k=1 would count "
            "every query. For the top m hits pass m / n_candidates; for 100% pass 1.0."
        )
    ks = ks.astype(np.float64)
    if not ((ks > 0) & (ks <= 1)).all():  # NaN too: no rank lies inside it
        raise ValueError(f"k must be a quantile in (0, 1], got {k}.")
    exact = None
    if isinstance(similarity_or_ranks, pd.DataFrame):
        ranks, exact = _hit_ranks(similarity_or_ranks, targets, n_candidates)
        n = int(n_candidates)
    else:
        x = np.asarray(similarity_or_ranks)
        if x.ndim == 2:
            ranks, n = target_ranks(x, targets), x.shape[1]
        elif x.ndim == 1:
            if n_candidates is None:
                raise ValueError("Pass n_candidates= with 1-D ranks.")
            ranks, n = x, int(n_candidates)
            outside = ~((ranks >= 1) & (ranks <= n))  # NaN too: it would count as a miss
            if outside.any():
                raise ValueError(
                    f"ranks must be 1-based and at most n_candidates={n}; {int(outside.sum())} are not, "
                    f"e.g. {ranks[outside][:3].tolist()}."
                )
        else:
            raise ValueError(f"Expected a 2-D similarity matrix or 1-D ranks, got shape {x.shape}.")
    if len(ranks) == 0:
        raise ValueError("recall_at_k of zero queries is undefined.")
    quantile = ranks / n
    inside = quantile[None, :] <= ks[:, None] + _TOL
    if exact is not None:
        # a rank known only as a lower bound decides nothing when that bound is inside the quantile
        unsure = inside & ~exact[None, :]
        if unsure.any():
            worst = float(ks[unsure.any(axis=1)].max())
            need = min(int(np.floor(worst * n + 1e-9)) + 1, n)
            raise ValueError(
                f"Recall@{worst:g} of {n} bank rows needs the top {need} hits of each query: a true pair "
                f"outside fewer hits could still rank inside the quantile. Retrieve with k >= {need}."
            )
    out = inside.mean(axis=1)
    return float(out[0]) if np.ndim(k) == 0 else out
