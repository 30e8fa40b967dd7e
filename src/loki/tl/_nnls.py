"""Non-negative least squares of spot profiles on per-type mean profiles."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from tqdm.auto import tqdm


def type_means(features: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, n_features)`` mean feature vector of every group.

    Parameters
    ----------
    features
        ``(n_cells, n_features)`` dense array.
    groups
        ``(n_cells,)`` integer group of every cell, in ``range(n_groups)``.
    n_groups
        Number of groups.

    """
    sums = np.zeros((n_groups, features.shape[1]), dtype=np.float64)
    np.add.at(sums, groups, features)
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    return sums / np.maximum(counts, 1)[:, None]


def nnls_weights(profiles: np.ndarray, spots: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Solve ``min_w ||profiles^T w - spot||_2, w >= 0`` for every spot.

    Parameters
    ----------
    profiles
        ``(n_types, n_features)`` reference profile of every type (e.g. mean counts per cell).
    spots
        ``(n_spots, n_features)`` observed profiles.
    progress
        Show a progress bar.

    Returns
    -------
    ``(n_spots, n_types)`` non-negative weights; with mean counts per cell as profiles, the number
    of cells of each type.

    """
    A = np.ascontiguousarray(np.asarray(profiles, dtype=np.float64).T)
    spots = np.asarray(spots, dtype=np.float64)
    if A.shape[0] != spots.shape[1]:
        raise ValueError(f"profiles have {A.shape[0]} features but spots have {spots.shape[1]}.")
    out = np.empty((spots.shape[0], A.shape[1]), dtype=np.float64)
    # Bounded iterations: scipy's default (3 n) rarely binds; a stalled spot must not hang the call.
    maxiter = 50 * A.shape[1]
    for i in tqdm(range(spots.shape[0]), disable=not progress, desc="nnls"):
        out[i] = nnls(A, spots[i], maxiter=maxiter)[0]
    return out
