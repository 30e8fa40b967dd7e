"""Scale review of loki's public API at Visium HD size: one call per fresh process, wall time and peak RSS.

    python benchmarks/bench_api_scale.py CASE N       # one measurement, prints a JSON line
    python benchmarks/bench_api_scale.py all [N ...]  # every case at each N (default 20000 200000)

``all`` runs each case in its own process under ``flock /tmp/loki_bench.lock`` (so do not wrap it in
flock yourself) and appends the rows to benchmarks/_out/bench_api_scale.jsonl. Results and the
machine: benchmarks/RESULTS.md, "The public API at Visium HD size".

Peak memory: the process's high-water mark (VmHWM) is reset just before the call (/proc/self/clear_refs)
and read after it, so "peak_mb" is the largest resident size during the call and "base_mb" the resident
size before it (inputs already built).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))


def _status(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tissue(n: int, n_genes: int = 300, seed: int = 0):
    import loki as lk

    return lk.datasets.synthetic_tissue(n_spots=n, n_genes=n_genes, seed=seed)


# ---- cases: each returns (setup -> callable, extra-info function) -------------------------------


def case_pl_alignment(n):
    import loki as lk

    a, b = tissue(n, 50, 0), tissue(n, 50, 1)
    a.obsm["spatial_aligned"] = a.obsm["spatial"] + 0.3
    a.obsm["emb"], b.obsm["emb"] = unit_rows(n, 256, 0), unit_rows(n, 256, 1)
    out = {}

    def call():
        buf = io.BytesIO()
        lk.pl.alignment([a, b], use="emb", key="spatial_aligned", show=False, save=buf)
        out["png_kb"] = len(buf.getvalue()) / 1024

    return call, out


def _vector(fig_call, out, suffix):
    buf = io.BytesIO()
    fig = fig_call()
    t = time.perf_counter()
    fig.savefig(buf, format=suffix)
    out[f"{suffix}_kb"] = round(len(buf.getvalue()) / 1024)
    out[f"{suffix}_s"] = round(time.perf_counter() - t, 2)


def case_pl_alignment_pdf(n):
    import loki as lk

    a, b = tissue(n, 50, 0), tissue(n, 50, 1)
    a.obsm["spatial_aligned"] = a.obsm["spatial"] + 0.3
    out = {}

    def call():
        _vector(lambda: lk.pl.alignment([a, b], key="spatial_aligned", show=False), out, "pdf")

    return call, out


def _annotated(n, n_classes=8):
    import loki as lk

    ad = tissue(n, 50)
    ad.obsm["loki_image"] = unit_rows(n, 768)
    ce = pd.DataFrame(unit_rows(n_classes, 768, 5), index=[f"Class{i}" for i in range(n_classes)])
    lk.tl.annotate(ad, class_embeddings=ce)
    return ad


def case_pl_annotation_scores(n):
    import loki as lk

    ad = _annotated(n)
    out = {}

    def call():
        buf = io.BytesIO()
        lk.pl.annotation(ad, kind="scores", show=False, save=buf)
        out["png_kb"] = round(len(buf.getvalue()) / 1024)

    return call, out


def case_pl_annotation_label(n):
    import loki as lk

    ad = _annotated(n)
    out = {}

    def call():
        buf = io.BytesIO()
        lk.pl.annotation(ad, kind="label", show=False, save=buf)
        out["png_kb"] = round(len(buf.getvalue()) / 1024)

    return call, out


def case_pl_annotation_pdf(n):
    import loki as lk

    ad = _annotated(n)
    out = {}

    def call():
        _vector(lambda: lk.pl.annotation(ad, kind="label", show=False), out, "pdf")

    return call, out


def case_pl_proportions(n):
    import loki as lk

    ad = tissue(n, 50)
    out = {}

    def call():
        buf = io.BytesIO()
        lk.pl.proportions(ad, key="proportions", show=False, save=buf)
        out["png_kb"] = round(len(buf.getvalue()) / 1024)

    return call, out


def case_pl_proportions_pdf(n):
    import loki as lk

    ad = tissue(n, 50)
    out = {}

    def call():
        _vector(lambda: lk.pl.proportions(ad, key="proportions", show=False), out, "pdf")

    return call, out


def case_pl_expression(n):
    import loki as lk

    ad = tissue(n, 50)
    out = {}

    def call():
        buf = io.BytesIO()
        lk.pl.expression(ad, list(ad.var_names[:4]), layer_predicted=None, show=False, save=buf)
        out["png_kb"] = round(len(buf.getvalue()) / 1024)

    return call, out


def case_pl_retrieval_gallery(n):
    import loki as lk

    rng = np.random.default_rng(0)
    k = 5
    hits = pd.DataFrame(
        {
            "query_index": np.repeat(np.arange(n), k),
            "rank": np.tile(np.arange(1, k + 1), n),
            "bank_index": rng.integers(0, n, n * k),
            "score": rng.random(n * k),
        }
    )
    imgs = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    out = {}

    def call():
        buf = io.BytesIO()
        lk.pl.retrieval_gallery(hits, imgs, imgs, truth=np.arange(n), show=False, save=buf)

    return call, out


def case_metrics_alignment_expression_scores(n):
    import loki as lk

    tgt = tissue(n, 500, 0)
    src = tissue(n, 500, 1)
    src.obsm["spatial_aligned"] = src.obsm["spatial"] + 0.1
    out = {}

    def call():
        res = lk.metrics.alignment_expression_scores(src, tgt)
        out["n_pairs"] = res["n_pairs"]
        out["pcc"] = round(res["pearson_median"], 4)

    return call, out


def case_metrics_alignment_expression_scores_nokendall(n):
    import loki as lk

    tgt = tissue(n, 500, 0)
    src = tissue(n, 500, 1)
    src.obsm["spatial_aligned"] = src.obsm["spatial"] + 0.1
    out = {}

    def call():
        res = lk.metrics.alignment_expression_scores(src, tgt, kendall=False)
        out["n_pairs"] = res["n_pairs"]

    return call, out


def case_metrics_paired_median_difference(n):
    import loki as lk

    rng = np.random.default_rng(0)
    a = {"pearson": rng.random(n), "target_index": np.arange(n), "n_target": n}
    b = {"pearson": rng.random(n), "target_index": np.arange(n), "n_target": n}
    return (lambda: lk.metrics.paired_median_difference(a, b)), {}


def case_metrics_ssim_grid(n):
    import loki as lk

    ad = tissue(n, 20)
    xy, p = ad.obsm["spatial"], ad.obsm["proportions"].to_numpy()
    q = np.roll(p, 1, axis=0)
    return (lambda: lk.metrics.ssim_grid(xy, p, q)), {}


def case_metrics_spot_spacing(n):
    import loki as lk

    xy = tissue(n, 20).obsm["spatial"]
    return (lambda: lk.metrics.spot_spacing(xy)), {}


def case_metrics_js_ssim(n):
    import loki as lk

    p = tissue(n, 20).obsm["proportions"].to_numpy()
    q = np.roll(p, 1, axis=0)
    return (lambda: (lk.metrics.js_divergence(p, q, axis=0), lk.metrics.ssim(p, q))), {}


def case_metrics_weighted_f1(n):
    import loki as lk

    rng = np.random.default_rng(0)
    labels = np.array([f"Type{i}" for i in range(20)], dtype=object)
    t, p = labels[rng.integers(0, 20, n)], labels[rng.integers(0, 20, n)]
    return (lambda: lk.metrics.weighted_f1(t, p)), {}


def case_metrics_calinski_harabasz(n):
    import loki as lk

    rng = np.random.default_rng(0)
    x = unit_rows(n, 768)
    lab = rng.integers(0, 20, n)
    return (lambda: lk.metrics.calinski_harabasz(x, lab)), {}


def case_tl_annotate(n):
    import loki as lk

    ad = tissue(n, 50)
    ad.obsm["loki_image"] = unit_rows(n, 768)
    ce = pd.DataFrame(unit_rows(30, 768, 5), index=[f"Class{i}" for i in range(30)])
    out = {}

    def call():
        lk.tl.annotate(ad, class_embeddings=ce)
        out["uns_kb"] = round(len(pickle.dumps(dict(ad.uns["loki"]))) / 1024, 1)

    return call, out


def _reference(n_genes, seed=3):
    import loki as lk

    return lk.datasets.synthetic_reference(n_cells=2000, n_genes=n_genes, seed=seed)


def case_tl_decompose_nnls(n):
    import loki as lk

    ad = tissue(n, 300)
    ref = lk.datasets.synthetic_reference(ad, 300, seed=3)
    out = {}

    def call():
        lk.tl.decompose(ad, reference=ref, cell_type_key="cell_type", method="nnls")
        out["uns_kb"] = round(len(pickle.dumps(dict(ad.uns["loki"]))) / 1024, 1)

    return call, out


def case_tl_decompose_mapping(n):
    import loki as lk

    ad = tissue(n, 300)
    ref = lk.datasets.synthetic_reference(ad, 300, seed=3)
    out = {}

    def call():
        lk.tl.decompose(
            ad, reference=ref, cell_type_key="cell_type", method="mapping", epochs=5, device="cpu"
        )
        out["uns_kb"] = round(len(pickle.dumps(dict(ad.uns["loki"]))) / 1024, 1)

    return call, out


def case_io_h5ad_roundtrip(n):
    import anndata

    import loki as lk

    ad = _annotated(n, 30)
    ref = lk.datasets.synthetic_reference(ad, 300, seed=3)
    lk.tl.decompose(ad, reference=ref, cell_type_key="cell_type", method="nnls")
    out = {}
    tmp = tempfile.mkdtemp()

    def call():
        path = os.path.join(tmp, "x.h5ad")
        ad.write_h5ad(path)
        back = anndata.read_h5ad(path)
        out["file_mb"] = round(os.path.getsize(path) / 2**20, 1)
        out["uns_kb"] = round(len(pickle.dumps(dict(back.uns["loki"]))) / 1024, 1)
        os.remove(path)

    return call, out


def case_pp_pseudo_spots(n):
    import anndata
    import scipy.sparse as sp

    import loki as lk

    rng = np.random.default_rng(0)
    side = np.sqrt(n) * 10.0  # ~ a cell per 10 x 10 um
    x = sp.random(n, 300, density=0.05, format="csr", dtype=np.float32, random_state=0)
    cells = anndata.AnnData(x)
    cells.obsm["spatial"] = rng.uniform(0, side, (n, 2))
    cells.obs["cell_type"] = pd.Categorical(rng.choice([f"T{i}" for i in range(10)], n))
    out = {}

    def call():
        spots = lk.pp.pseudo_spots(cells, diameter_um=8.0, spacing_um=8.0)
        out["n_spots"] = spots.n_obs

    return call, out


def case_pp_scatter_cells_in_regions(n):
    from loki.pp._pseudo_spots import scatter_cells_in_regions

    labels = np.random.default_rng(0).choice([f"T{i}" for i in range(10)], n)
    return (lambda: scatter_cells_in_regions(labels, seed=0)), {}


def _patch_section(n):
    import anndata
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    side = int(np.ceil(np.sqrt(n)))
    pitch = 16.0  # pixels between bins; image side grows with sqrt(n)
    w = int(side * pitch + 64)
    img = np.random.default_rng(0).integers(0, 255, (3, w, w), dtype=np.uint8)
    image = Image2DModel.parse(img, dims=("c", "y", "x"), chunks=1024)
    i, j = np.divmod(np.arange(n), side)
    centers = np.c_[j, i] * pitch + 32.0
    ids = pd.Index([f"s{k}" for k in range(n)])
    table = anndata.AnnData(
        np.ones((n, 1), dtype=np.float32),
        obs=pd.DataFrame({"region": pd.Categorical(["S_spots"] * n), "spot_id": ids}, index=ids),
    )
    table.obsm["spatial"] = centers
    table.uns["loki"] = {"image_key": "S_image", "microns_per_unit": 0.5, "spot_diameter_um": 8.0}
    table = TableModel.parse(table, region="S_spots", region_key="region", instance_key="spot_id")
    shapes = ShapesModel.parse(centers, geometry=0, radius=np.full(n, 8.0), index=ids)
    return sd.SpatialData(images={"S_image": image}, shapes={"S_spots": shapes}, tables={"S": table})


def case_pp_spot_patches(n):
    import loki as lk

    sdata = _patch_section(n)
    out = {}

    def call():
        t = time.perf_counter()
        patches = lk.pp.spot_patches(sdata, size=32, key_added="patch_ok")
        out["graph_s"] = round(time.perf_counter() - t, 2)
        out["mean"] = float(patches.mean(axis=(1, 2, 3)).sum().compute())

    return call, out


CASES = {k[5:]: v for k, v in dict(globals()).items() if k.startswith("case_")}


def run_one(name: str, n: int) -> dict:
    warnings.simplefilter("ignore")
    import matplotlib

    matplotlib.use("agg")
    call, info = CASES[name](n)
    import gc

    gc.collect()
    base = _status("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    call()
    wall = time.perf_counter() - t
    peak = _status("VmHWM")
    return {
        "case": name,
        "n": n,
        "seconds": round(wall, 2),
        "peak_mb": round(peak),
        "base_mb": round(base),
        **info,
    }


def main() -> None:
    if sys.argv[1] != "all":
        print(json.dumps(run_one(sys.argv[1], int(sys.argv[2]))), flush=True)
        return
    sizes = [int(s) for s in sys.argv[2:]] or [20000, 200000]
    only = os.environ.get("CASES")
    names = only.split(",") if only else list(CASES)
    for name in names:
        for n in sizes:
            cmd = [
                "flock",
                "/tmp/loki_bench.lock",
                "timeout",
                os.environ.get("LIMIT", "900"),
                sys.executable,
                __file__,
                name,
                str(n),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = {"case": name, "n": n, "error": f"rc={proc.returncode} {proc.stderr.strip()[-300:]}"}
            print(json.dumps(row), flush=True)
            os.makedirs(os.path.join(HERE, "_out"), exist_ok=True)
            with open(os.path.join(HERE, "_out", "bench_api_scale.jsonl"), "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
