"""Approximate top-k cosine search: candidates from a PCA projection, then exact re-ranking.

Stage 1 projects the L2-normalised reference rows, centred on their mean, and the normalised queries
onto the reference's top principal axes and keeps the ``n_candidates`` best reduced-dimension scores
per query with the streaming top-k of :func:`~loki.tl._retrieve.topk_cosine`. Stage 2 computes the
exact cosine similarity of each query to its candidates with the full embeddings and keeps the top k.

The query is projected without subtracting the mean: ``q . r = q . (r - mean) + q . mean`` and the last
term is the same for every reference row, so ranking ``(q V) . ((r - mean) V)`` approximates ranking
``q . r`` and equals it when the axes ``V`` span the whole space. Recall depends on the data: it is high
when the reference embeddings have a fast-decaying covariance spectrum and poor for isotropic ones.

With ``n_lists`` (``search="ivf"``) stage 1 scans fewer rows: the projected reference is split into
k-means cells and each query scores only the rows of the ``n_probe`` cells whose centroids score best
(an inverted-file index), in one parallel kernel instead of a BLAS product against every row.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np

from loki._utils import as_rng, block_starts, check_int
from loki._utils._rng import SeedLike, check_seed
from loki._utils._threads import keep_torch_threads

from ._retrieve import _check_norms, _check_pair, _heap_push, l2_normalize, row_norms, topk_cosine

Search = Literal["exact", "pca", "ivf"]

#: Reference rows (a seeded subsample) used to fit the principal axes.
PCA_FIT_ROWS = 4096
#: Candidate scan in cache-sized score blocks: queries per block x reference rows per chunk (16 MiB).
QUERY_BLOCK = 1024
REF_CHUNK = 4096
#: Default number of principal axes (fewer when the embeddings have fewer dimensions).
N_COMPONENTS = 64
#: Default candidates per query: this many times k.
CANDIDATE_FACTOR = 4
#: Lloyd iterations of the k-means that builds the inverted lists (search="ivf").
KMEANS_ITER = 5
#: Default share of the inverted lists probed per query (search="ivf").
PROBE_SHARE = 1 / 8


def check_search(
    search: str,
    k: int | None,
    n_ref: int,
    dim: int,
    n_components: int | None,
    n_candidates: int | None,
    n_lists: int | None = None,
    n_probe: int | None = None,
    seed: SeedLike = 0,
) -> dict | None:
    """Validate the search options before any compute.

    Returns None for exact search, else the resolved sizes: ``n_components``, ``n_candidates`` and,
    for ``search="ivf"``, ``n_lists`` and ``n_probe`` (defaults filled in). ``seed`` (as
    :func:`~loki._utils._rng.as_rng` takes it) is checked with any ``search``, so that a call is refused
    or accepted whichever search it asks for.
    """
    if search not in ("exact", "pca", "ivf"):
        raise ValueError(f"search must be 'exact', 'pca' or 'ivf', got {search!r}.")
    check_seed(seed)
    if search == "exact":
        return None
    if k is None:
        raise ValueError(
            f"search={search!r} needs top_k: approximate search only finds the top-k reference rows."
        )
    check_int(k, "k")
    n_components = _size(n_components, "n_components", 1, dim, "the embedding size", min(N_COMPONENTS, dim))
    n_candidates = _size(
        n_candidates,
        "n_candidates",
        k,
        n_ref,
        "the number of reference rows",
        min(CANDIDATE_FACTOR * k, n_ref),
    )
    sizes = {"n_components": n_components, "n_candidates": n_candidates}
    if search == "ivf":
        lists = _size(n_lists, "n_lists", 1, n_ref, "the number of reference rows", round(np.sqrt(n_ref)))
        probe = _size(n_probe, "n_probe", 1, lists, "n_lists", int(np.ceil(lists * PROBE_SHARE)))
        sizes |= {"n_lists": lists, "n_probe": probe}
    return sizes


def topk_search(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    sizes: dict | None,
    *,
    seed: SeedLike = 0,
    normalize: bool = True,
    chunk_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` bank rows per query by the search :func:`check_search` resolved to ``sizes``.

    ``sizes`` None: exact search, :func:`~loki.tl._retrieve.topk_cosine` with ``normalize`` and
    ``chunk_size`` (bank rows per chunk). Otherwise approximate cosine search,
    :func:`topk_cosine_pca` with those sizes and ``seed``, which chunks its own scan.
    """
    if sizes is None:
        return topk_cosine(queries, bank, k, normalize=normalize, chunk_size=chunk_size, progress=progress)
    return topk_cosine_pca(queries, bank, k, **sizes, seed=seed, progress=progress)


