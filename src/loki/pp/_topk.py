"""Numba kernels: per-row top-k over CSR matrices, and joining gene names into sentences.

Order is "higher value first, lower column first among equal values", a total order, which is what
``pandas.Series.nlargest(n, keep="first")`` returns when ``n`` is below the row length. Each row costs
one vectorised pass over its values and column indices, which counts the values at or above a few
thresholds placed around the k-th value predicted from the previous row (scaled by the row's number
of stored values), counts NaN, infinite and negative values, and checks that the columns strictly
increase (canonical CSR; :func:`top_k_rows` sorts a copy when they do not). The highest threshold
expected to leave ``k`` values in unmasked columns (the previous row's share of masked candidates
is allowed for) selects the candidates, typically 1-2 k of several thousand stored values, listed from
64-value bit masks. Among the candidates, integer values (raw counts)
are ranked by counting: a histogram gives the k-th value, and each selected entry is written
straight to its rank, in column order within a value. Other values (normalised expression) go
through a bounded heap. When fewer than ``k`` candidates survive the column mask, the row is redone
at the next lower threshold, down to every positive value, so the result is exact whatever the
prediction. Nothing is densified.

Array indices inside the kernels start at zero on row slices (``data[lo:hi]``): with a provably
non-negative index numba drops its negative-index check, which lets LLVM vectorise the counting pass.
"""

from __future__ import annotations

import sys

import numba
import numpy as np
from scipy import sparse

from loki._utils._threads import keep_torch_threads

try:
    from anndata.abc import CSCDataset, CSRDataset
except ImportError:  # anndata < 0.11
    from anndata.experimental import CSCDataset, CSRDataset

# Rows per parallel task: large enough to amortise the buffers, small enough to balance threads.
_ROWS_PER_TASK = 256
# Counting bins above the lowest candidate value; the few values above them are sorted.
_WINDOW = 64
# Values from here on are not ranked by counting (float64 integers are exact below 2**53).
_INT_MAX = 2.0**52
# v >= _TINY is v > 0 for every float and integer type.
_TINY = 5e-324
# Index of the lowest set bit of a 64-bit word by a De Bruijn multiplication (numba has no ctz).
_DEBRUIJN = 0x03F79D71B4CB0A89
_LOWBIT_INDEX = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _LOWBIT_INDEX[(((1 << _bit) * _DEBRUIJN) & (2**64 - 1)) >> 58] = _bit
# Candidate thresholds, as multiples of the predicted k-th value, highest first; exactly four,
# since _row_pass counts them in named accumulators (numba does not bounds-check thr[3]).
_STEPS = (1.25, 1.0, 0.8, 0.5)


@numba.njit(cache=True, inline="always")
def _worse(v1, c1, v2, c2):
    # (v1, c1) ranks after (v2, c2)
    return v1 < v2 or (v1 == v2 and c1 > c2)


@numba.njit(cache=True)
def _sift_down(hv, hc, pos, size):
    # Heap with the worst-ranked entry at the root.
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        right = child + 1
        if right < size and _worse(hv[right], hc[right], hv[child], hc[child]):
            child = right
        if not _worse(hv[child], hc[child], hv[pos], hc[pos]):
            return
        hv[pos], hv[child] = hv[child], hv[pos]
        hc[pos], hc[child] = hc[child], hc[pos]
        pos = child


@numba.njit(cache=True, inline="always")
def _kept(keep_bits, c):
    # the column mask packed 64 columns a word: 2.5 kB for 20,000 genes, which stays in L1 cache
    c = np.uint64(c)
    return (keep_bits[c >> np.uint64(6)] >> (c & np.uint64(63))) & np.uint64(1) != 0


