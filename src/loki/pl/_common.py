"""What every ``lk.pl`` function shares: axes to draw into, saving/showing, colours, and the section's H&E."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar
from weakref import WeakKeyDictionary

import numpy as np
import pandas as pd
from anndata import AnnData

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import check_int, is_real, loki_record, require_keys
from loki._utils._affine import apply_matrix
from loki._utils._folders import missing_folders, remove_empty_folders
from loki._utils._spacing import nearest_distances
from loki._utils._spatialdata import (
    affine_to,
    aligned_coordinate_systems,
    default_coordinate_system,
    get_table,
    is_spatialdata,
    lowres_image,
    section_image_key,
    section_shapes,
    table_key_of,
    table_region,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend
    from spatialdata import SpatialData

_NON_INTERACTIVE = ("agg", "pdf", "svg", "ps", "pgf", "cairo", "template")
NA_COLOUR = "lightgray"  # spots without a value or a label, as scanpy's na_color

_F = TypeVar("_F", bound=Callable)


def plot_function(func: _F) -> _F:
    """Wrap an ``lk.pl`` function: check ``save=`` before drawing, and leave no figure behind on failure.

    A call that raises (a bad input found late, a ``save`` path that cannot be written) closes the
    figures it opened; the caller's own figures (``ax=``) stay open.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import matplotlib.pyplot as plt

        _check_save(kwargs.get("save"))
        before = set(plt.get_fignums())
        try:
            return func(*args, **kwargs)
        except BaseException:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise

    return wrapper


def _check_save(save) -> None:
    # a binary file object (e.g. io.BytesIO) is what Figure.savefig takes besides a path
    if save is None or (isinstance(save, str | os.PathLike) and str(save)) or hasattr(save, "write"):
        return
    raise ValueError(
        f"save must be a file path (str or pathlib.Path; its suffix picks the format), a binary file "
        f"object or None, got {save!r}. scanpy's save=True (a file in sc.settings.figdir) is not supported."
    )


def table_name(data: AnnData | SpatialData, table: AnnData, table_key: str | None) -> str:
    """How messages call the plotted table: ``"adata"``, or ``"sdata.tables['MOB1']"`` in a SpatialData."""
    if not is_spatialdata(data):
        return "adata"
    return f"sdata.tables[{table_key_of(data, table, table_key)!r}]"


def coordinates(table: AnnData, key: str, where: str = "adata") -> np.ndarray:
    """The first two columns of ``table.obsm[key]`` as float64, after checking it has them.

    ``where`` names the table in the messages (e.g. ``"section 'B' adata"``).
    """
    require_keys(table.obsm, key, f"{where}.obsm")
    xy = np.asarray(table.obsm[key], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"{where}.obsm[{key!r}] must be (n_obs, 2+), got {xy.shape}.")
    if len(xy) == 0:
        raise ValueError(
            f"{where} has no spots (n_obs = 0): nothing to draw. Was it subset to an empty selection?"
        )
    return xy[:, :2]


def panel_grid(
    n: int,
    ncols: int,
    ax: Axes | Sequence[Axes] | None,
    size: float = 4.0,
    aspect: float = 1.0,
    *,
    fit_text: bool = False,
) -> tuple[Figure, list[Axes]]:
    """A new figure with ``n`` panels, or the ``n`` axes the caller gave (one Axes, a list or an array).

    A new panel is ``size`` inches high and ``aspect * size`` wide; ``ncols`` panels per row. With
    ``fit_text`` a new figure lays itself out whenever it is drawn (matplotlib's compressed
    constrained layout), so that axis labels, tick labels and legends beside the panels stay inside
    it in a plain ``fig.savefig`` too, not only with ``save=`` (which crops to what is drawn). Not
    for figures with colour bars: ``fig.tight_layout()`` refuses such a figure once it has a layout
    engine (RuntimeError), and their panels' text fits without one.
    """
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        wrong = [type(a).__name__ for a in axes if not isinstance(a, Axes)]
        if wrong:
            raise TypeError(f"ax must hold matplotlib Axes, got {wrong[0]}.")
        if len(axes) != n:
            raise ValueError(
                f"ax holds {len(axes)} axes, but {n} panels are drawn; pass {n} "
                "(an Axes when there is one, else a list or array) or leave ax=None."
            )
        return axes[0].figure, axes
    check_int(ncols, "ncols")
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=(size * aspect * ncols, size * nrows),
        squeeze=False,
        layout="compressed" if fit_text else None,
    )
    for extra in grid.ravel()[n:]:
        extra.set_visible(False)
    return fig, list(grid.ravel()[:n])


