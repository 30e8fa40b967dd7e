"""Writing a command's results into the SpatialData zarr store it read, all or nothing.

SpatialData does not overwrite an element of the store an object is backed by; the batch commands
(:mod:`loki.cli`) replace tables through a full copy on disk, and put back what they wrote when a
later write fails or the command is stopped, so that a store is never left half written.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import warnings
from concurrent.futures import CancelledError, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

#: anndata's notice of a coming default, shown on every table write
ANNDATA_WRITE_NOTICE = r"zarr v3 autosharding will be the default"
#: The folders of a SpatialData zarr store that hold its elements, one for each kind
ELEMENT_KINDS = ("images", "labels", "points", "shapes", "tables")
#: The files that make a folder a zarr group (zarr v3, v2): a store's root holds one
GROUP_FILES = ("zarr.json", ".zgroup")


def read_store(zarr: Path, command: str):
    """The SpatialData of the store ``zarr``, for a command that writes into it; a folder that is not one is refused.

    A store has element folders and, at its root, a zarr group's metadata file. spatialdata reads any
    zarr group (an AnnData's ``.zarr``, or a store's ``tables/`` folder, would read as a SpatialData
    without tables), and a folder without that file (left by a write that was killed, or a plain
    folder) fails deep in zarr ("No group found"): both are refused here in words that say why.
    What killed commands left in the store is deleted first (:func:`clear_leftovers`), and a store
    that still fails to read is refused in one line naming the element folder that fails. The
    returned object's writes list in the store's consolidated metadata only the elements it holds
    and those the store listed (:func:`guard_listing`).
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
    if zarr.is_dir() and not any((zarr / name).is_file() for name in GROUP_FILES):
        raise SystemExit(
            f"loki {command}: {str(zarr)!r} is not a SpatialData zarr store: it has element folders "
            f"({', '.join(kind for kind in ELEMENT_KINDS if (zarr / kind).is_dir())}) but none of the files "
            f"{', '.join(GROUP_FILES)} that a store's root holds, e.g. what a write stopped by a crash "
            "left; delete it and write the store again."
        )
    clear_leftovers(zarr)
    try:
        sdata = sd.read_zarr(zarr)
    except Exception as err:  # spatialdata's own checks are asserts: a traceback, naming no element
        if not zarr.exists():  # zarr's words say so
            raise
        element = _element_failing(err)
        where = "" if element is None else f" (its element folder {element!r} fails)"
        text = str(err).strip()
        hint = (
            ""
            if element is None
            else f". If a command killed while writing it left it half written, delete that folder, then list "
            f"the store's elements anew in Python: zarr.consolidate_metadata({str(zarr)!r})"
        )
        raise SystemExit(
            f"loki {command}: cannot read the store {str(zarr)!r}{where}: {type(err).__name__}"
            + (f": {text}" if text else "")
            + hint
        ) from err
    guard_listing(sdata)
    return sdata


def _element_failing(err: BaseException) -> str | None:
    """The element (``kind/name``) spatialdata was reading when ``err`` was raised, if its traceback tells."""
    import traceback

    element = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_name == "_read_zarr_group_spatialdata_element":
            kind, name = frame.f_locals.get("group_name"), frame.f_locals.get("subgroup_name")
            if isinstance(kind, str) and isinstance(name, str):
                element = f"{kind}/{name}"
    return element