def _size(value, name: str, lo: int, hi: int, what: str, default: int) -> int:
    """``value`` checked to lie in [lo, hi] (``what`` names hi), or ``default`` when it is None."""
    if value is None:
        return int(default)
    return check_int(value, name, minimum=lo, maximum=hi, optional=True, why=what)


def pca_axes(unit_rows: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top ``n_components`` principal axes (d x n_components, float32) of the rows.

    With ``n_components = d`` the axes form a complete orthonormal basis (also with fewer rows than d).
    """
    from scipy.linalg import eigh
    from threadpoolctl import threadpool_limits

    x = np.asarray(unit_rows, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64)
    xc = x - mean.astype(np.float32)
    d = x.shape[1]
    cov = xc.T @ xc
    # One BLAS thread: the eigensolver makes ~d small BLAS calls, and with several threads each one
    # waits for all of them, which costs seconds when other processes share the cores.
    with threadpool_limits(1, user_api="blas"):
        if n_components == d:
            _, vecs = eigh(cov)
        else:  # the top eigenvectors only (LAPACK ?syevx: much faster than a full decomposition)
            _, vecs = eigh(cov, subset_by_index=(d - n_components, d - 1), driver="evx")
    return mean.astype(np.float32), np.ascontiguousarray(vecs[:, ::-1], dtype=np.float32)


def _project_reference(reference, mean, axes, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    # Projected centred unit rows, (r / |r| - mean) V = (r V) / |r| - mean V, and the inverse norms,
    # streaming over row chunks (a memory-mapped reference stays on disk).
    n = reference.shape[0]
    proj = np.empty((n, axes.shape[1]), dtype=np.float32)
    inv_norm = np.empty(n, dtype=np.float32)
    shift = mean @ axes
    for start in range(0, n, chunk):
        block = np.asarray(reference[start : start + chunk], dtype=np.float32)
        norms = row_norms(block)
        _check_norms(norms, "reference", start)
        inv = (1.0 / norms).astype(np.float32)
        inv_norm[start : start + len(block)] = inv
        part = proj[start : start + len(block)]
        np.matmul(block, axes, out=part)
        part *= inv[:, None]
        part -= shift
    return proj, inv_norm


@numba.njit(parallel=True, cache=True, fastmath=True)
def _rerank(queries, reference, inv_norm, cand, k, out_i, out_v):  # pragma: no cover - numba
    # Exact cosine of each query (unit rows) to its candidates, then the k best; ties -> lower index.
    nq, nc = cand.shape
    d = queries.shape[1]
    for q in numba.prange(nq):
        c = np.sort(cand[q])
        s = np.empty(nc, dtype=np.float32)
        for j in range(nc):
            if c[j] < 0:  # an unfilled candidate slot
                s[j] = -np.inf
                continue
            row = reference[c[j]]
            acc = np.float32(0.0)
            for t in range(d):
                acc += queries[q, t] * row[t]
            s[j] = acc * inv_norm[c[j]]
        order = np.argsort(-s, kind="mergesort")
        for j in range(k):
            out_i[q, j] = c[order[j]]
            out_v[q, j] = s[order[j]]


@numba.njit(parallel=True, cache=True, fastmath=True)
def _ivf_scan(q_proj, cell_rows, cell_ids, bounds, probe, heap_v, heap_i):  # pragma: no cover - numba
    # Each query scores the rows of its probed cells (rows stored cell by cell) into its own heap.
    d = q_proj.shape[1]
    for q in numba.prange(q_proj.shape[0]):
        hv = heap_v[q]
        hi = heap_i[q]
        for p in range(probe.shape[1]):
            cell = probe[q, p]
            for j in range(bounds[cell], bounds[cell + 1]):
                s = np.float32(0.0)
                for t in range(d):
                    s += q_proj[q, t] * cell_rows[j, t]
                if s > hv[0]:
                    _heap_push(hv, hi, s, cell_ids[j])


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # Index of the nearest centroid (squared Euclidean) of each row.
    return np.argmax(x @ centroids.T - 0.5 * np.einsum("ij,ij->i", centroids, centroids), axis=1)


def kmeans(x: np.ndarray, n_clusters: int, rng, n_iter: int = KMEANS_ITER) -> np.ndarray:
    """Lloyd's k-means on the rows of ``x`` from a seeded random start; returns the centroids."""
    from scipy import sparse

    centroids = x[rng.choice(len(x), size=n_clusters, replace=False)].copy()
    for _ in range(n_iter):
        labels = _nearest(x, centroids)
        member = sparse.csr_matrix(
            (np.ones(len(x), dtype=np.float32), (labels, np.arange(len(x)))), shape=(n_clusters, len(x))
        )
        counts = np.bincount(labels, minlength=n_clusters)
        full = counts > 0  # an empty cluster keeps its centroid
        centroids[full] = (member @ x)[full] / counts[full, None]
    return centroids


def _ivf_candidates(q_proj, proj, n_cand, n_lists, n_probe, rng, progress):
    # Inverted lists: k-means cells of the projected reference; each query scans its n_probe best cells.
    n_fit = min(len(proj), max(PCA_FIT_ROWS, 4 * n_lists))
    fit = proj[np.sort(rng.choice(len(proj), size=n_fit, replace=False))] if n_fit < len(proj) else proj
    centroids = kmeans(fit, n_lists, rng)
    labels = _nearest(proj, centroids)
    members = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[members], np.arange(n_lists + 1))
    cell_rows = np.ascontiguousarray(proj[members])
    cell_scores = q_proj @ centroids.T
    probe = (
        np.argpartition(-cell_scores, n_probe - 1, axis=1)[:, :n_probe]
        if n_probe < n_lists
        else np.broadcast_to(np.arange(n_lists), cell_scores.shape)
    )
    # one parallel kernel per query block: small dot products in numba, no BLAS call per cell
    heap_v = np.full((len(q_proj), n_cand), -np.inf, dtype=np.float32)
    heap_i = np.full((len(q_proj), n_cand), -1, dtype=np.int64)
    for start in block_starts(len(q_proj), QUERY_BLOCK, progress=progress, desc="candidates"):
        stop = start + QUERY_BLOCK
        _ivf_scan(
            q_proj[start:stop],
            cell_rows,
            members,
            bounds,
            np.ascontiguousarray(probe[start:stop]),
            heap_v[start:stop],
            heap_i[start:stop],
        )
    return heap_i


