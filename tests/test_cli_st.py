"""`loki st`: legacy ST sections (counts, spot file, H&E) written into a store, then embedded and aligned.

Also `loki slide --append`, which adds an image beside the sections of a store. Every failing command
is checked to leave the store's files as they were (or to create none).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from tests.conftest import fail_spatialdata_write, shared_path

import loki as lk
from loki.cli import main

EMBED = ["--model", "loki-tiny", "--device", "cpu"]  # untrained: these tests check the plumbing


def _mob(section: str) -> list[str]:
    """COUNTS SPOTS IMAGE of a STUtility mouse olfactory bulb section (a 2k array: 100 µm per step)."""
    folder = shared_path("stutility_mob")
    return [
        str(folder / f"{section}.tsv"),
        str(folder / f"alignment_table_{section}.tsv"),
        str(folder / f"{section}.jpg"),
    ]


def _her2st(section: str) -> list[str]:
    """COUNTS SPOTS IMAGE of a her2st section; the image is downscaled to 2000 px wide."""
    folder = shared_path("her2st_A")
    return [
        str(folder / "counts" / f"{section}.tsv.gz"),
        str(folder / "spotfiles" / f"{section}_selection.tsv"),
        str(folder / "images" / f"{section}_HE_image_dark.png"),
    ]


def _listing(path) -> dict:
    """The store's files (path and size) and attrs; a file's text; nothing when there is no path."""
    if not path.exists():
        return {}
    if path.is_file():
        return {"file": path.read_text()}
    files = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
    attrs = json.dumps(sd.read_zarr(path).attrs, sort_keys=True) if (path / "zarr.json").is_file() else None
    return {"files": files, "attrs": attrs}


@pytest.fixture(scope="module")
def mob1_store_once(tmp_path_factory):
    store = tmp_path_factory.mktemp("st") / "mob.zarr"
    assert main(["st", *_mob("MOB1"), str(store), "--array-step-um", "100"]) == 0
    return store


@pytest.fixture
def mob1_store(mob1_store_once, tmp_path):
    """A store holding section MOB1 (written by `loki st`), a copy for each test."""
    store = tmp_path / "mob.zarr"
    shutil.copytree(mob1_store_once, store)
    return store


def _same_section(back, expected, name: str) -> None:
    table, reference = back.tables[name], expected.tables[name]
    assert list(table.obs_names) == list(reference.obs_names)
    assert list(table.var_names) == list(reference.var_names)
    np.testing.assert_array_equal(table.X.toarray(), reference.X.toarray())
    np.testing.assert_array_equal(table.obsm["spatial"], reference.obsm["spatial"])
    assert table.uns["loki"] == reference.uns["loki"]
    np.testing.assert_array_equal(
        np.asarray(back.images[f"{name}_image"]["scale0"]["image"]),
        np.asarray(expected.images[f"{name}_image"]["scale0"]["image"]),
    )
    np.testing.assert_allclose(
        back.shapes[f"{name}_spots"]["radius"], expected.shapes[f"{name}_spots"]["radius"]
    )


def test_two_mob_sections_are_written_embedded_and_aligned(tmp_path, capsys):
    store = tmp_path / "mob.zarr"
    assert main(["st", *_mob("MOB1"), str(store), "--array-step-um", "100"]) == 0
    assert capsys.readouterr().out == (
        f"section 'MOB1' (379 spots x 1000 genes) written to {store}: table 'MOB1', shapes 'MOB1_spots', "
        "image 'MOB1_image' (4.385 µm per pixel)\n"
    )
    assert main(["st", *_mob("MOB2"), str(store), "--array-step-um", "100", "--append"]) == 0
    assert capsys.readouterr().out.startswith(f"section 'MOB2' (407 spots x 1000 genes) added to {store}: ")

    back = sd.read_zarr(store)  # what the reader gives, for each section
    assert set(back.tables) == {"MOB1", "MOB2"}
    for name in ("MOB1", "MOB2"):
        _same_section(back, lk.io.read_legacy_st(*_mob(name), name=name, array_step_um=100), name)

    gene_map = str(shared_path("stutility_mob", "mouse_genes.tsv.gz"))  # the files name genes by Ensembl id
    for name in ("MOB1", "MOB2"):
        assert main(["embed", str(store), "--table", name, "--gene-map", gene_map, *EMBED]) == 0
    assert main(["align", str(store), "--source", "MOB2", "--target", "MOB1"]) == 0
    assert "'MOB2' aligned onto 'MOB1' (deformable" in capsys.readouterr().out
    aligned = sd.read_zarr(store).tables["MOB2"]
    assert aligned.obsm["spatial_aligned"].shape == (407, 2)
    assert {lk.Key.TEXT, lk.Key.IMAGE} <= set(aligned.obsm)


def test_two_her2st_sections_with_downscaled_images_are_written(tmp_path, capsys):
    from spatialdata.transformations import get_transformation

    store = tmp_path / "her2st.zarr"
    assert main(["st", *_her2st("A1"), str(store), "--image-scale", "2000/6954"]) == 0
    assert capsys.readouterr().out.startswith(f"section 'A1' (346 spots x 15045 genes) written to {store}: ")
    assert main(["st", *_her2st("A2"), str(store), "--image-scale", "2000/6966", "--append"]) == 0
    assert f"added to {store}: table 'A2', shapes 'A2_spots', image 'A2_image'" in capsys.readouterr().out

    back = sd.read_zarr(store)
    for name, width in (("A1", 6954), ("A2", 6966)):
        _same_section(back, lk.io.read_legacy_st(*_her2st(name), name=name, image_scale=2000 / width), name)
        scale = get_transformation(back.images[f"{name}_image"], "global").to_affine_matrix(("x",), ("x",))
        assert scale[0, 0] == pytest.approx(width / 2000)  # image pixels to full-resolution pixels
    # embedding and aligning a store written by `loki st`: the MOB test above


def _without_column(tmp_path, column: str) -> str:
    import pandas as pd

    spots = pd.read_csv(_mob("MOB1")[1], sep="\t").drop(columns=column)
    path = tmp_path / "spots.tsv"
    spots.to_csv(path, sep="\t", index=False)
    return str(path)


@pytest.mark.parametrize(
    ("files", "options", "expected"),
    [
        (
            lambda tmp: [_mob("MOB1")[0] + ".gz", *_mob("MOB1")[1:]],
            [],
            r"^loki st: COUNTS: no such file: '[^']+/MOB1\.tsv\.gz' \(its folder holds MOB1\.jpg, MOB1\.tsv, "
            r"MOB2\.jpg, .+ and \d+ more\)$",
        ),
        (
            lambda tmp: [*_mob("MOB1")[:2], str(tmp / "absent" / "MOB1.jpg")],
            [],
            r"^loki st: IMAGE: no such file: '[^']+/MOB1\.jpg' \(there is no folder '[^']+/absent'\)$",
        ),
        (
            lambda tmp: [_mob("MOB1")[0], str(tmp), _mob("MOB1")[2]],
            [],
            r"^loki st: SPOTS: '[^']+' is a folder, not a file$",
        ),
        (
            lambda tmp: [_mob("MOB1")[0], _without_column(tmp, "pixel_x"), _mob("MOB1")[2]],
            [],
            r"^loki st: Spot file lacks column\(s\) \['pixel_x'\]; its columns are \['x', 'y', 'new_x', "
            r"'new_y', 'pixel_y', 'selected'\]\. Expected \['x', 'y', 'pixel_x', 'pixel_y'\] and optionally "
            r"'selected'\.$",
        ),
        (
            lambda tmp: [_mob("MOB1")[1], _mob("MOB1")[0], _mob("MOB1")[2]],
            [],
            r"were counts and spots swapped\? loki st takes COUNTS SPOTS IMAGE ZARR\.$",
        ),
        (
            lambda tmp: [*_mob("MOB1")[:2], _mob("MOB1")[0]],
            [],
            r"^loki st: IMAGE '([^']+/MOB1\.tsv)' cannot be read \(cannot identify image file '\1'\); expected an "
            r"image file \(jpg, png or tif\)\.$",
        ),
        (
            lambda tmp: _mob("MOB1"),
            ["--name", "a b"],
            r"^loki st: --name 'a b' is not a valid SpatialData element name: ",
        ),
        (
            lambda tmp: [shutil.copy(_mob("MOB1")[0], tmp / "__MOB1.tsv"), *_mob("MOB1")[1:]],
            [],
            r"^loki st: the counts file's default section name '__MOB1' is not a valid SpatialData element "
            r"name: Name cannot start with '__'\. \(it names the section's table, shapes and images\)\. "
            r"Pass --name\.$",
        ),
        (
            lambda tmp: [*_mob("MOB1")[:2], _mob("MOB1")[2]],
            ["--all-spots"],  # counts spots the spot file lacks
            r"^loki st: 11 of 1934 spot\(s\) of the counts table are missing from the spot file, e\.g\. .+ "
            r"without --all-spots, spots the spot file does not select are left out\)\.$",
        ),
    ],
)
def test_st_errors_are_one_line_and_write_no_store(tmp_path, files, options, expected):
    store = tmp_path / "new.zarr"
    with pytest.raises(SystemExit, match=expected):
        main(["st", *map(str, files(tmp_path)), str(store), *options])
    assert not store.exists()


@pytest.mark.parametrize("bad", ["COUNTS", "SPOTS", "IMAGE"])
def test_st_files_it_cannot_read_are_named(tmp_path, bad):
    """W8: they failed in the reader's words ('utf-8' codec can't decode byte 0xd7, No columns to parse
    from file, image file is truncated), naming neither the argument nor the file."""
    files = dict(zip(["COUNTS", "SPOTS", "IMAGE"], map(Path, _mob("MOB1")), strict=True))
    if bad == "COUNTS":  # loki's bundled counts of this section: scipy's binary format
        files[bad] = Path(lk.__file__).parent / "datasets" / "data" / "mob" / "MOB1_counts.npz"
    elif bad == "SPOTS":
        files[bad] = tmp_path / "spots.tsv"
        files[bad].write_text("")  # e.g. a failed download
    else:
        jpg = files[bad].read_bytes()
        files[bad] = tmp_path / "MOB1.jpg"
        files[bad].write_bytes(jpg[: len(jpg) // 3])
    store = tmp_path / "out.zarr"
    with pytest.raises(SystemExit) as exit_:
        main(["st", *map(str, files.values()), str(store), "--array-step-um", "100"])
    message = str(exit_.value.code)
    assert message.startswith(f"loki st: {bad} {str(files[bad])!r} cannot be read (")
    assert "; expected a" in message
    assert not store.exists()


def test_st_usage_errors_write_no_store(tmp_path, capsys):
    store = tmp_path / "new.zarr"
    for value in ("0", "1/0", "2/-3", "a/b", "1/2/3", "nan", "inf/1"):
        with pytest.raises(SystemExit) as exit_:
            main(["st", *_mob("MOB1"), str(store), "--image-scale", value])
        assert exit_.value.code == 2
        assert (
            f"argument --image-scale: must be a positive number, or a ratio of two (e.g. 2000/6954), got {value!r}"
        ) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["st", *_mob("MOB1"), str(store), "--array-step-um", "0"])
    assert exit_.value.code == 2
    assert not store.exists()


@pytest.mark.parametrize(
    ("section", "options", "expected"),
    [
        (
            "MOB2",
            [],
            "{zarr!r} exists; name a new store, or pass --append to add the section to it.",
        ),
        (
            "MOB1",
            ["--append"],  # the counts file's name
            "argument --name: the counts file's default section name 'MOB1' is taken: {zarr} holds image "
            "'MOB1_image', shapes element 'MOB1_spots', table 'MOB1' already (--append adds only new elements); "
            "pass another --name (its tables: 'MOB1')",
        ),
        (
            "MOB2",
            ["--append", "--name", "MOB1"],
            "argument --name: {zarr} holds image 'MOB1_image', shapes element 'MOB1_spots', table 'MOB1' "
            "already (--append adds only new elements); pass another --name (its tables: 'MOB1')",
        ),
        (
            "MOB2",
            ["--append", "--name", "mob1"],
            "argument --name: {zarr} holds image 'MOB1_image', shapes element 'MOB1_spots', table 'MOB1' "
            "already (--append adds only new elements; SpatialData element names must differ by more than "
            "case); pass another --name (its tables: 'MOB1')",
        ),
        (
            "MOB2",
            ["--append", "--name", "a b"],
            "loki st: --name 'a b' is not a valid SpatialData element name",
        ),
        (  # the store is read, then the files fail
            "MOB2",
            ["--append", "--all-spots"],
            "loki st: 8 of 1933 spot(s) of the counts table are missing from the spot file",
        ),
    ],
)
def test_st_errors_of_an_existing_store_leave_it_as_it_was(mob1_store, capsys, section, options, expected):
    before = _listing(mob1_store)
    with pytest.raises(SystemExit) as exit_:
        main(["st", *_mob(section), str(mob1_store), *options])
    message = exit_.value.code if isinstance(exit_.value.code, str) else capsys.readouterr().err
    assert expected.format(zarr=str(mob1_store)) in message
    assert _listing(mob1_store) == before


@pytest.mark.parametrize("command", ["st", "slide"])
def test_append_into_a_file_or_a_folder_that_is_no_store_is_refused(tmp_path, command):
    path = tmp_path / "section.h5ad"
    path.write_text("not a store")
    files = _mob("MOB2") if command == "st" else [_mob("MOB2")[2]]
    with pytest.raises(
        SystemExit, match=rf"^loki {command}: '[^']+section.h5ad' is a file, not a SpatialData"
    ):
        main([command, *files, str(path), "--append"])
    assert path.read_text() == "not a store"
    folder = tmp_path / "plain"
    (folder / "data").mkdir(parents=True)
    with pytest.raises(SystemExit, match=rf"^loki {command}: '[^']+plain' is not a SpatialData zarr store"):
        main([command, *files, str(folder), "--append"])
    assert [p.name for p in folder.rglob("*")] == ["data"]


@pytest.mark.parametrize(
    ("method", "name", "error", "code"),
    [
        ("_write_element", "MOB2_spots", KeyboardInterrupt(), 130),
        (
            "_write_element",
            "MOB2",
            OSError(28, "No space left on device"),
            "loki st: [Errno 28] No space left on device",
        ),
        # a legacy ST section adds no pixel size to the store's attrs: its last write is the list of elements
        ("write_consolidated_metadata", None, KeyboardInterrupt(), 130),
    ],
)
def test_st_append_that_fails_while_writing_leaves_the_store_as_it_was(
    mob1_store, monkeypatch, method, name, error, code
):
    before = _listing(mob1_store)
    fail_spatialdata_write(monkeypatch, method, name, error, once=True)
    with pytest.raises(SystemExit) as exit_:
        main(["st", *_mob("MOB2"), str(mob1_store), "--array-step-um", "100", "--append"])
    assert exit_.value.code == code
    monkeypatch.undo()
    assert _listing(mob1_store) == before


def test_st_interrupted_leaves_no_store(tmp_path, monkeypatch):
    store = tmp_path / "new.zarr"
    fail_spatialdata_write(monkeypatch, "_write_element", "MOB1_spots")
    with pytest.raises(SystemExit):
        main(["st", *_mob("MOB1"), str(store), "--array-step-um", "100"])
    assert not store.exists()


def test_slide_append_adds_an_image_beside_the_sections(mob1_store, capsys):
    image = _mob("MOB2")[2]
    assert main(["slide", image, str(mob1_store), "--append", "--mpp", "4.4"]) == 0
    assert capsys.readouterr().out == f"image 'MOB2' added to {mob1_store} (4.4 µm per pixel)\n"
    back = sd.read_zarr(mob1_store)
    assert set(back.images) == {"MOB1_image", "MOB2"}
    assert set(back.tables) == {"MOB1"}
    assert back.attrs["loki"]["microns_per_pixel"] == {"MOB2": 4.4}
    expected = lk.io.read_slide(image, microns_per_pixel=4.4)
    np.testing.assert_array_equal(
        np.asarray(back.images["MOB2"]["scale0"]["image"]),
        np.asarray(expected.images["MOB2"]["scale0"]["image"]),
    )
    assert (
        main(["tile", str(mob1_store), "--image", "MOB2", "--tile-um", "200"]) == 0
    )  # its recorded pixel size
    assert "MOB2_tiles" in sd.read_zarr(mob1_store).tables
    # a second image: the store's attrs keep the first one's pixel size
    assert main(["slide", _mob("MOB3")[2], str(mob1_store), "--append", "--mpp", "4.5"]) == 0
    assert sd.read_zarr(mob1_store).attrs["loki"]["microns_per_pixel"] == {"MOB2": 4.4, "MOB3": 4.5}


@pytest.mark.parametrize(
    ("image", "options", "expected"),
    [
        (
            "MOB1",
            ["--append"],  # the file's name, MOB1, is the table's
            "argument --name: the file's default image name 'MOB1' is taken: {zarr} holds table 'MOB1' already "
            "(--append adds only new elements); pass another --name (its images: 'MOB1_image')",
        ),
        (
            "MOB2",
            ["--append", "--name", "mob1_IMAGE"],
            "argument --name: {zarr} holds image 'MOB1_image' already (--append adds only new elements; "
            "SpatialData element names must differ by more than case); pass another --name (its images: "
            "'MOB1_image')",
        ),
        (
            "MOB2",
            [],
            "loki slide: {zarr!r} exists; name a new store, or pass --append to add the image to it.",
        ),
        (
            "MOB2",
            ["--append", "--name", "a b"],
            "loki slide: --name 'a b' is not a valid SpatialData element name",
        ),
    ],
)
def test_slide_append_errors_leave_the_store_as_it_was(mob1_store, capsys, image, options, expected):
    before = _listing(mob1_store)
    with pytest.raises(SystemExit) as exit_:
        main(["slide", _mob(image)[2], str(mob1_store), "--mpp", "4.4", *options])
    message = exit_.value.code if isinstance(exit_.value.code, str) else capsys.readouterr().err
    assert expected.format(zarr=str(mob1_store)) in message
    assert _listing(mob1_store) == before


@pytest.mark.parametrize(("method", "name"), [("_write_element", "MOB2"), ("write_attrs", None)])
def test_slide_append_interrupted_leaves_the_store_as_it_was(mob1_store, monkeypatch, capsys, method, name):
    before = _listing(mob1_store)
    fail_spatialdata_write(monkeypatch, method, name)
    with pytest.raises(SystemExit) as exit_:
        main(["slide", _mob("MOB2")[2], str(mob1_store), "--append", "--mpp", "4.4"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "loki slide: interrupted"
    monkeypatch.undo()
    assert _listing(mob1_store) == before


def test_slide_append_creates_a_store_that_does_not_exist(tmp_path, capsys):
    store = tmp_path / "new.zarr"
    assert main(["slide", _mob("MOB2")[2], str(store), "--append", "--mpp", "4.4"]) == 0
    assert capsys.readouterr().out == f"image 'MOB2' written to {store} (4.4 µm per pixel)\n"
    assert set(sd.read_zarr(store).images) == {"MOB2"}


def test_st_help_and_usage_errors_load_no_scientific_library():
    code = """
