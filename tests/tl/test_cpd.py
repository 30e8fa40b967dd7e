from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loki._utils._affine import linear_scale
from loki.tl import _cpd_kernels
from loki.tl._cpd import (
    AlignResult,
    _profile_loglik,
    apply_matrix,
    cpd_align,
    embedding_agreement,
    fit_linear,
    global_start,
    initial_sigma2,
    mirror_matrix,
    nystrom_basis,
    pyramid_levels,
    register_deformable,
    register_rigid,
    remove_global_scale,
    reverse_result,
    rotation_matrix,
)
from loki.tl._cpd_kernels import estep


def _dense_posterior(X, Y, s2, w):
    D = X.shape[1]
    M, N = len(Y), len(X)
    K = np.exp(-((X[None] - Y[:, None]) ** 2).sum(-1) / (2 * s2))
    c = (2 * np.pi * s2) ** (D / 2) * w / (1 - w) * M / N
    P = K / (K.sum(0) + c)
    ll = np.log((1 - w) / M * (2 * np.pi * s2) ** (-D / 2) * K.sum(0) + w / N).sum()
    return P, ll


@pytest.mark.parametrize("w", [0.0, 0.2])
def test_estep_matches_dense(w):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(70, 4)), rng.normal(size=(50, 4))
    P, ll = _dense_posterior(X, Y, 0.5, w)
    P1, Pt1, PX, loglik = estep(X, Y, 0.5, w, cutoff=np.inf)
    np.testing.assert_allclose(P1, P.sum(1), rtol=1e-6)
    np.testing.assert_allclose(Pt1, P.sum(0), rtol=1e-6)
    np.testing.assert_allclose(PX, P @ X, rtol=1e-6, atol=1e-12)
    if w > 0:
        assert loglik == pytest.approx(ll, rel=1e-8)


def test_estep_truncation_and_diagonal_covariance():
    rng = np.random.default_rng(1)
    X, Y = rng.uniform(0, 10, size=(400, 3)), rng.uniform(0, 10, size=(300, 3))
    exact = estep(X, Y, 0.2, 0.1, cutoff=np.inf)
    cut = estep(X, Y, 0.2, 0.1, cutoff=7.0)
    np.testing.assert_allclose(cut[0], exact[0], atol=1e-8)
    np.testing.assert_allclose(cut[2], exact[2], atol=1e-7)
    # a separate feature variance equals scaling the feature column
    r = np.sqrt(0.2 / 3.0)
    Xs, Ys = X.copy(), Y.copy()
    Xs[:, 2] *= r
    Ys[:, 2] *= r
    diag = estep(X, Y, 0.2, 0.0, sigma2_features=3.0, cutoff=np.inf)
    iso = estep(Xs, Ys, 0.2, 0.0, cutoff=np.inf)
    np.testing.assert_allclose(diag[0], iso[0], rtol=1e-8)
    np.testing.assert_allclose(diag[2][:, :2], iso[2][:, :2], rtol=1e-8)
    np.testing.assert_allclose(diag[2][:, 2] * r, iso[2][:, 2], rtol=1e-8)