@numba.njit(cache=True, fastmath={"reassoc"})
def _row_pass(vals, cols, thr, cnt):  # pragma: no cover - numba
    """Counts of values >= each of the 4 thresholds (into ``cnt``); returns (bad values, unsorted columns).

    Bad values are NaN, infinite or negative; unsorted columns are those not above their predecessor.
    ``thr`` has the values' dtype. The counts are float32 sums: numba widens every integer sum to 64
    bits, float32 keeps 8 values per AVX2 instruction, and reassociating sums of ones is exact (up to
    2**24, beyond which a count only saturates: the thresholds are a guess, and bad values or unsorted
    columns still count as present).
    """
    t0, t1, t2, t3 = thr[0], thr[1], thr[2], thr[3]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    n0 = zero
    n1 = zero
    n2 = zero
    n3 = zero
    bad = zero
    for j in range(vals.shape[0]):
        v = vals[j]
        n0 += one if v >= t0 else zero
        n1 += one if v >= t1 else zero
        n2 += one if v >= t2 else zero
        n3 += one if v >= t3 else zero
        bad += zero if v >= zero else one
        bad += one if v == np.inf else zero
    cnt[0], cnt[1], cnt[2], cnt[3] = n0, n1, n2, n3
    unsorted = zero
    for j in range(1, cols.shape[0]):
        unsorted += one if cols[j] <= cols[j - 1] else zero
    return np.int64(bad), np.int64(unsorted)


@numba.njit(cache=True)
def _gather(vals, t, cand):  # pragma: no cover - numba
    """Positions of the values >= t, in order.

    Each word of 64 values becomes a bit mask (a vectorised compare), whose set bits are then
    listed: the cost follows the number of hits, not of values, and no branch depends on where the
    hits fall. ``t`` has the values' dtype, so nothing is converted.
    """
    n = 0
    n_words = vals.shape[0] // 64
    for w in range(n_words):
        word = vals[64 * w : 64 * w + 64]
        mask = np.uint64(0)
        for j in range(64):
            mask |= np.uint64(word[j] >= t) << np.uint64(j)
        while mask:
            low = mask & (~mask + np.uint64(1))
            cand[n] = 64 * w + _LOWBIT_INDEX[(low * np.uint64(_DEBRUIJN)) >> np.uint64(58)]
            n += 1
            mask ^= low
    for j in range(64 * n_words, vals.shape[0]):  # the rest: branch-free compaction
        cand[n] = j
        n += vals[j] >= t
    return n


@numba.njit(cache=True)
def _count_select(
    vals, cols, cand, n_cand, keep_bits, k, base, hist, off, high, buf, out_row
):  # pragma: no cover
    """Rank integer candidates (all >= ``base``) by counting. Returns (n selected, n usable, k-th value).

    Values ``base`` to ``base + len(hist) - 1`` are counted in ``hist``; the few above that window wait
    in ``high`` and take the first ranks after a stable insertion sort. n selected is -1 when the heap
    must decide: a non-integer value, or ``k`` or more values above the window. ``hist`` is all zeros
    on entry and on exit.
    """
    w = hist.shape[0]
    m = 0
    n_high = 0
    nonint = 0
    rtop = 0
    for j in range(n_cand):  # positive finite values in unmasked columns: window bins or high
        p = cand[j]
        v = np.float64(vals[p])
        kept = _kept(keep_bits, cols[p])
        if not (kept and 0.0 < v < _INT_MAX):
            nonint += v >= _INT_MAX and v < np.inf and kept
            continue
        iv = np.int64(v)
        nonint += iv != v
        r = iv - base
        if r >= w:
            high[n_high] = p
            n_high += 1
        else:
            hist[r] += 1
            rtop = max(rtop, r)
            cand[m] = p
            m += 1
    t = 0  # threshold bin: fewer than k entries above it, at least k at or above (else take all)
    cum = n_high
    if nonint == 0 and n_high < k:
        for r in range(rtop, -1, -1):
            off[r] = cum
            cum += hist[r]
            if cum >= k:
                t = r
                break
    for r in range(rtop + 1):
        hist[r] = 0
    if nonint or n_high >= k:
        return -1, m + n_high, 0.0
    for r in range(t):
        off[r] = k  # below the threshold: write to the scratch slot k
    for j in range(m):  # each entry straight to its rank, column order within a value
        p = cand[j]
        r = np.int64(vals[p]) - base
        q = min(off[r], k)
        buf[q] = cols[p]
        off[r] = q + (r >= t)
    for a in range(1, n_high):  # above the window: stable insertion sort, value descending
        pa = high[a]
        va = vals[pa]
        j = a - 1
        while j >= 0 and vals[high[j]] < va:
            high[j + 1] = high[j]
            j -= 1
        high[j + 1] = pa
    for j in range(n_high):
        buf[j] = cols[high[j]]
    size = min(cum, k)
    for j in range(size):
        out_row[j] = buf[j]
    return size, m + n_high, np.float64(base + t)


