"""Reader for legacy Spatial Transcriptomics (ST, 100 µm spots): counts table + spot file + H&E."""

from __future__ import annotations

import gzip
import re
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import check_array_finite

from ._geometry import (
    ANISOTROPY_WARN,
    array_to_pixel_fit,
    axis_scales,
    is_checkerboard,
    nearest_spot_distance,
    scale_of,
)
from ._image import parse_rgb_image, read_rgb
from ._names import check_section_name, unique_gene_names

if TYPE_CHECKING:
    from spatialdata import SpatialData

_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


#: Marks the anisotropy warning, so that :func:`loki.datasets.mob` can leave out what its docstring states.
ANISOTROPY_RECORD = "loki_anisotropy"


#: Bytes below the header of a counts table that :func:`_read_plain_counts` reads: ids and integer counts
_PLAIN_BODY_BYTES = b"0123456789-x\t\n"
_SPOT_ID = re.compile(r"-?[0-9]+x-?[0-9]+")


#: What each file argument of :func:`read_legacy_st` holds, for the errors of a file it cannot read
_FORMATS = {
    "counts": "a tab-separated table of spots x genes counts (gzip allowed), 'XxY' spot ids as its first column",
    "spots": "a tab-separated spot file with columns x, y, pixel_x, pixel_y",
    "image": "an image file (jpg, png or tif)",
}


def _unreadable(argument: str, path: Path, err: BaseException) -> ValueError:
    """The error for a file of ``argument`` that cannot be read as :data:`_FORMATS` says (``err``: the reader's)."""
    reason = "the file is empty" if path.stat().st_size == 0 else str(err) or type(err).__name__
    return ValueError(f"{argument}={str(path)!r} cannot be read ({reason}); expected {_FORMATS[argument]}.")


def _read_tsv(path: Path, argument: str, **kwargs: Any) -> pd.DataFrame:
    """The tab-separated file ``path`` read by pandas; a ValueError naming ``argument`` when it cannot be."""
    try:
        return pd.read_csv(path, sep="\t", **kwargs)
    # not text (UnicodeDecodeError), empty, unparsable rows, a broken or cut .gz (OSError, EOFError)
    except (ValueError, OSError, EOFError, zlib.error) as err:
        raise _unreadable(argument, path, err) from err


def _existing_file(data: str | Path, what: str) -> Path:
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(path)!r}.")
    return path


def _read_table(data: str | Path | pd.DataFrame, what: str, argument: str, **kwargs: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    return _read_tsv(_existing_file(data, what), argument, **kwargs)


def _read_plain_counts(path: Path) -> pd.DataFrame | None:
    """The counts table of a plain file, parsed row by row by numpy; None for a file it leaves to pandas.

    pandas builds an array (and a Series) per column, which for a table ~15,000 genes wide takes
    most of the time of reading a section, twice (:func:`_read_counts` reads the header again).
    This takes only the files whose every line pandas splits at its tabs and whose values it reads
    as int64, so that the table is the one pandas builds: uncompressed or gzip (by the name, as
    pandas infers it), UTF-8 without a byte order mark, no quote or carriage return in the header
    line, and below it nothing but ``"XxY"`` spot ids and integer counts (digits, ``-``, ``x``,
    tabs, newlines), as many fields in each row, one or none more in the header. Anything else,
    an unreadable file included, is pandas' to read (and to refuse, in its words).
    """
    name = path.name.lower()
    if name.endswith((".tar.gz", ".bz2", ".zip", ".xz", ".zst", ".tar")):  # pandas' other compressions
        return None
    try:
        if name.endswith(".gz"):
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error):  # a broken or cut .gz
        return None
    head, newline, body = raw.partition(b"\n")
    if not newline or raw.startswith(b"\xef\xbb\xbf") or any(c in head for c in (b'"', b"\r", b"\x00")):
        return None
    if body.translate(None, _PLAIN_BODY_BYTES):
        return None
    try:
        header = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    rows = [line for line in body.decode("ascii").split("\n") if line]
    if not header.strip() or not rows:
        return None
    n_genes = rows[0].count("\t")
    if n_genes == 0:
        return None
    fields = header.split("\t")
    if len(fields) not in (n_genes, n_genes + 1) or any(row.count("\t") != n_genes for row in rows):
        return None
    ids = [row.partition("\t")[0] for row in rows]
    if not all(_SPOT_ID.fullmatch(i) for i in ids):
        return None
    try:
        values = np.loadtxt(
            rows, dtype=np.int64, delimiter="\t", comments=None, usecols=range(1, n_genes + 1), ndmin=2
        )
    except (ValueError, OverflowError):  # e.g. an empty field, a lone "-", a count beyond int64
        return None
    index_name = fields[0] if len(fields) > n_genes and fields[0] else None
    return pd.DataFrame(values, index=pd.Index(ids, name=index_name), columns=fields[len(fields) - n_genes :])


