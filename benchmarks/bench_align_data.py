"""Real sections for the alignment benchmarks (read from ../shared/data; never bundled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

import loki as lk

SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def log_expression(adata: AnnData, genes=None, n_top: int = 1000) -> np.ndarray:
    """Library-size normalised log1p expression of the ``n_top`` most variable genes (or ``genes``)."""
    x = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    x = x.astype(np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()
    lib[lib == 0] = 1
    x = sp.diags(1e4 / lib) @ x
    x.data = np.log1p(x.data)
    if genes is None:
        m = np.asarray(x.mean(axis=0)).ravel()
        v = np.asarray(x.multiply(x).mean(axis=0)).ravel() - m**2
        genes = np.argsort(-v)[:n_top]
    return np.asarray(x[:, genes].toarray(), dtype=np.float32), genes


def mob(name: str) -> AnnData:
    """A bundled MOB section table (copy)."""
    return lk.datasets.mob(name).tables[name].copy()


def her2st(name: str) -> AnnData:
    """her2st section ``A1``..``A6`` (counts + spot file, no image)."""
    sd = lk.io.read_legacy_st(
        SHARED / "her2st_A" / "counts" / f"{name}.tsv.gz",
        SHARED / "her2st_A" / "spotfiles" / f"{name}_selection.tsv",
        name=name,
    )
    return sd.tables[name].copy()


def stahl(i: int) -> AnnData:
    """PASTE's breast cancer layer ``i`` (1..4): counts + array coordinates."""
    folder = SHARED / "paste_stahl_bc_layers"
    counts = pd.read_csv(folder / f"slice{i}.csv", index_col=0)
    xy = np.loadtxt(folder / f"slice{i}_coor.csv", delimiter=",")
    adata = AnnData(sp.csr_matrix(counts.to_numpy(dtype=np.float32)))
    adata.obs_names = counts.index.astype(str)
    adata.var_names = counts.columns.astype(str)
    adata.obsm["spatial"] = xy
    return adata


def with_shared_embedding(source: AnnData, target: AnnData, key: str = "X_expr", n_top: int = 1000) -> None:
    """Write log expression of the target's most variable shared genes into ``.obsm[key]`` of both."""
    genes = target.var_names.intersection(source.var_names)
    t = target[:, genes]
    s = source[:, genes]
    et, idx = log_expression(t, n_top=n_top)
    es, _ = log_expression(s, genes=idx)
    target.obsm[key] = et
    source.obsm[key] = es