@numba.njit(cache=True)
def _heap_select(vals, cols, cand, n_cand, keep_bits, k, hv, hc, out_row):  # pragma: no cover - numba
    """Any positive values, via a bounded heap. Returns (n selected, n usable, k-th value)."""
    size = 0
    m = 0
    thr = 0.0  # once the heap is full, only values above its worst one can enter
    for j in range(n_cand):
        p = cand[j]
        v = np.float64(vals[p])
        if not (v < np.inf) or not _kept(keep_bits, cols[p]):
            continue
        m += v > 0.0
        if v > thr:
            c = np.int64(cols[p])
            if size < k:
                i = size
                hv[i] = v
                hc[i] = c
                size += 1
                while i > 0:
                    parent = (i - 1) // 2
                    if not _worse(hv[i], hc[i], hv[parent], hc[parent]):
                        break
                    hv[i], hv[parent] = hv[parent], hv[i]
                    hc[i], hc[parent] = hc[parent], hc[i]
                    i = parent
                if size == k:
                    thr = hv[0]
            else:
                # sorted columns: an equal value arriving later ranks after every entry held
                hv[0] = v
                hc[0] = c
                _sift_down(hv, hc, 0, size)
                thr = hv[0]
    kth = hv[0] if size else 0.0
    s = size
    while s > 1:  # heapsort: the worst goes to the end each round, leaving the best first
        s -= 1
        hv[0], hv[s] = hv[s], hv[0]
        hc[0], hc[s] = hc[s], hc[0]
        _sift_down(hv, hc, 0, s)
    for j in range(size):
        out_row[j] = hc[j]
    return size, m, kth


@numba.njit(cache=True)
def _select_row(
    vals, cols, t, tb, keep_bits, k, cand, hist, off, high, hv, hc, buf, out_row
):  # pragma: no cover
    """Top k among the values >= t.

    Returns (n selected, n candidates, n usable candidates, k-th value, integer values).

    ``tb`` is a one-element array of the values' dtype, used to convert ``t`` once.
    """
    tb[0] = t
    n_cand = _gather(vals, tb[0], cand)
    floor = np.floor(np.float64(tb[0]))  # every candidate is >= this integer
    if floor < _INT_MAX:
        size, m, kth = _count_select(
            vals, cols, cand, n_cand, keep_bits, k, np.int64(floor), hist, off, high, buf, out_row
        )
        if size >= 0:
            return size, n_cand, m, kth, True
        n_cand = _gather(vals, tb[0], cand)  # the counting pass compacted cand in place
    size, m, kth = _heap_select(vals, cols, cand, n_cand, keep_bits, k, hv, hc, out_row)
    return size, n_cand, m, kth, False


