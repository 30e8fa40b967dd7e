from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import spatialdata_io  # a hard dependency: a broken install fails here instead of skipping

import loki as lk
from loki.cli import main


def test_tile_then_embed_an_image_only_section(mob4_zarr, capsys):
    mpu = sd.read_zarr(mob4_zarr).tables["MOB4"].uns["loki"]["microns_per_unit"]
    args = ["tile", str(mob4_zarr), "--image", "MOB4_image", "--mpp", str(mpu), "--tile-um", "200"]
    assert main(args) == 0
    assert "tiles written" in capsys.readouterr().out
    back = sd.read_zarr(mob4_zarr)
    tiles = back.tables["MOB4_image_tiles"]
    assert "MOB4_image_tiles_shapes" in back.shapes
    assert tiles.n_obs > 100
    assert tiles.n_vars == 0

    # loki-tiny untrained: this checks the command's plumbing, not the embeddings
    assert (
        main(
            [
                "embed",
                str(mob4_zarr),
                "--table",
                "MOB4_image_tiles",
                "--model",
                "loki-tiny",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "image only" in capsys.readouterr().out
    table_args = ["embed", str(mob4_zarr), "--table", "MOB4_image_tiles", "--model", "loki-tiny"]
    with pytest.raises(SystemExit, match=r"holds no genes .* --no-image was given: nothing to embed"):
        main([*table_args, "--no-image"])
    back = sd.read_zarr(mob4_zarr)
    assert set(back.tables) == {"MOB4", "MOB4_image_tiles"}  # the temporary copy is gone
    tiles = back.tables["MOB4_image_tiles"]
    assert tiles.obsm[lk.Key.IMAGE].shape[0] == tiles.n_obs
    assert lk.Key.TEXT not in tiles.obsm


def _autosharding_notices(caught, caplog) -> list:
    """anndata's notice, shown by Python or (a UserWarning in a command) logged by the CLI."""
    shown = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    return [text for text in shown if "autosharding" in text]


def test_embed_a_spot_section_adds_both_modalities(mob4_zarr, caplog, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            main(["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"]) == 0
        )
    # the model encodes texts and images: its random weights are worth one warning, not one per encoder
    assert sum("random (untrained) weights" in r.getMessage() for r in caplog.records) == 1
    assert not _autosharding_notices(caught, caplog)  # anndata's notice, once per array written, is hidden
    table = sd.read_zarr(mob4_zarr).tables["MOB4"]
    assert {lk.Key.TEXT, lk.Key.IMAGE} <= set(table.obsm)
    assert table.obs[lk.Key.SENTENCE].str.len().gt(0).all()
    assert capsys.readouterr().out == (  # a batch job says what it wrote, as tile and align do
        f".obsm['loki_text'] and .obsm['loki_image'] of table 'MOB4' written to {mob4_zarr}\n"
    )


def test_embed_after_an_interrupted_run_names_the_leftover_copy(mob4_zarr):
    sdata = sd.read_zarr(mob4_zarr)
    sdata.tables["MOB4_loki_backup"] = sdata.tables["MOB4"]  # as left by a run killed mid-rewrite
    sdata.write_element("MOB4_loki_backup")
    with pytest.raises(
        SystemExit, match=r"holds table 'MOB4_loki_backup', a full copy of 'MOB4' .* Check table 'MOB4' "
    ):
        main(["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"])
    assert lk.Key.TEXT not in sd.read_zarr(mob4_zarr).tables["MOB4"].obsm


def test_cli_names_what_is_missing(mob4_zarr, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(mob4_zarr), "--table", "MOB9", "--model", "loki-tiny"])
    assert exit_.value.code == 2
    assert f"argument --table: no table 'MOB9' in {mob4_zarr}; its tables: 'MOB4'" in capsys.readouterr().err
    for verbose in ([], ["-v"]):  # a usage error, not a traceback, with --verbose too
        with pytest.raises(SystemExit) as exit_:
            main([*verbose, "tile", str(mob4_zarr), "--image", "HE", "--mpp", "0.5"])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.endswith(
            f"loki tile: error: argument --image/--image-key: no image 'HE' in {mob4_zarr}; its images: "
            "'MOB4_image'\n"
        )
    with pytest.raises(ValueError, match="not --microns-per-unit 12345"):  # --verbose shows the error itself
        main(
            [
                "-v",
                "embed",
                str(mob4_zarr),
                "--table",
                "MOB4",
                "--model",
                "loki-tiny",
                "--microns-per-unit",
                "12345",
            ]
        )
    assert set(sd.read_zarr(mob4_zarr).tables) == {"MOB4"}


@pytest.mark.parametrize("command", ["embed", "tile", "align"])
def test_a_folder_that_is_not_a_spatialdata_store_is_named_so(mob4_zarr, tmp_path, command):
    """A plain folder failed in zarr's words ("No group found in store"); an AnnData .zarr or a store's
    tables/ folder read as a SpatialData without tables ("no table ...; tables: none")."""
    import anndata as ad

    plain = tmp_path / "plain"
    plain.mkdir()
    anndata_zarr = tmp_path / "adata.zarr"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_zarr(anndata_zarr)
    args = {
        "embed": ["--table", "MOB4", "--model", "loki-tiny"],
        "tile": ["--image", "MOB4_image", "--mpp", "0.5"],
        "align": ["--source", "MOB4", "--target", "MOB4"],
    }[command]
    for folder in (plain, anndata_zarr, mob4_zarr / "tables"):
        with pytest.raises(SystemExit, match=rf"^loki {command}: '[^']+' is not a SpatialData zarr store"):
            main([command, str(folder), *args])


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("features.tsv", b"\xff\xd8\xff\xe0 not text", "'utf-8' codec can't decode byte 0xff"),
        ("features.tsv.gz", b"ENSMUSG00000000001\tGnai3\n", "Not a gzipped file"),
        ("features.tsv", b"a\tb\nx\ty\n", r"Cannot tell .* Name them in a header line \(e\.g\. gene_id"),
    ],
)
def test_embed_reads_the_gene_map_before_the_model(mob4_zarr, tmp_path, monkeypatch, name, content, expected):
    import re

    path = tmp_path / name
    path.write_bytes(content)
    loaded = []
    monkeypatch.setattr(lk.models, "load", lambda *args, **kwargs: loaded.append(args))
    embed = ["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_:
        main([*embed, "--gene-map", str(path)])
    message = str(exit_.value.code)
    assert message.startswith(
        f"loki embed: --gene-map {str(path)!r} is not a table of gene ids and symbols: "
    ), message
    assert re.search(expected, message), message
    assert "id_column" not in message  # the command has no such option
    assert not loaded
    assert lk.Key.SENTENCE not in sd.read_zarr(mob4_zarr).tables["MOB4"].obs


@pytest.mark.parametrize("options", [["--microns-per-unit", "4.4"], ["--no-image", "--gene-map"]])
def test_embed_refuses_another_tools_loki_uns_before_any_work(tmp_path, monkeypatch, options):
    """A table whose .uns['loki'] is not loki's records is refused in one line; the store is unchanged."""
    store, gene_map = tmp_path / "mob4.zarr", tmp_path / "features.tsv"
    sdata = lk.datasets.mob("MOB4")
    sdata.tables["MOB4"].uns["loki"] = "another tool's value"
    sdata.write(store)
    gene_map.write_text("ENSMUSG00000000001\tGnai3\n")
    options = [*options, str(gene_map)] if "--gene-map" in options else options
    loaded = []
    monkeypatch.setattr(lk.models, "load", lambda *args, **kwargs: loaded.append(args))
    with pytest.raises(SystemExit, match=r"^loki embed: \.uns\['loki'\] holds a str, not loki's records"):
        main(["embed", str(store), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu", *options])
    assert not loaded
    table = sd.read_zarr(store).tables["MOB4"]
    assert table.uns["loki"] == "another tool's value"
    assert lk.Key.SENTENCE not in table.obs


@pytest.fixture
def glass_zarr(tmp_path):
    """A 300 x 200 px slide at 2 µm per pixel: glass, with a 100 x 100 px square of tissue in a corner."""
    from PIL import Image

    rgb = np.full((200, 300, 3), 242, dtype=np.uint8)
    rgb[:100, :100] = (200, 90, 170)
    Image.fromarray(rgb).save(tmp_path / "he.png")
    store = tmp_path / "he.zarr"
    assert main(["slide", str(tmp_path / "he.png"), str(store), "--mpp", "2"]) == 0
    return store


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--tile-um", "500"],  # 250 px, the image is 200 px high
            "loki tile: No tile of image 'he' fits: a tile of 500 µm spans 250.0 px at 2 µm per pixel, and "
            "the image is 300x200 px (600x400 µm). Pass a smaller --tile-um, or check --mpp.",
        ),
        (
            ["--tile-um", "380"],  # one tile, 28% tissue
            "loki tile: No tile of image 'he' holds at least 50% tissue (1 tiles of 190.0 px fit in its "
            "300x200 pixels; 16.7% of the image is tissue). Lower --min-tissue, or check --mpp and --tile-um.",
        ),
        (
            ["--key-added", "bad key!"],
            "loki tile: --key-added 'bad key!' is not a valid SpatialData element name: Name must contain",
        ),
    ],
)
def test_tile_errors_name_the_options_and_write_nothing(glass_zarr, options, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["tile", str(glass_zarr), "--image", "he", *options])
    assert str(exit_.value.code).startswith(expected), exit_.value.code
    back = sd.read_zarr(glass_zarr)
    assert (set(back.tables), set(back.shapes)) == (set(), set())