def spots_aspect(xy: np.ndarray) -> float:
    """Width over height of the spots' extent, within [0.5, 2]: the shape of a new spatial panel.

    A section wider than tall drawn into square panels leaves bands of white between the rows.
    """
    width, height = np.ptp(xy, axis=0) if len(xy) else (1.0, 1.0)
    return float(np.clip(width / height, 0.5, 2.0)) if height > 0 else 2.0


def value_colormap(cmap: str | Colormap) -> Colormap:
    """``cmap`` with missing (NaN) values in :data:`NA_COLOUR`; resolve it before drawing (a bad name fails)."""
    import matplotlib.pyplot as plt

    try:
        colours = plt.get_cmap(cmap)
    except ValueError as err:
        raise ValueError(f"cmap must be a matplotlib colormap or its name, got {cmap!r}: {err}") from None
    return colours.with_extremes(bad=NA_COLOUR)


def scatter_values(
    ax: Axes, xy: np.ndarray, values: np.ndarray, *, cmap: Colormap, **kwargs
) -> PathCollection:
    """Spots coloured by a continuous value; a spot without one (NaN) is drawn in :data:`NA_COLOUR`.

    Rasterised, see :func:`scatter_spots`.
    """
    return scatter_spots(ax, xy, c=values, cmap=cmap, plotnonfinite=True, **kwargs)


def scatter_spots(ax: Axes, xy: np.ndarray, *, s: SpotSize | float | None = None, **kwargs) -> PathCollection:
    """``ax.scatter`` of spots, rasterised: a PDF or SVG holds them as one image, as scanpy draws them.

    A vector file with one path per spot grows with the number of spots (tens of MB at 10^5 Visium HD
    bins) and is slow to open; axes, labels and legends stay vector graphics. A :class:`SpotSize`
    ``s`` with a spacing is resized to it by :func:`finish`, once the figure's layout is known.
    """
    area = s.area if isinstance(s, SpotSize) else s
    points = ax.scatter(xy[:, 0], xy[:, 1], s=area, rasterized=True, **kwargs)
    if isinstance(s, SpotSize) and s.spacing is not None:
        _SPACED[points] = s.spacing
    return points


def legend_beside(ax: Axes, *args, widen: bool, **kwargs) -> Legend:
    """A legend without frame to the right of ``ax``, centred on its height; ``ax.legend(*args, **kwargs)``.

    With ``widen`` (a figure the plot function made with ``panel_grid(..., fit_text=True)``), the
    figure grows by the legend's width: its layout then gives the legend room without shrinking the
    panels, which a legend of many long names would otherwise squeeze to nothing (matplotlib then
    warns and lays nothing out).
    """
    legend = ax.legend(*args, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, **kwargs)
    if widen:
        fig = ax.figure
        fig.set_figwidth(fig.get_figwidth() + legend.get_window_extent().width / fig.dpi)
    return legend


def legend_columns(n: int) -> int:
    """Columns of a legend with ``n`` entries: one up to 14, two up to 30, then three (as scanpy)."""
    return 1 if n <= 14 else 2 if n <= 30 else 3


