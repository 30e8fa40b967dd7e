"""Placement and trimmed registration of partly overlapping point sets (``loki.tl._overlap``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loki._utils._affine import apply_matrix
from loki.tl._cpd import mirror_matrix, rotation_matrix
from loki.tl._overlap import (
    embedding_components,
    overlap_masks,
    pair_agreement,
    partial_start,
    placements,
    trimmed_register,
)


def _lattice(n=30):
    g = np.arange(n, dtype=np.float64)
    return np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)


def _features(xy, seed=0):
    """Smooth, non-repeating feature fields: random Fourier modes of the coordinates."""
    rng = np.random.default_rng(seed)
    freq = rng.normal(scale=0.25, size=(8, 2))
    phase = rng.uniform(0, 2 * np.pi, size=8)
    return np.sin(xy @ freq.T + phase)


def _cut_pair(deg, flip, shift, keep=0.7):
    """Source = left ``keep`` of a lattice, target = right ``keep``; the source moved by a known rigid map."""
    xy = _lattice()
    f = _features(xy)
    x0 = xy[:, 0]
    src = x0 <= np.quantile(x0, keep)
    tgt = x0 >= np.quantile(x0, 1 - keep)
    centre = xy[src].mean(axis=0)
    move = rotation_matrix(deg, centre) @ (mirror_matrix(centre) if flip else np.eye(3))
    move[:2, 2] += shift
    Y2 = apply_matrix(xy[src], move)
    truth = np.linalg.inv(move)  # maps the moved source back onto the lattice
    return xy[tgt], Y2, f[tgt], f[src], truth, xy[src]


def test_placements_find_a_torn_lattice():
    X2, Y2, FX, FY, _, true_xy = _cut_pair(40.0, True, np.array([6.0, -4.0]))
    corr, flip, deg, matrix = placements(X2, Y2, FX, FY)[0]
    assert flip
    assert deg == 40.0  # (turn 40 deg, then flip) is its own inverse
    # within reach of the trimmed CPD that follows (a few spacings)
    assert np.linalg.norm(apply_matrix(Y2, matrix) - true_xy, axis=1).max() < 3.0
    assert corr > 0


def test_rotation_refinement_brings_an_off_grid_angle_within_reach():
    """On a large lattice half a 10 degree step moves the rim by several spacings; refining fixes it."""
    xy = _lattice(60)
    f = _features(xy)
    src = xy[:, 0] <= np.quantile(xy[:, 0], 0.7)
    tgt = xy[:, 0] >= np.quantile(xy[:, 0], 0.3)
    move = rotation_matrix(-34.0, xy[src].mean(axis=0))  # undone by a 34 deg turn, off the 10 deg grid
    Y2 = apply_matrix(xy[src], move)

    def best_error(n_refine):
        *_, deg, matrix = placements(xy[tgt], Y2, f[tgt], f[src], mirror=False, n_refine=n_refine)[0]
        return np.linalg.norm(apply_matrix(Y2, matrix) - xy[src], axis=1).mean(), deg

    coarse, coarse_deg = best_error(0)
    fine, fine_deg = best_error(4)
    assert coarse_deg in (30.0, 40.0)
    assert fine_deg == 35.0  # 2.5 degree steps
    assert fine < 1.5 < coarse


def test_placements_without_mirror_keep_the_side():
    X2, Y2, FX, FY, *_ = _cut_pair(40.0, True, np.zeros(2))
    assert not any(c[1] for c in placements(X2, Y2, FX, FY, mirror=False))


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(0, 35),
    flip=st.booleans(),
    dx=st.floats(-20, 20),
    dy=st.floats(-20, 20),
    keep=st.sampled_from([0.7, 0.8, 1.0]),
)
def test_partial_start_recovers_rigid_motion_of_a_torn_lattice(k, flip, dx, dy, keep):
    """Any rotation on the 10 degree grid, mirror, translation and cut: the exact transform comes back.

    As in ``lk.tl.align``, two feature columns ride along with the coordinates in CPD.
    """
    X2, Y2, FX, FY, _, true_xy = _cut_pair(10.0 * k, flip, np.array([dx, dy]), keep)
    res = partial_start(np.hstack([X2, FX[:, :2]]), np.hstack([Y2, FY[:, :2]]), FX, FY)
    assert res.mirror == flip
    np.testing.assert_allclose(apply_matrix(Y2, res.matrix), true_xy, atol=1e-3)


def test_trimmed_register_from_near_truth_off_grid_angle():
    X2, Y2, FX, FY, truth, true_xy = _cut_pair(137.0, False, np.array([3.0, 2.0]))
    near = rotation_matrix(4.0, true_xy.mean(axis=0)) @ truth  # 4 degrees off
    matrix, res, masks, rounds = trimmed_register(
        np.hstack([X2, FX[:, :2]]), np.hstack([Y2, FY[:, :2]]), near
    )
    np.testing.assert_allclose(apply_matrix(Y2, matrix), true_xy, atol=1e-3)
    assert res is not None
    assert rounds >= 1
    # the overlap is the shared 40% of the lattice, 4/7 of each side
    np.testing.assert_allclose([masks[0].mean(), masks[1].mean()], 4 / 7, atol=0.02)


def test_trimmed_register_without_overlap_does_nothing():
    X2 = _lattice(10)
    Y2 = X2 + 100.0
    matrix, res, masks, runs = trimmed_register(X2, Y2, np.eye(3))
    assert res is None
    assert masks is None
    assert runs == 0
    np.testing.assert_array_equal(matrix, np.eye(3))


def test_overlap_masks():
    X2 = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    TY2 = np.array([[0.1, 0.0], [9.0, 9.0]])
    mx, my = overlap_masks(X2, TY2, 0.5)
    np.testing.assert_array_equal(mx, [True, False, False])
    np.testing.assert_array_equal(my, [True, False])


def test_pair_agreement_counts_matching_pairs_only():
    X2 = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    FX = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # the third target point has no partner within one spacing: it adds nothing
    TY2 = np.array([[0.0, 0.1], [1.0, -0.1], [20.0, 0.0]])
    FY = np.array([[2.0, 0.0], [0.0, -1.0], [5.0, 5.0]])
    assert pair_agreement(X2, TY2, FX, FY) == pytest.approx(2.0 - 1.0)


def test_embedding_components_centre_each_section():
    rng = np.random.default_rng(0)
    EX = rng.normal(size=(50, 6))
    EY = EX[:40] + 10.0  # same tissue, offset embedding (another batch or modality)
    FX, FY = embedding_components(EX, EY, n_components=3)
    assert FX.shape == (50, 3)
    assert FY.shape == (40, 3)
    np.testing.assert_allclose(FX.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(FY.mean(axis=0), 0.0, atol=1e-12)


def test_embedding_components_equal_the_svd_without_its_memory(monkeypatch):
    import tracemalloc

    from loki._utils import _pca

    rng = np.random.default_rng(1)
    d = 64
    EX = (rng.normal(size=(30_000, d)) * 0.8 ** np.arange(d)).astype(np.float32)
    EY = (EX[:20_000] + 1.0).astype(np.float32)
    cx = EX - EX.mean(axis=0, dtype=np.float64)
    vt = np.linalg.svd(cx, full_matrices=False)[2][:3]
    FX, FY = embedding_components(EX, EY, n_components=3)
    # the same components up to their sign (now the largest loading's)
    signs = np.sign((FX * (cx @ vt.T)).sum(axis=0))
    np.testing.assert_allclose(FX, cx @ vt.T * signs, atol=1e-8)
    np.testing.assert_allclose(FY, (EY - EY.mean(axis=0, dtype=np.float64)) @ vt.T * signs, atol=1e-8)
    del cx
    monkeypatch.setattr(_pca, "_BLOCK_VALUES", 1024 * d)
    tracemalloc.start()
    embedding_components(EX, EY, n_components=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < EX.nbytes, peak  # the SVD held a float64 centred copy and the N x d U


def test_partial_start_checks_rows():
    X2, Y2, FX, FY, *_ = _cut_pair(0.0, False, np.zeros(2))
    with pytest.raises(ValueError, match="one row per point"):
        partial_start(X2, Y2, FX[:-1], FY)
