"""Numba kernels: per-row top-k over CSR matrices, and joining gene names into sentences.

Order is "higher value first, lower column first among equal values", a total order, which is what
``pandas.Series.nlargest(n, keep="first")`` returns when ``n`` is below the row length. Rows of
integer values (raw counts) are ranked by counting: one scan histograms the values at or above a
floor that rises as soon as ``k`` entries reach the next step (so most 1s and 2s cost one
comparison), the histogram gives the k-th value, and a short second pass over the counted entries
writes each selected one straight to its rank, in column order within a value. Other rows (normalised
values) keep a bounded heap of their ``k`` best entries (about twice slower). Both need the
columns of a row strictly increasing (canonical CSR); the kernel checks each row and
:func:`top_k_rows` sorts a copy when one is not. Nothing is densified.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import sparse

# Rows per parallel task: large enough to amortise the heap allocation, small enough to balance threads.
_ROWS_PER_TASK = 256
# Integer values below this are ranked by counting (raw counts); others fall back to a heap.
_CAP = 4096


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


@numba.njit(cache=True)
def _heap_row(data, indices, lo, hi, keep, k, hv, hc, out_row):  # pragma: no cover - numba
    """Any non-negative values; needs the row's columns sorted. Returns (n selected, n bad values)."""
    size = 0
    bad = 0
    thr = 0.0  # once the heap is full, only values above its worst one can enter
    for p in range(lo, hi):
        v = np.float64(data[p])
        if v > thr:
            if v == np.inf:
                bad += 1
                continue
            c = np.int64(indices[p])
            if not keep[c]:
                continue
            if size < k:
                j = size
                hv[j] = v
                hc[j] = c
                size += 1
                while j > 0:
                    parent = (j - 1) // 2
                    if not _worse(hv[j], hc[j], hv[parent], hc[parent]):
                        break
                    hv[j], hv[parent] = hv[parent], hv[j]
                    hc[j], hc[parent] = hc[parent], hc[j]
                    j = parent
                if size == k:
                    thr = hv[0]
            else:
                # sorted columns: an equal value arriving later ranks after every entry held
                hv[0] = v
                hc[0] = c
                _sift_down(hv, hc, 0, size)
                thr = hv[0]
        elif not (v >= 0.0):  # negative or NaN
            bad += 1
    # heapsort: the worst goes to the end each round, leaving the best first
    m = size
    while m > 1:
        m -= 1
        hv[0], hv[m] = hv[m], hv[0]
        hc[0], hc[m] = hc[m], hc[0]
        _sift_down(hv, hc, 0, m)
    for j in range(size):
        out_row[j] = hc[j]
    return size, bad