def test_estep_far_points_stay_finite():
    X = np.array([[0.0, 0.0], [1e3, 1e3], [0.5, 0.0]])
    Y = np.array([[0.0, 0.1], [0.4, 0.0], [0.2, 0.2]])
    P1, Pt1, PX, ll = estep(X, Y, 1e-4, 0.0, cutoff=np.inf)
    assert np.isfinite(P1).all()
    assert np.isfinite(PX).all()
    assert np.isfinite(ll)
    assert Pt1 == pytest.approx(np.ones(3))  # w = 0: every column sums to one, even the far point


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
@pytest.mark.parametrize("sigma2", [1e-3, 0.5])
def test_estep_does_not_depend_on_the_thread_count(sigma2):
    """Above the parallel threshold (8000 x 8000 > 5e7 pairs) the sums are bit-identical on 1 and 2
    threads, with the grid (small sigma) and without (one cell)."""
    rng = np.random.default_rng(0)
    X, Y = rng.random((8000, 4)), rng.random((8000, 4)) + 0.01
    saved = numba.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            out.append(estep(X, Y, sigma2, 0.1, sigma2_features=0.2))
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(out[0][:3], out[1][:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert out[0][3] == out[1][3]


@pytest.mark.parametrize(("n", "sigma2"), [(700, 0.05), (700, 2.0), (700, 50.0), (5, 0.05)])
def test_estep_parallel_chunks_match_the_serial_sums(monkeypatch, n, sigma2):
    """The chunked path (each chunk summing into its band of moving points) gives the serial sums,
    with a fine grid, a coarse one, a single cell, and fewer target points than chunks."""
    rng = np.random.default_rng(6)
    X = np.hstack([rng.uniform(0, 10, (n, 2)), rng.normal(size=(n, 1))])
    Y = np.hstack([rng.uniform(0, 10, (600, 2)), rng.normal(size=(600, 1))])
    serial = estep(X, Y, sigma2, 0.1, sigma2_features=0.5)
    monkeypatch.setattr(_cpd_kernels, "PARALLEL_PAIRS", 0)
    chunked = estep(X, Y, sigma2, 0.1, sigma2_features=0.5)
    for a, b in zip(serial[:3], chunked[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)
    assert chunked[3] == pytest.approx(serial[3], rel=1e-13)


def test_cell_order_is_the_stable_argsort():
    rng = np.random.default_rng(7)
    for n, n_cells in ((0, 1), (1, 1), (1000, 7), (5000, 1156), (10, 100_000)):
        key = rng.integers(0, n_cells, n).astype(np.int64)
        np.testing.assert_array_equal(_cpd_kernels._cell_order(key, n_cells), np.argsort(key, kind="stable"))


def test_initial_sigma2():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(30, 3)), rng.normal(size=(20, 3))
    dense = ((X[None] - Y[:, None]) ** 2).sum() / (3 * 30 * 20)
    assert initial_sigma2(X, Y) == pytest.approx(dense)


@pytest.mark.parametrize("kind", ["rigid", "similarity", "affine"])
def test_fit_linear_exact(kind):
    rng = np.random.default_rng(3)
    src = rng.normal(size=(40, 2))
    T = rotation_matrix(40.0, np.zeros(2))
    if kind == "similarity":
        T[:2, :2] *= 1.7
    if kind == "affine":
        T[:2, :2] = [[1.2, 0.3], [-0.2, 0.8]]
    T[:2, 2] = [3.0, -1.0]
    est = fit_linear(src, apply_matrix(src, T), kind=kind)
    np.testing.assert_allclose(est, T, atol=1e-9)


def test_fit_linear_reflection_only_when_allowed():
    src = np.random.default_rng(4).normal(size=(30, 2))
    T = mirror_matrix(np.zeros(2))
    dst = apply_matrix(src, T)
    assert np.linalg.det(fit_linear(src, dst)[:2, :2]) > 0
    np.testing.assert_allclose(fit_linear(src, dst, allow_reflection=True), T, atol=1e-9)


def test_nystrom_basis_approximates_kernel():
    rng = np.random.default_rng(5)
    Y = rng.uniform(0, 1, size=(300, 2))
    Q, S, Z, T = nystrom_basis(Y, 0.5, 60, rng)
    G = np.exp(-((Y[None] - Y[:, None]) ** 2).sum(-1) / (2 * 0.25))
    approx = Q @ np.diag(S) @ Q.T
    assert np.abs(approx - G).max() < 1e-3
    np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-8)
    # the interpolation form reproduces Q S a at the data points
    a = rng.normal(size=(Q.shape[1], 2))
    from loki.tl._cpd_kernels import gaussian_cross_kernel

    np.testing.assert_allclose(
        gaussian_cross_kernel(Y, Z, 2.0) @ (T @ (S[:, None] * a)), Q @ (S[:, None] * a), atol=1e-6
    )


def _cloud(n, seed):
    """An irregular blob with one smooth feature column (so rotations are identifiable)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, size=(4 * n, 2))
    r = np.linalg.norm(pts, axis=1)
    ang = np.arctan2(pts[:, 1], pts[:, 0])
    pts = pts[r < 0.7 + 0.2 * np.cos(3 * ang)][:n]
    feat = np.sin(3 * pts[:, :1]) + pts[:, 1:2] ** 2
    return np.hstack([pts, feat])


def test_register_rigid_local():
    X = _cloud(300, 0)
    T = rotation_matrix(20.0, np.zeros(2))
    T[:2, 2] = [0.1, -0.05]
    Y = X.copy()
    Y[:, :2] = apply_matrix(X[:, :2], np.linalg.inv(T))
    res = register_rigid(X, Y, max_iter=200)
    assert res.converged
    np.testing.assert_allclose(res.matrix, T, atol=1e-4)
    assert res.history == sorted(res.history)  # EM never lowers the likelihood


def _similarity_cpd(X, Y, w, n_iter):
    """Myronenko & Song's similarity CPD (Fig. 2 of their paper) on dense posteriors, 2-D points."""
    s2 = ((X[None] - Y[:, None]) ** 2).sum() / (2 * len(X) * len(Y))
    TY = Y.copy()
    for _ in range(n_iter):
        P, _ = _dense_posterior(X, TY, s2, w)
        Np = P.sum()
        mu_x, mu_y = P.sum(0) @ X / Np, P.sum(1) @ Y / Np
        Xc, Yc = X - mu_x, Y - mu_y
        A = Xc.T @ P.T @ Yc
        U, _, Vt = np.linalg.svd(A)
        R = U @ np.diag([1.0, np.linalg.det(U @ Vt)]) @ Vt
        scale = np.trace(A.T @ R) / np.trace(Yc.T @ np.diag(P.sum(1)) @ Yc)
        TY = scale * Y @ R.T + (mu_x - scale * R @ mu_y)
        s2 = (np.trace(Xc.T @ np.diag(P.sum(0)) @ Xc) - scale * np.trace(A.T @ R)) / (2 * Np)
    return TY, s2


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.sampled_from([0.0, 0.1, 0.3]))
def test_register_rigid_without_annealing_is_plain_em(seed, n_iter, w):
    # anneal=1 is plain EM: the variance follows the M-step, rising where it rises (it was held
    # monotone by the annealing clamp, left on by mistake)
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(30, 2))
    X = np.vstack([(Y * [-1, 1]) * 1.3 + 0.5 + rng.normal(0, 0.05, Y.shape), rng.uniform(-3, 3, (5, 2))])
    TY, s2 = _similarity_cpd(X, Y, w, n_iter)
    res = register_rigid(X, Y, kind="similarity", w=w, max_iter=n_iter, tol=0.0, cutoff=np.inf)
    np.testing.assert_allclose(res.TY, TY, atol=1e-8)
    assert res.sigma2[0] == pytest.approx(s2, rel=1e-8)


