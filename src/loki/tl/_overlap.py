"""Placement and trimmed registration of sections that share only part of their tissue.

Coherent point drift explains every target point by the moving mixture, so target spots without a
partner in the source pull the source towards them, and the centroid-on-centroid global start puts
two sections that each hold tissue the other lacks in the wrong place. For ``lk.tl.align(...,
partial=True)``:

1. :func:`placements`: both sections are rasterised at the target's point spacing, each cell holding
   the sum of its points' leading embedding components (each section centred on its own mean, the
   maps band-passed to where the features change), and for every rotation x mirror of the source
   the cross-correlation over all translations is computed by FFT. Local maxima are candidate
   placements; the best have their rotation refined. Matching tissue correlates positively; tissue
   on one side only adds nothing, so a placement is not rewarded for covering more of the target.
2. :func:`trimmed_register`: from a placement, CPD runs on the points that have a partner on the
   other side within 0.75 point spacings, the two sets re-estimated until they stop changing (trimmed
   ICP in the CPD setting).
3. :func:`partial_start`: the refined candidate whose paired points agree most in the embedding
   (:func:`pair_agreement`) wins.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree

from loki._utils import as_rng
from loki._utils._affine import apply_matrix
from loki._utils._pca import column_mean, fit_pca
from loki.tl._cpd import (
    StartResult,
    _homogeneous,
    _spacing2,
    _subsample,
    mirror_matrix,
    register_rigid,
    rotation_matrix,
)

_ROTATION_STEP_DEG = 10.0  # trimmed CPD corrects the remaining <= 5 degrees
_MAX_CELLS = 256  # at most this many grid cells across the larger section, whatever its point density
_PEAKS_PER_ROTATION = 3
_BAND_CELLS = 4.0  # width (in grid cells) of the smooth part taken off the feature maps
_TRIM_ROUNDS = 20
_START_ROUNDS = 5  # per candidate: a wrong placement's overlap can cycle; the last level finishes the winner
# pairs closer than this many mean point spacings overlap; under one spacing so that on a lattice the
# ring of neighbours at exactly one spacing is not in or out by rounding
_PAIR_RADIUS = 0.75


def embedding_components(
    EX: np.ndarray, EY: np.ndarray, n_components: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Leading principal components of the target embedding ``EX``, and ``EY`` projected on them.

    Each section is centred on its own mean, so that an offset between the two embeddings (another
    modality, a batch) does not correlate with itself everywhere.
    """
    EX, EY = np.asarray(EX), np.asarray(EY)
    pca = fit_pca(EX, n_components)
    return pca.transform(EX), pca.transform(EY, column_mean(EY))


def _raster(xy: np.ndarray, f: np.ndarray, origin: np.ndarray, cell: float, n: int) -> np.ndarray:
    """(K, n, n) grids: the sum of ``f`` over the points in each cell."""
    ij = np.floor((xy - origin) / cell).astype(np.int64)
    ok = ((ij >= 0) & (ij < n)).all(axis=1)
    flat = ij[ok, 0] * n + ij[ok, 1]
    grids = np.stack([np.bincount(flat, weights=f[ok, k], minlength=n * n) for k in range(f.shape[1])])
    return grids.reshape(-1, n, n)


def _band_pass(n: int) -> np.ndarray:
    """Transfer function (on the ``rfft2`` grid) of a 1-cell Gaussian blur minus a ``_BAND_CELLS`` one.

    What is left of a feature map marks where the features change (domain boundaries). A domain's
    interior level would correlate with itself under any shift that keeps the domain overlapping, so
    a large domain pulls the correlation peak towards placements that overlap more; on 8,000-spot
    synthetic tissue torn on both sides the plain map's best peak was 10 spacings off, the band-passed
    one 1.5.
    """
    f2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None, :] ** 2
    return np.exp(-2 * np.pi**2 * f2) - np.exp(-2 * np.pi**2 * _BAND_CELLS**2 * f2)


