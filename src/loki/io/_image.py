"""Load H&E images into lazy multiscale SpatialData images, as 8-bit RGB."""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from loki._logging import LokiWarning, user_stacklevel

# Pyramid levels are added while the next level is at least this many pixels on its long side.
_MIN_LEVEL_SIZE = 512
_CHUNKS = (3, 1024, 1024)
#: PIL modes of 8-bit images, which convert to RGB without losing values
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)
#: PIL modes whose pixels numpy reads with their own values (16-bit and 32-bit grey, float grey)
_NUMERIC_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: Bit depths of camera and scanner data; integer pixels are read as the smallest that holds their maximum.
_BIT_DEPTHS = (8, 10, 12, 14, 16)
#: Values of a float image this far above 1 still read as [0, 1] (rounding of values stored as 0-1).
_FLOAT_TOL = 1e-3
_TIFF_SUFFIXES = {".tif", ".tiff"}
#: Values of an in-memory image converted at a time (a float32 block of 4 MB)
_BLOCK_VALUES = 1 << 20
#: Names (prefixes) of the dask tasks that decode a whole image file: dask_image's imread, which
#: spatialdata-io's readers use for every image but ``.btf`` files (read into memory by imageio)
_WHOLE_FILE_TASKS = ("_map_read_frame",)

#: The rules :func:`to_uint8_cyx` applies, for docstrings.
CONVERSION_RULES = """\
Images are stored as 8-bit RGB (channels ``r, g, b``), what loki's patches and models read; other
pixels are converted, with a :class:`loki.LokiWarning` naming the conversion. Integers (e.g. uint16)
are read as data of the smallest bit depth of 8, 10, 12, 14 or 16 bits that holds their maximum
(beyond 16 bits, its bit length) and scaled by ``255 / (2 ** bits - 1)``: uint16 with values up to
4095 is 12-bit data, scaled by 255 / 4095, and values up to 255 are kept. The scale is the bit
depth's, not the brightest pixel's, so that colours are the scanner's whatever the image shows and
one bright pixel changes nothing. Floats are read as [0, 1] when all values lie in it (up to 1.001)
and as [0, 255] when their maximum is 2 to 255; other floats (a maximum between 1.001 and 2, which
may be either, negative values, values above 255 or not finite) and negative integers raise a
ValueError. One channel is grey (repeated), two are grey and alpha, four RGBA: alpha is dropped
(not composited over white). Other channel counts raise a ValueError.\
"""


def _warn_conversion(what: str, message: str) -> None:
    warnings.warn(f"{what}: {message}", LokiWarning, stacklevel=user_stacklevel())


def to_uint8_cyx(cyx: Any, what: str, *, read_whole: bool = False) -> Any:
    """A ``(c, y, x)`` image (numpy or dask) as ``(3, y, x)`` uint8 RGB, by :data:`CONVERSION_RULES`.

    Parameters
    ----------
    cyx
        The image, channels first. A dask array stays lazy when it is uint8; of other dtypes, one
        is read block by block to find its range, and converted lazily.
    what
        Names the image (file or element) in warnings and errors.
    read_whole
        For a dask array of another dtype than uint8 whose every computation decodes its whole file
        (as those of spatialdata-io's image readers do), or of a single block: it is read once and
        converted in memory, and the result (uint8, half the size of a 16-bit image) is held as a
        dask array, so that neither finding the range nor later uses decode the file again.

    Returns
    -------
    ``(3, y, x)`` uint8, numpy or dask as given.

    Raises
    ------
    ValueError
        A channel count other than 1-4, a boolean or complex image, a float image with values that
        are not finite, negative, above 255 or between 1.001 and 2, or an integer image with
        negative values.

    """
    n = int(cyx.shape[0])
    if n not in (1, 2, 3, 4):
        raise ValueError(
            f"{what}: {n} channels; loki reads grey, grey + alpha, RGB or RGBA brightfield (H&E) "
            "images, not multiplexed fluorescence."
        )
    # grey (and alpha): its one channel is converted, then repeated; the alpha channel of RGBA is dropped
    grey = n <= 2
    part = cyx[:1] if grey else cyx[:3]
    lazy = not isinstance(cyx, np.ndarray)
    if lazy and np.dtype(cyx.dtype) != np.uint8 and (read_whole or all(len(c) == 1 for c in part.chunks)):
        # its range and its conversion would each decode the whole file (and so would every later
        # use of the lazy result: each patch, each pyramid level written); read it once
        import dask.array as da

        rgb = _as_uint8(np.asarray(part), what)
        rgb = _stack([rgb] * 3) if grey else rgb
        return da.from_array(rgb, chunks=_CHUNKS)
    rgb = _as_uint8(part, what)
    return _stack([rgb] * 3) if grey else rgb


