"""Known transforms applied to real sections (MOB bundled, her2st A and Stahl layers from ../shared/data).

The exhaustive grid (3 datasets x 30/90/150 deg x mirror x thinned counts) runs in
benchmarks/bench_align_real.py; here one case per dataset keeps the suite fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from tests.conftest import shared_path

import loki as lk
from loki._keys import Key


def _log_expr(adata, genes):
    x = adata[:, genes].X.tocsr().astype(np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()
    x = sp.diags(1e4 / np.maximum(lib, 1)) @ x
    x.data = np.log1p(x.data)
    return x.toarray().astype(np.float32)


def _her2st(name):
    folder = shared_path("her2st_A")
    sd = lk.io.read_legacy_st(
        folder / "counts" / f"{name}.tsv.gz", folder / "spotfiles" / f"{name}_selection.tsv", name=name
    )
    return sd.tables[name].copy()


def _section(name):
    if name == "MOB1":
        return lk.datasets.mob("MOB1").tables["MOB1"].copy()
    if name == "A1":
        return _her2st("A1")
    folder = shared_path("paste_stahl_bc_layers")
    counts = pd.read_csv(folder / "slice1.csv", index_col=0)
    adata = AnnData(sp.csr_matrix(counts.to_numpy(dtype=np.float32)))
    adata.var_names = counts.columns.astype(str)
    adata.obsm["spatial"] = np.loadtxt(folder / "slice1_coor.csv", delimiter=",")
    return adata


@pytest.mark.parametrize(
    ("name", "rotation", "mirror", "method"),
    [("MOB1", 150.0, True, "deformable"), ("A1", 90.0, True, "rigid"), ("stahl1", 30.0, False, "rigid")],
)
def test_known_transform_on_real_section(name, rotation, mirror, method):
    target = _section(name)
    source, truth = lk.datasets.transform_section(
        target, rotation_deg=rotation, mirror=mirror, translation=(37.0, -12.0), thin_counts=0.5, seed=3
    )
    x = target.X.tocsr()
    mean = np.asarray(x.mean(axis=0)).ravel()
    genes = target.var_names[np.argsort(-mean)[:500]]
    target.obsm["X_expr"] = _log_expr(target, genes)
    source.obsm["X_expr"] = _log_expr(source, genes)
    lk.tl.align(source, target=target, use="X_expr", method=method)
    err = lk.metrics.alignment_error(source.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err < 0.15, err
    assert source.uns[Key.UNS][Key.ALIGNED]["mirror"] == mirror


def test_serial_pair_not_flipped_by_a_loose_fit():
    """her2st A5 onto A4, serial sections mounted alike: the flipped source fits the embedding PCs
    better only through a 4x wider spatial Gaussian, and must not win (see ``global_start``)."""
    source, target = _her2st("A5"), _her2st("A4")
    genes = target.var_names.intersection(source.var_names)
    x = _log_expr(target, genes)
    top = np.argsort(-x.var(axis=0))[:1000]
    target.obsm["X_expr"] = x[:, top]
    source.obsm["X_expr"] = _log_expr(source, genes)[:, top]
    lk.tl.align(source, target=target, use="X_expr", method="rigid")
    assert not source.uns[Key.UNS][Key.ALIGNED]["mirror"]
    before = lk.metrics.alignment_expression_scores(source, target, aligned_key="spatial", kendall=False)
    after = lk.metrics.alignment_expression_scores(source, target, kendall=False)
    assert after["pearson_median"] > before["pearson_median"] + 0.01


def test_serial_pair_not_flipped_with_components_of_another_section():
    """A5 onto A4 inside a stack whose genes were chosen on A1: the two leading components favour the
    flipped source even at one spatial variance; the whole embedding does not (see ``global_start``)."""
    sections = {name: _her2st(name) for name in ("A1", "A4", "A5")}
    genes = sections["A1"].var_names
    for table in sections.values():
        genes = genes.intersection(table.var_names)
    x1 = _log_expr(sections["A1"], genes)
    top = np.argsort(-x1.var(axis=0))[:1000]
    source, target = sections["A5"], sections["A4"]
    for table in (source, target):
        table.obsm["X_expr"] = _log_expr(table, genes)[:, top]
    lk.tl.align(source, target=target, use="X_expr", method="rigid")
    starts = source.uns[Key.UNS][Key.ALIGNED]["starts"].dropna()
    assert not source.uns[Key.UNS][Key.ALIGNED]["mirror"]
    # the likelihood alone would have flipped it
    assert starts.loc[starts["loglik_common"].idxmax(), "mirror"]
    before = lk.metrics.alignment_expression_scores(source, target, aligned_key="spatial", kendall=False)
    after = lk.metrics.alignment_expression_scores(source, target, kendall=False)
    assert after["pearson_median"] > before["pearson_median"] + 0.01


def test_half_section_onto_whole_section():
    """MOB1's left half (torn off), turned 150 deg and flipped, counts halved, onto the whole MOB1."""
    target = _section("MOB1")
    xy = target.obsm["spatial"]
    half = target[xy[:, 0] <= np.median(xy[:, 0])].copy()
    source, truth = lk.datasets.transform_section(
        half, rotation_deg=150.0, mirror=True, translation=(37.0, -12.0), thin_counts=0.5, seed=3
    )
    genes = target.var_names[np.argsort(-np.asarray(target.X.mean(axis=0)).ravel())[:500]]
    target.obsm["X_expr"] = _log_expr(target, genes)
    source.obsm["X_expr"] = _log_expr(source, genes)
    lk.tl.align(source, target=target, use="X_expr", method="deformable")
    info = source.uns[Key.UNS][Key.ALIGNED]
    assert info["moving"] == "target"
    assert info["mirror"]
    assert lk.metrics.alignment_error(source.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing) < 0.15


def test_sections_torn_on_both_sides():
    """MOB1 cut in two overlapping pieces (left 70%, right 70%), the left turned 137 deg and flipped,
    counts halved: with ``partial=True`` the shared spots land on their truth."""
    whole = _section("MOB1")
    xy = whole.obsm["spatial"]
    genes = whole.var_names[np.argsort(-np.asarray(whole.X.mean(axis=0)).ravel())[:500]]
    target = whole[xy[:, 0] >= np.quantile(xy[:, 0], 0.3)].copy()
    source, truth = lk.datasets.transform_section(
        whole[xy[:, 0] <= np.quantile(xy[:, 0], 0.7)].copy(),
        rotation_deg=137.0,
        mirror=True,
        translation=(37.0, -12.0),
        thin_counts=0.5,
        seed=3,
    )
    target.obsm["X_expr"] = _log_expr(target, genes)
    source.obsm["X_expr"] = _log_expr(source, genes)
    shared = np.isin(source.obs_names, target.obs_names)
    lk.tl.align(source, target=target, use="X_expr", method="deformable", partial=True)
    assert source.uns[Key.UNS][Key.ALIGNED]["mirror"]
    err = lk.metrics.alignment_error(
        source.obsm[Key.ALIGNED][shared], truth.coords[shared], truth.spot_spacing
    )
    assert err < 0.15, err
