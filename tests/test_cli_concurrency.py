"""Commands writing into one store at once (a batch array): none drops or undoes what another wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import spatialdata as sd

import loki as lk
from loki.cli import main

WAITING = "waiting for another command writing to"


def _consolidated(store: Path) -> set[str]:
    """The groups and arrays the store's consolidated metadata lists."""
    return set(json.loads((store / "zarr.json").read_text())["consolidated_metadata"]["metadata"])


def _claims(store: Path) -> list[str]:
    from loki._cli_store import CLAIM_PREFIX

    return [path.name for path in store.iterdir() if path.name.startswith(CLAIM_PREFIX)]


def _append_while_consolidating(monkeypatch, append: list[str], jobs: list) -> None:
    """Run ``loki <append>`` as another process while this one consolidates the store's metadata.

    The other command starts once this one has read the store's root metadata (attrs and all) to
    rewrite it, and runs until it ends or waits for the store's lock; it goes on after that.
    """
    import zarr
    from zarr.core.group import ConsolidatedMetadata

    consolidate, nest = zarr.consolidate_metadata, ConsolidatedMetadata._flat_to_nested
    consolidating: list[bool] = []

    def consolidate_metadata(*args, **kwargs):
        consolidating.append(True)
        try:
            return consolidate(*args, **kwargs)
        finally:
            consolidating.pop()

    def flat_to_nested(metadata):  # zarr's step between reading the root's metadata and writing it
        if consolidating and not jobs:
            job = subprocess.Popen(
                [sys.executable, "-m", "loki.cli", *append, "--verbose"], stderr=subprocess.PIPE, text=True
            )
            jobs.append(job)
            for line in job.stderr:  # it ends (no lock held here), or waits for the lock
                jobs.append(line)
                if WAITING in line:
                    break
        return nest(metadata)

    monkeypatch.setattr(zarr, "consolidate_metadata", consolidate_metadata)
    monkeypatch.setattr(ConsolidatedMetadata, "_flat_to_nested", staticmethod(flat_to_nested))


