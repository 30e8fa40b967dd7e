"""Load H&E images into lazy multiscale SpatialData images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Pyramid levels are added while the next level is at least this many pixels on its long side.
_MIN_LEVEL_SIZE = 512
_CHUNKS = (3, 1024, 1024)
#: PIL modes of 8-bit images, which convert to RGB without losing values
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)


def read_rgb(image: str | Path | np.ndarray) -> np.ndarray:
    """Return an image as a ``(y, x, 3)`` uint8 array.

    Parameters
    ----------
    image
        Path to a jpg/png/tif file readable by PIL, or an array ``(y, x, 3|4)`` or ``(3|4, y, x)``
        of uint8 (an alpha channel is dropped; grey images are repeated to three channels).

    """
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {str(path)!r}.")
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # full-resolution H&E scans are legitimately huge
        with Image.open(path) as img:
            if img.mode not in _EIGHT_BIT_MODES:  # convert("RGB") would clip 16-bit or float values
                raise ValueError(
                    f"{path.name}: PIL mode {img.mode!r}; loki reads 8-bit brightfield (H&E) images "
                    f"(modes {', '.join(sorted(_EIGHT_BIT_MODES))})."
                )
            arr = np.asarray(img.convert("RGB"))
        return arr
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"Image arrays must be uint8 RGB, got dtype {arr.dtype}.")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3:
        raise ValueError(f"Image arrays must be (y, x, 3) or (3, y, x), got shape {arr.shape}.")
    if arr.shape[-1] not in (3, 4) and arr.shape[0] in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] not in (3, 4):
        raise ValueError(f"Image arrays must have 3 (RGB) or 4 (RGBA) channels, got shape {arr.shape}.")
    return np.ascontiguousarray(arr[..., :3])


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
