"""Block loops with an optional progress bar."""

from __future__ import annotations


def block_starts(n: int, size: int, *, progress: bool = False, desc: str = "", unit: str = "block"):
    """Start offsets ``0, size, 2 size, ...`` below ``n``, in a tqdm bar when ``progress`` is true."""
    starts = range(0, n, int(size))
    if not progress:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, desc=desc, unit=unit)
