"""Pseudo-spots: pool single-cell-resolution spatial data into a hexagonal grid of round spots.

Pooling labelled cells gives spots whose cell-type proportions are known exactly, the ground truth
for :func:`loki.tl.decompose` (Xenium, MERFISH, osmFISH, Visium HD bins).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scipy.spatial import cKDTree

from loki._keys import Key
from loki._logging import logger
from loki._utils import (
    as_rng,
    check_array_finite,
    check_labelled,
    check_obs_key,
    check_obsm_key,
    loki_uns,
    require_keys,
)
from loki._utils._backed import read_matrix
from loki._utils._labels import label_categories

#: Visium: 55 um spots, 100 um centre to centre.
_VISIUM_SPACING_RATIO = 100.0 / 55.0


def hex_grid(xmin: float, ymin: float, xmax: float, ymax: float, spacing: float) -> np.ndarray:
    """Centres of a hexagonal grid covering a box; rows ``spacing * sqrt(3) / 2`` apart, odd rows shifted by half."""
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0, got {spacing}.")
    row_step = spacing * np.sqrt(3) / 2
    # one row and column past the box, kept where their hexagonal cells (half-width spacing / 2,
    # reaching spacing / sqrt(3) down) still hold points of it: edge points may belong to them
    n_rows = int(np.floor((ymax - ymin) / row_step)) + 2
    n_cols = int(np.floor((xmax - xmin) / spacing)) + 2
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    x = xmin + cols * spacing + (rows % 2) * spacing / 2
    y = ymin + rows * row_step
    centres = np.column_stack([x.ravel(), y.ravel()])
    return centres[(centres[:, 0] < xmax + spacing / 2) & (centres[:, 1] < ymax + spacing / np.sqrt(3))]


def disc_members(coords: np.ndarray, centres: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Every (spot, point) pair with the point inside the spot's disc (``radius``), sorted by point.

    A point between spots is in no pair; where discs overlap, a point is in one pair per disc.
    """
    pairs = cKDTree(centres).sparse_distance_matrix(cKDTree(coords), radius, output_type="ndarray")
    order = np.lexsort((pairs["i"], pairs["j"]))
    return pairs["i"][order], pairs["j"][order]


