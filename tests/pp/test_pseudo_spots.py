from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

import loki as lk
from loki.pp._pseudo_spots import disc_members, hex_grid, scatter_cells_in_regions


def _cells(n=3000, size=1000.0, seed=0, sparse_x=True):
    rng = np.random.default_rng(seed)
    x = rng.poisson(1.0, size=(n, 12)).astype(np.float32)
    cells = ad.AnnData(
        sp.csr_matrix(x) if sparse_x else x,
        obs=pd.DataFrame({"cell_type": rng.choice(["A", "B", "C"], n)}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(12)]),
    )
    cells.obsm["spatial"] = rng.uniform(0, size, size=(n, 2))
    return cells


@settings(max_examples=25, deadline=None)
@given(st.floats(1.0, 50.0), st.floats(20.0, 300.0), st.floats(20.0, 300.0))
def test_hex_grid_neighbours_are_one_spacing_apart_and_cover_the_box(spacing, w, h):
    centres = hex_grid(0.0, 0.0, w, h, spacing)
    assert centres[:, 0].min() >= -1e-9
    assert centres[:, 1].max() <= h + spacing / np.sqrt(3)
    if len(centres) > 2:
        dist, _ = cKDTree(centres).query(centres, k=2)
        np.testing.assert_allclose(dist[:, 1], spacing, rtol=1e-9)
    # every point of the box, edges and corners included, lies in a centre's hexagonal cell
    edge = np.linspace(0.0, 1.0, 41)
    grid = np.array(np.meshgrid(edge * w, edge * h)).reshape(2, -1).T
    assert cKDTree(centres).query(grid)[0].max() <= spacing / np.sqrt(3) + 1e-9


@pytest.mark.parametrize("sparse_x", [True, False])
def test_pseudo_spots_sum_counts_and_give_exact_proportions(sparse_x):
    cells = _cells(sparse_x=sparse_x)
    spots = lk.pp.pseudo_spots(cells, diameter_um=55.0, cell_type_key="cell_type")
    assert sp.issparse(spots.X) == sparse_x
    # Recompute the assignment independently: nearest centre within the radius.
    dist, idx = cKDTree(spots.obsm["spatial"]).query(cells.obsm["spatial"])
    inside = dist <= 27.5
    x = cells.X.toarray() if sparse_x else cells.X
    for j in range(0, spots.n_obs, 7):
        members = inside & (idx == j)
        assert spots.obs["n_cells"].iloc[j] == members.sum()
        got = spots.X[j].toarray().ravel() if sparse_x else spots.X[j]
        np.testing.assert_allclose(got, x[members].sum(axis=0))
        frac = cells.obs["cell_type"][members].value_counts(normalize=True)
        truth = spots.obsm["proportions"].iloc[j]
        np.testing.assert_allclose(truth.reindex(frac.index), frac.to_numpy())
    np.testing.assert_allclose(spots.obsm["proportions"].sum(axis=1), 1.0)
    assert (spots.obs["n_cells"] >= 1).all()
    assert spots.uns["loki"]["spot_diameter_um"] == 55.0
    assert spots.uns["loki"]["spot_spacing_um"] == pytest.approx(100.0)
    # Cells between spots are left out, as on a Visium slide.
    assert spots.obs["n_cells"].sum() == inside.sum() < cells.n_obs


def test_microns_per_unit_scales_the_spots():
    cells = _cells()
    ref = lk.pp.pseudo_spots(cells, diameter_um=55.0)
    cells_px = cells.copy()
    cells_px.obsm["spatial"] = cells.obsm["spatial"] * 2.0  # 0.5 um per unit
    px = lk.pp.pseudo_spots(cells_px, diameter_um=55.0, microns_per_unit=0.5)
    assert px.n_obs == ref.n_obs
    np.testing.assert_allclose(px.obsm["spatial"], ref.obsm["spatial"] * 2.0)
    np.testing.assert_array_equal(px.obs["n_cells"], ref.obs["n_cells"])