def _as_uint8(cyx: Any, what: str) -> Any:
    """One or three channels ``(c, y, x)`` as uint8, by :data:`CONVERSION_RULES`."""
    dtype = np.dtype(cyx.dtype)
    if dtype == np.uint8:
        return cyx
    check_pixel_dtype(dtype, what)
    return scaled_to_uint8(cyx, uint8_factor(dtype, *_range(cyx), what))


def check_pixel_dtype(dtype: Any, what: str) -> None:
    """Raise a ValueError unless ``dtype`` holds integers or floats (not booleans or complex numbers)."""
    if np.dtype(dtype).kind not in "uif":
        raise ValueError(f"{what}: pixels of dtype {dtype}; loki reads integer or float RGB images.")


def uint8_factor(dtype: Any, lo: Any, hi: Any, finite: bool, what: str, where: str = "") -> float:
    """The factor that takes pixels of ``dtype`` with values ``lo`` to ``hi`` to uint8, with its warning.

    By :data:`CONVERSION_RULES`; ``where`` (e.g. ``" in its coarsest level"``) follows the values in
    the warning and errors, when they were found in part of the image.

    Raises
    ------
    ValueError
        As :func:`to_uint8_cyx`.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if not finite:
            raise ValueError(f"{what}: a {dtype} image with NaN or infinite values{where}.")
        if lo < 0 or hi > 255 or 1 + _FLOAT_TOL < hi < 2:
            why = (
                "values below 0 or above 255"
                if lo < 0 or hi > 255
                else "neither [0, 1] (values above 1) nor a plausible [0, 255] image (maximum below 2)"
            )
            raise ValueError(
                f"{what}: a {dtype} image with values {lo:g} to {hi:g}{where}: {why}. loki reads float images as "
                "[0, 1] (all values in it) or [0, 255] (maximum 2-255); convert it to uint8 RGB first."
            )
        unit = hi <= 1 + _FLOAT_TOL
        _warn_conversion(
            what,
            f"{dtype} pixels with values {lo:g} to {hi:g}{where}, read as {'[0, 1]' if unit else '[0, 255]'}: "
            f"{'scaled by 255, ' if unit else ''}rounded to uint8 (loki stores 8-bit RGB).",
        )
        return 255.0 if unit else 1.0
    if lo < 0:
        raise ValueError(
            f"{what}: a {dtype} image with negative values (minimum {lo}{where}); loki reads RGB 0 to "
            "2**bits - 1."
        )
    bits = next((b for b in _BIT_DEPTHS if hi < 2**b), int(hi).bit_length())
    full = 2**bits - 1
    why = (
        f"the smallest of {', '.join(map(str, _BIT_DEPTHS))} bits that holds them"
        if bits in _BIT_DEPTHS
        else "the bit length of their maximum"
    )
    _warn_conversion(
        what,
        f"{dtype} pixels with values {lo} to {hi}{where}, read as {bits}-bit data ({why}): scaled by "
        f"255 / {full} to uint8 (loki stores 8-bit RGB).",
    )
    return 255.0 / full


def stated_bits_factor(dtype: Any, bits: int, source: str, what: str) -> float:
    """The factor that takes unsigned integers of ``bits`` significant bits to uint8, with its warning.

    For a bit depth the file states (``source`` names where, e.g. ``"OME SignificantBits = 12"``),
    so that no pixel is read to find it; brighter values than ``2 ** bits - 1`` become 255.
    """
    full = 2**bits - 1
    _warn_conversion(
        what,
        f"{np.dtype(dtype)} pixels read as {bits}-bit data (the file's {source}): scaled by 255 / {full} "
        "to uint8 (loki stores 8-bit RGB).",
    )
    return 255.0 / full


def _stack(parts: list) -> Any:
    """Channels ``(c, y, x)`` stacked; numpy ones as a view of a ``(y, x, c)`` array (what :func:`read_rgb` returns)."""
    if isinstance(parts[0], np.ndarray):
        out = np.empty((*parts[0].shape[1:], sum(len(p) for p in parts)), dtype=parts[0].dtype)
        cyx = np.moveaxis(out, -1, 0)
        start = 0
        for part in parts:
            cyx[start : start + len(part)] = part
            start += len(part)
        return cyx
    import dask.array as da

    return da.concatenate(parts)


def _range(cyx: Any) -> tuple[Any, Any, bool]:
    """Minimum, maximum and whether all values are finite, in one pass over a numpy or dask array."""
    if isinstance(cyx, np.ndarray):
        finite = np.dtype(cyx.dtype).kind != "f" or all(
            np.isfinite(cyx[:, y : y + step]).all() for y, step in _row_blocks(cyx)
        )
        lo, hi = cyx.min(), cyx.max()
    else:
        import dask

        finite = np.isfinite(cyx).all() if np.dtype(cyx.dtype).kind == "f" else True
        lo, hi, finite = dask.compute(cyx.min(), cyx.max(), finite)
    if np.dtype(cyx.dtype).kind == "f":
        if not finite:  # nanmin / nanmax would hide them; the caller raises
            return float("nan"), float("nan"), False
        return float(lo), float(hi), True
    return int(lo), int(hi), True


def scaled_to_uint8(cyx: Any, factor: float, *, rechunk: bool = True) -> Any:
    """``rint(cyx * factor)`` as uint8, clipped to 0-255, block by block (numpy or lazily for dask).

    ``rechunk=False`` keeps a dask array's blocks (e.g. whole tiles of a file) as they are.
    """

    def convert(block: np.ndarray) -> np.ndarray:
        # float32 (not float64): 2 bytes more a 16-bit sample, not 6, while a block is converted
        out = np.multiply(block, np.float32(factor), dtype=np.float32)
        if block.dtype.kind == "f":  # NaN where a slide's range was found in its coarsest level only
            np.nan_to_num(out, copy=False, nan=0.0)
        return np.clip(np.rint(out, out=out), 0, 255, out=out).astype(np.uint8)

    if isinstance(cyx, np.ndarray):
        # by blocks of rows into the uint8 result: converting the whole image at once held a float32
        # copy of it (twice the size of a 16-bit image) on top of the image and the result
        # (written channels last, the layout read_rgb returns, so that it needs no other copy)
        out = np.moveaxis(np.empty((*cyx.shape[1:], cyx.shape[0]), dtype=np.uint8), -1, 0)
        for y, step in _row_blocks(cyx):
            out[:, y : y + step] = convert(cyx[:, y : y + step])
        return out
    return (cyx.rechunk(_CHUNKS) if rechunk else cyx).map_blocks(convert, dtype=np.uint8)


def _row_blocks(cyx: np.ndarray, values: int = _BLOCK_VALUES) -> list[tuple[int, int]]:
    """``(first row, rows)`` of the blocks of about ``values`` values that cover a ``(c, y, x)`` array."""
    step = max(1, values // max(1, cyx.shape[0] * cyx.shape[2]))
    return [(y, step) for y in range(0, cyx.shape[1], step)]


def decodes_whole_file(data: Any) -> bool:
    """Whether a dask array rests on a task that decodes its whole file (:data:`_WHOLE_FILE_TASKS`).

    Every compute of such an array, whatever blocks it asks for, decodes the whole file again.
    """
    return any(str(name).startswith(_WHOLE_FILE_TASKS) for name in data.dask.layers)


class DecodedOnce:
    """A lazy image whose file is decoded at its first use only, and then held.

    spatialdata-io's images rest on one task that decodes the whole file (dask_image's imread), so
    each compute (a region, a chunk of patches, a pyramid level) decodes the file again. This wraps
    such an array: the first block computed decodes it (once, whichever threads ask together) and
    keeps the decoded pixels, ``height x width x channels`` bytes for uint8 (533 MB for a 13,332 px
    RGB square), for as long as an array made by :meth:`to_dask` is referenced; every later block is
    a copy of a region of them. Nothing is decoded before.

    Parameters
    ----------
    source
        The dask array as its reader gives it (any chunks; each compute may decode the whole file).

    Notes
    -----
    The decoded pixels do not pickle: a copy (e.g. in the worker of a process-based scheduler) decodes
    the file again at its own first use.
    """

    def __init__(self, source: Any):
        self.source = source
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def decoded(self) -> bool:
        """Whether the file has been decoded (and its pixels are held)."""
        return self._pixels is not None

    def pixels(self) -> np.ndarray:
        """The whole image, decoded at the first call (one decode for all threads)."""
        with self._lock:
            if self._pixels is None:
                # one task decodes the file: no threads to gain, and a nested threaded compute to avoid
                self._pixels = _computed_whole(self.source)
        return self._pixels

    def to_dask(self, chunks: tuple[int, ...] | None = None) -> Any:
        """The image as a dask array of ``chunks`` (default: all channels, 1024 x 1024 px) over the held pixels."""
        import dask.array as da
        from dask.array.core import normalize_chunks

        if chunks is None:
            chunks = (self.source.shape[0], *_CHUNKS[1:])

        def block(block_info=None):
            region = tuple(slice(a, b) for a, b in block_info[None]["array-location"])
            return np.array(self.pixels()[region])  # a copy: dask's consumers may write to their blocks

        chunks = normalize_chunks(chunks, self.source.shape, dtype=self.source.dtype)
        return da.map_blocks(block, chunks=chunks, dtype=self.source.dtype)


def _computed_whole(data: Any) -> np.ndarray:
    """A dask array computed whole, from the single task its rechunks split (a decoded file) when it has one.

    Computing a whole array that a rechunk split into blocks copies each block out of the decoded
    image and then the blocks into the result; the one task under the rechunks (they change no
    value) gives the same pixels as it holds them, e.g. a channels-first view of the decoded file.
    """
    graph, name = data.dask, data.name
    while name.startswith("rechunk-") and len(graph.dependencies[name]) == 1:
        name = next(iter(graph.dependencies[name]))
    layer = graph.layers[name]
    if name != data.name and len(layer) == 1:
        from dask.delayed import Delayed

        # the task's own result: computed as an array, it would be copied into a new one
        (key,) = layer.keys()
        whole = np.asarray(Delayed(key, dict(graph.cull({key}))).compute(scheduler="synchronous"))
        if whole.shape == tuple(data.shape) and whole.dtype == data.dtype:
            return whole
    return np.asarray(data.compute(scheduler="synchronous"))


def _png_header(path: Path) -> tuple[int, int] | None:
    """Bits per sample and colour type of a PNG file, read from its header; None when it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image file, from its header (no pixel is decoded); None when unreadable.

    A TIFF's is that of the first level of its first series (tifffile); other files', PIL's.
    """
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                level = tif.series[0].levels[0]
                shape, axes = level.shape, level.axes
        except (OSError, ValueError, IndexError):  # tifffile's TiffFileError is a ValueError
            return None
        if "X" not in axes or "Y" not in axes:
            return None
        return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # as _read_file: a full-resolution scan is no decompression bomb
    try:
        with Image.open(path) as img:
            return img.size
    except OSError:  # PIL's UnidentifiedImageError included
        return None


def check_not_sixteen_bit_png(path: Path) -> None:
    """Refuse a 16-bit colour PNG: PIL (and the readers built on it) keep only each sample's high byte.

    That is right for data using all 16 bits, but 12-bit data would come out 16 times too dark, and
    the file cannot be told apart without its full values.
    """
    # colour types 2 and 6 are RGB and RGBA; 16-bit grey PNGs PIL reads with their values
    if _png_header(path) in ((16, 2), (16, 6)):
        raise ValueError(
            f"{path.name}: a 16-bit colour PNG, which PIL reads as its high bytes only (12-bit data "
            "would be 16 times too dark); save it as a 16-bit TIFF, which loki reads with its "
            "values, or as an 8-bit PNG."
        )


def read_rgb(image: str | Path | np.ndarray) -> np.ndarray:
    """Return an image as a ``(y, x, 3)`` uint8 array.

    Parameters
    ----------
    image
        Path to a jpg/png/tif file readable by PIL (TIFFs of more than 8 bits, or of floats, are
        read by tifffile), or an array ``(y, x)``, ``(y, x, 3|4)`` or ``(3|4, y, x)``.

    Notes
    -----
    {rules}

    A 16-bit colour PNG raises a ValueError (PIL reads its high bytes only).

    """
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {str(path)!r}.")
        arr = _read_file(path)
        if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
            return arr
        what = path.name
    else:
        arr, what = np.asarray(image), "image array"
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(
            f"{what}: image arrays must be (y, x), (y, x, 3|4) or (3|4, y, x), got shape {arr.shape}."
        )
    if arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{what}: image arrays must have 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA) channels, got shape "
            f"{arr.shape}."
        )
    rgb = to_uint8_cyx(np.moveaxis(arr, -1, 0), what)
    return np.ascontiguousarray(np.moveaxis(rgb, 0, -1))


read_rgb.__doc__ = read_rgb.__doc__.format(rules=CONVERSION_RULES.replace("\n", "\n    "))


def _read_file(path: Path) -> np.ndarray:
    """The pixels of an image file: 8-bit ones as RGB by PIL, others with their own values."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # full-resolution H&E scans are legitimately huge
    check_not_sixteen_bit_png(path)
    try:
        with Image.open(path) as img:
            if img.mode in _EIGHT_BIT_MODES and not _pil_reduces(img):
                return np.asarray(img.convert("RGB"))
            if img.mode in _NUMERIC_MODES:
                return np.asarray(img)
            mode = img.mode
    except UnidentifiedImageError:  # e.g. a float RGB TIFF
        if path.suffix.lower() not in _TIFF_SUFFIXES:
            raise
        mode = "unknown to PIL"
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        return np.asarray(tifffile.imread(path, series=0, level=0))
    raise ValueError(
        f"{path.name}: PIL mode {mode!r}; loki reads 8-bit images (modes {', '.join(sorted(_EIGHT_BIT_MODES))}), "
        f"grey images of modes {', '.join(sorted(_NUMERIC_MODES))} and TIFFs of any bit depth."
    )


