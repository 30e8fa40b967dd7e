"""Loki Retrieve: exact top-k cosine search of query embeddings in a large bank (eq. 15)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numba
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import block_starts, check_int, require_keys
from loki._utils._provenance import embedding_model, warn_if_models_differ
from loki._utils._rng import SeedLike
from loki._utils._spatialdata import get_table, is_spatialdata
from loki._utils._threads import keep_torch_threads

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._candidates import Search

#: Score-chunk budget: queries x bank-chunk float32 scores are kept under this many bytes.
_CHUNK_BYTES = 128 * 2**20


@numba.njit(cache=True, inline="always")
def _worse(hv, hi, a, b):  # pragma: no cover - numba
    # Heap order: a lower score is worse; of equal scores the higher bank index is, so that ties at the
    # k-th place keep the lower indices (rows are scanned in index order: a tie never enters).
    return hv[a] < hv[b] or (hv[a] == hv[b] and hi[a] > hi[b])


@numba.njit(cache=True, inline="always")
def _heap_push(hv, hi, s, i):  # pragma: no cover - numba
    # Replace the root of a min-heap (the worst kept score) by (s, i) and sift it down.
    k = hv.shape[0]
    hv[0] = s
    hi[0] = i
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        child = left
        right = left + 1
        if right < k and _worse(hv, hi, right, left):
            child = right
        if _worse(hv, hi, child, pos):
            hv[pos], hv[child] = hv[child], hv[pos]
            hi[pos], hi[child] = hi[child], hi[pos]
            pos = child
        else:
            break


@numba.njit(parallel=True, cache=True)
def _heap_update(scores, inv_norm, offset, heap_v, heap_i):  # pragma: no cover - numba
    # One min-heap of size k per query row (root = worst kept score); scan a chunk of scores.
    nq, nc = scores.shape
    for q in numba.prange(nq):
        hv = heap_v[q]
        hi = heap_i[q]
        for j in range(nc):
            s = scores[q, j] * inv_norm[j]
            if s > hv[0]:
                _heap_push(hv, hi, s, offset + j)


def default_chunk_size(n_queries: int, budget_bytes: int = _CHUNK_BYTES) -> int:
    """Bank rows per chunk: all queries' float32 scores within the budget, at least 1,024 rows.

    Beyond ``budget / 4 KiB`` queries the floor wins, and :func:`topk_cosine` splits the queries
    into blocks instead (:func:`query_block_size`).
    """
    return int(max(1024, budget_bytes // (4 * max(n_queries, 1))))


def query_block_size(chunk_size: int, budget_bytes: int = _CHUNK_BYTES) -> int:
    """Queries per block so that one block's float32 scores against a bank chunk fit the budget."""
    return int(max(1, budget_bytes // (4 * chunk_size)))


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of each row of a 2-D array, summed in float64.

    Squares of float32 entries overflow beyond about 1e19 and vanish below about 1e-23; float64
    keeps every finite float32 row's norm finite and non-zero (cosine similarity then needs it within
    float32's normal range, 1.2e-38 to 3.4e38: :func:`_check_norms`).
    """
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


def l2_normalize(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero or non-finite rows raise a ValueError."""
    x = np.asarray(x, dtype=np.float32)
    norms = row_norms(x)
    _check_norms(norms, name, 0)
    return x / norms.astype(np.float32)[:, None]


_NORMAL32 = np.finfo(np.float32)


def _check_norms(norms: np.ndarray, name: str, offset: int, allow_zero: bool = False) -> None:
    """Refuse rows that cosine similarity cannot use.

    A norm must be finite; unless ``allow_zero`` (raw dot products), also within float32's normal
    range, so that it and its inverse are float32 numbers (zero rows included).
    """
    if allow_zero:
        bad = ~np.isfinite(norms)
        what = "non-finite"
    else:
        bad = ~((norms >= _NORMAL32.tiny) & (norms <= _NORMAL32.max))  # NaN is caught too
        what = f"zero, non-finite or out-of-range (norm outside {_NORMAL32.tiny:.2g}-{_NORMAL32.max:.2g})"
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + offset).tolist()
        raise ValueError(f"{name} has {int(bad.sum())} {what} row(s), e.g. rows {rows}.")


def topk_cosine(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` bank rows per query by cosine similarity, streaming over bank chunks.

    The bank is read chunk by chunk: each chunk's score block ``queries @ chunk.T`` is scanned by a
    parallel kernel that keeps a size-``k`` heap per query, so memory stays at one score block and
    the bank is never copied or normalised as a whole. Queries are taken in blocks small enough for
    a block's scores against a chunk to stay under 128 MiB (all at once up to 32,768 queries with
    the default chunks); each block reads the bank once.

    Parameters
    ----------
    queries
        n_queries x d embeddings.
    bank
        n_bank x d embeddings (any array supporting row slices, e.g. a memory map).
    k
        Hits per query, ``1 <= k <= n_bank``.
    normalize
        Divide by the norms (cosine similarity). With False the raw dot product is ranked, which is
        the same for L2-normalised embeddings.
    chunk_size
        Bank rows per chunk; default keeps a score block under 128 MiB.
    progress
        Show a progress bar over chunks.

    Returns
    -------
    Bank row indices (int64) and scores (float32), both n_queries x k, best first; of equal scores
    the lower bank index comes first. Identical bank rows can differ in the last bit of their
    float32 scores (BLAS rounds by position), so their order is not guaranteed.

    """
    q = np.asarray(queries, dtype=np.float32)
    n_bank = bank.shape[0]
    _check_pair(q, bank, k)
    if normalize:
        q = l2_normalize(q, "queries")
    q = np.ascontiguousarray(q)
    chunk = default_chunk_size(len(q)) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    heap_v = np.full((len(q), k), -np.inf, dtype=np.float32)
    heap_i = np.full((len(q), k), -1, dtype=np.int64)
    q_block = min(len(q), query_block_size(chunk))
    buf = np.empty((q_block, min(chunk, n_bank)), dtype=np.float32)
    with keep_torch_threads():  # _heap_update is a parallel numba kernel
        for q0 in range(0, len(q), q_block):
            qb = q[q0 : q0 + q_block]
            desc = "retrieve" if q_block == len(q) else f"retrieve, queries {q0 + 1}-{q0 + len(qb)}"
            for start in block_starts(n_bank, chunk, progress=progress, desc=desc, unit="chunk"):
                block = np.asarray(bank[start : start + chunk], dtype=np.float32)
                norms = row_norms(block)
                # Raw dot products are defined for zero rows; cosine similarities are not.
                _check_norms(norms, "bank", start, allow_zero=not normalize)
                inv = (1.0 / norms).astype(np.float32) if normalize else np.ones(len(block), dtype=np.float32)
                out = buf[: len(qb), : len(block)]
                np.matmul(qb, block.T, out=out)
                _heap_update(out, inv, start, heap_v[q0 : q0 + len(qb)], heap_i[q0 : q0 + len(qb)])
    order = np.lexsort((heap_i, -heap_v), axis=1)
    return np.take_along_axis(heap_i, order, axis=1), np.take_along_axis(heap_v, order, axis=1)


def _check_pair(q: np.ndarray, bank, k: int) -> None:
    if q.ndim != 2 or len(bank.shape) != 2:
        raise ValueError(f"queries and bank must be 2-D, got shapes {q.shape} and {tuple(bank.shape)}.")
    if q.shape[1] != bank.shape[1]:
        raise ValueError(
            f"Embedding sizes differ: queries have {q.shape[1]} dimensions, the bank {bank.shape[1]}; "
            "were they made by the same model?"
        )
    if len(q) == 0 or bank.shape[0] == 0:
        raise ValueError(f"Empty input: {len(q)} queries, {bank.shape[0]} bank rows.")
    check_int(k, "k")
    if k > bank.shape[0]:
        raise ValueError(f"k={k} is larger than the bank ({bank.shape[0]} rows); pass k <= {bank.shape[0]}.")
    if not np.isfinite(q).all():
        raise ValueError("queries contain NaN or infinite values.")


def table_of(data, table_key: str | None, what: str) -> AnnData:
    """The table of an AnnData or SpatialData ``what`` (``"query"``, ``"reference"``, ...).

    A SpatialData of several tables without ``table_key`` is refused naming its tables and the
    ``{what}_table_key`` parameter of the calling tool.
    """
    if is_spatialdata(data) and table_key is None and len(data.tables) != 1:
        raise ValueError(
            f"The {what} SpatialData holds {len(data.tables)} tables "
            f"({', '.join(map(repr, data.tables.keys())) or 'none'}); pass {what}_table_key= to choose one."
        )
    return get_table(data, table_key)


def embeddings_of(data, use: str, table_key: str | None, what: str) -> tuple[np.ndarray, pd.Index]:
    """Embedding matrix and row names of an AnnData / SpatialData (``.obsm[use]``) or a plain array.

    A sparse matrix is made dense; anything but a 2-D array of numbers is refused with a message that
    names ``what`` (``"query"``, ``"bank"``, ...) and, for a SpatialData holding several tables, its
    ``{what}_table_key`` parameter.
    """
    if isinstance(data, AnnData) or is_spatialdata(data):
        table = table_of(data, table_key, what)
        require_keys(table.obsm, use, f"{what}.obsm")
        emb, names = table.obsm[use], pd.Index(table.obs_names)
        where = f"{what}.obsm[{use!r}]"
    elif isinstance(data, pd.DataFrame):
        emb, names, where = data, pd.Index(data.index), f"{what} DataFrame"
    else:
        emb, names, where = data, None, what
    if isinstance(emb, pd.DataFrame):
        emb = emb.to_numpy()
    elif sparse.issparse(emb):
        emb = emb.toarray()  # embeddings are dense by nature; a sparse copy of them is made dense
    elif not hasattr(emb, "shape") or not hasattr(emb, "dtype"):
        emb = np.asarray(emb)
    shape = tuple(emb.shape)
    if len(shape) != 2:
        one = " (one embedding: pass x[None, :])" if len(shape) == 1 else ""
        raise ValueError(
            f"{where} must be a 2-D array of embeddings (rows x dimensions), got shape {shape}{one}."
        )
    dtype = np.dtype(emb.dtype)
    if dtype.kind not in "iuf":
        raise TypeError(f"{where} must hold real numbers, got dtype {dtype}.")
    return emb, pd.RangeIndex(shape[0]) if names is None else names


def _holds_positions(index: pd.Index) -> bool:
    """Whether the labels of ``index`` are 0..n-1, each once, in any order."""
    if not pd.api.types.is_integer_dtype(index.dtype) or not index.is_unique:
        return False
    return len(index) == 0 or (index.min() == 0 and index.max() == len(index) - 1)


def _warn_repeated(names: pd.Index, what: str, column: str, position: str) -> None:
    """Warn that ``names`` repeat, so that the hit table's ``column`` does not identify a row."""
    if names.is_unique:
        return
    repeated = names[names.duplicated()].unique()
    warnings.warn(
        f"{len(repeated)} {what} row name(s) repeat (e.g. {list(repeated[:3])!r}): the hits' {column!r} "
        f"does not tell those rows apart, {position!r} does. Give unique names, e.g. "
        "anndata.concat(..., index_unique='-') or adata.obs_names_make_unique().",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


#: Columns of the hit table that retrieve builds itself.
_HIT_COLUMNS = ("query", "query_index", "rank", "bank_id", "bank_index", "score")


def retrieve(
    query: AnnData | SpatialData | np.ndarray,
    bank: AnnData | SpatialData | np.ndarray,
    *,
    k: int = 50,
    use_query: str = Key.IMAGE,
    use_bank: str = Key.TEXT,
    query_table_key: str | None = None,
    bank_table_key: str | None = None,
    bank_ids: Sequence | None = None,
    bank_metadata: pd.DataFrame | Sequence[str] | None = None,
    normalize: bool = True,
    search: Search = "exact",
    n_components: int | None = None,
    n_candidates: int | None = None,
    n_lists: int | None = None,
    n_probe: int | None = None,
    seed: SeedLike = 0,
    chunk_size: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Retrieve the ``k`` bank transcriptomes most similar to each query image (eq. 15).

    Exact cosine top-k streamed over bank chunks (:func:`topk_cosine`): a bank of millions of rows
    never produces the full score matrix, and the bank may be a memory-mapped array.

    Parameters
    ----------
    query
        Query embeddings: an AnnData / SpatialData table with ``.obsm[use_query]``, a DataFrame (rows
        named by its index) or a 2-D array of numbers; a sparse matrix is made dense.
    bank
        Bank embeddings, as ``query`` (an array such as ``np.load(..., mmap_mode="r")`` stays on
        disk). A :class:`~loki.LokiWarning` says so when the bank's (or the queries') row names
        repeat, e.g. sections joined by ``anndata.concat`` without ``index_unique``: ``bank_id`` then
        does not identify a row, ``bank_index`` does.
    k
        Hits per query (at most the bank size).
    use_query, use_bank
        ``.obsm`` keys of the embeddings (default: image embeddings against text embeddings). A
        :class:`~loki.LokiWarning` says so when their records (``.uns['loki']``) name different model
        weights.
    query_table_key, bank_table_key
        Tables of SpatialData inputs (may be omitted for a SpatialData holding one table).
    bank_ids
        Names of the bank rows for array input (default: the obs names of an AnnData bank, else
        0..n-1).
    bank_metadata
        Per-bank-row metadata joined to the hits: a DataFrame (or a Series) with one row per bank
        row, matched by name when its index holds the bank's row names, else by position when its
        index holds 0..n-1 in any order (the row labelled i is bank row i, as after
        ``reset_index(drop=True)``; any other index is refused); or names of ``.obs`` columns of an
        AnnData bank. Its columns must not be named like the hit table's own.
    normalize
        Rank cosine similarities (True) or raw dot products.
    search
        ``"exact"`` (default) scores every bank row. ``"pca"`` / ``"ivf"``: approximate search - candidates
        from the bank's top principal axes (``"ivf"``: only in the best k-means cells), re-ranked
        exactly; faster on large banks, but a true top-k row outside the candidates is missed. Cosine
        only (``normalize=True``). See :func:`loki.tl.predict_expression` for the options.
    n_components, n_candidates, n_lists, n_probe, seed
        Options of the approximate searches (unused with ``search="exact"``; ``seed``, an int >= 0, a
        numpy Generator or None for fresh OS entropy, is checked with any search).
    chunk_size
        Bank rows per chunk (default keeps one score block under 128 MiB).
    progress
        Progress bar over chunks.

    Returns
    -------
    A tidy DataFrame with one row per (query, hit): ``query`` (query name), ``query_index``
    (position), ``rank`` (1 = best), ``bank_id``, ``bank_index`` (position), ``score`` and any
    metadata columns. Nothing is written to the inputs.

    """
    q, q_names = embeddings_of(query, use_query, query_table_key, "query")
    b, b_names = embeddings_of(bank, use_bank, bank_table_key, "bank")
    warn_if_models_differ(
        {
            f"query .obsm[{use_query!r}]": embedding_model(query, use_query, query_table_key),
            f"bank .obsm[{use_bank!r}]": embedding_model(bank, use_bank, bank_table_key),
        }
    )
    if bank_ids is not None:
        if isinstance(bank_ids, str) or np.ndim(bank_ids) != 1:
            raise ValueError(
                f"bank_ids must be a sequence of one name per bank row ({b.shape[0]}), got {type(bank_ids).__name__}."
            )
        b_names = pd.Index(bank_ids)
        if len(b_names) != b.shape[0]:
            raise ValueError(f"bank_ids has {len(b_names)} entries, the bank {b.shape[0]} rows.")
    meta = None
    if bank_metadata is not None:
        if isinstance(bank_metadata, pd.Series):
            bank_metadata = bank_metadata.to_frame()  # one column, e.g. bank.obs["section"]
        if isinstance(bank_metadata, pd.DataFrame):
            if len(bank_metadata) != b.shape[0]:
                raise ValueError(f"bank_metadata has {len(bank_metadata)} rows, the bank {b.shape[0]}.")
            meta = bank_metadata
            if meta.index.is_unique and set(meta.index) == set(b_names):
                meta = meta.loc[b_names]  # rows matched to the bank by name, as for fuse_with in annotate
            elif _holds_positions(meta.index):
                # labels 0..n-1 (a frame after reset_index, reordered or not): the row labelled i is
                # bank row i, also when it is not the i-th row (frame[::-1] keeps a RangeIndex)
                meta = meta.sort_index()
            else:
                unknown = list(meta.index.difference(b_names, sort=False)[:3])
                raise ValueError(
                    "bank_metadata's index names rows, but not the bank's rows one to one "
                    f"(e.g. {unknown or 'repeated names'!r} against the bank's {list(b_names[:3])!r}, ...); "
                    "index it by the bank's row names, or reset its index to match by position."
                )
            meta = meta.reset_index(drop=True)
        else:
            if not isinstance(bank, AnnData) and not is_spatialdata(bank):
                raise ValueError("Column names as bank_metadata need an AnnData bank; pass a DataFrame.")
            table = get_table(bank, bank_table_key)
            cols = [bank_metadata] if isinstance(bank_metadata, str) else list(bank_metadata)
            require_keys(table.obs.columns, cols, "bank.obs")
            meta = table.obs[cols].reset_index(drop=True)
    if meta is not None:
        clash = [c for c in meta.columns if c in _HIT_COLUMNS]
        if clash:
            raise ValueError(
                f"bank_metadata column(s) {clash} would clash with the hit table's own columns "
                f"{list(_HIT_COLUMNS)}; rename them."
            )
    from ._candidates import check_search, topk_search

    sizes = check_search(
        search, k, b.shape[0], b.shape[1], n_components, n_candidates, n_lists, n_probe, seed
    )
    if sizes is not None and not normalize:
        raise ValueError(
            f"search={search!r} ranks cosine similarities; use normalize=True or search='exact'."
        )
    idx, scores = topk_search(
        q, b, k, sizes, seed=seed, normalize=normalize, chunk_size=chunk_size, progress=progress
    )
    _warn_repeated(q_names, "query", "query", "query_index")
    _warn_repeated(b_names, "bank", "bank_id", "bank_index")
    n_q = idx.shape[0]
    flat = idx.ravel()
    out = pd.DataFrame(  # columns as in _HIT_COLUMNS
        {
            "query": np.repeat(np.asarray(q_names), k),
            "query_index": np.repeat(np.arange(n_q), k),
            "rank": np.tile(np.arange(1, k + 1), n_q),
            "bank_id": np.asarray(b_names)[flat],
            "bank_index": flat,
            "score": scores.ravel(),
        }
    )
    if meta is not None:
        out = pd.concat([out, meta.iloc[flat].reset_index(drop=True)], axis=1)
    logger.info("retrieved top %d of %d bank rows for %d queries", k, b.shape[0], n_q)
    return out
