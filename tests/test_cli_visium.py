"""`loki visium`: a Space Ranger folder (Visium, Visium HD) written into a store, then embedded and aligned."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import spatialdata as sd
from tests.conftest import fail_spatialdata_write, shared_path
from tests.io.visium_hd_fixture import write_visium_hd

import loki as lk
from loki.cli import main

EMBED = ["--model", "loki-tiny", "--device", "cpu"]  # untrained: these tests check the plumbing


@pytest.fixture
def visium_folder():
    return shared_path("scanpy_visium_testdata", "1.0.0")


@pytest.fixture(scope="module")
def hd_folder(tmp_path_factory):
    """The synthetic Visium HD folder (8 and 16 µm bins), its full-resolution image outside it, as 10x's."""
    root = tmp_path_factory.mktemp("hd")
    fixture = write_visium_hd(root / "outs", fullres_image="he_full.png")
    (root / "outs" / "he_full.png").rename(root / "he_full.png")
    return fixture.path


def _store_state(path) -> dict:
    """What `loki visium --append` may change: the elements, their files, the store's attrs."""
    sdata = sd.read_zarr(path)
    state = {kind: sorted(getattr(sdata, kind)) for kind in ("images", "shapes", "tables")}
    state["files"] = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.parent != path)
    state["attrs"] = json.dumps(sdata.attrs, sort_keys=True)
    return state


def test_two_visium_sections_of_one_store_are_embedded_and_aligned(visium_folder, tmp_path, capsys):
    store = tmp_path / "sections.zarr"
    assert main(["visium", str(visium_folder), str(store), "--name", "A"]) == 0
    assert capsys.readouterr().out == (
        f"section 'A' (100 spots x 100 genes) written to {store}: table 'A', shapes 'A_spots', images "
        "'A_hires_image', 'A_lowres_image'\n"
    )
    assert main(["visium", str(visium_folder), str(store), "--append"]) == 0  # named by the h5's library id
    assert "section 'custom' (100 spots x 100 genes) added to" in capsys.readouterr().out

    # the store holds what the reader gives, for each section
    back = sd.read_zarr(store)
    assert set(back.tables) == {"A", "custom"}
    expected = lk.io.read_visium(visium_folder, dataset_id="A")
    table = back.tables["A"]
    np.testing.assert_array_equal(table.X.toarray(), expected.tables["A"].X.toarray())
    np.testing.assert_array_equal(table.obsm["spatial"], expected.tables["A"].obsm["spatial"])
    assert table.uns["loki"] == expected.tables["A"].uns["loki"]
    sizes = back.attrs["loki"]["microns_per_pixel"]  # both sections' pixel sizes, for `loki tile`
    assert set(sizes) == {f"{s}_{kind}_image" for s in ("A", "custom") for kind in ("hires", "lowres")}
    assert sizes["custom_hires_image"] == pytest.approx(
        expected.attrs["loki"]["microns_per_pixel"]["A_hires_image"]
    )

    for name in ("A", "custom"):  # no --image-key, --coordinate-system or --microns-per-unit needed
        assert main(["embed", str(store), "--table", name, *EMBED]) == 0
    assert main(["align", str(store), "--source", "custom", "--target", "A"]) == 0
    assert "'custom' aligned onto 'A'" in capsys.readouterr().out
    aligned = sd.read_zarr(store).tables["custom"]
    assert aligned.obsm["spatial_aligned"].shape == (100, 2)
    assert {lk.Key.TEXT, lk.Key.IMAGE} <= set(aligned.obsm)