@numba.njit(cache=True, inline="always")
def _top_k_range(
    data, indices, indptr, keep_bits, k, max_nnz, r0, r1, out, counts, n_bad
):  # pragma: no cover
    """Rows ``r0:r1``; a row with unsorted or repeated columns gets ``counts = -1`` and is skipped."""
    hv = np.empty(k + 1, np.float64)
    hc = np.empty(k + 1, np.int64)
    buf = np.empty(k + 1, np.int32)
    hist = np.zeros(_WINDOW, np.int64)
    off = np.empty(_WINDOW, np.int64)
    cand = np.empty(max(max_nnz, 1), np.int64)
    high = np.empty(max(max_nnz, 1), np.int64)
    tb = np.empty(1, data.dtype)
    steps = np.array(_STEPS)
    n_steps = len(_STEPS)
    thr = np.empty(n_steps, data.dtype)
    cnt = np.empty(n_steps, np.int64)
    t_ref = 0.0  # k-th value of the last row with k usable values, and its number of stored values
    n_ref = 1
    scale = False  # raw counts: the k-th value grows with the number of detected genes
    ratio = 1.0  # candidates per usable candidate (the column mask removes some) in the last row
    for i in range(r0, r1):
        vals = data[indptr[i] : indptr[i + 1]]
        cols = indices[indptr[i] : indptr[i + 1]]
        pred = t_ref * (vals.shape[0] / n_ref if scale else 1.0)
        for s in range(n_steps):
            thr[s] = steps[s] * pred
        bad, unsorted = _row_pass(vals, cols, thr, cnt)
        n_bad[i] = bad
        if unsorted:
            counts[i] = -1
            continue
        # highest threshold expected to leave k usable values; lower ones if it does not
        s = 0 if pred > 0.0 else n_steps
        while s < n_steps and cnt[s] < k * ratio:
            s += 1
        while True:
            t = thr[s] if s < n_steps else _TINY
            size, n_cand, m, kth, integer = _select_row(
                vals, cols, t, tb, keep_bits, k, cand, hist, off, high, hv, hc, buf, out[i]
            )
            if m >= k or s == n_steps:
                break
            s += 1
            while s < n_steps and cnt[s] < k:
                s += 1
        if m >= k:
            t_ref = kth
            n_ref = max(1, vals.shape[0])
            scale = integer
            ratio = min(4.0, n_cand / m) if s < n_steps else 1.0
        for j in range(size, k):
            out[i, j] = -1
        counts[i] = size


@numba.njit(cache=True, parallel=True)
def _top_k_parallel(data, indices, indptr, keep_bits, k, max_nnz, out, counts, n_bad):  # pragma: no cover
    n_rows = indptr.shape[0] - 1
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        r0 = task * _ROWS_PER_TASK
        _top_k_range(
            data,
            indices,
            indptr,
            keep_bits,
            k,
            max_nnz,
            r0,
            min(n_rows, r0 + _ROWS_PER_TASK),
            out,
            counts,
            n_bad,
        )


# Small inputs run serially: starting threads costs more than the work (milliseconds on a busy machine).
_PARALLEL_MIN_NNZ = 1_000_000


def _top_k_csr(data, indices, indptr, keep_bits, k, max_nnz, out, counts, n_bad):
    if len(data) >= _PARALLEL_MIN_NNZ:
        with keep_torch_threads():
            _top_k_parallel(data, indices, indptr, keep_bits, k, max_nnz, out, counts, n_bad)
    else:
        _top_k_range(data, indices, indptr, keep_bits, k, max_nnz, 0, len(indptr) - 1, out, counts, n_bad)


@numba.njit(cache=True, inline="always")
def _join_row(top, counts, name_buf, name_off, sep, row_off, out, i):  # pragma: no cover - numba
    # unsigned positions: numba then skips its negative-index check on every byte copied
    pos = np.uint64(row_off[i])
    for j in range(counts[i]):
        g = top[i, j]
        start = np.uint64(name_off[g])
        for b in range(np.uint64(name_off[g + 1]) - start):
            out[pos + b] = name_buf[start + b]
        pos += np.uint64(name_off[g + 1]) - start
        out[pos] = sep
        pos += np.uint64(1)
    if counts[i] > 0:
        pos -= np.uint64(1)  # the last separator becomes the newline
    out[pos] = 10  # "\n" ends every row


