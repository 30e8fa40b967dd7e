"""H&E patches around spots: crop at the spot's physical size, resize to the model input, lazily."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from loki._keys import Key
from loki._logging import logger
from loki._utils import (
    all_or_nothing,
    check_int,
    check_result_key,
    loki_uns,
    require_keys,
    write_obs,
    write_uns,
)
from loki._utils._affine import apply_matrix
from loki._utils._spatialdata import (
    affine_to,
    aligned_coordinate_systems,
    check_own_coordinates,
    default_coordinate_system,
    get_table,
    image_levels,
    instance_ids,
    section_image_key,
    section_shapes,
    table_key_of,
)

if TYPE_CHECKING:
    import dask.array as da
    from spatialdata import SpatialData


#: How to record a section's µm scale; ends the errors that need it.
MICRONS_PER_UNIT_HINT = (
    "Set it as table.uns.setdefault('loki', {})['microns_per_unit'] = µm per unit of the spot coordinates; "
    "for Visium 55 / the spot diameter in those units (55 / scalefactors['spot_diameter_fullres'] for "
    "full-resolution pixels, as spatialdata_io.experimental.from_legacy_anndata keeps them, i.e. "
    "55 / (2 * radius) of the spot circles); lk.io.read_visium records it."
)


def crop_patches(
    image: np.ndarray | da.Array,
    centers: np.ndarray,
    diameter: float | np.ndarray,
    size: int,
    *,
    fill: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a square around each centre and resize it to ``size`` x ``size`` pixels.

    Parameters
    ----------
    image
        RGB image ``(y, x, c)``, numpy or dask (only the blocks holding pixels near the centres are
        read, each once, and held together while the patches are cut): uint8, or float with values in
        ``[0, 1]`` (scaled to 0-255 and rounded, as the pixels are read; a value outside raises a
        ``ValueError`` then). One channel is repeated to three; a fourth (alpha) channel is ignored.
    centers
        ``(n, 2)`` centres as ``(x, y)`` in this image's pixels, continuous coordinates in which pixel
        ``i`` spans ``[i, i + 1)`` (the convention of spatialdata).
    diameter
        Side of each square in pixels, one value or one per centre; sub-pixel positions and sizes
        are honoured.
    size
        Side of the output patches.
    fill
        Value of the padding where a square leaves the image (255: white, like slide background).

    Returns
    -------
    ``(patches, ok)``: uint8 ``(n, size, size, 3)`` and a boolean ``(n,)`` that is False where the
    square is not entirely inside the image (those patches are padded with ``fill``).

    """
    centers, diameter = _check_geometry(centers, diameter)
    size = check_int(size, "size")
    fill = _check_fill(fill)
    _check_image(image)
    h, w = image.shape[:2]
    boxes = spot_boxes(centers, diameter)
    windows = _windows(boxes, size)
    if isinstance(image, np.ndarray):
        patches = _crop_task([image], [(0, 0)], boxes, windows, size, fill)
    else:
        import dask

        image = image.rechunk({2: -1})
        grid = _BlockGrid(image)
        needed = grid.needed(windows)
        blocks = dask.compute(*[grid.block(b) for b in needed])
        patches = _crop_task(list(blocks), [grid.origin(b) for b in needed], boxes, windows, size, fill)
    return patches, boxes_inside(boxes, h, w)


def spot_boxes(centers: np.ndarray, diameter: float | np.ndarray) -> np.ndarray:
    """``(n, 4)`` squares ``(x0, y0, x1, y1)`` of side ``diameter`` around ``(x, y)`` centres."""
    half = np.broadcast_to(np.asarray(diameter, dtype=np.float64) / 2, (len(centers),))
    return np.column_stack(
        [centers[:, 0] - half, centers[:, 1] - half, centers[:, 0] + half, centers[:, 1] + half]
    )


def boxes_inside(boxes: np.ndarray, h: int, w: int, tol: float = 1e-6) -> np.ndarray:
    """Whether each box lies entirely inside an image of ``h`` x ``w`` pixels."""
    return (boxes[:, 0] >= -tol) & (boxes[:, 1] >= -tol) & (boxes[:, 2] <= w + tol) & (boxes[:, 3] <= h + tol)


