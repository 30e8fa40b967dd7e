"""lk.io.read_slide: whole-slide TIFF layouts written here with tifffile, over a real H&E image (MOB4)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from spatialdata.transformations import get_transformation

import loki as lk
from loki.io._slide import aperio_pixel_size, ome_pixel_size, philips_pixel_size, resolution_pixel_size

TILE = (128, 128)


@pytest.fixture(scope="module")
def mob4():
    """MOB4's real H&E (1905 x 1905 px) and its micrometres per pixel."""
    section = lk.datasets.mob("MOB4")
    rgb = np.moveaxis(np.asarray(section.images["MOB4_image"]["scale0"]["image"]), 0, -1)
    mpu = section.tables["MOB4"].uns["loki"]["microns_per_unit"]
    matrix = get_transformation(section.images["MOB4_image"]).to_affine_matrix(("x", "y"), ("x", "y"))
    return section, rgb, float(mpu * matrix[0, 0])


def _write_svs(path, rgb, mpp):
    """Aperio's layout: tiled baseline, stripped thumbnail, tiled reduced levels, label (subfile 1)."""
    description = (
        f"Aperio Image Library v12.0.16\r\n{rgb.shape[1]}x{rgb.shape[0]} [0,0 {rgb.shape[1]}x{rgb.shape[0]}] "
        f"(128x128) RAW/RGB|AppMag = 20|MPP = {mpp:.6f}|Filename = MOB4"
    )
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=TILE, photometric="rgb", description=description, metadata=None)
        tif.write(rgb[::8, ::8], photometric="rgb", description="Aperio thumbnail")
        tif.write(rgb[::4, ::4], tile=TILE, photometric="rgb", description="Aperio level")
        tif.write(rgb[::16, ::16], tile=TILE, photometric="rgb", description="Aperio level")
        tif.write(rgb[:64, :64], photometric="rgb", subfiletype=1, description="Aperio label")


def test_svs_levels_are_read_lazily_from_the_file(tmp_path, mob4):
    _, rgb, mpp = mob4
    _write_svs(tmp_path / "MOB4.svs", rgb, mpp)
    sdata = lk.io.read_slide(tmp_path / "MOB4.svs")
    image = sdata.images["MOB4"]
    shapes = [image[k]["image"].shape for k in sorted(image.children)]
    assert shapes == [(3, 1905, 1905), (3, 477, 477), (3, 120, 120)]  # thumbnail and label left out
    for k in image.children:
        assert isinstance(image[k]["image"].data, da.Array)
    # the coarse level is the file's own (every 16th pixel), not a mean over the finest level
    np.testing.assert_array_equal(np.asarray(image["scale2"]["image"]), np.moveaxis(rgb[::16, ::16], -1, 0))
    np.testing.assert_array_equal(
        np.asarray(image["scale0"]["image"][:, 700:900, 300:500]), rgb[700:900, 300:500].transpose(2, 0, 1)
    )
    assert sdata.attrs["loki"]["microns_per_pixel"]["MOB4"] == pytest.approx(mpp, rel=1e-5)
    thumbnail = lk.io.read_slide(tmp_path / "MOB4.svs", series=1).images["MOB4"]["scale0"]["image"]
    np.testing.assert_array_equal(np.asarray(thumbnail), np.moveaxis(rgb[::8, ::8], -1, 0))
    with pytest.raises(ValueError, match=r"no series 3; it holds 0: Baseline .*2: Label"):
        lk.io.read_slide(tmp_path / "MOB4.svs", series=3)


