from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from spatialdata.transformations import Identity, get_transformation
from tests.conftest import shared_path

import loki as lk


@pytest.fixture(scope="module")
def visium_dir():
    return shared_path("scanpy_visium_testdata", "1.0.0")


@pytest.fixture(scope="module")
def sdata(visium_dir):
    return lk.io.read_visium(visium_dir, dataset_id="V1")


def test_read_visium_builds_the_section_layout(sdata, visium_dir):
    scalefactors = json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())
    assert set(sdata.tables) == {"V1"}
    assert set(sdata.shapes) == {"V1_spots"}
    assert set(sdata.images) == {"V1_hires_image", "V1_lowres_image"}
    table = sdata.tables["V1"]
    assert table.shape == (100, 100)
    assert table.var["gene_ids"].str.startswith("ENSG").all()
    assert table.uns["spatialdata_attrs"]["region"] == "V1_spots"
    assert set(table.obs["region"]) == {"V1_spots"}
    uns = table.uns["loki"]
    assert uns["image_key"] == "V1_hires_image"
    assert uns["spot_diameter_um"] == 55.0
    assert uns["microns_per_unit"] == pytest.approx(55.0 / scalefactors["spot_diameter_fullres"])
    shapes = sdata.shapes["V1_spots"]
    np.testing.assert_allclose(shapes["radius"], scalefactors["spot_diameter_fullres"] / 2)
    assert isinstance(get_transformation(shapes, "global"), Identity)
    # shapes and table agree on the spot centres (full-resolution pixels)
    by_id = shapes.loc[table.obs["spot_id"].to_numpy()]
    np.testing.assert_allclose(np.c_[by_id.geometry.x, by_id.geometry.y], table.obsm["spatial"])
    # each image maps its pixels to full resolution by 1 / its scale factor
    for key, factor in (
        ("V1_lowres_image", "tissue_lowres_scalef"),
        ("V1_hires_image", "tissue_hires_scalef"),
    ):
        img = sdata.images[key]
        level0 = img["scale0"]["image"]
        assert level0.dtype == np.uint8
        assert level0.shape[0] == 3
        m = get_transformation(img, "global").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        np.testing.assert_allclose(np.diag(m)[:2], 1 / scalefactors[factor], rtol=1e-5)


def test_read_visium_matches_the_space_ranger_files(sdata, visium_dir):
    """Spot centres, grid positions and counts are those of Space Ranger's own files, by barcode."""
    import pandas as pd
    import scanpy as sc

    table = sdata.tables["V1"]
    positions = pd.read_csv(
        visium_dir / "spatial" / "tissue_positions_list.csv",
        header=None,
        names=["barcode", "in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"],
        index_col="barcode",
    ).loc[table.obs_names]
    # x is the full-resolution pixel column, y the row
    np.testing.assert_array_equal(table.obsm["spatial"], positions[["pxl_col", "pxl_row"]].to_numpy(float))
    for column in ("in_tissue", "array_row", "array_col"):
        np.testing.assert_array_equal(table.obs[column].to_numpy(), positions[column].to_numpy(), column)
    shapes = sdata.shapes["V1_spots"].loc[table.obs["spot_id"].to_numpy()]
    np.testing.assert_array_equal(
        np.c_[shapes.geometry.x, shapes.geometry.y], positions[["pxl_col", "pxl_row"]]
    )

    counts = sc.read_10x_h5(visium_dir / "filtered_feature_bc_matrix.h5")
    assert set(counts.obs_names) == set(table.obs_names)
    counts = counts[table.obs_names]
    assert list(counts.var_names) == list(table.var_names)
    assert list(counts.var["gene_ids"]) == list(table.var["gene_ids"])
    assert table.X.sum() > 0
    np.testing.assert_array_equal(table.X.toarray(), counts.X.toarray())


def test_read_visium_default_name_is_the_library_id(visium_dir):
    sdata = lk.io.read_visium(visium_dir)
    assert list(sdata.tables) == ["custom"]  # library_ids attribute of this Space Ranger h5
    assert "custom_spots" in sdata.shapes


