"""What every ``lk.pl`` function shares: axes to draw into, saving/showing, and the section's H&E."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from loki._logging import logger
from loki._utils._spatialdata import (
    affine_to,
    get_table,
    is_spatialdata,
    lowres_image,
    section_image_key,
    section_shapes,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

_NON_INTERACTIVE = ("agg", "pdf", "svg", "ps", "pgf", "cairo", "template")


def panel_grid(
    n: int, ncols: int, ax: Axes | Sequence[Axes] | None, size: float = 4.0
) -> tuple[Figure, list[Axes]]:
    """A new figure with ``n`` panels, or the ``n`` axes the caller gave (one Axes or a sequence)."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != n:
            raise ValueError(
                f"ax holds {len(axes)} axes, but {n} panels are drawn; pass {n} or leave ax=None."
            )
        return axes[0].figure, axes
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, grid = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for extra in grid.ravel()[n:]:
        extra.set_visible(False)
    return fig, list(grid.ravel()[:n])


def finish(fig: Figure, *, show: bool | None, save: str | Path | None, created: bool) -> None:
    """Save and/or show a figure, as scanpy's ``savefig_or_show`` does.

    ``save`` writes the figure. ``show=None`` shows it when the plot function ``created`` it (no
    ``ax=``) and the backend is interactive, never when it drew into the caller's axes. A figure the
    function created, saved and did not show is closed, so that a loop saving one figure per item
    leaves none open; the returned object stays usable.
    """
    import matplotlib.pyplot as plt

    if save is not None:
        fig.savefig(save, bbox_inches="tight", dpi=150)
    if show is None:
        show = created and plt.get_backend().lower() not in _NON_INTERACTIVE
    if show:
        plt.show()
    elif save is not None and created:
        plt.close(fig)


def section_image(
    data: AnnData | SpatialData,
    *,
    table_key: str | None,
    image_key: str | None,
    coordinate_system: str,
    requested: bool | None,
    flag: str,
    max_side: int = 2000,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The section's H&E, small enough to draw, and the affine from its pixels to the spot coordinates.

    The spot coordinates are in the units of the table's spot shapes (``coordinate_system``'s units
    when the table annotates no shapes element); pixel ``(i, j)`` spans ``[j, j + 1] x [i, i + 1]``.

    Parameters
    ----------
    data
        The section: a SpatialData, or an AnnData (which has no image).
    table_key, image_key
        Table of the section and, when the caller named one, its image.
    coordinate_system
        Coordinate system in which the image and the spot shapes are compared.
    requested
        The caller's ``flag`` (``show_image`` / ``image``): None draws the image when the section has
        one; True does too, with a warning when there is none; False draws none.
    flag
        Name of that parameter, for the warning.
    max_side
        Longest side of the returned image (see :func:`loki._utils._spatialdata.lowres_image`).

    Returns
    -------
    ``(pixels, 3x3 matrix)``, pixels as (y, x, 3) or, for a one-channel image, (y, x); or None when
    there is no image to draw. An ``image_key`` that does not exist, or a ``coordinate_system`` that
    the image or the spot shapes lack, raise a KeyError listing what exists.
    """
    if requested is False:
        return None
    if not is_spatialdata(data):
        if requested:
            _no_image(f"an AnnData holds no image ({flag}=True)", warn=True)
        return None
    table = get_table(data, table_key)
    key = table_key if table_key is not None else next(k for k, t in data.tables.items() if t is table)
    try:
        name = section_image_key(data, key, image_key)
    except KeyError as err:
        if image_key is not None:
            raise
        _no_image(f"table {key!r} has no image of its own ({err.args[0]})", warn=bool(requested))
        return None
    element = data.images[name]
    _affine(element, coordinate_system, f"image {name!r}")
    shapes = section_shapes(data, table)
    spots_to_cs = np.eye(3) if shapes is None else _affine(shapes, coordinate_system, "the spot shapes")
    pixels, to_cs = lowres_image(element, max_side, coordinate_system)
    pixels = pixels[..., :3]
    return (pixels[..., 0] if pixels.shape[-1] == 1 else pixels), np.linalg.inv(spots_to_cs) @ to_cs


def _no_image(reason: str, *, warn: bool) -> None:
    message = f"Drawing the spots without an image: {reason}"
    if warn:
        warnings.warn(message, UserWarning, stacklevel=_outside_loki())
    else:
        logger.info(message)


def _outside_loki() -> int:
    # stacklevel of the first caller outside the package, however deep the plot's helpers go
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _affine(element, coordinate_system: str, what: str) -> np.ndarray:
    try:
        return affine_to(element, coordinate_system, what)
    except KeyError as err:
        raise KeyError(f"{err.args[0]} Pass coordinate_system= one of those.") from None


def draw_image(ax: Axes, pixels: np.ndarray, matrix: np.ndarray | None = None) -> None:
    """Draw an image under the spots; ``matrix`` maps its pixels into the axes' data coordinates."""
    from matplotlib.transforms import Affine2D

    h, w = pixels.shape[:2]
    cmap = "gray" if pixels.ndim == 2 else None
    artist = ax.imshow(pixels, extent=(0, w, h, 0), origin="upper", cmap=cmap, zorder=0)
    if matrix is not None:
        artist.set_transform(Affine2D(matrix) + ax.transData)


def frame_spots(ax: Axes, xy: np.ndarray) -> None:
    """Limit the view to the spots with a 5% margin, y downwards (an image may reach far beyond them)."""
    finite = xy[np.isfinite(xy).all(axis=1)]
    if len(finite) == 0:
        return
    lo, hi = finite.min(axis=0), finite.max(axis=0)
    pad = 0.05 * max(hi[0] - lo[0], hi[1] - lo[1], 1.0)
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(hi[1] + pad, lo[1] - pad)
