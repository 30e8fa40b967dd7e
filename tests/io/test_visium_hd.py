"""lk.io.read_visium_hd on a synthetic folder in the Space Ranger HD layout (tests/io/visium_hd_fixture.py)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.sparse as sp
import tifffile
from spatialdata.transformations import Identity, get_transformation
from tests.io.visium_hd_fixture import write_visium_hd

import loki as lk
from loki._keys import Key


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    """8 and 16 µm bins, hires / lowres PNGs, the full-resolution crop in microscope_image/."""
    return write_visium_hd(tmp_path_factory.mktemp("hd") / "outs", fullres_image="microscope_image/he.png")


@pytest.fixture(scope="module")
def hd_no_fullres(tmp_path_factory):
    return write_visium_hd(tmp_path_factory.mktemp("hd_plain") / "outs")


@pytest.fixture(scope="module")
def sdata(hd_no_fullres):
    return lk.io.read_visium_hd(hd_no_fullres.path, dataset_id="HD")


def _copy(hd, tmp_path):
    folder = tmp_path / "outs"
    shutil.copytree(hd.path, folder)
    return folder


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def test_read_visium_hd_builds_the_section_layout(sdata, hd_no_fullres):
    hd = hd_no_fullres
    sf = hd.scalefactors[8]
    assert set(sdata.tables) == {"HD"}
    assert set(sdata.shapes) == {"HD_spots"}
    assert set(sdata.images) == {"HD_hires_image", "HD_lowres_image"}
    table = sdata.tables["HD"]
    assert list(table.obs_names) == hd.barcodes[8]
    assert list(table.var_names) == hd.gene_names
    assert list(table.var["gene_ids"]) == hd.gene_ids
    assert table.var_names.is_unique
    assert list(table.obs.columns) == ["in_tissue", "array_row", "array_col", "spot_id", "region"]
    assert table.uns["spatialdata_attrs"] == {
        "region": "HD_spots",
        "region_key": "region",
        "instance_key": "spot_id",
    }
    assert list(table.obs["spot_id"]) == list(range(table.n_obs))

    uns = table.uns["loki"]
    assert set(uns) <= set(Key.SECTION_METADATA)
    assert uns["spot_diameter_um"] == uns["spot_spacing_um"] == sf["bin_size_um"]
    assert uns["microns_per_unit"] == sf["microns_per_pixel"]
    assert uns["image_key"] == "HD_hires_image"  # no full-resolution image in the folder

    # bin centres, grid positions and counts are those of the Space Ranger files, by barcode
    positions = hd.positions[8].loc[table.obs_names]
    assert table.obsm["spatial"].dtype == np.float64
    np.testing.assert_array_equal(
        table.obsm["spatial"], positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    )
    for column in ("in_tissue", "array_row", "array_col"):
        np.testing.assert_array_equal(table.obs[column].to_numpy(), positions[column].to_numpy(), column)
    assert (table.obs["in_tissue"] == 1).all()  # the filtered matrix
    assert sp.issparse(table.X)
    np.testing.assert_array_equal(table.X.toarray(), hd.counts[8])

    # squares of the bin's side, centred on the bin centres, in full-resolution pixels
    shapes = sdata.shapes["HD_spots"]
    assert isinstance(get_transformation(shapes, "global"), Identity)
    assert set(get_transformation(shapes, get_all=True)) == {"global"}
    assert "radius" not in shapes
    assert set(shapes.geom_type) == {"Polygon"}
    by_id = shapes.loc[table.obs["spot_id"].to_numpy()]
    np.testing.assert_allclose(np.c_[by_id.centroid.x, by_id.centroid.y], table.obsm["spatial"])
    bounds = by_id.bounds.to_numpy()
    side = sf["spot_diameter_fullres"]
    np.testing.assert_allclose(bounds[:, 2] - bounds[:, 0], side)
    np.testing.assert_allclose(bounds[:, 3] - bounds[:, 1], side)
    np.testing.assert_allclose(by_id.area, side**2)

    # each image maps its pixels to full resolution by 1 / its scale factor; its µm per pixel recorded
    mpp = sdata.attrs["loki"]["microns_per_pixel"]
    for res in ("hires", "lowres"):
        img = sdata.images[f"HD_{res}_image"]
        level0 = img["scale0"]["image"]
        assert level0.dtype == np.uint8
        assert level0.shape[0] == 3
        m = get_transformation(img, "global").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        np.testing.assert_allclose(np.diag(m)[:2], 1 / sf[f"tissue_{res}_scalef"])
        assert mpp[f"HD_{res}_image"] == pytest.approx(sf["microns_per_pixel"] / sf[f"tissue_{res}_scalef"])

    # scanpy's layout: the PNGs' pixels, the bin's scalefactors, the h5 metadata as str
    library = table.uns["spatial"]["HD"]
    assert library["scalefactors"] == sf
    assert library["metadata"]["chemistry_description"] == "Visium HD v1"
    for res in ("hires", "lowres"):
        np.testing.assert_array_equal(
            library["images"][res],
            sdata.images[f"HD_{res}_image"]["scale0"]["image"].values.transpose(1, 2, 0),
        )


def test_bin_size_16_reads_its_own_table(hd_no_fullres, sdata):
    hd = hd_no_fullres
    big = lk.io.read_visium_hd(hd.path, bin_size=16, dataset_id="HD")
    table, small = big.tables["HD"], sdata.tables["HD"]
    sf = hd.scalefactors[16]
    assert list(table.obs_names) == hd.barcodes[16]
    assert all(b.startswith("s_016um_") for b in table.obs_names)
    assert table.n_obs < small.n_obs
    np.testing.assert_array_equal(table.X.toarray(), hd.counts[16])
    assert (
        table.uns["loki"]["spot_diameter_um"]
        == table.uns["loki"]["spot_spacing_um"]
        == sf["bin_size_um"]
        == 16
    )
    assert table.uns["spatial"]["HD"]["scalefactors"] == sf
    positions = hd.positions[16].loc[table.obs_names]
    np.testing.assert_array_equal(
        table.obsm["spatial"], positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    )
    bounds = big.shapes["HD_spots"].bounds.to_numpy()
    np.testing.assert_allclose(bounds[:, 2] - bounds[:, 0], sf["spot_diameter_fullres"])
    # the 16 µm bins sum the 8 µm bins: the same counts in all
    np.testing.assert_array_equal(np.asarray(table.X.sum(0)).ravel(), np.asarray(small.X.sum(0)).ravel())


def test_bins_as_circles(hd_no_fullres):
    sdata = lk.io.read_visium_hd(hd_no_fullres.path, dataset_id="HD", bins_as_squares=False)
    shapes, table = sdata.shapes["HD_spots"], sdata.tables["HD"]
    np.testing.assert_allclose(shapes["radius"], hd_no_fullres.scalefactors[8]["spot_diameter_fullres"] / 2)
    by_id = shapes.loc[table.obs["spot_id"].to_numpy()]
    np.testing.assert_allclose(np.c_[by_id.geometry.x, by_id.geometry.y], table.obsm["spatial"])


def test_default_names(hd_no_fullres, tmp_path):
    # the library id of the bin's h5 file when the feature slice file is not prefixed
    sdata = lk.io.read_visium_hd(hd_no_fullres.path)
    assert list(sdata.tables) == ["hd_fixture"]
    # 10x's downloads prefix the files: X_feature_slice.h5 names the section X
    folder = _copy(hd_no_fullres, tmp_path)
    (folder / "feature_slice.h5").rename(folder / "Mouse_Brain_feature_slice.h5")
    sdata = lk.io.read_visium_hd(folder)
    assert list(sdata.tables) == ["Mouse_Brain"]
    assert set(sdata.shapes) == {"Mouse_Brain_spots"}
    assert set(sdata.images) == {"Mouse_Brain_hires_image", "Mouse_Brain_lowres_image"}
    # another name for a prefixed folder renames the elements, not the files looked for
    renamed = lk.io.read_visium_hd(folder, dataset_id="B1")
    assert set(renamed.images) == {"B1_hires_image", "B1_lowres_image"}
    assert renamed.tables["B1"].n_obs == sdata.tables["Mouse_Brain"].n_obs


def test_full_resolution_image_is_the_patch_image_and_patches_are_the_bins(hd):
    """The microscope image is the section's image; a bin's patch is its square of the scan, pixel for pixel."""
    sdata = lk.io.read_visium_hd(hd.path, dataset_id="HD")
    assert {"HD_full_image", "HD_hires_image", "HD_lowres_image"} == set(sdata.images)
    table = sdata.tables["HD"]
    uns = table.uns["loki"]
    assert uns["image_key"] == "HD_full_image"
    assert sdata.attrs["loki"]["microns_per_pixel"]["HD_full_image"] == pytest.approx(uns["microns_per_unit"])
    side = int(hd.scalefactors[8]["spot_diameter_fullres"])
    patches = lk.pp.spot_patches(sdata, size=side, key_added="ok").compute()
    assert patches.shape == (table.n_obs, side, side, 3)
    assert table.obs["ok"].all()
    rows, cols = table.obs["array_row"].to_numpy(), table.obs["array_col"].to_numpy()
    for i in range(0, table.n_obs, 97):
        r, c = rows[i], cols[i]
        np.testing.assert_array_equal(
            patches[i], hd.image[r * side : (r + 1) * side, c * side : (c + 1) * side]
        )
    # also given by name (relative to the folder), as read_visium takes it
    named = lk.io.read_visium_hd(hd.path, dataset_id="HD", fullres_image_file="microscope_image/he.png")
    assert named.tables["HD"].uns["loki"]["image_key"] == "HD_full_image"


def _resized_copy(image, path, size):
    """``image`` (y, x, 3) resized to ``size`` (width, height) and saved at ``path`` (PNG or tiled TIFF)."""
    from PIL import Image

    pixels = np.asarray(Image.fromarray(image).resize(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, pixels, tile=(128, 128), photometric="rgb")
    else:
        Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("found", ["microscope_image", "named"])
def test_a_full_resolution_image_of_another_size_than_the_scale_factors_give_is_refused(hd, tmp_path, found):
    """The old reader took it: the bins (in pixels of the scan Space Ranger was run with) then fell off the
    image or on the wrong tissue, and patches were cut in the wrong places."""
    folder = _copy(hd, tmp_path)
    sf = hd.scalefactors[8]
    side = hd.image.shape[0]  # the 512 px crop; hires PNG 256 px at tissue_hires_scalef 0.5
    if found == "named":
        wrong = _resized_copy(hd.image, tmp_path / "other.tif", (side, side + 88))
        kwargs = {"fullres_image_file": wrong}
    else:
        wrong = _resized_copy(hd.image, folder / "microscope_image" / "he.png", (side + 88, side))
        kwargs = {}
    before = _listing(folder)
    with pytest.raises(ValueError, match="give a full-resolution image of") as err:
        lk.io.read_visium_hd(folder, dataset_id="HD", **kwargs)
    message = str(err.value)
    w, h = (side, side + 88) if found == "named" else (side + 88, side)
    label = f"fullres_image_file={str(wrong)!r}" if found == "named" else f"image {str(wrong)!r} (found by"
    assert label in message
    assert f"is {w}x{h} px (width x height)" in message
    hires = round(side * sf["tissue_hires_scalef"])
    assert f"spatial/tissue_hires_image.png ({hires}x{hires} px)" in message
    assert f"tissue_hires_scalef {sf['tissue_hires_scalef']}" in message
    assert "binned_outputs/square_008um/spatial/scalefactors_json.json" in message
    assert f"about {side}x{side} px" in message
    assert _listing(folder) == before  # nothing written


@pytest.mark.parametrize("extra", [0, 1, -1])
def test_a_full_resolution_image_within_the_rounding_of_the_hires_image_is_read(hd, tmp_path, extra):
    """A side within 1.5 hires px of the scale factors' (here 3 px of the scan) is Space Ranger's rounding."""
    folder = _copy(hd, tmp_path)
    side = hd.image.shape[0] + extra
    if extra:
        _resized_copy(hd.image, folder / "microscope_image" / "he.png", (side, side))
    sdata = lk.io.read_visium_hd(folder, dataset_id="HD")
    assert sdata.tables["HD"].uns["loki"]["image_key"] == "HD_full_image"
    assert sdata.images["HD_full_image"]["scale0"]["image"].shape == (3, side, side)


@pytest.fixture(scope="module")
def hd_tiff(tmp_path_factory):
    """The full-resolution crop as a tiled TIFF in microscope_image/."""
    return write_visium_hd(
        tmp_path_factory.mktemp("hd_tiff") / "outs", fullres_image="microscope_image/he.tif"
    )


def _spatialdata_io_full_image(folder, **kwargs):
    """The full-resolution pixels spatialdata-io reads, ``(3, y, x)``."""
    import spatialdata_io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = spatialdata_io.visium_hd(folder, dataset_id="HD", bin_size=8, **kwargs)
    return np.asarray(raw.images["HD_full_image"]["scale0"]["image"])


def _refuse_whole_file_decodes(monkeypatch, name):
    """spatialdata-io's dask array of an image decodes the whole file at each compute."""
    import dask_image.imread

    read_frame = dask_image.imread._read_frame

    def whole_file(fn, *args, **kwargs):  # the Space Ranger PNGs are small
        assert Path(str(fn)).name != name, f"the whole full-resolution file {name} was decoded"
        return read_frame(fn, *args, **kwargs)

    monkeypatch.setattr(dask_image.imread, "_read_frame", whole_file)


