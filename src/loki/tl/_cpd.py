"""Coherent point drift (Myronenko & Song 2010; Loki Methods eqs. 2-7) on plain numpy arrays.

Points are rows ``[x, y, f_1, ..., f_k]``: two spatial coordinates followed by fixed features (the
leading principal components of the embeddings). The E-step uses all columns; the M-steps move only
the spatial columns (the paper: "the M-step was optimized by updating only the coordinates").

- :func:`register_rigid`: closed-form rigid (optionally with isotropic scale) or affine M-step.
- :func:`register_deformable`: Gaussian-kernel displacement field ``v = G W`` with a Nyström low-rank
  kernel ``G ~ Q S Q^T`` (``n_landmarks`` columns; never the M x M kernel or its
  eigendecomposition) and the Woodbury solve of eq. 5.
- :func:`global_start`: several initial rotations x optional mirror, each refined by a short rigid
  CPD on a subsample; the start with the best log-likelihood wins.
- :func:`cpd_align`: the whole recipe on a coarse-to-fine pyramid (:func:`pyramid_levels`); above
  ``max_points`` points per side the finest level's transform and field are interpolated to all points.

The E-step (:func:`loki.tl._cpd_kernels.estep`) is streamed in numba without the M x N posterior;
its sums do not depend on the number of threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from loki._logging import logger
from loki._utils import as_rng
from loki._utils._affine import apply_matrix, linear_scale
from loki._utils._spacing import nearest_distances

from ._cpd_kernels import estep, gaussian_cross_kernel

Method = Literal["rigid", "similarity", "affine", "deformable"]
Linear = Literal["rigid", "similarity", "affine"]
_LINEAR = ("rigid", "similarity", "affine")

_EPS = 1e-12
_PARTIAL_VALIDATED = 35_000  # largest section partial=True was checked on (benchmarks/RESULTS.md)
_LEVEL_ANNEAL = 0.95  # per-iteration variance factor on subsample levels (see register_rigid)
# a deformable result whose spread along a principal axis, or whose median spot spacing, is below this
# fraction of the pre-alignment's has collapsed. Smallest ratio (axes and spacing): 0.81 on the 14 real
# serial pairs of benchmarks/bench_align_real.py, 1.0 on its known transforms, 0.69 on its torn sections,
# 0.90 on the synthetic warps of tests/tl/test_align.py; her2st A2 -> A1 with a loki-tiny that saw only
# A2: 0.09-0.21 (0.37 with alpha=5), and 0.26-0.44 on Stahl layer 1 torn on both sides without partial=True
COLLAPSE_RATIO = 0.5


def initial_sigma2(X: np.ndarray, Y: np.ndarray) -> float:
    """Eq. 2, ``sum ||x_n - y_m||^2 / (D M N)``, in O((M + N) D)."""
    N, D = X.shape
    M = Y.shape[0]
    if D == 0:
        return 1.0
    total = M * (X**2).sum() + N * (Y**2).sum() - 2.0 * X.sum(axis=0) @ Y.sum(axis=0)
    return float(max(total / (D * M * N), _EPS))


def _initial_variances(X: np.ndarray, Y: np.ndarray) -> tuple[float, float | None]:
    """Eq. 2 for the spatial columns and, separately, for the feature columns (None without features)."""
    s2 = initial_sigma2(X[:, :2], Y[:, :2])
    s2f = initial_sigma2(X[:, 2:], Y[:, 2:]) if X.shape[1] > 2 else None
    return s2, s2f


def _start_variances(
    X: np.ndarray, Y: np.ndarray, sigma2: float | tuple[float, float | None] | None
) -> tuple[float, float | None, float]:
    """The variances a CPD run starts from, and the floor of the feature variance.

    ``sigma2`` is the spatial variance or a ``(spatial, features)`` pair (a previous run's); what it
    leaves out (None, or no feature variance) is eq. 2 on that block (:func:`_initial_variances`).
    The floor keeps the feature variance from collapsing to 0 on features that match exactly.
    """
    s2, s2f = _initial_variances(X, Y)
    floor = 1e-6 * (s2f or 0.0)
    if sigma2 is not None:
        s2, given = sigma2 if isinstance(sigma2, tuple) else (float(sigma2), None)
        s2f = s2f if given is None else given
    return s2, s2f, floor


def _variances(
    X: np.ndarray, TY: np.ndarray, P1: np.ndarray, Pt1: np.ndarray, PX: np.ndarray, s2f_floor: float
) -> tuple[float, float | None]:
    """Eq. 7 for the spatial columns and the feature columns separately (diagonal covariance)."""
    Np = max(P1.sum(), _EPS)

    def block(sl):
        d = X[:, sl].shape[1]
        val = (
            Pt1 @ (X[:, sl] ** 2).sum(axis=1)
            - 2.0 * (PX[:, sl] * TY[:, sl]).sum()
            + P1 @ (TY[:, sl] ** 2).sum(axis=1)
        )
        return float(max(val / (Np * d), _EPS))

    s2 = block(slice(0, 2))
    s2f = max(block(slice(2, None)), s2f_floor) if X.shape[1] > 2 else None
    return s2, s2f


def deformation_ratios(before: np.ndarray, after: np.ndarray) -> dict:
    """How much a non-rigid motion ``before -> after`` of (n, 2) points shrank or spread them.

    Returns ``axes_before`` and ``axes_after`` (standard deviations along the principal axes of
    each point cloud, major first), ``spacing_before`` and ``spacing_after`` (median distance of a
    point to its nearest neighbour, over distinct points), ``axis_ratios`` and ``spacing_ratio``
    (after / before; NaN where the points before have no spread or spacing) and ``collapsed``:
    whether a ratio is below :data:`COLLAPSE_RATIO`. A rotation or translation leaves every ratio 1.
    """

    def axes(xy: np.ndarray) -> np.ndarray:
        if len(xy) < 2:
            return np.zeros(2)
        return np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(xy.T)), 0.0, None))[::-1]

    def spacing(xy: np.ndarray) -> float:
        dist = nearest_distances(xy)
        return float(np.median(dist)) if dist.size else 0.0

    def ratio(a, b):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        return np.divide(a, b, out=np.full(b.shape, np.nan), where=b > _EPS)

    ax_b, ax_a = axes(before), axes(after)
    sp_b, sp_a = spacing(before), spacing(after)
    axis_ratios = ratio(ax_a, ax_b)
    spacing_ratio = float(ratio(sp_a, sp_b))
    ratios = np.append(axis_ratios, spacing_ratio)
    return {
        "axes_before": ax_b,
        "axes_after": ax_a,
        "spacing_before": sp_b,
        "spacing_after": sp_a,
        "axis_ratios": axis_ratios,
        "spacing_ratio": spacing_ratio,
        "collapsed": bool(np.any(ratios[np.isfinite(ratios)] < COLLAPSE_RATIO)),
    }


def _homogeneous(lin: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2, :2] = lin
    out[:2, 2] = t
    return out


def fit_linear(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    kind: Linear = "rigid",
    allow_reflection: bool = False,
) -> np.ndarray:
    """Weighted least-squares 3x3 transform mapping (n, 2) ``src`` onto ``dst`` (Umeyama / affine).

    Parameters
    ----------
    src, dst
        Corresponding points.
    weights
        Per-point weights (default uniform).
    kind
        ``"rigid"`` (rotation + translation), ``"similarity"`` (+ isotropic scale) or ``"affine"``.
    allow_reflection
        Let a rigid/similarity fit have determinant -1.

    """
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=float)
    sw = max(w.sum(), _EPS)
    mu_s = w @ src / sw
    mu_d = w @ dst / sw
    s0 = src - mu_s
    d0 = dst - mu_d
    if kind == "affine":
        lin = (d0.T * w) @ s0 @ np.linalg.pinv((s0.T * w) @ s0)
    else:
        A = (d0.T * w) @ s0
        U, _S, Vt = np.linalg.svd(A)
        C = np.eye(2)
        if not allow_reflection:
            C[1, 1] = np.sign(np.linalg.det(U @ Vt)) or 1.0
        lin = U @ C @ Vt
        if kind == "similarity":
            lin *= np.trace(A.T @ lin) / max(w @ (s0**2).sum(axis=1), _EPS)
    return _homogeneous(lin, mu_d - lin @ mu_s)


def remove_global_scale(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, float]:
    """Divide the isotropic scale out of a non-rigid motion ``before -> after`` of (n, 2) points.

    Fits the similarity transform ``after ~ s R before + t`` (Umeyama) and returns
    ``(after - (s R - R)(before - mean(before)), s)``: the motion keeps its rotation, translation
    and local residual warp but no longer changes the overall size (the similarity fit of the
    result has scale 1).
    """
    sim = fit_linear(before, after, kind="similarity")
    lin = sim[:2, :2]
    scale = linear_scale(lin)
    if scale < _EPS:
        return after.copy(), scale
    centred = before - before.mean(axis=0)
    return after - centred @ (lin - lin / scale).T, scale


@dataclass
class CPDResult:
    """Outcome of one registration run on arrays.

    Attributes
    ----------
    TY
        Moved points (M, D); only the first two columns changed.
    matrix
        3x3 transform of the spatial columns for rigid/affine runs (identity for deformable runs,
        whose motion is ``displacement``).
    displacement
        (M, 2) non-rigid displacement added to the input spatial columns (zeros for rigid runs).
    sigma2, loglik, n_iter, converged
        Final variances ``(spatial, features)`` (features None without feature columns), log-likelihood, iterations run and whether ``tol`` was met.
    interpolator
        For deformable runs: ``(landmarks, coef, beta)`` so that the displacement at new points ``y``
        is ``G(y, landmarks) @ coef`` (the Nyström form of the CPD field ``G W``).

    """

    TY: np.ndarray
    matrix: np.ndarray
    displacement: np.ndarray
    sigma2: tuple[float, float | None]
    loglik: float
    n_iter: int
    converged: bool
    interpolator: tuple | None = None
    history: list[float] = field(default_factory=list)

    def displacement_at(self, y: np.ndarray) -> np.ndarray:
        """The deformable field evaluated at new spatial points ``y`` (n, 2)."""
        if self.interpolator is None:
            return np.zeros((len(y), 2))
        Z, coef, beta = self.interpolator
        y = np.ascontiguousarray(y, dtype=np.float64)
        out = np.empty((len(y), coef.shape[1]))
        step = 65536  # keeps the (rows x landmarks) kernel block small for 1e5+ points
        for i in range(0, len(y), step):
            out[i : i + step] = gaussian_cross_kernel(y[i : i + step], Z, 0.5 / beta**2) @ coef
        return out


def _converged(ll: float, ll_prev: float, tol: float) -> bool:
    if not np.isfinite(ll_prev):
        return False
    return abs(ll - ll_prev) <= tol * max(abs(ll_prev), 1.0)


def register_rigid(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    kind: Linear = "rigid",
    w: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    sigma2: float | tuple[float, float | None] | None = None,
    cutoff: float = 6.0,
    sigma2_stop: float = 0.0,
    anneal: float = 1.0,
) -> CPDResult:
    """Rigid / similarity / affine CPD of the spatial columns of ``Y`` onto ``X``.

    Parameters
    ----------
    X, Y
        Target (N, D) and moving (M, D) points, spatial columns first.
    kind
        Transform family of the M-step.
    w
        Outlier weight in [0, 1).
    max_iter, tol
        Iteration cap and relative log-likelihood tolerance.
    sigma2
        Starting variance, or ``(spatial, features)`` variances (default eq. 2 on each block).
    cutoff
        E-step truncation in units of sigma (``np.inf`` for dense sums).
    sigma2_stop
        Also stop (counted as converged) once the spatial variance falls to this value.
    anneal
        Deterministic annealing: the spatial variance shrinks at least by this factor per iteration
        (1 = plain EM, the variance free to rise). Between two sets of points that do not correspond one to one (random
        subsamples), EM barely lowers a variance that exceeds their misalignment, since any such
        variance is nearly self-consistent over a uniform interior; annealing moves on regardless.

    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    s2, s2f, floor = _start_variances(X, Y, sigma2)
    TY = Y.copy()
    matrix = np.eye(3)
    s2_prev = s2 if anneal < 1.0 else None
    ll_prev = -np.inf
    history: list[float] = []
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        P1, Pt1, PX, ll = estep(X, TY, s2, w, sigma2_features=s2f, cutoff=cutoff)
        history.append(ll)
        Np = P1.sum()
        if Np < _EPS:
            break
        # M-step on the spatial columns: PX / P1 are the weighted targets of each moving point
        targets = PX[:, :2] / np.maximum(P1, _EPS)[:, None]
        matrix = fit_linear(Y[:, :2], targets, P1, kind=kind)
        TY[:, :2] = apply_matrix(Y[:, :2], matrix)
        s2, s2f = _variances(X, TY, P1, Pt1, PX, floor)
        s2 = max(min(s2, anneal * s2_prev), sigma2_stop) if s2_prev is not None else s2
        s2_prev = s2 if s2_prev is not None else None
        if _converged(ll, ll_prev, tol) or s2 <= sigma2_stop:
            converged = True
            break
        ll_prev = ll
    return CPDResult(
        TY,
        matrix,
        np.zeros((len(Y), 2)),
        (s2, s2f),
        history[-1] if history else -np.inf,
        it,
        converged,
        None,
        history,
    )


def nystrom_basis(
    Y2: np.ndarray, beta: float, n_landmarks: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Low-rank ``G ~ Q diag(S) Q^T`` of the Gaussian kernel on ``Y2`` (M, 2) from landmarks.

    Returns ``(Q, S, Z, T)`` with ``Q`` (M, r) orthonormal, ``S`` (r,), landmarks ``Z`` (L, 2) and
    ``T`` (L, r) such that ``G(y, Z) @ T @ diag(S)`` reproduces ``Q diag(S)`` at the rows of ``Y2``, i.e.
    a field ``Q diag(S) a`` extends to new points as ``G(y, Z) @ (T @ (S * a))``.
    """
    M = len(Y2)
    L = min(n_landmarks, M)
    Z = Y2[np.sort(rng.choice(M, size=L, replace=False))] if L < M else Y2.copy()
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    inv_2b2 = 0.5 / beta**2
    C = gaussian_cross_kernel(np.ascontiguousarray(Y2, dtype=np.float64), Z, inv_2b2)  # (M, L)
    Kzz = gaussian_cross_kernel(Z, Z, inv_2b2)
    lam, U = np.linalg.eigh(Kzz)  # L x L only
    keep = lam > lam.max() * 1e-10
    lam, U = lam[keep], U[:, keep]
    B = C @ (U / np.sqrt(lam))  # G ~ B B^T
    Q, sv, Vt = np.linalg.svd(B, full_matrices=False)
    keep = sv > sv.max() * 1e-6
    Q, sv, Vt = Q[:, keep], sv[keep], Vt[keep]
    S = sv**2
    # Q = B V / sv  =>  Q diag(S) a = C U lam^-1/2 V diag(sv) a
    T = (U / np.sqrt(lam)) @ Vt.T / sv
    return Q, S, Z, T


def register_deformable(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    alpha: float = 0.5,
    beta: float = 2.0,
    w: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    sigma2: float | tuple[float, float | None] | None = None,
    sigma2_max: float = np.inf,
    n_landmarks: int = 300,
    cutoff: float = 6.0,
    seed: int | np.random.Generator | None = 0,
) -> CPDResult:
    """Deformable CPD of the spatial columns of ``Y`` onto ``X`` with a low-rank kernel (eqs. 3-7).

    Parameters
    ----------
    X, Y, w, max_iter, tol, sigma2, cutoff
        As in :func:`register_rigid`.
    alpha
        Regularisation weight (lambda of eq. 5).
    beta
        Width of the Gaussian kernel of eq. 3, in the units of the spatial columns.
    sigma2_max
        Cap on the spatial variance, from the start and after each M-step (the approximation's
        subsample level, whose points have no exact partners, caps it at its squared point spacing).
    n_landmarks
        Nyström landmarks (rank bound) of the kernel.
    seed
        Seed for the landmark choice.

    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    Q, S, Z, T = nystrom_basis(Y[:, :2], beta, n_landmarks, as_rng(seed))
    s2, s2f, floor = _start_variances(X, Y, sigma2)
    s2 = min(s2, sigma2_max)
    TY = Y.copy()
    W = np.zeros((len(Y), 2))
    ll_prev = -np.inf
    history: list[float] = []
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        P1, Pt1, PX, ll = estep(X, TY, s2, w, sigma2_features=s2f, cutoff=cutoff)
        history.append(ll)
        if P1.sum() < _EPS:
            break
        # Woodbury solve of (d(P1) G + alpha s2 I) W = PX - d(P1) Y with G = Q S Q^T
        F = PX[:, :2] - P1[:, None] * Y[:, :2]
        dPQ = P1[:, None] * Q
        inner = alpha * s2 * np.diag(1.0 / S) + Q.T @ dPQ
        W = (F - dPQ @ np.linalg.solve(inner, Q.T @ F)) / (alpha * s2)
        TY[:, :2] = Y[:, :2] + Q @ (S[:, None] * (Q.T @ W))
        s2, s2f = _variances(X, TY, P1, Pt1, PX, floor)
        s2 = min(s2, sigma2_max)
        if _converged(ll, ll_prev, tol):
            converged = True
            break
        ll_prev = ll
    coef = T @ (S[:, None] * (Q.T @ W))
    disp = TY[:, :2] - Y[:, :2]
    result = CPDResult(
        TY, np.eye(3), disp, (s2, s2f), history[-1] if history else -np.inf, it, converged, None, history
    )
    result.interpolator = (Z, coef, float(beta))
    return result


def mirror_matrix(center: np.ndarray) -> np.ndarray:
    """3x3 matrix flipping the x axis about ``center``."""
    return _homogeneous(np.diag([-1.0, 1.0]), np.array([2.0 * center[0], 0.0]))


def rotation_matrix(deg: float, center: np.ndarray) -> np.ndarray:
    """3x3 matrix rotating by ``deg`` degrees about ``center``."""
    t = np.deg2rad(deg)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return _homogeneous(R, center - R @ center)


def _warm_sigma2(sigma2: tuple[float, float | None], factor: float = 4.0) -> tuple[float, float | None]:
    """Variances to start a deformable stage from: the pre-alignment's, the spatial one widened.

    The factor lets the field still move points by a few residual distances.
    """
    return (sigma2[0] * factor, sigma2[1])


def _spacing2(xy: np.ndarray) -> float:
    """Squared mean nearest-neighbour distance of (n, 2) points, over distinct points (0 for fewer than 2).

    CPD's scales have used the mean since its first version; the readers and metrics use the median
    (:func:`~loki._utils._spacing.nearest_spot_distance`). Both read the same distances.
    """
    dist = nearest_distances(xy)
    return float(dist.mean() ** 2) if dist.size else 0.0


def _subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


@dataclass
class StartResult:
    """Best global start: its 3x3 matrix (mirror, rotation, translation) and the scores of all starts."""

    matrix: np.ndarray
    mirror: bool
    rotation_deg: float
    scores: list[dict]


def global_start(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    n_rotations: int = 8,
    mirror: bool = True,
    kind: Linear = "rigid",
    w: float = 0.1,
    max_points: int = 400,
    n_screen_iter: int = 15,
    n_keep: int = 3,
    max_iter: int = 100,
    tol: float = 1e-5,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int | np.random.Generator | None = 0,
) -> StartResult:
    """Try ``n_rotations`` initial rotations (x flipped source when ``mirror``), keep the best.

    Each start rotates (and flips) the moving points about their centroid, moves that centroid onto
    the target's, and runs a short rigid CPD (``n_screen_iter`` iterations) on at most ``max_points``
    points per side. For the unflipped and for the flipped source alike, the ``n_keep`` starts with
    the highest log-likelihood (all runs see the same subsample, so their likelihoods compare)
    continue to convergence; the best converged run (as below) wins and its full transform (start
    composed with the CPD result) is returned.

    With ``embeddings`` (the full embeddings of ``X`` and ``Y``, rows matching), the converged runs
    are compared by :func:`embedding_agreement`: how alike, in the whole embedding, each target
    point and the moved source point nearest to it are, over all points given, not the screening
    subsample (on 400 of 4,000 synthetic spots per side the mirror image won for 3 seeds of 8). Without, they are compared by their
    log-likelihood at one spatial variance, the smallest any of them reached, each with its feature
    variance re-fitted at that resolution (:func:`_profile_loglik`).

    Why not the likelihood of each run at its own variances: a wide spatial Gaussian lets each
    point pick the partners with the closest feature columns from far around, which lowers the
    feature variance by more than the spatial one rose. On her2st A5 onto A4 the flipped source won
    that way (302.9 against 270.7, spatial variance 0.0083 against 0.0021). At the common variance
    it lost, but with the embedding's components fitted on another section (A1) it won again (295.7
    against 269.5). The two leading components do not settle a mirror; the whole embedding does: the
    unflipped run's paired spots agree better (0.319 against 0.289), and so does their measured
    expression.
    """
    rng = as_rng(seed)
    ix = _subsample(len(X), max_points, rng)
    iy = _subsample(len(Y), max_points, rng)
    Xs, Ys = X[ix], Y[iy]
    cy = Y[:, :2].mean(axis=0)
    shift = _homogeneous(np.eye(2), X[:, :2].mean(axis=0) - cy)
    scores = []
    runs = []
    for flip in (False, True) if mirror else (False,):
        for k in range(max(1, n_rotations)):
            deg = 360.0 * k / max(1, n_rotations)
            start = shift @ rotation_matrix(deg, cy) @ (mirror_matrix(cy) if flip else np.eye(3))
            Ystart = Ys.copy()
            Ystart[:, :2] = apply_matrix(Ys[:, :2], start)
            res = register_rigid(Xs, Ystart, kind=kind, w=w, max_iter=n_screen_iter, tol=tol, cutoff=np.inf)
            entry = {"mirror": flip, "rotation_deg": deg, "loglik_screen": res.loglik}
            scores.append(entry)
            runs.append((entry, start, res))
    runs.sort(key=lambda run: -run[0]["loglik_screen"])
    # the n_keep best starts of each side: one basin of one side can fill the first places
    kept = []
    for side in (False, True):
        kept += [run for run in runs if run[0]["mirror"] == side][: max(1, n_keep)]
    finals = []
    for entry, start, res in kept:
        Ymid = Ys.copy()
        Ymid[:, :2] = apply_matrix(Ys[:, :2], res.matrix @ start)
        res2 = register_rigid(
            Xs, Ymid, kind=kind, w=w, max_iter=max_iter, tol=tol, sigma2=res.sigma2, cutoff=np.inf
        )
        finals.append((entry, res2, res2.matrix @ res.matrix @ start))
    s2_common = min(res2.sigma2[0] for _, res2, _ in finals)
    best = None
    for entry, res2, matrix in finals:
        TY = Ys.copy()
        TY[:, :2] = apply_matrix(Ys[:, :2], matrix)
        ll = _profile_loglik(Xs, TY, s2_common, res2.sigma2[1], w)
        entry.update(loglik=res2.loglik, loglik_common=ll)
        if embeddings is not None:
            # on every point given, not the screening subsample: pairs of subsample points are too
            # few and too far apart to tell a section from its mirror image reliably
            entry["agreement"] = embedding_agreement(
                X[:, :2], apply_matrix(Y[:, :2], matrix), embeddings[0], embeddings[1]
            )
        key = entry.get("agreement", ll)
        if best is None or key > best[0]:
            best = (key, matrix, entry)
    assert best is not None
    return StartResult(best[1], best[2]["mirror"], best[2]["rotation_deg"], scores)


def embedding_agreement(X2: np.ndarray, TY2: np.ndarray, EX: np.ndarray, EY: np.ndarray) -> float:
    """Mean over target points of the correlation of their embedding with the nearest moved point's.

    ``X2`` (N, 2) target and ``TY2`` (M, 2) moved source coordinates; ``EX`` (N, K) and ``EY`` (M, K)
    their embeddings. A target point pairs with the nearest moved point within the target's mean
    point spacing (:func:`loki.metrics.matched_expression_correlation`); the correlation is
    Pearson's across the K dimensions; unpaired target points, and pairs with a constant embedding,
    count 0, so a transform that leaves part of the target uncovered scores lower. A 1-dimensional
    embedding has no such correlation and scores 0.
    """
    from loki.metrics import matched_expression_correlation

    if EX.shape[1] < 2:
        return 0.0
    pairs = matched_expression_correlation(
        EX, X2, EY, TY2, max_distance=np.sqrt(_spacing2(X2)), kendall=False
    )
    return float(np.nansum(pairs["pearson"]) / len(X2))


def _profile_loglik(
    X: np.ndarray, TY: np.ndarray, sigma2: float, sigma2_features: float | None, w: float, max_iter: int = 50
) -> float:
    """Log-likelihood of fixed points ``TY`` at spatial variance ``sigma2``, feature variance re-fitted.

    EM on the feature variance alone (eq. 7 on the feature columns), from ``sigma2_features``.
    """
    s2f = sigma2_features
    for _ in range(max_iter if s2f is not None else 0):
        P1, Pt1, PX, _ = estep(X, TY, sigma2, w, sigma2_features=s2f, cutoff=np.inf)
        _, new = _variances(X, TY, P1, Pt1, PX, 1e-6 * s2f)
        done = abs(new - s2f) <= 1e-6 * s2f
        s2f = new
        if done:
            break
    return estep(X, TY, sigma2, w, sigma2_features=s2f, cutoff=np.inf)[3]


@dataclass
class AlignResult:
    """Outcome of :func:`cpd_align` in the normalised frame of its inputs.

    Attributes
    ----------
    coords
        (M, 2) aligned spatial coordinates of the moving points (non-rigid for ``deformable``).
    matrix
        3x3 rigid/affine part (the pre-alignment for rigid/affine runs; for deformable runs the fit of
        the input onto ``coords`` in the ``pre_align`` family, reflection allowed when a mirror was
        chosen: rigid as in the paper by default, with the scale or shear found when ``pre_align`` is
        ``"similarity"`` or ``"affine"``, so that ``matrix`` places the section where ``coords`` lie;
        the pre-alignment again when the deformable stage collapsed the points, see ``deformation``).
    pre_matrix
        3x3 transform found before any deformable stage (global start + rigid/affine refinement).
    linear_kind
        Transform family of ``matrix``: ``method`` for rigid/similarity/affine runs, ``pre_align``
        for deformable runs.
    mirror
        Whether the flipped source won.
    sigma2, sigma2_features, n_iter, converged, loglik
        Of the last stage (variance of the spatial and of the feature columns).
    stages
        One dict per stage (name, n_points, iterations, sigma2, converged, seconds).
    approximate
        Whether the input exceeded ``max_points``, so that the finest level's transform and field
        were interpolated to all points.
    scale_removed
        With ``preserve_scale``: the isotropic scale of the deformable motion that was divided out.
    moving
        Which point set moved in CPD: ``"source"`` (``Y``, the usual case) or ``"target"`` (``X`` was
        registered onto ``Y`` and the motion inverted, see :func:`reverse_result`).
    deformation
        For deformable runs: :func:`deformation_ratios` of the moving points, pre-aligned -> deformed
        (of the set that moved in CPD, in the normalised frame).

    """

    coords: np.ndarray
    matrix: np.ndarray
    pre_matrix: np.ndarray
    mirror: bool
    sigma2: float
    sigma2_features: float | None
    n_iter: int
    converged: bool
    loglik: float
    stages: list[dict]
    approximate: bool
    start_scores: list[dict] = field(default_factory=list)
    scale_removed: float | None = None
    moving: Literal["source", "target"] = "source"
    linear_kind: Linear = "rigid"
    deformation: dict | None = None


def reverse_result(res: AlignResult, X: np.ndarray, Y: np.ndarray, *, deformable: bool) -> AlignResult:
    """Turn the registration of ``X`` onto ``Y`` (``res``) into the alignment of ``Y`` onto ``X``.

    The rigid/affine part is inverted exactly. For a deformable run the inverse warp is carried to
    the points of ``Y`` by Gaussian kernel regression (16 nearest neighbours, bandwidth one point
    spacing) of ``x_n - A^-1(T(x_n))``, the residual of each moved point of ``X`` after inverting the
    rigid/affine part ``A``; the field is smooth on the scale of ``beta``, so this is accurate to
    well under a spacing. The rigid/affine part reported is then fitted to the result in the family
    ``res.linear_kind``, as in :func:`cpd_align`, unless the deformable stage collapsed the points
    (``res.deformation``): then it is the inverted pre-alignment.
    """
    from scipy.spatial import cKDTree

    inverse = np.linalg.inv(res.matrix)
    coords = apply_matrix(Y[:, :2], inverse)
    matrix = inverse
    if deformable:
        back = apply_matrix(res.coords, inverse)
        residual = X[:, :2] - back
        k = min(16, len(back))
        dist, idx = cKDTree(back).query(coords, k=k)
        dist, idx = dist.reshape(len(coords), k), idx.reshape(len(coords), k)
        h2 = _spacing2(back)
        weights = np.exp(-(dist**2 - dist[:, :1] ** 2) / (2.0 * h2))  # nearest weight 1: never all zero
        coords = coords + (weights[:, :, None] * residual[idx]).sum(axis=1) / weights.sum(axis=1)[:, None]
        if not (res.deformation or {}).get("collapsed", False):
            matrix = fit_linear(Y[:, :2], coords, kind=res.linear_kind, allow_reflection=res.mirror)
    return replace(
        res, coords=coords, matrix=matrix, pre_matrix=np.linalg.inv(res.pre_matrix), moving="target"
    )


def pyramid_levels(n: int, n_coarse: int, top: int, factor: float = 10**0.5) -> list[int]:
    """Points per side at each level of the coarse-to-fine pyramid.

    ``n_coarse * factor**k`` while below half the finest level, then the finest level
    ``min(n, top)``; a single level when the input is small. Each level starts its CPD from the
    previous level's variance, about the point spacing of that level, so a factor near sqrt(10) keeps
    the truncated E-step of every level cheap.
    """
    top = min(n, top)
    size = float(min(n_coarse, top))
    levels = []
    while 2 * size < top:
        levels.append(round(size))
        size *= factor
    levels.append(top)
    return levels


def cpd_align(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    method: Method = "rigid",
    pre_align: Linear = "rigid",
    n_rotations: int = 8,
    mirror: bool = True,
    alpha: float = 0.5,
    beta: float = 2.0,
    w: float = 0.1,
    max_iter: int = 200,
    tol: float = 1e-6,
    n_landmarks: int = 300,
    max_points: int = 50_000,
    n_coarse: int = 5000,
    refine: bool = True,
    preserve_scale: bool = False,
    cutoff: float = 6.0,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    partial: bool = False,
    seed: int | np.random.Generator | None = 0,
) -> AlignResult:
    """Align moving points ``Y`` (M, D) onto target ``X`` (N, D); spatial columns first.

    Coarse-to-fine pyramid (:func:`pyramid_levels`): level 0 holds ``n_coarse`` random points per
    side, each further level about sqrt(10) times more, the last all points. Level 0 runs the global
    start (:func:`global_start`, skipped when ``n_rotations == 1`` and not ``mirror``) and a
    rigid/affine CPD; every finer level continues that CPD from the previous level's transform and
    variances (cheap: the truncated E-step only visits pairs within ``cutoff`` sigma, and sigma starts
    near the previous level's point spacing). Subsample levels register the spatial columns only
    and anneal sigma (``_LEVEL_ANNEAL`` per iteration) down to their own point spacing, then stop. For ``method="deformable"`` a low-rank deformable CPD
    then runs on the last level, started from the pre-alignment and its variances. A subsample level
    only speeds convergence: its random points do not lock onto the other side's lattice, so alone
    it leaves errors of about a subsample spacing, which the finer levels remove.

    With ``refine=False`` and more than ``max_points`` points per side the pyramid stops at a
    ``max_points`` subsample (the fast approximation). That level keeps the feature columns but,
    like the subsample levels, anneals its spatial variance down to its own squared point spacing,
    and its deformable stage may not widen it again: among random points with no exact partners the
    features then choose between partners within about a spacing. Its rigid/affine transform is
    applied to all points and its deformable field is interpolated through its Nystrom form
    ``G(y, landmarks) @ coef``, only as precise as that subsample.

    ``embeddings`` (full embeddings of ``X`` and ``Y``) let the global start choose among its
    converged runs by :func:`embedding_agreement`.

    With ``partial`` (needs ``embeddings``) the sections may each hold tissue the other lacks: the
    global start is :func:`loki.tl._overlap.partial_start` (feature cross-correlation over rotations
    x mirror x translations, trimmed CPD), every level registers only the points with a partner on
    the other side within 0.75 point spacings (:func:`loki.tl._overlap.trimmed_register`), and the
    deformable field is fitted on that overlap and evaluated at all moving points.

    With ``preserve_scale`` the isotropic scale of the deformable motion (pre-aligned points ->
    deformed points) is divided out (:func:`remove_global_scale`), so that the non-rigid result
    keeps the pre-alignment's overall size (including any scale a ``"similarity"`` or ``"affine"``
    ``pre_align`` found).

    For ``method="deformable"`` the reported ``matrix`` is fitted to the final coordinates in the
    ``pre_align`` family, so a scale found by the pre-alignment stays in it, and ``deformation``
    compares the final coordinates with the pre-aligned ones (:func:`deformation_ratios`). Where the
    feature columns of the moving points agree with parts of ``X`` all over it rather than nearby,
    the posterior means of the E-step lie towards ``X``'s centroid; a rigid M-step cannot follow
    them, but the smooth deformable field can, and the collapse then explains the features better
    than the pre-alignment did, so EM settles there. When ``deformation`` says ``collapsed``, the
    reported ``matrix`` is the pre-alignment ``pre_matrix`` (the coordinates stay as the deformable
    stage left them).

    Returns
    -------
    :class:`AlignResult`.

    """
    import time

    scale_removed = deformation = None
    if method not in ("rigid", "similarity", "affine", "deformable"):
        raise ValueError(f"method must be 'rigid', 'similarity', 'affine' or 'deformable', got {method!r}.")
    if pre_align not in _LINEAR:
        raise ValueError(f"pre_align must be 'rigid', 'similarity' or 'affine', got {pre_align!r}.")
    if n_coarse < 3 or max_points < 3:
        raise ValueError(f"n_coarse and max_points must be >= 3, got {n_coarse} and {max_points}.")
    if partial and embeddings is None:
        raise ValueError("partial=True needs embeddings: overlapping tissue is found by its features.")
    from loki.tl._overlap import _TRIM_ROUNDS, embedding_components, partial_start, trimmed_register

    rng = as_rng(seed)
    X = np.ascontiguousarray(X, dtype=np.float64)
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    M, N = len(Y), len(X)
    approximate = max(M, N) > max_points and not refine
    levels = pyramid_levels(max(M, N), n_coarse, max_points if approximate else max(M, N))
    stages: list[dict] = []

    def _stage(name, n_points, res, t0, level):
        stages.append(
            {
                "stage": name,
                "level": level,
                "n_points": int(n_points),
                "n_iter": int(res.n_iter),
                "sigma2": float(res.sigma2[0]),
                "sigma2_features": None if res.sigma2[1] is None else float(res.sigma2[1]),
                "converged": bool(res.converged),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        logger.debug("cpd stage %s: %s", name, stages[-1])

    samples = [(_subsample(N, size, rng), _subsample(M, size, rng)) for size in levels]
    ix, iy = samples[0]
    t0 = time.perf_counter()
    if partial:
        assert embeddings is not None
        if max(M, N) > _PARTIAL_VALIDATED:
            logger.warning(
                "partial=True was validated on sections of up to %d spots (%d here); check "
                ".uns[...]['starts'] and the result.",
                _PARTIAL_VALIDATED,
                max(M, N),
            )
        FX, FY = embedding_components(embeddings[0][ix], embeddings[1][iy])
        start = partial_start(X[ix], Y[iy], FX, FY, mirror=mirror, kind="rigid", w=w, tol=tol, seed=rng)
    elif n_rotations > 1 or mirror:
        start = global_start(
            X[ix],
            Y[iy],
            n_rotations=n_rotations,
            mirror=mirror,
            kind="rigid",
            w=w,
            embeddings=None if embeddings is None else (embeddings[0][ix], embeddings[1][iy]),
            seed=rng,
        )
    if partial or n_rotations > 1 or mirror:
        stages.append(
            {
                "stage": "partial_start" if partial else "global_start",
                "level": 0,
                "n_starts": len(start.scores),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        pre, flipped, scores = start.matrix, start.mirror, start.scores
    else:
        pre = _homogeneous(np.eye(2), X[:, :2].mean(axis=0) - Y[:, :2].mean(axis=0))
        flipped, scores = False, []

    kind = method if method in _LINEAR else pre_align
    sigma2 = None
    res = None
    for level, (ix, iy) in enumerate(samples):
        t0 = time.perf_counter()
        # a subsample level only has to bring the next, denser level within reach: it anneals sigma
        # down to its own point spacing and stops there (its random points match no more closely).
        # The approximation's last level is a subsample too, so it anneals and stops the same way
        sub = level < len(samples) - 1
        stop = _spacing2(X[ix, :2]) if sub or approximate else 0.0
        # subsample levels register coordinates only: at their coarse sigma the feature columns pull
        # the spatial fit towards better-matching expression (28 spot spacings off on the 500k
        # synthetic pair, 3 without); the global start and the last level keep them
        cols = slice(0, 2) if sub else slice(None)
        level_kwargs = dict(
            kind=kind,
            w=w,
            max_iter=max_iter,
            tol=tol,
            sigma2=sigma2 if sigma2 is None or not sub else sigma2[0],
            cutoff=cutoff,
            sigma2_stop=stop,
            anneal=_LEVEL_ANNEAL if sub or approximate else 1.0,
        )
        if partial:
            pre, res, overlap, _ = trimmed_register(
                X[ix, cols], Y[iy, cols], pre, max_rounds=1 if sub else _TRIM_ROUNDS, **level_kwargs
            )
            if res is None:
                raise ValueError(
                    "The aligned sections no longer overlap: fewer than 3 points have a partner."
                )
        else:
            Ys = Y[iy].copy()
            Ys[:, :2] = apply_matrix(Y[iy, :2], pre)
            res = register_rigid(X[ix, cols], Ys[:, cols], **level_kwargs)
            pre = res.matrix @ pre
        _stage(kind, len(iy), res, t0, level)
        sigma2 = res.sigma2 if not sub else (res.sigma2[0], None)
    assert res is not None
    last = res
    ix, iy = samples[-1]
    Y1 = Y.copy()
    Y1[:, :2] = apply_matrix(Y[:, :2], pre)

    if method == "deformable":
        t0 = time.perf_counter()
        if partial:
            # the field is fitted on the overlap; elsewhere it decays towards the rigid motion
            ix, iy = ix[overlap[0]], iy[overlap[1]]
        # on the approximation's random subsamples EM widens the spatial variance until the feature
        # columns alone choose the pairs, and the field drifts (12 spot spacings off on the 100k
        # synthetic pair with counts thinned, 0.26 with the cap): cap it at the last level's spacing
        cap = stop if approximate else np.inf
        dres = register_deformable(
            X[ix],
            Y1[iy],
            alpha=alpha,
            beta=beta,
            w=w,
            max_iter=max_iter,
            tol=tol,
            sigma2=_warm_sigma2(res.sigma2),
            sigma2_max=cap,
            n_landmarks=n_landmarks,
            cutoff=cutoff,
            seed=rng,
        )
        _stage("deformable", len(iy), dres, t0, len(levels) - 1)
        coords = Y1[:, :2] + dres.displacement_at(Y1[:, :2]) if approximate or partial else dres.TY[:, :2]
        last = dres
        if preserve_scale:
            # with outliers and a wide Gaussian the deformable M-step can contract the whole
            # source towards the target's centroid; keep only its rotation, shift and local warp
            coords, scale_removed = remove_global_scale(Y1[:, :2], coords)
        deformation = deformation_ratios(Y1[:, :2], coords)
    else:
        coords = Y1[:, :2]
    if method == "deformable" and not deformation["collapsed"]:
        matrix = fit_linear(Y[:, :2], coords, kind=kind, allow_reflection=flipped)
    else:  # a fit to collapsed coordinates would place the section by the collapse
        matrix = pre
    return AlignResult(
        coords=coords,
        matrix=matrix,
        pre_matrix=pre,
        mirror=flipped,
        sigma2=float(last.sigma2[0]),
        sigma2_features=None if last.sigma2[1] is None else float(last.sigma2[1]),
        n_iter=int(last.n_iter),
        converged=bool(last.converged),
        loglik=float(last.loglik),
        stages=stages,
        approximate=approximate,
        start_scores=scores,
        scale_removed=scale_removed,
        linear_kind=kind,
        deformation=deformation,
    )
