"""Peak resident memory of a block of code, sampled from a thread (native allocations included)."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """Peak resident set size while the ``with`` block runs, sampled every ``interval`` seconds.

    ``base`` is the RSS at entry, ``peak`` the highest sample (the exit included), ``mib`` the rise
    in MiB. Unlike tracemalloc it sees native allocations (BLAS, torch, numba).
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    def __enter__(self):
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20
