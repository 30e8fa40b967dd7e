"""SSIM (eq. 25) of spot values rasterised onto a spatial grid."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from loki._utils import check_array_finite

from ._alignment import spot_spacing


def ssim_map(
    x: np.ndarray,
    y: np.ndarray,
    *,
    data_range: float,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Local SSIM (eq. 25) of two 2-D images in a uniform ``win_size`` window, one value per pixel.

    Local means, variances (sample, ddof=1) and covariance are computed in a sliding window with
    reflected borders; ``C1 = (k1 * data_range)**2`` and ``C2 = (k2 * data_range)**2``.

    Parameters
    ----------
    x, y
        Images of the same 2-D shape.
    data_range
        Dynamic range of the values (max - min possible).
    win_size
        Odd side length of the window.
    k1, k2
        Stabilising constants.

    Returns
    -------
    The SSIM map, same shape as ``x``.

    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must be 2-D images of one shape, got {x.shape} and {y.shape}.")
    if win_size % 2 == 0 or win_size < 3:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}.")
    if min(x.shape) < win_size:
        raise ValueError(f"Images {x.shape} are smaller than the SSIM window ({win_size}).")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}.")
    n = win_size**2
    cov_norm = n / (n - 1)
    ux, uy = uniform_filter(x, win_size), uniform_filter(y, win_size)
    vx = cov_norm * (uniform_filter(x * x, win_size) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, win_size) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, win_size) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def rasterize(
    coords: np.ndarray, values: np.ndarray, *, grid: float | tuple[int, int] | None = None, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Put spot values onto a regular grid (mean of the spots falling into one pixel).

    Parameters
    ----------
    coords
        Spot centres, n x 2 (x, y).
    values
        n values, or n x c (one image per column).
    grid
        Pixel size in coordinate units; or ``(n_rows, n_cols)``; default: the median distance between
        nearest spots, so that each spot of a regular array gets its own pixel.
    pad
        Empty pixels added around the tissue on each side.

    Returns
    -------
    The images (rows x cols, or rows x cols x c) and the boolean tissue mask (pixels holding a spot).

    """
    coords = np.asarray(coords, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be n x 2, got shape {coords.shape}.")
    if values.shape[0] != coords.shape[0]:
        raise ValueError(f"values have {values.shape[0]} rows but coords {coords.shape[0]}.")
    check_array_finite(coords, "coords")
    lo = coords.min(axis=0)
    span = coords.max(axis=0) - lo
    if grid is None or np.isscalar(grid):
        if grid is None and len(coords) < 2:
            raise ValueError("Need at least 2 spots to infer the grid spacing; pass grid=.")
        step = spot_spacing(coords) if grid is None else float(grid)
        if not step > 0:
            raise ValueError(f"grid pixel size must be positive, got {step}.")
        idx = np.rint((coords - lo) / step).astype(np.int64)
    else:
        n_rows, n_cols = (int(g) for g in grid)
        scale = np.array([max(n_cols - 1, 1), max(n_rows - 1, 1)]) / np.where(span > 0, span, 1.0)
        idx = np.rint((coords - lo) * scale).astype(np.int64)
    idx += pad
    shape = (int(idx[:, 1].max()) + 1 + pad, int(idx[:, 0].max()) + 1 + pad)
    flat = np.ravel_multi_index((idx[:, 1], idx[:, 0]), shape)
    vals = values.reshape(len(values), -1)
    counts = np.bincount(flat, minlength=shape[0] * shape[1]).astype(np.float64)
    sums = np.zeros((shape[0] * shape[1], vals.shape[1]))
    np.add.at(sums, flat, vals)
    mask = counts > 0
    sums[mask] /= counts[mask, None]
    images = sums.reshape(*shape, vals.shape[1])
    return (images[..., 0] if values.ndim == 1 else images), mask.reshape(shape)


def ssim_grid(
    coords: np.ndarray,
    values_true: np.ndarray,
    values_pred: np.ndarray,
    *,
    grid: float | tuple[int, int] | None = None,
    mask_empty: bool = True,
    data_range: float | None = None,
    win_size: int = 7,
) -> float | np.ndarray:
    """SSIM between measured and predicted spot values viewed as images on the spot grid.

    Spots are rasterised with :func:`rasterize` (empty pixels are 0), the local SSIM map is computed
    with :func:`ssim_map`, and the map is averaged over tissue pixels only: the many empty pixels
    around a section would otherwise score ~1 and inflate the mean.

    Parameters
    ----------
    coords
        Spot centres, n x 2.
    values_true, values_pred
        n values, or n x c (e.g. proportions of c cell types: one SSIM per column).
    grid
        Pixel size in coordinate units or ``(n_rows, n_cols)``; default: nearest-spot spacing.
    mask_empty
        Average over pixels that hold a spot (default) rather than over the whole grid.
    data_range
        Value range for the SSIM constants; default: max - min of both inputs and 0 (the value of
        empty pixels, which the windows take in at the tissue's edge), per column.
    win_size
        Odd window size; images smaller than the window are padded with empty pixels.

    Returns
    -------
    The mean SSIM (a float for 1-D values, else one per column).

    """
    values_true = np.asarray(values_true, dtype=np.float64)
    values_pred = np.asarray(values_pred, dtype=np.float64)
    if values_true.shape != values_pred.shape:
        raise ValueError(
            f"values_true and values_pred differ in shape: {values_true.shape} vs {values_pred.shape}."
        )
    if not (np.isfinite(values_true).all() and np.isfinite(values_pred).all()):
        raise ValueError("values_true and values_pred must be finite.")
    img_t, mask = rasterize(coords, values_true, grid=grid)
    pad = max(0, (win_size - min(mask.shape) + 1) // 2)
    if pad:
        img_t, mask = rasterize(coords, values_true, grid=grid, pad=pad)
    img_p, _ = rasterize(coords, values_pred, grid=grid, pad=pad)
    if values_true.ndim == 1:
        img_t, img_p = img_t[..., None], img_p[..., None]
    t2 = values_true.reshape(len(values_true), -1)
    p2 = values_pred.reshape(len(values_pred), -1)
    out = np.empty(img_t.shape[-1])
    for c in range(img_t.shape[-1]):
        if data_range is None:
            rng = max(t2[:, c].max(), p2[:, c].max(), 0.0) - min(t2[:, c].min(), p2[:, c].min(), 0.0)
            rng = rng if rng > 0 else 1.0
        else:
            rng = data_range
        smap = ssim_map(img_t[..., c], img_p[..., c], data_range=rng, win_size=win_size)
        out[c] = smap[mask].mean() if mask_empty else smap.mean()
    return float(out[0]) if values_true.ndim == 1 else out