def category_colours(n: int) -> np.ndarray:
    """``n`` distinct RGBA colours by scanpy's rule for a categorical without stored colours.

    matplotlib's colour cycle when it has ``n`` colours, else scanpy's 20-, 28- or 102-colour palette;
    beyond 102 categories (where scanpy draws all in grey) evenly spaced colours of ``turbo``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba_array

    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", [])
    if n <= len(cycle):
        return to_rgba_array(cycle[:n])
    from scanpy.plotting.palettes import default_20, default_28, default_102

    for palette in (default_20, default_28, default_102):
        if n <= len(palette):
            return to_rgba_array(palette[:n])
    return plt.get_cmap("turbo")(np.linspace(0.0, 1.0, n))


def stored_colours(table: AnnData, column: str, n: int) -> np.ndarray | None:
    """The colours scanpy's plots store in ``.uns[f"{column}_colors"]``, when they cover ``n`` categories.

    As scanpy, the first ``n`` of at least ``n`` valid colours; None otherwise (nothing is written).
    """
    from matplotlib.colors import is_color_like, to_rgba_array

    stored = table.uns.get(f"{column}_colors")
    if stored is None or isinstance(stored, str) or len(stored) < n:
        return None
    stored = list(stored)[:n]
    if not all(is_color_like(c) for c in stored):
        warnings.warn(
            f"adata.uns[{column + '_colors'!r}] holds values that are not colours; using the default palette.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
        return None
    return to_rgba_array(stored)


def as_categories(values: pd.Series, column: str) -> pd.Categorical:
    """``.obs[column]`` as categories, as scanpy takes it: categoricals, strings and bools; not numbers.

    scanpy draws a numeric column as continuous values; drawing each distinct value as a class would
    give one legend entry per spot.
    """
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return pd.Categorical(values)
    if pd.api.types.is_bool_dtype(dtype):
        return pd.Categorical(values.astype(str))
    if pd.api.types.is_numeric_dtype(dtype):
        raise ValueError(
            f"adata.obs[{column!r}] holds numbers ({dtype}), not categories. Convert it with "
            f".astype('category') to draw each value as a class, draw class scores (an .obsm DataFrame) "
            f"with kind='scores', or continuous values with sc.pl.embedding(adata, basis=..., color={column!r})."
        )
    return pd.Categorical(values)


def finish(fig: Figure, *, show: bool | None, save: str | Path | None, created: bool) -> None:
    """Save and/or show a figure, as scanpy's ``savefig_or_show`` does.

    ``save`` writes the figure; a path's missing folders are created. ``show=None`` shows it when the plot function ``created`` it (no
    ``ax=``) and the backend is interactive, never when it drew into the caller's axes. A figure the
    function created, saved and did not show is closed, so that a loop saving one figure per item
    leaves none open; the returned object stays usable.
    """
    import matplotlib.pyplot as plt

    fit_spot_sizes(fig)
    if save is not None:
        _save(fig, save)
    if show is None:
        show = created and plt.get_backend().lower() not in _NON_INTERACTIVE
    if show:
        plt.show()
    elif save is not None and created:
        plt.close(fig)


def _save(fig: Figure, save) -> None:
    """``fig.savefig(save)``, creating a path's missing folders first (as scanpy does with its figdir).

    Folders created here are removed again when saving fails, so a failed call leaves nothing behind.
    """
    created = missing_folders(Path(save).parent) if isinstance(save, str | os.PathLike) else []
    if created:
        created[0].mkdir(parents=True)
    try:
        fig.savefig(save, bbox_inches="tight", dpi=150)
    except BaseException:
        remove_empty_folders(created)
        raise
    if created:
        logger.info("created the folder %s to save the figure", created[0])


def section_image(
    data: AnnData | SpatialData,
    *,
    table_key: str | None,
    image_key: str | None,
    coordinate_system: str,
    requested: bool | None,
    max_side: int = 2000,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The section's H&E, small enough to draw, and the affine from its pixels into ``coordinate_system``.

    Pixel ``(i, j)`` spans ``[j, j + 1] x [i, i + 1]``, as in SpatialData.

    Parameters
    ----------
    data
        The section: a SpatialData, or an AnnData (which has no image).
    table_key, image_key
        Table of the section and, when the caller named one, its image.
    coordinate_system
        Coordinate system into which the image is placed, through its own transformation.
    requested
        The caller's ``show_image``: None draws the image when the section has one; True does too,
        with a warning when there is none; False draws none.
    max_side
        Longest side of the returned image (see :func:`loki._utils._spatialdata.lowres_image`).

    Returns
    -------
    ``(pixels, 3x3 matrix)``, pixels as (y, x, 3) or, for a one-channel image, (y, x); or None when
    there is no image to draw. An ``image_key`` that does not exist (also with ``requested=False``),
    or a ``coordinate_system`` that the image lacks, raise a KeyError listing what exists.
    """
    check_image_key(data, image_key)
    if requested is False:
        return None
    if not is_spatialdata(data):
        if requested:
            _no_image("an AnnData holds no image (show_image=True)", warn=True)
        return None
    table = get_table(data, table_key)
    key = table_key_of(data, table, table_key)
    try:
        name = section_image_key(data, key, image_key)
    except KeyError as err:
        if image_key is not None:
            raise
        _no_image(f"table {key!r} has no image of its own ({err.args[0]})", warn=bool(requested))
        return None
    element = data.images[name]
    _affine(element, coordinate_system, f"image {name!r}")
    pixels, to_cs = lowres_image(element, max_side, coordinate_system)
    pixels = pixels[..., :3]
    return (pixels[..., 0] if pixels.shape[-1] == 1 else pixels), to_cs