@pytest.mark.parametrize("found", ["microscope_image", "tissue_image", "named", "named-from-cwd"])
def test_full_resolution_tiff_is_read_block_by_block(hd_tiff, tmp_path, monkeypatch, found):
    """spatialdata-io's array of the microscope image is one block that decodes the whole file at every
    use (each patch, region, level); the TIFF is read as read_slide reads it, by tiles, however it is
    found: by spatialdata-io's search (microscope_image/, tissue_image.*) or named (relative to the
    folder, or to the working directory)."""
    folder, kwargs, name = hd_tiff.path, {}, "he.tif"
    if found == "tissue_image":
        folder = _copy(hd_tiff, tmp_path)
        shutil.move(folder / "microscope_image/he.tif", folder / "tissue_image.tif")
        (folder / "microscope_image").rmdir()
        name = "tissue_image.tif"
    elif found == "named":
        kwargs = {"fullres_image_file": "microscope_image/he.tif"}
    elif found == "named-from-cwd":
        monkeypatch.chdir(hd_tiff.path.parent)
        kwargs = {"fullres_image_file": "outs/microscope_image/he.tif"}
    # spatialdata-io finds the file itself, or takes a name relative to the working directory only
    named = {"fullres_image_file": hd_tiff.path / "microscope_image/he.tif"} if kwargs else {}
    expected = _spatialdata_io_full_image(folder, **named)
    np.testing.assert_array_equal(expected, hd_tiff.image.transpose(2, 0, 1))

    _refuse_whole_file_decodes(monkeypatch, name)
    sdata = lk.io.read_visium_hd(folder, dataset_id="HD", **kwargs)
    image = sdata.images["HD_full_image"]
    np.testing.assert_array_equal(
        np.asarray(image["scale0"]["image"][:, 100:300, 200:400]), expected[:, 100:300, 200:400]
    )
    np.testing.assert_array_equal(np.asarray(image["scale0"]["image"]), expected)
    assert get_transformation(image["scale0"]["image"], Key.GLOBAL_CS) == Identity()
    table = sdata.tables["HD"]
    assert table.uns["loki"]["image_key"] == "HD_full_image"
    side = int(hd_tiff.scalefactors[8]["spot_diameter_fullres"])
    patches = lk.pp.spot_patches(sdata, size=side).compute()
    assert patches.shape == (table.n_obs, side, side, 3)
    r, c = table.obs["array_row"].iloc[0], table.obs["array_col"].iloc[0]
    np.testing.assert_array_equal(
        patches[0], hd_tiff.image[r * side : (r + 1) * side, c * side : (c + 1) * side]
    )


