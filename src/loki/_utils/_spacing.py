"""Spot spacing: the one definition shared by the readers, the metrics and the synthetic data."""

from __future__ import annotations

import numpy as np


def nearest_spot_distance(xy: np.ndarray) -> float:
    """Median distance from each distinct position to its nearest neighbour (0 for < 2 positions).

    Repeated positions count once, so duplicated spots do not make the spacing 0.
    """
    from scipy.spatial import cKDTree

    xy = np.unique(np.asarray(xy, dtype=np.float64), axis=0)
    if len(xy) < 2:
        return 0.0
    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1]))