class _Correlator:
    """Cross-correlation of the target's feature map with the moved source's, over all translations."""

    def __init__(self, X2: np.ndarray, Y2: np.ndarray, FX: np.ndarray, FY: np.ndarray):
        extent = max(np.ptp(X2, axis=0).max(), np.ptp(Y2, axis=0).max())
        self.cell = max(np.sqrt(_spacing2(X2)), extent / _MAX_CELLS)
        # room for any shift that keeps some overlap, so the circular correlation does not wrap onto it
        self.n = int(np.ceil(3 * extent / self.cell)) + 4
        cx, self.cy = X2.mean(axis=0), Y2.mean(axis=0)
        self.origin = cx - self.n * self.cell / 2
        # both maps band-passed: the filter enters the cross spectrum squared
        self.target_ft = (
            np.fft.rfft2(_raster(X2, FX, self.origin, self.cell, self.n)) * _band_pass(self.n) ** 2
        )
        self.centre = _homogeneous(np.eye(2), cx - self.cy)
        self.Y2, self.FY = Y2, FY

    def turn(self, flip: bool, deg: float) -> np.ndarray:
        """The source flipped (``flip``), turned by ``deg`` about its centroid, centred on the target's."""
        return self.centre @ rotation_matrix(deg, self.cy) @ (mirror_matrix(self.cy) if flip else np.eye(3))

    def __call__(self, start: np.ndarray) -> np.ndarray:
        moved = _raster(apply_matrix(self.Y2, start), self.FY, self.origin, self.cell, self.n)
        return np.fft.irfft2((self.target_ft * np.conj(np.fft.rfft2(moved))).sum(axis=0), s=(self.n, self.n))

    def placed(self, i: int, j: int, start: np.ndarray) -> np.ndarray:
        """``start`` followed by the shift of correlation cell ``(i, j)``."""
        shift = np.array([i, j])
        return (
            _homogeneous(np.eye(2), np.where(shift < self.n // 2, shift, shift - self.n) * self.cell) @ start
        )


def placements(
    X2: np.ndarray,
    Y2: np.ndarray,
    FX: np.ndarray,
    FY: np.ndarray,
    *,
    mirror: bool = True,
    step_deg: float = _ROTATION_STEP_DEG,
    peaks: int = _PEAKS_PER_ROTATION,
    n_refine: int = 0,
    refine_step_deg: float = 2.5,
) -> list[tuple[float, bool, float, np.ndarray]]:
    """Candidate placements of ``Y2`` on ``X2`` by the cross-correlation of their feature maps.

    Parameters
    ----------
    X2, Y2
        (N, 2) target and (M, 2) moving coordinates.
    FX, FY
        (N, K) and (M, K) features (e.g. :func:`embedding_components`).
    mirror
        Also try the flipped source.
    step_deg
        Rotation step.
    peaks
        Local maxima of the correlation kept per rotation and side.
    n_refine
        The best this many placements are turned in ``refine_step_deg`` steps within half a
        ``step_deg`` either way, each keeping the angle and shift of its highest correlation: on a
        large section half a coarse step moves the rim by several spacings, out of reach of the
        trimmed CPD that follows, and blurs the correlation peak.
    refine_step_deg
        Rotation step of the refinement.

    Returns
    -------
    ``(correlation, mirrored, rotation_deg, matrix)`` tuples, best first (the refined ones re-sorted
    among themselves, ahead of the rest); ``matrix`` (3x3) moves ``Y2`` into place.
    """
    corr_of = _Correlator(X2, Y2, FX, FY)
    out = []
    for flip in (False, True) if mirror else (False,):
        for deg in np.arange(0.0, 360.0, step_deg):
            start = corr_of.turn(flip, float(deg))
            corr = corr_of(start)
            local = (corr == maximum_filter(corr, size=5, mode="wrap")) & (corr > 0)
            ii, jj = np.nonzero(local)
            for q in np.argsort(-corr[ii, jj])[:peaks]:
                peak = (ii[q], jj[q])
                out.append((float(corr[peak]), flip, float(deg), corr_of.placed(*peak, start), peak))
    out.sort(key=lambda c: -c[0])
    half = step_deg / 2
    # how far (in cells) the peak of a candidate moves when the source turns by up to half a step
    reach = (
        int(np.ceil(np.deg2rad(half) * np.linalg.norm(Y2 - Y2.mean(axis=0), axis=1).max() / corr_of.cell)) + 2
    )
    refined = []
    for best, flip, deg0, matrix, (i0, j0) in out[:n_refine]:
        rows = np.arange(i0 - reach, i0 + reach + 1) % corr_of.n
        cols = np.arange(j0 - reach, j0 + reach + 1) % corr_of.n
        for deg in np.arange(deg0 - half, deg0 + half + 1e-9, refine_step_deg):
            if deg == deg0:
                continue  # the coarse angle's own peak is ``best`` already
            start = corr_of.turn(flip, float(deg))
            near = corr_of(start)[np.ix_(rows, cols)]  # the candidate's own peak, not another one
            a, b = np.unravel_index(near.argmax(), near.shape)
            if near[a, b] > best:
                best, deg0, matrix = (
                    float(near[a, b]),
                    float(deg) % 360.0,
                    corr_of.placed(rows[a], cols[b], start),
                )
        refined.append((best, flip, deg0, matrix))
    refined.sort(key=lambda c: -c[0])
    return refined + [c[:4] for c in out[n_refine:]]


def overlap_masks(X2: np.ndarray, TY2: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of each side with a point of the other side within ``radius``."""
    near_x = cKDTree(TY2).query(X2, distance_upper_bound=radius)[0] < radius
    near_y = cKDTree(X2).query(TY2, distance_upper_bound=radius)[0] < radius
    return near_x, near_y


def trimmed_register(
    X: np.ndarray,
    Y: np.ndarray,
    matrix: np.ndarray,
    *,
    max_rounds: int = _TRIM_ROUNDS,
    sigma2: float | tuple[float, float | None] | None = None,
    **cpd_kwargs,
):
    """Rigid/affine CPD of ``Y`` onto ``X`` on their overlap only, from ``matrix``.

    The overlap (points with a partner on the other side within 0.75 mean point spacings of ``X``) is
    re-estimated after every CPD run until it stops changing or ``max_rounds`` runs are done. The
    overlap is taken at the current placement, where it matches itself in shape, so only the feature
    columns move a placement that is off; from a few spacings off it stays there. The first run starts
    from ``sigma2`` (default: CPD's own initial variance), each later run from the variances its
    predecessor reached; ``cpd_kwargs`` (``kind``, ``w``, ``max_iter``, ``tol``, ``cutoff``, ...) go
    to :func:`~loki.tl._cpd.register_rigid`, with its defaults.

    Returns
    -------
    ``(matrix, result, masks, rounds)``: the composed 3x3 transform, the last
    :class:`~loki.tl._cpd.CPDResult`, the overlap masks ``(of X, of Y)`` it ran on (None when fewer
    than 3 points overlapped at the start) and the number of CPD runs.
    """
    radius = _PAIR_RADIUS * np.sqrt(_spacing2(X[:, :2]))
    previous = None
    res = None
    runs = 0
    for _ in range(max_rounds):
        TY = Y.copy()
        TY[:, :2] = apply_matrix(Y[:, :2], matrix)
        masks = overlap_masks(X[:, :2], TY[:, :2], radius)
        if masks[0].sum() < 3 or masks[1].sum() < 3:
            break
        if previous is not None and all(np.array_equal(a, b) for a, b in zip(masks, previous, strict=True)):
            break
        previous = masks
        res = register_rigid(X[masks[0]], TY[masks[1]], sigma2=sigma2, **cpd_kwargs)
        runs += 1
        matrix = res.matrix @ matrix
        sigma2 = res.sigma2
    return matrix, res, previous, runs


def pair_agreement(X2: np.ndarray, TY2: np.ndarray, FX: np.ndarray, FY: np.ndarray) -> float:
    """Sum over target points of the inner product of their features with the nearest moved point's.

    Only pairs within 0.75 mean point spacings of ``X2`` count. With features centred per section,
    unrelated pairs add about zero and matching tissue adds positively, so a wrong placement that
    covers more of the target gains nothing by it.
    """
    radius = _PAIR_RADIUS * np.sqrt(_spacing2(X2))
    d, j = cKDTree(TY2).query(X2, distance_upper_bound=radius)
    ok = d < radius
    return float(np.einsum("ij,ij->", FX[ok], FY[j[ok]]))


def partial_start(
    X: np.ndarray,
    Y: np.ndarray,
    FX: np.ndarray,
    FY: np.ndarray,
    *,
    mirror: bool = True,
    n_candidates: int = 16,
    kind: Literal["rigid", "similarity", "affine"] = "rigid",
    w: float = 0.1,
    tol: float = 1e-6,
    max_points: int = 1000,
    seed: int | np.random.Generator | None = 0,
) -> StartResult:
    """Global start for partly overlapping sections: :func:`placements`, trimmed CPD, best agreement.

    The ``n_candidates`` best placements (found on all points, their rotations refined in 2.5 degree
    steps, see :func:`placements`) are refined by :func:`trimmed_register` (at most 5 overlap
    updates) on at most ``max_points`` random points per side, starting from a spatial variance of
    (4 point spacings)^2: a placement is within a grid cell and half a rotation step of its basin, so
    a wider Gaussian would only make the truncated E-step visit more pairs. The refined run with the
    highest :func:`pair_agreement`, taken over all points, wins. ``scores`` holds one row per refined
    candidate (``mirror``, ``rotation_deg``, ``correlation``, ``overlap`` (fraction of target points
    paired), ``agreement``).
    """
    if len(FX) != len(X) or len(FY) != len(Y):
        raise ValueError("features must have one row per point.")
    rng = as_rng(seed)
    ix = _subsample(len(X), max_points, rng)
    iy = _subsample(len(Y), max_points, rng)
    Xs, Ys = X[ix], Y[iy]
    sigma2 = 16.0 * _spacing2(Xs[:, :2])
    best = None
    scores = []
    found = placements(X[:, :2], Y[:, :2], FX, FY, mirror=mirror, n_refine=n_candidates)
    for corr, flip, deg, matrix in found[:n_candidates]:
        matrix, _, masks, _ = trimmed_register(
            Xs, Ys, matrix, kind=kind, w=w, tol=tol, sigma2=sigma2, max_rounds=_START_ROUNDS
        )
        entry = {
            "mirror": flip,
            "rotation_deg": deg,
            "correlation": corr,
            "overlap": 0.0 if masks is None else float(masks[0].mean()),
            "agreement": pair_agreement(X[:, :2], apply_matrix(Y[:, :2], matrix), FX, FY),
        }
        scores.append(entry)
        if best is None or entry["agreement"] > best[0]["agreement"]:
            best = (entry, matrix)
    if best is None:
        raise ValueError("No placement of the source overlaps the target.")
    return StartResult(best[1], best[0]["mirror"], best[0]["rotation_deg"], scores)