def test_min_cells_drops_sparse_spots():
    cells = _cells(n=400)
    all_spots = lk.pp.pseudo_spots(cells, min_cells=1)
    dense = lk.pp.pseudo_spots(cells, min_cells=3)
    assert dense.n_obs == (all_spots.obs["n_cells"] >= 3).sum()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spatial_key": "xy"}, KeyError, "'xy' not found in adata.obsm"),
        ({"cell_type_key": "type"}, KeyError, "'type' not found in adata.obs"),
        ({"layer": "counts"}, KeyError, "adata.layers"),
        ({"diameter_um": -1.0}, ValueError, "diameter_um"),
        ({"spacing_um": 0.0}, ValueError, "spacing_um"),
        ({"microns_per_unit": 1e6}, ValueError, "Check microns_per_unit"),
        ({"min_cells": 10_000}, ValueError, "No spot holds"),
    ],
)
def test_pseudo_spots_bad_input(kwargs, error, match):
    cells = _cells(n=200)
    before = set(cells.obsm), set(cells.obs.columns), dict(cells.uns)
    with pytest.raises(error, match=match):
        lk.pp.pseudo_spots(cells, **kwargs)
    assert (set(cells.obsm), set(cells.obs.columns), dict(cells.uns)) == before


def test_cells_without_a_label_are_named():
    cells = _cells(n=200)
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(object)
    cells.obs.loc[cells.obs_names[:7], "cell_type"] = np.nan
    with pytest.raises(ValueError, match=r"7 of 200 cells have no label in adata.obs\['cell_type'\]"):
        lk.pp.pseudo_spots(cells)
    out = lk.pp.pseudo_spots(_cells(n=200))
    assert [type(c) for c in out.obsm[lk.Key.TRUE_PROPORTIONS].columns] == [str, str, str]


def test_non_finite_coordinates_are_rejected():
    cells = _cells(n=50)
    cells.obsm["spatial"][3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        lk.pp.pseudo_spots(cells)


def test_disc_members_leaves_out_points_between_spots_and_repeats_points_in_overlaps():
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    points = np.array([[1.0, 0.0], [5.0, 0.0], [9.5, 0.5]])
    spot, member = disc_members(points, centres, radius=2.0)
    np.testing.assert_array_equal(spot, [0, 1])
    np.testing.assert_array_equal(member, [0, 2])
    spot, member = disc_members(points, centres, radius=6.0)
    np.testing.assert_array_equal(member, [0, 1, 1, 2])
    np.testing.assert_array_equal(spot, [0, 0, 1, 1])


@pytest.mark.parametrize(("diameter", "spacing"), [(55.0, 40.0), (100.0, 30.0)])
def test_overlapping_discs_count_every_cell_inside_each_disc(diameter, spacing):
    """spacing < diameter: every spot of the lattice pools exactly the cells inside its disc."""
    cells = _cells(n=800, size=400.0)
    spots = lk.pp.pseudo_spots(cells, diameter_um=diameter, spacing_um=spacing)
    # the whole lattice through one of the spots, past the tissue on every side
    x0, y0 = spots.obsm["spatial"][0]
    row = spacing * np.sqrt(3) / 2
    r, k = np.meshgrid(np.arange(-24, 25), np.arange(-24, 25), indexing="ij")
    lattice = np.column_stack([(x0 + k * spacing + (r % 2) * spacing / 2).ravel(), (y0 + r * row).ravel()])
    inside = cdist(lattice, cells.obsm["spatial"]) <= diameter / 2
    occupied = inside.sum(axis=1) > 0
    assert occupied.sum() == spots.n_obs
    dist, idx = cKDTree(lattice).query(spots.obsm["spatial"])
    np.testing.assert_allclose(dist, 0.0, atol=1e-6)
    members = inside[idx]
    np.testing.assert_array_equal(spots.obs["n_cells"], members.sum(axis=1))
    np.testing.assert_allclose(spots.X.toarray(), members.astype(float) @ cells.X.toarray(), rtol=1e-6)
    onehot = pd.get_dummies(cells.obs["cell_type"]).to_numpy(float)
    expected = members @ onehot
    np.testing.assert_allclose(
        spots.obsm["proportions"].to_numpy(), expected / expected.sum(axis=1, keepdims=True)
    )


def test_truth_columns_follow_the_declared_categories():
    cells = _cells(n=600)
    cells.obs["cell_type"] = pd.Categorical(cells.obs["cell_type"], categories=["C", "A", "Z", "B"])
    spots = lk.pp.pseudo_spots(cells)
    truth = spots.obsm["proportions"]
    assert list(truth.columns) == ["C", "A", "Z", "B"]  # as decompose orders its proportions
    assert (truth["Z"] == 0).all()
    np.testing.assert_allclose(truth.sum(axis=1), 1.0)
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(str)
    assert list(lk.pp.pseudo_spots(cells).obsm["proportions"].columns) == ["A", "B", "C"]


def test_scatter_cells_in_regions_respects_regions_and_seed():
    labels = np.repeat(["a", "b", "c", "d"], 250)
    xy, region, seeds = scatter_cells_in_regions(labels, n_regions=5, size=500.0, seed=3)
    assert xy.shape == (1000, 2)
    assert (xy >= 0).all()
    assert (xy < 500).all()
    np.testing.assert_array_equal(cKDTree(seeds).query(xy)[1], region)
    xy2, _, _ = scatter_cells_in_regions(labels, n_regions=5, size=500.0, seed=3)
    np.testing.assert_array_equal(xy, xy2)
    # Regions differ in composition: the pattern is spatial, not a uniform shuffle.
    table = pd.crosstab(region, labels, normalize="index").to_numpy()
    assert table.std(axis=0).max() > 0.1


def test_integer_labels_give_truth_columns_in_decompose_order():
    """The truth's columns were in string order (0, 10, 5) while decompose's proportions are numeric."""
    cells = _cells(n=600)
    codes = {"A": 10, "B": 0, "C": 5}
    cells.obs["number"] = cells.obs["cell_type"].map(codes).astype(int)
    spots = lk.pp.pseudo_spots(cells, cell_type_key="number", truth_key="truth")
    assert list(spots.obsm["truth"].columns) == ["0", "5", "10"]
    out = lk.tl.decompose(spots, reference=cells, cell_type_key="number", inplace=False)
    assert list(out.proportions.columns) == list(spots.obsm["truth"].columns)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n_cells=st.integers(1, 400), n_regions=st.integers(1, 8))