def check_image_key(data: AnnData | SpatialData, image_key: str | None) -> None:
    """Refuse an ``image_key`` that names no image of a SpatialData, listing ``sdata.images``.

    Checked whatever ``show_image`` says: ``show_image=False`` (or an image array) does not make a
    wrong name right. An AnnData holds no image; ``image_key`` is not used for it.
    """
    if image_key is not None and is_spatialdata(data):
        require_keys(data.images, image_key, "sdata.images")


def spots_to_cs(
    data: AnnData | SpatialData,
    table: AnnData,
    *,
    table_key: str | None,
    spatial_key: str,
    coordinate_system: str,
) -> np.ndarray:
    """3x3 affine from the spot coordinates ``table.obsm[spatial_key]`` into ``coordinate_system``.

    As :func:`loki.tl.align` reads them (:func:`loki.tl._align_spatialdata.source_to_cs` and
    ``target_to_cs``): a table's coordinates are its spots' own, placed by the transformation of the
    spot shapes it annotates (as they are without spot shapes); the coordinates an alignment wrote
    (``.uns['loki'][spatial_key]`` records it) lie in the frame of the shapes element it wrote, which
    it placed in the coordinate system it recorded, and are drawn only there. An AnnData's
    coordinates are taken as they are. Coordinates that cannot be placed in ``coordinate_system``
    raise a KeyError (a coordinate system or shapes element that does not exist, naming those that
    do) or a ValueError (an alignment placed in another coordinate system).
    """
    if not is_spatialdata(data):
        return np.eye(3)
    from loki.tl._align_spatialdata import Section, source_to_cs, target_to_cs

    key = table_key_of(data, table, table_key)
    section = Section(data, key, table)
    record = loki_record(table, spatial_key) if spatial_key != Key.SPATIAL else None
    where = f"{table_name(data, table, table_key)}.obsm[{spatial_key!r}]"
    if record is not None and "matrix" in record and record.get("method") != "target":
        placed_in = record.get("coordinate_system")
        if placed_in is not None and str(placed_in) != coordinate_system:
            raise ValueError(
                f"{where} holds the spots of the alignment {spatial_key!r}, which placed them in coordinate "
                f"system {str(placed_in)!r}, not {coordinate_system!r}. Pass coordinate_system="
                f"{str(placed_in)!r} to draw them, or spatial_key={Key.SPATIAL!r} for the section's own spots "
                f"in {coordinate_system!r}."
            )
        shapes = record.get("shapes")
        if shapes is not None:
            require_keys(
                data.shapes,
                str(shapes),
                "sdata.shapes",
                hint=f"The alignment {spatial_key!r} placed its spots {where} by that shapes element, which "
                "is gone; align again to place them.",
            )
            _affine(data.shapes[str(shapes)], coordinate_system, f"the aligned spots' shapes {str(shapes)!r}")
        return target_to_cs(section, spatial_key, Key.SPATIAL, coordinate_system, coordinate_system)
    spots = section_shapes(data, table)
    if spots is not None:  # a stack's target ("method": "target") holds its own coordinates too
        _affine(spots, coordinate_system, f"the spot shapes {table_region(table)!r}")
    return source_to_cs(section, coordinate_system)