def test_visium_hd_bins_are_embedded_and_aligned(hd_folder, tmp_path, monkeypatch, capsys):
    store = tmp_path / "hd.zarr"
    monkeypatch.chdir(hd_folder.parent)  # --fullres-image is relative to the working directory
    hd16 = ["visium", str(hd_folder), str(store), "--bin-size", "16", "--name", "hd16"]
    assert main([*hd16, "--fullres-image", "he_full.png"]) == 0
    assert capsys.readouterr().out.startswith(
        f"section 'hd16' (250 bins of 16 µm x 1000 genes) written to {store}: table 'hd16', shapes "
        "'hd16_spots', images 'hd16_full_image', "
    )
    assert main(["visium", str(hd_folder), str(store), "--append", "--name", "hd8"]) == 0  # 8 µm by default
    assert "section 'hd8' (985 bins of 8 µm x 1000 genes) added to" in capsys.readouterr().out
    back = sd.read_zarr(store)
    assert back.tables["hd16"].uns["loki"]["image_key"] == "hd16_full_image"  # patches cut there
    assert back.tables["hd8"].uns["loki"]["spot_diameter_um"] == 8.0

    for name in ("hd16", "hd8"):
        assert main(["embed", str(store), "--table", name, *EMBED]) == 0
    assert main(["align", str(store), "--source", "hd8", "--target", "hd16", "--method", "rigid"]) == 0
    assert sd.read_zarr(store).tables["hd8"].obsm["spatial_aligned"].shape == (985, 2)


@pytest.fixture
def one_section_store(visium_folder, tmp_path):
    store = tmp_path / "one.zarr"
    assert main(["visium", str(visium_folder), str(store), "--name", "A"]) == 0
    return store


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], r"^loki visium: '[^']+one.zarr' exists; name a new store, or pass --append to add the section"),
        (
            ["--append", "--fullres-image", "absent.tif"],
            r"^loki visium: --fullres-image: no such file: 'absent.tif'$",
        ),
        (
            ["--append", "--name", "a b"],
            r"^loki visium: --name 'a b' is not a valid SpatialData element name",
        ),
    ],
)
def test_visium_errors_are_one_line_and_leave_the_store_as_it_was(
    one_section_store, visium_folder, options, expected
):
    before = _store_state(one_section_store)
    with pytest.raises(SystemExit, match=expected):
        main(["visium", str(visium_folder), str(one_section_store), *options])
    assert _store_state(one_section_store) == before


def test_visium_refuses_a_fullres_image_of_the_wrong_size(visium_folder, tmp_path):
    """W8: it was taken without a word; `loki embed` then found every spot off the image."""
    from PIL import Image

    wrong = tmp_path / "other.png"  # 2000 px wide: the hires image's size, not 2000 / 0.150015 px
    Image.fromarray(np.full((2000, 2000, 3), 230, dtype=np.uint8)).save(wrong)
    store = tmp_path / "v.zarr"
    with pytest.raises(SystemExit) as exit_:
        main(["visium", str(visium_folder), str(store), "--fullres-image", str(wrong)])
    message = str(exit_.value.code)
    assert message.startswith(f"loki visium: --fullres-image {str(wrong)!r} is 2000x2000 px")
    assert "about 13332x13332 px" in message
    assert not store.exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--name", "A"],
            "argument --name: {store} holds table 'A', shapes element 'A_spots' already (--append adds only "
            "new elements); pass another --name (its tables: 'A', 'custom')",
        ),
        (
            [],  # the default name, the h5's library id
            "argument --name: the folder's default section name 'custom' is taken: {store} holds image "
            "'custom_hires_image', image 'custom_lowres_image', shapes element 'custom_spots', table 'custom' "
            "already (--append adds only new elements); pass another --name (its tables: 'A', 'custom')",
        ),
        (["--bin-size", "8"], "argument --bin-size: '{folder}' is a Visium folder, not a Visium HD one"),
    ],
)
def test_visium_usage_errors_name_the_option_and_what_the_store_holds(
    one_section_store, visium_folder, capsys, options, expected
):
    assert main(["visium", str(visium_folder), str(one_section_store), "--append"]) == 0  # 'custom'
    capsys.readouterr()
    before = _store_state(one_section_store)
    with pytest.raises(SystemExit) as exit_:
        main(["visium", str(visium_folder), str(one_section_store), "--append", *options])
    assert exit_.value.code == 2
    assert expected.format(store=one_section_store, folder=visium_folder) in capsys.readouterr().err
    assert _store_state(one_section_store) == before


