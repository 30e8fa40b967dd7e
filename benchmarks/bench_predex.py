"""Benchmark PredEx (eq. 16): 10,000 queries x 50,000 reference spots x 2,000 genes, 768-d embeddings.

Baseline (physical limit): its two float32 matrix products with all reference spots,
``S = Q @ R.T`` then ``S @ X``, measured in the same process. Also top-k = 50 (target < 2 s), with
exact search and with the approximate ``search="pca"`` (PCA candidates + exact re-rank) and
``search="ivf"`` (PCA + k-means cells, each query scans its best cells only), whose recall of the exact
top-50 is measured on the first ``--n-recall`` queries.

Two kinds of synthetic embeddings:

- isotropic: standard Gaussian rows (no low-rank structure; the worst case for a reduced-dimension
  candidate search);
- structured: Gaussian rows whose covariance spectrum follows the power law ``eig_i ~ i^-alpha``
  fitted on real loki-tiny embeddings (``spectrum.json`` written by ``eval_predex_search.py``;
  reference: MOB1-3 text embeddings, queries: MOB4 image embeddings), in a random orthonormal basis.

Run: flock /tmp/loki_bench.lock python benchmarks/bench_predex.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

# approximate searches: (search, n_components, n_candidates, n_lists, n_probe); None = default
APPROX = [
    ("pca", 64, 200, None, None),
    ("pca", 32, 100, None, None),
    ("ivf", 64, 200, None, None),
    ("ivf", 32, 100, None, None),
    ("ivf", 32, 100, None, 14),
]


def structured(n: int, dim: int, alpha: float, basis: np.ndarray, rng) -> np.ndarray:
    sd = np.arange(1, dim + 1, dtype=np.float64) ** (-alpha / 2)
    x = (rng.standard_normal((n, dim), dtype=np.float32) * sd.astype(np.float32)) @ basis
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-query", type=int, default=10_000)
    parser.add_argument("--n-ref", type=int, default=50_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-recall", type=int, default=1_000)
    parser.add_argument("--spectrum", type=Path, default=Path("benchmarks/_out/predex_search/spectrum.json"))
    parser.add_argument("--skip-full", action="store_true", help="skip the all-reference runs")
    args = parser.parse_args()

    from loki.tl._candidates import topk_cosine_pca
    from loki.tl._predict import predict_from_embeddings
    from loki.tl._retrieve import topk_cosine

    rng = np.random.default_rng(0)
    q = rng.standard_normal((args.n_query, args.dim), dtype=np.float32)
    r = rng.standard_normal((args.n_ref, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    x = rng.random((args.n_ref, args.n_genes), dtype=np.float32)
    data = {"isotropic": (q, r)}
    spec_note = "structured embeddings skipped: no spectrum file (run eval_predex_search.py first)."
    if args.spectrum.exists():
        fits = json.loads(args.spectrum.read_text())["power_law_1_64"]
        a_ref, a_q = fits["MOB1-3 text"]["alpha"], fits["MOB4 image"]["alpha"]
        basis = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))[0].astype(np.float32)
        data["structured"] = (
            structured(args.n_query, args.dim, a_q, basis, rng),
            structured(args.n_ref, args.dim, a_ref, basis, rng),
        )
        share = {
            name: np.cumsum(np.arange(1, args.dim + 1) ** -a)[[15, 31, 63]]
            / np.sum(np.arange(1, args.dim + 1) ** -a)
            for name, a in (("reference", a_ref), ("queries", a_q))
        }
        spec_note = (
            f"structured: eigenvalue decay i^-alpha from {args.spectrum} (alpha {a_ref:.2f} reference = MOB1-3 "
            f"loki-tiny text embeddings, {a_q:.2f} queries = MOB4 image embeddings; fitted on ranks 1-64 of the "
            f"128-d real spectrum, extended to {args.dim} ranks); share of variance in the top 16 / 32 / 64 axes: "
            f"reference {np.round(share['reference'], 3).tolist()}, queries {np.round(share['queries'], 3).tolist()}."
        )
    predict_from_embeddings(q[:8], r[:500], x[:500], top_k=5)  # numba compile / cache load
    predict_from_embeddings(q[:8], r[:500], x[:500], top_k=5, search="pca", n_components=16)
    predict_from_embeddings(q[:8], r[:500], x[:500], top_k=5, search="ivf", n_components=16)

    def opts(search, n_comp, n_cand, n_lists, n_probe):
        out = {"n_components": n_comp, "n_candidates": n_cand}
        if search == "ivf":
            n_lists = n_lists or round(np.sqrt(args.n_ref))
            out |= {"n_lists": n_lists, "n_probe": n_probe or int(np.ceil(n_lists / 8))}
        return out

    def label(setting):
        return f'`search="{setting[0]}"`, ' + ", ".join(f"{k}={v}" for k, v in opts(*setting).items())

    times: dict[str, list[float]] = {}

    def timed(label, fn):
        t = time.perf_counter()
        out = fn()
        times.setdefault(label, []).append(time.perf_counter() - t)
        return out

    bare_s = []
    for _ in range(args.repeats):
        if not args.skip_full:
            timed("full", lambda: predict_from_embeddings(q, r, x))
            t = time.perf_counter()
            s = q @ r.T
            t1 = time.perf_counter()
            _ = s @ x
            times.setdefault("bare", []).append(time.perf_counter() - t)
            bare_s.append(t1 - t)
            del s, _
        for name, (qq, rr) in data.items():
            timed(f"exact {name}", lambda qq=qq, rr=rr: predict_from_embeddings(qq, rr, x, top_k=50))
            for setting in APPROX:
                timed(
                    f"{label(setting)} {name}",
                    lambda qq=qq, rr=rr, setting=setting: predict_from_embeddings(
                        qq, rr, x, top_k=50, search=setting[0], **opts(*setting)
                    ),
                )
    search_t, recalls = {}, {}
    for name, (qq, rr) in data.items():
        exact_idx, _ = topk_cosine(qq[: args.n_recall], rr, 50)
        for setting in APPROX:
            t = time.perf_counter()
            topk_cosine_pca(qq, rr, 50, **opts(*setting))
            search_t[(name, setting)] = time.perf_counter() - t
            idx, _ = topk_cosine_pca(qq[: args.n_recall], rr, 50, **opts(*setting))
            recalls[(name, setting)] = recall(idx, exact_idx)

    best = {k: min(v) for k, v in times.items()}
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    print(
        f"### PredEx: {args.n_query:,} queries x {args.n_ref:,} reference spots x {args.n_genes:,} genes ({args.dim}-d)\n"
    )
    print(
        f"{date}; 2 cores, 24 GiB, shared with other engineers' processes at the time (min of {args.repeats}).\n"
    )
    base = best.get("bare")
    print("| what | embeddings | time (s) | ratio to the two bare products | recall of exact top-50 |")
    print("|---|---|---|---|---|")

    def ratio(t):
        return f"{t / base:.2f}" if base else "-"

    if base:
        print(
            f"| bare `S = Q @ R.T` + `S @ X` | isotropic | {base:.2f} (of which `Q @ R.T` {min(bare_s):.2f}) | 1.00 | - |"
        )
        print(
            f"| all reference spots (eq. 16, clip) | isotropic | {best['full']:.2f} | {ratio(best['full'])} | - |"
        )
    for name in data:
        t = best[f"exact {name}"]
        print(f'| top_k = 50, `search="exact"` | {name} | {t:.2f} | {ratio(t)} | 1 |')
        for setting in APPROX:
            t = best[f"{label(setting)} {name}"]
            print(
                f"| top_k = 50, {label(setting)} | {name} | {t:.2f} (search alone {search_t[(name, setting)]:.2f}) "
                f"| {ratio(t)} | {recalls[(name, setting)]:.3f} |"
            )
    print(f"\nAll runs (s): { {k: [round(v, 2) for v in vs] for k, vs in times.items()} }.")
    print(
        f"Recall: share of the exact top-50 rows found, mean over the first {args.n_recall} queries. {spec_note}"
    )


if __name__ == "__main__":
    main()