def _pil_reduces(img: Any) -> bool:
    """Whether PIL decodes more than 8 bits a sample into an 8-bit mode (e.g. 16-bit RGB TIFF as 'RGB')."""
    for tile in img.tile:
        args = tile[3]
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and re.search(r";(16|32)", rawmode):
            return True
    return False


def pyramid_scale_factors(shape_yx: tuple[int, int]) -> list[int]:
    """Factor-2 pyramid levels while the next level keeps >= 512 px on its long side.

    At least one level is added, unless the short side cannot be halved (an image 1 px thin).
    """
    size, short = max(shape_yx), min(shape_yx)
    factors = []
    while (size // 2 >= _MIN_LEVEL_SIZE or not factors) and short >= 2:
        factors.append(2)
        size, short = size // 2, short // 2
    return factors


def parse_rgb_image(rgb: np.ndarray, transformations: dict[str, Any]) -> Any:
    """Build a multiscale ``Image2DModel`` (dask backed, channels ``r, g, b``) from ``(y, x, 3)`` uint8."""
    import dask.array as da

    return parse_cyx_image(da.from_array(np.moveaxis(rgb, -1, 0), chunks=_CHUNKS), transformations)


def parse_cyx_image(cyx: Any, transformations: dict[str, Any]) -> Any:
    """Multiscale ``Image2DModel`` from a lazy ``(3, y, x)`` uint8 dask array (nothing is computed)."""
    from spatialdata.models import Image2DModel

    factors = pyramid_scale_factors(tuple(cyx.shape[1:]))
    return Image2DModel.parse(
        cyx,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=transformations,
        scale_factors=factors or None,
        chunks=_CHUNKS,
    )
