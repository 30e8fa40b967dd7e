"""10x Visium HD reader: one bin size of spatialdata-io's reader, in loki's section layout."""

from __future__ import annotations

import json
import math
import re
import warnings
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loki._keys import Key
from loki._logging import LokiWarning, user_stacklevel

from ._image import CONVERSION_RULES, check_not_sixteen_bit_png
from ._names import check_section_name
from ._visium import (
    _default_dataset_id,
    _h5_gene_names,
    _outs_hint,
    build_section,
    check_folder,
    check_fullres_size,
    safe_section_name,
    section_images,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

_BINNED = "binned_outputs"
_FEATURE_SLICE = "feature_slice.h5"
_POSITIONS = "tissue_positions.parquet"
_SCALEFACTORS = "scalefactors_json.json"
#: The folder spatialdata-io takes the full-resolution image from (Space Ranger does not write it)
_MICROSCOPE_IMAGE = "microscope_image"
#: The columns, in this order, spatialdata-io requires of the positions file
_POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
_SCALEFACTOR_KEYS = (
    "bin_size_um",
    "spot_diameter_fullres",
    "microns_per_pixel",
    "tissue_hires_scalef",
    "tissue_lowres_scalef",
)
#: The Space Ranger images spatialdata-io reads, by the kind in their element's key
_IMAGE_FILES = {
    "hires": "tissue_hires_image.png",
    "lowres": "tissue_lowres_image.png",
    "cytassist": "cytassist_image.tiff",
}
#: Options of spatialdata_io.visium_hd that keep loki's layout (the others are set by the reader)
_PASSED_ON = (
    "filtered_counts_file",
    "bins_as_squares",
    "fullres_image_file",
    "load_all_images",
    "gex_only",
    "imread_kwargs",
    "image_models_kwargs",
    "anndata_kwargs",
)


def _holds(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _check_kwargs(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - set(_PASSED_ON))
    if unknown:
        raise TypeError(
            f"read_visium_hd got unexpected keyword argument(s) {unknown}; it passes on to "
            f"spatialdata_io.visium_hd only {list(_PASSED_ON)} (bin_size and dataset_id are its own; "
            "the others would change the section layout)."
        )


def _check_bin_size(bin_size: Any) -> int:
    if isinstance(bin_size, bool) or not isinstance(bin_size, Integral):
        raise TypeError(f"bin_size must be an int (µm, e.g. 8), got {bin_size!r}: one bin size a call.")
    if bin_size <= 0:
        raise ValueError(f"bin_size must be a positive number of µm (e.g. 8), got {bin_size}.")
    return int(bin_size)


def _feature_slice_prefix(path: Path, dataset_id: str | None) -> str:
    """``""`` for ``feature_slice.h5``, else ``"X_"`` of the one ``X_feature_slice.h5`` (10x's downloads)."""
    if (path / _FEATURE_SLICE).is_file():
        return ""
    prefixed = sorted(p.name for p in path.glob(f"*_{_FEATURE_SLICE}") if p.is_file())
    if dataset_id is not None and f"{dataset_id}_{_FEATURE_SLICE}" in prefixed:
        return f"{dataset_id}_"
    if len(prefixed) == 1:
        return prefixed[0].removesuffix(_FEATURE_SLICE)
    if prefixed:
        raise FileNotFoundError(
            f"{str(path)!r} holds several feature slice files {prefixed} and no {_FEATURE_SLICE!r}; pass "
            f"dataset_id= naming one (the X of X_{_FEATURE_SLICE})."
        )
    # a sample folder passed instead of the output folder inside it
    in_outs = [_FEATURE_SLICE, *sorted(p.name for p in (path / "outs").glob(f"*_{_FEATURE_SLICE}"))]
    hint = next(filter(None, (_outs_hint(path, name) for name in in_outs)), "")
    raise FileNotFoundError(
        f"No {_FEATURE_SLICE!r} (or X_{_FEATURE_SLICE}) in {str(path)!r}, the Space Ranger HD output folder "
        f"(outs/); it holds {_holds(path)}.{hint}"
    )


def _bin_folders(path: Path) -> dict[int, Path]:
    """``{bin size in µm: binned_outputs/square_XXXum}`` of the folder."""
    binned = path / _BINNED
    if not binned.is_dir():
        raise FileNotFoundError(
            f"No {_BINNED + '/'!r} folder in {str(path)!r} (a Visium HD output holds one folder of "
            f"each bin size there); it holds {_holds(path)}."
        )
    folders = {}
    for p in binned.iterdir():
        found = re.fullmatch(r"square_(\d{3})um", p.name)
        if found and p.is_dir():
            folders[int(found.group(1))] = p
    return dict(sorted(folders.items()))


def _check_bin_folder(folder: Path, bin_size: int, counts_file: str) -> dict:
    """The files spatialdata-io reads in a bin folder exist and agree; the bin's scalefactors."""
    where = f"{folder.parent.name}/{folder.name}"
    if not (folder / counts_file).is_file():
        raise FileNotFoundError(
            f"No {counts_file!r} in {where} ({str(folder)!r}); it holds {_holds(folder)}."
        )
    spatial = folder / "spatial"
    if not spatial.is_dir():
        raise FileNotFoundError(
            f"No spatial/ folder in {where} ({str(folder)!r}); it holds {_holds(folder)}."
        )
    for name in (_SCALEFACTORS, _POSITIONS):
        if not (spatial / name).is_file():
            raise FileNotFoundError(
                f"No {'spatial/' + name!r} in {where} ({str(folder)!r}); spatial/ holds {_holds(spatial)}."
            )
    import pyarrow.parquet as pq

    columns = pq.read_schema(spatial / _POSITIONS).names
    if columns != _POSITION_COLUMNS:
        raise ValueError(
            f"{where}/spatial/{_POSITIONS} has the columns {columns}; the Space Ranger HD layout (which "
            f"spatialdata-io reads) has {_POSITION_COLUMNS}, in this order."
        )
    scalefactors = json.loads((spatial / _SCALEFACTORS).read_text())
    missing = [k for k in _SCALEFACTOR_KEYS if k not in scalefactors]
    if missing:
        raise ValueError(f"{where}/spatial/{_SCALEFACTORS} lacks {missing}; it holds {sorted(scalefactors)}.")
    size, diameter, mpp = (
        float(scalefactors[k]) for k in ("bin_size_um", "spot_diameter_fullres", "microns_per_pixel")
    )
    if size != bin_size or not math.isclose(size / diameter, mpp, rel_tol=1e-5):
        raise ValueError(
            f"{where}/spatial/{_SCALEFACTORS} does not describe {bin_size} µm bins: bin_size_um={size}, "
            f"spot_diameter_fullres={diameter} px, microns_per_pixel={mpp} (bin_size_um / "
            f"spot_diameter_fullres must equal microns_per_pixel)."
        )
    return scalefactors


def _fullres_file(path: Path, prefix: str, kwargs: dict) -> Path | None:
    """The full-resolution image spatialdata-io reads, as an absolute path; None without one.

    ``fullres_image_file`` is taken relative to the folder (as :func:`read_visium` takes it), else as
    given. Without it, spatialdata-io's search: the first file listed in ``microscope_image/`` (the
    file system's order), else the first ``{prefix}tissue_image.*`` in the folder. The file found is
    set as ``kwargs['fullres_image_file']``, so spatialdata-io and loki read the same one.
    """
    fullres = kwargs.get("fullres_image_file")
    if fullres is not None:
        candidates = [Path(fullres)] if Path(fullres).is_absolute() else [path / fullres, Path(fullres)]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            tried = " or ".join(repr(str(p)) for p in candidates)
            raise FileNotFoundError(f"fullres_image_file {tried} does not exist.")
        kwargs["fullres_image_file"] = found.absolute()
        return kwargs["fullres_image_file"]
    microscope = path / _MICROSCOPE_IMAGE
    if microscope.exists():
        if not microscope.is_dir():
            raise NotADirectoryError(
                f"{str(microscope)!r} is a file; the microscope image is looked for in a folder of that name. "
                "Pass fullres_image_file= naming the image."
            )
        files, where = [p for p in microscope.iterdir() if p.is_file()], f"{_MICROSCOPE_IMAGE}/"
    else:
        files, where = list(path.glob(f"{prefix}tissue_image.*")), f"{prefix}tissue_image.*"
    if not files:
        return None
    if len(files) > 1:
        warnings.warn(
            f"{len(files)} files match {where} in {str(path)!r} ({sorted(p.name for p in files)}); read "
            f"{files[0].name!r}, the first the file system lists (spatialdata-io's choice). Pass "
            "fullres_image_file= to choose.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    kwargs["fullres_image_file"] = files[0].absolute()
    return kwargs["fullres_image_file"]


def _check_images(path: Path, kwargs: dict) -> None:
    """No 16-bit colour PNG among the images spatialdata-io reads (PIL keeps their high bytes only)."""
    for png in path.rglob("*.png"):
        if png.name.endswith((_IMAGE_FILES["hires"], _IMAGE_FILES["lowres"])):
            check_not_sixteen_bit_png(png)
    if kwargs.get("fullres_image_file") is not None:
        check_not_sixteen_bit_png(Path(kwargs["fullres_image_file"]))


def _h5_metadata(counts_path: Path) -> dict:
    """The chemistry and software version a Space Ranger h5 records (as scanpy's Visium reader keeps them)."""
    import h5py

    with h5py.File(counts_path, "r") as f:
        return {k: f.attrs[k] for k in ("chemistry_description", "software_version") if k in f.attrs}


def read_visium_hd(
    path: str | Path,
    *,
    bin_size: int = 8,
    dataset_id: str | None = None,
    coordinate_system: str = Key.GLOBAL_CS,
    **kwargs: Any,
) -> SpatialData:
    """Read one bin size of a 10x Visium HD Space Ranger folder into a loki section.

    The folder is read by :func:`spatialdata_io.visium_hd`. Each bin is a spot of the section: the
    layout is :func:`read_visium`'s, so loki's tools (gene sentences, patches, alignment, plots) read
    it unchanged.

    Parameters
    ----------
    path
        Space Ranger HD output folder (``outs/``): ``feature_slice.h5`` (or ``X_feature_slice.h5``, as
        10x's downloads name it), ``binned_outputs/square_XXXum/`` (one folder per bin size, each with
        ``filtered_feature_bc_matrix.h5`` and ``spatial/{tissue_positions.parquet,
        scalefactors_json.json}``) and the images (``spatial/tissue_hires_image.png``, lowres).
    bin_size
        Bin size in µm, one a call (Space Ranger writes 2, 8 and 16): the table of
        ``binned_outputs/square_{bin_size:03d}um``.
    dataset_id
        Section name ``S`` (a valid SpatialData element name: letters, digits, ``_``, ``-``, ``.``);
        defaults to the ``X`` of an ``X_feature_slice.h5``, else the library id stored in the bin's
        h5 file, else the folder name, with other characters replaced by ``_``.
    coordinate_system
        Name of the coordinate system of all elements (units: full-resolution pixels).
    **kwargs
        Passed to :func:`spatialdata_io.visium_hd`: ``fullres_image_file`` (the microscope image,
        relative to the folder or absolute; by default spatialdata-io's search: the file in
        ``microscope_image/`` (the first listed, with a warning, when it holds several) or
        ``X_tissue_image.*``; Space Ranger does not copy it to ``outs/``),
        ``filtered_counts_file`` (False: the raw matrix, every bin), ``bins_as_squares`` (False:
        circles of the bin's inscribed radius), ``gex_only`` (True here: the gene expression features
        only), ``load_all_images`` (also the CytAssist image), ``imread_kwargs``,
        ``image_models_kwargs``, ``anndata_kwargs``. Its other options would change the layout and
        are refused.

    Returns
    -------
    A SpatialData with ``tables[S]`` annotating ``shapes[f"{S}_spots"]`` (by default squares: one
    axis-aligned square polygon of side ``spot_diameter_fullres`` per bin, spatialdata-io's bins; with
    ``bins_as_squares=False`` circles with a ``radius`` of half that side; indexed by integer spot
    ids), and the RGB images spatialdata-io finds (``f"{S}_hires_image"``, ``f"{S}_lowres_image"``,
    ``f"{S}_full_image"``, ``f"{S}_cytassist_image"``), each multiscale, with a scale into the
    coordinate system. The table holds

    - ``X``: the counts of the bin size as read (CSR); ``var_names`` the gene symbols of the h5 file,
      repeated ones made unique as :func:`read_visium` does (with a warning); ``var['gene_ids']``;
    - ``obs_names``: the bin barcodes (``s_008um_00012_00034-1``); ``obs['spot_id']``: the integer
      index of the bin in ``shapes[f"{S}_spots"]`` (0, 1, ...);
      ``obs['region'|'in_tissue'|'array_row'|'array_col']`` (the bin's row and column in the bin grid);
    - ``obsm['spatial']``: bin centres in full-resolution pixels (float64);
    - ``uns['loki']``: ``'spot_diameter_um'`` and ``'spot_spacing_um'``: the bin size (bins are
      contiguous squares), ``'microns_per_unit'``: the scalefactors' ``microns_per_pixel``, and
      ``'image_key'``: the image loki's tools cut patches from and draw by default, chosen as
      :func:`read_visium` does: the full-resolution image when one was read, else the hires one, else
      the lowres one; absent when the folder has no image;
    - ``uns['spatial'][S]``: scanpy's layout, as :func:`read_visium` writes it (the hires / lowres
      images as ``(y, x, 3)`` uint8 arrays, the bin folder's scalefactors json, the h5 file's
      ``chemistry_description`` and ``software_version``).

    The SpatialData's ``attrs['loki']['microns_per_pixel']`` records the pixel size (µm) of each
    image's finest level, which :func:`loki.pp.tile_image` reads.

    Raises
    ------
    NotADirectoryError
        When ``path`` is a file instead of the folder.
    FileNotFoundError
        When the folder, its feature slice file, ``binned_outputs/``, the bin folder's counts,
        positions or scalefactors file, or a named ``fullres_image_file`` is missing (the message
        lists what the folder holds, or the paths tried).
    ValueError
        When ``bin_size`` is not one of the folder's bin sizes (the message lists them); when
        ``dataset_id`` is not a valid SpatialData element name; when the bin's scalefactors or
        positions file is not in the Space Ranger HD layout; when an image cannot be read as RGB by
        the rules below or is a 16-bit colour PNG; when the full-resolution image (named or found)
        has another size than ``spatial/tissue_hires_image.png`` (else the lowres one) divided by its
        scale factor in the bin's scalefactors gives, each side within 1.5 px of that image (bin
        positions are pixels of the image Space Ranger was run with; only the files' headers are read).
    TypeError
        When ``bin_size`` is not an int (one bin size a call), or a keyword argument is not one of
        those passed on.

    Notes
    -----
    Memory: the reader loads the bin size's count matrix (CSR), its positions file (every bin of the
    capture area, in tissue or not) and its shapes (one polygon per bin; spatialdata-io builds
    circles first, then squares) eagerly; the hires and lowres PNGs once more as numpy arrays for
    ``uns['spatial']``. A full-resolution TIFF (e.g. ``.tif``, ``.btf``) is read as
    :func:`loki.io.read_slide` reads it: lazily, block by block, with the pyramid levels it stores and
    the bit depth it states (spatialdata-io's array of it decodes the whole file at each use; a
    ``.btf`` spatialdata-io still decodes once while reading). The other uint8 images stay lazy (dask;
    each decoded whole at each use); other dtypes are read once, held in memory converted. A full
    6.5 mm capture area holds about 11 million 2 µm bins (about 660,000 of 8 µm, 165,000 of 16 µm): a
    2 µm table of a whole section needs many GB, and the 8 or 16 µm bins are what loki's spot-level
    tools are meant for. A folder with ``segmented_outputs/`` has its cell segmentation read by
    spatialdata-io too (and left out here).

    The squares are axis-aligned in full-resolution pixels, centred on Space Ranger's bin centres:
    where the bin grid is rotated against the image, the centres are exact but the squares are not
    turned with it (spatialdata-io's choice). A bin's patch is its square (8 µm: about 30 px of a 0.27 µm/px scan); pass ``diameter_um=``
    to :func:`loki.pp.spot_patches` for a wider context.

    squidpy draws the bins over the hires image, ``sq.pl.spatial_scatter(table, color=...)``, as for
    :func:`read_visium`; spatialdata-plot draws the squares over any of the section's images
    (``sdata.pl.render_images(...).pl.render_shapes(f"{S}_spots", color=..., table_name=S)``).

    This reader was tested on a synthetic folder in the Space Ranger HD layout (real H&E and counts
    on a made-up bin grid), not on a real scanner output.

    {rules}

    """
    import spatialdata_io
    from spatialdata.transformations import Identity, set_transformation

    if dataset_id is not None:
        check_section_name(dataset_id, f"dataset_id={dataset_id!r}")
    path = Path(path)
    check_folder(path, "read_visium_hd", "Visium HD")
    _check_kwargs(kwargs)
    bin_size = _check_bin_size(bin_size)
    prefix = _feature_slice_prefix(path, dataset_id)
    folders = _bin_folders(path)
    if bin_size not in folders:
        held = (
            f"bins of {list(folders)} µm" if folders else f"no square_XXXum folder ({_holds(path / _BINNED)})"
        )
        raise ValueError(f"bin_size={bin_size}: {str(path / _BINNED)!r} holds {held}.")
    folder = folders[bin_size]
    counts_file = (
        "filtered_feature_bc_matrix.h5"
        if kwargs.get("filtered_counts_file", True)
        else "raw_feature_bc_matrix.h5"
    )
    scalefactors = _check_bin_folder(folder, bin_size, counts_file)
    named = kwargs.get("fullres_image_file") is not None
    fullres = _fullres_file(path, prefix, kwargs)
    _check_images(path, kwargs)
    if fullres is not None:
        # bins are placed in its pixels: one of another size puts them off the tissue, or off the image
        found = (
            f"The full-resolution image {str(fullres)!r} (found by spatialdata-io's search; "
            "fullres_image_file= names another)"
        )
        check_fullres_size(fullres, path, folder / "spatial" / _SCALEFACTORS, label=None if named else found)
    counts_path = folder / counts_file
    if dataset_id is not None:
        name = dataset_id
    else:
        name = safe_section_name(prefix[:-1] or _default_dataset_id(counts_path) or path.resolve().name)
    # spatialdata-io finds X_feature_slice.h5 (and X_tissue_image.*) by the dataset id it is given
    raw_name = prefix[:-1] or name
    kwargs.setdefault("gex_only", True)

    with warnings.catch_warnings():
        # which images exist is the reader's to say (image_key); a missing one is no error
        warnings.filterwarnings("ignore", message="No full resolution image found", category=UserWarning)
        warnings.filterwarnings("ignore", message="No image path found containing", category=UserWarning)
        # scanpy's reader warns of repeated gene names that spatialdata-io then makes unique; see build_section
        warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
        raw = spatialdata_io.visium_hd(
            path,
            dataset_id=raw_name,
            bin_size=bin_size,
            load_segmentations_only=False,
            load_nucleus_segmentations=False,
            annotate_table_by_labels=False,
            var_names_make_unique=True,
            **kwargs,
        )
    bin_name = f"square_{bin_size:03d}um"
    adata = raw.tables[bin_name]
    shapes = raw.shapes[f"{raw_name}_{bin_name}"]
    # a TIFF is read block by block (section_images); fullres is absolute, so it is taken as it is
    sources = {"full": fullres, **_IMAGE_FILES}
    images, image_key = section_images(raw.images, raw_name, name, coordinate_system, sources, path)

    adata.obs = adata.obs.rename(columns={"location_id": "spot_id"})
    for column in ("in_tissue", "array_row", "array_col", "spot_id"):
        adata.obs[column] = adata.obs[column].to_numpy(dtype=np.int64)
    shapes.index.name = "spot_id"
    set_transformation(shapes, {coordinate_system: Identity()}, set_all=True)
    uns = {
        "spot_diameter_um": float(bin_size),
        "microns_per_unit": float(scalefactors["microns_per_pixel"]),
        "spot_spacing_um": float(bin_size),
    }
    gene_names = _h5_gene_names(counts_path) if kwargs["gex_only"] else None
    return build_section(
        adata,
        shapes,
        images,
        image_key,
        name=name,
        uns=uns,
        scalefactors=scalefactors,
        metadata=_h5_metadata(counts_path),
        gene_names=gene_names,
        coordinate_system=coordinate_system,
        what=f"Visium HD section ({bin_size} µm bins)",
    )


read_visium_hd.__doc__ = read_visium_hd.__doc__.replace("{rules}", CONVERSION_RULES.replace("\n", "\n    "))