def boxes_outside(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Whether each box misses an image of ``h`` x ``w`` pixels entirely."""
    return (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= w) | (boxes[:, 1] >= h)


def spot_patches(
    sdata: SpatialData,
    *,
    table_key: str | None = None,
    image_key: str | None = None,
    size: int = 224,
    diameter_um: float | None = None,
    coordinate_system: str | None = None,
    key_added: str | None = None,
    fill: int = 255,
    chunk_size: int = 256,
) -> da.Array:
    """H&E patches of every spot of a section, as a lazy dask array.

    Each spot is cropped as the square of its physical diameter (Visium 55 µm, legacy ST 100 µm)
    around its centre, from the coarsest level of a multiscale image on which the spot still spans at
    least ``size`` pixels (else the finest level), then resized to ``size`` x ``size`` (antialiased).
    Spot centres are the table's ``.obsm['spatial']`` (else the centroids of its shapes), mapped into
    image pixels with the transformations of the shapes and the image to ``coordinate_system``. The
    image is uint8, or float with values in ``[0, 1]`` (e.g. the images of
    ``spatialdata_io.experimental.from_legacy_anndata``), read as 0-255; an alpha channel is ignored.

    Parameters
    ----------
    sdata
        SpatialData with the section's table and image.
    table_key
        Table of the section; may be omitted when there is one table.
    image_key
        Image of the section; by default ``table.uns['loki']['image_key']``, the only image, or the
        image named after the table.
    size
        Side of the output patches (224 for OmiCLIP).
    diameter_um
        Spot diameter in µm (needs ``table.uns['loki']['microns_per_unit']``). By default twice the
        ``radius`` of circular spot shapes, the side of the square of the same area for polygons
        (Visium HD bins, tiles), else ``table.uns['loki']['spot_diameter_um']``.
    coordinate_system
        Coordinate system shared by the spots and the image; default ``"global"``, or the only one
        they share when they are not in ``"global"`` (e.g. a section tiled into a system of its own).
    key_added
        Where to write the border flags of these patches (see Returns); None (default) writes
        nothing. The flags of an image embedding are written by :func:`loki.tl.embed_image`
        (``.obs['loki_patch_ok']``) and cannot be replaced here: patches cut for a figure or at another
        size would no longer describe the embedding. To have :func:`loki.tl.finetune` leave out the
        padded patches of an AnnData given ``patches=`` (one without an image embedding), write them
        under ``lk.Key.PATCH_OK``.
    fill
        Padding value for squares leaving the image (255: white).
    chunk_size
        Spots per dask chunk.

    Returns
    -------
    uint8 dask array ``(n_spots, size, size, 3)`` in table order, ``chunk_size`` spots a chunk. Each
    chunk reads the image blocks under its spots; computed at once, every block is read once. Spots
    in table order can lie anywhere on the section (Space Ranger lists barcodes in random order), so
    one chunk may need most of the image: computing chunk by chunk then reads the image about once a
    chunk. With ``key_added`` (nothing otherwise), writes:

    - ``.obs[key_added]``: False for spots whose square is not entirely inside the image (padded with
      ``fill``, never dropped).
    - ``.uns['loki'][key_added]``: image key, pyramid level, patch diameter in level pixels, size.

    Raises
    ------
    KeyError
        Missing table, image, coordinate system or spot coordinates (the message lists what exists).
    ValueError
        Spots whose square lies entirely outside the image (how many, and a few ids), no way to know
        the spot size, an image that is neither uint8 nor float, a ``key_added`` that names the
        patch flags of an image embedding, or a ``.obsm['spatial']`` that holds the spots' positions
        in a coordinate system (placed by a non-identity transformation of the spot shapes, as
        squidpy's ``spatial_neighbors(sdata, elements_to_coordinate_systems=...)`` writes them)
        instead of their own coordinates.

    """
    table = get_table(sdata, table_key)
    if key_added is not None:
        check_flags_not_owned(table, key_added)  # first: it says whose flags they are
        check_result_key(table, key_added, ("obs", "uns"), tool="pp.spot_patches")
    patches, ok, meta = _cut_spot_patches(
        sdata,
        table_key=table_key,
        image_key=image_key,
        size=size,
        diameter_um=diameter_um,
        coordinate_system=coordinate_system,
        fill=fill,
        chunk_size=chunk_size,
    )
    if key_added is not None:
        write_patch_flags(table, key_added, ok, meta)
    return patches


def _cut_spot_patches(
    sdata: SpatialData, *, size: int = 224, fill: int = 255, chunk_size: int = 256, **where
) -> tuple[da.Array, np.ndarray, dict]:
    """:func:`spot_patches` without writing: ``(patches, ok, parameters)``, patches in table order.

    ``where`` takes ``table_key``, ``image_key``, ``diameter_um`` and ``coordinate_system``.
    """
    patches, _, ok, meta = _cut_in_chunks(sdata, size, fill, chunk_size, where, by_area=False)
    return patches, ok, meta


def _cut_spot_patches_by_area(
    sdata: SpatialData, *, size: int = 224, fill: int = 255, chunk_size: int = 256, **where
) -> tuple[da.Array, np.ndarray, np.ndarray, dict]:
    """:func:`_cut_spot_patches` with the spots grouped by area: ``(patches, order, ok, parameters)``.

    ``where`` takes ``table_key``, ``image_key``, ``diameter_um`` and ``coordinate_system``.
    ``patches[i]`` is the patch of spot ``order[i]`` (``ok`` stays in table order). Spots are taken
    image block by image block along a Z curve (:func:`space_order`), so each chunk of ``chunk_size``
    spots reads only the few blocks around them, and computing the chunks one after another reads
    each block about once. In table order (Space Ranger's barcode order is random in space), every
    chunk reads about the whole image instead. For consumers that can put their results back in table
    order: ``out[order] = f(patches)``.
    """
    return _cut_in_chunks(sdata, size, fill, chunk_size, where, by_area=True)


def _cut_in_chunks(
    sdata: SpatialData, size: int, fill: int, chunk_size: int, where: dict, *, by_area: bool
) -> tuple[da.Array, np.ndarray, np.ndarray, dict]:
    """Patches cut ``chunk_size`` spots a chunk: ``(patches, order, ok, parameters)``.

    The spots are taken in table order, or with ``by_area`` in :func:`space_order`; ``patches[i]``
    is the patch of spot ``order[i]``.
    """
    size, fill, chunk_size = check_int(size, "size"), _check_fill(fill), check_int(chunk_size, "chunk_size")
    image, boxes, ok, meta = _spot_geometry(sdata, size=size, **where)
    order = space_order(boxes, image.chunks[0], image.chunks[1]) if by_area else np.arange(len(boxes))
    groups = [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]
    return _patch_array(image, boxes, groups, size, fill), order, ok, meta


def _spot_geometry(
    sdata: SpatialData,
    *,
    size: int,
    table_key: str | None = None,
    image_key: str | None = None,
    diameter_um: float | None = None,
    coordinate_system: str | None = None,
) -> tuple[da.Array, np.ndarray, np.ndarray, dict]:
    """The chosen level as a ``(y, x, c)`` dask array, each spot's square on it, the flags and parameters."""
    import dask.array as da

    table = get_table(sdata, table_key)
    table_key = table_key_of(sdata, table, table_key)
    image_key = section_image_key(sdata, table_key, image_key)
    element = sdata.images[image_key]
    levels = image_levels(element)
    shapes = section_shapes(sdata, table)
    if coordinate_system is None:
        coordinate_system = default_coordinate_system(
            [element, shapes], ignore=aligned_coordinate_systems(sdata)
        )
    img_to_cs = affine_to(element, coordinate_system, f"sdata.images[{image_key!r}]")
    cs_to_img = np.linalg.inv(img_to_cs)
    spots_to_cs = np.eye(3) if shapes is None else affine_to(shapes, coordinate_system, "the spot shapes")
    to_px = cs_to_img @ spots_to_cs
    centers = apply_matrix(_spot_centers(table, shapes, table_key), to_px)
    scales = np.linalg.svd(to_px[:2, :2], compute_uv=False)
    if scales[0] > scales[1] * (1 + 1e-3):
        raise ValueError(
            f"The pixels of image {image_key!r} are not square in {coordinate_system!r} (a spot unit spans "
            f"{scales[0]:.4g} and {scales[1]:.4g} pixels along the two axes); loki crops square patches of "
            "a spot's physical size. Check the image's transformation."
        )
    px_per_unit = float(np.sqrt(scales[0] * scales[1]))
    diameter0 = _spot_diameter(table, shapes, diameter_um) * px_per_unit

    h0, w0 = levels[0].shape[1:]
    level = _pick_level(levels, float(np.median(diameter0)), size)
    h, w = levels[level].shape[1:]
    factor = np.array([w0 / w, h0 / h])
    centers = centers / factor
    diameter = diameter0 / math.sqrt(factor[0] * factor[1])
    centers, diameter = _check_geometry(centers, diameter)
    if float(np.median(diameter)) > max(h, w):  # cutting them asks for memory no machine has
        across = max(h0, w0) / float(np.median(diameter0))
        raise ValueError(
            f"Squares of {diameter_um:g} µm are wider than all of image {image_key!r} "
            f"({across * diameter_um:.4g} µm across its longer side): each would hold the whole image. Pass "
            "a smaller diameter_um= (in µm)."
            if diameter_um is not None
            else f"The spots' squares are wider than all of image {image_key!r} (its longer side spans "
            f"{across:.3g} spot diameters): each would hold the whole image. Check the spots' size and "
            f"the image's transformation to {coordinate_system!r}."
        )
    boxes = spot_boxes(centers, diameter)
    outside = boxes_outside(boxes, h, w)
    if outside.any():
        ids = ", ".join(map(repr, table.obs_names[outside][:5]))
        raise ValueError(
            f"{int(outside.sum())} of {table.n_obs} spots lie entirely outside image {image_key!r} "
            f"(e.g. {ids}); check the coordinates, the image's transformation to "
            f"{coordinate_system!r} or image_key."
        )
    ok = boxes_inside(boxes, h, w)

    data = levels[level].data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(-1, 4096, 4096), name=False)
    image = data.transpose(1, 2, 0).rechunk({2: -1})
    _check_image(image)

    n_bad = int((~ok).sum())
    if n_bad:
        logger.info("%d spots reach beyond the image; their patches are padded", n_bad)
    meta = {
        "tool": "pp.spot_patches",
        "image_key": image_key,
        "level": int(level),
        "diameter_px": float(np.median(diameter)),
        "size": size,
        "coordinate_system": coordinate_system,
        "n_not_ok": n_bad,
    }
    return image, boxes, ok, meta


def _patch_array(
    image: da.Array, boxes: np.ndarray, groups: list[np.ndarray], size: int, fill: int
) -> da.Array:
    """Patches of ``boxes[g]`` for each group ``g``, one dask chunk a group, groups one after another."""
    import dask
    import dask.array as da

    windows = _windows(boxes, size)
    grid = _BlockGrid(image)
    chunks = []
    # Each chunk of spots reads only the image blocks its squares touch.
    for group in groups:
        needed = grid.needed(windows[group])
        task = dask.delayed(_crop_task, pure=True)(
            [grid.block(b) for b in needed],
            [grid.origin(b) for b in needed],
            boxes[group],
            windows[group],
            size,
            fill,
        )
        chunks.append(da.from_delayed(task, shape=(len(group), size, size, 3), dtype=np.uint8))
    return da.concatenate(chunks, axis=0) if chunks else da.zeros((0, size, size, 3), dtype=np.uint8)


def space_order(boxes: np.ndarray, row_chunks, col_chunks) -> np.ndarray:
    """Order of the boxes ``(x0, y0, x1, y1)`` that visits an image's blocks along a Z (Morton) curve.

    A box belongs to the block holding its centre; boxes of one block keep their order. Consecutive
    boxes in this order lie in the same or neighbouring blocks, whatever the order of the table.
    """
    y_edges, x_edges = np.cumsum(row_chunks)[:-1], np.cumsum(col_chunks)[:-1]
    by = np.searchsorted(y_edges, (boxes[:, 1] + boxes[:, 3]) / 2, side="right").astype(np.uint64)
    bx = np.searchsorted(x_edges, (boxes[:, 0] + boxes[:, 2]) / 2, side="right").astype(np.uint64)
    key = np.zeros(len(boxes), dtype=np.uint64)
    for bit in range(32):  # interleave the bits of the block row (odd bits) and column (even bits)
        key |= ((by >> bit) & 1) << (2 * bit + 1) | ((bx >> bit) & 1) << (2 * bit)
    return np.argsort(key, kind="stable")


def check_flags_not_owned(table, flag_key: str, owner: str | None = None, what: str = "key_added") -> None:
    """Refuse to write patch flags under ``flag_key`` when they describe another image embedding.

    :func:`loki.tl.embed_image` records the flags of its cut in its ``.uns['loki']`` entry
    (``patch_ok_key``); :func:`loki.tl.finetune` and readers of the embedding trust them. ``owner`` is
    the embedding the caller writes (its own flags may be replaced), ``what`` the argument named.
    """
    for key, record in loki_uns(table).items():
        if key != owner and isinstance(record, dict) and record.get("patch_ok_key") == flag_key:
            raise ValueError(
                f"{what}={owner if owner is not None else flag_key!r} would replace .obs[{flag_key!r}], the "
                f"patch flags of the image embedding .obsm[{key!r}] (.uns['loki'][{key!r}]['patch_ok_key']), "
                f"which then would no longer describe it. Choose another {what}."
            )


def write_patch_flags(table, key_added: str, ok: np.ndarray, meta: dict) -> None:
    """Write the border flags and patch parameters of :func:`spot_patches` into ``table`` (both or neither)."""
    with all_or_nothing():
        write_obs(table, key_added, ok)
        write_uns(table, key_added, meta)


# ---------------------------------------------------------------------------------------------------
# cropping


def _windows(boxes: np.ndarray, size: int) -> np.ndarray:
    # Integer windows around each box, with a margin for the resampling filter's support.
    scale = np.maximum((boxes[:, 2] - boxes[:, 0]) / size, 1.0)
    margin = np.ceil(2 * scale) + 1
    win = np.column_stack(
        [
            np.floor(boxes[:, 0] - margin),
            np.floor(boxes[:, 1] - margin),
            np.ceil(boxes[:, 2] + margin),
            np.ceil(boxes[:, 3] + margin),
        ]
    )
    return win.astype(np.int64)


class _BlockGrid:
    """Chunk boundaries of a ``(y, x, c)`` dask image, to find the blocks a window touches."""

    def __init__(self, image):
        self.y = np.concatenate([[0], np.cumsum(image.chunks[0])])
        self.x = np.concatenate([[0], np.cumsum(image.chunks[1])])
        # One task per block, shared by every chunk of patches that needs it: computed together, they
        # read it once (slices such as image.blocks[i, j] would each read it again).
        self._blocks = image.to_delayed()

    def needed(self, windows: np.ndarray) -> list[tuple[int, int]]:
        """Blocks ``(by, bx)`` overlapping any of the windows ``(x0, y0, x1, y1)``."""
        h, w = self.y[-1], self.x[-1]
        x0, y0 = np.clip(windows[:, 0], 0, w), np.clip(windows[:, 1], 0, h)
        x1, y1 = np.clip(windows[:, 2], 0, w), np.clip(windows[:, 3], 0, h)
        inside = (x1 > x0) & (y1 > y0)
        by0 = np.searchsorted(self.y, y0[inside], side="right") - 1
        by1 = np.searchsorted(self.y, y1[inside], side="left")
        bx0 = np.searchsorted(self.x, x0[inside], side="right") - 1
        bx1 = np.searchsorted(self.x, x1[inside], side="left")
        out: set[tuple[int, int]] = set()
        for a, b, c, d in zip(by0, by1, bx0, bx1, strict=True):
            out.update((i, j) for i in range(a, b) for j in range(c, d))
        return sorted(out)

    def origin(self, block: tuple[int, int]) -> tuple[int, int]:
        return int(self.y[block[0]]), int(self.x[block[1]])

    def block(self, block: tuple[int, int]):
        return self._blocks[block[0], block[1], 0]


def _crop_task(blocks, origins, boxes, windows, size, fill) -> np.ndarray:
    """Patches of the given boxes, cut from image blocks (numpy) at ``origins`` ``(y0, x0)``."""
    from PIL import Image

    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for i, (box, win) in enumerate(zip(boxes, windows, strict=True)):
        x0, y0, x1, y1 = (int(v) for v in win)
        canvas = np.full((y1 - y0, x1 - x0, 3), fill, dtype=np.uint8)
        # canvas rows and columns holding image pixels: y from, y to, x from, x to
        inside = [y1 - y0, 0, x1 - x0, 0]
        for block, (oy, ox) in zip(blocks, origins, strict=True):
            # overlap of the window with this block, in image pixels
            ya, yb = max(y0, oy), min(y1, oy + block.shape[0])
            xa, xb = max(x0, ox), min(x1, ox + block.shape[1])
            if ya < yb and xa < xb:
                canvas[ya - y0 : yb - y0, xa - x0 : xb - x0] = _uint8(
                    _rgb(block[ya - oy : yb - oy, xa - ox : xb - ox])
                )
                inside = [
                    min(inside[0], ya - y0),
                    max(inside[1], yb - y0),
                    min(inside[2], xa - x0),
                    max(inside[3], xb - x0),
                ]
        rel = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
        canvas = _pad_beyond_image(canvas, inside, rel, fill)
        out[i] = np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BICUBIC, box=rel))
    return out


