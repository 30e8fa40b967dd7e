"""What a killed command (SIGKILL, a second Ctrl-C) left in a store: deleted by the next one, never listed.

A kill is simulated by what it leaves: an element folder the store does not list (its group written,
an array missing), a claim file no command holds, a table's partial copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import spatialdata as sd

import loki as lk
from loki._cli_store import CLAIM_PREFIX
from loki.cli import main

fcntl = pytest.importorskip("fcntl")  # claims are file locks


def _listed(store: Path) -> set[str]:
    """The elements (``kind/name``) the store's consolidated metadata lists."""
    paths = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    return {"/".join(path.split("/")[:2]) for path in paths if path.count("/") >= 1}


def _half_written(store: Path, element: str, name: str) -> Path:
    """A copy of ``element`` (``kind/name``) as ``name``, unlisted, without its group's attributes (written last).

    A table's then fails spatialdata's assert on its version, an image's lacks its scales.
    """
    kind = element.split("/")[0]
    copy = store / kind / name
    shutil.copytree(store / element, copy)
    group = copy / "zarr.json"
    group.write_text(json.dumps({**json.loads(group.read_text()), "attributes": {}}))
    return copy


def _append_slide(slide: Path, store: Path, name: str) -> int:
    return main(["slide", str(slide), str(store), "--append", "--name", name, "--mpp", "0.5"])


def _reads_whole(store: Path) -> sd.SpatialData:
    """The store read back: every listed element is on disk and reads."""
    stored = sd.read_zarr(store)
    assert {f"{kind}/{name}" for kind, name, _ in stored.gen_elements()} == _listed(store)
    return stored


def test_an_image_left_by_a_killed_append_is_deleted_and_its_name_added_again(mob4_zarr, slide, caplog):
    """The next command's consolidation listed the half-written image (the store no longer read), and the
    name was refused for good as added by a command running at the same time."""
    partial = _half_written(mob4_zarr, "images/MOB4_image", "scan")
    (mob4_zarr / f"{CLAIM_PREFIX}scan").touch()  # its claim, no longer held
    assert _append_slide(slide, mob4_zarr, "other") == 0
    assert not partial.exists()
    assert "deleted images/scan" in caplog.text
    assert set(_reads_whole(mob4_zarr).images) == {"MOB4_image", "other"}
    assert _append_slide(slide, mob4_zarr, "scan") == 0  # the killed command, run again
    assert set(_reads_whole(mob4_zarr).images) == {"MOB4_image", "other", "scan"}
    assert not list(mob4_zarr.glob(f"{CLAIM_PREFIX}*"))


def test_a_partial_table_copy_left_by_a_killed_embed_is_deleted_before_embedding(mob4_zarr):
    """The next `loki embed` computed, then failed: "The Zarr store already exists. Use overwrite=True"."""
    partial = _half_written(mob4_zarr, "tables/MOB4", "MOB4_loki_backup")
    args = [
        "embed",
        str(mob4_zarr),
        "--table",
        "MOB4",
        "--no-image",
        "--model",
        "loki-tiny",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert not partial.exists()
    stored = _reads_whole(mob4_zarr)
    assert set(stored.tables) == {"MOB4"}
    assert lk.Key.TEXT in stored.tables["MOB4"].obsm


def test_an_element_another_command_is_writing_is_neither_deleted_nor_listed(mob4_zarr, slide):
    """Consolidating listed every folder on disk, also an element whose claimed name another command was
    still writing: a reader of the store then failed on it."""
    writing = _half_written(mob4_zarr, "images/MOB4_image", "scan")
    claim = os.open(mob4_zarr / f"{CLAIM_PREFIX}scan", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the other command, running
        assert _append_slide(slide, mob4_zarr, "other") == 0
        assert writing.is_dir()
        assert (mob4_zarr / f"{CLAIM_PREFIX}scan").exists()
    finally:
        os.close(claim)
    assert "images/scan" not in _listed(mob4_zarr)
    assert set(_reads_whole(mob4_zarr).images) == {"MOB4_image", "other"}


def test_a_store_without_consolidated_metadata_keeps_its_unclaimed_elements(tmp_path, slide):
    """Without a list of elements, every folder is read: one a killed command claimed is deleted (the store
    did not read), one written otherwise is an element and stays."""
    store = tmp_path / "plain.zarr"
    lk.datasets.mob("MOB4").write(store, consolidate_metadata=False)
    kept = store / "tables" / "copy"
    shutil.copytree(store / "tables" / "MOB4", kept)
    _half_written(store, "images/MOB4_image", "scan")
    (store / f"{CLAIM_PREFIX}scan").touch()
    assert _append_slide(slide, store, "scan") == 0
    assert json.loads((store / "zarr.json").read_text()).get("consolidated_metadata") is None
    stored = sd.read_zarr(store)
    assert set(stored.images) == {"MOB4_image", "scan"}
    assert set(stored.tables) == {"MOB4", "copy"}
    assert not list(store.glob(f"{CLAIM_PREFIX}*"))


def test_a_store_that_does_not_read_is_refused_in_one_line_naming_the_element(mob4_zarr):
    """spatialdata's assert on a half-written table listed by the old consolidation was a traceback."""
    import zarr

    _half_written(mob4_zarr, "tables/MOB4", "half")
    zarr.consolidate_metadata(str(mob4_zarr))  # listed, as the old consolidation listed it
    with pytest.raises(SystemExit) as exit_:
        main(["tile", str(mob4_zarr), "--image", "MOB4_image"])
    message = str(exit_.value.code)
    assert message.startswith(f"loki tile: cannot read the store {str(mob4_zarr)!r} (its element folder ")
    assert "'tables/half' fails)" in message
    assert "\n" not in message
    assert (mob4_zarr / "tables" / "half").is_dir()  # listed: an element, not deleted
    shutil.rmtree(mob4_zarr / "tables" / "half")  # as the message says
    zarr.consolidate_metadata(str(mob4_zarr))
    assert set(_reads_whole(mob4_zarr).tables) == {"MOB4"}
