"""10x Visium reader: spatialdata-io's reader, reshaped into loki's section layout."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loki._keys import Key
from loki._logging import logger
from loki._utils._affine import linear_scale
from loki._utils._spatialdata import affine_to

from ._image import (
    CONVERSION_RULES,
    DecodedOnce,
    check_not_sixteen_bit_png,
    decodes_whole_file,
    header_size,
    parse_cyx_image,
    to_uint8_cyx,
)
from ._names import check_section_name, unique_gene_names

if TYPE_CHECKING:
    from spatialdata import SpatialData

VISIUM_SPOT_DIAMETER_UM = 55.0
VISIUM_SPOT_SPACING_UM = 100.0  # centre-to-centre distance of neighbouring spots
#: The Space Ranger images spatialdata-io reads, by the suffix of their element's key
_IMAGE_FILES = {"hires": "spatial/tissue_hires_image.png", "lowres": "spatial/tissue_lowres_image.png"}
#: How far (in its own pixels) a side of a Space Ranger image may be from the full-resolution side times
#: its scale factor: Space Ranger rounds each side to whole pixels; the half pixel more is for scale
#: factors written with few digits
_SIDE_TOLERANCE_PX = 1.5


def _default_dataset_id(counts_path: Path) -> str | None:
    """Library id stored in the Space Ranger h5, else None."""
    try:
        import h5py

        with h5py.File(counts_path, "r") as f:
            ids = f.attrs.get("library_ids", None)
        if ids is not None and len(ids):
            value = ids[0]
            return value.decode() if isinstance(value, bytes) else str(value)
    except (OSError, KeyError):
        pass
    return None


def _h5_gene_names(counts_path: Path) -> list[str] | None:
    """Gene names of a Space Ranger h5 as written, of the features scanpy keeps (Gene Expression); else None."""
    import h5py

    try:
        with h5py.File(counts_path, "r") as f:
            features = f["matrix/features"]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in features["name"][:]]
            if "feature_type" in features:
                kinds = [t.decode() if isinstance(t, bytes) else str(t) for t in features["feature_type"][:]]
                names = [n for n, t in zip(names, kinds, strict=True) if t == "Gene Expression"]
    except (OSError, KeyError, ValueError):
        return None
    return names


def _scalefactors_file(path: Path, kwargs: dict) -> Path:
    """The scalefactors json spatialdata-io reads: ``spatial/scalefactors_json.json`` when present."""
    default = path / "spatial" / "scalefactors_json.json"
    named = kwargs.get("scalefactors_file")
    return default if default.is_file() or named is None else path / named


def _text(value: Any) -> Any:
    """A bytes value of the h5 metadata (alone or in a 1-element array) as str; other values as they are."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "S" and value.size == 1:
        value = value.item()
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _scanpy_spatial(name: str, images: dict, scalefactors: dict, metadata: dict) -> dict:
    """``uns['spatial']`` in scanpy's layout: the section's hires / lowres images as ``(y, x, 3)`` arrays."""
    arrays = {}
    for res in ("hires", "lowres"):
        key = f"{name}_{res}_image"
        if key in images:
            # the very pixels of the SpatialData image (scale0), as numpy: these PNGs are small
            arrays[res] = np.ascontiguousarray(
                np.asarray(images[key]["scale0"]["image"].data).transpose(1, 2, 0)
            )
    # bytes would be written to zarr as a type without a Zarr v3 specification (zarr warns)
    metadata = {k: _text(v) for k, v in metadata.items()}
    return {name: {"images": arrays, "scalefactors": dict(scalefactors), "metadata": metadata}}