def test_tiles_of_a_slide_match_tiles_of_the_same_image_in_a_section(tmp_path, mob4):
    section, rgb, mpp = mob4
    _write_svs(tmp_path / "MOB4.svs", rgb, mpp)
    slide = lk.io.read_slide(tmp_path / "MOB4.svs")
    from_slide = lk.pp.tile_image(slide, "MOB4", tile_um=200)  # pixel size from the file
    from_section = lk.pp.tile_image(section, "MOB4_image", microns_per_pixel=mpp, tile_um=200)
    assert from_slide.n_obs == from_section.n_obs > 100
    np.testing.assert_allclose(
        from_slide.obs["loki_tissue_fraction"], from_section.obs["loki_tissue_fraction"], atol=1e-6
    )
    # the slide's coordinate system is its pixels; the section's is the image's transformation of them
    to_section = get_transformation(section.images["MOB4_image"]).to_affine_matrix(("x", "y"), ("x", "y"))
    moved = from_slide.obsm["spatial"] @ to_section[:2, :2].T + to_section[:2, 2]
    np.testing.assert_allclose(moved, from_section.obsm["spatial"], atol=1e-6)


def test_ome_tiff_pyramid_with_its_unit_and_round_trip(tmp_path, mob4):
    _, rgb, _ = mob4
    path = tmp_path / "he.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        options = {"tile": TILE, "photometric": "rgb"}
        tif.write(
            rgb,
            subifds=2,
            metadata={"axes": "YXS", "PhysicalSizeX": 350.0, "PhysicalSizeXUnit": "nm"},
            **options,
        )
        # a level no downsampling of the finest would give: it must travel as stored
        tif.write(255 - rgb[::2, ::2], subfiletype=1, **options)
        tif.write(rgb[::4, ::4], subfiletype=1, **options)
    sdata = lk.io.read_slide(path, name="he")
    assert sdata.attrs["loki"]["microns_per_pixel"] == {"he": pytest.approx(0.35)}
    assert [sdata.images["he"][f"scale{i}"]["image"].shape[1] for i in range(3)] == [1905, 953, 477]

    sdata.write(tmp_path / "he.zarr")
    back = sd.read_zarr(tmp_path / "he.zarr")
    assert back.attrs["loki"]["microns_per_pixel"] == {"he": pytest.approx(0.35)}
    level = back.images["he"]["scale1"]["image"]
    np.testing.assert_array_equal(np.asarray(level), np.moveaxis(255 - rgb[::2, ::2], -1, 0))
    # each level placed at its own scale in pixels of the finest level
    scale = get_transformation(level).to_affine_matrix(("x", "y"), ("x", "y"))
    assert scale[0, 0] == pytest.approx(1905 / 953)


def _philips_xml(spacings_mm):
    levels = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        f'<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">&quot;{row}&quot; &quot;{col}&quot;</Attribute>'
        "</DataObject>"
        for row, col in spacings_mm
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">&quot;0.5&quot; &quot;0.5&quot;</Attribute>'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray">'
        f"<Array>{levels}</Array></Attribute></DataObject>"
    )