def test_visium_append_refuses_a_name_the_store_holds_in_another_case(
    one_section_store, visium_folder, capsys
):
    """SpatialData clashes 'a' with 'A': it failed with "Element contains conflicting keys ... sanitize_table"."""
    before = _store_state(one_section_store)
    with pytest.raises(SystemExit) as exit_:
        main(["visium", str(visium_folder), str(one_section_store), "--append", "--name", "a"])
    assert exit_.value.code == 2
    assert (
        f"argument --name: {one_section_store} holds table 'A', shapes element 'A_spots' already (--append adds "
        "only new elements; SpatialData element names must differ by more than case); pass another --name "
        "(its tables: 'A')"
    ) in capsys.readouterr().err
    assert _store_state(one_section_store) == before


def test_visium_errors_of_the_folder_write_no_store(hd_folder, tmp_path, capsys):
    store = tmp_path / "new.zarr"
    with pytest.raises(SystemExit, match=rf"^loki visium: Visium folder not found: '{tmp_path}/absent'\.$"):
        main(["visium", str(tmp_path / "absent"), str(store)])
    with pytest.raises(
        SystemExit, match=r"^loki visium: --bin-size 4: '.+binned_outputs' holds bins of \[8, 16\] µm\.$"
    ):
        main(["visium", str(hd_folder), str(store), "--bin-size", "4"])
    with pytest.raises(SystemExit) as exit_:
        main(["visium", str(hd_folder), str(store), "--bin-size", "0"])
    assert exit_.value.code == 2
    assert "argument --bin-size: must be a positive integer, got '0'" in capsys.readouterr().err
    assert not store.exists()


def test_visium_append_into_a_file_is_refused(visium_folder, tmp_path):
    path = tmp_path / "table.h5ad"
    path.write_text("not a store")
    with pytest.raises(
        SystemExit, match=r"^loki visium: '[^']+table.h5ad' is a file, not a SpatialData zarr store"
    ):
        main(["visium", str(visium_folder), str(path), "--append"])
    assert path.read_text() == "not a store"


@pytest.mark.parametrize("command", ["tile", "embed", "align"])
def test_a_file_given_as_the_store_is_named_so(tmp_path, command):
    """It failed in zarr's words: "No group found in store LocalStore('file://...') at path ''"."""
    path = tmp_path / "section.h5ad"
    path.write_text("not a store")
    argv = {
        "embed": ["--table", "A", "--model", "loki-tiny"],
        "tile": ["--image", "A_image", "--mpp", "0.5"],
        "align": ["--source", "A", "--target", "B"],
    }[command]
    with pytest.raises(
        SystemExit, match=rf"^loki {command}: '[^']+section.h5ad' is a file, not a SpatialData"
    ):
        main([command, str(path), *argv])


@pytest.mark.parametrize(("method", "name"), [("_write_element", "B"), ("write_attrs", None)])
def test_visium_append_interrupted_leaves_the_store_as_it_was(
    one_section_store, visium_folder, monkeypatch, capsys, method, name
):
    before = _store_state(one_section_store)
    fail_spatialdata_write(monkeypatch, method, name)
    with pytest.raises(SystemExit) as exit_:
        main(["visium", str(visium_folder), str(one_section_store), "--append", "--name", "B"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "loki visium: interrupted"
    monkeypatch.undo()
    assert _store_state(one_section_store) == before


def test_visium_interrupted_leaves_no_store(visium_folder, tmp_path, monkeypatch):
    store = tmp_path / "new.zarr"
    fail_spatialdata_write(monkeypatch, "_write_element", "A")
    with pytest.raises(SystemExit):
        main(["visium", str(visium_folder), str(store), "--name", "A"])
    assert not store.exists()


def test_visium_help_and_usage_errors_load_no_scientific_library():
    code = """
import contextlib, io, json, sys
import loki.cli
heavy = ("anndata", "dask", "numpy", "pandas", "scanpy", "spatialdata", "torch")
seen = {}
for argv in (["visium", "--help"], ["visium", "outs", "s.zarr", "--bin-size", "0"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            loki.cli.main(argv)
        except SystemExit as exit_:
            seen[" ".join(argv)] = [exit_.code, sorted(m for m in heavy if m in sys.modules)]
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {
        "visium --help": [0, []],
        "visium outs s.zarr --bin-size 0": [2, []],
    }, out.stderr