def test_register_deformable_recovers_smooth_warp():
    X = _cloud(250, 1)
    Y = X.copy()
    Y[:, 0] += 0.05 * np.sin(2 * X[:, 1])
    Y[:, 1] += 0.05 * np.cos(2 * X[:, 0])
    res = register_deformable(X, Y, alpha=0.5, beta=0.5, max_iter=200, n_landmarks=80)
    before = np.linalg.norm(Y[:, :2] - X[:, :2], axis=1).mean()
    after = np.linalg.norm(res.TY[:, :2] - X[:, :2], axis=1).mean()
    assert after < 0.05 * before
    np.testing.assert_allclose(res.displacement_at(Y[:, :2]), res.displacement, atol=1e-6)


def test_register_deformable_spatial_variance_cap():
    """Two unrelated random clouds: EM widens the variance, the cap holds it and the fit still runs."""
    rng = np.random.default_rng(2)
    X = np.hstack([rng.uniform(0, 1, (300, 2)), rng.normal(size=(300, 1))])
    Y = np.hstack([rng.uniform(0, 1, (300, 2)), rng.normal(size=(300, 1))])
    free = register_deformable(X, Y, sigma2=(1e-3, None), max_iter=30, n_landmarks=40)
    capped = register_deformable(X, Y, sigma2=(1e-3, None), sigma2_max=1e-3, max_iter=30, n_landmarks=40)
    assert free.sigma2[0] > 2e-3
    assert capped.sigma2[0] <= 1e-3
    assert np.isfinite(capped.loglik)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    angle=st.floats(0.0, 360.0),
    tx=st.floats(-2.0, 2.0),
    ty=st.floats(-2.0, 2.0),
    flip=st.booleans(),
)
def test_property_rigid_transform_recovered(angle, tx, ty, flip):
    X = _cloud(150, 7)
    T = rotation_matrix(angle, np.zeros(2)) @ (mirror_matrix(np.zeros(2)) if flip else np.eye(3))
    T[:2, 2] += [tx, ty]
    Y = X.copy()
    Y[:, :2] = apply_matrix(X[:, :2], np.linalg.inv(T))
    res = cpd_align(X, Y, method="rigid")
    assert res.mirror == flip
    np.testing.assert_allclose(res.coords, X[:, :2], atol=1e-3)
    np.testing.assert_allclose(res.matrix, T, atol=1e-3)