def _pad_beyond_image(canvas: np.ndarray, inside: list[int], box, fill: int) -> np.ndarray:
    """Canvas pixels beyond the image: ``fill`` past a side the box crosses, else the nearest image pixel.

    The window around a box holds a margin for the resampling filter. Filled with ``fill``, it would
    tint the edge of a patch that lies wholly inside the image but touches its border; so the margin
    repeats the image's edge, except beyond a side where the box itself leaves the image (padding).
    """
    h, w = canvas.shape[:2]
    iy0, iy1, ix0, ix1 = inside
    if iy0 >= iy1 or ix0 >= ix1 or (iy0, iy1, ix0, ix1) == (0, h, 0, w):
        return canvas
    canvas = np.pad(canvas[iy0:iy1, ix0:ix1], ((iy0, h - iy1), (ix0, w - ix1), (0, 0)), mode="edge")
    tol = 1e-6
    rows, cols = np.arange(h), np.arange(w)
    beyond_y = (rows < iy0) & (box[1] < iy0 - tol) | (rows >= iy1) & (box[3] > iy1 + tol)
    beyond_x = (cols < ix0) & (box[0] < ix0 - tol) | (cols >= ix1) & (box[2] > ix1 + tol)
    canvas[beyond_y] = fill
    canvas[:, beyond_x] = fill
    return canvas