def test_read_visium_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Visium folder not found"):
        lk.io.read_visium(tmp_path / "absent")
    (tmp_path / "spatial").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No 'filtered_feature_bc_matrix.h5'.*\['spatial'\]"):
        lk.io.read_visium(tmp_path)


@pytest.mark.parametrize(
    ("remove", "kwargs", "match"),
    [
        (
            "scalefactors_json.json",
            {},
            r"No 'spatial/scalefactors_json.json' .* holds \['tissue_hires_image.png'",
        ),
        ("tissue_positions_list.csv", {}, r"No spot positions file \('spatial/tissue_positions.csv' or"),
        (None, {"fullres_image_file": "he.tif"}, r"fullres_image_file .*he.tif' does not exist"),
    ],
)
def test_read_visium_names_a_missing_spot_file(visium_dir, tmp_path, remove, kwargs, match):
    import shutil

    folder = tmp_path / "visium"
    shutil.copytree(visium_dir, folder)
    if remove is not None:
        (folder / "spatial" / remove).unlink()
    with pytest.raises(FileNotFoundError, match=match):
        lk.io.read_visium(folder, **kwargs)


def test_spatialdata_plot_renders_the_section(sdata):
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    fig, ax = plt.subplots()
    (
        sdata.pl.render_images("V1_lowres_image")
        .pl.render_shapes("V1_spots", color="in_tissue", table_name="V1")
        .pl.show(ax=ax, coordinate_systems="global")
    )
    assert len(ax.images) == 1
    patches = [c for c in ax.collections if len(c.get_paths()) == 100]
    assert len(patches) == 1
    table = sdata.tables["V1"]
    radius = sdata.shapes["V1_spots"]["radius"].iloc[0]
    centres = np.array([p.vertices.mean(0) for p in patches[0].get_paths()])
    # every drawn circle sits on a spot centre and has the spot's size
    dist = np.linalg.norm(centres[:, None] - table.obsm["spatial"][None], axis=2).min(1)
    assert dist.max() < 0.1 * radius
    widths = np.array([np.ptp(p.vertices[:, 0]) for p in patches[0].get_paths()])
    np.testing.assert_allclose(widths, 2 * radius, rtol=0.02)
    # the lowres image is drawn over the full-resolution frame (600 px * 1/0.045 ≈ 13332)
    img = ax.images[0]
    h, w = img.get_array().shape[:2]
    corner_display = img.get_transform().transform([[w - 0.5, h - 0.5]])
    corner_data = ax.transData.inverted().transform(corner_display)[0]
    np.testing.assert_allclose(corner_data, 600 / 0.045004502, rtol=0.01)
    plt.close(fig)