def rewrite_table(sdata, name: str) -> None:
    """Replace a table in the store it was read from, with a full copy on disk at every step.

    SpatialData does not overwrite an element inside the store the object is backed by, so the table
    is written whole under a temporary name first; the old table's folder is then deleted and the
    copy's folder renamed to the table's (a table folder does not hold its name), so the table is
    written once. A failure or an interruption (Ctrl-C) while the copy is written removes the copy:
    the store is as it was, and the error is raised. Once the copy is whole, the swap is finished even
    when interrupted (one more try); only if that fails too is the copy left, and the next run names it.
    All of it holds the store's lock (:func:`store_lock`): each step rewrites the store's metadata.
    """
    backup = backup_name(name)
    with store_lock(Path(sdata.path)):
        clear_leftovers(Path(sdata.path))  # a killed run's copy: the write below refuses an existing folder
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
    the store reads as what is on disk (a stale list names the deleted table's arrays). A second call
    finishes what an interrupted first one left.
    """
    tables = Path(sdata.path) / "tables"
    copy, old = tables / backup_name(name), tables / name
    try:
        if copy.is_dir():  # else renamed by an earlier call
            for group_file in (*GROUP_FILES, ".zattrs"):  # zarr v3, v2 (and v2's attributes)
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
    """Rewrite the store's consolidated metadata (the list of its groups and arrays), if it has one.

    zarr lists every group and array on disk: also an element another command is writing now (its
    name claimed, see :func:`_names_claimed`) or one a killed command left half written, which would
    make the store unreadable. Only the elements the store listed and those ``sdata`` holds are kept
    in the list.
    """
    import spatialdata as sd

    zarr = Path(sdata.path)
    listed = _listed_elements(zarr)
    if listed is None:  # the store has none: spatialdata reads its folders
        return
    keep = listed | {f"{kind}/{name}" for kind, name, _ in sdata.gen_elements()}
    sd.SpatialData.write_consolidated_metadata(sdata)
    _drop_from_listing(zarr, keep)


def guard_listing(sdata) -> None:
    """Make ``sdata``'s rewrites of the store's list of elements (spatialdata's too) keep out what others write.

    Each lists only the elements the store listed and those ``sdata`` holds (see :func:`_consolidate`).
    """
    sdata.write_consolidated_metadata = lambda: _consolidate(sdata)


def _listed_elements(zarr: Path) -> set[str] | None:
    """The elements (``kind/name``) the consolidated metadata of the store ``zarr`` lists; None if it has none."""
    import json

    listing = _consolidated_file(zarr)
    if listing is None:
        return None
    path, key = listing
    metadata = _listing_of(json.loads(path.read_text()), key)
    if metadata is None:
        return None
    return {element for element in map(_element_of, metadata) if element is not None}


def _consolidated_file(zarr: Path) -> tuple[Path, str] | None:
    """The file holding the store's consolidated metadata and the key of its listing (zarr v3, v2)."""
    if (zarr / "zarr.json").is_file():
        return zarr / "zarr.json", "consolidated_metadata"
    if (zarr / ".zmetadata").is_file():
        return zarr / ".zmetadata", ""
    return None


def _listing_of(content: dict, key: str) -> dict | None:
    """The listing (path -> metadata) in the consolidated metadata file's ``content``; None if it has none."""
    holder = content.get(key) if key else content
    return holder.get("metadata") if isinstance(holder, dict) else None


def _element_of(path: str) -> str | None:
    """The element (``kind/name``) a path in the store is in; None for the root and the kinds' groups."""
    parts = path.split("/")
    if len(parts) < 2 or parts[0] not in ELEMENT_KINDS or parts[1].startswith("."):  # v2's .zgroup, .zattrs
        return None
    return f"{parts[0]}/{parts[1]}"


def _drop_from_listing(zarr: Path, keep: set[str]) -> None:
    """Drop from the store's consolidated metadata the elements (and all within them) not in ``keep``."""
    import json

    path, key = _consolidated_file(zarr)
    content = json.loads(path.read_text())
    metadata = _listing_of(content, key)
    dropped = [name for name in metadata if _element_of(name) not in keep | {None}]
    if not dropped:  # the file as zarr wrote it
        return
    for name in dropped:
        del metadata[name]
    temporary = path.with_name(f"{path.name}.loki-tmp")
    temporary.write_text(json.dumps(content, indent=2))
    os.replace(temporary, path)  # whole or not at all: a kill leaves the old list


def clear_leftovers(zarr: Path, claimed: dict[str, bool] | None = None) -> list[str]:
    """Delete the element folders of the store ``zarr`` that killed commands left half written.

    A command killed (SIGKILL, a second Ctrl-C) while it writes an element leaves its folder, which
    the store's consolidated metadata does not list: the store still reads, but the name cannot be
    added again, and the next consolidation would list the partial element, after which the store no
    longer reads. Such a folder is deleted, with a warning, unless another running command holds the
    claim of its name (it is writing it now; see :func:`_names_claimed`). In a store without
    consolidated metadata, where every folder is read, only folders whose claim a killed command left
    and copies of a table (``<table>_loki_backup``) beside the whole table are deleted: a folder
    written otherwise is taken for a finished element. The folders are deleted under the store's
    lock (:func:`store_lock`; those who write unlisted folders without a claim hold it), taken only
    when there is something to delete, and looked for again under it; claim files no running command
    holds are deleted then too.

    Parameters
    ----------
    zarr
        The store.
    claimed
        The names (lower case) this command holds the claims of, each with whether the claim was
        taken over from a killed command: no other command writes folders of these names.

    Returns
    -------
    The element folders deleted (``kind/name``).
    """
    from ._logging import logger

    claimed = claimed or {}
    if not _leftovers(zarr, claimed, settle=False):  # the usual case: no lock waited for
        return []
    removed = []
    with store_lock(zarr):
        for folder, why in _leftovers(zarr, claimed, settle=True):
            element = f"{folder.parent.name}/{folder.name}"
            try:
                shutil.rmtree(folder)
            except OSError as err:
                logger.warning("could not delete %s, left half written in %r: %s", element, str(zarr), err)
                continue
            removed.append(element)
            logger.warning(
                "deleted %s from %r: left half written by a command that was killed (%s)",
                element,
                str(zarr),
                why,
            )
    return removed


def _leftovers(zarr: Path, claimed: dict[str, bool], *, settle: bool) -> list[tuple[Path, str]]:
    """The element folders of ``zarr`` that killed commands left (see :func:`clear_leftovers`), each with why.

    With ``settle``, the claim files no running command holds are deleted.
    """
    live, stale = _claim_states(zarr, exclude=set(claimed), delete=settle)
    stale |= {name for name, taken_over in claimed.items() if taken_over}
    listed = _listed_elements(zarr)
    found = []
    for kind in ELEMENT_KINDS:
        folders = sorted((zarr / kind).iterdir()) if (zarr / kind).is_dir() else []
        for folder in folders:
            if not folder.is_dir() or folder.name.startswith(".") or folder.name.lower() in live:
                continue
            why = _left_half_written(zarr, kind, folder.name, listed, stale)
            if why is not None:
                found.append((folder, why))
    return found


def _left_half_written(
    zarr: Path, kind: str, name: str, listed: set[str] | None, stale: set[str]
) -> str | None:
    """Why element folder ``kind/name``, which no running command writes, is a killed command's; None if finished.

    ``listed``: the elements the store lists (None without consolidated metadata); ``stale``: the
    names (lower case) whose claims killed commands left.
    """
    if listed is not None:
        return None if f"{kind}/{name}" in listed else "the store does not list it"
    if name.lower() in stale:
        return "the command that claimed its name ended without finishing it"
    table = name.removesuffix(BACKUP_SUFFIX)
    if kind == "tables" and table != name and _is_group(zarr / kind / table):
        return f"a copy of table {table!r}, which is whole"
    return None


def _claim_states(zarr: Path, exclude: set[str], *, delete: bool) -> tuple[set[str], set[str]]:
    """The names whose claim files (at the root of ``zarr``) a running command holds, and those none holds.

    Names in ``exclude`` (this command's) are skipped; with ``delete``, each claim file no command
    holds is deleted.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no claims are made
        return set(), set()
    live, stale = set(), set()
    for path in zarr.glob(f"{CLAIM_PREFIX}*"):
        name = path.name.removeprefix(CLAIM_PREFIX)
        if name in exclude:
            continue
        try:
            handle = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # its command released it meanwhile
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held, or locks unsupported: taken for held
            live.add(name)
        else:
            stale.add(name)
            if delete:
                path.unlink(missing_ok=True)  # while locked: see _claim
        finally:
            os.close(handle)
    return live, stale


def _is_group(folder: Path) -> bool:
    """Whether ``folder`` holds a zarr group's metadata file (zarr v3, v2)."""
    return any((folder / name).is_file() for name in GROUP_FILES)


def delete_if_on_disk(sdata, name: str) -> None:
    """Delete element ``name`` (a table, shapes, an image) from the store, also when partly written or deleted.

    SpatialData deletes only what it can read as an element: a folder that an interrupted write (or
    deletion) left without its metadata is removed as a folder, and the store's metadata rewritten,
    under the store's lock.
    """
    with store_lock(Path(sdata.path)):
        if any(path.split("/")[-1] == name for path in sdata.elements_paths_on_disk()):
            sdata.delete_element_from_disk(name)
        path = element_folder(sdata, name)
        if path is not None:
            shutil.rmtree(path)
            _consolidate(sdata)


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
        with quiet_table_writes(), _chunk_writers_awaited():
            sdata.write(zarr)
    except BaseException:
        shutil.rmtree(zarr, ignore_errors=True)
        raise


def write_new_elements(sdata, names: list[str], *, attrs_added: dict | None = None) -> None:
    """Write the elements ``names``, new to the store ``sdata`` was read from, all or none.

    The names are claimed first (:func:`_names_claimed`): a name the store holds by then (another
    command added it since ``sdata`` was read) or that another running command has claimed is refused
    with :class:`ElementsTaken`, before anything is written. Each element is then written in turn,
    without the store's lock (:func:`store_lock`); a failure or an interruption (Ctrl-C) deletes those
    written, also the one partly written, and the error is raised: the store is as it was.
    ``attrs_added`` (nested dictionaries) are merged into the store's ``attrs`` as they are on disk
    once the elements are written, not as ``sdata`` read them: another command may have added its own
    since. The store's own metadata (its ``attrs`` and the list of its elements) is rewritten under
    the store's lock, so that commands adding to one store at once keep what each adds.

    A command killed here (SIGKILL, a second Ctrl-C) leaves elements the store does not list, and its
    claims: the store reads as before, and the next command that reads or writes it deletes them
    (:func:`clear_leftovers`), so that the names can be added again; until then, rewrites of the
    list of elements leave them out (:func:`_consolidate`).
    """
    zarr = Path(sdata.path)
    written: list[str] = []
    with _names_claimed(zarr, names):
        try:
            with _chunk_writers_awaited(), _consolidation_deferred(sdata):
                for name in names:
                    written.append(name)
                    with quiet_table_writes():
                        sdata.write_element(name)
        except BaseException:
            with store_lock(zarr):
                _undo_new_elements(sdata, written, None)
            raise
        with store_lock(zarr):  # the undo too: another command may merge its attrs meanwhile
            attrs_before = None
            try:
                if attrs_added is not None:
                    attrs_before = stored_attrs(sdata)
                    sdata.attrs = _merged(attrs_before, attrs_added)
                    sdata.write_attrs()
                _consolidate(sdata)
            except BaseException:
                _undo_new_elements(sdata, written, attrs_before)
                raise


def _undo_new_elements(sdata, written: list[str], attrs_before: dict | None) -> None:
    """Delete the elements ``written`` (also one partly written) and put back ``attrs_before``, if given."""
    for name in reversed(written):
        delete_if_on_disk(sdata, name)
    if attrs_before is not None:
        sdata.attrs = attrs_before
        sdata.write_attrs()


def stored_attrs(sdata) -> dict:
    """The ``attrs`` of the store ``sdata`` is backed by, as they are on disk now (as ``sd.read_zarr`` gives them)."""
    import zarr

    attrs = zarr.open_group(sdata.path, mode="r", use_consolidated=False).attrs.asdict()
    attrs.pop("spatialdata_attrs", None)  # SpatialData's own, written with every ``attrs``
    return attrs


def _merged(base: dict, added: dict) -> dict:
    """``base`` with ``added`` merged in, dictionaries within dictionaries key by key (neither changed)."""
    merged = dict(base)
    for key, value in added.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


class ElementsTaken(ValueError):
    """Names of elements a command would add that the store holds, or that another command is adding, already."""


def describe_element(kind: str, name: str) -> str:
    """``kind`` (a store folder: ``images``, ``shapes``...) and ``name`` in words: ``image 'scan'``."""
    return f"{'shapes element' if kind == 'shapes' else kind.removesuffix('s')} {name!r}"


#: The start of the name of the file, at a store's root, by which a running command claims an element name
CLAIM_PREFIX = ".loki-adding-"


@contextmanager
def _names_claimed(zarr: Path, names: list[str]):
    """Within it, this command alone adds elements named ``names`` (in any case) to the store ``zarr``.

    Elements are written without the store's lock, so each name is claimed first: a claim is a file at
    the store's root that its command holds locked (``flock``) while it writes, and deletes on the way
    out. A name is refused, before anything is written, if another running command claimed it or the
    store holds an element of that name (of any kind; SpatialData tells names apart regardless of
    case); a claim file that no command holds (its command was killed) is taken over, and what its
    command left half written is deleted (:func:`clear_leftovers`). Where locks are unsupported, no
    names are claimed (see :func:`store_lock`).
    """
    claims: dict[Path, int] = {}
    taken_over: dict[str, bool] = {}
    try:
        for name in sorted(names, key=str.lower):  # in one order: of two commands, one gets them all
            path = zarr / f"{CLAIM_PREFIX}{name.lower()}"
            claim = _claim(path)
            if claim is None:
                raise ElementsTaken(
                    f"another command is adding an element named {name!r} to {zarr}: nothing was written"
                )
            claims[path], taken_over[name.lower()] = claim
        clear_leftovers(zarr, taken_over)  # folders of these names a killed command left
        on_disk = {
            folder.name.lower(): describe_element(kind, folder.name)
            for kind in ELEMENT_KINDS
            if (zarr / kind).is_dir()
            for folder in (zarr / kind).iterdir()
            if folder.is_dir()
        }
        held = [on_disk[name.lower()] for name in names if name.lower() in on_disk]
        if held:
            raise ElementsTaken(
                f"{zarr} holds {', '.join(held)} already, added since this command read the store (by another "
                "command running at the same time): nothing was written"
            )
        yield
    finally:
        _release(claims)


def _claim(path: Path) -> tuple[int, bool] | None:
    """Claim ``path``: its open, locked file (-1 where locks are unsupported), and whether a killed command left it.

    None if another command holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return -1, False
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            left = False
        except FileExistsError:
            try:
                handle = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # its command released it meanwhile
                continue
            left = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return None
        except OSError as err:
            os.close(handle)
            if err.errno in _LOCKS_UNSUPPORTED:
                path.unlink(missing_ok=True)
                return -1, False
            raise
        try:
            linked = os.stat(path)
        except FileNotFoundError:
            linked = None
        opened = os.fstat(handle)
        if linked is not None and (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino):
            return handle, left
        os.close(handle)  # its command deleted it as this one opened it: claim the name anew


def _release(claims: dict[Path, int]) -> None:
    """Delete the claim files ``claims`` (paths and their open handles), then close them, which unlocks them."""
    for path, handle in claims.items():
        if handle >= 0:
            path.unlink(missing_ok=True)
            os.close(handle)


class _HeldStores(threading.local):
    """The stores whose lock a thread holds (their real paths), so that a nested store_lock does not wait for itself."""

    def __init__(self):
        self.paths: set[str] = set()


_held_stores = _HeldStores()


@contextmanager
def store_lock(zarr: Path):
    """Hold the lock of the store ``zarr`` (a lock on its folder) while the body runs.

    The store's attrs and the consolidated list of its elements are one file at its root, which each
    write reads and writes whole: of two commands adding elements at once (a batch array), the later
    write would drop what the other added. The folder itself is locked (``flock``), so that no lock
    file is left in the store. Such a lock excludes the commands of one machine: on a network file
    system (NFS), jobs on different nodes appending to one store at once are not kept apart. Where
    the file system refuses locks (no ``fcntl``, as on Windows, or a mount without locks), a warning
    is logged and the body runs unlocked.

    Every command that changes an existing store holds it wherever SpatialData or zarr rewrite the
    store's root metadata (which they read whole, then write whole): ``--append`` and ``loki tile``
    while they merge their attrs and list their new elements (:func:`write_new_elements`; the
    elements themselves are written unlocked, their names claimed first), ``loki embed`` and ``loki
    align`` for the whole rewrite of a table (:func:`rewrite_table`) and of shapes and placements,
    and every deletion (:func:`delete_if_on_disk`). A thread holding it may take it again (the body
    runs at once); another thread, like another process, waits.

    Element folders the store does not list are written only under it or under a claim of their
    name: one found without either (its command was killed) is deleted under it
    (:func:`clear_leftovers`), and the list of elements rewritten under it names only the elements
    listed before and those of the command rewriting it (:func:`_consolidate`), never a folder
    another command is still writing.
    """
    key = os.path.realpath(zarr)
    held = _held_stores.paths
    if key in held:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows
        _warn_unlocked(zarr)
        yield
        return
    handle = os.open(zarr, os.O_RDONLY)  # closing it releases the lock
    try:
        if not _lock(fcntl, handle, zarr):
            _warn_unlocked(zarr)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(handle)


def _lock(fcntl, handle: int, zarr: Path) -> bool:
    """Take the exclusive lock on the open ``handle``, waiting while another command holds it; False if unsupported."""
    from ._logging import logger

    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another command writing to %r", str(zarr))
            fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError as err:
        if err.errno in _LOCKS_UNSUPPORTED:
            return False
        raise
    return True


#: The errors of ``flock`` where the file system does not support locks (EBADF: some network file
#: systems lock only descriptors opened for writing, not a folder's)
_LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF)


def _warn_unlocked(zarr: Path) -> None:
    from ._logging import logger

    logger.warning(
        "cannot lock %r (its file system does not support locks): another command adding elements to this "
        "store at the same time may drop what this one adds to the store's attrs and list of elements",
        str(zarr),
    )


@contextmanager
def _chunk_writers_awaited():
    """Run dask's computations (an image's chunks written) on worker threads that a failure waits for.

    dask's threaded scheduler raises the first error, or Ctrl-C, at once, while the workers go on
    writing the chunks they hold: a store or element deleted then is written into again (a folder of
    chunks, no store). On a failure, no task starts any more and the running ones are awaited before
    the error is raised, so that whatever deletes the partial write deletes it all.
    """
    import dask
    from dask.system import CPU_COUNT

    pool = _StoppablePool(dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        with dask.config.set(pool=pool):
            yield
    except BaseException:
        pool.stop()
        raise
    pool.shutdown()


class _StoppablePool(ThreadPoolExecutor):
    """A thread pool whose tasks can be stopped: after :meth:`stop`, which waits for those running, none starts.

    The tasks are counted as they run, not through the pool's threads: Ctrl-C can land while the pool
    starts a thread for a task, leaving that thread running but unknown to ``shutdown(wait=True)``.
    """

    def __init__(self, workers: int):
        super().__init__(workers)
        self._tasks = threading.Condition()
        self._running = 0
        self._stopped = False

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(self._run, fn, *args, **kwargs)

    def _run(self, fn, *args, **kwargs):
        with self._tasks:
            if self._stopped:
                raise CancelledError
            self._running += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._tasks:
                self._running -= 1
                self._tasks.notify_all()

    def stop(self) -> None:
        """Let no task start, wait for the running ones, and drop the queued ones."""
        with self._tasks:
            self._stopped = True
            while self._running:
                self._tasks.wait()
        self.shutdown(wait=False, cancel_futures=True)


@contextmanager
def _consolidation_deferred(sdata):
    """Within it, SpatialData's writes of ``sdata``'s elements leave the store's list of elements as it is.

    SpatialData rewrites the consolidated metadata after each element it writes, without the store's
    lock: the list is rewritten once, under the lock, after the elements (see
    :func:`write_new_elements`). The instance's method is replaced; on the way out, the one before is back.
    """
    guarded = vars(sdata).get("write_consolidated_metadata")  # see guard_listing
    sdata.write_consolidated_metadata = lambda: None
    try:
        yield
    finally:
        if guarded is None:
            del sdata.write_consolidated_metadata
        else:
            sdata.write_consolidated_metadata = guarded


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


#: The end of the name of a table's full copy, which a command rewriting the table writes first
BACKUP_SUFFIX = "_loki_backup"


def backup_name(table: str) -> str:
    return f"{table}{BACKUP_SUFFIX}"


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


def placement_matrices(sdata) -> dict[str, dict]:
    """Each spatial element's placements: the 3 x 3 affine matrix of its x, y in each coordinate system.

    Placements are compared by what they do: one read from disk is written over an image's (c, y, x)
    axes and prints otherwise than the same placement made in memory, over (x, y).
    """
    from spatialdata.transformations import get_transformation

    return {
        name: {
            system: transformation.to_affine_matrix(("x", "y"), ("x", "y"))
            for system, transformation in get_transformation(element, get_all=True).items()
        }
        for _, name, element in sdata.gen_spatial_elements()
    }


def changed_placements(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """The elements of ``after`` placed otherwise than in ``before`` (both from :func:`placement_matrices`)."""
    import numpy as np

    def same(one: dict, other: dict) -> bool:
        return one.keys() == other.keys() and all(
            np.allclose(one[system], other[system], rtol=1e-9, atol=1e-9) for system in one
        )

    return [name for name, placed in after.items() if not same(before.get(name, {}), placed)]