def _uint8(region: np.ndarray) -> np.ndarray:
    """Pixels as uint8: uint8 as they are, floats in ``[0, 1]`` scaled to 0-255 and rounded."""
    if region.dtype == np.uint8:
        return region
    tol = 1e-3  # float rounding of values stored as 0-1
    bad = ~((region >= -tol) & (region <= 1 + tol))  # NaN included
    if bad.any():
        values = region[bad]
        raise ValueError(
            f"A float image must hold values in [0, 1] (read as 0-255); found {values.size} value(s) "
            f"outside, e.g. {values.flat[0]!r}. Convert the image to uint8 (RGB 0-255) first."
        )
    return np.rint(np.clip(region, 0, 1) * 255).astype(np.uint8)


def _rgb(region: np.ndarray) -> np.ndarray:
    c = region.shape[2]
    if c == 3:
        return region
    if c == 1:
        return np.repeat(region, 3, axis=2)
    return region[..., :3]


# ---------------------------------------------------------------------------------------------------
# validation


def _check_fill(fill) -> int:
    return check_int(fill, "fill", minimum=0, maximum=255, why="a grey level")


def _check_geometry(centers, diameter) -> tuple[np.ndarray, np.ndarray]:
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers must have shape (n, 2) as (x, y), got {centers.shape}.")
    diameter = np.broadcast_to(np.asarray(diameter, dtype=np.float64), (len(centers),))
    for name, arr in (("centers", centers), ("diameter", diameter)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s).")
    if (diameter <= 0).any():
        raise ValueError(f"diameter must be positive; got {int((diameter <= 0).sum())} value(s) <= 0.")
    return centers, diameter


