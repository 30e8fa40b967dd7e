"""SSIM: eq. 25 over whole spot profiles, and a local variant on spot values rasterised onto a grid."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.ndimage import uniform_filter

from loki._logging import LokiWarning, user_stacklevel
from loki._utils import check_array_finite, is_real

from ._alignment import spot_spacing
from ._labels import labelled_scores, paired_arrays, score_labels
from ._lattice import lattice_pixels


def ssim(
    values_true: np.ndarray, values_pred: np.ndarray, *, data_range: float | None = None
) -> float | np.ndarray | pd.Series:
    """SSIM of eq. 25 between measured and predicted spot values, one value per column.

    ``(2 mu_t mu_p + C1)(2 s_tp + C2) / ((mu_t^2 + mu_p^2 + C1)(s_t^2 + s_p^2 + C2))`` with the means,
    variances and covariance of the whole profiles (population statistics, as the paper defines
    them), ``C1 = (0.01 * data_range)**2`` and ``C2 = (0.03 * data_range)**2``. This is the SSIM of
    the paper's decomposition benchmark and of its impact score; it ignores where the spots lie. For
    a spatially local comparison see :func:`ssim_grid`.

    Parameters
    ----------
    values_true, values_pred
        n finite values, or n x c (e.g. proportions of c cell types: one SSIM per column), dense or
        sparse. Two DataFrames (or two Series) are matched by their labels: ``values_pred`` is put
        in the order of ``values_true``'s rows and columns, and labels that differ raise a
        ValueError naming them (default labels 0, 1, 2, ... are matched by position, unless the
        other side holds them in another order).
    data_range
        Value range for the constants; default: max - min of both inputs and 0, per column (1 for
        proportions that reach 0 and 1).

    Returns
    -------
    The SSIM in [-1, 1]: a float for 1-D values, else one per column, as a :class:`pandas.Series`
    indexed by ``values_true``'s columns (e.g. cell types) for two DataFrames, else as an array.

    """
    columns = score_labels(values_true, values_pred, axis=0)
    t, p = _check_pair(values_true, values_pred)
    t2, p2 = t.reshape(len(t), -1), p.reshape(len(p), -1)
    rng = _data_range(t2, p2, data_range)
    t2, p2 = t2 / rng, p2 / rng  # the same value in units of the range, where C1, C2 cannot underflow
    mt, mp = t2.mean(axis=0), p2.mean(axis=0)
    vt, vp = t2.var(axis=0), p2.var(axis=0)
    cov = ((t2 - mt) * (p2 - mp)).mean(axis=0)
    c1, c2 = 0.01**2, 0.03**2
    out = ((2 * mt * mp + c1) * (2 * cov + c2)) / ((mt**2 + mp**2 + c1) * (vt + vp + c2))
    return labelled_scores(out.reshape(t.shape[1:]), columns)


def ssim_map(
    x: np.ndarray,
    y: np.ndarray,
    *,
    data_range: float,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Local SSIM of two 2-D images in a uniform ``win_size`` window, one value per pixel.

    Eq. 25 with the statistics of each window instead of the whole image (Wang et al. 2004).

    Local means, variances (sample, ddof=1) and covariance are computed in a sliding window with
    reflected borders; ``C1 = (k1 * data_range)**2`` and ``C2 = (k2 * data_range)**2``.

    Parameters
    ----------
    x, y
        Finite images of the same 2-D shape.
    data_range
        Dynamic range of the values (max - min possible), a positive number.
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
    if not (is_real(data_range) and np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}.")
    # one NaN pixel would turn the SSIM of every later window of its row NaN (running window sums)
    check_array_finite(x, "x")
    check_array_finite(y, "y")
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
        Pixel size in coordinate units (square pixels along x and y); or ``(n_rows, n_cols)``;
        default: the spots' own lattice, so that each spot of a regular array gets its own pixel. The
        pitch is the median distance between nearest spots; a square array gets one pixel per spot,
        a hexagonal one (Visium, :func:`loki.pp.pseudo_spots`) one row per spot row and its spots
        side by side, as Visium's ``array_row`` and ``array_col // 2`` do; a rotated array is turned
        upright first. A warning says how many spots still share a pixel (irregular layouts).
    pad
        Empty pixels added around the tissue on each side.

    Returns
    -------
    The images (rows x cols, or rows x cols x c) and the boolean tissue mask (pixels holding a spot).

    """
    values = np.asarray(values, dtype=np.float64)
    idx = _pixel_index(coords, grid)
    if values.shape[0] != idx.shape[0]:
        raise ValueError(f"values have {values.shape[0]} rows but coords {idx.shape[0]}.")
    return _paint(idx, values, pad)


def _pixel_index(coords: np.ndarray, grid: float | tuple[int, int] | None) -> np.ndarray:
    # (col, row) pixel of each spot, from 0
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be n x 2, got shape {coords.shape}.")
    check_array_finite(coords, "coords")
    lo = coords.min(axis=0)
    span = coords.max(axis=0) - lo
    if grid is None:
        if len(coords) < 2:
            raise ValueError("Need at least 2 spots to infer the grid spacing; pass grid=.")
        return _lattice_pixels(coords)
    if np.isscalar(grid):
        step = float(grid)
        if not step > 0:
            raise ValueError(f"grid pixel size must be positive, got {step}.")
        return np.rint((coords - lo) / step).astype(np.int64)
    n_rows, n_cols = (int(g) for g in grid)
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"grid=(n_rows, n_cols) must count at least 1 row and 1 column, got {grid}.")
    scale = np.array([n_cols - 1, n_rows - 1]) / np.where(span > 0, span, 1.0)
    return np.rint((coords - lo) * scale).astype(np.int64)