@keep_torch_threads()  # the candidate scan and the re-rank are parallel numba kernels
def topk_cosine_pca(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    n_components: int | None = None,
    n_candidates: int | None = None,
    n_lists: int | None = None,
    n_probe: int | None = None,
    seed: SeedLike = 0,
    chunk_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` reference rows per query by cosine similarity (PCA candidates + exact re-rank).

    Parameters
    ----------
    queries
        n_queries x d embeddings.
    reference
        n_ref x d embeddings (any array supporting row slices and row gathers, e.g. a memory map).
    k
        Hits per query, ``1 <= k <= n_ref``.
    n_components
        Principal axes of the reference used for the candidate scores, ``1 <= n_components <= d``;
        default ``min(64, d)``.
    n_candidates
        Candidates per query re-ranked exactly, ``k <= n_candidates <= n_ref``; default
        ``min(4 k, n_ref)``. With ``n_components = d`` and ``n_candidates = n_ref`` the result is exact.
    n_lists, n_probe
        With ``n_lists`` (inverted-file search, ``search="ivf"``), the projected reference rows are
        split into ``n_lists`` k-means cells and each query scans only the rows of the ``n_probe`` cells
        whose centroids score best, instead of all rows (default ``n_probe = ceil(n_lists / 8)``). None:
        scan all rows. With ``n_probe = n_lists`` the candidates are those of the full scan.
    seed
        Seed of the reference subsamples the axes (and the k-means cells) are fitted on: an int >= 0, a
        numpy Generator, or None for fresh OS entropy.
    chunk_size
        Reference rows per chunk of the candidate scan (default 4096: with blocks of 1024 queries a
        16 MiB score block that stays in cache).
    progress
        Progress bar over query blocks of the candidate scan.

    Returns
    -------
    Reference row indices (int64) and exact cosine scores (float32), both n_queries x k, best first;
    ties keep the lower index first. A true top-k row is missed when it is not among the candidates.

    """
    q = np.asarray(queries, dtype=np.float32)
    _check_pair(q, reference, k)
    n_ref, dim = reference.shape
    sizes = check_search(
        "pca" if n_lists is None else "ivf", k, n_ref, dim, n_components, n_candidates, n_lists, n_probe, seed
    )
    n_comp, n_cand = sizes["n_components"], sizes["n_candidates"]
    qn = np.ascontiguousarray(l2_normalize(q, "queries"))
    chunk = REF_CHUNK if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    # Axes are fitted on unit rows of a seeded subsample; the whole reference is never copied.
    rng = as_rng(seed)
    n_fit = min(n_ref, PCA_FIT_ROWS)
    rows = np.sort(rng.choice(n_ref, size=n_fit, replace=False)) if n_fit < n_ref else slice(None)
    mean, axes = pca_axes(l2_normalize(reference[rows], "reference"), n_comp)
    proj, inv_norm = _project_reference(reference, mean, axes, max(chunk, 16384))
    q_proj = qn @ axes
    if n_lists is None:
        cand = np.empty((len(q), n_cand), dtype=np.int64)
        for start in block_starts(len(q), QUERY_BLOCK, progress=progress, desc="candidates"):
            stop = start + QUERY_BLOCK
            cand[start:stop] = topk_cosine(
                q_proj[start:stop], proj, n_cand, normalize=False, chunk_size=chunk
            )[0]
    else:
        cand = _ivf_candidates(q_proj, proj, n_cand, sizes["n_lists"], sizes["n_probe"], rng, progress)
        # A query whose probed cells hold fewer than k rows scans all rows instead.
        short = np.flatnonzero((cand >= 0).sum(axis=1) < k)
        if len(short):
            cand[short] = topk_cosine(q_proj[short], proj, n_cand, normalize=False, chunk_size=chunk)[0]
    out_i = np.empty((len(q), k), dtype=np.int64)
    out_v = np.empty((len(q), k), dtype=np.float32)
    if np.dtype(reference.dtype) == np.float32:  # read in place (a float32 memory map lazily)
        _rerank(qn, np.asarray(reference), inv_norm, cand, k, out_i, out_v)
        return out_i, out_v
    # Another dtype would be copied whole into float32: only the candidates' rows are read and cast.
    rows = np.unique(cand[cand >= 0])
    local = np.where(cand >= 0, np.searchsorted(rows, cand), -1)  # order-preserving: ties stay as they were
    _rerank(qn, np.asarray(reference[rows], dtype=np.float32), inv_norm[rows], local, k, out_i, out_v)
    return np.where(out_i >= 0, rows[np.maximum(out_i, 0)], -1), out_v