def _check_image(image) -> None:
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (y, x, c) with 1, 3 or 4 channels, got shape {image.shape}.")
    dtype = np.dtype(image.dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"image must be uint8 (RGB 0-255) or float with values in [0, 1], got {dtype}. Convert it, "
            "e.g. to uint8 with (image / image.max() * 255).astype('uint8') for a non-negative image."
        )


# ---------------------------------------------------------------------------------------------------
# SpatialData geometry


def _pick_level(levels, diameter0: float, size: int) -> int:
    w0 = levels[0].shape[2]
    chosen = 0
    for i, lev in enumerate(levels):
        if diameter0 * lev.shape[2] / w0 >= size:
            chosen = i
    return chosen


def _spot_centers(table, shapes, table_key: str) -> np.ndarray:
    if Key.SPATIAL in table.obsm:
        check_own_coordinates(table, shapes, f"table {table_key!r}")
        return np.asarray(table.obsm[Key.SPATIAL], dtype=np.float64)[:, :2]
    if shapes is None:
        require_keys(table.obsm, Key.SPATIAL, "adata.obsm")
    geo = shapes.geometry.reindex(instance_ids(table))
    if geo.isna().any():
        raise KeyError(
            f"{int(geo.isna().sum())} table rows have no shape in the spot shapes and the table has no "
            f".obsm[{Key.SPATIAL!r}]."
        )
    centres = geo.centroid  # a point's own position; a polygon's centroid
    return np.column_stack([centres.x.to_numpy(), centres.y.to_numpy()])