def _own_coordinate_system(data, table: AnnData, table_key: str | None, image_key: str | None) -> str:
    """The coordinate system a section's spot shapes and image share (``"global"`` for an AnnData)."""
    if not is_spatialdata(data):
        return Key.GLOBAL_CS
    try:
        image = data.images[section_image_key(data, table_key_of(data, table, table_key), image_key)]
    except KeyError:  # no image of its own: the spots alone decide (a missing image_key is named later)
        image = None
    return default_coordinate_system(
        [section_shapes(data, table), image], ignore=aligned_coordinate_systems(data)
    )


def _no_image(reason: str, *, warn: bool) -> None:
    message = f"Drawing the spots without an image: {reason}"
    if warn:
        warnings.warn(message, LokiWarning, stacklevel=user_stacklevel())
    else:
        logger.info(message)


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


Background = tuple[np.ndarray, np.ndarray | None]


def section_spots(
    data,
    table: AnnData,
    *,
    spatial_key: str,
    show_image: bool | np.ndarray | None,
    table_key: str | None,
    image_key: str | None,
    coordinate_system: str | None,
) -> tuple[Background | None, np.ndarray]:
    """The section's image with its affine into the display frame (None without one), and its spots there.

    The display frame of a SpatialData is ``coordinate_system``'s: the spots are placed by
    :func:`spots_to_cs` and the image by its own transformation (:func:`section_image`), as
    spatialdata-plot draws them; an AnnData's is its spot coordinates. ``show_image`` as an array is
    drawn with its pixels in the units of the spot coordinates. ``coordinate_system=None`` is the one
    an alignment's ``spatial_key`` was placed in, else ``"global"``, or the only one the spot shapes
    and the image share when they are not in ``"global"`` (:func:`default_coordinate_system`).
    """
    check_image_key(data, image_key)  # also when no image is drawn: a wrong name is a mistake either way
    xy = coordinates(table, spatial_key, table_name(data, table, table_key))
    if coordinate_system is None:
        placed_in = (loki_record(table, spatial_key) or {}).get("coordinate_system")
        coordinate_system = (
            str(placed_in)
            if placed_in is not None
            else _own_coordinate_system(data, table, table_key, image_key)
        )
    if isinstance(show_image, np.ndarray):
        background = None
    else:
        background = section_image(
            data,
            table_key=table_key,
            image_key=image_key,
            coordinate_system=coordinate_system,
            requested=show_image,
        )
    to_cs = spots_to_cs(
        data, table, table_key=table_key, spatial_key=spatial_key, coordinate_system=coordinate_system
    )
    if isinstance(show_image, np.ndarray):
        background = show_image, to_cs
    return background, apply_matrix(xy, to_cs)


def check_spot_size(spot_size: float | None) -> None:
    """Refuse a ``spot_size`` that draws no spot: it must be a finite number of points^2 > 0, or None."""
    if spot_size is None or (is_real(spot_size) and np.isfinite(spot_size) and spot_size > 0):
        return
    raise ValueError(f"spot_size must be a marker area in points^2 > 0 (or None), got {spot_size!r}.")


def check_panel_size(panel_size: float) -> None:
    """Refuse a ``panel_size`` that makes no figure: it must be a finite number of inches > 0."""
    if is_real(panel_size) and np.isfinite(panel_size) and panel_size > 0:
        return
    raise ValueError(
        f"panel_size must be the height of a panel in inches, a finite number > 0, got {panel_size!r}."
    )


def panel_title(ax: Axes, text: str, **kwargs) -> None:
    """Title a panel; a title wider than the panel is wrapped onto lines that fit it.

    Long class or cell-type names (e.g. "Olfactory ensheathing glia (OEC)") over panels a few inches
    wide would run into the next panel's title and colour bar. A title that fits is left as it is;
    lines break between words only.
    """
    import textwrap

    import matplotlib
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    text = str(text)
    font = FontProperties(
        size=kwargs.get("fontsize", matplotlib.rcParams["axes.titlesize"]),
        weight=kwargs.get("fontweight", matplotlib.rcParams["axes.titleweight"]),
    )
    measure = TextToPath().get_text_width_height_descent
    room = ax.get_position().width * ax.figure.get_figwidth() * 72.0 / 1.05  # points, with a margin

    def fits(lines: str) -> bool:
        return max(measure(line, font, ismath=False)[0] for line in lines.split("\n")) <= room

    title = text
    for width in range(len(text) - 1, 7, -1):
        if fits(title):
            break
        title = textwrap.fill(text, width=width, break_long_words=False, break_on_hyphens=False)
    ax.set_title(title, **kwargs)