def test_philips_tiff_levels_and_pixel_size(tmp_path, mob4):
    """Philips' layout: levels as top-level tiled pages padded to whole tiles, spacing in the XML (mm)."""
    _, rgb, _ = mob4
    software, path = "Philips DP v1.0", tmp_path / "scan.tiff"
    column_mm = 0.000252  # a different row spacing shows which of the two is read
    spacings = [(0.00025 * f, column_mm * f) for f in (1, 4)]
    options = {"photometric": "rgb", "software": software, "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=TILE, description=_philips_xml(spacings), **options)
        coarse = np.zeros((512, 512, 3), np.uint8)  # 477 px of image, padded to 4 tiles a side
        coarse[:477, :477] = rgb[::4, ::4]
        tif.write(coarse, tile=TILE, description="level", **options)
        tif.write(rgb[:64, :64], description="Label", **options)
    sdata = lk.io.read_slide(path)
    assert sdata.attrs["loki"]["microns_per_pixel"]["scan"] == pytest.approx(0.252)
    image = sdata.images["scan"]
    assert [image[k]["image"].shape for k in sorted(image.children)] == [(3, 1905, 1905), (3, 476, 476)]
    np.testing.assert_array_equal(
        np.asarray(image["scale1"]["image"]), np.moveaxis(rgb[: 476 * 4 : 4, : 476 * 4 : 4], -1, 0)
    )
    assert philips_pixel_size("<DataObject/>") is None
    assert philips_pixel_size("not xml") is None


def test_single_level_tiff_gets_a_pyramid_and_resolution_tags(tmp_path, mob4):
    _, rgb, _ = mob4
    path = tmp_path / "scan.tif"
    tifffile.imwrite(
        path,
        rgb,
        tile=TILE,
        photometric="rgb",
        resolution=(1e4 / 2.5, 1e4 / 2.5),
        resolutionunit="CENTIMETER",
    )
    sdata = lk.io.read_slide(path)
    assert sdata.attrs["loki"]["microns_per_pixel"]["scan"] == pytest.approx(2.5)
    assert len(sdata.images["scan"].children) > 1


def test_no_pixel_size_is_recorded_as_unknown_and_tile_image_asks_for_it(tmp_path, mob4):
    _, rgb, mpp = mob4
    path = tmp_path / "desktop.tif"
    tifffile.imwrite(
        path, rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH"
    )  # 353 µm: a default
    sdata = lk.io.read_slide(path)
    assert "loki" not in sdata.attrs
    with pytest.raises(KeyError, match="pass microns_per_pixel="):
        lk.pp.tile_image(sdata, "desktop", tile_um=200)
    assert set(sdata.tables) == set()
    assert lk.pp.tile_image(sdata, "desktop", tile_um=200, microns_per_pixel=mpp).n_obs > 100
    # the caller's value wins over the file's
    assert lk.io.read_slide(path, microns_per_pixel=0.5).attrs["loki"]["microns_per_pixel"]["desktop"] == 0.5


def test_jpg_and_grey_rgba_images(tmp_path, mob4):
    _, rgb, _ = mob4
    from PIL import Image

    Image.fromarray(rgb[:300, :400]).save(tmp_path / "small.jpg")
    sdata = lk.io.read_slide(tmp_path / "small.jpg", microns_per_pixel=1.0)
    assert sdata.images["small"]["scale0"]["image"].shape == (3, 300, 400)
    (tmp_path / "small.jpg").rename(tmp_path / "case 7 (HE).jpg")
    assert list(lk.io.read_slide(tmp_path / "case 7 (HE).jpg").images) == ["case_7__HE_"]

    grey = rgb[:300, :400].mean(axis=2).astype(np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", grey, tile=TILE)
    level = np.asarray(lk.io.read_slide(tmp_path / "grey.tif").images["grey"]["scale0"]["image"])
    np.testing.assert_array_equal(level, np.stack([grey] * 3))

    rgba = np.dstack([rgb[:300, :400], np.full((300, 400), 255, np.uint8)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    level = np.asarray(lk.io.read_slide(tmp_path / "rgba.tif").images["rgba"]["scale0"]["image"])
    np.testing.assert_array_equal(level, rgb[:300, :400].transpose(2, 0, 1))

    grey_alpha = np.dstack([grey, np.full((300, 400), 255, np.uint8)])  # as read from a PNG too
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, photometric="minisblack", extrasamples=["unassalpha"])
    level = np.asarray(lk.io.read_slide(tmp_path / "ga.tif").images["ga"]["scale0"]["image"])
    np.testing.assert_array_equal(level, np.stack([grey] * 3))


def test_aperio_jpeg2000_ycbcr_tiles_are_converted_to_rgb(tmp_path, mob4):
    """Aperio's compression 33003 holds YCbCr samples under an RGB tag (no colour transform in the codestream)."""
    import imagecodecs

    _, rgb, _ = mob4
    crop = rgb[:256, :256].astype(np.float64)
    r, g, b = crop[..., 0], crop[..., 1], crop[..., 2]
    ycbcr = np.stack(
        [
            0.299 * r + 0.587 * g + 0.114 * b,
            128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
            128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
        ],
        axis=-1,
    )
    ycbcr = np.clip(np.rint(ycbcr), 0, 255).astype(np.uint8)
    tiles = (
        imagecodecs.jpeg2k_encode(np.ascontiguousarray(ycbcr[y : y + 128, x : x + 128]), level=0, mct=False)
        for y in range(0, 256, 128)
        for x in range(0, 256, 128)
    )
    with tifffile.TiffWriter(tmp_path / "j2k.svs") as tif:
        tif.write(
            tiles,
            shape=(256, 256, 3),
            dtype=np.uint8,
            tile=TILE,
            photometric="rgb",
            compression=33003,
            metadata=None,
        )
    level = np.asarray(lk.io.read_slide(tmp_path / "j2k.svs").images["j2k"]["scale0"]["image"])
    # back to RGB within the rounding of the 8-bit YCbCr samples
    assert np.abs(level.astype(int) - rgb[:256, :256].transpose(2, 0, 1)).max() <= 2


def test_tiny_and_thin_images_get_the_levels_they_can_have(tmp_path):
    for shape in [(1, 1), (1, 3), (3, 1), (2, 2)]:
        tifffile.imwrite(tmp_path / "t.tif", np.full((*shape, 3), 200, np.uint8), photometric="rgb")
        image = lk.io.read_slide(tmp_path / "t.tif", microns_per_pixel=1.0).images["t"]
        levels = (
            [image[k]["image"] for k in sorted(image.children)] if hasattr(image, "children") else [image]
        )
        assert levels[0].shape == (3, *shape)
        assert all(min(level.shape[1:]) >= 1 for level in levels)


def test_bad_slides_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.svs"):
        lk.io.read_slide(tmp_path / "missing.svs")
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "Slidedat.ini").write_text("[GENERAL]")
    # the old message said the folder was not found
    with pytest.raises(IsADirectoryError, match=r"got the folder .*scan' \(it holds \['Slidedat\.ini'\]\)"):
        lk.io.read_slide(tmp_path / "scan")
    tifffile.imwrite(tmp_path / "neg.tif", np.full((64, 64, 3), -5, np.int16), photometric="rgb")
    with pytest.raises(ValueError, match=r"neg\.tif: a int16 image with negative values"):
        lk.io.read_slide(tmp_path / "neg.tif")
    tifffile.imwrite(
        tmp_path / "if.tif",
        np.zeros((5, 64, 64), np.uint8),
        photometric="minisblack",
        metadata={"axes": "CYX"},
    )
    with pytest.raises(ValueError, match="5 channels"):
        lk.io.read_slide(tmp_path / "if.tif")
    tifffile.imwrite(
        tmp_path / "z.ome.tif",
        np.zeros((2, 64, 64, 3), np.uint8),
        photometric="rgb",
        metadata={"axes": "ZYXS"},
    )
    with pytest.raises(ValueError, match=r"axis 'Z'.*2 entries"):
        lk.io.read_slide(tmp_path / "z.ome.tif")
    (tmp_path / "scan.mrxs").write_bytes(b"MIRAX index, not an image")
    with pytest.raises(ValueError, match=r"Cannot read 'scan\.mrxs'.*OME-TIFF"):
        lk.io.read_slide(tmp_path / "scan.mrxs")
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="microns_per_pixel must be a positive number"):
        lk.io.read_slide(tmp_path / "ok.tif", microns_per_pixel=-1)
    with pytest.raises(ValueError, match=r"name='a b' is not a valid SpatialData element name"):
        lk.io.read_slide(tmp_path / "ok.tif", name="a b")
    from PIL import Image

    # a 16-bit grey PNG (PIL mode 'I;16') is scaled by its bit depth, with a warning
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.warns(lk.LokiWarning, match=r"deep\.png: uint16 .* 16-bit data"):
        image = lk.io.read_slide(tmp_path / "deep.png", microns_per_pixel=1.0).images["deep"]
    level0 = image["scale0"]["image"].values if hasattr(image, "children") else image.values
    assert level0.dtype == np.uint8
    assert (level0 == round(40000 * 255 / 65535)).all()


def test_pixel_size_parsers():
    description = "Aperio Image Library v10.0.51\r\n46920x33014 [0,100 46000x32914] (256x256) JPEG/RGB Q=30|AppMag = 20|MPP = 0.4990"
    assert aperio_pixel_size(description) == pytest.approx(0.499)
    assert aperio_pixel_size("Aperio Image Library v10|AppMag = 20") is None
    xml = '<OME><Image ID="Image:0"><Pixels ID="Pixels:0" PhysicalSizeX="0.000263" PhysicalSizeXUnit="mm" SizeX="9"/></Image></OME>'
    assert ome_pixel_size(xml) == pytest.approx(0.263)
    assert ome_pixel_size('<OME><Pixels PhysicalSizeX="0.5"/></OME>') == pytest.approx(0.5)  # µm by default
    assert ome_pixel_size('<OME><Pixels SizeX="9"/></OME>') is None
    assert resolution_pixel_size(40000.0, 3) == pytest.approx(0.25)  # 40,000 px per cm
    assert resolution_pixel_size(101600.0, 2) == pytest.approx(0.25)  # per inch
    assert resolution_pixel_size(72.0, 2) is None  # a desktop default
    assert resolution_pixel_size(40000.0, 1) is None  # no unit
    assert resolution_pixel_size(4000.0, 4) == pytest.approx(0.25)  # per millimetre
    assert resolution_pixel_size(4.0, 5) == pytest.approx(0.25)  # per micrometre


def test_jpeg2000_tiles_are_decoded(tmp_path, mob4):
    """JPEG 2000 (as in many SVS files) goes through imagecodecs, installed with spatialdata-io."""
    _, rgb, _ = mob4
    crop = rgb[:512, :512]
    tifffile.imwrite(
        tmp_path / "j2k.tif",
        crop,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg2000",
        compressionargs={"level": 100},
    )
    level = np.asarray(lk.io.read_slide(tmp_path / "j2k.tif").images["j2k"]["scale0"]["image"])
    assert np.abs(level.astype(int) - crop.transpose(2, 0, 1)).max() <= 8  # lossy codec


@pytest.fixture(scope="module")
def tiled_jpeg(tmp_path_factory, mob4):
    """A JPEG-tiled TIFF of MOB4 whose size is not a multiple of the tile, and tifffile's own reading."""
    _, rgb, _ = mob4
    path = tmp_path_factory.mktemp("tiles") / "he.tif"
    tifffile.imwrite(path, rgb[:1000, :777], tile=(112, 96), photometric="rgb", compression="jpeg")
    return path, tifffile.imread(path)


@settings(max_examples=40, deadline=None)
@given(
    y=st.tuples(st.integers(0, 999), st.integers(1, 1000)).filter(lambda t: t[0] < t[1]),
    x=st.tuples(st.integers(0, 776), st.integers(1, 777)).filter(lambda t: t[0] < t[1]),
)
def test_tile_reader_reads_any_region_as_tifffile_does(tiled_jpeg, y, x):
    from loki.io._tiff_tiles import TileReader

    path, expected = tiled_jpeg
    with tifffile.TiffFile(path) as tif:
        assert TileReader.supports(tif.pages.first)
    reader = TileReader(path)
    np.testing.assert_array_equal(reader.read(y[0], y[1], x[0], x[1]), expected[y[0] : y[1], x[0] : x[1]])


def test_levels_are_read_by_the_tile_reader_or_the_zarr_store(tmp_path, mob4):
    """Tiled interleaved levels go through TileReader, stripped ones through tifffile's zarr store;
    both give tifffile's pixels."""
    _, rgb, _ = mob4
    tifffile.imwrite(tmp_path / "tiled.tif", rgb, tile=(256, 256), photometric="rgb", compression="jpeg")
    tifffile.imwrite(tmp_path / "strips.tif", rgb, photometric="rgb", compression="jpeg", rowsperstrip=64)
    for name in ("tiled", "strips"):
        image = lk.io.read_slide(tmp_path / f"{name}.tif").images[name]["scale0"]["image"]
        graph = str(dict(image.data.dask))
        assert ("from-zarr" in graph) == (name == "strips")
        np.testing.assert_array_equal(
            np.asarray(image), tifffile.imread(tmp_path / f"{name}.tif").transpose(2, 0, 1)
        )


@pytest.mark.parametrize("deep", [0, 1], ids=["16-bit-full-resolution", "16-bit-level"])
def test_pyramid_levels_of_another_dtype_are_computed_from_the_full_resolution(tmp_path, mob4, deep):
    """One factor, from level 0's dtype and the coarsest level's range, was applied to every level:
    12-bit data in 16-bit samples over an 8-bit OME sub-IFD read as 8-bit data (all white), and a
    16-bit level under an 8-bit full resolution stayed uint16. A pyramid's levels share one pixel type
    (OME's one Pixels Type; tifffile makes no level of another dtype from a plain TIFF), so such levels
    are left out with a warning and computed from the full resolution."""
    import re
    import warnings

    rgb = mob4[1][:512, :512]
    u12 = np.rint(rgb * (4095 / 255)).astype(np.uint16)
    # the 8-bit level a writer converted its own way (inverted here, so that keeping it would show)
    levels = [u12, 255 - rgb[::2, ::2]] if deep == 0 else [rgb, u12[::2, ::2]]
    path = tmp_path / "mixed.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(levels[0], subifds=1, tile=TILE, photometric="rgb", metadata={"axes": "YXS"})
        tif.write(levels[1], subfiletype=1, tile=TILE, photometric="rgb")
    with tifffile.TiffFile(path) as tif:  # tifffile presents the sub-IFD as the second level
        assert [np.dtype(level.dtype) for level in tif.series[0].levels] == [levels[0].dtype, levels[1].dtype]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = lk.io.read_slide(path).images["mixed"]
    scale0 = np.asarray(image["scale0"]["image"]).transpose(1, 2, 0)
    expected = np.rint(u12 * (255 / 4095)).astype(np.uint8) if deep == 0 else rgb
    np.testing.assert_array_equal(scale0, expected)
    scale1 = np.asarray(image["scale1"]["image"]).transpose(1, 2, 0)
    assert scale1.dtype == np.uint8
    assert scale1.shape == (256, 256, 3)
    # a downsampling of the full resolution, not the file's level
    assert np.abs(scale1.astype(float) - expected[::2, ::2]).mean() < 3
    left_out = (
        rf"mixed\.ome\.tif: its pyramid level 1 \({levels[1].dtype}\) does not hold the {levels[0].dtype}"
    )
    assert any(re.match(left_out, str(w.message)) for w in caught), [str(w.message) for w in caught]


def test_pixel_size_follows_the_series_read(tmp_path, mob4):
    """Aperio thumbnails repeat the baseline's description (MPP of the baseline); an OME file's second
    image has its own PhysicalSizeX."""
    _, rgb, _ = mob4
    description = "Aperio Image Library v12\r\n1905x1905 (128x128) RAW/RGB|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(tmp_path / "s.svs") as tif:
        tif.write(rgb, tile=TILE, photometric="rgb", description=description, metadata=None)
        tif.write(rgb[::5, ::5], photometric="rgb", description=description + " -> 381x381", metadata=None)
    thumbnail = lk.io.read_slide(tmp_path / "s.svs", series=1)
    assert thumbnail.attrs["loki"]["microns_per_pixel"]["s"] == pytest.approx(0.5 * 1905 / 381)
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tif:
        tif.write(rgb, photometric="rgb", metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "\u03bcm"})
        tif.write(rgb[::4, ::4], photometric="rgb", metadata={"PhysicalSizeX": 2.0})
    for series, mpp in ((0, 0.5), (1, 2.0)):
        sdata = lk.io.read_slide(tmp_path / "two.ome.tif", series=series)
        assert sdata.attrs["loki"]["microns_per_pixel"]["two"] == pytest.approx(mpp)