def shape_diameter(shapes) -> float | None:
    """Median size of spot shapes in their own units, or None when they give none.

    Twice the ``radius`` of circles; for polygons (Visium HD bins as spatialdata-io writes them, tiles,
    cells) the side of the square of equal area, which is the side of a square bin.
    """
    if shapes is None:
        return None
    if "radius" in shapes.columns:
        return 2 * float(np.median(shapes["radius"].to_numpy(dtype=np.float64)))
    areas = shapes.geometry.area.to_numpy(dtype=np.float64)
    areas = areas[np.isfinite(areas) & (areas > 0)]
    return float(np.sqrt(np.median(areas))) if areas.size else None


def _spot_diameter(table, shapes, diameter_um) -> np.ndarray | float:
    meta = loki_uns(table)
    from_shapes = shape_diameter(shapes) if diameter_um is None else None
    if from_shapes is not None:
        return from_shapes
    if diameter_um is None:
        diameter_um = meta.get("spot_diameter_um")
    if diameter_um is None:
        raise ValueError(
            "Cannot tell the spot size: pass diameter_um=, or give the spots a shapes element of circles "
            "(a 'radius' column) or polygons, or set table.uns['loki']['spot_diameter_um']."
        )
    mpu = meta.get("microns_per_unit")
    if mpu is None or not np.isfinite(mpu) or mpu <= 0:
        raise ValueError(
            "diameter_um needs table.uns['loki']['microns_per_unit'] (µm per coordinate unit) to convert "
            f"µm into coordinates; found {mpu!r}. {MICRONS_PER_UNIT_HINT}"
        )
    if not np.isfinite(diameter_um) or diameter_um <= 0:
        raise ValueError(f"diameter_um must be positive, got {diameter_um!r}.")
    return float(diameter_um) / float(mpu)
