from __future__ import annotations

import pytest
import spatialdata as sd

import loki as lk
from loki.cli import main


@pytest.fixture
def mob4_zarr(tmp_path):
    path = tmp_path / "mob4.zarr"
    lk.datasets.mob("MOB4").write(path)
    return path


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


def test_embed_a_spot_section_adds_both_modalities(mob4_zarr):
    assert main(["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"]) == 0
    table = sd.read_zarr(mob4_zarr).tables["MOB4"]
    assert {lk.Key.TEXT, lk.Key.IMAGE} <= set(table.obsm)
    assert table.obs[lk.Key.SENTENCE].str.len().gt(0).all()


def test_embed_after_an_interrupted_run_names_the_leftover_copy(mob4_zarr):
    sdata = sd.read_zarr(mob4_zarr)
    sdata.tables["MOB4_loki_backup"] = sdata.tables["MOB4"]  # as left by a run killed mid-rewrite
    sdata.write_element("MOB4_loki_backup")
    with pytest.raises(SystemExit, match=r"holds table 'MOB4_loki_backup', a full copy of 'MOB4'"):
        main(["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"])
    assert lk.Key.TEXT not in sd.read_zarr(mob4_zarr).tables["MOB4"].obsm


def test_cli_names_what_is_missing(mob4_zarr):
    with pytest.raises(SystemExit, match="tables: MOB4"):
        main(["embed", str(mob4_zarr), "--table", "MOB9", "--model", "loki-tiny"])
    with pytest.raises(
        SystemExit, match=r"loki tile: 'HE' not found in sdata\.images; available: 'MOB4_image'"
    ):
        main(["tile", str(mob4_zarr), "--image", "HE", "--mpp", "0.5"])
    with pytest.raises(KeyError):  # --verbose shows the error itself
        main(["-v", "tile", str(mob4_zarr), "--image", "HE", "--mpp", "0.5"])
    assert set(sd.read_zarr(mob4_zarr).tables) == {"MOB4"}


def test_slide_then_tile_takes_the_pixel_size_from_the_file(tmp_path, capsys):
    import numpy as np
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
    import numpy as np
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