import contextlib, io, json, sys
import loki.cli
heavy = ("anndata", "dask", "numpy", "pandas", "scanpy", "spatialdata", "torch")
seen = {}
for argv in (["st", "--help"], ["st", "c.tsv", "s.tsv", "he.jpg", "s.zarr", "--image-scale", "1/0"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            loki.cli.main(argv)
        except SystemExit as exit_:
            seen[argv[1]] = [exit_.code, sorted(m for m in heavy if m in sys.modules)]
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"--help": [0, []], "c.tsv": [2, []]}, out.stderr


def test_st_without_an_image_writes_a_section_of_spots(tmp_path, capsys):
    """her2st A3 and A4 come without an H&E image here: IMAGE may be left out."""
    store = tmp_path / "her2st.zarr"
    counts, spots, _ = _her2st("A3")
    assert main(["st", counts, spots, str(store), "--no-image"]) == 0
    assert "table 'A3', shapes 'A3_spots', no image" in capsys.readouterr().out
    counts, spots, _ = _her2st("A4")
    assert main(["st", counts, spots, str(store), "--append", "--no-image"]) == 0
    back = sd.read_zarr(store)
    assert set(back.tables) == {"A3", "A4"}
    assert not back.images
    reference = lk.io.read_legacy_st(*_her2st("A3")[:2], name="A3")
    np.testing.assert_array_equal(back.tables["A3"].obsm["spatial"], reference.tables["A3"].obsm["spatial"])
    assert back.tables["A3"].uns["loki"] == reference.tables["A3"].uns["loki"]


@pytest.mark.parametrize("given", ["zarr forgotten", "both"])
def test_st_without_image_needs_no_image_and_writes_nothing(tmp_path, given):
    """With ZARR forgotten, the image path would be taken for ZARR (and a store written there)."""
    counts, spots, image = _her2st("A1")
    if given == "zarr forgotten":
        typo = str(tmp_path / "he.jpg")  # a mistyped image path, not a file
        with pytest.raises(
            SystemExit, match=r"give COUNTS SPOTS IMAGE ZARR, or COUNTS SPOTS ZARR with --no-image"
        ):
            main(["st", counts, spots, typo])
        assert not (tmp_path / "he.jpg").exists()
    else:
        store = tmp_path / "s.zarr"
        with pytest.raises(SystemExit, match=r"--no-image was given with IMAGE .*: leave out one of them"):
            main(["st", counts, spots, image, str(store), "--no-image"])
        assert not store.exists()
