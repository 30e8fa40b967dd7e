"""Benchmark lk.tl.retrieve: exact top-50 of 1,000 queries in a 1,000,000 x 768 bank.

Baseline (physical limit): the bare ``queries @ bank.T`` float32 product, measured in the same process.

Peak memory of the search itself: the bank and queries are first generated (in 100,000-row blocks) into
``.npy`` files by this process; a fresh Python process then loads them into memory and runs the
search and the baseline. In that process the generator's temporaries never existed, so its high-water
mark before the search is the loaded bank plus the libraries. The search's own peak is measured there
in two ways, before the bare product (whose 4 GB output would dominate) runs:

- ``ru_maxrss`` after the first search minus the current RSS just before it (exact, kernel-recorded);
- the current RSS sampled every 2 ms from a thread during the first search, minus the same base.

All memory is in binary units: MiB = 2**20 bytes, GiB = 2**30 bytes.

Run: flock /tmp/loki_bench.lock python benchmarks/bench_retrieval.py [--n-bank 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

GIB, MIB = 2**30, 2**20


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak of the current RSS while the block runs, sampled every 2 ms from a thread."""

    def __enter__(self):
        self.base = current_rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, current_rss_bytes())


def generate(args) -> None:
    """Write the queries and the bank (same values as generated in memory before) to ``.npy`` files."""
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.n_query, args.dim), dtype=np.float32)
    np.save(args.queries_file, queries)
    bank = np.lib.format.open_memmap(
        args.bank_file, mode="w+", dtype=np.float32, shape=(args.n_bank, args.dim)
    )
    for start in range(0, args.n_bank, 100_000):  # fill in blocks: no float64 temporary of the whole bank
        bank[start : start + 100_000] = rng.standard_normal(
            (min(100_000, args.n_bank - start), args.dim), dtype=np.float32
        )
    bank.flush()
    del bank


def search(args) -> None:
    """Load the files, run and time the search and the bare product, report (runs in a fresh process)."""
    from loki.tl._retrieve import topk_cosine

    queries = np.load(args.queries_file)
    bank = np.load(args.bank_file)  # read into memory, not memory-mapped
    assert not isinstance(bank, np.memmap)
    topk_cosine(queries[:4], bank[:5000], args.k)  # numba compile / cache load

    ours, bare = [], []
    base = maxrss_before = peak_sampled = maxrss_after = None
    for _ in range(args.repeats):
        if base is None:
            maxrss_before = maxrss_bytes()
            with PeakRSS() as mem:
                t = time.perf_counter()
                _, scores = topk_cosine(queries, bank, args.k)
                ours.append(time.perf_counter() - t)
            maxrss_after = maxrss_bytes()
            base, peak_sampled = mem.base, mem.peak
        else:
            t = time.perf_counter()
            _, scores = topk_cosine(queries, bank, args.k)
            ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        full = queries @ bank.T
        bare.append(time.perf_counter() - t)
        del full

    # exactness check on 20 queries against a brute-force top-k
    qn = queries[:20] / np.linalg.norm(queries[:20], axis=1, keepdims=True)
    s = (qn @ bank.T) / np.linalg.norm(bank, axis=1)
    ref = np.sort(s, axis=1)[:, ::-1][:, : args.k]
    exact = bool(np.allclose(ref, scores[:20], atol=1e-5))

    flops = 2 * args.n_query * args.n_bank * args.dim
    out_bytes = args.n_query * args.n_bank * 4
    t_ours, t_bare = min(ours), min(bare)
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    print(
        f"### Retrieval: exact top-{args.k}, {args.n_query:,} queries x {args.n_bank:,} x {args.dim} bank\n"
    )
    print(f"{date}; 2 cores, 24 GiB, shared with other engineers' processes at the time.\n")
    print("| what | time (s) | GFLOP/s | ratio to bare product |")
    print("|---|---|---|---|")
    print(
        f"| bare `queries @ bank.T` ({out_bytes / GIB:.2f} GiB output) | {t_bare:.2f} | "
        f"{flops / t_bare / 1e9:.0f} | 1.00 |"
    )
    print(
        f"| `lk.tl.retrieve` kernel (`topk_cosine`, chunked) | {t_ours:.2f} | {flops / t_ours / 1e9:.0f} | {t_ours / t_bare:.2f} |"
    )
    print(f"\nAll runs (s): retrieve {[round(x, 2) for x in ours]}, bare {[round(x, 2) for x in bare]}.")
    print(
        "\nMemory (MiB = 2^20 bytes, GiB = 2^30 bytes), measured in a fresh process that loaded the bank from a "
        ".npy file (the bank was generated by another process, so no generator temporary is counted), "
        "during the first search, before any bare product:\n"
    )
    print(f"- Bank: {bank.nbytes / GIB:.2f} GiB; queries {queries.nbytes / MIB:.1f} MiB.")
    print(
        f"- RSS just before the search (bank, queries, libraries): {base / GIB:.2f} GiB "
        f"(process high-water mark then {maxrss_before / GIB:.2f} GiB)."
    )
    print(
        f"- Search's own peak above that, from ru_maxrss after the search minus the RSS before: "
        f"{(maxrss_after - base) / MIB:,.0f} MiB; from the current RSS sampled every 2 ms in a thread: "
        f"{(peak_sampled - base) / MIB:,.0f} MiB."
        + (
            ""
            if maxrss_after > maxrss_before
            else " (ru_maxrss did not rise during the search, so its figure is only an upper bound.)"
        )
    )
    print(
        f"- Peak RSS of the process during retrieval: {maxrss_after / GIB:.2f} GiB (ru_maxrss), "
        f"{peak_sampled / GIB:.2f} GiB (sampled); target < 4 GB = {4e9 / GIB:.2f} GiB. "
        f"Top-{args.k} matches brute force: {exact}."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-query", type=int, default=1000)
    parser.add_argument("--n-bank", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--bank-file", default="/tmp/loki_bench_retrieval_bank.npy", help="scratch .npy bank (removed)"
    )
    parser.add_argument("--queries-file", default="/tmp/loki_bench_retrieval_queries.npy")
    parser.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)  # the fresh process
    args = parser.parse_args()

    if args.search_only:
        search(args)
        return
    try:
        generate(args)
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--search-only"]
        subprocess.run(cmd, check=True)
    finally:
        for f in (args.bank_file, args.queries_file):
            Path(f).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