def pseudo_spots(
    adata: AnnData,
    *,
    diameter_um: float = 55.0,
    spacing_um: float | None = None,
    cell_type_key: str | None = "cell_type",
    spatial_key: str = Key.SPATIAL,
    microns_per_unit: float | None = None,
    layer: str | None = None,
    min_cells: int = 1,
    truth_key: str = Key.TRUE_PROPORTIONS,
) -> AnnData:
    """Pool cells into round pseudo-spots on a hexagonal grid.

    Every cell whose centre lies inside a spot's disc is counted in that spot; cells between
    spots are left out, as on a Visium slide. With ``spacing_um < diameter_um`` the discs overlap
    and a cell inside several discs is counted in each of them (so ``.X`` then sums to more than
    the cells hold).

    Parameters
    ----------
    adata
        Cells x genes counts with cell centres in ``.obsm[spatial_key]`` (also an AnnData opened
        with ``backed="r"``: its matrix is read whole).
    diameter_um
        Spot diameter in micrometres (Visium 55, legacy ST 100).
    spacing_um
        Centre-to-centre distance; default ``diameter_um * 100 / 55`` (the Visium layout).
    cell_type_key
        Column of ``.obs`` with cell types; ``None`` skips the proportions. The columns of the truth
        follow the declared categories of a categorical column (as :func:`loki.tl.decompose` orders
        its proportions; a declared type without cells gets a column of zeros), otherwise the
        sorted labels.
    spatial_key
        Key of the cell coordinates in ``.obsm``.
    microns_per_unit
        Micrometres per coordinate unit; default ``adata.uns['loki']['microns_per_unit']`` or 1.
    layer
        Layer summed instead of ``.X``.
    min_cells
        Spots with fewer cells are dropped.
    truth_key
        ``.obsm`` key of the exact proportions.

    Returns
    -------
    A new AnnData, spots x genes, with

    ``.X``
        summed counts (sparse CSR when the input is sparse).
    ``.obs['n_cells']``
        number of cells pooled in each spot.
    ``.obsm['spatial']``
        spot centres, in the units of the input coordinates.
    ``.obsm[truth_key]``
        DataFrame spots x cell types of exact proportions (rows sum to 1), with ``cell_type_key``;
        columns ordered as described there.
    ``.uns['loki']``
        ``spot_diameter_um``, ``spot_spacing_um``, ``microns_per_unit``.

    """
    check_obsm_key(adata, spatial_key)
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"adata.obsm[{spatial_key!r}] must be (n_cells, 2), got {coords.shape}.")
    coords = coords[:, :2]
    check_array_finite(coords, f"adata.obsm[{spatial_key!r}]")
    if cell_type_key is not None:
        check_obs_key(adata, cell_type_key)
        check_labelled(adata.obs[cell_type_key], f"adata.obs[{cell_type_key!r}]", "cells")
    if layer is not None:
        require_keys(adata.layers, layer, "adata.layers")
    elif adata.X is None:
        raise ValueError(
            "adata.X is None (no expression matrix); pass layer= one of adata.layers: "
            f"{', '.join(map(repr, adata.layers)) or 'none'}."
        )
    if diameter_um <= 0:
        raise ValueError(f"diameter_um must be > 0, got {diameter_um}.")
    if microns_per_unit is None:
        microns_per_unit = float(loki_uns(adata).get("microns_per_unit", 1.0))
    if microns_per_unit <= 0:
        raise ValueError(f"microns_per_unit must be > 0, got {microns_per_unit}.")
    spacing_um = diameter_um * _VISIUM_SPACING_RATIO if spacing_um is None else float(spacing_um)
    if spacing_um <= 0:
        raise ValueError(f"spacing_um must be > 0, got {spacing_um}.")
    if adata.n_obs == 0:
        raise ValueError("adata has no cells.")

    radius = diameter_um / 2 / microns_per_unit
    spacing = spacing_um / microns_per_unit
    # A disc of radius <= spacing / 2 lies inside its centre's hexagonal cell, which hex_grid covers
    # for every point of the box; larger, overlapping discs reach up to a radius past it.
    pad = 0.0 if radius <= spacing / 2 else radius
    lo, hi = coords.min(axis=0) - pad, coords.max(axis=0) + pad
    n_grid = ((hi[0] - lo[0]) / spacing + 2) * ((hi[1] - lo[1]) / (spacing * np.sqrt(3) / 2) + 2)
    if n_grid > 5e7:
        raise ValueError(
            f"The grid would hold ~{n_grid:.2g} spots: with microns_per_unit={microns_per_unit}, the tissue "
            f"spans {(hi - lo).max() * microns_per_unit:.3g} um. Check microns_per_unit."
        )
    centres = hex_grid(lo[0], lo[1], hi[0], hi[1], spacing)
    spot, member = disc_members(coords, centres, radius)
    n_cells = np.bincount(spot, minlength=len(centres))
    keep = np.flatnonzero(n_cells >= max(min_cells, 1))
    if len(keep) == 0:
        raise ValueError(
            f"No spot holds {max(min_cells, 1)} or more cells: spots of {diameter_um} um with "
            f"microns_per_unit={microns_per_unit} may be far smaller than the cell spacing."
        )
    new_index = np.full(len(centres), -1)
    new_index[keep] = np.arange(len(keep))
    spot = new_index[spot]
    member = member[spot >= 0]
    spot = spot[spot >= 0]
    # Pooling matrix: spots x cells, a 1 for every cell in every spot's disc.
    pool = sparse.csr_matrix((np.ones(len(member)), (spot, member)), shape=(len(keep), adata.n_obs))

    # an AnnData opened with backed="r" holds an on-disk matrix, which scipy cannot multiply
    x = read_matrix(adata.X if layer is None else adata.layers[layer])
    summed = pool @ x
    if not sparse.issparse(x):
        summed = np.asarray(summed)
    else:
        summed = sparse.csr_matrix(summed)

    names = pd.Index([f"pseudo_{i}" for i in range(len(keep))])
    out = AnnData(
        X=summed,
        obs=pd.DataFrame({"n_cells": n_cells[keep].astype(np.int64)}, index=names),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    out.obsm[Key.SPATIAL] = centres[keep]
    if cell_type_key is not None:
        cat = label_categories(adata.obs[cell_type_key])
        onehot = sparse.csr_matrix(
            (np.ones(adata.n_obs), (np.arange(adata.n_obs), cat.codes)),
            shape=(adata.n_obs, len(cat.categories)),
        )
        counts = np.asarray((pool @ onehot).todense())
        out.obsm[truth_key] = pd.DataFrame(
            counts / counts.sum(axis=1, keepdims=True),
            index=names,
            columns=pd.Index(list(cat.categories), dtype=object),
        )
    out.uns[Key.UNS] = {
        "spot_diameter_um": float(diameter_um),
        "spot_spacing_um": float(spacing_um),
        "microns_per_unit": float(microns_per_unit),
    }
    logger.info(
        "pooled %d of %d cells into %d pseudo-spots of %g um",
        len(np.unique(member)),
        adata.n_obs,
        len(keep),
        diameter_um,
    )
    return out


def scatter_cells_in_regions(
    labels: np.ndarray,
    *,
    n_regions: int = 6,
    size: float = 2000.0,
    concentration: float = 0.5,
    seed: int | np.random.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place labelled cells (which have no coordinates) into a spatial pattern of regions.

    The square ``[0, size)^2`` is cut into ``n_regions`` Voronoi regions around random seeds; each
    region gets a random cell-type composition (Dirichlet with ``concentration``). Each cell picks
    a region with probability proportional to its type's share there times the region's area, then
    a uniform position inside it (by rejection). Used to build pseudo-spots with exact truth from
    a dissociated reference.

    Parameters
    ----------
    labels
        ``(n_cells,)`` cell types.
    n_regions
        Number of regions.
    size
        Side of the square, in the output units (micrometres).
    concentration
        Dirichlet concentration of region compositions (small: regions dominated by few types).
    seed
        Seed.

    Returns
    -------
    ``(n_cells, 2)`` coordinates, ``(n_cells,)`` region of each cell, ``(n_regions, 2)`` region seeds.

    """
    rng = as_rng(seed)
    cat = pd.Categorical(np.asarray(labels).astype(str))
    n_types = len(cat.categories)
    seeds = rng.uniform(0, size, size=(n_regions, 2))
    tree = cKDTree(seeds)
    # Region areas estimated on a fine grid.
    g = (np.arange(200) + 0.5) * size / 200
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    area = np.bincount(tree.query(grid)[1], minlength=n_regions) / len(grid)
    composition = rng.dirichlet(np.full(n_types, concentration), size=n_regions)  # regions x types
    weight = composition * area[:, None]
    prob = weight / np.maximum(weight.sum(axis=0, keepdims=True), 1e-300)  # P(region | type)
    region = _draw_regions(prob, cat.codes, rng)
    coords = np.empty((len(region), 2))
    todo = np.arange(len(region))
    while len(todo):
        cand = rng.uniform(0, size, size=(len(todo), 2))
        ok = tree.query(cand)[1] == region[todo]
        coords[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return coords, region, seeds


def _draw_regions(prob: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A region for each cell, drawn from column ``codes[i]`` of ``prob`` (regions x types).

    The draws of ``rng.choice(n_regions, p=prob[:, code])`` cell after cell (one uniform each,
    inverted through the column's cumulative sum), made for all cells at once: the same regions
    from the same seed, without a Python call per cell.
    """
    cdf = np.cumsum(prob, axis=0)
    if not (cdf[-1] > 0).all():
        raise ValueError("Every cell type needs a region it can be placed in (a positive probability).")
    cdf = cdf / cdf[-1]
    uniform = rng.random(len(codes))
    region = np.empty(len(codes), dtype=np.int64)
    for c in np.unique(codes):
        cells = codes == c
        region[cells] = np.searchsorted(cdf[:, c], uniform[cells], side="right")
    return region