def test_tile_writes_without_anndata_notices(glass_zarr, capsys, caplog):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["tile", str(glass_zarr), "--image", "he", "--tile-um", "100"]) == 0
    assert "4 tiles written" in capsys.readouterr().out
    assert not _autosharding_notices(caught, caplog)


def test_slide_then_tile_takes_the_pixel_size_from_the_file(tmp_path, capsys):
    import tifffile

    section = lk.datasets.mob("MOB4")
    rgb = np.moveaxis(np.asarray(section.images["MOB4_image"]["scale0"]["image"]), 0, -1)
    tifffile.imwrite(
        tmp_path / "MOB4.tif",
        rgb,
        tile=(256, 256),
        photometric="rgb",
        resolution=(2500, 2500),
        resolutionunit="CENTIMETER",
    )
    store = tmp_path / "slide.zarr"
    assert main(["slide", str(tmp_path / "MOB4.tif"), str(store)]) == 0
    assert "4 µm per pixel" in capsys.readouterr().out
    assert main(["tile", str(store), "--image", "MOB4", "--tile-um", "200"]) == 0
    tiles = sd.read_zarr(store).tables["MOB4_tiles"]
    assert tiles.uns["loki"]["tiles"]["microns_per_pixel"] == pytest.approx(4.0)
    assert tiles.n_obs > 50
    with pytest.raises(SystemExit, match="exists"):
        main(["slide", str(tmp_path / "MOB4.tif"), str(store)])
    assert "MOB4_tiles" in sd.read_zarr(store).tables


def test_slide_that_fails_midway_leaves_no_store(tmp_path):
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.dataoffsets[-1]
    with open(path, "r+b") as f:  # the last tile's zlib stream, corrupted
        f.seek(offset)
        f.write(b"\0" * 64)
    store = tmp_path / "bad.zarr"
    with pytest.raises(Exception, match="LIBDEFLATE_BAD_DATA"):  # the codec error reaches the caller
        main(["slide", str(path), str(store), "--mpp", "0.5"])
    assert not store.exists()


def _saved_model(path, patch_um=None, seed=0):
    """loki-tiny (untrained: these tests check plumbing) saved with ``patch_um`` recorded."""
    model = lk.models.load("loki-tiny", device="cpu", seed=seed)
    model.patch_um = patch_um
    return str(model.save(path))


def test_embed_cuts_the_patch_size_the_model_was_trained_on(mob4_zarr, tmp_path):
    model = _saved_model(tmp_path / "m200", patch_um=200.0)
    embed = ["embed", str(mob4_zarr), "--table", "MOB4", "--model", model, "--device", "cpu"]
    assert main(embed) == 0
    record = sd.read_zarr(mob4_zarr).tables["MOB4"].uns["loki"]
    assert record[lk.Key.IMAGE]["diameter_um"] == 200.0
    assert record[lk.Key.IMAGE]["diameter_source"] == "model"
    wide = record[lk.Key.PATCH_OK]["diameter_px"]

    assert main([*embed, "--diameter-um", "100"]) == 0
    record = sd.read_zarr(mob4_zarr).tables["MOB4"].uns["loki"]
    assert record[lk.Key.IMAGE]["diameter_um"] == 100.0
    assert record[lk.Key.PATCH_OK]["diameter_px"] == pytest.approx(wide / 2)


