"""Tiles: cover the tissue of an H&E image with a grid of patch-sized squares.

An H&E image without spatial transcriptomics (a serial section, a whole-slide image) has no spots to
crop. :func:`tile_image` gives it a section of its own: a shapes element of square tiles over the tissue
and a table annotating them, laid out like the readers' sections, so that :func:`loki.pp.spot_patches`,
:func:`loki.tl.embed_image`, :func:`loki.tl.annotate`, :func:`loki.tl.decompose`,
:func:`loki.tl.predict_expression` and :func:`loki.tl.align` (H&E-to-ST) work on it unchanged.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import check_element_name, require_keys
from loki._utils._affine import apply_matrix, linear_scale
from loki._utils._spatialdata import (
    affine_to,
    aligned_coordinate_systems,
    default_coordinate_system,
    image_levels,
    lowres_image,
    recorded_microns_per_pixel,
)

from ._pseudo_spots import hex_grid

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: Side (pixels) up to which the tissue mask is computed; a coarser pyramid level is used when there is one.
_MASK_SIDE = 2048
#: Mask rows added up at a time when sweeping a mask for its summed-area table.
_SWEEP_ROWS = 256


def tissue_mask(
    rgb: np.ndarray,
    *,
    min_saturation: float = 0.05,
    min_brightness: float = 0.15,
    smooth: int = 5,
    max_glass_saturation: float = 0.08,
) -> np.ndarray:
    """Tissue pixels of an H&E image: saturation above Otsu's threshold, where the image shows glass.

    Glass and background are bright and grey, stained tissue is coloured. The saturation
    ``(max - min) / max`` of each pixel, median-filtered over ``smooth`` pixels, is split by Otsu's
    threshold over the pixels that are not dark, which is never taken below ``min_saturation``, so
    that an image holding only background does not split its noise into "tissue". Pixels whose
    brightest channel is below ``min_brightness`` (a scanner's black padding, outside the scanned
    area) count as background: on them the ratio is noise over noise.

    Otsu's threshold separates glass from tissue only when the image shows glass. An image that shows
    none (a region cut inside the tissue, or tissue on a black background) has no grey class to split
    off, and Otsu's threshold would split the tissue itself, nuclei from stroma, dropping most of it.
    So when the less saturated of Otsu's two classes is on average more saturated than
    ``max_glass_saturation``, it is taken as tissue, and every pixel above ``min_saturation`` is
    tissue. Pen marks and coloured debris count as tissue, and very pale tissue may not; pass a mask
    of your own to :func:`tile_image` for such slides.

    Parameters
    ----------
    rgb
        ``(y, x, 3)`` image, uint8 or floats in [0, 1].
    min_saturation
        Lowest threshold, in [0, 1).
    min_brightness
        Darker pixels (brightest channel, in [0, 1]) are background.
    smooth
        Side of the median filter in pixels (1: none).
    max_glass_saturation
        Highest mean saturation, in [0, 1], of the less saturated of Otsu's classes for it to be taken
        as glass (glass is near grey, about 0.01-0.06; the palest class of tissue without glass,
        0.1-0.18, on the real sections loki was tested on). A slide scanned with a strongly tinted
        background may need it raised; 1 always splits by Otsu's threshold.

    Returns
    -------
    Boolean ``(y, x)`` mask.

    """
    return _tissue_mask(
        rgb,
        min_saturation=min_saturation,
        min_brightness=min_brightness,
        smooth=smooth,
        max_glass_saturation=max_glass_saturation,
    )[0]


def _tissue_mask(
    rgb: np.ndarray,
    *,
    min_saturation: float = 0.05,
    min_brightness: float = 0.15,
    smooth: int = 5,
    max_glass_saturation: float = 0.08,
) -> tuple[np.ndarray, bool]:
    """:func:`tissue_mask`, and whether the image showed no glass (every coloured pixel is tissue)."""
    from scipy.ndimage import median_filter

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"Expected an (y, x, 3) RGB image, got shape {rgb.shape}.")
    if not 0 <= min_saturation < 1:
        raise ValueError(f"min_saturation must be in [0, 1), got {min_saturation}.")
    if not 0 <= min_brightness < 1:
        raise ValueError(f"min_brightness must be in [0, 1), got {min_brightness}.")
    if not 0 <= max_glass_saturation <= 1:
        raise ValueError(f"max_glass_saturation must be in [0, 1], got {max_glass_saturation}.")
    x = rgb[..., :3].astype(np.float32)
    if np.issubdtype(rgb.dtype, np.integer):
        x /= 255.0
    hi, lo = x.max(axis=2), x.min(axis=2)
    lit = hi >= max(min_brightness, 1e-6)
    saturation = np.where(lit, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    if smooth > 1:
        saturation = median_filter(saturation, size=int(smooth))
    values = saturation[lit]  # dark padding is background already: it must not make a class of its own
    threshold = otsu_threshold(values)
    lower = values[values <= threshold]
    no_glass = bool(lower.size) and float(lower.mean()) > max_glass_saturation
    if no_glass:
        threshold = min_saturation
    return saturation > max(threshold, min_saturation), no_glass


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut that maximises the between-class variance."""
    counts, edges = np.histogram(np.ravel(values), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    total = weight[-1]
    if total == 0:
        return 0.0
    mass = np.cumsum(counts * centres)
    w0, w1 = weight[:-1], total - weight[:-1]
    valid = (w0 > 0) & (w1 > 0)
    if not valid.any():
        return float(centres[0])
    mu0 = np.where(valid, mass[:-1] / np.maximum(w0, 1), 0.0)
    mu1 = np.where(valid, (mass[-1] - mass[:-1]) / np.maximum(w1, 1), 0.0)
    between = np.where(valid, w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    return float(edges[1:-1][np.argmax(between)])


def box_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Area fraction of each box ``(x0, y0, x1, y1)`` covered by ``True`` pixels of ``mask``.

    Pixel ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]``; boxes are clipped to the mask, and partly
    covered pixels count by the area they share with the box, so a box smaller than a pixel (a
    coarse mask) takes that pixel's value. The integral image of a pixelwise constant mask is
    bilinear inside every pixel, so interpolating the summed-area table gives the exact area, O(1)
    a box. Only the table entries next to box corners are computed (:func:`_summed_area_at`), so
    a mask of any size costs a few rows of memory, not a table of its size.
    """
    h, w = mask.shape
    x0, x1 = np.clip(boxes[:, 0], 0, w), np.clip(boxes[:, 2], 0, w)
    y0, y1 = np.clip(boxes[:, 1], 0, h), np.clip(boxes[:, 3], 0, h)
    # each corner needs the table at the four grid points around it
    cx, cy = np.concatenate([x1, x0, x1, x0]), np.concatenate([y1, y1, y0, y0])
    i = np.minimum(np.floor(cy), h - 1).astype(np.int64)
    j = np.minimum(np.floor(cx), w - 1).astype(np.int64)
    table = _summed_area_at(mask, np.concatenate([i, i, i + 1, i + 1]), np.concatenate([j, j + 1, j, j + 1]))
    t00, t01, t10, t11 = table.astype(np.float64).reshape(4, -1)
    v, u = cy - i, cx - j
    corner = t00 * (1 - u) * (1 - v) + t01 * u * (1 - v) + t10 * (1 - u) * v + t11 * u * v
    n = len(boxes)
    inside = corner[:n] - corner[n : 2 * n] - corner[2 * n : 3 * n] + corner[3 * n :]
    area = (x1 - x0) * (y1 - y0)
    return np.where(area > 0, np.clip(inside / np.where(area > 0, area, 1.0), 0.0, 1.0), 0.0)


def _summed_area_at(mask: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``mask[:i, :j].sum()`` for each pair ``(i, j)``, exactly (int64), in O(width) memory.

    Rows are swept top to bottom, keeping each column's count of ``True`` so far; at each row that
    some pair asks for, a cumulative sum along the row gives the counts of all its prefixes.
    """
    out = np.empty(len(i), dtype=np.int64)
    if not len(i):  # np.split would still give one (empty) group, for no row
        return out
    columns = np.zeros(mask.shape[1] + 1, dtype=np.int64)  # columns[c + 1]: True pixels above, column c
    prefix = np.empty_like(columns)
    order = np.argsort(i, kind="stable")
    rows, starts = np.unique(i[order], return_index=True)
    done = 0
    for row, asked in zip(rows, np.split(order, starts[1:]), strict=True):
        for top in range(done, row, _SWEEP_ROWS):
            columns[1:] += mask[top : min(top + _SWEEP_ROWS, row)].sum(axis=0, dtype=np.int64)
        done = row
        np.cumsum(columns, out=prefix)
        out[asked] = prefix[j[asked]]
    return out


def tile_centres(width: float, height: float, tile: float, spacing: float, grid: str) -> np.ndarray:
    """Centres of tiles of side ``tile`` lying wholly inside a ``width`` x ``height`` image, ``spacing`` apart."""
    if tile > width or tile > height:
        return np.zeros((0, 2))
    half = tile / 2
    if grid == "square":
        ys, xs = np.meshgrid(
            np.arange(half, height - half + 1e-9, spacing),
            np.arange(half, width - half + 1e-9, spacing),
            indexing="ij",
        )
        return np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    centres = hex_grid(half, half, width - half, height - half, spacing)
    keep = (centres[:, 0] <= width - half + 1e-9) & (centres[:, 1] <= height - half + 1e-9)
    return centres[keep]


#: Fewest pixels a tile may span, and most tiles one call may lay out.
_MIN_TILE_PX, _MAX_TILES = 4.0, 20_000_000


def _check_tile_count(tile_px: float, spacing_px: float, width: int, height: int) -> None:
    # before laying out the grid: a unit slip (mpp 25 for 0.25) would make ~1e9 candidate tiles
    hint = "check microns_per_pixel=, tile_um= and spacing_um= (all in µm)"
    if tile_px < _MIN_TILE_PX:
        raise ValueError(
            f"A tile spans {tile_px:.2f} px (tile_um / microns_per_pixel); tiles need at least "
            f"{_MIN_TILE_PX:.0f} px of image: {hint}."
        )
    n = (width / spacing_px) * (height / spacing_px)
    if n > _MAX_TILES:
        raise ValueError(
            f"About {n:,.0f} tiles {spacing_px:.1f} px apart would cover the {width}x{height} px image, more "
            f"than {_MAX_TILES:,}: {hint}, or tile a region."
        )


def tile_image(
    sdata: SpatialData,
    image_key: str,
    *,
    microns_per_pixel: float | None = None,
    tile_um: float = 55.0,
    spacing_um: float | None = None,
    grid: Literal["square", "hex"] = "square",
    min_tissue: float = 0.5,
    mask: np.ndarray | None = None,
    within: str | None = None,
    coordinate_system: str | None = None,
    key_added: str | None = None,
) -> AnnData:
    """Cover the tissue of an H&E image with square tiles, as a section of its own.

    Tiles of ``tile_um`` are laid on a grid ``spacing_um`` apart over the image's finest level, those
    not wholly inside the image are left out, and a tile is kept when at least ``min_tissue`` of it is
    tissue (:func:`tissue_mask` on a level of at most 2,048 pixels a side, read with a stride when
    the image has no such level, or ``mask``). The paper cuts whole-slide images into patches of the
    Visium spot's size (55 µm) in the same way.

    Parameters
    ----------
    sdata
        SpatialData holding the image.
    image_key
        The H&E image in ``sdata.images``.
    microns_per_pixel
        Micrometres per pixel of the image's finest level (a scanner's "mpp"; 0.25 at 40x, 0.5 at 20x).
        Default: the value :func:`loki.io.read_slide` or :func:`loki.io.read_visium` (for each of a
        section's images) recorded in ``sdata.attrs['loki']['microns_per_pixel']``, or for the image of
        a section read by :mod:`loki.io`, its table's ``microns_per_unit`` times the size of a pixel in
        the table's units.
    tile_um
        Side of a tile in µm (55: a Visium spot; ``loki-tiny`` was trained on 200 µm squares).
    spacing_um
        Centre-to-centre distance; default ``tile_um`` (tiles touch, no overlap).
    grid
        ``"square"`` or ``"hex"`` (rows ``spacing * sqrt(3) / 2`` apart, odd rows shifted by half).
    min_tissue
        Least tissue fraction of a kept tile, in [0, 1]; 0 keeps every tile.
    mask
        Boolean ``(y, x)`` tissue mask of the image at any resolution (scaled to the image), instead of
        :func:`tissue_mask`.
    within
        A shapes element of regions (e.g. a pathologist's annotations, exported from QuPath as GeoJSON
        and parsed with :func:`geopandas.read_file` and :class:`spatialdata.models.ShapesModel`): only
        tiles whose centre lies in one of its polygons (or circles) are kept, and ``.obs[f"{within}_id"]``
        names that region (the first one, where regions overlap).
    coordinate_system
        Coordinate system of the image in which the tiles are laid out, as the readers lay out spots;
        default ``"global"``, or the image's only one when it is not in ``"global"`` (later calls on
        the tiles then find it by default too).
    key_added
        Name of the new table; default ``"{image_key}_tiles"``. The shapes element is
        ``"{key_added}_shapes"`` (SpatialData names are unique across element types).

    Returns
    -------
    The new table, also stored as ``sdata.tables[key_added]``. Writes:

    - ``sdata.shapes[f"{key_added}_shapes"]``: one square per tile, in ``coordinate_system``
      (``Identity``), as the readers write spots;
    - ``sdata.tables[key_added]``: one row per tile, no genes; ``.obsm['spatial']`` the tile centres in
      ``coordinate_system``, ``.obs['loki_tissue_fraction']``, ``.obs['tile_row']`` / ``['tile_col']``
      (grid position), and ``.uns['loki']`` with ``image_key``, ``microns_per_unit`` (µm per unit of
      ``coordinate_system``), ``spot_diameter_um`` (the tile side, read by
      :func:`loki.pp.spot_patches`) and the tiling parameters (with the coordinate system used).

    Raises
    ------
    KeyError
        Unknown image or coordinate system, or no ``microns_per_pixel`` given or recorded.
    ValueError
        Bad sizes or fractions, a ``key_added`` that is not a SpatialData element name or that (or its shapes
        name) already names an element, tiles under 4 px,
        larger than the image or more than 20 million of them (a unit slip in ``microns_per_pixel`` or
        ``tile_um``), a mask of another aspect ratio, or no tile kept (with the tissue fraction of the
        image, to help choose ``min_tissue``).

    """
    import geopandas as gpd
    from anndata import AnnData
    from scipy import sparse
    from shapely.geometry import Polygon
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    require_keys(sdata.images, image_key, "sdata.images")
    if within is not None:
        require_keys(sdata.shapes, within, "sdata.shapes")
    if coordinate_system is None:
        regions = None if within is None else sdata.shapes[within]
        coordinate_system = default_coordinate_system(
            [sdata.images[image_key], regions],
            ignore=aligned_coordinate_systems(sdata),
            what=f"sdata.images[{image_key!r}]"
            + ("" if within is None else f" and sdata.shapes[{within!r}]"),
        )
    if microns_per_pixel is None:
        microns_per_pixel = recorded_microns_per_pixel(sdata, image_key, coordinate_system)
    for name, value in (("microns_per_pixel", microns_per_pixel), ("tile_um", tile_um)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    spacing_um = tile_um if spacing_um is None else spacing_um
    if not (np.isfinite(spacing_um) and spacing_um > 0):
        raise ValueError(f"spacing_um must be a positive number, got {spacing_um!r}.")
    if grid not in ("square", "hex"):
        raise ValueError(f"grid must be 'square' or 'hex', got {grid!r}.")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}.")
    key_added = f"{image_key}_tiles" if key_added is None else key_added
    check_element_name(key_added, f"key_added={key_added!r}")
    shapes_key = f"{key_added}_shapes"
    taken = {name.lower() for _, name, _ in sdata.gen_elements()}
    for name in (key_added, shapes_key):
        if name.lower() in taken:
            raise ValueError(f"sdata already holds an element named {name!r}; pass another key_added=.")

    element = sdata.images[image_key]
    to_cs = affine_to(element, coordinate_system, f"sdata.images[{image_key!r}]")
    levels = image_levels(element)
    height, width = (int(n) for n in levels[0].shape[1:])
    tile_px, spacing_px = tile_um / microns_per_pixel, spacing_um / microns_per_pixel
    _check_tile_count(tile_px, spacing_px, width, height)
    if tile_px > min(width, height):
        raise ValueError(
            f"No tile of image {image_key!r} fits: a tile of {tile_um:g} µm spans {tile_px:.1f} px at "
            f"{microns_per_pixel:g} µm per pixel, and the image is {width}x{height} px "
            f"({width * microns_per_pixel:.4g}x{height * microns_per_pixel:.4g} µm). Pass a smaller "
            "tile_um=, or check microns_per_pixel=."
        )
    centres = tile_centres(width, height, tile_px, spacing_px, grid)
    if mask is None:
        rgb, to_cs_of_mask = lowres_image(element, _MASK_SIDE, coordinate_system)
        mask, no_glass = _tissue_mask(rgb)
        if no_glass:  # right for a crop inside the tissue; a strongly tinted glass would be tiled too
            warnings.warn(
                f"tile_image: sdata.images[{image_key!r}] shows no glass (its palest pixels are as "
                "saturated as tissue: a region inside the tissue, or tissue on black), so every coloured "
                "pixel counts as tissue. If it does show glass with a tinted background, pass "
                "mask=lk.pp.tissue_mask(rgb, max_glass_saturation=1.0) of a low-resolution level, or within=.",
                LokiWarning,
                stacklevel=user_stacklevel(),
            )
        to_mask = np.linalg.inv(to_cs_of_mask) @ to_cs  # finest-level pixels -> mask pixels
    else:
        mask = _check_mask(mask, height, width)
        to_mask = np.diag([mask.shape[1] / width, mask.shape[0] / height, 1.0])
    half = tile_px / 2
    boxes = np.hstack([centres - half, centres + half])
    fraction = box_fractions(
        mask, np.hstack([apply_matrix(boxes[:, :2], to_mask), apply_matrix(boxes[:, 2:], to_mask)])
    )
    keep = fraction >= min_tissue
    if not keep.any():
        raise ValueError(
            f"No tile of image {image_key!r} holds at least {min_tissue:.0%} tissue ({len(centres)} tiles of "
            f"{tile_px:.1f} px fit in its {width}x{height} pixels; {mask.mean():.1%} of the image is tissue). "
            "Lower min_tissue=, pass mask=, or check microns_per_pixel= and tile_um=."
        )
    if within is not None:
        region_of = containing_shape(sdata, within, apply_matrix(centres, to_cs), coordinate_system)
        if not (keep & (region_of >= 0)).any():
            raise ValueError(
                f"No tile of image {image_key!r} with at least {min_tissue:.0%} tissue has its centre in "
                f"sdata.shapes[{within!r}] ({int(keep.sum())} tissue tiles, {int((region_of >= 0).sum())} tiles "
                f"inside its {len(sdata.shapes[within])} shapes); check that both are in {coordinate_system!r}."
            )
        keep &= region_of >= 0
    centres, fraction, boxes = centres[keep], fraction[keep], boxes[keep]
    spacing_px = spacing_um / microns_per_pixel
    rows = np.rint((centres[:, 1] - half) / (spacing_px * (np.sqrt(3) / 2 if grid == "hex" else 1.0)))
    cols = np.floor((centres[:, 0] - half) / spacing_px + 1e-6)
    ids = pd.Index([f"tile_{i}" for i in range(len(centres))], name="tile_id")

    corners = [boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]]
    corners = np.stack([apply_matrix(c, to_cs) for c in corners], axis=1)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[Polygon(c) for c in corners], index=ids),
        transformations={coordinate_system: Identity()},
    )
    centres = apply_matrix(centres, to_cs)
    units_per_pixel = linear_scale(to_cs)
    obs = pd.DataFrame(
        {
            "tile_id": ids.to_numpy(),
            "tile_row": rows.astype(np.int64),
            "tile_col": cols.astype(np.int64),
            "region": pd.Categorical([shapes_key] * len(ids)),
            "loki_tissue_fraction": fraction.astype(np.float32),
        },
        index=ids.to_numpy(),
    )
    if within is not None:
        if f"{within}_id" in obs.columns:
            raise ValueError(
                f"within={within!r} would name its column {within + '_id'!r}, which tiles already have; "
                "rename the shapes element."
            )
        names = sdata.shapes[within].index.astype(str).to_numpy()
        obs[f"{within}_id"] = pd.Categorical(names[region_of[keep]], categories=pd.unique(names))
    adata = AnnData(X=sparse.csr_matrix((len(ids), 0), dtype=np.float32), obs=obs)
    adata.obsm[Key.SPATIAL] = centres
    adata.uns[Key.UNS] = {
        "image_key": image_key,
        "microns_per_unit": float(microns_per_pixel) / units_per_pixel,
        "spot_diameter_um": float(tile_um),
        "tiles": {
            "tile_um": float(tile_um),
            "spacing_um": float(spacing_um),
            "grid": grid,
            "min_tissue": float(min_tissue),
            "within": within,
            "coordinate_system": coordinate_system,
            "n_candidates": len(keep),
            "microns_per_pixel": float(microns_per_pixel),
        },
    }
    table = TableModel.parse(adata, region=shapes_key, region_key="region", instance_key="tile_id")
    sdata.shapes[shapes_key] = shapes
    try:
        sdata.tables[key_added] = table
    except Exception:
        del sdata.shapes[shapes_key]
        raise
    logger.info(
        "added %d tiles of %.0f µm (%.1f px) over image %r as sdata.shapes[%r] and sdata.tables[%r]",
        len(ids),
        tile_um,
        tile_px,
        image_key,
        shapes_key,
        key_added,
    )
    return table


