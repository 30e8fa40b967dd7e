"""Speed of lk.tl.decompose's mapping: 10,000 spots x 30 cell types x 768-d embeddings.

Target: < 30 s on 2 CPU cores for the default 1000 epochs (clusters mode, uniform prior).
Baselines measured in the same run, per epoch: the same objective written the direct way
(G_pred = M^T S materialised, autograd; what tangram-sc's Mapper does), and tangram-sc 1.0.4's
Mapper itself when importable. Also NNLS on the same inputs.

CPU:  flock /tmp/loki_bench.lock python benchmarks/bench_decompose.py
GPU:  python benchmarks/bench_decompose.py --device cuda --baseline-epochs 200
      (runs without the scverse stack, as on the GPU machines' image)
Writes benchmarks/_out/bench_decompose.md (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report
from _without_scverse import import_loki_module

_mapping = import_loki_module("loki.tl._mapping")
_cosine, fit_mapping, resolve_device = _mapping._cosine, _mapping.fit_mapping, _mapping.resolve_device
nnls_weights = import_loki_module("loki.tl._nnls").nnls_weights


def make_inputs(n_spots: int, n_types: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    types = rng.normal(size=(n_types, dim))
    types /= np.linalg.norm(types, axis=1, keepdims=True)
    props = rng.dirichlet(np.full(n_types, 0.3), size=n_spots)
    spots = props @ types + 0.02 * rng.normal(size=(n_spots, dim))
    spots /= np.linalg.norm(spots, axis=1, keepdims=True)
    sizes = rng.integers(50, 500, size=n_types)
    return (types * sizes[:, None]).astype(np.float32), spots.astype(np.float32), sizes / sizes.sum(), props


def direct_epochs(source, target, density, epochs: int, device) -> float:
    """Seconds per epoch of the same loss written directly (G_pred materialised, autograd)."""
    S = torch.from_numpy(source).to(device)
    G = torch.from_numpy(target).to(device)
    d_source = torch.as_tensor(density, dtype=torch.float32, device=device)
    d = torch.full((G.shape[0],), 1.0 / G.shape[0], device=device)
    logits = torch.randn(S.shape[0], G.shape[0], generator=torch.Generator().manual_seed(0)).to(device)
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    kl = torch.nn.KLDivLoss(reduction="sum")
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        opt.zero_grad()
        M = torch.softmax(logits, dim=1)
        loss = -_cosine(M.T @ S, G, dim=0).mean() + kl(torch.log(d_source @ M), d)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / epochs


def bare_products(source, target, reps: int, device) -> tuple[float, float]:
    """Seconds for the two spots x features products one epoch cannot avoid, and their GFLOP/s."""
    M = torch.rand(source.shape[0], target.shape[0], generator=torch.Generator().manual_seed(0)).to(device)
    S = torch.from_numpy(source).to(device)
    G = torch.from_numpy(target).to(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        A = M @ G
        M = (S * A.mean(0)) @ G.T
    _sync(device)
    per = (time.perf_counter() - t0) / reps
    return per, 4 * source.shape[0] * target.shape[0] * target.shape[1] / per / 1e9


def tangram_epochs(source, target, density, epochs: int, device) -> float | None:
    try:
        from tangram.mapping_optimizer import Mapper
    except ImportError:
        return None
    d = np.full(target.shape[0], 1.0 / target.shape[0])
    mapper = Mapper(
        S=source, G=target, d=d, d_source=density, lambda_d=1.0, device=str(device), random_state=0
    )
    t0 = time.perf_counter()
    mapper.train(num_epochs=epochs, learning_rate=0.1, print_each=None)
    return (time.perf_counter() - t0) / epochs


def device_agreement(device, n_spots: int = 2000, epochs: int = 300) -> str:
    """Largest differences between mappings fitted on ``device`` (CUDA graph and eager) and on the CPU.

    Run twice: with the default terms, and with every term of the objective on (per-spot cosine,
    entropy, a non-uniform target density), so that each branch captured in the CUDA graph is checked.
    """
    source, target, density, _ = make_inputs(n_spots, 30, 768, seed=1)
    spot_density = np.random.default_rng(2).dirichlet(np.ones(n_spots))
    lines = []
    for name, terms in (
        ("default terms", {}),
        ("every term on", {"lambda_g2": 1.0, "lambda_r": 0.01, "target_density": spot_density}),
    ):
        fits = {
            label: fit_mapping(
                source,
                target,
                source_density=density,
                epochs=epochs,
                device=dev,
                seed=0,
                cuda_graph=graph,
                **terms,
            )
            for label, dev, graph in (("graph", device, True), ("eager", device, False), ("cpu", "cpu", True))
        }
        graph_eager = np.abs(fits["graph"].mapping - fits["eager"].mapping).max()
        graph_cpu = np.abs(fits["graph"].mapping - fits["cpu"].mapping).max()
        lines.append(
            f"{name}: {device.type} graph vs eager max |mapping difference| {graph_eager:.2e}, vs CPU {graph_cpu:.2e} "
            f"(largest entry {fits['cpu'].mapping.max():.3f}); final loss {fits['graph'].loss[-1]:.6f} vs CPU "
            f"{fits['cpu'].loss[-1]:.6f}"
        )
    return f"{n_spots:,} spots, {epochs} epochs, same seed. " + "; ".join(lines) + "."


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spots", type=int, default=10_000)
    parser.add_argument("--types", type=int, default=30)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--baseline-epochs", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (loki's default is 1)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "_out" / "bench_decompose.md"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    source, target, density, _ = make_inputs(args.spots, args.types, args.dim)

    fit_mapping(source, target, source_density=density, epochs=3, device=device)  # warm-up

    def timed_fit(**options):
        _sync(device)
        t0 = time.perf_counter()
        fit = fit_mapping(
            source, target, source_density=density, epochs=args.epochs, device=device, seed=0, **options
        )
        _sync(device)
        return fit, time.perf_counter() - t0

    result, loki_s = timed_fit(num_threads=args.threads)
    per_epoch = loki_s / args.epochs
    eager_s = None
    if (
        device.type == "cuda"
    ):  # the same fit without the CUDA graph: every epoch's kernels launched one by one
        eager, eager_s = timed_fit(cuda_graph=False)
        graph_vs_eager = np.abs(eager.mapping - result.mapping).max()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)  # baselines on the same threads as loki's default
    bare, gflops = bare_products(source, target, args.baseline_epochs, device)
    direct = direct_epochs(source, target, density, args.baseline_epochs, device)
    tangram = tangram_epochs(source, target, density, args.baseline_epochs, device)
    t0 = time.perf_counter()
    nnls_weights(source, target)
    nnls_s = time.perf_counter() - t0

    load = os.getloadavg()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    lines = [
        "### Decompose speed (bench_decompose.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {where}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (machine shared with other engineers' jobs).",
        f"{args.spots:,} spots x {args.types} cell types x {args.dim}-d, clusters mode, uniform prior, "
        f"{args.epochs} epochs, final loss {result.loss[-1]:.4f}.",
        "",
        "| what | time | per epoch | ratio to loki |",
        "|---|---|---|---|",
        f"| loki mapping (lk.tl.decompose, method='mapping') | {loki_s:.2f} s | {per_epoch * 1e3:.2f} ms | 1.0 |",
        f"| floor: the two spots x features products of one epoch (M G, (S a) G^T), {args.baseline_epochs} reps, "
        f"{gflops:.0f} GFLOP/s | {bare * args.epochs:.1f} s (extrapolated) | {bare * 1e3:.1f} ms | "
        f"{bare / per_epoch:.2f}x |",
        f"| same objective, direct autograd (G_pred materialised), {args.baseline_epochs} epochs | "
        f"{direct * args.epochs:.1f} s (extrapolated) | {direct * 1e3:.1f} ms | {direct / per_epoch:.1f}x slower |",
    ]
    if eager_s is not None:
        lines.append(
            f"| loki mapping, every epoch launched eagerly (`cuda_graph=False`; max mapping difference to the "
            f"graph {graph_vs_eager:.1e}) | {eager_s:.1f} s | {eager_s / args.epochs * 1e3:.2f} ms | "
            f"{eager_s / loki_s:.1f}x slower |"
        )
    if tangram is not None:
        lines.append(
            f"| tangram-sc 1.0.4 Mapper, {args.baseline_epochs} epochs | {tangram * args.epochs:.1f} s (extrapolated) | "
            f"{tangram * 1e3:.1f} ms | {tangram / per_epoch:.1f}x slower |"
        )
    else:
        lines.append("| tangram-sc 1.0.4 Mapper | not importable in this environment | | |")
    lines.append(f"| loki NNLS (method='nnls') | {nnls_s:.1f} s | | |")
    if device.type != "cpu":
        lines.append(f"\n{device_agreement(device)}")
    verdict = "met" if loki_s < 30 else "NOT met"
    lines.append(f"\nTarget < 30 s for the mapping: {verdict} ({loki_s:.1f} s).")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