@numba.njit(cache=True)
def _join_range(top, counts, name_buf, name_off, sep, row_off, out, r0, r1):  # pragma: no cover - numba
    for i in range(r0, r1):
        _join_row(top, counts, name_buf, name_off, sep, row_off, out, i)


@numba.njit(cache=True, parallel=True)
def _join_parallel(top, counts, name_buf, name_off, sep, row_off, out):  # pragma: no cover - numba
    # the row body is inlined into the parallel loop: a call per task ran slower than the serial loop
    for i in numba.prange(top.shape[0]):
        _join_row(top, counts, name_buf, name_off, sep, row_off, out, i)


# Joining is a memory copy: below this many rows, thread start-up costs more than it saves.
_PARALLEL_MIN_ROWS = 20_000


def _join_rows(top, counts, name_buf, name_off, sep, row_off, out):
    if len(top) >= _PARALLEL_MIN_ROWS:
        with keep_torch_threads():
            _join_parallel(top, counts, name_buf, name_off, sep, row_off, out)
    else:
        _join_range(top, counts, name_buf, name_off, sep, row_off, out, 0, len(top))


@numba.njit(cache=True)
def _row_bytes(top, counts, name_off, out):  # pragma: no cover - numba
    for i in range(top.shape[0]):
        n = counts[i]
        total = max(n, 1)  # n - 1 separators and the final newline
        for j in range(n):
            g = top[i, j]
            total += name_off[g + 1] - name_off[g]
        out[i] = total


# Rows read at a time from a backed matrix: at most this many, and about _BLOCK_VALUES values when dense.
_BLOCK_ROWS = 10_000
_BLOCK_VALUES = 2**26