def test_bad_arguments_fail_in_one_line_before_any_work(mob4_zarr, monkeypatch, capsys):
    import torch

    embed = ["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny"]
    with pytest.raises(SystemExit, match=r"^loki embed: device must be .*got 'gpu0'$"):
        main([*embed, "--device", "gpu0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"^loki embed: device 'cuda': CUDA is not available here"):
        main([*embed, "--device", "cuda"])
    for option, value in (("--diameter-um", "-5"), ("--batch-size", "0"), ("--microns-per-unit", "nan")):
        with pytest.raises(SystemExit) as exit_info:
            main([*embed, option, value])
        assert exit_info.value.code == 2
        assert f"argument {option}: must be a positive" in capsys.readouterr().err
    assert lk.Key.TEXT not in sd.read_zarr(mob4_zarr).tables["MOB4"].obsm


@pytest.fixture
def visium_store(tmp_path):
    """The 10x Visium test fixture written by spatialdata-io's reader, as most scverse users hold Visium."""
    from tests.conftest import shared_path

    folder = shared_path("scanpy_visium_testdata", "1.0.0")
    sdata = spatialdata_io.visium(folder, dataset_id="heart", counts_file="filtered_feature_bc_matrix.h5")
    path = tmp_path / "visium.zarr"
    sdata.write(path)
    return path


def test_embed_and_tile_a_spatialdata_io_visium_store(visium_store, tmp_path, capsys):
    import pandas as pd

    ids = sd.read_zarr(visium_store).tables["table"].var_names
    gene_map = tmp_path / "features.tsv"
    pd.DataFrame({"gene_id": ids, "gene_name": [f"Sym{i}" for i in range(len(ids))]}).to_csv(
        gene_map, sep="\t", index=False
    )
    model_path = _saved_model(tmp_path / "m")
    embed = ["embed", str(visium_store), "--table", "table", "--model", model_path]
    # errors name the CLI's options, not the Python keywords
    with pytest.raises(
        SystemExit, match=r"Cannot tell which image belongs to table 'table'; pass --image-key\."
    ):
        main(embed)
    embed += ["--image-key", "heart_hires_image"]
    with pytest.raises(SystemExit) as exit_:
        main([*embed, "--coordinate-system", "global"])
    assert exit_.value.code == 2
    assert "argument --coordinate-system: no coordinate system 'global' in " in capsys.readouterr().err
    with pytest.raises(  # spatialdata-io places the image in 'heart' and 'heart_downscaled_hires'
        SystemExit,
        match=r"share the coordinate systems 'heart_downscaled_hires', 'heart', none of them 'global': pass "
        "--coordinate-system the one",
    ):
        main(embed)
    embed += ["--coordinate-system", "heart"]
    trained_on_200 = _saved_model(tmp_path / "m200", patch_um=200.0)
    with pytest.raises(SystemExit, match=r"trained on 200 µm patches; .*pass --microns-per-unit"):
        main([*embed, "--model", trained_on_200])

    # the library API on the same data, in memory, for a row-by-row comparison with what the CLI writes
    expected = sd.read_zarr(visium_store)
    model = lk.models.load(model_path, device="cpu")
    mapped = expected.tables["table"].copy()
    lk.pp.map_gene_ids(mapped, gene_map)
    lk.pp.gene_sentences(mapped)
    lk.tl.embed_text(mapped, model)
    lk.tl.embed_image(
        expected, model, table_key="table", image_key="heart_hires_image", coordinate_system="heart"
    )
    assert mapped.obs[lk.Key.SENTENCE].nunique() > 0.9 * mapped.n_obs  # rows are told apart

    assert main([*embed, "--gene-map", str(gene_map)]) == 0
    table = sd.read_zarr(visium_store).tables["table"]
    assert list(table.obs_names) == list(mapped.obs_names)
    np.testing.assert_array_equal(
        table.obs[lk.Key.SENTENCE].to_numpy(), mapped.obs[lk.Key.SENTENCE].to_numpy()
    )
    np.testing.assert_allclose(table.obsm[lk.Key.TEXT], mapped.obsm[lk.Key.TEXT], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        table.obsm[lk.Key.IMAGE], expected.tables["table"].obsm[lk.Key.IMAGE], rtol=1e-5, atol=1e-6
    )
    assert table.obsm[lk.Key.IMAGE].shape[0] == table.n_obs
    assert table.uns["loki"][lk.Key.IMAGE]["coordinate_system"] == "heart"
    assert table.uns["loki"][lk.Key.PATCH_OK]["image_key"] == "heart_hires_image"
    assert table.obs[lk.Key.SENTENCE].str.startswith("Sym").all()  # symbols, not Ensembl ids
    assert list(table.var_names) == list(ids)  # the table keeps its genes

    spot_um = 55.0 / (2 * float(sd.read_zarr(visium_store).shapes["heart"]["radius"].iloc[0]))
    assert main([*embed, "--model", trained_on_200, "--microns-per-unit", str(spot_um)]) == 0
    assert sd.read_zarr(visium_store).tables["table"].uns["loki"][lk.Key.IMAGE]["diameter_um"] == 200.0

    tile = ["tile", str(visium_store), "--image-key", "heart_lowres_image", "--mpp", "5"]
    with pytest.raises(SystemExit) as exit_:
        main([*tile, "--coordinate-system", "global"])
    assert exit_.value.code == 2
    assert "argument --coordinate-system: no coordinate system 'global' in " in capsys.readouterr().err
    with pytest.raises(
        SystemExit, match=r"sdata.images\['heart_lowres_image'\] share the coordinate systems"
    ):
        main(tile)
    assert main([*tile, "--coordinate-system", "heart"]) == 0
    assert sd.read_zarr(visium_store).tables["heart_lowres_image_tiles"].n_obs > 0


@pytest.fixture
def mob12_zarr(tmp_path):
    path = tmp_path / "mob12.zarr"
    lk.datasets.mob(("MOB1", "MOB2")).write(path)
    return path


def test_align_a_store_outside_global_without_naming_its_coordinate_system(tmp_path, capsys):
    """A store read into "sample1" (as spatialdata-io names systems after the dataset) aligns, and aligns
    again, without --coordinate-system: its default was 'global', refused as not in the store."""
    from spatialdata.transformations import get_transformation, set_transformation

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    for _, _, element in list(sdata.gen_spatial_elements()):
        set_transformation(element, {"sample1": get_transformation(element, "global")}, set_all=True)
    path = tmp_path / "sample1.zarr"
    sdata.write(path)
    args = ["align", str(path), "--source", "MOB2", "--target", "MOB1", "--use", "none", "--method", "rigid"]
    assert main(args) == 0
    assert main(args) == 0  # 'aligned' is an alignment's, not an input system
    stored = sd.read_zarr(path)
    assert set(get_transformation(stored["MOB2_image"], get_all=True)) == {"sample1", "aligned"}
    assert (
        stored.tables["MOB2"].uns["loki"]["spatial_aligned"]["params"]["input_coordinate_system"] == "sample1"
    )


def test_align_writes_what_the_api_computes(mob12_zarr, capsys):
    from spatialdata.transformations import get_transformation

    args = [
        "align",
        str(mob12_zarr),
        "--source",
        "MOB2",
        "--target",
        "MOB1",
        "--use",
        "none",
        "--method",
        "rigid",
        "--image-key",
        "MOB2_image",
        "--target-image-key",
        "MOB1_image",
    ]
    assert main(args) == 0
    assert "coordinate system 'aligned' written on" in capsys.readouterr().out
    assert main(args) == 0  # a second run replaces the first's shapes and placements on disk
    stored = sd.read_zarr(mob12_zarr)
    expected = lk.datasets.mob(("MOB1", "MOB2"))
    lk.tl.align(expected, source="MOB2", target="MOB1", use=None, method="rigid")
    np.testing.assert_allclose(
        stored.tables["MOB2"].obsm["spatial_aligned"],
        expected.tables["MOB2"].obsm["spatial_aligned"],
        atol=1e-6,
    )
    assert stored.tables["MOB2"].uns["loki"]["spatial_aligned"]["method"] == "rigid"
    for name in ("MOB2_image", "MOB2_spots", "MOB1_image", "MOB1_spots", "MOB2_spots_aligned"):
        matrix = get_transformation(stored[name], "aligned").to_affine_matrix(("x", "y"), ("x", "y"))
        want = get_transformation(expected[name], "aligned").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(matrix, want, atol=1e-6, err_msg=name)


def test_align_warning_of_a_placed_target_names_what_the_command_can_do(mob12_zarr, caplog):
    """The API's hint to pass target_spatial_key= (no option of the command) is reworded for the CLI."""
    align = ["align", str(mob12_zarr), "--use", "none", "--method", "rigid", "--no-mirror"]
    assert main([*align, "--source", "MOB2", "--target", "MOB1"]) == 0
    assert main([*align, "--source", "MOB1", "--target", "MOB2"]) == 0  # MOB2 was placed in 'aligned'
    (message,) = (
        r.getMessage() for r in caplog.records if "was placed in coordinate system" in r.getMessage()
    )
    assert message.endswith(
        "`loki align` aligns onto the target's spot coordinates (.obsm['spatial']), not its aligned ones; "
        "to keep both, pass --aligned-coordinate-system."
    ), message
    assert "target_spatial_key" not in message


def test_align_refuses_bad_input_before_writing(mob12_zarr):
    import os

    def snapshot():
        files = [os.path.join(folder, name) for folder, _, names in os.walk(mob12_zarr) for name in names]
        return sorted((path, os.path.getmtime(path)) for path in files)

    before = snapshot()
    with pytest.raises(SystemExit) as exit_:
        main(["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB9"])
    assert exit_.value.code == 2  # argparse's usage error; the message is tested with the other options'
    with pytest.raises(SystemExit, match=r"loki align: .*'loki_text'"):  # no embeddings yet
        main(["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1"])
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    with pytest.raises(SystemExit, match=r"--key-added 'spatial aligned' names"):  # the CLI's option, spaced
        main([*align, "--key-added", "spatial aligned"])
    with pytest.raises(SystemExit, match=r"pass --aligned-coordinate-system or"):
        main([*align, "--key-added", "spatial_global"])
    assert snapshot() == before


def test_align_errors_about_keys_and_coordinate_systems_name_the_options(mob12_zarr):
    """The API's argument names (key_added, coordinate_system, ...) never reach the command line user."""
    import re

    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    cases = [
        (
            ["--key-added", "spatial_global"],
            "--key-added 'spatial_global' names the aligned coordinate system 'global', which must differ "
            "from --coordinate-system 'global'; pass --aligned-coordinate-system or another --key-added.",
        ),
        (
            ["--aligned-coordinate-system", "global"],
            "--aligned-coordinate-system 'global' must differ from --coordinate-system 'global'; pass "
            "another --aligned-coordinate-system.",
        ),
        (
            ["--key-added", "spatial_"],
            "--key-added 'spatial_' leaves the aligned coordinate system no name; pass "
            "--aligned-coordinate-system or another --key-added.",
        ),
        (
            ["--aligned-coordinate-system", ""],
            "--aligned-coordinate-system '' is not a coordinate system name.",
        ),
        (["--key-added", "image_key"], "Choose another --key-added."),
    ]
    for extra, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            main([*align, *extra])
        message = str(exit_.value.code)
        assert expected in message, extra
        assert not re.search(r"\b(key_added|coordinate_system|input_coordinate_system)\b", message), message


def test_align_logs_a_user_warning_naming_the_option(tmp_path, caplog):
    """loki's UserWarning (pointed at the caller of main) is a log line of the CLI, not Python's echo."""
    import re
    import warnings

    sdata, store = lk.datasets.mob(("MOB1", "MOB2")), tmp_path / "no_target_image.zarr"
    del sdata.images["MOB1_image"]  # the target's image is missing: align warns
    sdata.write(store)
    align = ["align", str(store), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shown = warnings.showwarning
        assert main([*align, "--method", "rigid", "--no-mirror"]) == 0
        assert warnings.showwarning is shown
    assert not [w for w in caught if "no image of the target section" in str(w.message)]
    (record,) = (r for r in caplog.records if "no image of the target section" in r.getMessage())
    from loki._cli_messages import log_handler

    handler = log_handler()  # the CLI's, as for the warnings loki logs
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d loki: no image of the target section 'MOB1' found among \['MOB2_image'\]; .* "
        r"\(pass --target-image-key to name it\)",
        handler.format(record),
    )


def test_embed_refuses_a_pickled_checkpoint_in_one_line_naming_the_option(mob4_zarr, tmp_path):
    """The model layer's UntrustedCheckpointError (a RuntimeError) is shown as the CLI's message."""
    import argparse

    import torch

    checkpoint = tmp_path / "trained.pt"  # a training checkpoint: weights_only=True refuses its args
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-4)}, checkpoint)
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(mob4_zarr), "--table", "MOB4", "--model", str(checkpoint), "--device", "cpu"])
    message = str(exit_.value.code)
    assert message.startswith(f"loki embed: {checkpoint} cannot be read with torch.load(weights_only=True)")
    assert message.endswith(
        "pass --trust-checkpoint, or convert it once in Python with "
        "lk.models.convert_to_safetensors(path, trust_checkpoint=True) and pass the .safetensors file to "
        "--model from then on."
    ), message
    assert lk.Key.TEXT not in sd.read_zarr(mob4_zarr).tables["MOB4"].obsm


