"""Pixels of spots on their own lattice: one pixel per spot of a square, hexagonal or centred array."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree


def lattice_pixels(coords: np.ndarray, spacing: float) -> np.ndarray | None:
    """``(n, 2)`` integer ``(col, row)`` of each spot on the lattice its nearest neighbours span.

    Rows run along the nearest-neighbour direction closest to the x axis, one pixel row per row of
    spots, and spots of a row sit in adjacent pixels; rows shifted by half a step (hexagonal Visium arrays,
    centred legacy arrays) are packed as Visium's ``array_row`` / ``array_col // 2`` are.

    Parameters
    ----------
    coords
        ``(n, 2)`` spot centres ``(x, y)``.
    spacing
        Median distance between nearest spots.

    Returns
    -------
    The pixels, from 0; None when the spots do not span a 2-D lattice (a single line of spots, or
    no two dominant neighbour directions).

    """
    basis = _basis(coords, spacing)
    if basis is None:
        return None
    centred = coords - coords[0]
    for _ in range(3):  # refit the basis to all spots: a small error in it grows across the section
        ij = np.rint(np.linalg.solve(basis, centred.T).T)
        fit, *_ = np.linalg.lstsq(ij, centred, rcond=None)
        if not np.isfinite(fit).all() or abs(np.linalg.det(fit)) < 1e-12 * spacing**2:
            break
        basis = fit.T
    ij = np.rint(np.linalg.solve(basis, centred.T).T).astype(np.int64)
    m, n = _row_vector(basis)
    p, q = _complement(m, n)
    # coordinates (a, c) in the basis (row vector r, step to the next row), an integer change of basis
    det = m * q - n * p
    a = (q * ij[:, 0] - p * ij[:, 1]) // det
    c = (m * ij[:, 1] - n * ij[:, 0]) // det
    r, step = basis @ [m, n], basis @ [p, q]
    if r[0] * step[1] - r[1] * step[0] < 0:
        step, c = -step, -c
    shift = np.dot(step, r) / np.dot(r, r)  # offset of the next row along r, in row steps
    reduce = math.floor(shift + 0.5)
    a, shift = a + reduce * c, shift - reduce
    half = round(2 * shift) / 2  # 0 for square/rectangular rows, +-0.5 for hexagonal/centred ones
    c = c - c.min()  # rows counted from the first row of spots, whatever spot came first
    col = a + np.floor(c * half).astype(np.int64)
    pix = np.column_stack([col, c])
    return pix - pix.min(axis=0)


def _basis(coords: np.ndarray, spacing: float) -> np.ndarray | None:
    # two shortest neighbour steps in different directions, as columns; each the median of its group.
    # Directions are axial (v and -v are one), so angles are compared doubled, modulo 2 pi.
    k = min(7, len(coords))
    dist, nn = cKDTree(coords).query(coords, k=k)
    steps = (coords[nn[:, 1:]] - coords[:, None, :]).reshape(-1, 2)
    steps = steps[(dist[:, 1:].ravel() > 0) & (dist[:, 1:].ravel() < 1.25 * spacing)]
    if len(steps) < 2:
        return None
    doubled = 2 * np.arctan2(steps[:, 1], steps[:, 0])
    tol = np.deg2rad(10)

    def gap(center: float) -> np.ndarray:
        return np.abs(np.angle(np.exp(1j * (doubled - center)))) / 2

    counts = _angular_counts(doubled, 2 * tol)
    first = gap(doubled[np.argmax(counts)]) < tol
    b1 = _median_step(steps[first])
    apart = gap(2 * np.arctan2(b1[1], b1[0])) > 2 * tol
    if not apart.any():
        return None
    second = gap(doubled[apart][np.argmax(counts[apart])]) < tol
    if second.sum() < 0.1 * first.sum():
        return None
    return np.column_stack([b1, _median_step(steps[second])])


def _angular_counts(angles: np.ndarray, width: float) -> np.ndarray:
    """For each angle, how many of ``angles`` lie less than ``width`` (< pi) from it around the circle.

    Sorted once and counted by binary search, O(n log n); a pairwise comparison is O(n^2), hours for
    the ~6 neighbour steps per spot of a 10^5-spot section.
    """
    turn = 2 * np.pi
    wrapped = np.mod(angles, turn)
    ordered = np.sort(wrapped)
    circle = np.concatenate([ordered - turn, ordered, ordered + turn])  # the window may wrap round
    above = np.searchsorted(circle, wrapped - width, side="right")
    below = np.searchsorted(circle, wrapped + width, side="left")
    return below - above


def _median_step(steps: np.ndarray) -> np.ndarray:
    # members point either way along the group's direction: turn them to one side first
    ref = steps[np.argmax(np.abs(steps).sum(axis=1))]
    aligned = np.where((steps @ ref < 0)[:, None], -steps, steps)
    return np.median(aligned, axis=0)


def _row_vector(basis: np.ndarray) -> tuple[int, int]:
    # primitive lattice step m*b1 + n*b2 nearest in direction to the x axis, among the shortest
    best, best_key = (1, 0), None
    shortest = min(np.linalg.norm(basis[:, 0]), np.linalg.norm(basis[:, 1]))
    for m in range(-2, 3):
        for n in range(-2, 3):
            if math.gcd(m, n) != 1:
                continue
            v = basis @ [m, n]
            length = np.linalg.norm(v)
            if length > 1.05 * shortest or v[0] <= 0:
                continue
            key = (round(abs(math.atan2(v[1], v[0])), 3), length)
            if best_key is None or key < best_key:
                best, best_key = (m, n), key
    return best


def _complement(m: int, n: int) -> tuple[int, int]:
    # (p, q) with m*q - n*p = +-1 (extended Euclid), so that (m, n), (p, q) is a lattice basis
    old_r, r, old_s, s, old_t, t = m, n, 1, 0, 0, 1
    while r:
        quot = old_r // r
        old_r, r = r, old_r - quot * r
        old_s, s = s, old_s - quot * s
        old_t, t = t, old_t - quot * t
    # old_s * m + old_t * n = old_r = +-1
    return -old_t, old_s
