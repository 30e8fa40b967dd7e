"""2-D affine maps as 3x3 homogeneous matrices acting on (x, y) points."""

from __future__ import annotations

import numpy as np


def apply_matrix(xy: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homogeneous affine matrix to (n, 2) points."""
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def linear_scale(matrix: np.ndarray) -> float:
    """Isotropic scale of an affine map: the square root of its linear part's determinant (2x2 or 3x3)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:2, :2]))))
