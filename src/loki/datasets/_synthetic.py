"""Synthetic tissue sections with ground truth, and known transforms of real or synthetic sections.

The generator places spots on a hexagonal (or square) grid inside an irregular, tissue-like outline,
draws spatially smooth regions and cell-type proportions, and samples counts from per-type expression
profiles mixed by those proportions (gamma-Poisson, i.e. negative binomial). A matching single-cell
reference is drawn from the same profiles. :func:`transform_section` moves a section by a known
rotation / translation / mirror / scale / smooth warp, drops spots and thins counts, and returns the
true coordinates of every kept spot in the original frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from loki._keys import Key
from loki._utils import as_rng, check_array_finite, check_obsm_key, is_real
from loki._utils._spacing import nearest_spot_distance

__all__ = ["SectionTransform", "synthetic_reference", "synthetic_tissue", "transform_section"]


def _checked(
    name: str,
    value,
    *,
    integer: bool = False,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
):
    """``value`` as an int (``integer``) or a finite float within the bounds, else a ValueError naming ``name``."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    kind = "an integer" if integer else "a finite number"
    wanted = f"{' and '.join(bounds)} ({kind})" if bounds else kind
    ok = is_real(value) and np.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {wanted}, got {value!r}.")
    return int(value) if integer else float(value)


def _grid(n_target: int, layout: str, spacing: float) -> np.ndarray:
    """A square-ish patch of a hex or square lattice with comfortably more than ``n_target`` points."""
    side = int(np.ceil(np.sqrt(n_target * 4.0))) + 4
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    if layout == "hex":
        x = (j + 0.5 * (i % 2)) * spacing
        y = i * spacing * np.sqrt(3.0) / 2.0
    elif layout == "square":
        x = j * spacing
        y = i * spacing
    else:
        raise ValueError(f"layout must be 'hex' or 'square', got {layout!r}.")
    xy = np.column_stack([x.ravel(), y.ravel()]).astype(float)
    return xy - xy.mean(axis=0)


def _outline_radius(theta: np.ndarray, rng: np.random.Generator, n_harmonics: int = 5) -> np.ndarray:
    """A smooth, irregular star-shaped outline r(theta) around 1."""
    amp = rng.uniform(0.03, 0.12, n_harmonics) / np.arange(1, n_harmonics + 1) ** 0.5
    phase = rng.uniform(0, 2 * np.pi, n_harmonics)
    k = np.arange(2, n_harmonics + 2)
    return 1.0 + (amp[:, None] * np.cos(k[:, None] * theta[None, :] + phase[:, None])).sum(axis=0)