def test_several_microscope_images_read_spatialdata_ios_choice_with_a_warning(hd_tiff, tmp_path, monkeypatch):
    folder = _copy(hd_tiff, tmp_path)
    tifffile.imwrite(folder / "microscope_image/flipped.tif", hd_tiff.image[::-1], photometric="rgb")
    first = next(p.name for p in (folder / "microscope_image").iterdir())
    expected = _spatialdata_io_full_image(folder)  # spatialdata-io reads the first file listed
    _refuse_whole_file_decodes(monkeypatch, first)
    with pytest.warns(
        lk.LokiWarning,
        match=rf"2 files match microscope_image/ .*\['flipped.tif', 'he.tif'\]\); read '{first}'",
    ):
        sdata = lk.io.read_visium_hd(folder, dataset_id="HD")
    np.testing.assert_array_equal(np.asarray(sdata.images["HD_full_image"]["scale0"]["image"]), expected)


def test_a_sixteen_bit_colour_png_found_in_microscope_image_is_refused(hd_no_fullres, tmp_path):
    """Only a named fullres_image_file was checked: the one spatialdata-io finds came out 16 times too dark."""
    from tests.io.test_image_depth import _write_png16

    folder = _copy(hd_no_fullres, tmp_path)
    (folder / "microscope_image").mkdir()
    _write_png16(folder / "microscope_image/he16.png", hd_no_fullres.image.astype(np.uint16) * 16)
    before = _listing(folder)
    with pytest.raises(ValueError, match=r"he16\.png: a 16-bit colour PNG"):
        lk.io.read_visium_hd(folder, dataset_id="HD")
    assert _listing(folder) == before