def test_region_draws_are_the_per_cell_choices_of_the_same_seed(seed, n_cells, n_regions):
    from loki.pp._pseudo_spots import _draw_regions

    rng = np.random.default_rng(seed)
    prob = rng.random((n_regions, 5))
    prob /= prob.sum(axis=0, keepdims=True)
    codes = rng.integers(0, 5, n_cells)
    one_by_one = np.random.default_rng(seed + 1)
    expected = [one_by_one.choice(n_regions, p=prob[:, c]) for c in codes]
    at_once = np.random.default_rng(seed + 1)
    np.testing.assert_array_equal(_draw_regions(prob, codes, at_once), expected)
    assert at_once.random() == one_by_one.random()  # the generator is left where the loop left it


@pytest.mark.parametrize("sparse_x", [True, False])
def test_cells_of_a_backed_anndata_are_pooled_as_in_memory(tmp_path, sparse_x):
    """A large atlas opened with backed="r": scipy cannot multiply its on-disk matrix, and the call
    failed with "unsupported operand type(s) for @: 'csr_matrix' and '_CSRDataset'"."""
    cells = _cells(n=500, sparse_x=sparse_x)
    cells.layers["counts"] = cells.X.copy()
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    for layer in (None, "counts"):
        want = lk.pp.pseudo_spots(cells, layer=layer)
        got = lk.pp.pseudo_spots(backed, layer=layer)
        assert sp.issparse(got.X) == sparse_x
        dense = (lambda m: m.toarray()) if sparse_x else np.asarray
        np.testing.assert_array_equal(dense(got.X), dense(want.X))
        pd.testing.assert_frame_equal(got.obsm["proportions"], want.obsm["proportions"])


def test_cells_without_x_name_their_layers():
    cells = _cells(n=200)
    cells.layers["counts"] = cells.X.copy()
    cells.X = None
    with pytest.raises(ValueError, match=r"adata\.X is None .*pass layer= one of adata\.layers: 'counts'"):
        lk.pp.pseudo_spots(cells)
    assert lk.pp.pseudo_spots(cells, layer="counts").n_vars == 12
