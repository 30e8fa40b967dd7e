"""Principal components of tall embeddings without an N x d working copy.

An embedding has one row per spot (up to millions) and a few hundred columns. A thin SVD of the
centred matrix needs a float64 centred copy and the N x d left factor on top of the input; the d x d
covariance accumulated over row blocks and ``eigh`` give the same components in O(N d) time and
O(d^2 + block) memory. When there are fewer rows than columns, the covariance would be the larger
matrix, and the thin SVD of the (then short) centred matrix is used instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# rows per block: about 1 M float64 values (8 MB), whatever the width
_BLOCK_VALUES = 1 << 20


@dataclass(frozen=True)
class PCA:
    """A fitted PCA: ``mean`` (d,), ``components`` (k, d, orthonormal rows) and their variance share."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    def transform(self, x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
        """Project ``x`` (n, d), centred on ``mean`` (default: the fitted mean), block by block."""
        return project(x, self.components, self.mean if mean is None else mean)


def _parts(x: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    parts = [x] if isinstance(x, np.ndarray) else list(x)
    if not parts or any(np.ndim(p) != 2 for p in parts) or len({np.shape(p)[1] for p in parts}) != 1:
        raise ValueError("PCA needs one or more 2-dimensional arrays with the same number of columns.")
    return parts


def _blocks(parts: list[np.ndarray]) -> Iterator[np.ndarray]:
    rows = max(1, _BLOCK_VALUES // max(parts[0].shape[1], 1))
    for part in parts:
        for start in range(0, len(part), rows):
            yield np.asarray(part[start : start + rows], dtype=np.float64)


def column_mean(x: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the rows of ``x`` (an array, or several stacked), in float64, block by block."""
    parts = _parts(x)
    total = np.zeros(parts[0].shape[1])
    for block in _blocks(parts):
        total += block.sum(axis=0)
    return total / max(sum(len(p) for p in parts), 1)


def project(x: np.ndarray | Sequence[np.ndarray], components: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(x - mean) @ components.T`` block by block, as float64 (rows of several arrays stacked)."""
    parts = _parts(x)
    out = [(block - mean) @ components.T for block in _blocks(parts)]
    return np.vstack(out) if out else np.zeros((0, len(components)))


def fit_pca(x: np.ndarray | Sequence[np.ndarray], n_components: int) -> PCA:
    """Fit a PCA with ``min(n_components, n, d)`` components.

    Parameters
    ----------
    x
        An (n, d) array, or several arrays whose rows are taken together (not stacked in memory).
    n_components
        Number of leading components.

    Returns
    -------
    The fitted :class:`PCA`. Each component's largest loading (in absolute value) is positive, so the
    result does not depend on the solver's sign convention; the explained variance ratio is of the
    total variance.
    """
    parts = _parts(x)
    n, d = sum(len(p) for p in parts), parts[0].shape[1]
    k = min(int(n_components), n, d)
    mean = column_mean(parts)
    if k == 0:
        return PCA(mean, np.zeros((0, d)), np.zeros(0))
    if d <= n:
        cov = np.zeros((d, d))
        for block in _blocks(parts):
            centred = block - mean  # a new array: a float64 block may be a view of the input
            cov += centred.T @ centred
        eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
        comps = eigvecs[:, ::-1][:, :k].T
        variances = np.clip(eigvals[::-1][:k], 0.0, None)
        total = float(np.trace(cov))
    else:  # fewer rows than columns: the centred matrix is the smaller one
        _, sv, vt = np.linalg.svd(np.vstack(list(_blocks(parts))) - mean, full_matrices=False)
        comps, variances, total = vt[:k], sv[:k] ** 2, float((sv**2).sum())
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    return PCA(mean, np.ascontiguousarray(comps), variances / max(total, 1e-300))