def _paint(idx: np.ndarray, values: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    # mean value per pixel, and which pixels hold a spot
    idx = idx + pad
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


def _lattice_pixels(coords: np.ndarray) -> np.ndarray:
    # the spots' own lattice; square pixels of the nearest-spot spacing where that gives more spots
    # their own pixel (irregular layouts)
    step = spot_spacing(coords)
    if not step > 0:
        raise ValueError("Spots lie on fewer than 2 distinct positions; pass grid= to rasterize them.")
    candidates = [_pixel_index(coords, step)]  # square pixels of the spacing
    lattice = lattice_pixels(coords, step)
    if lattice is not None:
        candidates.insert(0, lattice)
    n_distinct = [len(np.unique(c, axis=0)) for c in candidates]
    best = int(np.argmax(n_distinct))
    n_shared = len(coords) - n_distinct[best]
    if n_shared:
        warnings.warn(
            f"{n_shared} of {len(coords)} spots share a pixel with another spot (the layout is not a "
            "regular array); their values are averaged. Pass grid= to choose the pixels.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    return candidates[best]


def ssim_grid(
    coords: np.ndarray,
    values_true: np.ndarray,
    values_pred: np.ndarray,
    *,
    grid: float | tuple[int, int] | None = None,
    mask_empty: bool = True,
    data_range: float | None = None,
    win_size: int = 7,
) -> float | np.ndarray | pd.Series:
    """Local SSIM between measured and predicted spot values viewed as images on the spot grid.

    Spots are rasterised with :func:`rasterize` (empty pixels are 0), the local SSIM map is computed
    with :func:`ssim_map`, and the map is averaged over tissue pixels only: the many empty pixels
    around a section would otherwise score ~1 and inflate the mean. Each window compares a
    neighbourhood of about ``win_size`` spots, so this rewards the right local pattern; it is not
    the paper's eq. 25 over whole profiles (:func:`ssim`), and the two can rank methods differently.

    Parameters
    ----------
    coords
        Spot centres, n x 2.
    values_true, values_pred
        n values, or n x c (e.g. proportions of c cell types: one SSIM per column); two DataFrames
        are matched by their labels as in :func:`ssim` (``coords`` follow ``values_true``'s rows).
    grid
        Pixel size in coordinate units or ``(n_rows, n_cols)``; default: the spots' own lattice
        (see :func:`rasterize`).
    mask_empty
        Average over pixels that hold a spot (default) rather than over the whole grid.
    data_range
        Value range for the SSIM constants; default: max - min of both inputs and 0 (the value of
        empty pixels, which the windows take in at the tissue's edge), per column.
    win_size
        Odd window size; images smaller than the window are padded with empty pixels.

    Returns
    -------
    The mean SSIM: a float for 1-D values, else one per column, labelled as by :func:`ssim`.

    """
    columns = score_labels(values_true, values_pred, axis=0)
    values_true, values_pred = _check_pair(values_true, values_pred)
    idx = _pixel_index(coords, grid)
    if len(idx) != len(values_true):
        raise ValueError(f"values have {len(values_true)} rows but coords {len(idx)}.")
    pad = max(0, (win_size - int((idx.max(axis=0) + 1).min()) + 1) // 2)
    img_t, mask = _paint(idx, values_true, pad)
    img_p, _ = _paint(idx, values_pred, pad)
    if values_true.ndim == 1:
        img_t, img_p = img_t[..., None], img_p[..., None]
    t2 = values_true.reshape(len(values_true), -1)
    p2 = values_pred.reshape(len(values_pred), -1)
    ranges = _data_range(t2, p2, data_range)
    out = np.empty(img_t.shape[-1])
    for c in range(img_t.shape[-1]):
        smap = ssim_map(img_t[..., c], img_p[..., c], data_range=ranges[c], win_size=win_size)
        out[c] = smap[mask].mean() if mask_empty else smap.mean()
    return labelled_scores(out.reshape(values_true.shape[1:]), columns)


def _check_pair(values_true, values_pred) -> tuple[np.ndarray, np.ndarray]:
    values_true, values_pred = paired_arrays(values_true, values_pred, ("values_true", "values_pred"))
    if values_true.shape != values_pred.shape:
        raise ValueError(
            f"values_true and values_pred differ in shape: {values_true.shape} vs {values_pred.shape}."
        )
    if values_true.ndim not in (1, 2) or len(values_true) == 0:
        raise ValueError(f"values must be n or n x c with n >= 1, got shape {values_true.shape}.")
    return values_true, values_pred


def _data_range(t2: np.ndarray, p2: np.ndarray, data_range: float | None) -> np.ndarray:
    # per column: max - min of both profiles and 0 (empty pixels are 0), 1 where that is 0
    if data_range is not None:
        if not (np.isfinite(data_range) and data_range > 0):
            raise ValueError(f"data_range must be a positive number, got {data_range!r}.")
        return np.full(t2.shape[1], float(data_range))
    hi = np.maximum(np.maximum(t2.max(axis=0), p2.max(axis=0)), 0.0)
    lo = np.minimum(np.minimum(t2.min(axis=0), p2.min(axis=0)), 0.0)
    return np.where(hi - lo > 0, hi - lo, 1.0)
