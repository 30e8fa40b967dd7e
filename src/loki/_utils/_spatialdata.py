"""Find the table, spot shapes and image of one section in a SpatialData object.

Sections follow one layout (see :mod:`loki.io`): a table annotating a shapes element of spot
circles (``region`` / ``instance_key`` in ``table.uns['spatialdata_attrs']``) and an H&E image in
the same coordinate system. Functions that only need a table accept an AnnData too.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from loki._keys import Key

from ._affine import apply_matrix, linear_scale
from ._validation import require_keys
from ._write import loki_uns

if TYPE_CHECKING:
    from spatialdata import SpatialData


def is_spatialdata(data: Any) -> bool:
    """Whether ``data`` is a SpatialData object (without importing spatialdata for AnnData input)."""
    return type(data).__name__ == "SpatialData" and hasattr(data, "tables")


def get_table(data: AnnData | SpatialData, table_key: str | None = None) -> AnnData:
    """Return the AnnData of a section.

    Parameters
    ----------
    data
        An AnnData (returned as is) or a SpatialData.
    table_key
        Key in ``sdata.tables``; may be omitted when the SpatialData holds exactly one table.
    """
    if isinstance(data, AnnData):
        return data
    if not is_spatialdata(data):
        raise TypeError(f"Expected an AnnData or a SpatialData, got {type(data).__name__}.")
    tables = data.tables
    if table_key is None:
        if len(tables) != 1:
            raise ValueError(
                f"The SpatialData holds {len(tables)} tables ({', '.join(map(repr, tables.keys())) or 'none'}); "
                "pass table_key= to choose one."
            )
        table_key = next(iter(tables.keys()))
    require_keys(tables, table_key, "sdata.tables")
    return tables[table_key]


def table_key_of(sdata: SpatialData, table: AnnData, table_key: str | None = None) -> str:
    """The key of ``table`` in ``sdata.tables``: ``table_key`` when given, else found by identity."""
    return table_key if table_key is not None else next(k for k, t in sdata.tables.items() if t is table)


def table_attrs(table: AnnData) -> dict[str, Any]:
    """The ``spatialdata_attrs`` of a table (region, region_key, instance_key), or an empty dict."""
    return dict(table.uns.get("spatialdata_attrs", {}))


def check_write_mode(data: Any, copy: bool, inplace: bool = True) -> None:
    """Refuse ``copy=`` / ``inplace=`` combinations that cannot both be honoured (scanpy's semantics).

    ``copy=True`` writes into a copy of an AnnData and returns it; ``inplace=False`` writes nothing and
    returns the results; a SpatialData is never copied (DESIGN §5), so it takes ``inplace=False`` only.
    """
    if copy and not inplace:
        raise ValueError("copy=True writes into a copy and inplace=False writes nothing; pass one of them.")
    if copy and is_spatialdata(data):
        raise ValueError(
            "copy=True applies to AnnData input; a SpatialData is modified in place, or pass inplace=False "
            "to get the results without writing them."
        )


def table_region(table: AnnData) -> str:
    """The single shapes element a section's table annotates."""
    attrs = table_attrs(table)
    region = attrs.get("region")
    if region is None:
        raise ValueError("The table does not annotate any element (no 'spatialdata_attrs' region).")
    if not isinstance(region, str):
        region = list(region)
        if len(region) != 1:
            raise ValueError(f"The table annotates several elements {region}; loki expects one per section.")
        region = region[0]
    return region


def section_image_key(sdata: SpatialData, table_key: str, image_key: str | None = None) -> str:
    """Name of the H&E image of a section.

    The explicit ``image_key`` wins; otherwise ``table.uns['loki']['image_key']`` (written by
    :mod:`loki.io` readers), the only image of the object, or the one image named after the table key
    or its region (``f"{key}_..."``), in that order. The last two pass over images another table claims,
    by its ``image_key`` or by a name that fits it better (``A10_image`` is ``A10``'s, not ``A1``'s): a
    section without an image never takes its neighbour's.
    """
    images = list(sdata.images.keys())
    if image_key is not None:
        require_keys(images, image_key, "sdata.images")
        return image_key
    stored = _stored_image_key(sdata.tables[table_key])
    if stored is not None and stored in images:
        return stored
    owners = other_tables_images(sdata, table_key)
    free = [k for k in images if k not in owners]
    if len(images) == 1 and free:
        return free[0]
    candidates = [k for k in free if _named_owner(sdata, k) == table_key]
    if len(candidates) == 1:
        return candidates[0]
    taken = sorted(owners)
    verb = "belongs" if len(taken) == 1 else "belong"
    others = f" ({', '.join(map(repr, taken))} {verb} to other tables)" if taken else ""
    if not free:  # e.g. a section read without its image, beside sections read with theirs
        recorded = "records no image" if stored is None else f"names image {stored!r}, which is not there,"
        if not taken:
            raise KeyError(
                f"Table {table_key!r} {recorded} and sdata.images is empty: there is no image to use."
            )
        raise KeyError(
            f"Table {table_key!r} {recorded} and sdata.images holds only other tables' images{others}; pass "
            "image_key= to use another table's image all the same."
        )
    raise KeyError(
        f"Cannot tell which image belongs to table {table_key!r}; pass image_key=. "
        f"Images in sdata.images: {', '.join(map(repr, images)) or 'none'}{others}."
    )


def other_tables_images(sdata: SpatialData, table_key: str) -> dict[str, str]:
    """The images of ``sdata`` that belong to tables other than ``table_key``, each with its table's key.

    An image belongs to the table whose ``.uns['loki']['image_key']`` names it, else to the table
    whose key or region names it most closely (see :func:`section_image_key`). When every image
    belongs to another table (or there is none), table ``table_key`` has no image of its own.
    """
    owners = {}
    for key, table in sdata.tables.items():
        stored = _stored_image_key(table)
        if key != table_key and stored in sdata.images:
            owners.setdefault(stored, key)
    for image in sdata.images:
        named = _named_owner(sdata, image)
        if image not in owners and named not in (None, table_key):
            owners[image] = named
    return owners


def has_own_image(sdata: SpatialData, table_key: str) -> bool:
    """Whether an image of ``sdata`` may be table ``table_key``'s: the one it records, or one no other table owns."""
    if _stored_image_key(sdata.tables[table_key]) in sdata.images:
        return True
    return len(other_tables_images(sdata, table_key)) < len(sdata.images)


def _named_owner(sdata: SpatialData, image: str) -> str | None:
    """The table whose key or region names ``image`` (``name`` or ``name_...``) most closely, or None."""
    best, owner = 0, None
    for key, table in sdata.tables.items():
        try:
            names = {key, table_region(table)}
        except ValueError:
            names = {key}
        for name in names:
            if (image == name or image.startswith(f"{name}_")) and len(name) > best:
                best, owner = len(name), key
    return owner


def _stored_image_key(table: AnnData) -> str | None:
    return loki_uns(table).get("image_key")


def recorded_microns_per_pixel(
    sdata: SpatialData, image_key: str, coordinate_system: str = Key.GLOBAL_CS
) -> float:
    """Micrometres per pixel of an image's finest level, from what a loki reader recorded.

    :func:`loki.io.read_slide` records it in ``sdata.attrs['loki']['microns_per_pixel']``. For the
    image of a section (a table with ``.uns['loki']['image_key']`` naming it and
    ``microns_per_unit``, as :mod:`loki.io` readers write), it is the table's µm per unit of its
    coordinates (the spot shapes' own units) times the size of a pixel in those units, compared in
    ``coordinate_system`` or another system holding both. Raises a KeyError naming both sources when
    neither is there.
    """
    from spatialdata.transformations import get_transformation

    recorded = dict(getattr(sdata, "attrs", {}) or {}).get(Key.UNS, {}).get("microns_per_pixel", {})
    if image_key in recorded:
        return float(recorded[image_key])
    image = sdata.images[image_key]
    for table in sdata.tables.values():
        uns = loki_uns(table)
        if uns.get("image_key") != image_key or "microns_per_unit" not in uns:
            continue
        try:
            spots = sdata.shapes[table_region(table)]
        except (ValueError, KeyError):  # no spot shapes: the table's coordinates are coordinate_system's
            return float(uns["microns_per_unit"]) * linear_scale(
                affine_to(image, coordinate_system, "the image")
            )
        shared = set(get_transformation(image, get_all=True)) & set(get_transformation(spots, get_all=True))
        if shared:
            cs = coordinate_system if coordinate_system in shared else min(shared)
            scale = linear_scale(affine_to(image, cs, "the image")) / linear_scale(
                affine_to(spots, cs, "the spots")
            )
            return float(uns["microns_per_unit"]) * scale
    raise KeyError(
        f"The pixel size of image {image_key!r} is not recorded: no entry in "
        f"sdata.attrs['loki']['microns_per_pixel'] (entries: {', '.join(map(repr, recorded)) or 'none'}) and no "
        "table with .uns['loki'] image_key and microns_per_unit for it whose spots share a coordinate system "
        "with it; pass microns_per_pixel= (the scanner's mpp: about 0.25 at 40x, 0.5 at 20x)."
    )


def aligned_coordinate_systems(*sdatas: Any) -> set[str]:
    """The coordinate systems that alignments recorded in the tables of ``sdatas`` placed sections in.

    :func:`loki.tl.align` records the one it wrote (``.uns['loki'][key]['coordinate_system']``, next
    to the placement's ``matrix``); objects that are not a SpatialData hold none.
    """
    systems = set()
    for sdata in {id(s): s for s in sdatas if is_spatialdata(s)}.values():
        for table in sdata.tables.values():
            for entry in loki_uns(table).values():
                if isinstance(entry, dict) and "matrix" in entry and entry.get("coordinate_system"):
                    systems.add(str(entry["coordinate_system"]))
    return systems


def default_coordinate_system(
    elements: list[Any],
    ignore: Collection[str] = (),
    *,
    what: str = "The section's spots and image",
    keyword: str = "coordinate_system",
) -> str:
    """The coordinate system to work in when the caller names none.

    ``"global"`` when every element (None entries are skipped) is in it, as loki's readers place
    sections; else the one coordinate system they share when there is exactly one (a section tiled or
    read into a system of its own); else the one left when the systems in ``ignore`` are set aside
    (:func:`aligned_coordinate_systems`: a section read into ``"sample1"`` and then aligned lies in
    ``"sample1"`` and ``"aligned"``, and its own is ``"sample1"``). Elements sharing several systems,
    none ``"global"`` (spatialdata-io places a Visium image in ``"heart"`` and
    ``"heart_downscaled_hires"``), are refused with a KeyError naming them, ``what`` they are and the
    ``keyword`` to pass. Elements sharing none: ``"global"``, whose absence the caller's check names
    with the systems each element has.
    """
    from spatialdata.transformations import get_transformation

    systems = [list(get_transformation(e, get_all=True)) for e in elements if e is not None]
    shared = [cs for cs in systems[0] if all(cs in s for s in systems[1:])] if systems else []
    if Key.GLOBAL_CS in shared or not shared:
        return Key.GLOBAL_CS
    own = [cs for cs in shared if cs not in set(ignore)]
    for candidates in (shared, own):
        if len(candidates) == 1:
            return candidates[0]
    named = own or shared
    besides = [cs for cs in shared if cs not in named]
    aside = f" (besides {_quoted(besides)}, where alignments placed them)" if besides else ""
    raise KeyError(
        f"{what} share the coordinate systems {_quoted(named)}{aside}, none of them 'global': pass "
        f"{keyword}= the one to work in."
    )


def _quoted(names: list[str]) -> str:
    return ", ".join(map(repr, names))


def image_levels(element) -> list[Any]:
    """The (c, y, x) arrays of an image element, finest first (one level for a single-scale image)."""
    if hasattr(element, "children") and len(element.children):
        names = sorted(element.children, key=lambda k: int(str(k).removeprefix("scale")))
        return [next(iter(element[n].data_vars.values())) for n in names]
    return [element]


def affine_to(element, coordinate_system: str, what: str) -> np.ndarray:
    """3x3 affine matrix (x, y) of ``element``'s transformation into ``coordinate_system``.

    ``what`` names the element in the KeyError raised when it has no such coordinate system.
    """
    from spatialdata.transformations import get_transformation

    transforms = get_transformation(element, get_all=True)
    require_keys(transforms, coordinate_system, f"the coordinate systems of {what}")
    matrix = transforms[coordinate_system].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    return np.asarray(matrix, dtype=np.float64)


def lowres_image(element, max_side: int = 2000, coordinate_system: str = Key.GLOBAL_CS):
    """Return an image level small enough to draw, as (y, x, c), and its pixel -> CS affine.

    The result has between ``max_side / 2`` and ``max_side`` pixels on its long side when the image
    is that large: a level of that size when there is one, else the coarsest level larger than
    ``max_side`` read with a stride (a single-scale whole-slide image, or a scanner's factor-4 pyramid
    whose levels skip that range), so that only the returned pixels are held in memory. An image
    smaller than that is returned whole. The 3x3 matrix maps the returned pixels (pixel ``(i, j)``
    spans ``[j, j + 1] x [i, i + 1]``, as in SpatialData) into ``coordinate_system``; a strided pixel
    is placed centred on the pixel it was read from.
    """
    levels = image_levels(element)
    sides = [max(lv.shape[1:]) for lv in levels]
    fits = [i for i, side in enumerate(sides) if max_side / 2 < side <= max_side]
    larger = [i for i, side in enumerate(sides) if side > max_side]
    level = levels[fits[0] if fits else larger[-1] if larger else 0]
    step = max(1, math.ceil(max(level.shape[1:]) / max_side))
    data = getattr(level, "data", level)
    pixels = np.asarray(data[:, ::step, ::step])
    # returned pixel k (corners at k, k + 1) is the level's pixel k * step, centred at k * step + 0.5:
    # it spans [k * step + shift, (k + 1) * step + shift] of the level, shift = (1 - step) / 2
    shift = (1 - step) / 2
    to_level = np.array([[step, 0.0, shift], [0.0, step, shift], [0.0, 0.0, 1.0]])
    to_finest = np.diag([levels[0].shape[2] / level.shape[2], levels[0].shape[1] / level.shape[1], 1.0])
    matrix = affine_to(element, coordinate_system, "the image") @ to_finest @ to_level
    return np.moveaxis(pixels, 0, -1), matrix


def section_shapes(sdata: SpatialData, table: AnnData):
    """The spot shapes element a section's table annotates, or None when it annotates none in ``sdata.shapes``."""
    try:
        region = table_region(table)
    except ValueError:
        return None
    return sdata.shapes[region] if region in sdata.shapes else None


def instance_ids(table: AnnData) -> np.ndarray:
    """The ids of the shapes a table's rows annotate: its instance key column, else its ``obs_names``."""
    instance_key = table_attrs(table).get("instance_key")
    return table.obs[instance_key].to_numpy() if instance_key in table.obs else table.obs_names.to_numpy()


def check_own_coordinates(table: AnnData, shapes, what: str) -> None:
    """Refuse ``.obsm['spatial']`` that holds the spots' positions in a coordinate system, not their own.

    loki reads ``.obsm['spatial']`` as the spot shapes' own coordinates (SpatialData's convention, as
    spatialdata-io writes it). Positions placed by one of the shapes' transformations (squidpy's
    ``spatial_neighbors(sdata, elements_to_coordinate_systems=...)`` writes such) would move every
    patch and alignment by that transformation, silently. Coordinates that match neither are left
    alone: a table may hold other points of its spots (e.g. nucleus centres of cell polygons); so are
    shapes whose transformations are all the identity, and shapes with repeated ids.

    Parameters
    ----------
    table
        The section's table.
    shapes
        The shapes element it annotates, or None (nothing to compare with).
    what
        Names the table in the message (``"table 'MOB2'"``).

    Raises
    ------
    ValueError
        Naming the coordinate system whose positions ``.obsm['spatial']`` holds.

    """
    if shapes is None or Key.SPATIAL not in table.obsm or len(shapes) == 0:
        return
    import shapely
    from spatialdata.transformations import get_transformation

    placed = {}  # the coordinate systems the shapes are moved into
    for cs, transform in get_transformation(shapes, get_all=True).items():
        matrix = np.asarray(
            transform.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64
        )
        if not np.allclose(matrix, np.eye(3)):
            placed[cs] = matrix
    if not placed or not shapes.index.is_unique:
        return  # own coordinates are every system's; rows not named by their ids are checked where used
    geometry = shapes.geometry.reindex(instance_ids(table))
    if geometry.isna().any():
        return  # rows without a shape: checked where the shapes are used
    shapes_array = geometry.to_numpy()
    if not (shapely.get_type_id(shapes_array) == shapely.GeometryType.POINT).all():
        shapes_array = shapely.centroid(shapes_array)  # a polygon's centroid; a point is its own
    own = np.column_stack([shapely.get_x(shapes_array), shapely.get_y(shapes_array)])
    xy = np.asarray(table.obsm[Key.SPATIAL], dtype=np.float64)[:, :2]
    if xy.shape != own.shape or not np.isfinite(xy).all():
        return
    tol = 1e-6 * max(float(np.ptp(own, axis=0).max()), 1.0)
    if np.abs(xy - own).max() <= tol:
        return
    for cs, matrix in placed.items():
        if np.abs(xy - apply_matrix(own, matrix)).max() <= tol * max(linear_scale(matrix), 1.0):
            raise ValueError(
                f"The {what} holds its spots' positions in {cs!r} (a coordinate system) in "
                f".obsm[{Key.SPATIAL!r}], but its spot shapes {table_region(table)!r} have their own coordinates "
                f"with a non-identity transformation to {cs!r}. loki follows SpatialData's convention (as "
                f"spatialdata-io writes it): .obsm[{Key.SPATIAL!r}] holds the shapes' own coordinates, and reading "
                f"{cs!r} positions there would place every spot by that transformation twice. squidpy's "
                "spatial_neighbors(sdata, elements_to_coordinate_systems=...) writes such positions: restore the "
                "shapes' own coordinates (their centres), or give the shapes an Identity transformation to "
                f"{cs!r}; nothing was written."
            )
