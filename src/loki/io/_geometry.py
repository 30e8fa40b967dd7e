"""Physical scale of legacy ST arrays from spot array coordinates and their pixel positions."""

from __future__ import annotations

import numpy as np

from loki._utils._spacing import nearest_spot_distance

#: Relative difference of the pixel scales along the two array axes above which the readers warn.
ANISOTROPY_WARN = 0.05


def array_to_pixel_fit(array_xy: np.ndarray, pixel_xy: np.ndarray) -> np.ndarray:
    """Linear part of the affine map from array to pixel positions, fitted on every spot.

    Spots whose residual is more than 5 median absolute residuals away are dropped and the fit is
    repeated once.

    Parameters
    ----------
    array_xy
        ``(n, 2)`` array (grid) coordinates of the spots.
    pixel_xy
        ``(n, 2)`` pixel coordinates of the same spots.

    Returns
    -------
    ``(2, 2)`` matrix whose rows are the pixel displacements of one step along array ``x`` and ``y``.

    """
    array_xy = np.asarray(array_xy, dtype=np.float64)
    pixel_xy = np.asarray(pixel_xy, dtype=np.float64)
    if array_xy.shape != pixel_xy.shape or array_xy.ndim != 2 or array_xy.shape[1] != 2:
        raise ValueError(
            f"Expected two (n, 2) arrays of equal shape, got {array_xy.shape} and {pixel_xy.shape}."
        )
    if len(array_xy) < 3 or np.linalg.matrix_rank(array_xy - array_xy.mean(0)) < 2:
        raise ValueError(
            "Need at least 3 spots that are not on one line to estimate the pixel size of the array."
        )
    keep = np.ones(len(array_xy), dtype=bool)
    for _ in range(2):
        design = np.c_[array_xy[keep], np.ones(keep.sum())]
        coef, *_ = np.linalg.lstsq(design, pixel_xy[keep], rcond=None)
        resid = np.linalg.norm(np.c_[array_xy, np.ones(len(array_xy))] @ coef - pixel_xy, axis=1)
        mad = np.median(resid[keep])
        tol = 1e-6 * (np.abs(pixel_xy).max() + 1.0)  # exact fits have MAD ~ 0
        new_keep = resid <= 5 * mad + tol
        if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    det = abs(np.linalg.det(coef[:2]))
    if not np.isfinite(det) or det <= 0:
        raise ValueError("Spot pixel coordinates do not span two dimensions; cannot estimate the pixel size.")
    return coef[:2]


def scale_of(linear: np.ndarray) -> float:
    """Pixels per array step of a fitted linear part (:func:`array_to_pixel_fit`): ``sqrt(|det|)``.

    The geometric mean of the scales along the two array axes: rotation invariant, and as the fit
    uses every spot, a few misplaced spots barely move it. An anisotropic image (different scales
    along the two axes) gets their geometric mean; readers warn when the two differ by more than
    :data:`ANISOTROPY_WARN` (5 %), see :func:`axis_scales`.
    """
    return float(np.sqrt(abs(np.linalg.det(linear))))


def axis_scales(linear: np.ndarray) -> tuple[float, float]:
    """Pixels per array step along array ``x`` and along array ``y`` of a fitted linear part."""
    sx, sy = np.linalg.norm(linear, axis=1)
    return float(sx), float(sy)


def is_checkerboard(array_xy: np.ndarray) -> bool:
    """Whether spots sit on a checkerboard of the array grid (nearest neighbours are diagonal).

    Legacy ST "2k" arrays number their spots this way (x + y of one parity on a grid twice as
    fine as the 1k arrays), so one array unit is half the 1k centre-to-centre distance.
    """
    return bool(np.isclose(nearest_spot_distance(array_xy), np.sqrt(2.0), atol=0.05))