def containing_shape(
    sdata: SpatialData, shapes_key: str, xy: np.ndarray, coordinate_system: str
) -> np.ndarray:
    """Position in ``sdata.shapes[shapes_key]`` of the first shape holding each point, or -1.

    ``xy`` are points in ``coordinate_system``; they are brought into the shapes' own coordinates, so
    regions drawn on any level of the image (or in another unit) are matched. Circles (points with a
    ``radius`` column) count as discs; a point on a polygon's outline is inside it.
    """
    import shapely

    shapes = sdata.shapes[shapes_key]
    to_cs = affine_to(shapes, coordinate_system, f"sdata.shapes[{shapes_key!r}]")
    local = apply_matrix(np.asarray(xy, dtype=np.float64), np.linalg.inv(to_cs))
    geometry = shapes.geometry.to_numpy()
    if "radius" in shapes.columns and (shapely.get_type_id(geometry) == 0).all():  # circles: points + radius
        from scipy.spatial import cKDTree

        centres = shapely.get_coordinates(geometry)
        radius = shapes["radius"].to_numpy(dtype=np.float64)
        near = cKDTree(centres).query_ball_point(local, r=float(radius.max()))
        points = np.repeat(np.arange(len(local)), [len(n) for n in near])
        regions = np.concatenate([np.asarray(n, dtype=np.int64) for n in near]) if len(near) else points
        inside = ((local[points] - centres[regions]) ** 2).sum(1) <= radius[regions] ** 2
        points, regions = points[inside], regions[inside]
    else:
        # a centre on a region's outline (annotations drawn on whole pixels) counts as inside
        points, regions = shapely.STRtree(geometry).query(shapely.points(local), predicate="intersects")
    first = np.full(len(local), len(geometry), dtype=np.int64)
    np.minimum.at(first, points, regions)
    return np.where(first < len(geometry), first, -1)


def _check_mask(mask, height: int, width: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-d boolean array, got shape {mask.shape}.")
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean, got dtype {mask.dtype}.")
    ratio_mask, ratio_image = mask.shape[1] / mask.shape[0], width / height
    if abs(ratio_mask / ratio_image - 1) > 0.02:
        raise ValueError(
            f"mask of shape {mask.shape} does not have the image's aspect ratio ({height} x {width} pixels)."
        )
    return mask