class RowBlocks:
    """A matrix that is not in memory, read as CSR blocks of consecutive rows.

    For anndata's backed CSR datasets and dense h5py datasets (up to ``_BLOCK_ROWS`` rows at a time)
    and dask arrays (one block per row chunk). Rows are independent in :func:`top_k_rows`, so the result
    is the same as on the whole matrix.
    """

    def __init__(self, x):
        self.x = x
        self.shape = tuple(int(n) for n in x.shape)

    def __iter__(self):
        if hasattr(self.x, "blocks"):  # dask
            for i in range(self.x.numblocks[0]):
                yield as_csr(self.x.blocks[i].compute())
        else:
            step = max(1, min(_BLOCK_ROWS, _BLOCK_VALUES // max(self.shape[1], 1)))
            for start in range(0, self.shape[0], step):
                yield as_csr(self.x[start : start + step])


def as_csr(x) -> sparse.csr_matrix | RowBlocks:
    """``x`` as a CSR matrix (no copy when it already is one), or as :class:`RowBlocks` when not in memory.

    Backed CSC datasets are read whole (anndata reads all of them for any row slice). Dense float16
    is converted to float32, which scipy.sparse supports and which keeps every value and their order.
    """
    if sparse.issparse(x):
        return x.tocsr()
    if isinstance(x, CSCDataset):
        return x.to_memory().tocsr()
    if _read_by_rows(x):
        if len(x.shape) != 2:
            raise ValueError(f"Expected a 2-d matrix, got shape {tuple(x.shape)}.")
        return RowBlocks(x)
    arr = np.asarray(x)
    if arr.ndim == 0 and arr.dtype == object:
        raise TypeError(
            f"Expected a matrix (numpy, scipy.sparse, dask, or an h5ad read with backed='r'), got "
            f"{type(x).__name__}; load it into memory first (e.g. adata.to_memory())."
        )
    if arr.ndim != 2:
        raise ValueError(f"Expected a 2-d matrix, got an array of shape {arr.shape}.")
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return sparse.csr_matrix(arr)


def _read_by_rows(x) -> bool:
    # dask and h5py are only looked up, never imported: x can only be one of theirs if they are loaded
    dask_array, h5py = sys.modules.get("dask.array"), sys.modules.get("h5py")
    return (
        isinstance(x, CSRDataset)
        or (dask_array is not None and isinstance(x, dask_array.Array))
        or (h5py is not None and isinstance(x, h5py.Dataset))
    )


def top_k_rows(csr: sparse.csr_matrix | RowBlocks, k: int, keep: np.ndarray | None = None):
    """Run the top-k kernel on a matrix from :func:`as_csr`; return ``(top, counts, n_bad)``.

    ``top`` is int32 ``(n_rows, k)`` padded with -1, ``counts`` the number of selected entries per row
    and ``n_bad`` the number of NaN, infinite or negative values per row (not raised here). A
    :class:`RowBlocks` matrix is ranked block by block.
    """
    n_rows, n_cols = csr.shape
    keep = np.ones(n_cols, dtype=np.bool_) if keep is None else np.ascontiguousarray(keep, dtype=np.bool_)
    if keep.shape != (n_cols,):
        raise ValueError(f"keep must have one entry per column ({n_cols}), got shape {keep.shape}.")
    if isinstance(csr, RowBlocks):
        parts = [top_k_rows(block, k, keep) for block in csr]
        if not parts:
            return top_k_rows(sparse.csr_matrix((0, n_cols)), k, keep)
        return tuple(np.concatenate(part) for part in zip(*parts, strict=True))
    top = np.empty((n_rows, k), dtype=np.int32)
    counts = np.empty(n_rows, dtype=np.int32)
    n_bad = np.empty(n_rows, dtype=np.int64)
    if n_rows:
        max_nnz = int(np.diff(csr.indptr).max())
        keep_bits = _pack_bits(keep)
        _top_k_csr(csr.data, csr.indices, csr.indptr, keep_bits, k, max_nnz, top, counts, n_bad)
        if (counts < 0).any():  # unsorted or duplicated columns: canonicalise a copy, once
            csr = csr.copy()
            csr.sum_duplicates()
            _top_k_csr(csr.data, csr.indices, csr.indptr, keep_bits, k, max_nnz, top, counts, n_bad)
    return top, counts, n_bad


def _pack_bits(mask: np.ndarray) -> np.ndarray:
    """Boolean mask -> uint64 words, bit ``c % 64`` of word ``c // 64`` for entry ``c``."""
    padded = np.zeros(-(-len(mask) // 64) * 64, dtype=np.uint64)
    padded[: len(mask)] = mask
    return (padded.reshape(-1, 64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def join_names(top: np.ndarray, counts: np.ndarray, names, sep: str = " ") -> np.ndarray:
    """For each row, join ``names[top[i, :counts[i]]]`` with ``sep`` (built in one byte buffer).

    Returns a 1-d object array of str (what a pandas string column of object dtype holds).
    """
    if len(top) == 0:
        return np.empty(0, dtype=object)
    names = [n if type(n) is str else str(n) for n in names]
    blob = "\n".join(names).encode("utf-8")
    buf = np.frombuffer(blob, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(ends) != len(names) - 1:
        raise ValueError("Gene names must not contain newlines.")
    # drop the newlines from the buffer: name g then spans name_off[g]:name_off[g + 1]
    name_buf = np.delete(buf, ends)
    name_off = np.empty(len(names) + 1, dtype=np.int64)
    name_off[0] = 0
    name_off[1:-1] = ends - np.arange(len(ends))
    name_off[-1] = len(name_buf)
    sep_b = sep.encode("utf-8")
    if len(sep_b) != 1:
        raise ValueError("sep must be a single byte.")
    lengths = np.empty(len(top), dtype=np.int64)
    _row_bytes(top, counts, name_off, lengths)
    row_off = np.zeros(len(top), dtype=np.int64)
    np.cumsum(lengths[:-1], out=row_off[1:])
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    _join_rows(top, counts, name_buf, name_off, np.uint8(sep_b[0]), row_off, out)
    # one decode and one split make the Python strings; an object array avoids pandas' list conversion
    strings = np.empty(len(top), dtype=object)
    strings[:] = str(memoryview(out[:-1]), "utf-8").split("\n")
    return strings