def _check_visium_files(path: Path, kwargs: dict) -> None:
    """The spot files spatialdata-io needs, and a named full-resolution image, exist (it fails obscurely)."""
    spatial = path / "spatial"
    if spatial.is_dir():
        present = f"spatial/ holds {sorted(p.name for p in spatial.iterdir())}"
    else:
        present = f"it has no spatial/ folder (it holds {sorted(p.name for p in path.iterdir())})"
    scalefactors = kwargs.get("scalefactors_file") or Path("spatial") / "scalefactors_json.json"
    if not (path / scalefactors).is_file():
        raise FileNotFoundError(
            f"No {str(scalefactors)!r} in {str(path)!r}; {present}.{_outs_hint(path, scalefactors)}"
        )
    positions = kwargs.get("tissue_positions_file")
    candidates = (
        [path / positions]
        if positions
        else [spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"]
    )
    if not any(p.is_file() for p in candidates):
        relative = [p.relative_to(path) for p in candidates]
        names = " or ".join(repr(str(p)) for p in relative)
        hint = next(filter(None, (_outs_hint(path, p) for p in relative)), "")
        raise FileNotFoundError(f"No spot positions file ({names}) in {str(path)!r}; {present}.{hint}")
    fullres = kwargs.get("fullres_image_file")
    if fullres is not None and not (path / fullres).is_file():
        raise FileNotFoundError(f"fullres_image_file {str(path / fullres)!r} does not exist.")
    for image in (*_IMAGE_FILES.values(), fullres):
        if image is not None and (path / image).is_file():
            check_not_sixteen_bit_png(path / image)
    if fullres is not None:
        check_fullres_size(path / fullres, path, _scalefactors_file(path, kwargs))


def _outs_hint(path: Path, missing: str | Path) -> str:
    """A sentence saying to pass ``path/outs`` when that folder holds ``missing``, else ``""``.

    Space Ranger writes its output folder ``outs/`` inside the sample's folder, which users pass.
    """
    outs = path / "outs"
    if not (outs / missing).is_file():
        return ""
    return f" Its 'outs' folder holds it: pass {str(outs)!r}, the Space Ranger output folder."


def check_fullres_size(
    fullres: Path, folder: Path, scalefactors_file: Path, *, label: str | None = None
) -> None:
    """Refuse a full-resolution image of another size than the folder's images and scale factors give.

    Space Ranger's hires image (else its lowres one; ``spatial/`` of ``folder``, in the Visium and
    the Visium HD layout) is the full-resolution image scaled by ``tissue_hires_scalef``
    (``tissue_lowres_scalef``) of ``scalefactors_file``, each side rounded to whole pixels; spot (bin)
    positions are in full-resolution pixels, so on an image of another size they would fall in the
    wrong places (or off it). Only the files' headers are read. Nothing is checked when the folder
    has neither image with its scale factor, or a file cannot be read (its reader says why).
    ``label`` names the image in the error (default ``fullres_image_file='...'``).
    """
    size = header_size(fullres)
    try:
        factors = json.loads(scalefactors_file.read_text())
    except (OSError, ValueError):
        return
    if size is None or not isinstance(factors, dict):
        return
    for res, file in _IMAGE_FILES.items():
        key = f"tissue_{res}_scalef"
        scalef = factors.get(key)
        small = header_size(folder / file) if (folder / file).is_file() else None
        if small is None or not isinstance(scalef, int | float) or scalef <= 0:
            continue
        if all(abs(side * scalef - got) <= _SIDE_TOLERANCE_PX for side, got in zip(size, small, strict=True)):
            return
        expected = "x".join(f"{got / scalef:.0f}" for got in small)
        source = (
            scalefactors_file.relative_to(folder)
            if scalefactors_file.is_relative_to(folder)
            else scalefactors_file
        )
        raise ValueError(
            f"{label or f'fullres_image_file={str(fullres)!r}'} is {size[0]}x{size[1]} px (width x height), but "
            f"the folder's {file} ({small[0]}x{small[1]} px) and its scale factor {key} {scalef} ({source}) "
            f"give a full-resolution image of about {expected} px. Spot positions are in pixels of that image: "
            "pass the image Space Ranger was run with."
        )


def check_folder(path: Path, reader: str, kind: str) -> None:
    """A NotADirectoryError when ``path`` is a file, a FileNotFoundError when it does not exist."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{reader} expects the Space Ranger output folder, got the file {str(path)!r}; "
            f"pass the folder that holds it: {str(path.parent)!r}."
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} folder not found: {str(path)!r}.")


def safe_section_name(default: str) -> str:
    """A default section name as a SpatialData element name: characters other than ``A-Za-z0-9_.-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", default)


def section_images(
    raw_images: dict,
    raw_name: str,
    name: str,
    coordinate_system: str,
    sources: dict[str, Any],
    folder: Path | None = None,
) -> tuple[dict, str | None]:
    """spatialdata-io's images of a section as loki's: ``({f"{name}_{kind}_image": image}, image_key)``.

    ``raw_images`` are keyed ``f"{raw_name}_{kind}_image"``, each with a transformation into the
    coordinate system ``raw_name`` that maps it to full resolution; ``sources`` names the file of
    each kind (relative to ``folder``) for the messages. Each image becomes 8-bit RGB
    (:func:`to_uint8_cyx`; uint8 stays lazy, others are read once and held converted, the alpha
    channel some Space Ranger PNGs carry dropped), a loki pyramid placed in ``coordinate_system``
    (full-resolution pixels). spatialdata-io's array of a uint8 file (jpg, png) decodes the whole
    file at every compute: it is decoded at its first use only, and then held
    (:class:`~loki.io._image.DecodedOnce`). A full-resolution TIFF in ``folder`` is read as
    :func:`loki.io.read_slide` reads it instead (lazily, block by block, with the levels it stores):
    spatialdata-io's array of it decodes the whole file at every use. A deep TIFF that states no bit
    depth is read so only when it has one level in several strips or tiles (or uncompressed); other
    deep TIFFs are read once, whole, as other deep images are (a coarse level's range can miss the
    brightest pixels, and one compressed strip would be decoded whole at every use). ``image_key`` is the finest:
    the full-resolution image, else hires, else lowres, else the first; None without images.
    """
    from spatialdata.transformations import get_transformation

    from ._slide import TIFF_SUFFIXES, multiscale, reads_by_blocks, tiff_levels

    images = {}
    for key, img in raw_images.items():
        to_fullres = get_transformation(img, to_coordinate_system=raw_name)
        level = img["scale0"]["image"] if hasattr(img, "children") else img
        kind = key.removeprefix(f"{raw_name}_").removesuffix("_image")
        source = sources.get(kind)
        out_key = f"{name}_{kind}_image"
        what = f"image {out_key!r}" + (f" ({str(source)!r})" if source else "")
        file = Path(folder) / source if folder is not None and source and kind == "full" else None
        if (
            file is not None
            and file.suffix.lower() in TIFF_SUFFIXES
            and file.is_file()
            and reads_by_blocks(file)
        ):
            try:
                levels = tiff_levels(file, 0, what)[0]
            except ValueError:  # e.g. 5 fluorescence channels as pages: spatialdata-io's array says why below
                levels = None
            if levels is not None and tuple(levels[0].shape[1:]) == tuple(level.shape[1:]):
                # the image spatialdata-io placed, read from the file block by block
                images[out_key] = multiscale(levels, {coordinate_system: to_fullres})
                continue
            logger.info("%s: read as spatialdata-io reads it (tifffile reads another image)", what)
        data = level.data
        if np.dtype(data.dtype) == np.uint8 and decodes_whole_file(data):
            # each compute of spatialdata-io's array decodes the whole file: decode it at the first only
            data = DecodedOnce(data).to_dask()
        # other dtypes are read whole once here, to find their range
        rgb = to_uint8_cyx(data, what, read_whole=True)
        images[out_key] = parse_cyx_image(rgb, {coordinate_system: to_fullres})
    # the finest image: patches cut from the hires PNG (about 15 px a spot) would be upsampled
    image_key = next(
        (k for k in (f"{name}_full_image", f"{name}_hires_image", f"{name}_lowres_image") if k in images),
        None,
    )
    if image_key is None and images:
        image_key = next(iter(images))
    return images, image_key


def build_section(
    adata: Any,
    shapes: Any,
    images: dict,
    image_key: str | None,
    *,
    name: str,
    uns: dict,
    scalefactors: dict,
    metadata: dict,
    gene_names: list[str] | None,
    coordinate_system: str,
    what: str,
) -> SpatialData:
    """The SpatialData of a 10x section: ``tables[name]`` annotating ``shapes[f"{name}_spots"]``, ``images``.

    ``adata`` (changed in place) holds the counts, ``obs['spot_id']`` (the shapes' index) and
    ``obsm['spatial']`` in full-resolution pixels; ``shapes`` is already placed in
    ``coordinate_system`` with the identity. ``gene_names``, when they match the table's genes,
    replace its ``var_names`` (made unique with loki's warning). ``uns`` is ``.uns['loki']`` without
    ``image_key``; ``scalefactors`` and ``metadata`` go to scanpy's ``uns['spatial'][name]``.
    ``what`` names the section in the log (``"Visium section"``).
    """
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    region = f"{name}_spots"
    if gene_names is not None and len(gene_names) == adata.n_vars:
        # the same names spatialdata-io made unique, with the warning the legacy reader gives too
        adata.var_names = unique_gene_names(gene_names, f"section {name!r}")
    adata.uns.pop("spatialdata_attrs", None)
    adata.uns[Key.SPATIAL] = _scanpy_spatial(name, images, scalefactors, metadata)
    adata.obs["region"] = pd.Categorical([region] * adata.n_obs)
    adata.obsm[Key.SPATIAL] = np.asarray(adata.obsm[Key.SPATIAL], dtype=np.float64)
    uns = dict(uns)
    if image_key is not None:
        uns["image_key"] = image_key
    adata.uns[Key.UNS] = uns
    microns_per_pixel = {
        key: uns["microns_per_unit"] * linear_scale(affine_to(img, coordinate_system, f"image {key!r}"))
        for key, img in images.items()
    }
    table = TableModel.parse(adata, region=region, region_key="region", instance_key="spot_id")
    logger.info(
        "read %s %r: %d spots x %d genes, %.3f µm per full-resolution pixel, image %r",
        what,
        name,
        adata.n_obs,
        adata.n_vars,
        uns["microns_per_unit"],
        image_key,
    )
    attrs = {Key.UNS: {"microns_per_pixel": microns_per_pixel}} if microns_per_pixel else {}
    return SpatialData(images=images, shapes={region: shapes}, tables={name: table}, attrs=attrs)


def read_visium(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    coordinate_system: str = Key.GLOBAL_CS,
    **kwargs: Any,
) -> SpatialData:
    """Read a 10x Visium Space Ranger folder into a loki section (via :func:`spatialdata_io.visium`).

    Parameters
    ----------
    path
        Space Ranger output folder (``filtered_feature_bc_matrix.h5`` and ``spatial/``).
    dataset_id
        Section name ``S`` (a valid SpatialData element name: letters, digits, ``_``, ``-``, ``.``);
        defaults to the library id stored in the h5 file, else the folder name, with other
        characters replaced by ``_``.
    coordinate_system
        Name of the coordinate system of all elements (units: full-resolution pixels).
    **kwargs
        Passed to :func:`spatialdata_io.visium` (e.g. ``fullres_image_file``, ``counts_file``).

    Returns
    -------
    A SpatialData with ``tables[S]`` annotating ``shapes[f"{S}_spots"]`` (circles of the spot
    radius, indexed by integer spot ids), and the RGB images spatialdata-io finds
    (``f"{S}_hires_image"``, ``f"{S}_lowres_image"``, ``f"{S}_full_image"``), each multiscale,
    with a scale into the coordinate system. The table holds

    - ``X``: the counts as read; ``var_names`` the gene symbols of the h5 file, repeated ones made
      unique as :meth:`anndata.AnnData.var_names_make_unique` does (the second ``"X"`` becomes
      ``"X-1"``; a warning says how many), the rule of :func:`loki.io.read_legacy_st` too;
      ``var['gene_ids']`` the Ensembl ids;
    - ``obs_names``: the spot barcodes; ``obs['spot_id']``: the integer index of the spot in
      ``shapes[f"{S}_spots"]`` (0, 1, ...; the legacy ST reader's ids are ``"XxY"`` strings equal
      to its ``obs_names``); ``obs['region'|'in_tissue'|'array_row'|'array_col']``;
    - ``obsm['spatial']``: spot centres in full-resolution pixels;
    - ``uns['loki']``: ``'spot_diameter_um'`` (55), ``'spot_spacing_um'`` (100, centre to centre),
      ``'microns_per_unit'`` (55 µm over the spot diameter in full-resolution pixels) and
      ``'image_key'``: the image loki's tools cut patches from and draw by default: the
      full-resolution image when one was read (``fullres_image_file=``; the paper cuts its patches
      there), else the hires one, else the lowres one; absent when the folder has no image;
    - ``uns['spatial'][S]``: scanpy's layout, as :func:`scanpy.read_visium` writes it, for scanpy's and
      squidpy's plots: ``'images'``: ``'hires'`` and ``'lowres'`` (those the folder holds), the pixels
      of the SpatialData images as ``(y, x, 3)`` uint8 arrays (scanpy gives floats in [0, 1]);
      ``'scalefactors'``: the Space Ranger scalefactors json; ``'metadata'``: the h5 file's
      ``chemistry_description`` and ``software_version`` (as str).

    The SpatialData's ``attrs['loki']['microns_per_pixel']`` records the pixel size (µm) of each
    image's finest level, which :func:`loki.pp.tile_image` reads: any of the images can be tiled.

    A full-resolution TIFF (``fullres_image_file=``, e.g. ``.tif``, ``.btf``) is read as
    :func:`loki.io.read_slide` reads it: lazily, block by block, with the pyramid levels it stores
    (8-bit TIFFs, deep ones that state their bit depth, and deep single-level ones stored in several
    strips or tiles). spatialdata-io's array of it decodes the whole file at each use. Other formats
    (jpg, png) are read by spatialdata-io, whose array decodes the whole file at every use: an 8-bit
    image is decoded at its first use (a region, patches, a plot; not when the folder is read) and its
    pixels held from then on, ``height x width x channels`` bytes (533 MB for a 13,332 px RGB
    square), for as long as the image is referenced. Other dtypes and other deep TIFFs are read once,
    when the folder is read, and held in memory converted, their range taken from the full
    resolution.

    Raises
    ------
    NotADirectoryError
        When ``path`` is a file (e.g. the counts ``.h5``) instead of the folder.
    FileNotFoundError
        When the folder, its counts file or its spot files are missing.
    ValueError
        When ``dataset_id`` is not a valid SpatialData element name; when an image cannot be read as
        RGB by the rules above (e.g. a float image with values 0 to 1.5, a fluorescence image of
        five channels), or is a 16-bit colour PNG (its reader keeps the high bytes only: save it as a
        16-bit TIFF); when ``fullres_image_file`` has another size than the folder's hires image (else
        its lowres one) divided by its scale factor gives, each side within 1.5 px of that image (spot
        positions are pixels of the image Space Ranger was run with).

    Notes
    -----
    squidpy draws the table's spots over its hires image, ``sq.pl.spatial_scatter(table, color=...)``
    (``img_res_key="lowres"`` for the lowres one), as scanpy's ``sc.pl.spatial`` does: both place
    ``obsm['spatial']`` times the image's scale factor. For the spots alone pass ``shape=None`` and
    the section's name (``sq.pl.spatial_scatter(table, shape=None, library_id=S, color=...)``; without
    ``library_id`` squidpy logs that it wants one); spatialdata-plot draws them over any
    of the section's images, in any of its coordinate systems
    (``sdata.pl.render_images(...).pl.render_shapes(..., table_name=...)``).

    {rules}

    """
    import spatialdata_io
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    if dataset_id is not None:
        check_section_name(dataset_id, f"dataset_id={dataset_id!r}")
    path = Path(path)
    check_folder(path, "read_visium", "Visium")
    counts_file = kwargs.get("counts_file", "filtered_feature_bc_matrix.h5")
    if not (path / counts_file).is_file():
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"No {counts_file!r} in {str(path)!r}; it holds {present}.{_outs_hint(path, counts_file)}"
        )
    _check_visium_files(path, kwargs)
    name = (
        dataset_id
        if dataset_id is not None
        else safe_section_name(_default_dataset_id(path / counts_file) or path.resolve().name)
    )

    with warnings.catch_warnings():
        # spatialdata-io's own table triggers this; the table is rebuilt below with a categorical region
        warnings.filterwarnings("ignore", message="Converting `region_key", category=UserWarning)
        # scanpy's reader warns of repeated gene names that spatialdata-io then makes unique; see below
        warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
        raw = spatialdata_io.visium(path, dataset_id=name, **kwargs)
    shapes = raw.shapes[name]
    diameter_px = 2.0 * float(np.median(shapes["radius"]))
    sources = {"full": kwargs.get("fullres_image_file"), **_IMAGE_FILES}
    images, image_key = section_images(raw.images, name, name, coordinate_system, sources, path)

    adata = raw.tables["table"].copy()
    gene_names = _h5_gene_names(path / counts_file) if str(counts_file).endswith(".h5") else None
    # spatialdata-io leaves only the h5 metadata there, which squidpy reads as a library without images
    metadata = adata.uns.pop(Key.SPATIAL, {}).get(name, {}).get("metadata", {})
    scalefactors = json.loads(_scalefactors_file(path, kwargs).read_text())
    uns = {
        "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
        "microns_per_unit": VISIUM_SPOT_DIAMETER_UM / diameter_px,
        "spot_spacing_um": VISIUM_SPOT_SPACING_UM,
    }
    xy = np.c_[shapes.geometry.x.to_numpy(), shapes.geometry.y.to_numpy()]
    new_shapes = ShapesModel.parse(
        xy,
        geometry=0,
        radius=shapes["radius"].to_numpy(),
        index=shapes.index.copy(),
        transformations={coordinate_system: Identity()},
    )
    return build_section(
        adata,
        new_shapes,
        images,
        image_key,
        name=name,
        uns=uns,
        scalefactors=scalefactors,
        metadata=metadata,
        gene_names=gene_names,
        coordinate_system=coordinate_system,
        what="Visium section",
    )


read_visium.__doc__ = read_visium.__doc__.replace("{rules}", CONVERSION_RULES.replace("\n", "\n    "))