def test_edge_tiles_stored_cropped_and_ndpi_restart_intervals(tmp_path):
    """Two layouts tifffile reads and a naive tile reader does not: edge tiles stored at their cropped
    size, and an NDPI page (one JPEG whose restart intervals tifffile presents as tiles; named .tif, as
    tifffile reads a .ndpi name with NDPI's own 64-bit offsets)."""
    import io
    import zlib

    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)

    def cropped_tiles():
        for y in range(0, 300, 128):
            for x in range(0, 300, 128):
                yield zlib.compress(np.ascontiguousarray(rgb[y : y + 128, x : x + 128]).tobytes())

    with tifffile.TiffWriter(tmp_path / "cropped.tif") as tif:
        tif.write(
            cropped_tiles(),
            shape=rgb.shape,
            dtype=np.uint8,
            tile=(128, 128),
            compression="zlib",
            photometric="rgb",
        )
    level = lk.io.read_slide(tmp_path / "cropped.tif", microns_per_pixel=1).images["cropped"]["scale0"][
        "image"
    ]
    np.testing.assert_array_equal(np.asarray(level), rgb.transpose(2, 0, 1))

    h, w = 256, 512
    buffer = io.BytesIO()
    Image.fromarray(rgb[:256, :256].repeat(2, axis=1)).save(
        buffer, "JPEG", quality=95, subsampling=0, restart_marker_blocks=w // 32
    )
    jpeg = buffer.getvalue()
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    starts = [start] + [
        k + 2 for k in range(start, len(jpeg) - 1) if jpeg[k] == 0xFF and 0xD0 <= jpeg[k + 1] <= 0xD7
    ]
    ndpi_tags = [
        (65420, "I", 1, 1, True),
        (271, "s", 0, "Hamamatsu", True),
        (65426, "I", len(starts), starts, True),
    ]
    with tifffile.TiffWriter(tmp_path / "scan.tif") as tif:
        tif.write(
            iter([jpeg]),
            shape=(h, w, 3),
            dtype=np.uint8,
            photometric="rgb",
            compression="jpeg",
            rowsperstrip=h,
            extratags=ndpi_tags,
        )
    with tifffile.TiffFile(tmp_path / "scan.tif") as tif:
        assert tif.pages.first.is_ndpi
        expected = tif.pages.first.asarray()
    level = lk.io.read_slide(tmp_path / "scan.tif", microns_per_pixel=1).images["scan"]["scale0"]["image"]
    np.testing.assert_array_equal(np.asarray(level), expected.transpose(2, 0, 1))


