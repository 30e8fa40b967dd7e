"""A small synthetic Visium HD Space Ranger folder, for the tests of :func:`loki.io.read_visium_hd`.

There is no real Visium HD output on the test machines. :func:`write_visium_hd` lays out what
spatialdata-io's ``visium_hd`` reader reads (Space Ranger 3 ``outs/``)::

    feature_slice.h5                          attrs['metadata_json'] with hd_layout_json.file_format
    spatial/{scalefactors_json.json, tissue_hires_image.png, tissue_lowres_image.png}
    binned_outputs/square_008um/filtered_feature_bc_matrix.h5
    binned_outputs/square_008um/spatial/{tissue_positions.parquet, scalefactors_json.json}
    binned_outputs/square_016um/...           (one folder per bin size)

with real data laid on a synthetic geometry: the image is a crop of the bundled MOB1 H&E
(``lk.datasets.mob``, the STUtility mouse olfactory bulb, legacy ST) declared to be the scan at
``microns_per_pixel`` (0.5 by default, not its true ~4.4 µm: a bin then spans 16 px, so its patch
shows H&E texture), and the counts of each smallest bin are those of the nearest MOB1 spot, thinned
binomially (``thin``); bins farther than ``reach`` px from every spot are out of tissue (in the
positions file, not in the filtered matrix). Larger bins sum the smallest bins they cover, as Space
Ranger's do. Bin ``(row, col)`` of size ``b`` µm is centred at ``((col + 0.5), (row + 0.5)) * b /
microns_per_pixel`` full-resolution pixels (an axis-aligned grid from the image's corner).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: Crop of the MOB1 H&E (x0, y0, side) in its 1905 px JPEG, on the tissue
MOB1_CROP = (560, 640, 512)


@dataclass
class VisiumHDFixture:
    """What :func:`write_visium_hd` wrote, for the tests to compare with."""

    path: Path
    bin_sizes: tuple[int, ...]
    microns_per_pixel: float
    scalefactors: dict[int, dict] = field(default_factory=dict)
    #: in-tissue barcodes of each bin size, in the order of its filtered matrix
    barcodes: dict[int, list[str]] = field(default_factory=dict)
    #: the Space Ranger positions table of each bin size (every bin of the grid), indexed by barcode
    positions: dict[int, pd.DataFrame] = field(default_factory=dict)
    #: counts of each bin size, in-tissue bins x genes, rows in ``barcodes`` order
    counts: dict[int, np.ndarray] = field(default_factory=dict)
    gene_names: list[str] = field(default_factory=list)
    gene_ids: list[str] = field(default_factory=list)
    image: np.ndarray | None = None  # the full-resolution (y, x, 3) uint8 crop


def barcode(bin_um: int, row: int, col: int) -> str:
    """Space Ranger's barcode of a bin: ``s_008um_00012_00034-1``."""
    return f"s_{bin_um:03d}um_{row:05d}_{col:05d}-1"