def _smooth_fields(
    xy: np.ndarray, n_fields: int, length_scale: float, rng: np.random.Generator
) -> np.ndarray:
    """``n_fields`` smooth random fields at ``xy`` (random Fourier features of a Gaussian process)."""
    n_features = 64
    freq = rng.normal(0.0, 1.0 / length_scale, size=(n_fields, n_features, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(n_fields, n_features))
    out = np.empty((len(xy), n_fields))
    for k in range(n_fields):  # one field at a time keeps memory at n x n_features
        out[:, k] = np.sqrt(2.0 / n_features) * np.cos(xy @ freq[k].T + phase[k]).sum(axis=1)
    return out


def _region_scores(xy: np.ndarray, n_regions: int, extent: float, rng: np.random.Generator) -> np.ndarray:
    """Score of each spot for each region: distance to spread-out centres plus a smooth random field."""
    centres = [int(rng.integers(len(xy)))]
    dist = np.linalg.norm(xy - xy[centres[0]], axis=1)
    for _ in range(1, n_regions):
        centres.append(int(dist.argmax()))
        dist = np.minimum(dist, np.linalg.norm(xy - xy[centres[-1]], axis=1))
    scale = extent / np.sqrt(n_regions)
    d = np.linalg.norm(xy[:, None, :] - xy[centres][None, :, :], axis=2) / scale
    return -d + 0.15 * _smooth_fields(xy, n_regions, length_scale=extent / 4.0, rng=rng)


def _type_profiles(n_types: int, n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """Per-type mean expression (rows sum to 1): shared log-normal base plus type markers."""
    base = rng.lognormal(mean=0.0, sigma=1.0, size=n_genes)
    log_fc = rng.normal(0.0, 0.3, size=(n_types, n_genes))
    n_markers = max(1, n_genes // (2 * n_types))
    for t in range(n_types):
        markers = rng.choice(n_genes, size=n_markers, replace=False)
        log_fc[t, markers] += rng.uniform(1.5, 3.0, size=n_markers)
    prof = base[None, :] * np.exp(log_fc)
    return prof / prof.sum(axis=1, keepdims=True)


def _nb_counts(mean: np.ndarray, dispersion: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Negative binomial counts with the given means (gamma-Poisson with shape 1/dispersion; 0: Poisson)."""
    if dispersion == 0:
        return sp.csr_matrix(rng.poisson(mean).astype(np.float32))
    shape = 1.0 / dispersion
    lam = rng.gamma(shape, mean / shape)
    return sp.csr_matrix(rng.poisson(lam).astype(np.float32))


def synthetic_tissue(
    n_spots: int = 2000,
    n_genes: int = 300,
    n_cell_types: int = 6,
    *,
    layout: str = "hex",
    spot_spacing: float = 1.0,
    n_regions: int | None = None,
    depth: float = 2000.0,
    dispersion: float = 0.2,
    seed: int | np.random.Generator | None = 0,
) -> AnnData:
    """Simulate a spatial transcriptomics section with known cell-type proportions.

    Parameters
    ----------
    n_spots
        Number of spots inside the tissue outline.
    n_genes
        Number of genes, named ``Gene0001``, ``Gene0002``, ...
    n_cell_types
        Number of cell types, named ``Type1``, ...
    layout
        ``"hex"`` (Visium-like) or ``"square"`` (legacy ST-like) lattice.
    spot_spacing
        Centre-to-centre distance of neighbouring spots, in coordinate units.
    n_regions
        Number of spatial regions; defaults to ``n_cell_types``.
    depth
        Median library size per spot (> 0): each spot's expected library size is ``depth`` times a log-normal
        factor (sigma 0.3, median 1), so the mean library size is about ``1.046 * depth``.
    dispersion
        Negative binomial dispersion (>= 0; 0 gives Poisson counts).
    seed
        Seed or Generator.

    Returns
    -------
    AnnData of spots x genes with

    - ``.X``: CSR float32 counts,
    - ``.obsm['spatial']``: spot centres,
    - ``.obsm['proportions']``: DataFrame of true cell-type proportions (rows sum to 1),
    - ``.obs['region']``: categorical region label (spatially contiguous, smooth boundaries),
    - ``.uns['synthetic']``: ``profiles`` (types x genes, rows sum to 1), ``cell_types``,
      ``spot_spacing``, ``layout``, ``depth``, ``dispersion``.

    """
    n_spots = _checked("n_spots", n_spots, integer=True, low=3)
    n_genes = _checked("n_genes", n_genes, integer=True, low=1)
    n_cell_types = _checked("n_cell_types", n_cell_types, integer=True, low=1)
    spot_spacing = _checked("spot_spacing", spot_spacing, low=0, low_open=True)
    n_regions = _checked("n_regions", n_cell_types if n_regions is None else n_regions, integer=True, low=1)
    depth = _checked("depth", depth, low=0, low_open=True)
    dispersion = _checked("dispersion", dispersion, low=0)
    rng = as_rng(seed)

    grid = _grid(n_spots, layout, spot_spacing)
    theta = np.arctan2(grid[:, 1], grid[:, 0])
    rho = np.linalg.norm(grid, axis=1) / _outline_radius(theta, rng)
    keep = np.sort(np.argsort(rho, kind="stable")[:n_spots])
    xy = grid[keep]
    xy = xy - xy.min(axis=0) + spot_spacing

    extent = float(np.ptp(xy, axis=0).max())
    fields = _region_scores(xy, n_regions, extent, rng)
    region = fields.argmax(axis=1)
    comp = rng.dirichlet(np.full(n_cell_types, 0.5), size=n_regions)
    dominant = rng.permutation(np.resize(np.arange(n_cell_types), n_regions))
    comp[np.arange(n_regions), dominant] += 1.0
    comp /= comp.sum(axis=1, keepdims=True)
    weights = np.exp(4.0 * (fields - fields.max(axis=1, keepdims=True)))
    weights /= weights.sum(axis=1, keepdims=True)
    props = weights @ comp
    noise = rng.dirichlet(np.full(n_cell_types, 1.0), size=n_spots)
    props = 0.9 * props + 0.1 * noise
    props /= props.sum(axis=1, keepdims=True)

    profiles = _type_profiles(n_cell_types, n_genes, rng)
    library = depth * rng.lognormal(0.0, 0.3, size=n_spots)
    counts = _nb_counts(library[:, None] * (props @ profiles), dispersion, rng)

    types = [f"Type{t + 1}" for t in range(n_cell_types)]
    obs_names = [f"spot{i:06d}" for i in range(n_spots)]
    width = max(4, len(str(n_genes)))
    genes = [f"Gene{g + 1:0{width}d}" for g in range(n_genes)]
    adata = AnnData(
        X=counts,
        obs=pd.DataFrame(
            {
                "region": pd.Categorical(
                    [f"region{r + 1}" for r in region], [f"region{r + 1}" for r in range(n_regions)]
                )
            },
            index=obs_names,
        ),
        var=pd.DataFrame(index=genes),
    )
    adata.obsm[Key.SPATIAL] = xy
    adata.obsm["proportions"] = pd.DataFrame(props, index=obs_names, columns=types)
    adata.uns["synthetic"] = {
        "profiles": profiles,
        "cell_types": types,
        "spot_spacing": float(spot_spacing),
        "layout": layout,
        "depth": float(depth),
        "dispersion": float(dispersion),
    }
    return adata


def synthetic_reference(
    adata_synth: AnnData,
    n_cells_per_type: int = 200,
    *,
    depth: float = 1000.0,
    seed: int | np.random.Generator | None = 0,
) -> AnnData:
    """Single cells drawn from the type profiles of a :func:`synthetic_tissue` section.

    Parameters
    ----------
    adata_synth
        Output of :func:`synthetic_tissue` (needs ``.uns['synthetic']``).
    n_cells_per_type
        Cells per cell type.
    depth
        Median library size per cell (a log-normal factor with sigma 0.3 and median 1 times ``depth``,
        as in :func:`synthetic_tissue`; the mean is about ``1.046 * depth``).
    seed
        Seed or Generator.

    Returns
    -------
    AnnData of cells x genes (CSR counts, same ``var_names``) with ``.obs['cell_type']`` categorical.

    """
    if "synthetic" not in adata_synth.uns:
        raise KeyError(
            "'synthetic' not found in adata.uns; available: "
            f"{', '.join(map(repr, adata_synth.uns.keys())) or 'none'}. Pass the output of synthetic_tissue()."
        )
    n_cells_per_type = _checked("n_cells_per_type", n_cells_per_type, integer=True, low=1)
    depth = _checked("depth", depth, low=0, low_open=True)
    rng = as_rng(seed)
    meta = adata_synth.uns["synthetic"]
    profiles = np.asarray(meta["profiles"])
    types = list(meta["cell_types"])
    labels = np.repeat(np.arange(len(types)), n_cells_per_type)
    library = depth * rng.lognormal(0.0, 0.3, size=len(labels))
    counts = _nb_counts(library[:, None] * profiles[labels], float(meta.get("dispersion", 0.2)), rng)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(np.asarray(types)[labels], categories=types)},
        index=[f"cell{i:06d}" for i in range(len(labels))],
    )
    return AnnData(X=counts, obs=obs, var=pd.DataFrame(index=adata_synth.var_names.copy()))


@dataclass
class SectionTransform:
    """Ground truth of :func:`transform_section`.

    Attributes
    ----------
    coords
        (n_kept, 2) true coordinates of every kept spot in the original frame.
    matrix
        3x3 homogeneous matrix of the rigid/similarity part, original frame -> moved frame
        (applied after the warp).
    kept
        Integer positions of the kept spots in the original object.
    spot_spacing
        Median nearest-neighbour distance of the original spots (the error unit).
    params
        The arguments used.

    """

    coords: np.ndarray
    matrix: np.ndarray
    kept: np.ndarray
    spot_spacing: float
    params: dict = field(default_factory=dict)


def similarity_matrix(
    rotation_deg: float, translation: tuple[float, float], mirror: bool, scale: float, center: np.ndarray
) -> np.ndarray:
    """3x3 matrix: mirror x about ``center``, scale and rotate about ``center``, then translate."""
    t = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    lin = scale * rot @ (np.diag([-1.0, 1.0]) if mirror else np.eye(2))
    out = np.eye(3)
    out[:2, :2] = lin
    out[:2, 2] = center - lin @ center + np.asarray(translation, dtype=float)
    return out


def _warp(xy: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth displacement field with maximum magnitude ``amplitude`` over the given points."""
    extent = float(np.ptp(xy, axis=0).max()) or 1.0
    disp = _smooth_fields(xy - xy.mean(axis=0), 2, length_scale=extent / 2.0, rng=rng)
    peak = np.linalg.norm(disp, axis=1).max()
    return disp * (amplitude / peak) if peak > 0 else disp


def _check_thinnable(adata: AnnData) -> list[str]:
    """Require raw counts in ``.X`` and layers equal to it; return the names of those layers."""
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    bad = ~(np.isfinite(values) & (values >= 0) & (values == np.round(values)))
    if bad.any():
        shown = ", ".join(f"{v:.4g}" for v in values[bad].ravel()[:3])
        raise ValueError(
            "thin_counts < 1 thins raw counts, but .X holds values that are not non-negative integers "
            f"(e.g. {shown}; normalised or scaled data?). Pass an AnnData with the raw counts in .X "
            "(e.g. adata.X = adata.layers['counts']) and normalise after thinning."
        )
    other = [name for name, layer in adata.layers.items() if not _same_matrix(layer, adata.X)]
    if other:
        raise ValueError(
            f"thin_counts < 1 thins the counts in .X, but layers {other} hold other values that would no "
            "longer match them; delete those layers and recompute them from the thinned counts."
        )
    return list(adata.layers.keys())


def _same_matrix(a, b) -> bool:
    if a.shape != b.shape:
        return False
    if sp.issparse(a) or sp.issparse(b):
        diff = sp.csr_matrix(a) - sp.csr_matrix(b)
        return diff.count_nonzero() == 0
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _thin(x, p: float, rng: np.random.Generator):
    """Binomial thinning of a count matrix (sparse stays sparse, dense becomes float32)."""
    if sp.issparse(x):
        x = x.tocsr(copy=True)
        x.data = rng.binomial(np.round(x.data).astype(np.int64), p).astype(x.dtype)
        x.eliminate_zeros()
        return x
    return rng.binomial(np.round(np.asarray(x)).astype(np.int64), p).astype(np.float32)


def transform_section(
    adata: AnnData,
    *,
    rotation_deg: float = 0.0,
    translation: tuple[float, float] = (0.0, 0.0),
    mirror: bool = False,
    scale: float = 1.0,
    warp: float = 0.0,
    drop_fraction: float = 0.0,
    thin_counts: float = 1.0,
    spatial_key: str = Key.SPATIAL,
    seed: int | np.random.Generator | None = 0,
) -> tuple[AnnData, SectionTransform]:
    """Move a section by a known transform (to test alignment against ground truth).

    The moved coordinates are ``A @ (x + warp(x))`` with ``A`` a mirror (x axis, about the centroid),
    scale and rotation about the centroid followed by ``translation``.

    Parameters
    ----------
    adata
        Section with ``.obsm[spatial_key]`` (synthetic or real).
    rotation_deg
        Counter-clockwise rotation in degrees.
    translation
        Shift in coordinate units.
    mirror
        Flip the x axis before rotating.
    scale
        Isotropic scale factor.
    warp
        Maximum displacement of a smooth random warp, in spot spacings (median nearest-neighbour
        distance).
    drop_fraction
        Fraction of spots removed at random.
    thin_counts
        Binomial thinning probability of every count (1 keeps all counts). Thinning needs raw counts
        (non-negative integers) in ``.X``; layers holding the same counts (e.g. ``layers['counts']``) are
        replaced by the thinned counts. Any other layer (normalised values, say) would no longer match
        the counts, so it is refused: drop it and recompute it from the thinned counts.
    spatial_key
        Key of the coordinates in ``.obsm``.
    seed
        Seed or Generator.

    Returns
    -------
    ``(moved, truth)``: a new AnnData with the kept spots and moved ``.obsm[spatial_key]``
    (other ``.obsm`` entries are kept; with ``thin_counts < 1``, ``.X`` and the layers equal to it
    thinned), and a :class:`SectionTransform`.

    Raises
    ------
    ValueError
        For out-of-range parameters, and with ``thin_counts < 1`` when ``.X`` does not hold raw counts
        or a layer differs from ``.X``; nothing is computed then.

    """
    check_obsm_key(adata, spatial_key)
    xy = np.asarray(adata.obsm[spatial_key], dtype=float)[:, :2]
    check_array_finite(xy, f"adata.obsm[{spatial_key!r}]")
    rotation_deg = _checked("rotation_deg", rotation_deg)
    if np.shape(translation) != (2,):
        raise ValueError(f"translation must be two numbers (x, y), got {translation!r}.")
    translation = tuple(_checked(f"translation[{i}]", v) for i, v in enumerate(translation))
    scale = _checked("scale", scale, low=0, low_open=True)
    warp = _checked("warp", warp, low=0)
    drop_fraction = _checked("drop_fraction", drop_fraction, low=0, high=1, high_open=True)
    thin_counts = _checked("thin_counts", thin_counts, low=0, low_open=True, high=1)
    if thin_counts < 1.0:
        counts_layers = _check_thinnable(adata)
    rng = as_rng(seed)

    n = len(xy)
    n_keep = max(3, round(n * (1.0 - drop_fraction)))
    kept = np.sort(rng.choice(n, size=n_keep, replace=False)) if n_keep < n else np.arange(n)
    spacing = nearest_spot_distance(xy) or 1.0
    warped = xy + _warp(xy, warp * spacing, rng) if warp > 0 else xy.copy()
    mat = similarity_matrix(rotation_deg, translation, mirror, scale, xy.mean(axis=0))
    moved_xy = warped @ mat[:2, :2].T + mat[:2, 2]

    moved = adata[kept].copy()
    if thin_counts < 1.0:
        moved.X = _thin(moved.X, thin_counts, rng)
        for name in counts_layers:
            moved.layers[name] = moved.X.copy()
    moved.obsm[spatial_key] = moved_xy[kept]
    truth = SectionTransform(
        coords=xy[kept].copy(),
        matrix=mat,
        kept=kept,
        spot_spacing=spacing,
        params={
            "rotation_deg": float(rotation_deg),
            "translation": tuple(float(v) for v in translation),
            "mirror": bool(mirror),
            "scale": float(scale),
            "warp": float(warp),
            "drop_fraction": float(drop_fraction),
            "thin_counts": float(thin_counts),
        },
    )
    return moved, truth
