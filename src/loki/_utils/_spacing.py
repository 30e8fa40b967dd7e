"""Spot spacing: the one definition shared by the readers, the metrics and the synthetic data."""

from __future__ import annotations

import numpy as np


def nearest_distances(xy: np.ndarray, max_queries: int | None = None) -> np.ndarray:
    """Distance from each distinct position to its nearest neighbour (empty for < 2 positions).

    Repeated positions count once, so duplicated spots do not pull the distances to 0. With
    ``max_queries``, only an evenly spaced sample of at most that many positions is queried (each
    still against all positions).
    """
    from scipy.spatial import cKDTree

    xy = np.unique(xy, axis=0)
    if len(xy) < 2:
        return np.empty(0)
    query = xy if max_queries is None else xy[:: -(-len(xy) // max_queries)]
    dist, _ = cKDTree(xy).query(query, k=2)
    return dist[:, 1]


def nearest_spot_distance(xy: np.ndarray) -> float:
    """Median distance from each distinct position to its nearest neighbour (0 for < 2 positions)."""
    dist = nearest_distances(np.asarray(xy, dtype=np.float64))
    return float(np.median(dist)) if dist.size else 0.0