def test_embed_refuses_squares_wider_than_the_image_before_any_work(mob4_zarr):
    """--diameter-um 1e9 is refused before the texts are embedded, not by numpy's MemoryError after."""
    embed = ["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_:
        main([*embed, "--diameter-um", "1e9"])
    assert str(exit_.value.code) == (
        "loki embed: Squares of 1e+09 µm are wider than all of image 'MOB4_image' (8350 µm across its longer "
        "side): each would hold the whole image. Pass a smaller --diameter-um (in µm)."
    )
    assert lk.Key.TEXT not in sd.read_zarr(mob4_zarr).tables["MOB4"].obsm


@pytest.mark.parametrize("failure", ["offline", "gated"])
def test_embed_hub_errors_name_what_the_command_can_do(mob4_zarr, tmp_path, monkeypatch, caplog, failure):
    """The model layer's hints to call lk.models.load(Path(...)) or pass token= are worded for the CLI."""
    import huggingface_hub
    import requests
    from huggingface_hub.utils import GatedRepoError, LocalEntryNotFoundError

    from loki.models import _hub

    def download(**kwargs):
        if failure == "offline":
            raise LocalEntryNotFoundError("not in the cache")
        response = requests.Response()
        response.status_code = 401
        raise GatedRepoError("gated", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(_hub, "host_resolves", lambda: False)  # no network asked
    monkeypatch.chdir(tmp_path)
    (tmp_path / "omiclip").mkdir()  # a local folder named like the model: the warning says how to load it
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(mob4_zarr), "--table", "MOB4", "--device", "cpu"])  # the default: omiclip
    message = str(exit_.value.code)
    assert "pass its local path: --model .../checkpoint.pt" in message, message
    if failure == "gated":
        assert "set the environment variable HF_TOKEN to an access token with read permission" in message
    else:
        assert "before running loki to load it" in message
    (warning,) = (r.getMessage() for r in caplog.records if "names a model" in r.getMessage())
    assert warning.endswith("to load that, pass --model ./omiclip"), warning
    for text in (message, warning):
        assert not any(api in text for api in ("lk.models.load", "token=", "Python")), text