class SpotSize(NamedTuple):
    """The marker size of a plot's spots: an area to draw them with, and the spacing it is fitted to."""

    area: float
    """Marker area in points^2: ``spot_size``, or until :func:`fit_spot_sizes` runs, one from the count."""
    spacing: float | None
    """Median distance between neighbouring spots in data units, which :func:`fit_spot_sizes` makes the
    markers' diameter; None keeps ``area`` (a ``spot_size`` given, or no two distinct spots)."""


#: The collections of spots that :func:`fit_spot_sizes` sizes, with their spacing in data units.
_SPACED: WeakKeyDictionary[PathCollection, float] = WeakKeyDictionary()

#: The smallest marker area (points^2) spots are fitted to, so that dense spots stay visible.
_SMALLEST_AREA = 1.0

#: Spots queried at most for the nearest-neighbour median, a sample of a larger set.
_SPACING_SAMPLE = 20_000


def marker_size(
    spot_size: float | None,
    n: int,
    *,
    xy: np.ndarray | Sequence[np.ndarray] | None = None,
    area: float = 8000.0,
    smallest: float = 4.0,
) -> SpotSize:
    """``spot_size``, else markers as wide as the spots' spacing in ``xy`` (one array, or one per section).

    Without ``spot_size`` the markers are drawn first with an area that shrinks with the number of
    spots ``n`` and fitted by :func:`fit_spot_sizes` to the median nearest-neighbour distance (the
    median over the sections of a list), so that neighbouring disks touch without covering each other
    whatever the panel's size; without ``xy``, or with no two distinct spots, the first area stays.
    """
    check_spot_size(spot_size)
    if spot_size is not None:
        return SpotSize(float(spot_size), None)
    sections = [] if xy is None else [xy] if isinstance(xy, np.ndarray) else list(xy)
    spacings = [d for d in map(spot_spacing, sections) if d is not None]
    return SpotSize(max(smallest, area / max(n, 1)), float(np.median(spacings)) if spacings else None)


def spot_spacing(xy: np.ndarray) -> float | None:
    """Median distance from a spot to its nearest other spot in ``xy`` (data units); None without two.

    Spots in one place (repeated coordinates) are not each other's neighbours; more than
    ``_SPACING_SAMPLE`` spots are queried through an evenly spaced sample of them.
    """
    dist = nearest_distances(xy[np.isfinite(xy).all(axis=1), :2], max_queries=_SPACING_SAMPLE)
    return float(np.median(dist)) if dist.size else None


def fit_spot_sizes(fig: Figure) -> None:
    """Give the spots of ``fig`` drawn with a spacing (:func:`marker_size`) markers as wide as it.

    The figure is laid out first (a layout engine, colour bars and equal aspect set each panel's
    final size), then the spacing is converted to points through the panel's data-to-display
    transform. The markers lose their edge line (drawn in the face colour, it would widen them by its
    width); spots closer than a point are drawn a point wide, over each other.
    """
    spaced = [(c, _SPACED[c]) for a in fig.axes for c in a.collections if c in _SPACED]
    if not spaced:
        return
    fig.draw_without_rendering()
    for points, spacing in spaced:
        origin, right, down = points.axes.transData.transform([[0.0, 0.0], [spacing, 0.0], [0.0, spacing]])
        diameter = np.sqrt(np.hypot(*(right - origin)) * np.hypot(*(down - origin))) * 72.0 / fig.dpi
        points.set_linewidths(0.0)
        points.set_sizes([max(_SMALLEST_AREA, diameter**2)])


def draw_section(ax: Axes, background: Background | None, xy: np.ndarray) -> None:
    """Prepare a spatial panel: the image (if any) under a view framing the spots, y downwards."""
    if background is not None:
        draw_image(ax, *background)
        frame_spots(ax, xy)
    elif not ax.yaxis_inverted():  # image convention; a user's axes may have it already
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
