"""Alignment metrics: distance to ground truth, and expression agreement at aligned locations.

The paper scores alignments of real serial sections by the Pearson correlation (eq. 20) and Kendall's
tau (eq. 21) of highly variable gene expression between target and source "at the same location":
each target spot is paired with the nearest aligned source spot (within ``max_distance``), and the
coefficient is computed across genes for every pair; the median over pairs summarises a section.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from loki._keys import Key
from loki._utils import check_array_finite, check_obsm_key
from loki.metrics._correlation import kendall_tau, pearson

__all__ = ["alignment_error", "alignment_expression_scores", "matched_expression_correlation", "spot_spacing"]


def spot_spacing(xy: np.ndarray) -> float:
    """Median distance from each spot to its nearest neighbour (the unit of alignment errors)."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2:
        raise ValueError("spot_spacing needs at least 2 points.")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def alignment_error(aligned: np.ndarray, truth: np.ndarray, unit: float | None = None) -> float:
    """Mean Euclidean distance between aligned and true coordinates.

    Parameters
    ----------
    aligned, truth
        (n, 2) coordinates of the same spots.
    unit
        Divide by this length (e.g. the spot spacing); default 1.

    Returns
    -------
    The mean distance (in ``unit``).

    """
    aligned = np.asarray(aligned, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if aligned.shape != truth.shape or aligned.ndim != 2:
        raise ValueError(
            f"aligned and truth must be (n, d) arrays of one shape, got {aligned.shape} and {truth.shape}."
        )
    check_array_finite(aligned, "aligned")
    check_array_finite(truth, "truth")
    if unit is not None and unit <= 0:
        raise ValueError(f"unit must be positive, got {unit}.")
    return float(np.linalg.norm(aligned - truth, axis=1).mean() / (unit or 1.0))


def matched_expression_correlation(
    expr_target: np.ndarray,
    xy_target: np.ndarray,
    expr_source: np.ndarray,
    xy_source: np.ndarray,
    *,
    max_distance: float | None = None,
    kendall: bool = True,
) -> dict[str, np.ndarray]:
    """PCC and Kendall's tau across genes between each target spot and its nearest source spot.

    Parameters
    ----------
    expr_target, expr_source
        Spots x genes (same genes, same order), dense or sparse.
    xy_target, xy_source
        Coordinates in one frame (the source's aligned coordinates).
    max_distance
        Pairs farther apart are dropped (default: the target's spot spacing).
    kendall
        Also compute Kendall's tau-b (slower).

    Returns
    -------
    ``{"pearson": (n_pairs,), "kendall_tau": (n_pairs,), "target_index", "source_index", "distance"}``;
    pairs where either profile is constant give NaN.

    """
    xy_target = np.asarray(xy_target, dtype=np.float64)[:, :2]
    xy_source = np.asarray(xy_source, dtype=np.float64)[:, :2]
    check_array_finite(xy_target, "xy_target")
    check_array_finite(xy_source, "xy_source")
    if expr_target.shape[0] != len(xy_target) or expr_source.shape[0] != len(xy_source):
        raise ValueError("expression matrices and coordinates must have the same number of spots.")
    if expr_target.shape[1] != expr_source.shape[1]:
        raise ValueError(
            f"expression matrices must share genes, got {expr_target.shape[1]} and {expr_source.shape[1]}."
        )
    if max_distance is None:
        max_distance = spot_spacing(xy_target)
    dist, src = cKDTree(xy_source).query(xy_target, k=1)
    ok = np.nonzero(dist <= max_distance)[0]
    src = src[ok]

    def _dense(x, rows):
        x = x[rows]
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)

    et = _dense(expr_target, ok)
    es = _dense(expr_source, src)
    out = {
        "pearson": np.atleast_1d(pearson(et, es, axis=1)) if len(ok) else np.zeros(0),
        "target_index": ok,
        "source_index": src,
        "distance": dist[ok],
    }
    if kendall:
        out["kendall_tau"] = np.array([kendall_tau(a, b) for a, b in zip(et, es, strict=True)])
    return out


def alignment_expression_scores(
    source: AnnData,
    target: AnnData,
    *,
    aligned_key: str = Key.ALIGNED,
    target_key: str = Key.SPATIAL,
    n_top_genes: int = 200,
    max_distance: float | None = None,
    kendall: bool = True,
) -> dict[str, float | np.ndarray]:
    """Median PCC and Kendall's tau of highly variable gene expression at aligned locations.

    Counts of both sections are normalised to the median library size and log1p-transformed; the
    ``n_top_genes`` genes with the highest variance of the target's log expression among the genes
    both sections share are used.

    Parameters
    ----------
    source
        Aligned section with ``.obsm[aligned_key]``.
    target
        Target section with ``.obsm[target_key]``.
    aligned_key, target_key
        Coordinates in ``.obsm``.
    n_top_genes
        Number of highly variable genes.
    max_distance
        Pairing radius (default the target's spot spacing).
    kendall
        Also compute Kendall's tau.

    Returns
    -------
    ``{"pearson_median", "kendall_tau_median", "n_pairs", "pearson", "kendall_tau"}``.

    """
    check_obsm_key(source, aligned_key)
    check_obsm_key(target, target_key)
    genes = target.var_names.intersection(source.var_names)
    if len(genes) < 2:
        raise ValueError(f"source and target share {len(genes)} gene(s); at least 2 are needed.")

    def _log_norm(adata):
        x = adata[:, genes].X
        x = x.tocsr().astype(np.float64) if sp.issparse(x) else sp.csr_matrix(np.asarray(x, dtype=np.float64))
        lib = np.asarray(x.sum(axis=1)).ravel()
        lib[lib == 0] = 1.0
        x = sp.diags(np.median(lib) / lib) @ x
        x.data = np.log1p(x.data)
        return x

    xt, xs = _log_norm(target), _log_norm(source)
    mean = np.asarray(xt.mean(axis=0)).ravel()
    var = np.asarray(xt.multiply(xt).mean(axis=0)).ravel() - mean**2
    top = np.argsort(-var, kind="stable")[: min(n_top_genes, len(genes))]
    res = matched_expression_correlation(
        xt[:, top],
        target.obsm[target_key],
        xs[:, top],
        source.obsm[aligned_key],
        max_distance=max_distance,
        kendall=kendall,
    )
    out: dict[str, float | np.ndarray] = {
        "pearson_median": float(np.nanmedian(res["pearson"])) if len(res["pearson"]) else float("nan"),
        "n_pairs": len(res["pearson"]),
        "pearson": res["pearson"],
    }
    if kendall:
        out["kendall_tau_median"] = (
            float(np.nanmedian(res["kendall_tau"])) if len(res["kendall_tau"]) else float("nan")
        )
        out["kendall_tau"] = res["kendall_tau"]
    return out
