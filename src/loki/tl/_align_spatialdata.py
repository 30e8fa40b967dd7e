"""How an alignment is placed in SpatialData (glue for :mod:`loki.tl._align`).

Which elements move with a section, the frames of the tables' coordinates, the aligned spots' shapes
and the transformations written.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import check_element_name, loki_record, loki_uns, require_keys
from loki._utils._affine import linear_scale
from loki._utils._spatialdata import (
    _named_owner,
    _stored_image_key,
    affine_to,
    check_own_coordinates,
    default_coordinate_system,
    instance_ids,
    is_spatialdata,
    section_image_key,
    section_shapes,
    table_attrs,
    table_region,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

ImageKeys = str | Sequence[str] | None

_ELEMENT_KINDS = ("images", "labels", "points", "shapes")

# the target table of the align_sections call in progress: the stack reports its earlier placement
# once (replace_stack_target), instead of each call onto it
_STACK_TARGET: ContextVar[AnnData | None] = ContextVar("loki_stack_target", default=None)
# the stack's labels of its AnnData sections (by id of the table), which have no table key to name them
_STACK_LABELS: ContextVar[dict[int, str] | None] = ContextVar("loki_stack_labels", default=None)


@dataclass
class Section:
    """One section: its container, table key and table."""

    data: Any  # SpatialData or AnnData
    key: str | None
    table: AnnData

    @property
    def name(self) -> str:
        """The table key; for an AnnData its label in the :func:`align_sections` stack, else ``"adata"``."""
        if self.key is not None:
            return self.key
        return (_STACK_LABELS.get() or {}).get(id(self.table), "adata")


def _image_keys(image_key: ImageKeys, what: str) -> list[str]:
    """``image_key`` / ``target_image_key`` as a list of names (empty for None)."""
    if image_key is None:
        return []
    keys = [image_key] if isinstance(image_key, str) else list(image_key)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{what} must be an image name, a list of them or None, got {image_key!r}.")
    return keys


def _regions(table: AnnData) -> list[str]:
    region = table_attrs(table).get("region")
    return [region] if isinstance(region, str) else list(region if region is not None else [])


def _claimed_elsewhere(sdata, own: set[str]) -> set[str]:
    """Elements that belong to the tables of ``sdata`` other than ``own``: their regions and their images."""
    claimed = set()
    for other, table in sdata.tables.items():
        if other in own:
            continue
        claimed.update(_regions(table))
        claimed.add(_stored_image_key(table))
    claimed.update(image for image in sdata.images if _named_owner(sdata, image) not in (None, *own))
    return claimed


def _tables_over(sdata, key: str | None, images: list[str], others: Collection[str]) -> list[str]:
    """The tables that record one of ``images`` as theirs (tiles cut from it, other bin sizes over it).

    Neither the section ``key`` itself nor the ``others`` (the other sections of the same call, each
    placed by its own transformation) are counted.
    """
    return [
        other
        for other, table in sdata.tables.items()
        if other != key and other not in others and _stored_image_key(table) in images
    ]


def section_elements(
    section: Section,
    image_key: ImageKeys,
    in_cs: str,
    role: str,
    *,
    others: Collection[str] = (),
    warn: bool = True,
) -> list[str]:
    """Names of the SpatialData elements placed with a section.

    A SpatialData that holds this section only (one table): every element (images, labels, points,
    shapes) with a transformation to ``in_cs``. A SpatialData of several tables: the section's spots,
    its image (``image_key``, else the one :func:`section_image_key` finds) and the other images named
    after it (``S_lowres_image``), and, for each other table that records one of those images as its
    own (the tiles :func:`loki.pp.tile_image` cut from it, the spots a reader laid over it), that
    table's spots and images too: they lie on the same tissue. Images named by ``image_key`` are placed
    in either case; ``others`` names the tables of the other sections of the same call (the target,
    the rest of a stack), which are never placed with this one. With ``warn``, a LokiWarning says
    when a section of several has no image found
    (``role``, "source" or "target", says which section and which parameter names it), and the
    elements left out are logged: a warning when one is an image, INFO otherwise.
    """
    from spatialdata.transformations import get_transformation

    sdata = section.data
    param = "image_key" if role == "source" else "target_image_key"
    images = _image_keys(image_key, param)
    require_keys(sdata.images, images, "sdata.images")
    every = [name for kind in _ELEMENT_KINDS for name in getattr(sdata, kind, {}).keys()]
    with_cs = [name for name in every if in_cs in get_transformation(sdata[name], get_all=True)]
    names = []
    try:
        region = table_region(section.table)
    except ValueError:
        region = None
    if region in every:
        names.append(region)
    elif region is not None and warn:
        warnings.warn(
            f"the {role} table {section.name!r} annotates {region!r}, which is not an element of the "
            f"SpatialData (shapes: {list(sdata.shapes.keys())}); its spots are not placed in the aligned "
            "coordinate system and no shapes of aligned spots are added. Point the table at its spots "
            "(spatialdata's set_table_annotates_spatialelement) to have them placed.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    names += images
    if len(sdata.tables) == 1:
        names += with_cs
        left_out = [name for name in every if name not in names]
        reason = f"no transformation to {in_cs!r}"
    else:
        own_images = list(images)
        if not images and len(sdata.images):
            try:
                own_images.append(section_image_key(sdata, section.key, None))
                names.append(own_images[-1])
            except KeyError:
                if warn:
                    warnings.warn(
                        f"no image of the {role} section {section.name!r} found among "
                        f"{list(sdata.images.keys())}; none is placed with it in the aligned coordinate "
                        f"system (pass {param}= to name it)",
                        LokiWarning,
                        stacklevel=user_stacklevel(),
                    )
        own = {section.key, *_tables_over(sdata, section.key, own_images, others)}
        names += [
            name
            for name in [
                *(region for key in sorted(own - {section.key}) for region in _regions(sdata.tables[key])),
                *(image for image in sdata.images if _named_owner(sdata, image) in own),
            ]
            if name in with_cs
        ]
        claimed = _claimed_elsewhere(sdata, own)
        left_out = [name for name in with_cs if name not in names and name not in claimed]
        reason = f"only each section's spots, its images and the tables over them are placed; pass {param}= for images"
    names = list(dict.fromkeys(names))
    if warn:
        _warn_images_of_other_sections(section, images, role, param)
    if warn and left_out:
        lost_images = [name for name in left_out if name in sdata.images]
        log = logger.warning if lost_images and len(sdata.tables) == 1 else logger.info
        log(
            "not placed in the aligned coordinate system with the %s section %r: %s (%s)",
            role,
            section.name,
            left_out,
            reason,
        )
    return names


def _warn_images_of_other_sections(section: Section, images: list[str], role: str, param: str) -> None:
    """Warn when an image named for the section is another section's (recorded, or named after it).

    An image the section records, or one named after it, is its own, also when other tables record it
    too (the tiles :func:`loki.pp.tile_image` cut from it, several bin sizes over one image).
    """
    sdata = section.data
    for image in images:
        if _stored_image_key(section.table) == image or _named_owner(sdata, image) == section.key:
            continue
        owners = [
            key
            for key, table in sdata.tables.items()
            if key != section.key and (_stored_image_key(table) == image or _named_owner(sdata, image) == key)
        ]
        if owners:
            warnings.warn(
                f"{param}={image!r} is the image of section {owners[0]!r}, not of the {role} section "
                f"{section.name!r}; the alignment places it with {section.name!r}. Pass the {role}'s own "
                f"image as {param}= unless that is what you want.",
                LokiWarning,
                stacklevel=user_stacklevel(),
            )


def section_input_cs(section: Section, image_key: ImageKeys, role: str, aligned: Collection[str] = ()) -> str:
    """The coordinate system a section lies in before an alignment, when the caller names none.

    As elsewhere in loki (:func:`~loki._utils._spatialdata.default_coordinate_system`), ``"global"``
    when the section's spots and image are in it, else the one coordinate system they share. The
    ``aligned`` systems (those alignments placed sections in: the output of this call and the ones
    recorded in ``.uns['loki']``) do not count, so that a section read into a system of its own is
    found there again after an alignment placed it in ``"aligned"`` too. Several shared systems, none
    of them ``"global"``, are refused with a KeyError naming them; none shared: ``"global"``, whose
    absence :func:`check_cs` names with the systems that exist. An AnnData section lies in ``"global"``.
    """
    if not is_spatialdata(section.data):
        return Key.GLOBAL_CS
    sdata = section.data
    images = _image_keys(image_key, "target_image_key" if role == "target" else "image_key")
    if not images and len(sdata.images) and section.key is not None:
        try:
            images.append(section_image_key(sdata, section.key, None))
        except KeyError:  # no image of its own: the spots alone decide
            pass
    elements = [section_shapes(sdata, section.table), *(sdata.images[k] for k in images if k in sdata.images)]
    return default_coordinate_system(
        elements, ignore=aligned, what=f"The {role}'s spots and image", keyword="input_coordinate_system"
    )


def placed_elements(
    src: Section,
    tgt: Section,
    image_key: ImageKeys,
    target_image_key: ImageKeys,
    in_cs: str,
    *,
    target_in_cs: str | None = None,
    warn: bool = True,
    hint: str | None = None,
) -> tuple[list[str], list[str]]:
    """The elements to place of the source and (SpatialData target) the target, checked for :func:`align`.

    ``in_cs`` is the source's input coordinate system, ``target_in_cs`` the target's (default
    ``in_cs``); ``hint`` ends the error of an element not in it. With ``warn``, a LokiWarning says when
    a section of several has no image found, and the elements left out are logged
    (:func:`section_elements`); ``align(inplace=False)`` passes ``warn=False``.
    """
    target_in_cs = in_cs if target_in_cs is None else target_in_cs
    one_object = tgt.data is src.data
    src_elements = section_elements(
        src, image_key, in_cs, "source", others=[tgt.key] if one_object else [], warn=warn
    )
    check_cs(src, src_elements, in_cs, "source", hint=hint)
    if not is_spatialdata(tgt.data):
        return src_elements, []
    tgt_elements = section_elements(
        tgt, target_image_key, target_in_cs, "target", others=[src.key] if one_object else [], warn=warn
    )
    check_cs(tgt, tgt_elements, target_in_cs, "target", hint=hint)
    shared = set(src_elements) & set(tgt_elements) if one_object else set()
    if shared:
        raise ValueError(
            f"source and target sections share the element(s) {sorted(shared)}; one transformation cannot "
            "place both. Name each section's image (image_key=, target_image_key=), or give each section its "
            "own shapes."
        )
    return src_elements, tgt_elements


def check_cs(section: Section, elements: list[str], cs: str, role: str, hint: str | None = None) -> None:
    """Every element must have a transformation to ``cs``: a KeyError names the systems it has (and ``hint``)."""
    from spatialdata.transformations import get_transformation

    for name in elements:
        available = list(get_transformation(section.data[name], get_all=True).keys())
        if cs not in available:
            message = (
                f"{role} element {name!r} has no transformation to coordinate system {cs!r}; "
                f"available: {', '.join(map(repr, available)) or 'none'}."
            )
            raise KeyError(message if hint is None else f"{message} {hint}")


def shapes_name(section: Section, key_added: str) -> str | None:
    """Name of the shapes element of aligned spots, or None when the section has no spot shapes."""
    try:
        region = table_region(section.table)
    except ValueError:
        return None
    if region not in section.data.shapes:
        return None
    return f"{region}_{key_added.removeprefix('spatial_')}"


def check_shapes_name(section: Section, key_added: str) -> None:
    """The shapes element ``key_added`` gives must be a SpatialData name that no other element type holds."""
    name = shapes_name(section, key_added)
    if name is None:
        return
    check_element_name(
        name, f"key_added={key_added!r} names the shapes element {name!r} of aligned spots, which"
    )
    taken = [
        kind
        for kind in (*_ELEMENT_KINDS, "tables")
        if kind != "shapes" and name in getattr(section.data, kind, {})
    ]
    if taken:
        raise ValueError(
            f"key_added={key_added!r} names the shapes element {name!r} of aligned spots, but "
            f"sdata.{taken[0]} already holds an element of that name. Choose another key_added."
        )


def source_to_cs(src: Section, in_cs: str) -> np.ndarray:
    """3x3 map from the source table's coordinates into ``in_cs``.

    As in SpatialData (spatialdata-io writes them so, and :func:`loki.pp.spot_patches` reads them so),
    a table's ``.obsm['spatial']`` holds its spots' own coordinates: the spot shapes' transformation
    maps them into a coordinate system. Without spot shapes the coordinates are ``in_cs``'s.
    """
    spots = section_shapes(src.data, src.table) if is_spatialdata(src.data) else None
    return (
        np.eye(3)
        if spots is None
        else affine_to(spots, in_cs, f"the source spots {table_region(src.table)!r}")
    )


def target_to_cs(tgt: Section, key: str, spatial_key: str, in_cs: str, out_cs: str) -> np.ndarray:
    """3x3 map from the target table's coordinates ``.obsm[key]`` into ``out_cs``.

    The target's own coordinates are its spots' (:func:`source_to_cs`), and the target is placed in
    ``out_cs`` as it lies in ``in_cs``. So are the coordinates an :func:`align_sections` stack
    recorded for its target (``method="target"``), except that a target its stack (or another
    alignment) already placed in ``out_cs`` is taken where its spots lie there. An earlier alignment's
    coordinates (``key != spatial_key``, the target was its source) lie in the frame of the shapes
    element that alignment wrote, placed in the coordinate system it recorded; chaining onto them
    into another coordinate system is refused, since the target's elements are placed by them there
    only. Coordinates with neither (no such shapes) are taken as they are.
    """
    if not is_spatialdata(tgt.data):
        return np.eye(3)
    if key == spatial_key:
        return source_to_cs(tgt, in_cs)
    record = loki_record(tgt.table, key) or {}
    from spatialdata.transformations import get_transformation

    if record.get("method") == "target":  # its own coordinates
        spots = section_shapes(tgt.data, tgt.table)
        if spots is not None and out_cs in get_transformation(spots, get_all=True):
            return affine_to(spots, out_cs, f"the target spots {table_region(tgt.table)!r}")
        return source_to_cs(tgt, in_cs)
    placed_in = record.get("coordinate_system")
    if placed_in is not None and str(placed_in) != out_cs:
        raise ValueError(
            f"The target's coordinates .obsm[{key!r}] are those of its alignment {key!r}, which placed the "
            f"target section {tgt.name!r} in coordinate system {str(placed_in)!r}; this alignment writes to "
            f"{out_cs!r}, where they do not place it (nor the section it was aligned onto). Pass "
            f"coordinate_system={str(placed_in)!r} to chain onto it there; nothing was written."
        )
    earlier = record.get("shapes") or shapes_name(tgt, key)
    if earlier is not None and earlier in tgt.data.shapes:
        if out_cs in get_transformation(tgt.data.shapes[earlier], get_all=True):
            return affine_to(tgt.data.shapes[earlier], out_cs, f"the target's shapes {earlier!r}")
    return np.eye(3)


def check_spot_frame(section: Section, key: str, role: str) -> None:
    """Refuse coordinates ``.obsm[key]`` that are the spots' positions in a coordinate system.

    loki reads ``.obsm['spatial']`` as the spots' own coordinates (see :func:`source_to_cs` and
    :func:`~loki._utils._spatialdata.check_own_coordinates`); other keys carry their own frame.
    """
    if key != Key.SPATIAL:
        return
    spots = section_shapes(section.data, section.table) if is_spatialdata(section.data) else None
    check_own_coordinates(section.table, spots, f"{role} table {section.name!r}")


def _alignments_in(section: Section, cs: str, but: str | None = None) -> list[str]:
    """Keys of the alignments recorded on the section's table that placed it in ``cs``."""
    return [
        key
        for key, entry in loki_uns(section.table).items()
        if key != but
        and isinstance(entry, dict)
        and "matrix" in entry
        and entry.get("coordinate_system") == cs
    ]


