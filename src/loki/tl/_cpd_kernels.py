"""Numba kernels of coherent point drift: the E-step streamed over target points.

No M x N matrix is ever formed. The target points are walked one at a time: one column of the
posterior is computed into an O(M) buffer and added to ``P1`` and ``PX``.

Pairs farther apart than a cutoff radius (a multiple of sigma, measured on the two spatial
coordinates only, which bounds the full distance from below) are skipped through a uniform grid over
the moving points; while sigma is large the grid is a single cell and the E-step is exact.

Large problems run in parallel over a fixed number of chunks of target points (:data:`N_CHUNKS`),
each accumulating into its own band of moving points, and the bands are summed in chunk order: the
sums are the same, bit for bit, whatever the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from loki._utils._threads import keep_torch_threads

#: Above this many point pairs (M * N) the E-step runs in parallel; below, the thread pool's wake-up
#: costs more than it saves (the global start runs many small E-steps).
PARALLEL_PAIRS = 50_000_000
#: Chunks of target points of the parallel E-step. Fixed, not the thread count, so that the
#: floating-point sums (each chunk's, then the chunks' in order) do not depend on the machine: with
#: 16 chunks, up to 16 threads are kept busy.
N_CHUNKS = 16


@njit(cache=True)
def _grid_cells(pts2, origin, cell, nx, ny):
    n = pts2.shape[0]
    key = np.empty(n, np.int64)
    for i in range(n):
        cx = int((pts2[i, 0] - origin[0]) / cell)
        cy = int((pts2[i, 1] - origin[1]) / cell)
        cx = min(max(cx, 0), nx - 1)
        cy = min(max(cy, 0), ny - 1)
        key[i] = cy * nx + cx
    return key


@njit(cache=True)
def _cell_order(key, n_cells):
    """``np.argsort(key, kind="stable")`` for keys in ``[0, n_cells)``: a counting sort, O(n + n_cells)."""
    first = np.zeros(n_cells + 1, np.int64)
    for i in range(key.shape[0]):
        first[key[i] + 1] += 1
    for k in range(n_cells):
        first[k + 1] += first[k]
    order = np.empty(key.shape[0], np.int64)
    for i in range(key.shape[0]):
        order[first[key[i]]] = i
        first[key[i]] += 1
    return order


@njit(inline="always", fastmath=True)
def _fast_exp_neg(x):
    """exp(x) for x <= 0, vectorisable (numba has no SVML here): Taylor on x/128, squared 7 times.

    Relative error < 1e-7 on [-50, 0]; values below exp(-50) are returned as about exp(-50), which is
    negligible next to the largest term of 1 after the log-sum-exp shift.
    """
    y = max(x, -50.0) * 0.0078125
    p = 1.0 + y * (
        1.0
        + y
        * (
            0.5
            + y
            * (
                1.0 / 6.0
                + y
                * (
                    1.0 / 24.0
                    + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0 + y * (1.0 / 40320.0))))
                )
            )
        )
    )
    # seven squarings, unrolled: a loop here stops LLVM from vectorising the caller
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p


@njit(inline="always", fastmath=True)
def _add_sq_diff(b, xd, row):
    for j in range(b.shape[0]):
        diff = xd - row[j]
        b[j] += diff * diff


@njit(inline="always", fastmath=True)
def _exp_shifted(b, a, inv_2s2):
    s = 0.0
    for j in range(b.shape[0]):
        v = _fast_exp_neg(a - b[j] * inv_2s2)
        b[j] = v
        s += v
    return s


@njit(inline="always", fastmath=True)
def _axpy(out, b, scale):
    for j in range(b.shape[0]):
        out[j] += b[j] * scale


@njit(fastmath=True, cache=True)
def _estep_block(X, TYt, inv_2s2, c, starts, origin, cell, nx, ny, reach, start, stop, P1c, PXc, Pt1, base):
    """E-step sums of target points ``start:stop`` into this block's own ``P1c`` and ``PXc``.

    ``P1c`` and ``PXc`` hold the (sorted) moving points from ``base`` on: the band this block can
    reach. A plain (serial) function so that LLVM vectorises its inner loops; :func:`_estep_kernel`
    runs the chunks in parallel.
    """
    D = X.shape[1]
    buf = np.empty(TYt.shape[1])
    n_runs = (2 * reach + 1) * (2 * reach + 1)
    run_lo = np.empty(n_runs, np.int64)
    run_hi = np.empty(n_runs, np.int64)
    ll = 0.0
    for n in range(start, stop):
        cx = int(np.floor((X[n, 0] - origin[0]) / cell))
        cy = int(np.floor((X[n, 1] - origin[1]) / cell))
        nr = 0
        for gy in range(max(cy - reach, 0), min(cy + reach, ny - 1) + 1):
            for gx in range(max(cx - reach, 0), min(cx + reach, nx - 1) + 1):
                k = gy * nx + gx
                if starts[k + 1] > starts[k]:
                    run_lo[nr] = starts[k]
                    run_hi[nr] = starts[k + 1]
                    nr += 1
        pos = 0
        dmin = np.inf
        for r in range(nr):
            lo = run_lo[r]
            hi = run_hi[r]
            b = buf[pos : pos + hi - lo]
            b[:] = 0.0
            for d in range(D):
                _add_sq_diff(b, X[n, d], TYt[d, lo:hi])
            dmin = min(dmin, b.min())
            pos += hi - lo
        if pos == 0:
            ll += np.log(c) if c > 0.0 else -745.0
            continue
        a = dmin * inv_2s2
        if c > 0.0 and a > 600.0:
            ll += np.log(c)
            continue
        s = _exp_shifted(buf[:pos], a, inv_2s2)
        denom = s + (c * np.exp(a) if c > 0.0 else 0.0)
        ll += np.log(denom) - a
        invd = 1.0 / denom
        Pt1[n] = s * invd
        pos = 0
        for r in range(nr):
            lo = run_lo[r]
            hi = run_hi[r]
            b = buf[pos : pos + hi - lo]
            _axpy(P1c[lo - base : hi - base], b, invd)
            for d in range(D):
                _axpy(PXc[d, lo - base : hi - base], b, invd * X[n, d])
            pos += hi - lo
    return ll


@njit(parallel=True, cache=True)
def _estep_kernel(X, TYt, inv_2s2, c, starts, origin, cell, nx, ny, reach, bounds, band_lo, offsets):
    """Posterior sums for target points ``X`` (N, D) and moving points ``TYt`` (D, M) sorted by cell.

    For each target point the candidate moving points are the runs of the (2 reach + 1)^2 grid cells
    around it. The posterior column is shifted by its smallest squared distance (log-sum-exp), so far
    points and ``w = 0`` stay finite. Chunk ``k`` holds target points ``bounds[k]:bounds[k + 1]``
    and accumulates into its own band of moving points, ``band_lo[k]`` on, stored at
    ``offsets[k]:offsets[k + 1]`` of one buffer; the bands are added up in chunk order. Returns
    ``P1`` (M,), ``Pt1`` (N,), ``PX`` (D, M) and the sum of ``log(sum_m k_mn + c)``.
    """
    N, D = X.shape
    M = TYt.shape[1]
    n_chunks = len(bounds) - 1
    P1_bands = np.zeros(offsets[n_chunks])
    # chunk k's PX band is the C-contiguous (D, length) block at D * offsets[k]: a strided view of
    # one (D, total) array would keep LLVM from vectorising the accumulation
    PX_bands = np.zeros(D * offsets[n_chunks])
    Pt1 = np.zeros(N)
    ll_parts = np.zeros(n_chunks)
    for ch in prange(n_chunks):
        a = offsets[ch]
        b = offsets[ch + 1]
        ll_parts[ch] = _estep_block(
            X,
            TYt,
            inv_2s2,
            c,
            starts,
            origin,
            cell,
            nx,
            ny,
            reach,
            bounds[ch],
            bounds[ch + 1],
            P1_bands[a:b],
            PX_bands[D * a : D * b].reshape(D, b - a),
            Pt1,
            band_lo[ch],
        )
    P1 = np.zeros(M)
    PX = np.zeros((D, M))
    ll = 0.0
    for ch in range(n_chunks):
        a = offsets[ch]
        b = offsets[ch + 1]
        lo = band_lo[ch]
        P1[lo : lo + b - a] += P1_bands[a:b]
        band = PX_bands[D * a : D * b].reshape(D, b - a)
        for d in range(D):
            PX[d, lo : lo + b - a] += band[d]
        ll += ll_parts[ch]
    return P1, Pt1, PX, ll


def _chunks(X2, origin, cell, nx, ny, reach, starts):
    """Target order and chunks for :func:`_estep_kernel`: its ``(order, bounds, band_lo, offsets)``.

    The target points are sorted by grid cell (row-major), so that the cells a chunk of them reaches
    lie in a run of grid rows, i.e. one contiguous band of the moving points sorted by cell.
    """
    N = len(X2)
    key = _grid_cells(X2, origin, cell, nx, ny)
    order = _cell_order(key, nx * ny)
    n_chunks = min(N_CHUNKS, N)
    bounds = np.arange(n_chunks + 1, dtype=np.int64) * N // n_chunks
    rows = key[order] // nx
    # one row of margin: _estep_block finds a point's cell under fastmath (the division may become a
    # multiplication by the reciprocal), which can put a point on a cell border into the next row
    first = np.maximum(rows[bounds[:-1]] - reach - 1, 0)
    last = np.minimum(rows[bounds[1:] - 1] + reach + 1, ny - 1)
    band_lo = starts[first * nx]
    offsets = np.zeros(n_chunks + 1, dtype=np.int64)
    np.cumsum(starts[(last + 1) * nx] - band_lo, out=offsets[1:])
    return order, bounds, band_lo, offsets


def estep(
    X: np.ndarray,
    TY: np.ndarray,
    sigma2: float,
    w: float,
    *,
    sigma2_features: float | None = None,
    cutoff: float = 6.0,
    max_cells: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """CPD E-step sums without forming the posterior matrix.

    Parameters
    ----------
    X
        Target points (N, D), the first two columns spatial.
    TY
        Transformed moving points (M, D).
    sigma2
        Current variance of the spatial columns (of all columns when ``sigma2_features`` is None).
    w
        Outlier weight in [0, 1).
    sigma2_features
        Separate variance of the feature columns (2:), i.e. a diagonal covariance. Evaluated by
        scaling the feature columns by ``sqrt(sigma2 / sigma2_features)``.
    cutoff
        Moving points outside the grid cells within ``cutoff * sigma`` (spatial distance) of a target
        point are skipped; they contribute ``exp(-cutoff**2 / 2)`` or less. ``np.inf`` gives the
        dense sums.
    max_cells
        Upper bound on the number of grid cells (default ``4 * M``).

    Returns
    -------
    ``(P1, Pt1, PX, loglik)``: row sums (M,), column sums (N,), ``P @ X`` (M, D) and the log-likelihood
    of the Gaussian mixture with a uniform outlier component.

    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    TY = np.ascontiguousarray(TY, dtype=np.float64)
    N, D = X.shape
    M = TY.shape[0]
    sigma2 = max(float(sigma2), 1e-12)
    n_feat = D - 2
    ratio = 1.0
    if sigma2_features is not None and n_feat > 0:
        sigma2_features = max(float(sigma2_features), 1e-12)
        ratio = np.sqrt(sigma2 / sigma2_features)
        X = X.copy()
        X[:, 2:] *= ratio
        TY = TY.copy()
        TY[:, 2:] *= ratio
    else:
        sigma2_features = sigma2
    # log of (2 pi)^(D/2) * prod_d sigma_d
    log_norm = 0.5 * (2 * np.log(2.0 * np.pi * sigma2) + n_feat * np.log(2.0 * np.pi * sigma2_features))
    c = np.exp(log_norm) * w / (1.0 - w) * M / N if w > 0 else 0.0
    radius = cutoff * np.sqrt(sigma2) if np.isfinite(cutoff) else np.inf

    lo = np.minimum(X[:, :2].min(axis=0), TY[:, :2].min(axis=0))
    hi = np.maximum(X[:, :2].max(axis=0), TY[:, :2].max(axis=0))
    extent = float(max((hi - lo).max(), 1e-12))
    max_cells = 4 * M if max_cells is None else max_cells
    if not np.isfinite(radius) or radius >= extent:
        cell, reach, nx, ny = extent * 2.0, 1, 1, 1
    else:
        cell = max(radius, extent / np.sqrt(max(max_cells, 1)))
        reach = int(np.ceil(radius / cell))
        nx = int((hi[0] - lo[0]) / cell) + 1
        ny = int((hi[1] - lo[1]) / cell) + 1
    key = _grid_cells(TY[:, :2], lo, cell, nx, ny)
    order = _cell_order(key, nx * ny)
    starts = np.zeros(nx * ny + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=nx * ny), out=starts[1:])
    TYt = np.ascontiguousarray(TY[order].T)
    if M * N <= PARALLEL_PAIRS:
        # serial path: skips the thread pool, whose wake-up dominates small problems
        P1s = np.zeros(M)
        PXs = np.zeros((D, M))
        Pt1 = np.zeros(N)
        ll = _estep_block(X, TYt, 0.5 / sigma2, c, starts, lo, cell, nx, ny, reach, 0, N, P1s, PXs, Pt1, 0)
    else:
        xorder, bounds, band_lo, offsets = _chunks(X[:, :2], lo, cell, nx, ny, reach, starts)
        with keep_torch_threads():  # numba's thread pool starts on the first parallel call
            P1s, Pt1s, PXs, ll = _estep_kernel(
                np.ascontiguousarray(X[xorder]),
                TYt,
                0.5 / sigma2,
                c,
                starts,
                lo,
                cell,
                nx,
                ny,
                reach,
                bounds,
                band_lo,
                offsets,
            )
        Pt1 = np.empty(N)
        Pt1[xorder] = Pt1s
    P1 = np.empty(M)
    P1[order] = P1s
    PX = np.empty((M, D))
    PX[order] = PXs.T
    if ratio != 1.0:
        PX[:, 2:] /= ratio
    loglik = ll + N * np.log(max(1.0 - w, 1e-300) / M) - N * log_norm
    return P1, Pt1, PX, float(loglik)


def gaussian_cross_kernel(A: np.ndarray, B: np.ndarray, inv_2b2: float) -> np.ndarray:
    """``exp(-||a_i - b_j||^2 / (2 beta^2))`` for (n, d) ``A`` and (k, d) ``B`` (k small).

    Parameters
    ----------
    A
        (n, d) float64 points.
    B
        (k, d) float64 points.
    inv_2b2
        ``1 / (2 beta^2)``.

    Returns
    -------
    The (n, k) kernel matrix, computed in parallel over the rows of ``A``.

    """
    with keep_torch_threads():
        return _gaussian_cross_kernel(A, B, inv_2b2)


@njit(parallel=True, fastmath=True, cache=True)
def _gaussian_cross_kernel(A, B, inv_2b2):  # pragma: no cover - numba
    n, d = A.shape
    k = B.shape[0]
    out = np.empty((n, k))
    for i in prange(n):
        for j in range(k):
            d2 = 0.0
            for t in range(d):
                diff = A[i, t] - B[j, t]
                d2 += diff * diff
            out[i, j] = np.exp(-d2 * inv_2b2)
    return out
