"""Keep torch's CPU thread count across parallel numba kernels."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after parallel numba work.

    numba's ``omp`` threading layer sets OpenMP's maximum thread count of the calling thread to
    ``NUMBA_NUM_THREADS`` (the number of cores) when it starts its threads, and torch reads its
    intra-op thread count from that value. Without this guard, the first parallel kernel would
    override ``OMP_NUM_THREADS`` or :func:`torch.set_num_threads` for the rest of the process, and
    later seeded torch computations would depend on whether a loki call came first. numba's own
    thread count is left alone.

    torch is only looked up in :data:`sys.modules`, never imported: when it is not loaded there is
    nothing to restore. Usable as a ``with`` block or as a decorator (``@keep_torch_threads()``).

    Yields
    ------
    Nothing; on exit, torch's thread count is set back to its value on entry if it changed.

    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    saved = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)