@numba.njit(cache=True)
def _count_row(
    data, indices, lo, hi, keep, k, low, hist, off, cand, tmpv, out_row
):  # pragma: no cover - numba
    """Integer values (raw counts): histogram, threshold, then counting placement; no heap.

    Only values at or above a floor ``low`` are counted; the floor rises (by steps of a quarter)
    whenever ``k`` counted entries reach the next step, since the k-th value can no longer lie below
    it. The floor soon sits just under the k-th value, so most entries are skipped after one
    well-predicted comparison, and the placement pass visits only the entries counted (``cand``).
    The first floor ``low`` may be a guess (from the previous row); when fewer than ``k`` entries
    reach it, the row must be redone from 1.

    Returns (n selected, n bad values, k-th value): n selected is -1 when the row needs the heap (a
    non-integer value, or the k-th value among those >= the overflow bin) and -2 when it must be
    redone with ``low=1``. ``hist`` is all zeros on entry and on exit.
    """
    cap = hist.shape[0] - 1
    bad = 0
    n_cand = 0
    vtop = 0
    low0 = low
    low_f = np.float64(low)
    nxt = low + max(1, low >> 2)  # next floor; n_next counts entries >= nxt
    n_next = 0
    status = 0
    for p in range(lo, hi):
        v = np.float64(data[p])
        if v >= low_f:
            c = indices[p]
            if not keep[c]:
                continue
            if v >= cap:
                if v == np.inf:
                    bad += 1
                b = cap
            else:
                b = np.int64(v)
                if b != v:
                    status = -1
                    break
            hist[b] += 1
            if b > vtop:
                vtop = b
            cand[n_cand] = p
            n_cand += 1
            if b >= nxt:
                n_next += 1
                while n_next >= k and nxt < cap:
                    # k entries at or above nxt: the k-th value is there; raise the floor
                    low = nxt
                    low_f = np.float64(low)
                    nxt = min(cap, low + max(1, low >> 2))
                    for bb in range(low, nxt):
                        n_next -= hist[bb]
        elif not (v >= 0.0):  # negative or NaN
            bad += 1
        elif v > 0.0 and low == 1:  # a fraction below 1 might be among the top k
            status = -1
            break
    # threshold bin t: fewer than k entries lie above it, at least k at or above (else take all)
    t = 1
    cum = 0
    if status == 0:
        for b in range(vtop, 0, -1):
            off[b] = cum
            cum += hist[b]
            if cum >= k:
                t = b
                break
    for b in range(vtop + 1):
        hist[b] = 0
    if status < 0 or t == cap:
        return -1, 0, 0
    if cum < k and low0 > 1:
        return -2, 0, 0
    size = 0
    for j in range(n_cand):
        p = cand[j]
        v = np.float64(data[p])
        if v >= t and v != np.inf:
            b = cap if v >= cap else np.int64(v)
            q = off[b]
            if q < k:
                out_row[q] = indices[p]
                tmpv[q] = v
                off[b] = q + 1
                size += 1
    if vtop == cap:  # the overflow bin holds several values: stable insertion sort of its entries
        n_over = 0
        while n_over < size and tmpv[n_over] >= cap:
            n_over += 1
        for a in range(1, n_over):
            va = tmpv[a]
            ca = out_row[a]
            j = a - 1
            while j >= 0 and tmpv[j] < va:
                tmpv[j + 1] = tmpv[j]
                out_row[j + 1] = out_row[j]
                j -= 1
            tmpv[j + 1] = va
            out_row[j + 1] = ca
    return size, bad, t


