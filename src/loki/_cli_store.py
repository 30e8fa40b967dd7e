"""Writing a command's results into the SpatialData zarr store it read, all or nothing.

SpatialData does not overwrite an element of the store an object is backed by; the batch commands
(:mod:`loki.cli`) replace tables through a full copy on disk, and put back what they wrote when a
later write fails or the command is stopped, so that a store is never left half written.
"""

from __future__ import annotations

import os
import shutil
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path

#: anndata's notice of a coming default, shown on every table write
ANNDATA_WRITE_NOTICE = r"zarr v3 autosharding will be the default"
#: The folders of a SpatialData zarr store that hold its elements, one for each kind
ELEMENT_KINDS = ("images", "labels", "points", "shapes", "tables")


def read_store(zarr: Path, command: str):
    """The SpatialData of the store ``zarr``; a folder that is not one (no element folder) is refused.

    spatialdata reads any zarr group, and a plain folder fails deep in zarr ("No group found"): an
    AnnData's ``.zarr``, or a store's ``tables/`` folder, would read as a SpatialData without tables.
    """
    import spatialdata as sd

    if zarr.exists() and not zarr.is_dir():  # zarr's words: "No group found in store"
        raise SystemExit(f"loki {command}: {str(zarr)!r} is a file, not a SpatialData zarr store (a folder).")
    if zarr.is_dir() and not any((zarr / kind).is_dir() for kind in ELEMENT_KINDS):
        raise SystemExit(
            f"loki {command}: {str(zarr)!r} is not a SpatialData zarr store (it has none of the folders "
            f"{', '.join(ELEMENT_KINDS)}); write one with sdata.write(...), or make one from a slide with "
            "`loki slide`, from a Space Ranger folder with `loki visium` or from a legacy ST section with "
            "`loki st`."
        )
    return sd.read_zarr(zarr)


def rewrite_table(sdata, name: str) -> None:
    """Replace a table in the store it was read from, with a full copy on disk at every step.

    SpatialData does not overwrite an element inside the store the object is backed by, so the table
    is written whole under a temporary name first; the old table's folder is then deleted and the
    copy's folder renamed to the table's (a table folder does not hold its name), so the table is
    written once. A failure or an interruption (Ctrl-C) while the copy is written removes the copy:
    the store is as it was, and the error is raised. Once the copy is whole, the swap is finished even
    when interrupted (one more try); only if that fails too is the copy left, and the next run names it.
    """
    backup = backup_name(name)
    sdata.tables[backup] = sdata.tables[name]
    try:
        with quiet_table_writes():
            sdata.write_element(backup)
    except BaseException:
        delete_if_on_disk(sdata, backup)
        del sdata.tables[backup]
        raise
    try:
        _swap_in_copy(sdata, name)
    except BaseException:  # the new table is whole on disk as the copy: finish the swap
        _swap_in_copy(sdata, name)
    del sdata.tables[backup]


def _swap_in_copy(sdata, name: str) -> None:
    """Put the whole copy of table ``name`` in its place: the old table deleted, the copy's folder renamed.

    The old table's group metadata goes first, so that its folder stops being a table at once (not one
    partly deleted), and the store's consolidated metadata is rewritten also after a failure, so that
    the store reads as what is on disk (a stale list names the deleted table's arrays). A second call finishes what an interrupted first one left.
    """
    tables = Path(sdata.path) / "tables"
    copy, old = tables / backup_name(name), tables / name
    try:
        if copy.is_dir():  # else renamed by an earlier call
            for group_file in ("zarr.json", ".zgroup", ".zattrs"):  # zarr v3, v2
                (old / group_file).unlink(missing_ok=True)
            if old.exists():
                shutil.rmtree(old)
            copy.rename(old)
    except BaseException:
        with suppress(Exception):  # the error raised is the swap's
            _consolidate(sdata)
        raise
    _consolidate(sdata)


def _consolidate(sdata) -> None:
    """Rewrite the store's consolidated metadata (the list of its groups and arrays), if it has one."""
    if sdata.has_consolidated_metadata():
        sdata.write_consolidated_metadata()