def test_tile_reader_pickles_by_location(tiled_jpeg):
    import pickle

    from loki.io._tiff_tiles import TileReader

    path, expected = tiled_jpeg
    copy = pickle.loads(pickle.dumps(TileReader(path)))
    assert copy.fd >= 0
    np.testing.assert_array_equal(copy.read(100, 350, 40, 700), expected[100:350, 40:700])


def test_palette_images_and_series_of_a_jpg_are_refused(tmp_path):
    from PIL import Image

    tifffile.imwrite(
        tmp_path / "palette.tif",
        np.zeros((64, 64), np.uint8),
        photometric="palette",
        colormap=np.zeros((3, 256), np.uint16),
    )
    with pytest.raises(ValueError, match=r"photometric interpretation 3 \(PALETTE\)"):
        lk.io.read_slide(tmp_path / "palette.tif")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="not a TIFF and holds one image"):
        lk.io.read_slide(tmp_path / "x.jpg", series=1)


def test_the_log_says_what_to_do_when_the_pixel_size_is_unknown(tmp_path, caplog):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.jpg")
    with caplog.at_level("INFO", logger="loki"):
        lk.io.read_slide(tmp_path / "x.jpg")
        lk.io.read_slide(tmp_path / "x.jpg", microns_per_pixel=0.5)
    unknown, given = (r.getMessage() for r in caplog.records)
    assert unknown.endswith(
        "pixel size unknown (not a TIFF: the file records none; pass microns_per_pixel= here or to "
        "lk.pp.tile_image)"
    )
    assert given.endswith("pixel size 0.5 µm (from the caller)")