def test_align_errors_say_what_the_command_can_do(mob12_zarr):
    """Missing embeddings point to `loki embed` and --use none; the API's spatial_key is not named."""
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1"]
    with pytest.raises(SystemExit) as exit_:
        main(align)  # the default --use loki_text, before `loki embed`
    assert str(exit_.value.code) == (
        "loki align: --use 'loki_text': the --source table 'MOB2' has no such embedding in .obsm (it holds: "
        f"'spatial'); run `loki embed {mob12_zarr} --table MOB2` first, or pass --use none to align the spot "
        "coordinates alone."
    )
    with pytest.raises(SystemExit) as exit_:
        main([*align, "--use", "X_pca"])
    assert str(exit_.value.code).endswith(
        "(it holds: 'spatial'); pass --use none to align the spot coordinates alone."
    )
    with pytest.raises(SystemExit) as exit_:
        main([*align, "--use", "none", "--key-added", "spatial"])
    assert str(exit_.value.code).startswith(
        "loki align: --key-added 'spatial' is also the key of the spot coordinates (.obsm['spatial']): "
    )
    assert "spatial_key" not in str(exit_.value.code)


def test_align_passes_max_iter(mob12_zarr, caplog):
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    assert main([*align, "--method", "rigid", "--no-mirror", "--max-iter", "3"]) == 0
    assert sd.read_zarr(mob12_zarr).tables["MOB2"].uns["loki"]["spatial_aligned"]["params"]["max_iter"] == 3
    (warning,) = (r.getMessage() for r in caplog.records if "before converging" in r.getMessage())
    assert "CPD stopped at --max-iter 3 " in warning
    assert warning.endswith("Pass a larger --max-iter to let it converge."), warning


def _store_state(path) -> dict:
    """What a command may change: elements, the tables' keys and every element's transformations."""
    from spatialdata.transformations import get_transformation

    sdata = sd.read_zarr(path)
    state = {kind: sorted(getattr(sdata, kind)) for kind in ("images", "shapes", "tables")}
    for name, table in sdata.tables.items():
        state[name] = (sorted(table.obsm), sorted(table.uns.get("loki", {})))
    for _, name, element in sdata.gen_spatial_elements():
        state[f"{name} placed"] = repr(sorted(get_transformation(element, get_all=True).items()))
    return state


def _interrupt_writing(monkeypatch, name: str, times: int = 1, error=KeyboardInterrupt) -> None:
    """Ctrl-C (or ``error``) as SpatialData starts writing element ``name`` (its first ``times`` writes)."""
    write = sd.SpatialData.write_element
    left = [times]

    def write_element(self, element_name, *args, **kwargs):
        if element_name == name and left[0] > 0:
            left[0] -= 1
            raise error
        return write(self, element_name, *args, **kwargs)

    monkeypatch.setattr(sd.SpatialData, "write_element", write_element)


@pytest.mark.parametrize("earlier_run", [False, True])
def test_align_failing_to_write_the_table_leaves_the_store_as_it_was(mob12_zarr, monkeypatch, earlier_run):
    """Shapes and placements written before the table are taken back (here: a full disk)."""
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    if earlier_run:
        assert main([*align, "--method", "rigid", "--no-mirror"]) == 0
    before = _store_state(mob12_zarr)
    _interrupt_writing(monkeypatch, "MOB2_loki_backup", error=OSError(28, "No space left on device"))
    with pytest.raises(SystemExit, match=r"^loki align: \[Errno 28\] No space left on device$"):
        main([*align, "--method", "affine"])
    assert _store_state(mob12_zarr) == before