def write_10x_h5(
    path: Path,
    counts: np.ndarray,
    barcodes: list[str],
    gene_names: list[str],
    gene_ids: list[str],
    *,
    library_id: str = "hd_fixture",
) -> None:
    """A 10x feature-barcode matrix (HDF5, format v3): ``matrix/{data,indices,indptr,shape,barcodes,features}``.

    The matrix is stored genes x barcodes in CSC (one column per barcode), as Cell Ranger and Space
    Ranger write it.
    """
    import h5py
    import scipy.sparse as sp

    csc = sp.csc_matrix(np.asarray(counts).T.astype(np.int32))  # genes x barcodes
    n_genes = len(gene_names)
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["chemistry_description"] = np.bytes_("Visium HD v1")
        f.attrs["software_version"] = np.bytes_("spaceranger-3.0.0 (synthetic fixture)")
        m = f.create_group("matrix")
        m.create_dataset("data", data=csc.data.astype(np.int32))
        m.create_dataset("indices", data=csc.indices.astype(np.int64))
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        m.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes]))
        feats = m.create_group("features")
        feats.create_dataset("name", data=np.array([g.encode() for g in gene_names]))
        feats.create_dataset("id", data=np.array([g.encode() for g in gene_ids]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * n_genes))
        feats.create_dataset("genome", data=np.array([b"mm10"] * n_genes))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def _feature_slice(path: Path) -> None:
    """``feature_slice.h5`` with the metadata spatialdata-io reads (file format 1.0, identity transforms)."""
    import h5py

    eye = np.eye(3).ravel().tolist()
    layout = {"file_format": "1.0", "transform": eye}
    metadata = {
        "hd_layout_json": json.dumps(layout),
        "transform_matrices": {
            k: eye
            for k in (
                "cytassist_colrow_to_spot_colrow",
                "spot_colrow_to_cytassist_colrow",
                "microscope_colrow_to_spot_colrow",
                "spot_colrow_to_microscope_colrow",
            )
        },
    }
    with h5py.File(path, "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)


def _mob1():
    """Counts (spots x genes, int), spot centres in crop pixels, gene names and ids, the H&E crop."""
    import loki as lk

    sdata = lk.datasets.mob("MOB1")
    table = sdata.tables["MOB1"]
    x0, y0, side = MOB1_CROP
    image = np.asarray(sdata.images["MOB1_image"]["scale0"]["image"].values)[
        :, y0 : y0 + side, x0 : x0 + side
    ]
    counts = np.rint(table.X.toarray()).astype(np.int64)
    xy = np.asarray(table.obsm["spatial"], dtype=np.float64) - [x0, y0]
    return counts, xy, list(table.var_names), list(table.var["gene_ids"]), image.transpose(1, 2, 0).copy()


def _resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def write_visium_hd(
    path: str | Path,
    *,
    bin_sizes: tuple[int, ...] = (8, 16),
    microns_per_pixel: float = 0.5,
    hires_scalef: float = 0.5,
    lowres_scalef: float = 0.125,
    images: bool = True,
    fullres_image: str | None = None,
    thin: float = 0.1,
    reach: float = 24.0,
    seed: int = 0,
) -> VisiumHDFixture:
    """Write the synthetic Visium HD folder described in the module docstring to ``path``.

    Parameters
    ----------
    path
        Folder to create (Space Ranger's ``outs/``).
    bin_sizes
        Bin sizes (µm) to write, each a multiple of the smallest.
    microns_per_pixel
        Declared size of a full-resolution pixel (the MOB1 crop's pixels).
    hires_scalef, lowres_scalef
        Scale factors of the hires / lowres PNGs (from full resolution).
    images
        Write the hires and lowres PNGs in ``spatial/``.
    fullres_image
        Also write the full-resolution crop at this path relative to the folder: a TIFF (``.tif``,
        ``.tiff``, ``.btf``) tiled 128 x 128 px, zlib-compressed, as scanners write them; else by PIL
        (e.g. a PNG).
    thin
        Each count of the nearest MOB1 spot is kept in a smallest bin with this probability.
    reach
        Smallest bins whose centre lies farther than this (full-resolution px) from every MOB1 spot
        are out of tissue.
    seed
        Seed of the thinning and of the barcode order of the matrices.
    """
    from PIL import Image
    from scipy.spatial import cKDTree

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bin_sizes = tuple(sorted(bin_sizes))
    rng = np.random.default_rng(seed)
    spot_counts, spot_xy, names, ids, crop = _mob1()
    side = crop.shape[0]
    out = VisiumHDFixture(path, bin_sizes, microns_per_pixel, gene_names=names, gene_ids=ids, image=crop)

    # the smallest bins: counts of the nearest MOB1 spot, thinned
    base = bin_sizes[0]
    base_px = base / microns_per_pixel
    n = int(side // base_px)
    rows, cols = np.divmod(np.arange(n * n), n)
    centres = np.c_[(cols + 0.5) * base_px, (rows + 0.5) * base_px]
    dist, nearest = cKDTree(spot_xy).query(centres)
    tissue = dist <= reach
    base_counts = np.zeros((n * n, len(names)), dtype=np.int64)
    base_counts[tissue] = rng.binomial(spot_counts[nearest[tissue]], thin)

    _feature_slice(path / "feature_slice.h5")
    for bin_um in bin_sizes:
        factor = bin_um // base
        if factor * base != bin_um:
            raise ValueError(f"bin size {bin_um} is not a multiple of the smallest, {base}")
        m = n // factor
        r, c = np.divmod(np.arange(m * m), m)
        # each bin sums the factor x factor smallest bins it covers
        child = ((rows // factor) < m) & ((cols // factor) < m)
        parent = (rows // factor) * m + cols // factor
        counts = np.zeros((m * m, len(names)), dtype=np.int64)
        np.add.at(counts, parent[child], base_counts[child])
        in_tissue = np.zeros(m * m, dtype=bool)
        in_tissue[parent[child & tissue]] = True
        bin_px = bin_um / microns_per_pixel
        codes = [barcode(bin_um, int(i), int(j)) for i, j in zip(r, c, strict=True)]
        positions = pd.DataFrame(
            {
                "barcode": codes,
                "in_tissue": in_tissue.astype(np.int32),
                "array_row": r.astype(np.int32),
                "array_col": c.astype(np.int32),
                "pxl_row_in_fullres": (r + 0.5) * bin_px,
                "pxl_col_in_fullres": (c + 0.5) * bin_px,
            }
        )
        scalefactors = {
            "spot_diameter_fullres": bin_px,
            "bin_size_um": float(bin_um),
            "microns_per_pixel": microns_per_pixel,
            "regist_target_img_scalef": hires_scalef,
            "tissue_lowres_scalef": lowres_scalef,
            "fiducial_diameter_fullres": 4 * bin_px,
            "tissue_hires_scalef": hires_scalef,
        }
        folder = path / "binned_outputs" / f"square_{bin_um:03d}um"
        (folder / "spatial").mkdir(parents=True)
        positions.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))
        # the filtered matrix: in-tissue bins, in a shuffled order (positions are matched by barcode)
        keep = rng.permutation(np.flatnonzero(in_tissue))
        write_10x_h5(
            folder / "filtered_feature_bc_matrix.h5", counts[keep], [codes[i] for i in keep], names, ids
        )
        out.scalefactors[bin_um] = scalefactors
        out.barcodes[bin_um] = [codes[i] for i in keep]
        out.positions[bin_um] = positions.set_index("barcode")
        out.counts[bin_um] = counts[keep]

    spatial = path / "spatial"
    spatial.mkdir()
    (spatial / "scalefactors_json.json").write_text(json.dumps(out.scalefactors[base], indent=2))
    if images:
        Image.fromarray(_resized(crop, hires_scalef)).save(spatial / "tissue_hires_image.png")
        Image.fromarray(_resized(crop, lowres_scalef)).save(spatial / "tissue_lowres_image.png")
    if fullres_image is not None:
        file = path / fullres_image
        file.parent.mkdir(parents=True, exist_ok=True)
        if file.suffix.lower() in (".tif", ".tiff", ".btf"):
            import tifffile

            tifffile.imwrite(file, crop, tile=(128, 128), photometric="rgb", compression="zlib")
        else:
            Image.fromarray(crop).save(file)
    return out