def test_read_visium_makes_repeated_gene_names_unique_with_a_warning(visium_dir, tmp_path, caplog):
    import shutil
    import warnings

    import h5py

    folder = tmp_path / "dup"
    shutil.copytree(visium_dir, folder)
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "r+") as f:
        names = f["matrix/features/name"][:]
        names[1] = names[2] = names[0]
        del f["matrix/features/name"]
        f["matrix/features/name"] = names
    first = names[0].decode()
    with caplog.at_level("WARNING", logger="loki"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = lk.io.read_visium(folder, dataset_id="D").tables["D"]
    # not anndata's advice to make names unique: they are
    assert not [w for w in caught if "not unique" in str(w.message)]
    assert list(table.var_names[:3]) == [first, f"{first}-1", f"{first}-2"]
    assert table.var_names.is_unique
    assert "section 'D': 1 gene name(s) occur more than once (2 name(s) renamed" in caplog.text


def test_read_visium_checks_dataset_id_up_front(visium_dir):
    with pytest.raises(ValueError, match=r"dataset_id='my sample' is not a valid SpatialData element name"):
        lk.io.read_visium(visium_dir, dataset_id="my sample")


def test_read_visium_names_a_missing_spatial_folder(visium_dir, tmp_path):
    import shutil

    shutil.copy(visium_dir / "filtered_feature_bc_matrix.h5", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"it has no spatial/ folder \(it holds \['filtered_feature"):
        lk.io.read_visium(tmp_path)


def test_read_visium_records_spacing_and_documents_ids(sdata):
    uns = sdata.tables["V1"].uns["loki"]
    assert uns["spot_spacing_um"] == 100.0  # Visium centre-to-centre distance
    assert set(uns) <= set(lk.Key.SECTION_METADATA)
    table = sdata.tables["V1"]
    assert list(table.obs["spot_id"]) == list(range(table.n_obs))
    doc = " ".join(lk.io.read_visium.__doc__.split())
    assert "absent when the folder has no image" in doc
    assert "``obs['spot_id']``: the integer index" in doc


def test_read_visium_writes_scanpy_spatial_layout(sdata, visium_dir):
    """``uns['spatial']`` as scanpy's reader lays it out, the images those of the SpatialData."""
    import warnings

    import pandas as pd
    import scanpy as sc

    scalefactors = json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())
    table = sdata.tables["V1"]
    assert list(table.uns["spatial"]) == ["V1"]
    library = table.uns["spatial"]["V1"]
    assert set(library) == {"images", "scalefactors", "metadata"}
    assert library["scalefactors"] == scalefactors
    assert library["metadata"] == {
        "chemistry_description": "Single Cell 3' v3",  # bytes in the h5 file
        "software_version": "spaceranger-1.0.0",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's read_visium is deprecated
        scanpy_images = sc.read_visium(visium_dir).uns["spatial"]["custom"]["images"]
    assert set(library["images"]) == {"hires", "lowres"}
    for res, img in library["images"].items():
        assert img.dtype == np.uint8
        level0 = sdata.images[f"V1_{res}_image"]["scale0"]["image"].values
        np.testing.assert_array_equal(img, level0.transpose(1, 2, 0))
        # scanpy's floats in [0, 1], without the alpha channel of the hires PNG
        np.testing.assert_array_equal(img, np.rint(scanpy_images[res][..., :3] * 255).astype(np.uint8))
    # the spots, scaled into the lowres image, lie on the tissue (pink); off-tissue grid spots do not
    low = library["images"]["lowres"].astype(float)
    pink = (low[..., 0] + low[..., 2]) / 2 - low[..., 1]
    positions = pd.read_csv(visium_dir / "spatial" / "tissue_positions_list.csv", header=None)
    off = positions.loc[positions[1] == 0, [5, 4]].to_numpy(float)  # pxl_col, pxl_row of off-tissue spots

    def pink_under(xy):
        x, y = np.rint(xy * library["scalefactors"]["tissue_lowres_scalef"]).astype(int).T
        return pink[y, x].mean()

    assert pink_under(table.obsm["spatial"]) > 15 > 5 > pink_under(off)


@pytest.mark.parametrize("res", ["hires", "lowres"])
def test_squidpy_draws_the_spots_over_the_image(sdata, res):
    """squidpy's default call (and its lowres one) places each spot at its centre in the image."""
    sq = pytest.importorskip("squidpy")

    table = sdata.tables["V1"]
    library = table.uns["spatial"]["V1"]
    kwargs = {} if res == "hires" else {"img_res_key": res}
    sq.pl.spatial_scatter(table, color=table.var_names[0], **kwargs)
    ax = plt.gcf().axes[0]
    assert [im.get_array().shape for im in ax.images] == [library["images"][res].shape]
    (spots,) = (c for c in ax.collections if len(c.get_paths()) == table.n_obs)
    display = np.array([spots.get_transform().transform(p.vertices).mean(0) for p in spots.get_paths()])
    centres = ax.transData.inverted().transform(display)
    scale = library["scalefactors"][f"tissue_{res}_scalef"]
    np.testing.assert_allclose(centres, table.obsm["spatial"] * scale, atol=1)
    plt.close("all")
    assert "sq.pl.spatial_scatter(table, color=...)" in " ".join(lk.io.read_visium.__doc__.split())


def test_scanpy_layout_survives_a_zarr_round_trip(visium_dir, tmp_path):
    from spatialdata import read_zarr

    sq = pytest.importorskip("squidpy")

    import warnings

    sdata = lk.io.read_visium(visium_dir, dataset_id="V1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdata.write(tmp_path / "v1.zarr")
    # no value of a type zarr v3 cannot specify (the h5 metadata's bytes)
    assert not [w for w in caught if "Zarr V3 specification" in str(w.message)]
    back = read_zarr(tmp_path / "v1.zarr")
    table, before = back.tables["V1"], sdata.tables["V1"].uns["spatial"]["V1"]
    library = table.uns["spatial"]["V1"]
    assert library["scalefactors"] == before["scalefactors"]
    assert library["metadata"] == before["metadata"]
    for res in ("hires", "lowres"):
        np.testing.assert_array_equal(library["images"][res], before["images"][res])
    sq.pl.spatial_scatter(table, color=table.var_names[0], img_res_key="lowres")
    # loki's own plots read the SpatialData as before
    lk.pl.expression(back, table.var_names[0], predicted=table.copy(), table_key="V1", show=False)
    plt.close("all")


def test_read_visium_cuts_patches_from_the_full_resolution_image_when_read(visium_dir, tmp_path):
    """A full-resolution H&E given as fullres_image_file= is the section's image, not the hires PNG.

    Patches of the hires PNG (about 15 px a spot) would be upsampled to the model's input instead.
    """
    import shutil

    folder = tmp_path / "visium"
    shutil.copytree(visium_dir, folder)
    # a stand-in for the scan: the lowres PNG, with the scale factors that make it the full resolution
    shutil.copy(folder / "spatial" / "tissue_lowres_image.png", folder / "he.png")
    factors_file = folder / "spatial" / "scalefactors_json.json"
    factors = json.loads(factors_file.read_text())
    k = factors["tissue_lowres_scalef"]
    factors.update(tissue_lowres_scalef=1.0, tissue_hires_scalef=factors["tissue_hires_scalef"] / k)
    factors_file.write_text(json.dumps(factors))
    sdata = lk.io.read_visium(folder, dataset_id="V1", fullres_image_file="he.png")
    assert {"V1_full_image", "V1_hires_image", "V1_lowres_image"} <= set(sdata.images)
    uns = sdata.tables["V1"].uns["loki"]
    assert uns["image_key"] == "V1_full_image"
    assert sdata.attrs["loki"]["microns_per_pixel"]["V1_full_image"] == pytest.approx(uns["microns_per_unit"])


def test_read_visium_records_every_image_pixel_size_for_tile_image(sdata, visium_dir, tmp_path):
    """Each image of the section can be tiled without microns_per_pixel=, also after a zarr round trip."""
    import spatialdata as sd

    scalefactors = json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())
    mpu = sdata.tables["V1"].uns["loki"]["microns_per_unit"]
    mpp = sdata.attrs["loki"]["microns_per_pixel"]
    assert mpp["V1_lowres_image"] == pytest.approx(mpu / scalefactors["tissue_lowres_scalef"], rel=1e-6)
    assert mpp["V1_hires_image"] == pytest.approx(mpu / scalefactors["tissue_hires_scalef"], rel=1e-6)
    sdata.write(tmp_path / "v1.zarr")
    back = sd.read_zarr(tmp_path / "v1.zarr")
    tiles = lk.pp.tile_image(back, "V1_lowres_image", tile_um=200, min_tissue=0.3)
    given = lk.pp.tile_image(
        back,
        "V1_lowres_image",
        tile_um=200,
        min_tissue=0.3,
        microns_per_pixel=mpp["V1_lowres_image"],
        key_added="g",
    )
    assert tiles.n_obs == given.n_obs > 0
    np.testing.assert_allclose(tiles.obsm["spatial"], given.obsm["spatial"])
    assert tiles.uns["loki"]["microns_per_unit"] == pytest.approx(mpu)