def warn_shared_coordinate_system(src: Section, tgt: Section, key_added: str, cs: str, chained: bool) -> None:
    """Warn when an earlier alignment placed the source, or the target, in ``cs``: this call replaces it.

    A target placed by an earlier alignment is put back where it lies in the input coordinate system,
    unless its aligned coordinates are the target's (``chained``, e.g. ``target_spatial_key=key_added``).
    The target of an :func:`align_sections` stack in progress (:func:`stack_onto`) is left to
    :func:`replace_stack_target`.
    """
    earlier = _alignments_in(src, cs, but=key_added)
    if earlier:
        warnings.warn(
            f"coordinate system {cs!r} holds the placement of section {src.name!r} by the alignment "
            f"{', '.join(map(repr, earlier))}; this alignment (key_added={key_added!r}) replaces it, so that "
            "alignment's shapes and the moved elements no longer agree there. Pass coordinate_system= to "
            "keep both.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    if chained or not is_spatialdata(tgt.data) or tgt.table is _STACK_TARGET.get():
        return
    earlier = _alignments_in(tgt, cs)
    if earlier:
        _warn_target_put_back(
            tgt,
            cs,
            earlier,
            "this alignment",
            f"To align onto the aligned target, pass target_spatial_key={earlier[0]!r}; to keep both, pass "
            "coordinate_system=.",
        )


def _frame_of(sdata: SpatialData, key: str, record_key: str) -> str | None:
    """The table key of the section in whose own frame ``key``'s alignment ``record_key`` placed it.

    Its target, or, for an alignment onto the target's aligned coordinates (a sequential stack), that
    target's frame in turn; a stack's target is in its own.
    """
    seen: set[str] = set()
    while key not in seen:
        seen.add(key)
        record = loki_record(sdata.tables[key], record_key) if key in sdata.tables else None
        if not isinstance(record, dict) or record.get("method") == "target":
            return key
        target = record.get("target")
        params = record.get("params") if isinstance(record.get("params"), dict) else {}
        if not isinstance(target, str) or params.get("target_spatial_key") != record_key:
            return target if isinstance(target, str) else None
        key = target
    return None


def warn_left_out_of_stack(
    sdatas: Sequence[SpatialData], stack: Collection[int], target: str, cs: str
) -> None:
    """Warn about sections outside a stack that earlier alignments placed in the stack's ``cs``.

    ``stack`` holds ``id()`` of the stack's tables; ``target`` is the stack target's table key. A
    section left out that lies in another section's frame (e.g. of an earlier stack onto another
    target) no longer agrees there with the sections the stack placed at ``target``'s coordinates.
    """
    left = []
    for sdata in sdatas:
        for key, table in sdata.tables.items():
            if id(table) in stack:
                continue
            earlier = _alignments_in(Section(sdata, key, table), cs)
            if any(_frame_of(sdata, key, record_key) != target for record_key in earlier):
                left.append(key)
    if left:
        warnings.warn(
            f"coordinate system {cs!r} also holds section(s) {', '.join(map(repr, left))}, placed there by an "
            f"earlier alignment in another section's frame than that of this stack's target {target!r}; they "
            "and the stack's sections no longer agree there. Include them in the stack (sections=), or pass "
            "coordinate_system= to keep both.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


def _warn_target_put_back(tgt: Section, cs: str, earlier: list[str], who: str, fix: str) -> None:
    warnings.warn(
        f"the target section {tgt.name!r} was placed in coordinate system {cs!r} by its alignment "
        f"{', '.join(map(repr, earlier))}; {who} puts it back where it lies in the input coordinate system, "
        f"so that alignment's shapes and its elements no longer agree there. {fix}",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


@contextmanager
def stack_onto(tgt: Section, labels: dict[int, str] | None = None) -> Iterator[None]:
    """Within it, the :func:`align` calls onto ``tgt`` do not warn about its earlier placement.

    ``labels`` (``{id(table): label}``) name the stack's AnnData sections in messages and records
    (:attr:`Section.name`), and :func:`align` leaves saving to the stack (:func:`log_how_to_save`).
    """
    token = _STACK_TARGET.set(tgt.table)
    labels_token = _STACK_LABELS.set(dict(labels or {}))
    try:
        yield
    finally:
        _STACK_LABELS.reset(labels_token)
        _STACK_TARGET.reset(token)


def in_stack() -> bool:
    """Whether an :func:`align_sections` call is in progress (its :func:`align` calls are its steps)."""
    return _STACK_TARGET.get() is not None


def log_how_to_save(sdata: SpatialData, names: Sequence[str], removed: Sequence[str] = ()) -> None:
    """Log (INFO) the spatialdata calls that save an alignment into the zarr store ``sdata`` was read from.

    ``names`` are the elements whose data the alignment wrote (tables, shapes of aligned spots);
    ``removed`` those it removed in memory (a stack target's stale shapes of aligned spots), deleted
    from the store too, so that they do not come back when it is read again; the transformations it
    set are saved by ``sdata.write_transformations()``. spatialdata 0.7 does not overwrite an element of
    the store an object is backed by, not even with ``overwrite=True``: an element already stored is
    deleted there first.
    """
    if sdata.path is None:
        return
    try:
        stored = {path.split("/", 1)[-1] for path in sdata.elements_paths_on_disk()}
    except Exception:  # a store that cannot be listed (moved, deleted): nothing to say about it
        return
    names = [name for name in dict.fromkeys(names) if sdata.get(name) is not None]
    gone = [name for name in dict.fromkeys(removed) if name in stored and sdata.get(name) is None]
    replaced = [name for name in names if name in stored] + gone
    calls = [f"sdata.delete_element_from_disk({replaced!r})"] if replaced else []
    calls += [f"sdata.write_element({names!r})"] if names else []
    calls.append("sdata.write_transformations()")
    logger.info(
        "the alignment changed sdata in memory only; to save it into the zarr store %r it was read from: %s "
        "(spatialdata refuses write_element(..., overwrite=True) for an element of the store in use), or "
        "write sdata to a new store with sdata.write(path)",
        str(sdata.path),
        "; ".join(calls),
    )


def replace_stack_target(tgt: Section, key_added: str, cs: str) -> str | None:
    """Say once what a stack replaced of its target's earlier placement in ``cs``; drop its stale shapes.

    The stack places its target at its own coordinates and records it under ``key_added``, so the
    shapes of aligned spots that the target's earlier alignment under ``key_added`` wrote (when it was
    a source, e.g. of a stack onto another section) are removed when that alignment placed it in
    ``cs`` too. When it placed it in another coordinate system, the stack leaves the target's elements
    there, and the shapes stay with them. Earlier alignments under other keys that placed it in ``cs``
    keep their shapes, which no longer agree with its elements there: a warning says so. Call it after
    every alignment of the stack has succeeded.

    Returns
    -------
    The name of the shapes removed, else None (for :func:`log_how_to_save`).
    """
    if not is_spatialdata(tgt.data):
        return None
    record = loki_record(tgt.table, key_added) or {}
    shapes = record.get("shapes")
    placed_in = record.get("coordinate_system")
    removed = None
    if shapes is not None and shapes in tgt.data.shapes:
        if placed_in is None or str(placed_in) == cs:
            del tgt.data.shapes[shapes]
            removed = shapes
            logger.info(
                "removed shapes %r of the target section %r: its earlier alignment %r is replaced, and the "
                "target is placed in coordinate system %r at its own coordinates",
                shapes,
                tgt.name,
                key_added,
                cs,
            )
            _warn_still_on_disk(tgt.data, "shapes", shapes)
        else:
            logger.info(
                "kept shapes %r of the target section %r: its earlier alignment %r, whose entry is replaced, "
                "placed it and them in coordinate system %r, which the stack leaves as it is",
                shapes,
                tgt.name,
                key_added,
                str(placed_in),
            )
    earlier = _alignments_in(tgt, cs, but=key_added)
    if earlier:
        _warn_target_put_back(tgt, cs, earlier, "the stack", "Pass coordinate_system= to keep both.")
    return removed


def _warn_still_on_disk(sdata: SpatialData, element_type: str, name: str) -> None:
    """Warn that an element removed in memory is still in the zarr store ``sdata`` was read from.

    Like every loki tool, the alignment changes the object in memory only; an element it removed
    would come back when the store is read again, so the user is told how to remove it there.
    """
    if sdata.path is None:
        return
    try:
        on_disk = f"{element_type}/{name}" in sdata.elements_paths_on_disk()
    except Exception:  # a store that cannot be listed (moved, deleted) is no reason to fail the alignment
        return
    if on_disk:
        logger.warning(
            "the %s element %r was removed in memory but is still in the zarr store %r: remove it there "
            "with sdata.delete_element_from_disk(%r) before writing the result back.",
            element_type,
            name,
            str(sdata.path),
            name,
        )


def aligned_shapes(src: Section, coords: np.ndarray, matrix: np.ndarray, out_cs: str, to_out_cs: np.ndarray):
    """Spot circles at the aligned coordinates, or None without spot shapes.

    The aligned coordinates are in the target table's frame, placed in the output coordinate system
    by ``to_out_cs``; the radius goes from the source spots' own units (those of the source table's
    coordinates) into them with the scale of ``matrix``. Polygons (tiles, Visium HD bins) become
    circles of the same area.
    """
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Affine, Identity

    region = table_region(src.table)
    spots = src.data.shapes[region]
    ids = instance_ids(src.table)
    if "radius" in spots:
        own = spots["radius"]
    else:  # polygons (tiles, Visium HD bins) become circles of their area; bare points get radius 1
        area = spots.geometry.area.to_numpy(dtype=np.float64)
        own = pd.Series(np.where(area > 0, np.sqrt(area / np.pi), 1.0), index=spots.index)
    radius = own.reindex(ids).to_numpy(dtype=np.float64) * linear_scale(matrix)
    missing = ids[np.isnan(radius)]
    if len(missing):
        raise ValueError(
            f"{len(missing)} spots of the source table have no shape in sdata.shapes[{region!r}] "
            f"(e.g. {list(missing[:3])}; its index starts {list(spots.index[:3])}): the table's "
            f"instance ids must name rows of its region. Fix the table or the shapes; nothing was written."
        )
    return ShapesModel.parse(
        np.asarray(coords, dtype=np.float64),
        geometry=0,
        radius=radius,
        index=ids,
        transformations={
            out_cs: Identity()
            if np.allclose(to_out_cs, np.eye(3))
            else Affine(to_out_cs, input_axes=("x", "y"), output_axes=("x", "y"))
        },
    )


def write_spatialdata(
    src: Section,
    tgt: Section,
    src_elements: list[str],
    tgt_elements: list[str],
    matrix: np.ndarray,
    shapes: tuple[str, Any] | None,
    in_cs: str,
    out_cs: str,
    set_target: bool,
    target_placed: bool,
    target_in_cs: str | None = None,
) -> None:
    """Add the ``(name, element)`` shapes of aligned spots, then the transformations to ``out_cs``.

    ``matrix`` maps ``in_cs`` into ``out_cs`` (the source's placement); the target's elements are
    placed in ``out_cs`` as they lie in ``target_in_cs`` (default ``in_cs``).
    """
    target_in_cs = in_cs if target_in_cs is None else target_in_cs
    from spatialdata.transformations import Affine, Sequence, get_transformation, set_transformation

    if shapes is not None:  # first: the one write that SpatialData validates
        src.data.shapes[shapes[0]] = shapes[1]
        logger.info("added shapes %r", shapes[0])
    affine = Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))
    for name in src_elements:
        element = src.data[name]
        set_transformation(
            element, Sequence([get_transformation(element, in_cs), affine]), to_coordinate_system=out_cs
        )
        logger.info("set transformation of %r to coordinate system %r", name, out_cs)
    if set_target:
        for name in tgt_elements:
            element = tgt.data[name]
            if target_placed and out_cs in get_transformation(element, get_all=True):
                continue  # its coordinates are an earlier alignment's, e.g. in a stack
            set_transformation(
                element, get_transformation(element, target_in_cs), to_coordinate_system=out_cs
            )
            logger.info("set transformation of target %r to coordinate system %r", name, out_cs)