def _read_counts(data: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The counts table, with gene names as the file's header writes them.

    pandas renames repeated column names (``"X"``, ``"X.1"``); the header is read again without
    that so that repeated genes follow the readers' one rule (:func:`unique_gene_names`). Plain
    files are read by :func:`_read_plain_counts` instead, to the same table.
    """
    if not isinstance(data, pd.DataFrame):
        plain = _read_plain_counts(_existing_file(data, "Counts"))
        if plain is not None:
            return plain
    counts = _read_table(data, "Counts", "counts", index_col=0)
    if isinstance(data, pd.DataFrame) or counts.shape[1] == 0:
        return counts
    header = _read_tsv(Path(data), "counts", header=None, nrows=1, dtype=str, na_filter=False)
    names = header.iloc[0].tolist()[-counts.shape[1] :]  # the index column may have no header field
    if len(names) != counts.shape[1]:
        return counts
    return counts.set_axis(names, axis=1)


def _describe(data: str | Path | pd.DataFrame, what: str) -> str:
    return f"{what} DataFrame" if isinstance(data, pd.DataFrame) else f"{what} file {str(data)!r}"


def _spots_to_keep(
    counts: pd.DataFrame, spots: pd.DataFrame, *, name: str, sources: tuple[str, str], filter_selected: bool
) -> pd.Index:
    """Spots of the counts table that the section keeps; refuses counts that do not match the spot file.

    The spot detector leaves out the few positions it could not find (not under tissue): such
    counts spots are left out with a warning when ``filter_selected``. Counts and spot file that
    barely overlap (most counts spots dropped and most selected spots without counts) are files
    of different sections.
    """
    counts_src, spots_src = sources
    unknown = counts.index[~counts.index.isin(spots.index)]
    columns = counts.columns.astype(str)
    if len(unknown) > 0.5 * len(counts) and columns.isin(spots.index).mean() > 0.5:
        raise ValueError(
            f"The counts look transposed (genes x spots): the columns of the {counts_src} are spot ids of the "
            f"{spots_src} (e.g. {columns[:3].tolist()}) and its index is not (e.g. {unknown[:3].tolist()}). "
            "Pass a spots x genes table (e.g. counts.T)."
        )
    if len(unknown) and not filter_selected:
        raise ValueError(
            f"{len(unknown)} of {len(counts)} spot(s) of the counts table are missing from the spot file, e.g. "
            f"{unknown[:5].tolist()} ({counts_src}, {spots_src}; counts index must be 'XxY' array coordinates "
            "matching the spot file's x, y; with selected_only=True and a 'selected' column such spots are "
            "left out)."
        )
    if not filter_selected:
        return counts.index
    selected = spots.index[pd.to_numeric(spots["selected"], errors="coerce").fillna(0).to_numpy() == 1]
    if len(selected) == 0:
        raise ValueError(f"The {spots_src} selects no spot (no 'selected' == 1) for section {name!r}.")
    keep = counts.index[counts.index.isin(selected)]
    if len(keep) < 0.5 * len(counts) and len(keep) < 0.5 * len(selected):
        raise ValueError(
            f"The {counts_src} and the {spots_src} barely overlap: only {len(keep)} of the {len(counts)} "
            f"counts spots are selected spots of the spot file ({len(unknown)} are not in it at all, e.g. "
            f"{unknown[:5].tolist()}), and only {len(keep)} of its {len(selected)} selected spots have counts. "
            "Are they files of the same section? The counts index must hold 'XxY' array coordinates matching "
            "the spot file's x, y."
        )
    if len(unknown):
        logger.warning(
            "section %r: %d of %d spot(s) of the counts table are not in the spot file and are left out, e.g. %s",
            name,
            len(unknown),
            len(counts),
            unknown[:5].tolist(),
        )
    absent = selected.difference(counts.index)
    if len(absent):
        logger.info("section %r: %d selected spot(s) have no counts and are left out", name, len(absent))
    return keep


def _warn_anisotropic(name: str, linear: np.ndarray) -> None:
    sx, sy = axis_scales(linear)
    apart = max(sx, sy) / min(sx, sy) - 1.0
    if apart > ANISOTROPY_WARN:
        logger.warning(
            "section %r: the spot file has %.2f px per array step along x but %.2f along y (%.0f%% apart, "
            "more than %.0f%%); microns_per_unit uses their geometric mean, so lengths along x and y are "
            "off by up to %.0f%%.",
            name,
            sx,
            sy,
            100 * apart,
            100 * ANISOTROPY_WARN,
            100 * (max(sx, sy) / scale_of(linear) - 1.0),
            extra={ANISOTROPY_RECORD: True},
        )


def _spot_ids(spots: pd.DataFrame) -> pd.Index:
    """``"XxY"`` ids from the integer array coordinates of a spot file."""
    ids = []
    for col in ("x", "y"):
        values = pd.to_numeric(spots[col], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all() or not np.allclose(values, np.round(values)):
            raise ValueError(f"Spot file column {col!r} must hold integer array coordinates.")
        ids.append(np.round(values).astype(np.int64).astype(str))
    return pd.Index(np.char.add(np.char.add(ids[0], "x"), ids[1]), name="spot_id")


def _validate(
    counts: pd.DataFrame,
    spots: pd.DataFrame,
    spot_diameter_um: float,
    array_step_um: float,
    image_scale: float,
) -> None:
    missing = [c for c in _SPOT_COLUMNS if c not in spots.columns]
    if missing:
        names = list(map(str, spots.columns))
        shown = f"{names}" if len(names) <= 10 else f"{len(names)}: {names[:8]} ..."
        # a counts table (a column per gene) given as the spot file: arguments in the wrong order
        hint = (
            " Its rows look like spots and its columns like genes: were counts and spots swapped? "
            "read_legacy_st takes (counts, spots, image)."
            if len(names) > 20 and {"pixel_x", "pixel_y"} <= set(map(str, counts.columns))
            else ""
        )
        # a comma-separated file read as tab-separated: one column named by the whole header line
        if len(names) == 1 and "," in names[0]:
            hint = " The file looks comma-separated; loki reads tab-separated spot files."
        raise KeyError(
            f"Spot file lacks column(s) {missing}; its columns are {shown}. "
            f"Expected {list(_SPOT_COLUMNS)} and optionally 'selected'.{hint}"
        )
    check_array_finite(spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64), "Spot file pixel_x/pixel_y")
    for name, value in (
        ("spot_diameter_um", spot_diameter_um),
        ("array_step_um", array_step_um),
        ("image_scale", image_scale),
    ):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(f"The counts table is empty (shape {counts.shape}).")
    if not counts.index.is_unique:
        dup = counts.index[counts.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"The counts table has duplicated spot ids, e.g. {dup}.")


def _counts_matrix(counts: pd.DataFrame) -> sparse.csr_matrix:
    values = counts.to_numpy()
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError("The counts table must be numeric (spots x genes, spot ids as the first column).")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError("The counts table contains NaN or infinite values.")
    return sparse.csr_matrix(values)


def _section_parts(
    counts: str | Path | pd.DataFrame,
    spots: str | Path | pd.DataFrame,
    image: str | Path | np.ndarray | None,
    *,
    name: str,
    spot_diameter_um: float,
    array_step_um: float,
    image_scale: float,
    selected_only: bool,
    coordinate_system: str,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, AnnData]]:
    """Images, shapes and tables of one section (validated before anything is built)."""
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    check_section_name(name, f"name={name!r}")
    if isinstance(image, str | Path) and not Path(image).is_file():
        raise FileNotFoundError(f"Image file not found: {str(image)!r}.")
    rgb = read_rgb(image) if image is not None and not isinstance(image, str | Path) else None
    sources = (_describe(counts, "counts"), _describe(spots, "spot"))
    counts = _read_counts(counts)
    spots = _read_table(spots, "Spot", "spots")
    _validate(counts, spots, spot_diameter_um, array_step_um, image_scale)

    spots = spots.set_index(_spot_ids(spots))
    if not spots.index.is_unique:
        raise ValueError(
            f"The spot file lists some array positions twice, e.g. {spots.index[spots.index.duplicated()][:5].tolist()}."
        )
    counts = counts.set_axis(counts.index.astype(str), axis=0)  # never relabel the caller's frame
    filter_selected = selected_only and "selected" in spots.columns
    keep = _spots_to_keep(counts, spots, name=name, sources=sources, filter_selected=filter_selected)
    # The physical scale uses every spot of the array, under tissue or not.
    array_xy = spots[["x", "y"]].to_numpy()
    linear = array_to_pixel_fit(array_xy, spots[["pixel_x", "pixel_y"]].to_numpy())
    _warn_anisotropic(name, linear)
    px_per_unit = scale_of(linear)
    if is_checkerboard(array_xy) and array_step_um == 200.0:
        warnings.warn(
            f"Spots of section {name!r} sit on a checkerboard of the array grid (legacy ST 2k array?); one "
            "array unit is then 100 µm: pass array_step_um=100 if so.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    microns_per_unit = array_step_um / px_per_unit

    counts = counts.loc[keep]
    spots = spots.loc[keep]
    X = _counts_matrix(counts)

    xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    region = f"{name}_spots"
    obs = pd.DataFrame(
        {
            "spot_id": keep.to_numpy(dtype=str),
            "array_row": spots["y"].to_numpy(dtype=np.int64),
            "array_col": spots["x"].to_numpy(dtype=np.int64),
            "region": pd.Categorical([region] * len(keep)),
        },
        index=pd.Index(keep.to_numpy(dtype=str)),
    )
    if "selected" in spots.columns:
        obs["in_tissue"] = pd.to_numeric(spots["selected"], errors="coerce").fillna(0).to_numpy() == 1
    var = pd.DataFrame(index=unique_gene_names(counts.columns.astype(str), f"section {name!r}"))
    adata = AnnData(X=X, obs=obs, var=var)
    adata.obsm[Key.SPATIAL] = xy
    uns: dict[str, Any] = {
        "spot_diameter_um": float(spot_diameter_um),
        "microns_per_unit": float(microns_per_unit),
        "spot_spacing_um": float(array_step_um * nearest_spot_distance(array_xy)),
    }

    images: dict[str, Any] = {}
    if image is not None:
        if rgb is None:
            rgb = _read_image_file(Path(image))
        transform = Identity() if image_scale == 1.0 else Scale([1.0 / image_scale] * 2, axes=("x", "y"))
        images[f"{name}_image"] = parse_rgb_image(rgb, {coordinate_system: transform})
        uns["image_key"] = f"{name}_image"
        _check_inside(name, xy * image_scale, rgb.shape[:2])
    adata.uns[Key.UNS] = uns

    radius = np.full(len(keep), spot_diameter_um / 2.0 / microns_per_unit)
    shapes = {
        region: ShapesModel.parse(
            xy,
            geometry=0,
            radius=radius,
            index=pd.Index(keep.to_numpy(dtype=str), name="spot_id"),
            transformations={coordinate_system: Identity()},
        )
    }
    table = TableModel.parse(adata, region=region, region_key="region", instance_key="spot_id")
    logger.info(
        "read legacy ST section %r: %d spots x %d genes, %.3f µm per full-resolution pixel",
        name,
        adata.n_obs,
        adata.n_vars,
        microns_per_unit,
    )
    return images, shapes, {name: table}


def _read_image_file(path: Path) -> np.ndarray:
    """The H&E of ``path`` as :func:`read_rgb` reads it; a file its readers cannot decode is named."""
    from tifffile import TiffFileError

    try:
        return read_rgb(path)
    # PIL: not an image, truncated (OSError), a broken chunk (SyntaxError); tifffile's own
    except (OSError, SyntaxError, EOFError, TiffFileError) as err:
        raise _unreadable("image", path, err) from err


def _check_inside(name: str, xy_image: np.ndarray, shape_yx: tuple[int, int]) -> None:
    """Refuse spots none of which lies on the image (another section's files?); warn when many do not."""
    h, w = shape_yx
    outside = (xy_image[:, 0] < 0) | (xy_image[:, 0] >= w) | (xy_image[:, 1] < 0) | (xy_image[:, 1] >= h)
    if outside.all():
        raise ValueError(
            f"section {name!r}: none of the {len(outside)} spot centres falls on the {w}x{h} image (they span "
            f"x {xy_image[:, 0].min():.0f} to {xy_image[:, 0].max():.0f}, y {xy_image[:, 1].min():.0f} to "
            f"{xy_image[:, 1].max():.0f} in its pixels): are the counts, spot file and image of one section, "
            "and is image_scale right?"
        )
    if outside.mean() > 0.05:
        warnings.warn(
            f"section {name!r}: {int(outside.sum())} of {len(outside)} spot centres fall outside the {w}x{h} "
            "image; is image_scale right?",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


def read_legacy_st(
    counts: str | Path | pd.DataFrame,
    spots: str | Path | pd.DataFrame,
    image: str | Path | np.ndarray | None = None,
    *,
    name: str,
    spot_diameter_um: float = 100.0,
    array_step_um: float = 200.0,
    image_scale: float = 1.0,
    selected_only: bool = True,
    coordinate_system: str = Key.GLOBAL_CS,
) -> SpatialData:
    """Read one legacy ST section (counts, spot file, H&E) into a SpatialData section.

    Parameters
    ----------
    counts
        Spots x genes raw counts (path to a tab-separated file, gzip allowed, or a DataFrame) whose
        index holds ``"XxY"`` array coordinates (as in STUtility's ``MOB*.tsv`` and her2st
        ``ST-cnts``). Gene names are taken as the file's header (or the DataFrame's columns) writes
        them; repeated names are made unique as :meth:`anndata.AnnData.var_names_make_unique` does
        (the second ``"X"`` becomes ``"X-1"``), with a warning saying how many, the rule of
        :func:`loki.io.read_visium` too.
    spots
        Spot file (path to a tab-separated file or a DataFrame) with columns ``x``, ``y`` (integer
        array coordinates), ``pixel_x``, ``pixel_y`` (spot centres in full-resolution image pixels)
        and optionally ``selected`` (1 under tissue), as written by the ST spot detector.
    image
        H&E image: path (jpg/png/tif) or array ``(y, x)``, ``(y, x, 3|4)`` or ``(3|4, y, x)``;
        ``None`` for no image. Images other than 8-bit RGB (16-bit, float, grey, RGBA) are
        converted to it by the rules of :func:`loki.io.read_visium`, with a :class:`loki.LokiWarning`.
    name
        Section name: the table key, ``f"{name}_spots"`` the shapes and ``f"{name}_image"`` the image.
        Must be a valid SpatialData element name (letters, digits, ``_``, ``-``, ``.``).
    spot_diameter_um
        Physical spot diameter (legacy ST: 100 µm).
    array_step_um
        Physical length of one *step of the array coordinates* ``x``/``y``, which is not always the
        distance between neighbouring spot centres: 200 µm on 1k arrays (spots on a square grid, so
        neighbours are one step apart); 100 µm on 2k arrays, whose spots sit on a checkerboard of a
        grid twice as fine (as in STUtility's mouse olfactory bulb data), so neighbours are diagonal,
        about 141 µm apart. The pixel size is this length divided by the pixels per array step
        fitted on all spots of the spot file. The centre-to-centre distance is recorded as
        ``uns['loki']['spot_spacing_um']``, the meaning that key has everywhere in loki.
    image_scale
        Image pixels per full-resolution pixel (e.g. ``2000 / 6954`` for a downscaled copy); the
        image gets the transformation ``Scale(1 / image_scale)`` into the coordinate system, or
        ``Identity`` when 1.
    selected_only
        Keep only spots with ``selected == 1`` (under tissue) when the spot file has that column.
        Spots of the counts table that the spot file lacks are then left out with a warning (the
        spot detector misses a few positions). Counts and spot file that barely overlap (fewer than
        half of the counts spots kept, and fewer than half of the selected spots with counts) are
        refused as files of different sections.
    coordinate_system
        Name of the coordinate system (units: full-resolution pixels).

    Returns
    -------
    A SpatialData with ``images[f"{name}_image"]`` (RGB uint8, multiscale, if ``image`` is given),
    ``shapes[f"{name}_spots"]`` (circles, ``radius`` = physical spot radius in full-resolution
    pixels, index = spot ids ``"XxY"``) and ``tables[name]`` annotating them: ``X`` CSR float32
    counts, ``obs_names`` and ``obs['spot_id']`` the ``"XxY"`` spot ids,
    ``obs['region'|'array_row'|'array_col']`` (and ``'in_tissue'`` when the spot file has a
    ``selected`` column), ``obsm['spatial']`` (spot centres, full-resolution pixels) and
    ``uns['loki'] = {'image_key', 'spot_diameter_um', 'microns_per_unit', 'spot_spacing_um'}``
    (``image_key`` only with an image; ``spot_spacing_um`` is the median centre-to-centre
    distance of neighbouring spots of the spot file).

    Raises
    ------
    FileNotFoundError
        When a counts, spot or image file does not exist.
    KeyError
        When the spot file lacks one of the columns ``x``, ``y``, ``pixel_x``, ``pixel_y``.
    ValueError
        When ``name`` is not a valid SpatialData element name; when a geometry parameter is not a
        positive number; when a counts, spot or image file cannot be read (e.g. binary, empty or cut
        short; the message names the argument and the file); when the counts table is empty, not
        numeric, holds NaN/inf or repeats a spot id; when the spot file's coordinates are not
        integers/finite or repeat a position; when the counts look transposed (genes x spots); when
        counts and spot file barely overlap (see ``selected_only``), or a counts spot is missing from
        the spot file and ``selected_only`` is off or the spot file has no ``selected`` column; when
        the spot file selects no spot; when no spot centre falls on the image.

    Notes
    -----
    The pixel size assumes square pixels: the fit's scales along the array's two axes are
    combined by their geometric mean, with a logged warning when they differ by more than 5 %
    (the warning names both). To plot the table with squidpy, which looks for an
    ``uns['spatial']`` entry this reader does not write (:func:`loki.io.read_visium` does), pass
    ``shape=None`` (``sq.pl.spatial_scatter(table, shape=None, color=...)``); draw it over its H&E
    with spatialdata-plot (``sdata.pl.render_images(...).pl.render_shapes(..., table_name=...)``).

    """
    from spatialdata import SpatialData

    images, shapes, tables = _section_parts(
        counts,
        spots,
        image,
        name=name,
        spot_diameter_um=spot_diameter_um,
        array_step_um=array_step_um,
        image_scale=image_scale,
        selected_only=selected_only,
        coordinate_system=coordinate_system,
    )
    return SpatialData(images=images, shapes=shapes, tables=tables)


def read_legacy_st_sections(
    sections: Mapping[str, tuple | Mapping[str, Any]],
    **kwargs: Any,
) -> SpatialData:
    """Read several legacy ST sections into one SpatialData (one table per section, keyed by name).

    Parameters
    ----------
    sections
        ``{name: (counts, spots)}``, ``{name: (counts, spots, image)}`` or
        ``{name: {"counts": ..., "spots": ..., "image": ..., **per-section keyword arguments}}``
        (e.g. a per-section ``image_scale``).
    **kwargs
        Keyword arguments of :func:`read_legacy_st` shared by all sections (``name`` excluded).

    Returns
    -------
    A SpatialData holding, for each section ``S``, the elements :func:`read_legacy_st` builds:
    ``images[f"{S}_image"]``, ``shapes[f"{S}_spots"]`` and ``tables[S]``.

    """
    from spatialdata import SpatialData

    names_given = ["name="] if "name" in kwargs else []
    names_given += [
        f"a 'name' in section {k!r}" for k, v in sections.items() if isinstance(v, Mapping) and "name" in v
    ]
    if names_given:
        raise TypeError(
            "read_legacy_st_sections() takes section names from the keys of `sections`; got "
            f"{', '.join(names_given)}."
        )
    if not sections:
        raise ValueError("No section given.")
    specs = {}
    for name, spec in sections.items():
        check_section_name(name, f"Section name {name!r} (a key of `sections`)")
        if isinstance(spec, Mapping):
            spec = dict(spec)
            missing = [k for k in ("counts", "spots") if k not in spec]
            if missing:
                raise KeyError(f"Section {name!r} lacks {missing}; it has {list(spec)}.")
            args = (spec.pop("counts"), spec.pop("spots"), spec.pop("image", None))
            specs[name] = (args, {**kwargs, **spec})
        else:
            if not isinstance(spec, tuple | list) or len(spec) not in (2, 3):
                if isinstance(spec, tuple | list):
                    got = f"{len(spec)} items"
                else:
                    got = f"a {type(spec).__name__}" + (
                        f" {str(spec)!r}" if isinstance(spec, str | Path) else ""
                    )
                raise ValueError(
                    f"Section {name!r} must be a tuple (counts, spots) or (counts, spots, image), or a dict with "
                    f"'counts' and 'spots' (and 'image' and other read_legacy_st arguments), got {got}."
                )
            specs[name] = ((*spec, None)[:3], kwargs)
    images, shapes, tables = {}, {}, {}
    for name, (args, kw) in specs.items():
        section = read_legacy_st(*args, name=name, **kw)
        images.update(section.images)
        shapes.update(section.shapes)
        tables.update(section.tables)
    return SpatialData(images=images, shapes=shapes, tables=tables)