def delete_if_on_disk(sdata, name: str) -> None:
    """Delete element ``name`` (a table, shapes, an image) from the store, also when partly written or deleted.

    SpatialData deletes only what it can read as an element: a folder that an interrupted write (or
    deletion) left without its metadata is removed as a folder, and the store's metadata rewritten.
    """
    if any(path.split("/")[-1] == name for path in sdata.elements_paths_on_disk()):
        sdata.delete_element_from_disk(name)
    path = element_folder(sdata, name)
    if path is not None:
        shutil.rmtree(path)
        if sdata.has_consolidated_metadata():
            sdata.write_consolidated_metadata()


def element_folder(sdata, name: str) -> Path | None:
    """The folder of element ``name`` in the store, if there is one (element names are unique)."""
    for kind in ELEMENT_KINDS:
        folder = Path(sdata.path) / kind / name
        if folder.exists():
            return folder
    return None


def write_new_store(sdata, zarr: Path) -> None:
    """Write ``sdata`` as the new store ``zarr``; a failure or an interruption leaves no store there.

    A half-written store would block the next try (commands creating a store refuse an existing path).
    """
    try:
        with quiet_table_writes():
            sdata.write(zarr)
    except BaseException:
        shutil.rmtree(zarr, ignore_errors=True)
        raise


def write_new_elements(sdata, names: list[str], *, attrs_before: dict | None = None) -> None:
    """Write the elements ``names``, new to the store ``sdata`` was read from, all or none.

    Each is written in turn; a failure or an interruption (Ctrl-C) deletes those written, also the
    one partly written, and the error is raised: the store is as it was. With ``attrs_before`` (the
    store's ``attrs`` as read), ``sdata.attrs`` are written after the elements, and on failure
    ``attrs_before`` are put back, in ``sdata`` and in the store.
    """
    written: list[str] = []
    try:
        for name in names:
            written.append(name)
            with quiet_table_writes():
                sdata.write_element(name)
        if attrs_before is not None:
            sdata.write_attrs()
    except BaseException:
        for name in reversed(written):
            delete_if_on_disk(sdata, name)
        if attrs_before is not None:
            sdata.attrs = attrs_before
            sdata.write_attrs()
        raise


@contextmanager
def quiet_table_writes():
    """Hide anndata's notice of a coming default while tables are written; other warnings show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ANNDATA_WRITE_NOTICE, category=UserWarning)
        yield


def check_writable(zarr: Path, command: str) -> None:
    """Refuse, before any work, a store whose folders (to two levels, the elements') cannot be written."""
    folders = [zarr]
    if zarr.is_dir():
        kinds = [path for path in zarr.iterdir() if path.is_dir()]
        folders += kinds + [path for kind in kinds for path in kind.iterdir() if path.is_dir()]
    locked = [folder for folder in folders if not os.access(folder, os.W_OK)]
    if locked:
        raise SystemExit(
            f"loki {command}: {str(zarr)!r} cannot be written (no write permission on "
            f"{str(locked[0])!r}); nothing was computed. Copy the store to a folder you can write to."
        )


def backup_name(table: str) -> str:
    return f"{table}_loki_backup"


def undo_align_writes(sdata, shapes: str | None, old_shapes, held: dict, written: list[str]) -> None:
    """Put back on disk the shapes and placements `loki align` wrote before a later write failed."""
    from spatialdata.transformations import set_transformation

    if shapes is not None:
        delete_if_on_disk(sdata, shapes)
        del sdata.shapes[shapes]
        if old_shapes is not None:  # an earlier run's
            sdata.shapes[shapes] = old_shapes
            sdata.write_element(shapes)
    for name in written:
        set_transformation(sdata[name], held[name], set_all=True)
        sdata.write_transformations(name)


def placements(sdata) -> dict:
    """Each spatial element's transformations (copies of the dictionaries)."""
    from spatialdata.transformations import get_transformation

    return {
        name: dict(get_transformation(element, get_all=True))
        for _, name, element in sdata.gen_spatial_elements()
    }


def transformations(sdata) -> dict[str, str]:
    """Each spatial element's transformations, as text to compare before and after a call."""
    from spatialdata.transformations import get_transformation

    return {
        name: repr(sorted(get_transformation(element, get_all=True).items()))
        for _, name, element in sdata.gen_spatial_elements()
    }