def test_pyramid_levels():
    assert pyramid_levels(4000, 5000, 4000) == [4000]
    assert pyramid_levels(50_000, 5000, 50_000) == [5000, 15811, 50_000]
    assert pyramid_levels(500_000, 5000, 500_000) == [5000, 15811, 50_000, 158114, 500_000]
    assert pyramid_levels(500_000, 5000, 50_000) == [5000, 15811, 50_000]  # refine=False stop
    levels = pyramid_levels(123_457, 700, 123_457)
    assert levels[-1] == 123_457
    assert all(2 * a < b for a, b in itertools.pairwise(levels))


def test_cpd_align_coarse_to_fine_paths():
    X = _cloud(800, 9)
    T = rotation_matrix(120.0, np.zeros(2))
    Y = X.copy()
    Y[:, :2] = apply_matrix(X[:, :2], np.linalg.inv(T))
    exact = cpd_align(X, Y, method="deformable", beta=1.0, max_points=300, n_coarse=150, refine=True)
    approx = cpd_align(X, Y, method="deformable", beta=1.0, max_points=300, n_coarse=150, refine=False)
    assert approx.approximate
    assert not exact.approximate
    assert [(s["stage"], s.get("n_points")) for s in exact.stages] == [
        ("global_start", None),
        ("rigid", 150),
        ("rigid", 800),
        ("deformable", 800),
    ]
    assert [(s["stage"], s.get("n_points")) for s in approx.stages] == [
        ("global_start", None),
        ("rigid", 300),
        ("deformable", 300),
    ]
    spacing = 0.023  # mean nearest-neighbour distance of this cloud
    assert np.linalg.norm(exact.coords - X[:, :2], axis=1).mean() < 0.1 * spacing
    # the interpolation is only as precise as its subsample (300 random points per side)
    assert np.linalg.norm(approx.coords - X[:, :2], axis=1).mean() < 1.5 * spacing
    with pytest.raises(ValueError, match="method"):
        cpd_align(X, Y, method="warp")


def _rms_radius(xy):
    return float(np.sqrt(((xy - xy.mean(axis=0)) ** 2).sum(axis=1).mean()))


def test_remove_global_scale_keeps_rotation_shift_and_warp():
    rng = np.random.default_rng(3)
    before = rng.uniform(-1, 1, size=(200, 2))
    warp = 0.03 * np.column_stack([np.sin(3 * before[:, 1]), np.cos(2 * before[:, 0])])
    T = rotation_matrix(35.0, np.zeros(2))
    T[:2, :2] *= 0.8
    T[:2, 2] = [0.4, -0.2]
    after = apply_matrix(before, T) + warp
    out, scale = remove_global_scale(before, after)
    sim_after = fit_linear(before, after, kind="similarity")
    assert scale == pytest.approx(np.sqrt(np.linalg.det(sim_after[:2, :2])))
    assert scale == pytest.approx(0.8, abs=0.02)
    sim_out = fit_linear(before, out, kind="similarity")
    np.testing.assert_allclose(sim_out[:2, :2], sim_after[:2, :2] / scale, atol=1e-9)  # rotation only
    np.testing.assert_allclose(out.mean(axis=0), after.mean(axis=0), atol=1e-12)  # same centroid
    # the local warp (residual of the similarity fit) is untouched
    np.testing.assert_allclose(
        out - apply_matrix(before, sim_out), after - apply_matrix(before, sim_after), atol=1e-9
    )