def test_microscope_image_as_a_file_is_named(hd_no_fullres, tmp_path):
    folder = _copy(hd_no_fullres, tmp_path)
    (folder / "microscope_image").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"microscope_image' is a file; .* Pass fullres_image_file="):
        lk.io.read_visium_hd(folder, dataset_id="HD")


def test_gene_sentences_and_align_onto_a_rotated_copy(hd_no_fullres):
    """loki's text pipeline and alignment run on the bins as on spots: a moved copy is put back."""
    sdata = lk.io.read_visium_hd(hd_no_fullres.path, dataset_id="HD")
    table = sdata.tables["HD"]
    lk.pp.gene_sentences(sdata, table_key="HD", n_genes=20, housekeeping=None)
    sentences = table.obs[Key.SENTENCE]
    full = ~table.obs[Key.EMPTY_SPOT].to_numpy()
    assert full.sum() > 0.9 * table.n_obs
    genes = set(table.var_names)
    assert all(set(s.split()) <= genes and len(s.split()) == 20 for s in sentences[full])

    x = table.X.tocsr().astype(np.float64)
    top = np.argsort(-np.asarray(x.mean(axis=0)).ravel())[:200]

    def log_expr(adata):
        counts = adata.X.tocsr()[:, top].astype(np.float64).toarray()
        counts = counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4
        return np.log1p(counts).astype(np.float32)

    target = table.copy()
    source, truth = lk.datasets.transform_section(
        target, rotation_deg=35.0, translation=(40.0, -25.0), seed=0
    )
    target.obsm["X_expr"] = log_expr(target)
    source.obsm["X_expr"] = log_expr(source)
    lk.tl.align(source, target=target, use="X_expr", method="rigid", mirror=False)
    err = lk.metrics.alignment_error(source.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err < 0.15, err


def test_zarr_round_trip_and_plot(sdata, hd_no_fullres, tmp_path):
    import warnings

    from spatialdata import read_zarr

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdata.write(tmp_path / "hd.zarr")
    # no value of a type zarr v3 cannot specify (the h5 metadata's bytes)
    assert not [w for w in caught if "Zarr V3 specification" in str(w.message)]
    back = read_zarr(tmp_path / "hd.zarr")
    table, before = back.tables["HD"], sdata.tables["HD"]
    assert list(table.obs_names) == list(before.obs_names)
    np.testing.assert_array_equal(table.X.toarray(), before.X.toarray())
    np.testing.assert_array_equal(table.obsm["spatial"], before.obsm["spatial"])
    assert dict(table.uns["loki"]) == dict(before.uns["loki"])
    assert table.uns["spatial"]["HD"]["scalefactors"] == hd_no_fullres.scalefactors[8]
    assert back.attrs["loki"]["microns_per_pixel"] == pytest.approx(sdata.attrs["loki"]["microns_per_pixel"])
    np.testing.assert_allclose(back.shapes["HD_spots"].area, sdata.shapes["HD_spots"].area)
    # a tile grid of the image, from the recorded pixel size
    tiles = lk.pp.tile_image(back, "HD_hires_image", tile_um=64, min_tissue=0.3)
    assert tiles.n_obs > 0
    # loki's plot draws the bins (squares) over the image
    fig = lk.pl.expression(back, table.var_names[0], table_key="HD", layer_predicted=None, show=False)
    assert fig.axes
    plt.close("all")


def test_squidpy_and_spatialdata_plot_draw_the_bins(sdata):
    sq = pytest.importorskip("squidpy")
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    table = sdata.tables["HD"]
    library = table.uns["spatial"]["HD"]
    sq.pl.spatial_scatter(table, color=table.var_names[0])
    ax = plt.gcf().axes[0]
    assert [im.get_array().shape for im in ax.images] == [library["images"]["hires"].shape]
    (spots,) = (c for c in ax.collections if len(c.get_paths()) == table.n_obs)
    display = np.array([spots.get_transform().transform(p.vertices).mean(0) for p in spots.get_paths()])
    centres = ax.transData.inverted().transform(display)
    np.testing.assert_allclose(
        centres, table.obsm["spatial"] * library["scalefactors"]["tissue_hires_scalef"], atol=1
    )
    plt.close("all")

    fig, ax = plt.subplots()
    (
        sdata.pl.render_images("HD_hires_image")
        .pl.render_shapes("HD_spots", color=table.var_names[0], table_name="HD")
        .pl.show(ax=ax, coordinate_systems="global")
    )
    assert len(ax.images) == 1
    (squares,) = (c for c in ax.collections if len(c.get_paths()) == table.n_obs)
    # each drawn square is its bin's: its centre the bin centre, its width the bin side
    drawn = np.array([p.vertices[:-1].mean(0) for p in squares.get_paths()])
    side = sdata.shapes["HD_spots"].bounds.eval("maxx - minx").to_numpy()
    dist = np.linalg.norm(drawn[:, None] - table.obsm["spatial"][None], axis=2).min(1)
    assert dist.max() < 0.1 * side.min()
    plt.close(fig)
    assert "sq.pl.spatial_scatter(table, color=...)" in " ".join(lk.io.read_visium_hd.__doc__.split())


# --- errors: each names what is wrong and what exists; nothing is written -------------------------


def test_given_a_file_asks_for_its_folder(hd_no_fullres):
    counts = hd_no_fullres.path / "feature_slice.h5"
    with pytest.raises(
        NotADirectoryError, match="read_visium_hd expects the Space Ranger output folder"
    ) as err:
        lk.io.read_visium_hd(counts)
    assert f"pass the folder that holds it: {str(hd_no_fullres.path)!r}" in str(err.value)


def test_given_the_sample_folder_points_at_its_outs_folder(hd_no_fullres, tmp_path):
    """Given the sample folder holding Space Ranger's ``outs/``, the message listed ['outs'] without
    saying to pass it, as :func:`loki.io.read_visium` does."""
    outs = _copy(hd_no_fullres, tmp_path)
    hint = f"Its 'outs' folder holds it: pass {str(outs)!r}, the Space Ranger output folder."
    before = _listing(tmp_path)
    with pytest.raises(FileNotFoundError, match="No 'feature_slice.h5'") as err:
        lk.io.read_visium_hd(tmp_path)
    assert str(err.value).endswith(f"it holds ['outs']. {hint}")
    assert _listing(tmp_path) == before
    # 10x's downloads name it X_feature_slice.h5: the same hint
    (outs / "feature_slice.h5").rename(outs / "sample_feature_slice.h5")
    with pytest.raises(FileNotFoundError) as err:
        lk.io.read_visium_hd(tmp_path)
    assert str(err.value).endswith(f"it holds ['outs']. {hint}")
    # without it in outs/ there is nothing to point at
    (outs / "sample_feature_slice.h5").unlink()
    with pytest.raises(FileNotFoundError) as err:
        lk.io.read_visium_hd(tmp_path)
    assert str(err.value).endswith("it holds ['outs'].")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Visium HD folder not found"):
        lk.io.read_visium_hd(tmp_path / "absent")


def test_bin_size_not_in_the_folder_names_those_it_holds(hd_no_fullres):
    before = _listing(hd_no_fullres.path)
    with pytest.raises(ValueError, match=r"bin_size=2: .*binned_outputs' holds bins of \[8, 16\] µm"):
        lk.io.read_visium_hd(hd_no_fullres.path, bin_size=2)
    assert _listing(hd_no_fullres.path) == before


@pytest.mark.parametrize(
    ("bin_size", "error"), [([8, 16], TypeError), (8.0, TypeError), (True, TypeError), (0, ValueError)]
)
def test_bin_size_is_one_int(hd_no_fullres, bin_size, error):
    with pytest.raises(error, match="bin_size"):
        lk.io.read_visium_hd(hd_no_fullres.path, bin_size=bin_size)


def test_bad_dataset_id(hd_no_fullres):
    with pytest.raises(ValueError, match=r"dataset_id='my sample' is not a valid SpatialData element name"):
        lk.io.read_visium_hd(hd_no_fullres.path, dataset_id="my sample")


def test_options_that_change_the_layout_are_refused(hd_no_fullres):
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['annotate_table_by_labels'\]"):
        lk.io.read_visium_hd(hd_no_fullres.path, annotate_table_by_labels=True)


@pytest.mark.parametrize(
    ("remove", "error", "match"),
    [
        (
            "feature_slice.h5",
            FileNotFoundError,
            r"No 'feature_slice.h5' .* it holds \['binned_outputs', 'spatial'\]",
        ),
        (
            "binned_outputs",
            FileNotFoundError,
            r"No 'binned_outputs/' folder .* it holds \['feature_slice.h5', 'spatial'\]",
        ),
        (
            "binned_outputs/square_008um/filtered_feature_bc_matrix.h5",
            FileNotFoundError,
            r"No 'filtered_feature_bc_matrix.h5' in binned_outputs/square_008um .* it holds \['spatial'\]",
        ),
        (
            "binned_outputs/square_008um/spatial/scalefactors_json.json",
            FileNotFoundError,
            r"No 'spatial/scalefactors_json.json' in binned_outputs/square_008um .* holds \['tissue_positions.parquet'\]",
        ),
        (
            "binned_outputs/square_008um/spatial/tissue_positions.parquet",
            FileNotFoundError,
            r"No 'spatial/tissue_positions.parquet' in .* holds \['scalefactors_json.json'\]",
        ),
        ("binned_outputs/square_008um", ValueError, r"bin_size=8: .* holds bins of \[16\] µm"),
    ],
)
def test_missing_files_are_named_with_what_exists(hd_no_fullres, tmp_path, remove, error, match):
    folder = _copy(hd_no_fullres, tmp_path)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    before = _listing(folder)
    with pytest.raises(error, match=match):
        lk.io.read_visium_hd(folder)
    assert _listing(folder) == before


def test_scalefactors_of_another_bin_size_are_refused(hd_no_fullres, tmp_path):
    folder = _copy(hd_no_fullres, tmp_path)
    file = folder / "binned_outputs/square_008um/spatial/scalefactors_json.json"
    file.write_text(json.dumps(hd_no_fullres.scalefactors[16]))
    with pytest.raises(ValueError, match=r"does not describe 8 µm bins: bin_size_um=16.0"):
        lk.io.read_visium_hd(folder)


def test_missing_fullres_image_file_is_named(hd_no_fullres):
    with pytest.raises(FileNotFoundError, match=r"fullres_image_file .*he.tif' .* does not exist"):
        lk.io.read_visium_hd(hd_no_fullres.path, fullres_image_file="he.tif")


def test_docstring_is_honest_about_its_testing():
    doc = " ".join(lk.io.read_visium_hd.__doc__.split())
    assert "tested on a synthetic folder in the Space Ranger HD layout" in doc
    assert "11 million 2 µm bins" in doc
    assert "read_visium_hd" in lk.io.__all__
