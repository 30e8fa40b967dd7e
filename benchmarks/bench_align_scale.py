"""Loki Align scaling benchmark: numba CPD vs the published dense recipe.

Usage (one size per process so peak memory is per size)::

    flock /tmp/loki_bench.lock python benchmarks/bench_align_scale.py --n 4000 --baseline
    flock /tmp/loki_bench.lock python benchmarks/bench_align_scale.py --n 50000
    flock /tmp/loki_bench.lock python benchmarks/bench_align_scale.py --n 500000

Each run prints one markdown table row and appends it to ``benchmarks/results_align_scale.md``.
The source is a synthetic section moved by a known rotation (35 deg), translation, smooth warp
(0.5 spot spacings) with 10% of spots dropped and counts thinned to 0.7; the embedding is the
log expression of the section's genes (PCA fitted on the target inside ``lk.tl.align``).

The baseline re-implements the published recipe (Loki's ``align_tissue`` on pycpd's low-rank
``DeformableRegistration``): coordinates and PCs min-max normalised to [0, 1], dense M x N posterior
and M x N x D difference arrays, full ``eigh`` of the M x M kernel, top 100 eigenvectors, then a
rotation + translation fitted to the result (det +1). Both run the same iteration cap.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import loki as lk

HERE = Path(__file__).resolve().parent


def make_pair(n: int, seed: int = 0, n_genes: int = 30):
    tgt = lk.datasets.synthetic_tissue(n_spots=n, n_genes=n_genes, n_cell_types=6, seed=seed, depth=500.0)
    src, truth = lk.datasets.transform_section(
        tgt,
        rotation_deg=35.0,
        translation=(7.0, -4.0),
        warp=0.5,
        drop_fraction=0.1,
        thin_counts=0.7,
        seed=seed + 1,
    )
    for a in (tgt, src):
        x = a.X.tocsr().astype(np.float32)
        lib = np.asarray(x.sum(axis=1)).ravel()
        lib[lib == 0] = 1
        x = sp.diags((np.median(lib) / lib).astype(np.float32)) @ x
        x.data = np.log1p(x.data)
        a.obsm["X_expr"] = x.toarray()
    return src, tgt, truth


# ---------------------------------------------------------------- published dense recipe (baseline)
def _dense_deformable(X, Y, alpha=0.5, beta=2.0, w=0.0, max_iter=100, tol=1e-9, num_eig=100):
    M, D = Y.shape
    N = X.shape[0]
    sigma2 = ((X[None, :, :] - Y[:, None, :]) ** 2).sum() / (D * M * N)
    G = np.exp(-(((Y[None, :, :] - Y[:, None, :]) ** 2).sum(axis=2)) / (2 * beta**2))
    S, Q = np.linalg.eigh(G)
    idx = np.argsort(np.abs(S))[::-1][:num_eig]
    Q, S = Q[:, idx], S[idx]
    inv_S = np.diag(1.0 / S)
    S = np.diag(S)
    TY = Y.copy()
    W = np.zeros((M, D))
    q = np.inf
    for _ in range(max_iter):
        P = ((X[None, :, :] - TY[:, None, :]) ** 2).sum(axis=2)
        P = np.exp(-P / (2 * sigma2))
        c = (2 * np.pi * sigma2) ** (D / 2) * w / (1 - w) * M / N
        den = P.sum(axis=0, keepdims=True) + c
        den[den == 0] = np.finfo(float).eps
        P = P / den
        Pt1, P1 = P.sum(axis=0), P.sum(axis=1)
        Np = P1.sum()
        PX = P @ X
        dP = np.diag(P1)
        dPQ = dP @ Q
        F = PX - dP @ Y
        W = (F - dPQ @ np.linalg.solve(alpha * sigma2 * inv_S + Q.T @ dPQ, Q.T @ F)) / (alpha * sigma2)
        W[:, 2:] = 0  # as the published code: only the coordinates move, the embedding PCs stay put
        TY = Y + Q @ (S @ (Q.T @ W))
        xPx = Pt1 @ (X**2).sum(axis=1)
        yPy = P1 @ (TY**2).sum(axis=1)
        trPXY = (TY * PX).sum()
        sigma2 = max((xPx - 2 * trPXY + yPy) / (Np * D), 1e-10)
        q_new = sigma2
        if abs(q - q_new) < tol:
            break
        q = q_new
    return TY


def _pca_fit_target(ft, fs, k=3):
    mu = ft.mean(axis=0)
    _, _, vt = np.linalg.svd(ft - mu, full_matrices=False)
    return (ft - mu) @ vt[:k].T, (fs - mu) @ vt[:k].T


def published_recipe(xy_t, xy_s, emb_t, emb_s, max_iter):
    pt, ps = _pca_fit_target(emb_t, emb_s)
    comb = np.vstack([pt, ps])
    t_z = (xy_t - xy_t.min()) / (xy_t.max() - xy_t.min())
    s_z = (xy_s - xy_s.min()) / (xy_s.max() - xy_s.min())
    comb = (comb - comb.min()) / (comb.max() - comb.min())
    X = np.hstack([t_z, comb[: len(xy_t), :2]])
    Y = np.hstack([s_z, comb[len(xy_t) :, :2]])
    TY = _dense_deformable(X, Y, max_iter=max_iter)
    cpd = TY[:, :2] * (xy_t.max() - xy_t.min()) + xy_t.min()
    from loki._utils._affine import apply_matrix
    from loki.tl._cpd import fit_linear

    h = fit_linear(xy_s, cpd, kind="rigid")
    return cpd, apply_matrix(xy_s, h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--refine", choices=["yes", "no"], default="yes")
    ap.add_argument("--max-points", type=int, default=50_000)
    ap.add_argument("--method", default="deformable")
    args = ap.parse_args()
    src, tgt, truth = make_pair(args.n)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    refine = args.refine == "yes"
    # warm the numba cache / JIT outside the timing
    s0, t0, _ = make_pair(300, seed=5)
    lk.tl.align(s0, target=t0, use="X_expr", method=args.method, max_iter=5)
    t = time.perf_counter()
    lk.tl.align(
        src,
        target=tgt,
        use="X_expr",
        method=args.method,
        max_iter=args.max_iter,
        refine=refine,
        max_points=args.max_points,
    )
    ours_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = src.uns["loki"]["spatial_aligned"]
    err = lk.metrics.alignment_error(src.obsm["spatial_aligned"], truth.coords, truth.spot_spacing)
    err_rigid = lk.metrics.alignment_error(
        lk.tl._cpd.apply_matrix(np.asarray(src.obsm["spatial"]), info["matrix"]),
        truth.coords,
        truth.spot_spacing,
    )
    row = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "n_per_side": args.n,
        "method": args.method,
        "approximate": info["approximate"],
        "refine": refine,
        "max_points": args.max_points,
        "ours_s": round(ours_s, 1),
        "ours_peak_MB": round(peak, 0),
        "before_align_MB": round(base_rss, 0),
        "ours_err_spacing": round(err, 4),
        "ours_rigid_part_err": round(err_rigid, 4),
        "mirror": info["mirror"],
        "stages": "; ".join(
            f"{row.stage} level {row.level:g}: {row.n_points:g} points, {row.n_iter:g} iterations"
            for row in info["stages"].dropna(subset=["n_iter"]).itertuples()
        ),
    }
    if args.baseline:
        t = time.perf_counter()
        cpd, homo = published_recipe(
            np.asarray(tgt.obsm["spatial"]),
            np.asarray(src.obsm["spatial"]),
            tgt.obsm["X_expr"],
            src.obsm["X_expr"],
            args.max_iter,
        )
        base_s = time.perf_counter() - t
        row["baseline_s"] = round(base_s, 1)
        row["baseline_peak_MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
        row["baseline_err_cpd"] = round(lk.metrics.alignment_error(cpd, truth.coords, truth.spot_spacing), 4)
        row["baseline_err_homography"] = round(
            lk.metrics.alignment_error(homo, truth.coords, truth.spot_spacing), 4
        )
        row["speedup"] = round(base_s / ours_s, 1)
    line = " | ".join(f"{k}={v}" for k, v in row.items())
    print(line)
    with open(HERE / "results_align_scale.md", "a") as fh:
        fh.write(f"- {platform.node()} {line}\n")


if __name__ == "__main__":
    main()