def test_cpd_align_preserve_scale_undoes_contraction():
    # a source 15% larger than the target: the rigid stage cannot change its size, the deformable
    # field contracts it; preserve_scale keeps the rigid result's size
    X = _cloud(300, 4)
    Y = X.copy()
    Y[:, :2] = apply_matrix(X[:, :2] * 1.15, rotation_matrix(40.0, np.zeros(2)))
    kw = dict(method="deformable", beta=1.0, n_rotations=4, mirror=False)
    plain = cpd_align(X, Y, **kw)
    kept = cpd_align(X, Y, preserve_scale=True, **kw)
    rigid = _rms_radius(apply_matrix(Y[:, :2], kept.pre_matrix))
    assert plain.scale_removed is None
    assert _rms_radius(plain.coords) < 0.93 * rigid
    assert kept.scale_removed < 0.93
    assert _rms_radius(kept.coords) == pytest.approx(rigid, rel=0.01)
    sim = fit_linear(apply_matrix(Y[:, :2], kept.pre_matrix), kept.coords, kind="similarity")
    assert np.sqrt(np.linalg.det(sim[:2, :2])) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("preserve_scale", [False, True])
def test_cpd_align_deformable_matrix_keeps_the_pre_align_family(preserve_scale):
    """A source at 1.25x the target's scale: with pre_align="similarity" the deformable run's matrix
    carries the scale found, so it places the source where its coordinates lie; rigid stays rigid."""
    X = _cloud(300, 4)
    Y = X.copy()
    Y[:, :2] = apply_matrix(X[:, :2] * 1.25, rotation_matrix(40.0, np.zeros(2)))
    kw = dict(method="deformable", beta=1.0, n_rotations=4, mirror=False, preserve_scale=preserve_scale)
    kw["max_iter"] = 50
    sim = cpd_align(X, Y, pre_align="similarity", **kw)
    assert linear_scale(sim.pre_matrix) == pytest.approx(0.8, rel=0.01)
    assert linear_scale(sim.matrix) == pytest.approx(0.8, rel=0.02)
    assert sim.linear_kind == "similarity"
    spacing = 0.04  # about this cloud's mean nearest-neighbour distance
    placed = apply_matrix(Y[:, :2], sim.matrix)
    assert np.linalg.norm(placed - sim.coords, axis=1).mean() < 0.5 * spacing
    # registered the other way round (X moving) and reversed: the inverse keeps the scale too
    back = reverse_result(cpd_align(Y, X, pre_align="similarity", **kw), X, Y, deformable=True)
    assert linear_scale(back.matrix) == pytest.approx(0.8, rel=0.02)
    assert np.linalg.norm(apply_matrix(Y[:, :2], back.matrix) - back.coords, axis=1).mean() < 0.5 * spacing
    rigid = cpd_align(X, Y, pre_align="rigid", **kw)
    assert np.linalg.det(rigid.matrix[:2, :2]) == pytest.approx(1.0, abs=1e-12)
    assert rigid.linear_kind == "rigid"


def test_cpd_align_rejects_unknown_pre_align():
    X = _cloud(100, 4)
    for method in ("deformable", "rigid"):
        with pytest.raises(
            ValueError, match=r"pre_align must be 'rigid', 'similarity' or 'affine', got 'Affine'"
        ):
            cpd_align(X, X.copy(), method=method, pre_align="Affine")


def test_profile_loglik_refits_only_the_feature_variance():
    rng = np.random.default_rng(5)
    X = _cloud(200, 1)
    Y = X + rng.normal(scale=[0.01, 0.01, 0.2], size=X.shape)
    s2 = 1e-3
    values = {
        f2: estep(X, Y, s2, 0.1, sigma2_features=f2, cutoff=np.inf)[3] for f2 in np.geomspace(1e-3, 1.0, 61)
    }
    best = max(values.values())
    for start in (1e-3, 1.0):
        ll = _profile_loglik(X, Y, s2, start, 0.1)
        # EM on one variance climbs to the best value over a fine grid of that variance
        assert ll >= best - 1e-3 * abs(best)
        assert ll >= values[start]
    # without feature columns nothing is re-fitted
    X2, Y2 = X[:, :2].copy(), Y[:, :2].copy()
    assert _profile_loglik(X2, Y2, s2, None, 0.1) == estep(X2, Y2, s2, 0.1, cutoff=np.inf)[3]


