"""Read an H&E slide scan (whole-slide TIFF, SVS, NDPI, OME-TIFF, or a plain jpg/png) into SpatialData.

Whole-slide images are larger than memory. Every pyramid level a scanner wrote into a TIFF-based file
becomes a lazy dask array, read tile by tile when a patch, a mask or a plot needs it: tiled levels by
:class:`loki.io._tiff_tiles.TileReader`, uncompressed ones through a memory map
(:class:`loki.io._tiff_tiles.MappedLevel`), others (compressed strips, NDPI) through tifffile's zarr store.
A file without levels gets factor-2 levels computed lazily from its full resolution.
"""

from __future__ import annotations

import html
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import check_element_name
from loki._utils._spatialdata import image_levels

from ._image import (
    _BIT_DEPTHS,
    check_pixel_dtype,
    parse_cyx_image,
    parse_rgb_image,
    read_rgb,
    scaled_to_uint8,
    stated_bits_factor,
    uint8_factor,
)
from ._tiff_tiles import MappedLevel, TileReader, whole_tiles

if TYPE_CHECKING:
    from spatialdata import SpatialData

TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf2", ".tf8", ".scn", ".bif", ".qptiff"}
#: Pixel sizes read from TIFF resolution tags are believed only in this range (µm); outside it the
#: tags hold a desktop default (72 dpi is 353 µm per pixel), not a microscope's sampling.
_PLAUSIBLE_MPP = (0.05, 50.0)
_TARGET_CHUNK = 1024
_APERIO_JP2K_YCBCR = 33003
#: TIFF PhotometricInterpretation values read as colour or grey: MINISBLACK, RGB, YCBCR (decoded to RGB).
_READ_PHOTOMETRIC = {1, 2, 6}
_UNIT_TO_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "\u00b5m": 1.0,
    "\u03bcm": 1.0,
    "um": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def read_slide(
    path: str | Path,
    *,
    name: str | None = None,
    microns_per_pixel: float | None = None,
    series: int = 0,
    coordinate_system: str = Key.GLOBAL_CS,
) -> SpatialData:
    """Read an H&E slide scan into a SpatialData holding one multiscale image.

    Aperio SVS, Hamamatsu NDPI, OME-TIFF and other (pyramidal) TIFF files are read lazily: each
    pyramid level stored in the file becomes one level of the image, and nothing is read until pixels
    are used. Other formats readable by PIL (jpg, png) are loaded into memory. The image is then ready
    for :func:`loki.pp.tile_image` (tiles over the tissue), :func:`loki.pp.spot_patches` and the tools
    built on them. ``sdata.write(...)`` copies it into a zarr store, level by level.

    Parameters
    ----------
    path
        The slide file.
    name
        Key of the image in ``sdata.images``; default the file name without its suffixes.
    microns_per_pixel
        Micrometres per pixel of the finest level. Default: read from the file (OME ``PhysicalSizeX``,
        Philips ``DICOM_PIXEL_SPACING``, Aperio ``MPP``, else the TIFF resolution tags when they give
        0.05-50 µm); ``None`` is recorded when the file holds none, and :func:`loki.pp.tile_image` then
        asks for it.
    series
        Which image of a TIFF holding several (tifffile's ``series``; Aperio's thumbnail, label and
        macro images follow the slide, which is series 0).
    coordinate_system
        Coordinate system of the image (``Identity``: its units are full-resolution pixels, as in
        :func:`loki.io.read_visium`).

    Returns
    -------
    A SpatialData with ``images[name]`` (uint8, channels ``r, g, b``; an alpha channel is dropped,
    grey is repeated) and, when the pixel size is known, ``attrs['loki']['microns_per_pixel'][name]``.
    16-bit, other integer and float pixels are scaled to uint8 with a :class:`loki.LokiWarning`
    saying how, by the rules of :func:`loki.io.read_visium` (e.g. uint16 with values up to 4095 is
    12-bit data, scaled by 255 / 4095). A TIFF stays lazy, and each level is converted as its blocks
    are read. The bit depth of unsigned integers is the one the file states, when it states fewer
    bits than its samples hold: ``BitsPerSample`` (e.g. 12-bit packed samples), OME
    ``SignificantBits``, or a TIFF ``MaxSampleValue`` (else ``SMaxSampleValue``) tag, read as the
    smallest bit depth that holds it; no pixel is read for it, and a brighter one becomes 255. A
    plain 16-bit file says nothing (scanners write 12-bit data in 16-bit samples without saying so):
    then, as for floats and signed integers, the range of its values is found in the coarsest level
    it stores (a single-level TIFF is read once for it, block by block); a pixel of a finer level
    brighter than that range allows becomes 255, and a NaN of a finer level of a float slide
    becomes 0. A coarse level drawn by subsampling can miss the brightest pixels; when those cross a
    bit depth (values up to 999 in the coarsest level, 1,100 at full resolution) the slide is read
    as 10-bit instead of 12-bit data, 4 times brighter than the other readers would make it. The
    warning names the bit depth and where it came from (the file's tag, or the range and the level
    it was found in): convert such a slide to 8 bits yourself when that is not the data's. Stored
    levels of another dtype than the full resolution's (a pyramid's levels share one pixel type; an
    OME-TIFF may still hold e.g. 8-bit levels under 16-bit data) are left out with a
    :class:`loki.LokiWarning` and computed from the levels kept, so that all levels are converted alike.

    Raises
    ------
    FileNotFoundError
        No such file.
    IsADirectoryError
        ``path`` is a folder (its files are named).
    ValueError
        A 16-bit colour PNG; not a grey, RGB or RGBA image; pixels the rules above do not read (e.g.
        floats from 0 to 1.5, negative values); several focal planes, time points or channels other
        than colour; a ``series`` the file does not hold; a format neither TIFF-based nor readable by PIL (MIRAX, VSI, DICOM: convert them to
        OME-TIFF); a ``microns_per_pixel`` that is not a positive number.

    """
    import spatialdata as sd
    from spatialdata.transformations import Identity

    path = Path(path)
    if path.is_dir():
        held = sorted(p.name for p in path.iterdir())
        raise IsADirectoryError(
            f"read_slide reads one image file, got the folder {str(path)!r} (it holds {held[:10]}"
            f"{f' and {len(held) - 10} more' if len(held) > 10 else ''}); pass the slide file in it. A "
            "Space Ranger folder is read by lk.io.read_visium; MIRAX and VSI slides: convert them to OME-TIFF."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Slide file not found: {str(path)!r}.")
    if microns_per_pixel is not None and not (np.isfinite(microns_per_pixel) and microns_per_pixel > 0):
        raise ValueError(f"microns_per_pixel must be a positive number, got {microns_per_pixel!r}.")
    if name is None:  # SpatialData names allow letters, digits, '_', '-' and '.'
        name = re.sub(r"[^0-9A-Za-z_.-]", "_", path.name.split(".")[0]) or "slide"
    else:
        check_element_name(name, f"name={name!r}", " (it names the slide's image)")
    transformations = {coordinate_system: Identity()}
    if path.suffix.lower() in TIFF_SUFFIXES:
        levels, found, source = tiff_levels(path, series)
        image = multiscale(levels, transformations)
    else:
        if series != 0:
            raise ValueError(f"series={series}: {path.name} is not a TIFF and holds one image.")
        image = parse_rgb_image(_read_other(path), transformations)
        found, source = None, "not a TIFF: the file records none"
    mpp = microns_per_pixel if microns_per_pixel is not None else found
    attrs = {Key.UNS: {"microns_per_pixel": {name: float(mpp)}}} if mpp is not None else {}
    sdata = sd.SpatialData(images={name: image}, attrs=attrs)
    levels = image_levels(sdata.images[name])
    shape = tuple(int(n) for n in levels[0].shape[1:])
    logger.info(
        "read slide %r as sdata.images[%r]: %d x %d px, %s; pixel size %s",
        path.name,
        name,
        shape[1],
        shape[0],
        f"{len(levels)} level(s)",
        f"unknown ({source}; pass microns_per_pixel= here or to lk.pp.tile_image)"
        if mpp is None
        else f"{mpp:.4g} µm (from {'the caller' if microns_per_pixel is not None else source})",
    )
    return sdata


def _read_other(path: Path) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        return read_rgb(path)
    except UnidentifiedImageError:
        raise ValueError(
            f"Cannot read {path.name!r}: loki reads TIFF-based slides ({', '.join(sorted(TIFF_SUFFIXES))}) "
            "and the images PIL reads (jpg, png, ...). Convert other formats (MIRAX, VSI, DICOM) to OME-TIFF "
            "first, e.g. with bfconvert or vips."
        ) from None


def multiscale(levels: list, transformations: dict):
    """An ``Image2DModel`` from the file's own levels, or a lazily computed pyramid for a single level."""
    import xarray as xr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import set_transformation

    if len(levels) == 1:
        return parse_cyx_image(levels[0], transformations)
    coords = {"c": ["r", "g", "b"]}
    tree = xr.DataTree.from_dict(
        {
            f"scale{i}": xr.Dataset({"image": xr.DataArray(level, dims=("c", "y", "x"), coords=coords)})
            for i, level in enumerate(levels)
        }
    )
    # set_all derives each level's scale from its shape, so levels of any downsampling factor are placed.
    set_transformation(tree, transformations, set_all=True)
    Image2DModel().validate(tree)
    return tree


def tiff_levels(path: Path, index: int = 0, what: str | None = None) -> tuple[list, float | None, str]:
    """Lazy ``(3, y, x)`` uint8 dask arrays of one series of a TIFF, finest first, and its pixel size.

    Levels stored as one tiled page of interleaved 8-bit samples are read by :class:`TileReader`,
    uncompressed contiguous ones through a memory map (:class:`MappedLevel`), others (compressed
    strips, planar, stacked) through tifffile's zarr store. Levels of another dtype than the first
    are left out (:func:`_levels_of_one_dtype`). ``what`` names the file in warnings and errors
    (default its name).
    """
    import dask.array as da
    import tifffile
    import zarr

    levels: list = []
    with tifffile.TiffFile(path) as tif:
        if not 0 <= index < len(tif.series):
            listing = ", ".join(f"{i}: {s.name or 'unnamed'} {s.shape}" for i, s in enumerate(tif.series))
            raise ValueError(f"{path.name} has no series {index}; it holds {listing}.")
        series = tif.series[index]
        photometric = int(series.keyframe.photometric)
        if photometric not in _READ_PHOTOMETRIC:
            raise ValueError(
                f"{path.name}: photometric interpretation {photometric} ({series.keyframe.photometric.name}); "
                "loki reads RGB, YCbCr and grey (min-is-black) images."
            )
        mpp, source = _tiff_pixel_size(tif, index)
        alpha = len(series.keyframe.extrasamples) > 0
        what = path.name if what is None else what
        numbers = _levels_of_one_dtype(series, what)
        # Aperio's JPEG 2000 code 33003 stores YCbCr samples under an RGB tag; tifffile returns them as stored
        ycbcr = [int(series.levels[n].keyframe.compression) == _APERIO_JP2K_YCBCR for n in numbers]
        stated = _stated_bits(tif, index)
        for number in numbers:
            level = series.levels[number]
            if len(level.pages) == 1 and TileReader.supports(level.keyframe):
                levels.append((TileReader(path, index, number, level.keyframe).to_dask(_TARGET_CHUNK), "YXS"))
            elif MappedLevel.supports(level):
                # one strip of a whole uncompressed image is one zarr chunk: every block would read it all
                reader = MappedLevel.of(path, tif.byteorder, level)
                levels.append((reader.to_dask(_TARGET_CHUNK, level.axes), level.axes))
            else:
                levels.append((None, level.axes))
        stored = len(series.levels)
    if any(data is None for data, _ in levels):
        node = zarr.open(tifffile.imread(path, aszarr=True, series=index), mode="r")
        for i, (data, axes) in enumerate(levels):
            if data is None:
                array = node[str(numbers[i])] if stored > 1 else node
                chunks = tuple(
                    whole_tiles(_TARGET_CHUNK, c) if ax in "YX" else n
                    for ax, c, n in zip(axes, array.chunks, array.shape, strict=True)
                )
                levels[i] = (da.from_zarr(array, chunks=chunks), axes)
    cyx = _to_uint8([_as_cyx(data, axes, what, alpha=alpha) for data, axes in levels], what, stated)
    # grey is repeated to RGB after any conversion (converting one channel, not three)
    cyx = [da.concatenate([c] * 3) if c.shape[0] == 1 else c for c in cyx]
    return [_ycbcr_to_rgb(c) if y else c for c, y in zip(cyx, ycbcr, strict=True)], mpp, source


def _levels_of_one_dtype(series, what: str) -> list[int]:
    """Numbers of the levels of a tifffile series that hold the full resolution's dtype, with a warning for others.

    A pyramid's levels share one pixel type: OME-TIFF describes all resolutions of an image by one
    ``Pixels`` ``Type``, and tifffile makes no level of another dtype from a plain TIFF's sub-IFDs;
    a file whose OME sub-IFDs differ (e.g. a 16-bit full resolution over 8-bit levels a writer
    converted its own way) is read from its levels of the full resolution's dtype, the others
    computed from them, so that all levels show the colours of one conversion.
    """
    dtype = np.dtype(series.levels[0].dtype)
    numbers = [n for n, level in enumerate(series.levels) if np.dtype(level.dtype) == dtype]
    others = [f"{n} ({np.dtype(lv.dtype)})" for n, lv in enumerate(series.levels) if n not in numbers]
    if others:
        one = len(others) == 1
        warnings.warn(
            f"{what}: its pyramid level{'' if one else 's'} {', '.join(others)} "
            f"{'does' if one else 'do'} not hold the {dtype} pixels of its full resolution: left out, and "
            "computed from its levels of that dtype, so that every level is converted by one rule (a "
            "pyramid's levels share one pixel type, e.g. OME-TIFF's Pixels Type). Computed levels read the "
            "finer ones: to keep the file's own, convert the slide so that all its levels share one dtype "
            "(e.g. with bfconvert or vips).",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    return numbers


def _to_uint8(levels: list, what: str, stated: tuple[int, str] | None = None) -> list:
    """Lazy levels of 16-bit, float, ... samples as uint8, by one factor for all of them.

    The rules of :data:`loki.io._image.CONVERSION_RULES` (those of read_visium and read_legacy_st).
    ``stated``: the significant bits of unsigned integer samples and where the file states them
    (:func:`_stated_bits`); then no pixel is read. Otherwise the range of values is found in the
    coarsest level the file stores: reading the full resolution of a slide for it would take as long
    as reading the whole slide. A coarse level's range is narrower than the full resolution's (by
    averaging, or by subsampling that misses the brightest pixels); the bit depth of integers (8, 10,
    12, 14 or 16 bits) is taken from it. Any brighter pixel of a finer level becomes 255 (NaN of a
    float slide, 0). Nothing is read for uint8 files; each level is converted block by block when read.
    """
    dtype = np.dtype(levels[0].dtype)
    if dtype == np.uint8:
        return levels
    check_pixel_dtype(dtype, what)
    if stated is not None and dtype.kind == "u":
        factor = stated_bits_factor(dtype, *stated, what)
        return [scaled_to_uint8(level, factor, rechunk=False) for level in levels]
    coarsest = levels[-1]
    height, width = (int(n) for n in coarsest.shape[1:])
    where = (
        f" (found in its coarsest stored level, {width} x {height} px, not read whole at full resolution; "
        "the file states no bit depth)"
        if len(levels) > 1
        else ""
    )
    import dask

    if dtype.kind == "f":
        lo, hi, finite = dask.compute(coarsest.min(), coarsest.max(), np.isfinite(coarsest).all())
        lo, hi = (float("nan"), float("nan")) if not finite else (float(lo), float(hi))
    else:
        lo, hi = (int(v) for v in dask.compute(coarsest.min(), coarsest.max()))
        finite = True
    factor = uint8_factor(dtype, lo, hi, bool(finite), what, where)
    # blocks kept as stored: whole tiles, each read once
    return [scaled_to_uint8(level, factor, rechunk=False) for level in levels]


def reads_by_blocks(path: Path, index: int = 0) -> bool:
    """Whether :func:`tiff_levels` reads series ``index`` of a TIFF as well as a whole read would.

    True for 8-bit samples and for unsigned ones whose bit depth the file states (:func:`_stated_bits`).
    Other deep samples need their range: True only for a single level (read once for it) stored in
    several strips or tiles, or uncompressed (a memory map). A coarse level's range can miss the
    brightest pixels, and a level stored as one compressed strip would be decoded whole at every use.
    False for files tifffile cannot read.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not 0 <= index < len(tif.series):
                return False
            series = tif.series[index]
            if np.dtype(series.dtype) == np.uint8 or _stated_bits(tif, index) is not None:
                return True
            level = series.levels[0]
            blocks = len(level.keyframe.dataoffsets) if len(level.pages) == 1 else 1
            # levels of another dtype are left out (_levels_of_one_dtype)
            kept = sum(np.dtype(other.dtype) == np.dtype(series.dtype) for other in series.levels)
            return kept == 1 and (blocks > 1 or MappedLevel.supports(level))
    except (OSError, ValueError, tifffile.TiffFileError):
        return False


def _stated_bits(tif, index: int = 0) -> tuple[int, str] | None:
    """Significant bits of the unsigned integer samples of series ``index``, where the file states them.

    Only statements of fewer bits than the samples hold count: ``BitsPerSample`` below the dtype's
    (e.g. 12-bit packed samples, decoded to uint16), OME ``SignificantBits`` below it, or a TIFF
    ``MaxSampleValue`` (else ``SMaxSampleValue``) below its maximum, read as the smallest bit depth
    of 8, 10, 12, 14 or 16 bits that holds it. A plain 16-bit container says nothing: scanners
    write 12-bit data in it without saying so. Returns ``(bits, where it is stated)`` or None.
    """
    page = tif.series[index].levels[0].keyframe
    dtype = np.dtype(page.dtype)
    if dtype.kind != "u" or dtype.itemsize == 1:
        return None
    container = 8 * dtype.itemsize
    bits = int(page.bitspersample)
    if 0 < bits < container:
        return bits, f"BitsPerSample = {bits}"
    if tif.ome_metadata:
        elements = re.findall(r"<(?:\w+:)?Pixels\b[^>]*>", tif.ome_metadata)
        found = (
            re.search(r'\bSignificantBits="\s*(\d+)\s*"', elements[index]) if index < len(elements) else None
        )
        if found is not None and 0 < int(found.group(1)) < container:
            return int(found.group(1)), f"OME SignificantBits = {int(found.group(1))}"
    for code, tag in ((281, "MaxSampleValue"), (341, "SMaxSampleValue")):
        value = page.tags.valueof(code)
        if value is None:
            continue
        try:
            top = int(np.max(np.asarray(value, dtype=np.float64)))
        except (TypeError, ValueError):
            continue
        if 0 < top < 2**container - 1:
            bits = next((b for b in _BIT_DEPTHS if top < 2**b), top.bit_length())
            return bits, f"{tag} = {top}"
    return None


def _ycbcr_to_rgb(cyx):
    """Full-range BT.601 YCbCr (JPEG's) to RGB, block by block, of a lazy ``(3, y, x)`` uint8 array."""
    import dask.array as da

    def convert(block: np.ndarray) -> np.ndarray:
        y, cb, cr = (block[i].astype(np.float32) for i in range(3))
        cb, cr = cb - 128.0, cr - 128.0
        rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    return da.map_blocks(convert, cyx.rechunk({0: 3}), dtype=np.uint8)


def _as_cyx(data, axes: str, what: str, *, alpha: bool = False):
    """A lazy ``(3, y, x)`` (RGB) or ``(1, y, x)`` (grey) view of one stored level with tifffile's axes.

    Axes as tifffile names them (e.g. ``ZYXS``); samples of the file's dtype. ``alpha``: the last
    sample is an extra (alpha) channel, so two samples are grey and alpha.
    """
    index = []
    for ax, n in zip(axes, data.shape, strict=True):
        if ax in "YXSC":
            index.append(slice(None))
        elif n == 1:
            index.append(0)
        else:
            raise ValueError(
                f"{what}: axis {ax!r} of its axes {axes!r} has {n} entries (focal planes, time points or "
                "series); loki reads one 2-D colour image."
            )
    data = data[tuple(index)]
    kept = [ax for ax in axes if ax in "YXSC"]
    colour = [ax for ax in kept if ax in "SC"]
    if len(colour) > 1:
        raise ValueError(f"{what}: more than one channel axis in {axes!r}.")
    if not colour:  # grey
        data, kept, colour = data[None], ["S", *kept], ["S"]
    data = data.transpose([kept.index(colour[0]), kept.index("Y"), kept.index("X")])
    if data.shape[0] == 1 or (data.shape[0] == 2 and alpha):
        return data[:1]
    if data.shape[0] not in (3, 4):
        raise ValueError(
            f"{what}: {data.shape[0]} channels; loki reads RGB or RGBA brightfield images, not "
            "multiplexed fluorescence."
        )
    return data[:3]


def _tiff_pixel_size(tif, index: int = 0) -> tuple[float | None, str]:
    """Micrometres per pixel of the finest level of series ``index``, and where it came from."""
    page = tif.series[index].levels[0].keyframe
    if tif.ome_metadata:
        mpp = ome_pixel_size(tif.ome_metadata, index)
        if mpp is not None:
            return mpp, "OME PhysicalSizeX"
    if tif.is_philips and index == 0:  # the Baseline series; macro and label images carry no spacing
        mpp = philips_pixel_size(tif.philips_metadata)
        if mpp is not None:
            return mpp, "Philips DICOM_PIXEL_SPACING"
    description = page.description or ""
    if description.startswith("Aperio"):
        mpp = aperio_pixel_size(description)
        if mpp is not None:
            # Aperio's MPP is the baseline's; a thumbnail repeats the baseline's description
            return mpp * tif.pages.first.imagewidth / page.imagewidth, "Aperio MPP"
    mpp = resolution_pixel_size(page.resolution[0], int(page.resolutionunit))
    if mpp is not None:
        return mpp, "TIFF resolution tags"
    return None, "nothing in the file"


def ome_pixel_size(xml: str, index: int = 0) -> float | None:
    """``PhysicalSizeX`` of the ``index``-th OME ``Pixels`` element in µm (its unit converted), or None."""
    elements = re.findall(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if index >= len(elements):
        return None
    size = re.search(r'\bPhysicalSizeX="([^"]+)"', elements[index])
    if size is None:
        return None
    unit = re.search(r'\bPhysicalSizeXUnit="([^"]+)"', elements[index])
    unit = html.unescape(unit.group(1)) if unit else "µm"
    factor = _UNIT_TO_UM.get(unit)
    if factor is None:
        logger.warning("OME PhysicalSizeXUnit %r is not a length unit loki knows; ignored", unit)
        return None
    value = _positive(size.group(1))
    return None if value is None else value * factor


def aperio_pixel_size(description: str) -> float | None:
    """The ``MPP = ...`` field of an Aperio SVS image description, or None."""
    match = re.search(r"\|\s*MPP\s*=\s*([^|\s]+)", description)
    return None if match is None else _positive(match.group(1))


def philips_pixel_size(xml: str) -> float | None:
    """µm per pixel of a Philips TIFF's finest level, or None.

    Philips writes one ``DICOM_PIXEL_SPACING`` per stored level, finest first, as quoted millimetres
    in DICOM's order: row spacing, then column spacing.
    """
    from xml.etree import ElementTree

    try:
        tree = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    spacing = tree.find(
        './/DataObject[@ObjectType="PixelDataRepresentation"]/Attribute[@Name="DICOM_PIXEL_SPACING"]'
    )
    values = (spacing.text or "").replace('"', " ").split() if spacing is not None else []
    column = _positive(values[1]) if len(values) == 2 else None
    return None if column is None else column * 1e3


def _positive(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None


def resolution_pixel_size(pixels_per_unit: float, unit: int) -> float | None:
    """µm per pixel from TIFF ``XResolution`` and ``ResolutionUnit`` (2 inch, 3 cm, 4 mm, 5 µm), if plausible."""
    per_unit_um = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(unit)  # inch, cm, mm, µm
    if per_unit_um is None or not pixels_per_unit or pixels_per_unit <= 0:
        return None
    value = per_unit_um / pixels_per_unit
    low, high = _PLAUSIBLE_MPP
    if not low <= value <= high:
        logger.info(
            "TIFF resolution tags give %.4g µm per pixel, not a microscope's sampling; ignored", value
        )
        return None
    return value