@pytest.mark.parametrize("earlier_run", [False, True])
def test_align_interrupted_while_writing_leaves_the_store_as_it_was(
    mob12_zarr, monkeypatch, capsys, earlier_run
):
    """Shapes and placements written before the table are taken back: the store is as it was."""
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    if earlier_run:
        assert main([*align, "--method", "rigid", "--no-mirror"]) == 0
    before = _store_state(mob12_zarr)
    _interrupt_writing(monkeypatch, "MOB2_loki_backup")
    with pytest.raises(SystemExit) as exit_:
        main([*align, "--method", "affine"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "loki align: interrupted"
    assert _store_state(mob12_zarr) == before


def test_tile_interrupted_while_writing_writes_nothing(mob4_zarr, monkeypatch, capsys):
    before = _store_state(mob4_zarr)
    _interrupt_writing(monkeypatch, "MOB4_image_tiles")
    with pytest.raises(SystemExit) as exit_:
        main(["tile", str(mob4_zarr), "--image", "MOB4_image", "--tile-um", "200"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "loki tile: interrupted"
    assert _store_state(mob4_zarr) == before


@pytest.mark.parametrize("command", ["embed", "tile", "align"])
def test_a_store_that_cannot_be_written_is_refused_before_any_work(mob12_zarr, monkeypatch, command):
    import os

    locked = mob12_zarr / "tables" / "MOB2"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    monkeypatch.setattr(lk.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = {
        "embed": ["--table", "MOB1", "--model", "loki-tiny"],
        "tile": ["--image", "MOB1_image"],
        "align": ["--source", "MOB2", "--target", "MOB1", "--use", "none"],
    }
    with pytest.raises(
        SystemExit, match=rf"loki {command}: .* cannot be written \(no write permission on .*MOB2'\)"
    ):
        main([command, str(mob12_zarr), *argv[command]])
    assert "MOB2_spots_aligned" not in sd.read_zarr(mob12_zarr).shapes


def test_embed_warning_of_ensembl_ids_names_the_gene_map_option(tmp_path, caplog):
    sdata = lk.datasets.mob("MOB4")
    table = sdata.tables["MOB4"]
    table.var_names = table.var["gene_ids"].astype(str).str.split(".").str[0].to_numpy()  # unversioned
    path = tmp_path / "ids.zarr"
    sdata.write(path)
    assert main(["embed", str(path), "--table", "MOB4", "--model", "loki-tiny", "--no-image"]) == 0
    (message,) = (r.getMessage() for r in caplog.records if "look like Ensembl ids" in r.getMessage())
    assert message.endswith(
        "Map them to symbols with --gene-map (a table of gene ids and symbols, e.g. Space Ranger's features.tsv.gz)."
    )
    assert "map_gene_ids" not in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["embed", "--table", "MOB2", "--model", "loki-tiny", "--image-key", "HE"],
            "loki embed: error: argument --image-key: no image 'HE' in {store}; its images: 'MOB1_image', "
            "'MOB2_image'",
        ),
        (
            ["embed", "--table", "MOB2", "--model", "loki-tiny", "--coordinate-system", "aligned"],
            "loki embed: error: argument --coordinate-system: no coordinate system 'aligned' in {store}; its "
            "coordinate systems: 'global'",
        ),
        (
            ["tile", "--image", "MOB1_image", "--mpp", "0.5", "--within", "tumour"],
            "loki tile: error: argument --within: no shapes element 'tumour' in {store}; its shapes: "
            "'MOB1_spots', 'MOB2_spots'",
        ),
        (
            ["align", "--source", "MOB2", "--target", "MOB1", "--use", "none", "--image-key", "HE"],
            "loki align: error: argument --image-key: no image 'HE' in {store}; its images: 'MOB1_image', "
            "'MOB2_image'",
        ),
        (
            [
                *["align", "--source", "MOB2", "--target", "MOB1", "--use", "none"],
                *["--target-image-key", "MOB1_image", "--target-image-key", "MOB1_hires"],
            ],
            "loki align: error: argument --target-image-key: no image 'MOB1_hires' in {store}; its images: "
            "'MOB1_image', 'MOB2_image'",
        ),
        (
            ["align", "--source", "MOB2", "--target", "MOB1", "--use", "none", "--coordinate-system", "x"],
            "loki align: error: argument --coordinate-system: no coordinate system 'x' in {store}; its "
            "coordinate systems: 'global'",
        ),
    ],
)
def test_store_keys_the_store_lacks_are_usage_errors_naming_the_option(mob12_zarr, capsys, args, expected):
    """A key the store does not hold is refused as argparse refuses a bad value: the option, the value,
    what the store holds; exit status 2. It failed deep in the library, without naming the option."""
    before = _store_state(mob12_zarr)
    with pytest.raises(SystemExit) as exit_:
        main([args[0], str(mob12_zarr), *args[1:]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: loki {args[0]} ")
    assert err.endswith(expected.format(store=mob12_zarr) + "\n")
    assert _store_state(mob12_zarr) == before


def test_embed_refuses_to_leave_two_models_embeddings_side_by_side(mob4_zarr, tmp_path, capsys):
    """`--no-image` with another model replaced the texts' embeddings only, beside the other model's
    images: two embeddings that cannot be compared, written without a word."""
    first, other = _saved_model(tmp_path / "a"), _saved_model(tmp_path / "b", seed=1)
    embed = ["embed", str(mob4_zarr), "--table", "MOB4", "--device", "cpu"]
    assert main([*embed, "--model", first]) == 0
    capsys.readouterr()

    def state():
        records = sd.read_zarr(mob4_zarr).tables["MOB4"].uns["loki"]
        return _store_state(mob4_zarr), [
            records[key]["checkpoint_hash"] for key in (lk.Key.TEXT, lk.Key.IMAGE)
        ]

    before = state()
    with pytest.raises(SystemExit) as exit_:
        main([*embed, "--model", other, "--no-image"])
    assert re.fullmatch(
        r"loki embed: table 'MOB4' holds \.obsm\['loki_image'\] of model 'loki-tiny' \(checkpoint \w{12}\), "
        r"and this run would replace only \.obsm\['loki_text'\], with --model \S+ \(model 'loki-tiny', "
        r"checkpoint \w{12}\): .* Either leave out --no-image to embed both with --model \S+, or pass the "
        r"--model that embedded \.obsm\['loki_image'\]\.",
        str(exit_.value.code),
    )
    assert state() == before
    assert main([*embed, "--model", first, "--no-image"]) == 0  # the same model: the texts are redone
    assert capsys.readouterr().out == f".obsm['loki_text'] of table 'MOB4' written to {mob4_zarr}\n"
    assert main([*embed, "--model", other]) == 0  # both modalities with the other model
    records = sd.read_zarr(mob4_zarr).tables["MOB4"].uns["loki"]
    assert records[lk.Key.TEXT]["checkpoint_hash"] == records[lk.Key.IMAGE]["checkpoint_hash"]


def test_embed_gene_sentence_options_reach_the_library(mob4_zarr, tmp_path, capsys):
    table = sd.read_zarr(mob4_zarr).tables["MOB4"]
    options = [
        "--n-genes",
        "7",
        "--housekeeping",
        "none",
        "--exclude-patterns",
        "--exclude-mito",
        "--exclude-ribo",
    ]
    expected = lk.pp.gene_sentences(
        table,
        n_genes=7,
        housekeeping=None,
        exclude_patterns=(),
        exclude_mito=True,
        exclude_ribo=True,
        inplace=False,
    )
    embed = [
        "embed",
        str(mob4_zarr),
        "--table",
        "MOB4",
        "--model",
        _saved_model(tmp_path / "m"),
        "--no-image",
    ]
    assert main([*embed, "--device", "cpu", *options]) == 0
    back = sd.read_zarr(mob4_zarr).tables["MOB4"]
    assert back.obs[lk.Key.SENTENCE].tolist() == expected.tolist()
    record = back.uns["loki"][lk.Key.SENTENCE]
    assert (record["n_genes"], record["exclude_mito"], record["exclude_ribo"]) == (7, True, True)
    for option, expected_err in [
        (
            ["--layer", "counts"],
            f"argument --layer: no layer 'counts' in table 'MOB4' of {mob4_zarr}; its layers: none",
        ),
        (["--use-raw"], f"argument --use-raw: table 'MOB4' of {mob4_zarr} has no .raw"),
        (["--exclude-patterns", "("], "argument --exclude-patterns: not a regular expression"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([*embed, *option])
        assert exit_.value.code == 2
        assert expected_err in capsys.readouterr().err


def test_embed_takes_one_weights_file_in_another_precision_as_the_same_model(tmp_path):
    # texts embedded with a fast bf16-weights copy, images by `loki embed` from the same file in fp32
    import argparse

    import anndata as ad

    from loki.cli import _check_same_model

    lk.models.load("loki-tiny", device="cpu", seed=0).save(tmp_path / "m")
    fast = lk.models.load(tmp_path / "m", device="cpu", precision="bf16-weights")
    full = lk.models.load(tmp_path / "m", device="cpu")
    assert fast.checkpoint_hash != full.checkpoint_hash  # rounded weights, one file
    table = ad.AnnData(np.ones((4, 3), np.float32))
    table.var_names = ["A", "B", "C"]
    table.obs[lk.Key.SENTENCE] = ["A B"] * 4
    lk.tl.embed_text(table, fast)
    args = argparse.Namespace(model=str(tmp_path / "m"), table="t")
    _check_same_model(table, full, [lk.Key.IMAGE], args)  # accepted
    other = lk.models.load("loki-tiny", device="cpu", seed=1)
    with pytest.raises(SystemExit, match="would not be comparable"):
        _check_same_model(table, other, [lk.Key.IMAGE], args)


def test_embed_of_a_table_cut_to_some_genes_with_raw_warns_in_cli_words(tmp_path, caplog):
    """scanpy's ``adata.raw = adata`` then a cut to highly variable genes: `loki embed` ranked the cut
    genes without a word (it passed use_raw=False); now it warns, naming --use-raw."""
    sdata = lk.datasets.mob("MOB4")
    table = sdata.tables["MOB4"]
    table.raw = table
    keep = np.asarray(table.X.sum(axis=0)).ravel().argsort()[-200:]
    sdata.tables["MOB4"] = table[:, np.sort(keep)].copy()
    path = tmp_path / "cut.zarr"
    sdata.write(path)
    embed = ["embed", str(path), "--table", "MOB4", "--model", _saved_model(tmp_path / "m"), "--no-image"]
    with caplog.at_level("WARNING", logger="loki"):
        assert main(embed) == 0
    (message,) = (r.getMessage() for r in caplog.records if "genes of adata.raw" in r.getMessage())
    assert "adata.X holds 200 of the 1000 genes of adata.raw" in message
    assert "Pass --use-raw to rank all genes of adata.raw, or go on without it to keep these" in message
    assert "use_raw" not in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="loki"):
        assert main([*embed, "--use-raw"]) == 0
    assert not [r for r in caplog.records if "genes of adata.raw" in r.getMessage()]


def _zarr_metadata(path: Path) -> dict:
    """Every group's and array's metadata in the store (its ``zarr.json``), by its path in the store."""
    import json

    return {str(p.parent.relative_to(path)): json.loads(p.read_text()) for p in path.rglob("zarr.json")}


def _consolidated_lists_the_store(path: Path) -> None:
    """The store's consolidated metadata lists the groups and arrays on disk, with their metadata."""
    nodes = _zarr_metadata(path)
    listed = nodes.pop(".")["consolidated_metadata"]["metadata"]
    assert set(listed) == set(nodes)
    for name, meta in nodes.items():
        assert {k: v for k, v in listed[name].items() if k != "consolidated_metadata"} == {
            k: v for k, v in meta.items() if k != "consolidated_metadata"
        }, name


def test_align_store_holds_what_writing_the_api_result_writes(mob12_zarr, tmp_path):
    """The table renamed into place (not written a second time) leaves the files a fresh write leaves:
    the same files, byte for byte, but the stages' timings."""
    expected = sd.read_zarr(mob12_zarr)  # the command's input, read back as the command reads it
    lk.tl.align(expected, source="MOB2", target="MOB1", use=None, method="rigid", mirror=False, max_iter=20)
    fresh = tmp_path / "fresh.zarr"
    expected.write(fresh)
    align = ["--source", "MOB2", "--target", "MOB1", "--use", "none", "--method", "rigid", "--no-mirror"]
    assert main(["align", str(mob12_zarr), *align, "--max-iter", "20"]) == 0

    def files(path: Path) -> dict[str, bytes]:
        timings = "tables/MOB2/uns/loki/spatial_aligned/stages/seconds/"
        return {
            str(file.relative_to(path)): file.read_bytes()
            for file in path.rglob("*")
            if file.is_file() and not str(file.relative_to(path)).startswith(timings)
        }

    stored, written = files(mob12_zarr), files(fresh)
    assert sorted(stored) == sorted(written)  # the same elements, groups and arrays: no copy left
    different = [name for name in written if stored[name] != written[name]]
    assert not different
    _consolidated_lists_the_store(mob12_zarr)


def _spy_on_writes(monkeypatch) -> list[str]:
    """The names of the elements SpatialData writes, in order."""
    written: list[str] = []
    write = sd.SpatialData.write_element

    def write_element(self, element_name, *args, **kwargs):
        written.append(element_name)
        return write(self, element_name, *args, **kwargs)

    monkeypatch.setattr(sd.SpatialData, "write_element", write_element)
    return written


def test_align_writes_the_table_once(mob12_zarr, monkeypatch):
    """The whole copy is renamed to the table: the table is not written a second time (1.2-1.6 s each)."""
    written = _spy_on_writes(monkeypatch)
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    assert main([*align, "--method", "rigid", "--no-mirror", "--max-iter", "20"]) == 0
    assert written == ["MOB2_spots_aligned", "MOB2_loki_backup"]
    back = sd.read_zarr(mob12_zarr)
    assert set(back.tables) == {"MOB1", "MOB2"}
    assert "spatial_aligned" in back.tables["MOB2"].obsm


def _interrupt_swap(monkeypatch, where: str, error=KeyboardInterrupt, times: int = 1) -> list[str]:
    """Raise ``error`` in the first ``times`` swaps of a table's copy into place, at step ``where``.

    ``delete``: once the old table's X is deleted (the rest left); ``rename``: as the copy is renamed;
    ``consolidate``: as the store's metadata is consolidated after the rename. Returns the steps hit.
    """
    import shutil
    import threading

    hit: list[str] = []
    if where == "delete":
        rmtree = shutil.rmtree

        def partly(path, *args, **kwargs):
            path = Path(path)
            here = threading.current_thread() is threading.main_thread()  # not zarr's event loop's
            if (
                here
                and path.parent.name == "tables"
                and not path.name.endswith("_loki_backup")
                and len(hit) < times
            ):
                hit.append(where)
                rmtree(path / "X")
                raise error
            return rmtree(path, *args, **kwargs)

        monkeypatch.setattr(shutil, "rmtree", partly)
    elif where == "rename":
        rename = Path.rename

        def failing(self, target):
            if self.name.endswith("_loki_backup") and len(hit) < times:
                hit.append(where)
                raise error
            return rename(self, target)

        monkeypatch.setattr(Path, "rename", failing)
    else:
        consolidate = sd.SpatialData.write_consolidated_metadata

        seen = []  # the copy, on disk at an earlier consolidation

        def after_the_rename(self):
            tables = Path(self.path) / "tables"
            if any(p.name.endswith("_loki_backup") for p in tables.iterdir()):
                seen.append(True)
            elif seen and len(hit) < times:
                hit.append(where)
                raise error
            return consolidate(self)

        monkeypatch.setattr(sd.SpatialData, "write_consolidated_metadata", after_the_rename)
    return hit


@pytest.mark.parametrize("where", ["delete", "rename", "consolidate"])
def test_align_interrupted_once_the_copy_is_written_finishes_the_swap(mob12_zarr, monkeypatch, where):
    hit = _interrupt_swap(monkeypatch, where)
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    assert main([*align, "--method", "rigid", "--no-mirror", "--max-iter", "20"]) == 0
    assert hit == [where]
    back = sd.read_zarr(mob12_zarr)
    assert set(back.tables) == {"MOB1", "MOB2"}
    assert "spatial_aligned" in back.tables["MOB2"].obsm
    assert "MOB2_spots_aligned" in back.shapes
    _consolidated_lists_the_store(mob12_zarr)


def test_align_whose_swap_fails_twice_leaves_the_whole_copy_for_the_next_run(mob12_zarr, monkeypatch):
    """The new table is whole as the copy: kept, with the shapes and placements that go with it."""
    hit = _interrupt_swap(monkeypatch, "rename", error=OSError(5, "Input/output error"), times=2)
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    with pytest.raises(SystemExit, match=r"^loki align: \[Errno 5\] Input/output error$"):
        main([*align, "--method", "rigid", "--no-mirror", "--max-iter", "20"])
    assert hit == ["rename", "rename"]
    monkeypatch.undo()
    back = sd.read_zarr(mob12_zarr)
    assert "spatial_aligned" in back.tables["MOB2_loki_backup"].obsm
    assert "MOB2_spots_aligned" in back.shapes
    with pytest.raises(SystemExit, match=r"holds table 'MOB2_loki_backup', a full copy of 'MOB2'"):
        main(align)


def test_embed_interrupted_while_the_copy_is_renamed_finishes_the_swap(mob4_zarr, monkeypatch):
    hit = _interrupt_swap(monkeypatch, "rename")
    assert main(["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"]) == 0
    assert hit == ["rename"]
    back = sd.read_zarr(mob4_zarr)
    assert set(back.tables) == {"MOB4"}
    assert {lk.Key.TEXT, lk.Key.IMAGE} <= set(back.tables["MOB4"].obsm)
    _consolidated_lists_the_store(mob4_zarr)


def test_align_rerun_reports_no_placement_changed(mob12_zarr, capsys):
    """A placement read from disk (over an image's c, y, x axes) printed otherwise than the same made in
    memory: a rerun reported, and rewrote, the source image's placement as new."""
    align = ["align", str(mob12_zarr), "--source", "MOB2", "--target", "MOB1", "--use", "none"]
    assert main([*align, "--max-iter", "20"]) == 0
    assert "written on no element" not in capsys.readouterr().out
    assert main([*align, "--max-iter", "20"]) == 0  # same seed, same result
    assert "written on no element (unchanged)" in capsys.readouterr().out


def _interrupt_while_a_worker_writes(monkeypatch) -> None:
    """Ctrl-C reaches the main thread while one of dask's worker threads is still writing an image chunk."""
    import _thread
    import threading
    import time

    import dask.array.core

    real = dask.array.core.load_store_chunk
    calls: list[int] = []
    lock = threading.Lock()

    def slow_first_chunk(*args, **kwargs):
        with lock:
            calls.append(1)
            first = len(calls) == 1
        if first:
            _thread.interrupt_main()
            time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(dask.array.core, "load_store_chunk", slow_first_chunk)


@pytest.fixture
def scan(tmp_path):
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, rgb, tile=(128, 128), photometric="rgb")
    return path


def test_slide_append_interrupted_leaves_no_image_folder(mob4_zarr, scan, monkeypatch):
    """dask's workers wrote chunks after the cleanup deleted the image: the next run failed in zarr's words."""
    import time

    before = _store_state(mob4_zarr)
    _interrupt_while_a_worker_writes(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        main(["slide", str(scan), str(mob4_zarr), "--append", "--mpp", "0.5"])
    assert exit_.value.code == 130
    time.sleep(1.5)  # a worker still writing would have landed its chunk by now
    assert not (mob4_zarr / "images" / "scan").exists()
    assert _store_state(mob4_zarr) == before
    monkeypatch.undo()
    assert main(["slide", str(scan), str(mob4_zarr), "--append", "--mpp", "0.5"]) == 0


def test_slide_interrupted_leaves_no_store_to_block_the_next_run(scan, tmp_path, monkeypatch):
    """A folder of chunks (no store) was left: the next run said the store exists."""
    import time

    store = tmp_path / "new.zarr"
    _interrupt_while_a_worker_writes(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        main(["slide", str(scan), str(store), "--mpp", "0.5"])
    assert exit_.value.code == 130
    time.sleep(1.5)  # a worker still writing would have landed its chunk by now
    assert not store.exists()
    monkeypatch.undo()
    assert main(["slide", str(scan), str(store), "--mpp", "0.5"]) == 0


def test_a_folder_of_elements_without_the_store_metadata_is_named_so(mob4_zarr, scan):
    """A store whose root metadata is missing (a write killed midway) failed in zarr's words ("No group found")."""
    (mob4_zarr / "zarr.json").unlink()
    with pytest.raises(
        SystemExit,
        match=r"^loki slide: '[^']+' is not a SpatialData zarr store: it has element folders \(images, shapes, "
        r"tables\) but none of the files zarr.json, .zgroup",
    ):
        main(["slide", str(scan), str(mob4_zarr), "--append", "--mpp", "0.5"])
    assert not (mob4_zarr / "images" / "scan").exists()


def test_slides_appended_by_two_jobs_at_once_keep_both_pixel_sizes(mob4_zarr, scan, monkeypatch):
    """The store's attrs were read with the store and written back whole: the other job's pixel size was lost."""
    import loki.io

    real = loki.io.read_slide
    started: list[str] = []
    append = ["slide", str(scan), str(mob4_zarr), "--append"]

    def read_while_another_job_appends(*args, **kwargs):
        started.append(kwargs["name"])
        if len(started) == 1:  # the second job runs whole between this job's reading and writing
            assert main([*append, "--name", "scanB", "--mpp", "0.5"]) == 0
        return real(*args, **kwargs)

    monkeypatch.setattr(loki.io, "read_slide", read_while_another_job_appends)
    assert main([*append, "--name", "scanA", "--mpp", "0.75"]) == 0
    stored = sd.read_zarr(mob4_zarr)
    assert {"scanA", "scanB"} <= set(stored.images)
    assert stored.attrs["loki"]["microns_per_pixel"] == {"scanA": 0.75, "scanB": 0.5}
    _consolidated_lists_the_store(mob4_zarr)


def test_slide_append_updates_the_store_metadata_only_under_its_lock(mob4_zarr, scan, caplog):
    """Another command holding the store's lock (updating its attrs): this one writes its image, then waits."""
    import logging
    import threading
    import time

    from loki._cli_store import store_lock

    results: list = []
    append = ["slide", str(scan), str(mob4_zarr), "--append", "--mpp", "0.5", "--verbose"]

    def job():
        try:
            results.append(main(append))
        except BaseException as err:  # raised in the thread: the test reports it
            results.append(err)

    thread = threading.Thread(target=job)
    with caplog.at_level(logging.INFO, logger="loki"), store_lock(mob4_zarr):
        thread.start()
        deadline = time.monotonic() + 60
        while "waiting for another command writing to" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "waiting for another command writing to" in caplog.text
        assert thread.is_alive()
        assert (mob4_zarr / "images" / "scan" / "zarr.json").is_file()  # written without the lock
        assert "scan" not in sd.read_zarr(mob4_zarr).attrs.get("loki", {}).get("microns_per_pixel", {})
    thread.join(timeout=60)
    assert results == [0]
    assert sd.read_zarr(mob4_zarr).attrs["loki"]["microns_per_pixel"] == {"scan": 0.5}
    _consolidated_lists_the_store(mob4_zarr)


def test_writes_stopped_while_dask_starts_a_worker_are_awaited(monkeypatch):
    """Ctrl-C landing as the pool starts a worker thread left that thread, unknown to the pool, writing on."""
    import threading
    import time

    import dask

    from loki._cli_store import _chunk_writers_awaited

    running: list[int] = []

    def write_chunk(i):
        running.append(i)
        time.sleep(0.5)
        running.remove(i)

    real_start = threading.Thread.start

    def start_then_interrupt(self):
        real_start(self)
        if self.name.startswith("ThreadPoolExecutor"):
            raise KeyboardInterrupt  # the thread runs its task, but the pool has not recorded it yet

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt), _chunk_writers_awaited():
        dask.compute(*[dask.delayed(write_chunk)(i) for i in range(4)], scheduler="threads")
    assert running == []
