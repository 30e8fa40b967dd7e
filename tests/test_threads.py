"""loki's parallel numba kernels leave torch's CPU thread count as the user set it."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import types

import pytest

from loki._utils._threads import keep_torch_threads

_CASES = ("retrieve", "predict_top_k", "predict_ivf", "align", "estep", "gene_sentences")

# numba's ``omp`` layer changes OpenMP's thread count once, when it starts its threads: each case runs
# in a fork of a fresh interpreter that has imported torch (first, as a training script run with
# OMP_NUM_THREADS=1 does) and loki, but has not started numba's threads. Forking saves an import each.
_SCRIPT = """
import json
import multiprocessing
import sys

import torch

import anndata as ad
import numba
import numpy as np
import scipy.sparse as sp

import loki as lk
import loki.datasets
import loki.pp
import loki.tl


def unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run(case, queue):
    rng = np.random.default_rng(0)
    before = torch.get_num_threads()
    if case == "retrieve":
        lk.tl.retrieve(unit(rng, 20), unit(rng, 300), k=3)
    elif case.startswith("predict"):
        expression = rng.gamma(2.0, size=(300, 5)).astype(np.float32)
        reference = ad.AnnData(expression, obsm={"loki_text": unit(rng, 300)})
        search = {"search": "ivf", "n_lists": 4} if case == "predict_ivf" else {}
        lk.tl.predict_expression(unit(rng, 20), reference, top_k=10, **search)
    elif case == "align":
        tissue = lk.datasets.synthetic_tissue(n_spots=150, n_genes=20, n_cell_types=3, seed=1)
        moved, _ = lk.datasets.transform_section(tissue, rotation_deg=20.0, seed=2)
        for section in (tissue, moved):
            section.obsm["X_expr"] = np.log1p(section.X.toarray()).astype(np.float32)
        lk.tl.align(moved, target=tissue, use="X_expr", method="deformable", max_iter=20)
    elif case == "estep":  # the threaded E-step of large alignments (M * N > 5e7 pairs)
        from loki.tl._cpd_kernels import estep

        points = rng.random((7200, 2))
        estep(points, points + 0.01, 1e-4, 0.1)
    elif case == "gene_sentences":  # ranked in parallel from 1e6 stored values on
        counts = sp.random(25_000, 200, density=0.25, format="csr", random_state=0, dtype=np.float32)
        table = ad.AnnData(counts)
        table.var_names = [f"G{i}" for i in range(200)]
        lk.pp.gene_sentences(table)
    queue.put([before, torch.get_num_threads(), numba.threading_layer()])


context = multiprocessing.get_context("fork")
queue = context.SimpleQueue()
results = {}
for case in sys.argv[1:]:
    process = context.Process(target=run, args=(case, queue))
    process.start()
    process.join()
    results[case] = queue.get() if process.exitcode == 0 else f"exit code {process.exitcode}"
print(json.dumps(results))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("numba.np.ufunc.omppool") is None, reason="numba has no OpenMP threading layer"
)
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_parallel_kernels_keep_torch_threads():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2", "NUMBA_THREADING_LAYER": "omp"}
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *_CASES], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.splitlines()[-1])
    # "omp": a parallel kernel ran, on the layer that changes OpenMP's thread count
    assert results == {case: [1, 1, "omp"] for case in _CASES}, run.stderr


@pytest.fixture
def fake_torch(monkeypatch):
    torch = types.SimpleNamespace(threads=1)
    torch.get_num_threads = lambda: torch.threads
    torch.set_num_threads = lambda n: setattr(torch, "threads", n)
    monkeypatch.setitem(sys.modules, "torch", torch)
    return torch


def test_keep_torch_threads_restores_the_count(fake_torch):
    """As a ``with`` block, and as a decorator of a function that raises."""
    with keep_torch_threads():
        fake_torch.threads = 2
    assert fake_torch.threads == 1

    @keep_torch_threads()
    def failing_kernel():
        fake_torch.threads = 4
        raise RuntimeError

    with pytest.raises(RuntimeError):
        failing_kernel()
    assert fake_torch.threads == 1


def test_keep_torch_threads_never_imports_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with keep_torch_threads():
        pass
    assert "torch" not in sys.modules


def test_demo_records_the_threads_of_training(tmp_path, monkeypatch):
    """The demo records torch's thread count when training starts, not after later steps changed it."""
    torch = pytest.importorskip("torch")

    import loki as lk
    from loki import _demo

    class Model:
        def save(self, path):
            path.mkdir()

    seen = []

    def finetune(sdata, model, **kwargs):
        seen.append(torch.get_num_threads())
        return model, {"n_pairs": 10, "epoch_loss": [2.0, 1.0]}

    def later_step(*args, **kwargs):  # a later step changes the count, as numba's omp layer once did
        torch.set_num_threads(seen[0] + 1)

    monkeypatch.setattr(lk.datasets, "mob", lambda: None)
    monkeypatch.setattr(lk.pp, "gene_sentences", lambda *a, **k: None)
    monkeypatch.setattr(lk.models, "load", lambda *a, **k: Model())
    monkeypatch.setattr(lk.tl, "finetune", finetune)
    monkeypatch.setattr(lk.pl, "loss_curve", lambda *a, **k: None)
    monkeypatch.setattr(lk.tl, "embed_text", lambda *a, **k: None)
    monkeypatch.setattr(lk.tl, "embed_image", lambda *a, **k: None)
    for step in ("_retrieval", "_predex", "_align_image_alone", "_decompose"):
        monkeypatch.setattr(_demo, step, lambda *a, **k: None)
    monkeypatch.setattr(_demo, "_align", later_step)
    threads = torch.get_num_threads()
    try:
        frame = _demo.run_demo(tmp_path / "demo", quick=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    recorded = frame.loc[frame["metric"] == "torch CPU threads", "value"].tolist()
    assert recorded == [seen[0]]
    assert f"{seen[0]} CPU thread(s)" in (tmp_path / "demo" / "metrics.md").read_text()
