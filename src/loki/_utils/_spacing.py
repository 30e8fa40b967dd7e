"""Spot spacing: the one definition shared by the readers, the metrics and the synthetic data."""

from __future__ import annotations

import numpy as np


def nearest_distances(xy: np.ndarray) -> np.ndarray:
    """Distance from each distinct position to its nearest neighbour (empty for < 2 positions).

    Repeated positions count once, so duplicated spots do not pull the distances to 0.
    """
    from scipy.spatial import cKDTree

    xy = np.unique(xy, axis=0)
    if len(xy) < 2:
        return np.empty(0)
    dist, _ = cKDTree(xy).query(xy, k=2)
    return dist[:, 1]


def nearest_spot_distance(xy: np.ndarray) -> float:
    """Median distance from each distinct position to its nearest neighbour (0 for < 2 positions)."""
    dist = nearest_distances(np.asarray(xy, dtype=np.float64))
    return float(np.median(dist)) if dist.size else 0.0
