"""Non-negative least squares of spot profiles on per-type mean profiles."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import nnls
from tqdm.auto import tqdm

#: Spots densified at a time by :func:`nnls_weights` (a sparse matrix is never densified whole).
_SPOT_BLOCK = 1024


def type_means(features, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, n_features)`` float64 mean feature vector of every group.

    Parameters
    ----------
    features
        ``(n_cells, n_features)`` dense array or scipy sparse matrix (kept sparse).
    groups
        ``(n_cells,)`` integer group of every cell, in ``range(n_groups)``.
    n_groups
        Number of groups.

    """
    groups = np.asarray(groups, dtype=np.int64)
    if sparse.issparse(features):
        # groups x cells indicator; its rows list cells in increasing order, so every sum is taken
        # in the same order and precision (float64) as the dense path below
        indicator = sparse.csr_matrix(
            (np.ones(len(groups)), (groups, np.arange(len(groups)))), shape=(n_groups, len(groups))
        )
        sums = np.asarray((indicator @ sparse.csr_matrix(features, dtype=np.float64)).toarray())
    else:
        sums = np.zeros((n_groups, features.shape[1]), dtype=np.float64)
        np.add.at(sums, groups, features)
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    return sums / np.maximum(counts, 1)[:, None]


def nnls_weights(profiles: np.ndarray, spots, *, progress: bool = False) -> np.ndarray:
    """Solve ``min_w ||profiles^T w - spot||_2, w >= 0`` for every spot.

    Parameters
    ----------
    profiles
        ``(n_types, n_features)`` reference profile of every type (e.g. mean counts per cell).
    spots
        ``(n_spots, n_features)`` observed profiles, dense or scipy sparse; densified
        ``_SPOT_BLOCK`` rows at a time.
    progress
        Show a progress bar.

    Returns
    -------
    ``(n_spots, n_types)`` non-negative weights; with mean counts per cell as profiles, the number
    of cells of each type.

    """
    A = np.ascontiguousarray(np.asarray(profiles, dtype=np.float64).T)
    if not sparse.issparse(spots):
        spots = np.asarray(spots)
    if A.shape[0] != spots.shape[1]:
        raise ValueError(f"profiles have {A.shape[0]} features but spots have {spots.shape[1]}.")
    n_spots = spots.shape[0]
    out = np.empty((n_spots, A.shape[1]), dtype=np.float64)
    # Bounded iterations: scipy's default (3 n) rarely binds; a stalled spot must not hang the call.
    maxiter = 50 * A.shape[1]
    with tqdm(total=n_spots, disable=not progress, desc="nnls") as bar:
        for start in range(0, n_spots, _SPOT_BLOCK):
            block = _dense_rows(spots, start, start + _SPOT_BLOCK)
            for i, spot in enumerate(block, start=start):
                out[i] = nnls(A, spot, maxiter=maxiter)[0]
            bar.update(len(block))
    return out


def _dense_rows(x, start: int, stop: int) -> np.ndarray:
    block = x[start:stop]
    return np.asarray(block.toarray() if sparse.issparse(block) else block, dtype=np.float64)