@pytest.mark.parametrize("command", ["embed", "align"])
def test_a_table_rewritten_while_a_slide_is_appended_keeps_the_slide(tmp_path, slide, monkeypatch, command):
    """`loki embed` and `loki align` rewrote the store's root metadata without the store's lock: a slide
    appended meanwhile lost its pixel size from the store's attrs and its image from the list of elements."""
    store = tmp_path / "sections.zarr"
    if command == "embed":
        lk.datasets.mob("MOB4").write(store)
        args = ["embed", str(store), "--table", "MOB4", "--no-image"]  # the texts: enough to rewrite it
        args += ["--model", "loki-tiny", "--device", "cpu"]
        table, key = "MOB4", lk.Key.TEXT
    else:
        lk.datasets.mob(("MOB1", "MOB2")).write(store)
        args = ["align", str(store), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
        args += ["--method", "rigid", "--max-iter", "20"]
        table, key = "MOB2", "spatial_aligned"
    jobs: list = []
    append = ["slide", str(slide), str(store), "--append", "--mpp", "0.5"]
    _append_while_consolidating(monkeypatch, append, jobs)
    assert main(args) == 0
    job, *lines = jobs
    _, rest = job.communicate(timeout=60)
    assert job.returncode == 0, "".join(lines) + rest
    monkeypatch.undo()
    stored = sd.read_zarr(store)
    assert "slide" in stored.images
    assert stored.attrs.get("loki", {}).get("microns_per_pixel", {}).get("slide") == 0.5
    assert key in stored.tables[table].obsm
    assert {"images/slide", f"tables/{table}"} <= _consolidated(store)
    assert not any(name.endswith("_loki_backup") for name in _consolidated(store))
    assert any(WAITING in line for line in lines)  # it waited for this command's lock


def _run(args: list[str]) -> int | str | None:
    """The exit status of ``loki <args>`` (0 when it returns)."""
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


def test_the_same_slide_name_appended_by_a_job_that_ended_meanwhile_is_refused(
    mob4_zarr, slide, monkeypatch, capsys
):
    """The store read before the other job added the name: the write found its image and then deleted it."""
    import loki.io

    read_slide = loki.io.read_slide
    append = ["slide", str(slide), str(mob4_zarr), "--append", "--name", "scan"]
    other: list = []

    def read_while_another_job_appends(*args, **kwargs):
        if not other:  # the other job runs whole between this job's reading the store and writing
            other.append(None)
            other[0] = _run([*append, "--mpp", "0.5"])
        return read_slide(*args, **kwargs)

    monkeypatch.setattr(loki.io, "read_slide", read_while_another_job_appends)
    assert _run([*append, "--mpp", "0.75"]) == 2
    assert other == [0]
    err = capsys.readouterr().err
    assert (
        f"argument --name: {mob4_zarr} holds image 'scan' already, added since this command read the store "
        "(by another command running at the same time): nothing was written (--append adds only new "
        "elements); pass another --name"
    ) in err
    stored = sd.read_zarr(mob4_zarr)
    assert "scan" in stored.images
    assert stored.attrs["loki"]["microns_per_pixel"] == {"scan": 0.5}  # the other job's
    assert "images/scan" in _consolidated(mob4_zarr)
    assert _claims(mob4_zarr) == []


def test_the_same_slide_name_appended_by_two_jobs_at_once_is_written_by_one(
    mob4_zarr, slide, monkeypatch, capsys
):
    """Both jobs wrote the image: the later write found the other's folder and deleted it."""
    append = ["slide", str(slide), str(mob4_zarr), "--append", "--name", "Scan"]
    write_element = sd.SpatialData.write_element
    other: list = []

    def write_while_another_job_appends(self, element_name, *args, **kwargs):
        if not other:  # the other job runs whole as this one starts writing its image
            other.append(None)
            other[0] = _run([*append[:-1], "scan", "--mpp", "0.5"])  # names differing in case clash
        return write_element(self, element_name, *args, **kwargs)

    monkeypatch.setattr(sd.SpatialData, "write_element", write_while_another_job_appends)
    assert _run([*append, "--mpp", "0.75"]) == 0
    assert other == [2]
    err = capsys.readouterr().err
    assert (
        f"argument --name: another command is adding an element named 'scan' to {mob4_zarr}: nothing was "
        "written (--append adds only new elements); pass another --name"
    ) in err
    stored = sd.read_zarr(mob4_zarr)
    assert "Scan" in stored.images
    assert "scan" not in stored.images
    assert stored.attrs["loki"]["microns_per_pixel"] == {"Scan": 0.75}
    assert _claims(mob4_zarr) == []


def test_a_claim_left_by_a_killed_command_is_taken_over(mob4_zarr, slide):
    """A claim file that no running command holds (its command was killed) does not block the name."""
    from loki._cli_store import CLAIM_PREFIX

    (mob4_zarr / f"{CLAIM_PREFIX}scan").touch()
    assert main(["slide", str(slide), str(mob4_zarr), "--append", "--name", "scan", "--mpp", "0.5"]) == 0
    assert "scan" in sd.read_zarr(mob4_zarr).images
    assert _claims(mob4_zarr) == []


@pytest.mark.parametrize("as_command", [True, False])
def test_objects_are_frozen_for_the_exit_only_when_run_as_the_command(mob4_zarr, monkeypatch, as_command):
    """The collection at interpreter exit examined every object left (0.4-2 s a command): run as the
    command, main freezes them; called with arguments (from Python), it leaves the caller's objects alone."""
    import gc

    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    args = ["tile", str(mob4_zarr), "--image", "nope"]  # refused at once: a failure ends the process too
    monkeypatch.setattr(sys, "argv", ["loki", *args])
    with pytest.raises(SystemExit) as exit_:
        main() if as_command else main(args)
    assert exit_.value.code == 2
    assert frozen == ([True] if as_command else [])


def test_a_command_run_as_a_process_prints_writes_and_exits_as_before_freezing(mob4_zarr):
    script = "import sys; from loki.cli import main; sys.exit(main())"  # as the console script does
    tile = ["tile", str(mob4_zarr), "--image", "MOB4_image", "--tile-um", "400", "--key-added", "big"]
    done = subprocess.run([sys.executable, "-c", script, *tile], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f"tiles written to {mob4_zarr} as shapes 'big_shapes' and table 'big'\n")
    assert sd.read_zarr(mob4_zarr).tables["big"].n_obs > 0
    refused = subprocess.run(
        [sys.executable, "-c", script, *tile], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("pass another --key-added.")