def test_global_start_converges_both_sides_and_recovers_flip():
    X = _cloud(250, 2)
    T = rotation_matrix(130.0, np.zeros(2)) @ mirror_matrix(np.zeros(2))
    Y = X.copy()
    Y[:, :2] = apply_matrix(X[:, :2], np.linalg.inv(T))
    res = global_start(X, Y, n_rotations=8, mirror=True, n_keep=2)
    assert res.mirror
    np.testing.assert_allclose(res.matrix, T, atol=1e-4)
    finished = [sc for sc in res.scores if "loglik_common" in sc]
    # the best starts of each side were run to convergence, two per side
    assert sorted(sc["mirror"] for sc in finished) == [False, False, True, True]
    winner = max(finished, key=lambda sc: sc["loglik_common"])
    assert winner["mirror"]


@pytest.mark.parametrize("deformable", [False, True])
def test_reverse_result_inverts_the_motion(deformable):
    """X registered onto Y by T = A o (id + v); reversing must map Y = T(X[sub]) back onto X[sub]."""
    X = _cloud(400, 3)
    A = rotation_matrix(-70.0, np.zeros(2)) @ mirror_matrix(np.zeros(2))
    A[:2, 2] = [0.3, -0.1]

    def warp(xy):
        return 0.03 * np.c_[np.sin(2.0 * xy[:, 1]), np.cos(2.0 * xy[:, 0])] if deformable else 0.0

    TX = apply_matrix(X[:, :2] + warp(X[:, :2]), A)
    sub = np.arange(0, 400, 2)
    Y = np.hstack([TX[sub], X[sub, 2:]])
    res = AlignResult(
        coords=TX, matrix=A, pre_matrix=A, mirror=True, sigma2=1e-6, sigma2_features=None,
        n_iter=1, converged=True, loglik=0.0, stages=[], approximate=False,
    )  # fmt: skip
    out = reverse_result(res, X, Y, deformable=deformable)
    spacing = np.sqrt(np.median(np.sort(((X[:, None, :2] - X[None, :, :2]) ** 2).sum(-1), axis=1)[:, 1]))
    err = np.linalg.norm(out.coords - X[sub, :2], axis=1).mean() / spacing
    assert err < (1e-9 if not deformable else 0.05), err
    assert out.moving == "target"
    assert out.mirror
    np.testing.assert_allclose(out.pre_matrix, np.linalg.inv(A))
    if not deformable:
        np.testing.assert_allclose(out.matrix, np.linalg.inv(A))


def test_embedding_agreement_pairs_nearest_points_and_counts_unpaired_as_zero():
    rng = np.random.default_rng(4)
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    E = rng.normal(size=(100, 30))
    assert embedding_agreement(grid, grid, E, E) == pytest.approx(1.0)
    assert embedding_agreement(grid, grid, E, -E) == pytest.approx(-1.0)
    # a shift by half a spacing keeps every pair; a shift by 20 spacings pairs nothing
    assert embedding_agreement(grid, grid + np.array([0.4, 0.0]), E, E) == pytest.approx(1.0)
    assert embedding_agreement(grid, grid + np.array([20.0, 0.0]), E, E) == 0.0
    # only the left half of a target in two blocks covered: the right block counts 0
    blocks = np.where(grid[:, :1] < 5, grid, grid + np.array([5.0, 0.0]))
    left = grid[:, 0] < 5
    assert embedding_agreement(blocks, blocks[left], E, E[left]) == pytest.approx(0.5)
    # correlation, so a per-row offset and scale do not matter
    assert embedding_agreement(grid, grid, E, 3.0 * E + 2.0) == pytest.approx(1.0)