@numba.njit(cache=True)
def _top_k_range(data, indices, indptr, keep, k, max_nnz, r0, r1, out, counts, n_bad):  # pragma: no cover
    """Rows ``r0:r1``; a row with unsorted or repeated columns gets ``counts = -1`` and is skipped."""
    hv = np.empty(k, np.float64)
    hc = np.empty(k, np.int64)
    hist = np.zeros(_CAP + 1, np.int64)
    off = np.empty(_CAP + 1, np.int64)
    cand = np.empty(max_nnz, np.int64)
    guess = 1  # neighbouring rows have similar depth: start the floor below the last k-th value
    for i in range(r0, r1):
        lo = indptr[i]
        hi = indptr[i + 1]
        n_unsorted = 0
        for p in range(lo + 1, hi):
            n_unsorted += indices[p] <= indices[p - 1]
        if n_unsorted:
            counts[i] = -1
            continue
        size, bad, t = _count_row(data, indices, lo, hi, keep, k, guess, hist, off, cand, hv, out[i])
        if size == -2:
            size, bad, t = _count_row(data, indices, lo, hi, keep, k, 1, hist, off, cand, hv, out[i])
        if size >= 0:
            guess = max(1, (3 * t) // 4)
        else:
            size, bad = _heap_row(data, indices, lo, hi, keep, k, hv, hc, out[i])
        for j in range(size, k):
            out[i, j] = -1
        counts[i] = size
        n_bad[i] = bad


@numba.njit(cache=True, parallel=True)
def _top_k_parallel(data, indices, indptr, keep, k, max_nnz, out, counts, n_bad):  # pragma: no cover
    n_rows = indptr.shape[0] - 1
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        r0 = task * _ROWS_PER_TASK
        _top_k_range(
            data, indices, indptr, keep, k, max_nnz, r0, min(n_rows, r0 + _ROWS_PER_TASK), out, counts, n_bad
        )


# Small inputs run serially: starting threads costs more than the work (milliseconds on a busy machine).
_PARALLEL_MIN_NNZ = 1_000_000


def _top_k_csr(data, indices, indptr, keep, k, max_nnz, out, counts, n_bad):
    if len(data) >= _PARALLEL_MIN_NNZ:
        _top_k_parallel(data, indices, indptr, keep, k, max_nnz, out, counts, n_bad)
    else:
        _top_k_range(data, indices, indptr, keep, k, max_nnz, 0, len(indptr) - 1, out, counts, n_bad)


@numba.njit(cache=True)
def _join_range(top, counts, name_buf, name_off, sep, row_off, out, r0, r1):  # pragma: no cover - numba
    for i in range(r0, r1):
        pos = row_off[i]
        for j in range(counts[i]):
            g = top[i, j]
            if j > 0:
                out[pos] = sep
                pos += 1
            for b in range(name_off[g], name_off[g + 1]):
                out[pos] = name_buf[b]
                pos += 1
        out[pos] = 10  # "\n" ends every row


@numba.njit(cache=True, parallel=True)
def _join_parallel(top, counts, name_buf, name_off, sep, row_off, out):  # pragma: no cover - numba
    n_rows = top.shape[0]
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        r0 = task * _ROWS_PER_TASK
        _join_range(top, counts, name_buf, name_off, sep, row_off, out, r0, min(n_rows, r0 + _ROWS_PER_TASK))


# Joining is a memory copy: below this many rows, thread start-up costs more than it saves.
_PARALLEL_MIN_ROWS = 20_000


def _join_rows(top, counts, name_buf, name_off, sep, row_off, out):
    if len(top) >= _PARALLEL_MIN_ROWS:
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


def as_csr(x) -> sparse.csr_matrix:
    """``x`` as a CSR matrix (no copy when it already is one)."""
    if sparse.issparse(x):
        csr = x.tocsr()
    else:
        arr = np.asarray(x)
        if arr.ndim != 2:
            raise ValueError(f"Expected a 2-d matrix, got an array of shape {arr.shape}.")
        csr = sparse.csr_matrix(arr)
    return csr


def top_k_rows(csr: sparse.csr_matrix, k: int, keep: np.ndarray | None = None):
    """Run the top-k kernel on a CSR matrix from :func:`as_csr`; return ``(top, counts, n_bad)``.

    ``top`` is int32 ``(n_rows, k)`` padded with -1, ``counts`` the number of selected entries per row
    and ``n_bad`` the number of NaN, infinite or negative values per row (not raised here).
    """
    n_rows, n_cols = csr.shape
    keep = np.ones(n_cols, dtype=np.bool_) if keep is None else np.ascontiguousarray(keep, dtype=np.bool_)
    if keep.shape != (n_cols,):
        raise ValueError(f"keep must have one entry per column ({n_cols}), got shape {keep.shape}.")
    top = np.empty((n_rows, k), dtype=np.int32)
    counts = np.empty(n_rows, dtype=np.int32)
    n_bad = np.empty(n_rows, dtype=np.int64)
    if n_rows:
        max_nnz = int(np.diff(csr.indptr).max())
        _top_k_csr(csr.data, csr.indices, csr.indptr, keep, k, max_nnz, top, counts, n_bad)
        if (counts < 0).any():  # unsorted or duplicated columns: canonicalise a copy, once
            csr = csr.copy()
            csr.sum_duplicates()
            _top_k_csr(csr.data, csr.indices, csr.indptr, keep, k, max_nnz, top, counts, n_bad)
    return top, counts, n_bad


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
    strings[:] = out[:-1].tobytes().decode("utf-8").split("\n")
    return strings
