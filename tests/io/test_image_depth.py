"""Bit depth of the images lk.io reads: 16-bit, 12-bit-in-16, float, grey and RGBA pixels become 8-bit RGB.

The Visium fixture is scanpy's real Space Ranger folder with its lowres H&E (600 x 600) made the
full-resolution image: spot positions and sizes are rescaled into its pixels, and the image is written
back as TIFFs of other bit depths.
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
import tifffile
from tests.conftest import shared_path

import loki as lk


def _read_quietly(folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)
        return lk.io.read_visium(folder, dataset_id="V1", **kwargs)


def _level0(sdata, key="V1_full_image"):
    return sdata.images[key]["scale0"]["image"].values


@pytest.fixture(scope="module")
def he():
    """The real H&E of the fixture, ``(y, x, 3)`` uint8."""
    from PIL import Image

    path = shared_path("scanpy_visium_testdata", "1.0.0", "spatial", "tissue_lowres_image.png")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, he):
    src = shared_path("scanpy_visium_testdata", "1.0.0")
    out = tmp_path_factory.mktemp("depth") / "visium"
    shutil.copytree(src, out)
    sf = json.loads((src / "spatial" / "scalefactors_json.json").read_text())
    k = sf["tissue_lowres_scalef"]
    pos = pd.read_csv(src / "spatial" / "tissue_positions_list.csv", header=None)
    pos[[4, 5]] = (pos[[4, 5]] * k).round().astype(int)
    pos.to_csv(out / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    sf["spot_diameter_fullres"] *= k
    sf["fiducial_diameter_fullres"] *= k
    sf["tissue_hires_scalef"] /= k
    sf["tissue_lowres_scalef"] = 1.0
    (out / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    images = {
        "u8.tif": he,
        "u16.tif": (he.astype(np.uint32) * 257).astype(np.uint16),  # all 16 bits: 255 -> 65535
        "u12.tif": np.rint(he * (4095 / 255)).astype(np.uint16),  # 12-bit data in 16-bit samples
        "f01.tif": (he / 255.0).astype(np.float32),
        "f255.tif": he.astype(np.float32),
        "rgba.tif": np.dstack([he, np.full(he.shape[:2], 255, np.uint8)]),
    }
    for name, image in images.items():
        tifffile.imwrite(out / name, image, photometric="rgb")
    tifffile.imwrite(out / "grey.tif", he[..., 1], photometric="minisblack")
    tifffile.imwrite(out / "grey16.tif", he[..., 1].astype(np.uint16) * 257, photometric="minisblack")
    return out


@pytest.mark.parametrize(
    ("file", "match"),
    [
        ("u16.tif", r"'u16\.tif'\): uint16 pixels with values \d+ to \d+, read as 16-bit data.*255 / 65535"),
        ("u12.tif", r"'u12\.tif'\): uint16 pixels with values \d+ to \d+, read as 12-bit data.*255 / 4095"),
        ("f01.tif", r"'f01\.tif'\): float32 pixels with values .* read as \[0, 1\]: scaled by 255"),
        ("f255.tif", r"'f255\.tif'\): float32 pixels with values 35 to 193, read as \[0, 255\]"),
    ],
)
def test_read_visium_scales_deep_and_float_images_to_uint8_with_a_warning(folder, he, file, match):
    """Not clipped to 255 (the old code made 16-bit images white and [0, 1] floats black)."""
    with pytest.warns(lk.LokiWarning, match=match):
        sdata = lk.io.read_visium(folder, dataset_id="V1", fullres_image_file=file)
    image = _level0(sdata)
    assert image.dtype == np.uint8
    assert np.abs(image.astype(int) - he.transpose(2, 0, 1)).max() <= 1


def test_read_visium_keeps_8bit_images_and_drops_alpha_silently(folder, he):
    for file in ("u8.tif", "rgba.tif"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", lk.LokiWarning)
            sdata = lk.io.read_visium(folder, dataset_id="V1", fullres_image_file=file)
        np.testing.assert_array_equal(_level0(sdata), he.transpose(2, 0, 1))


@pytest.mark.parametrize("file", ["grey.tif", "grey16.tif"])
def test_read_visium_repeats_a_grey_image_to_rgb(folder, he, file):
    sdata = _read_quietly(folder, fullres_image_file=file)
    image = _level0(sdata)
    assert image.shape == (3, *he.shape[:2])
    for channel in image:
        np.testing.assert_array_equal(channel, he[..., 1])


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (lambda he: he / 170.0, r"values 0\.\d+ to 1\.1\d+: neither \[0, 1\]"),  # 0-1 overshoot or 0-255?
        (lambda he: he - 100.0, r"values -\d+ to \d+: values below 0 or above 255"),
        (lambda he: np.where(he > 150, np.nan, he / 255), r"NaN or infinite"),
        (lambda he: np.zeros((5, *he.shape[:2]), np.uint8), r"5 channels.*not multiplexed fluorescence"),
    ],
)
def test_read_visium_refuses_ambiguous_or_unreadable_images(folder, he, tmp_path, image, match):
    """Nothing is guessed: the old code clipped floats silently and kept 3 of 5 fluorescence channels."""
    out = tmp_path / "v"
    shutil.copytree(folder, out)
    pixels = image(he)
    tifffile.imwrite(
        out / "bad.tif",
        pixels.astype(np.float32) if pixels.dtype.kind == "f" else pixels,
        photometric="rgb" if pixels.shape[-1] == 3 else "minisblack",
    )
    with pytest.raises(ValueError, match=match):
        lk.io.read_visium(out, dataset_id="V1", fullres_image_file="bad.tif")


def _write_png16(path, rgb):
    """A 16-bit RGB PNG, which neither PIL nor numpy writes."""
    h, w, _ = rgb.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_colour_pngs_are_refused(folder, he, tmp_path):
    """PIL keeps the high byte of each sample: 12-bit data would be 16 times too dark (max 12 of 193)."""
    out = tmp_path / "v"
    shutil.copytree(folder, out)
    _write_png16(out / "he16.png", np.rint(he * (4095 / 255)).astype(np.uint16))
    with pytest.raises(ValueError, match=r"he16\.png: a 16-bit colour PNG.*save it as a 16-bit TIFF"):
        lk.io.read_visium(out, dataset_id="V1", fullres_image_file="he16.png")
    counts, spots = _legacy_section()
    with pytest.raises(ValueError, match=r"he16\.png: a 16-bit colour PNG"):
        lk.io.read_legacy_st(counts, spots, out / "he16.png", name="S")
    with pytest.raises(ValueError, match=r"he16\.png: a 16-bit colour PNG"):
        lk.io.read_slide(out / "he16.png")


def test_patches_and_embeddings_of_a_16bit_image_are_those_of_its_8bit_image(folder, he):
    """What the model is fed: the same uint8 patches, whatever the bit depth of the file."""
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    reference = None
    for file in ("u8.tif", "u16.tif", "u12.tif", "f01.tif"):
        sdata = _read_quietly(folder, fullres_image_file=file)
        patches = np.asarray(lk.pp.spot_patches(sdata, table_key="V1", size=model.image_size))
        if reference is None:
            reference = patches
            assert 40 < patches.mean() < 200  # tissue, not a blank (255) or black (0) image
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", lk.LokiWarning)  # loki-tiny's untrained weights
                lk.tl.embed_image(sdata, model, table_key="V1")
            embedding = sdata.tables["V1"].obsm[lk.Key.IMAGE]
        assert np.abs(patches.astype(int) - reference).max() <= 1, file
    sdata = _read_quietly(folder, fullres_image_file="u12.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)
        lk.tl.embed_image(sdata, model, table_key="V1")
    cosine = (sdata.tables["V1"].obsm[lk.Key.IMAGE] * embedding).sum(1)
    cosine /= np.linalg.norm(embedding, axis=1) * np.linalg.norm(
        sdata.tables["V1"].obsm[lk.Key.IMAGE], axis=1
    )
    assert cosine.min() > 0.999


def _legacy_section():
    counts = pd.DataFrame([[1, 2], [3, 4], [5, 6]], index=["10x10", "11x10", "10x11"], columns=["A", "B"])
    spots = pd.DataFrame(
        {
            "x": [10, 11, 10],
            "y": [10, 10, 11],
            "pixel_x": [100.0, 200.0, 100.0],
            "pixel_y": [100.0, 100.0, 200.0],
        },
        index=counts.index,
    )
    return counts, spots


@pytest.mark.parametrize(
    ("file", "match"),
    [
        ("u12.tif", r"u12\.tif: uint16 .* 12-bit data"),  # PIL read it as its high bytes: 0-12, nearly black
        ("u16.tif", r"u16\.tif: uint16 .* 16-bit data"),
        ("f01.tif", r"f01\.tif: float32 .* \[0, 1\]"),  # PIL cannot open it
        ("grey16.tif", r"grey16\.tif: uint16 .* 16-bit data"),
    ],
)
def test_read_legacy_st_reads_deep_tiffs_by_their_values(folder, he, file, match):
    counts, spots = _legacy_section()
    with pytest.warns(lk.LokiWarning, match=match):
        sdata = lk.io.read_legacy_st(counts, spots, folder / file, name="S")
    image = _level0(sdata, "S_image")
    expected = he.transpose(2, 0, 1) if "grey" not in file else np.stack([he[..., 1]] * 3)
    assert np.abs(image.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    ("convert", "match"),
    [
        (lambda he: (he.astype(np.uint32) * 257).astype(np.uint16), r"image array: uint16 .* 16-bit"),
        (
            lambda he: np.rint(he * (1023 / 255)).astype(np.uint16),
            r"image array: uint16 .* 10-bit.*255 / 1023",
        ),
        (lambda he: he / 255.0, r"image array: float64 .* \[0, 1\]"),
        (lambda he: np.moveaxis(he, -1, 0).astype(np.int32), r"image array: int32 .* 8-bit"),
    ],
)
def test_read_legacy_st_scales_deep_arrays(he, convert, match):
    counts, spots = _legacy_section()
    with pytest.warns(lk.LokiWarning, match=match):
        sdata = lk.io.read_legacy_st(counts, spots, convert(he), name="S")
    assert np.abs(_level0(sdata, "S_image").astype(int) - he.transpose(2, 0, 1)).max() <= 1


def test_read_legacy_st_refuses_negative_integer_images(he):
    counts, spots = _legacy_section()
    with pytest.raises(ValueError, match=r"image array: a int16 image with negative values"):
        lk.io.read_legacy_st(counts, spots, he.astype(np.int16) - 100, name="S")


@pytest.mark.parametrize(
    ("file", "match"),
    [
        ("u12.tif", r"u12\.tif: uint16 pixels with values \d+ to \d+, read as 12-bit data.*255 / 4095"),
        ("u16.tif", r"u16\.tif: uint16 .* 16-bit data"),
        ("f01.tif", r"f01\.tif: float32 .* \[0, 1\]"),
        ("grey16.tif", r"grey16\.tif: uint16 .* 16-bit data"),
    ],
)
def test_read_slide_scales_deep_tiffs_by_the_rules_of_the_other_readers(folder, he, file, match):
    """The old read_slide refused any TIFF of other than 8-bit samples."""
    with pytest.warns(lk.LokiWarning, match=match):
        image = lk.io.read_slide(folder / file).images[file.split(".")[0]]["scale0"]["image"]
    expected = he.transpose(2, 0, 1) if "grey" not in file else np.stack([he[..., 1]] * 3)
    assert image.dtype == np.uint8
    assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1


def test_a_deep_pyramidal_slide_stays_lazy_its_range_found_in_its_coarsest_level(tmp_path, he):
    """A 12-bit OME-TIFF pyramid: every level converted by one factor, read tile by tile when used."""
    import dask.array as da

    u12 = np.rint(he * (4095 / 255)).astype(np.uint16)
    path = tmp_path / "u12.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        options = {"tile": (128, 128), "photometric": "rgb"}
        tif.write(u12, subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": 0.5}, **options)
        tif.write(u12[::2, ::2], subfiletype=1, **options)
        tif.write(u12[::4, ::4], subfiletype=1, **options)
    match = (
        r"u12\.ome\.tif: uint16 pixels with values \d+ to \d+ \(found in its coarsest stored level, 150 x 150"
    )
    with pytest.warns(lk.LokiWarning, match=match + r".*12-bit data"):
        sdata = lk.io.read_slide(path)
    assert sdata.attrs["loki"]["microns_per_pixel"]["u12"] == pytest.approx(0.5)
    image = sdata.images["u12"]
    for k, step in zip(sorted(image.children), (1, 2, 4), strict=True):
        level = image[k]["image"]
        assert isinstance(level.data, da.Array)
        assert level.dtype == np.uint8
        expected = he[::step, ::step].transpose(2, 0, 1)
        assert np.abs(np.asarray(level).astype(int) - expected).max() <= 1
    # floats the rules do not read are refused, as by the other readers
    tifffile.imwrite(tmp_path / "f15.tif", (he / 170.0).astype(np.float32), photometric="rgb")
    with pytest.raises(ValueError, match=r"f15\.tif: a float32 image with values .* neither \[0, 1\]"):
        lk.io.read_slide(tmp_path / "f15.tif")


def test_read_visium_reads_a_deep_image_file_once(folder, he, tmp_path):
    """The old reader decoded the file to find its range, and again at every later use (each patch,
    each level): a 12-bit 13332 px image took 47 s to read and cut patches from, not 21 s. A file
    spatialdata-io reads (here a 16-bit grey PNG) is read once and held; a TIFF is read block by
    block (test below)."""
    from PIL import Image

    out = tmp_path / "v"
    shutil.copytree(folder, out)
    Image.fromarray(he[..., 1].astype(np.uint16) * 16).save(out / "g12.png")  # mode I;16
    sdata = _read_quietly(out, fullres_image_file="g12.png")
    (out / "g12.png").unlink()  # nothing reads it any more
    assert np.abs(_level0(sdata).astype(int) - he[..., 1]).max() <= 1
    assert lk.pp.spot_patches(sdata, table_key="V1", size=32).shape[0] == sdata.tables["V1"].n_obs


@pytest.mark.parametrize("file", ["u8.tif", "u12.tif", "tiled.tif", "pyramid.ome.tif"])
def test_read_visium_reads_a_full_resolution_tiff_block_by_block(folder, he, tmp_path, monkeypatch, file):
    """spatialdata-io's array of the file is one block that decodes the whole image at every use (a
    region, a patch, a pyramid level): for an 8-bit 13332 px TIFF, 2 regions then 100 patches took
    15 + 15 s. The TIFF is read as read_slide reads it: by tiles, strips or a memory map, with the
    levels it stores."""
    import dask_image.imread

    out = tmp_path / "v"
    shutil.copytree(folder, out)
    options = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
    if file == "tiled.tif":
        tifffile.imwrite(out / file, he, **options)
    elif file == "pyramid.ome.tif":
        with tifffile.TiffWriter(out / file) as tif:
            tif.write(he, subifds=1, metadata={"axes": "YXS"}, **options)
            tif.write(he[::2, ::2], subfiletype=1, **options)

    read_frame = dask_image.imread._read_frame

    def whole_file(fn, *args, **kwargs):  # the Space Ranger PNGs are small
        assert not str(fn).endswith(file), "the whole full-resolution file was decoded"
        return read_frame(fn, *args, **kwargs)

    monkeypatch.setattr(dask_image.imread, "_read_frame", whole_file)
    sdata = _read_quietly(out, fullres_image_file=file)
    image = sdata.images["V1_full_image"]
    region = np.asarray(image["scale0"]["image"][:, 100:300, 200:400]).astype(int)
    tolerance = 1 if file == "u12.tif" else 0  # 12-bit rounding
    assert np.abs(region - he[100:300, 200:400].transpose(2, 0, 1)).max() <= tolerance
    if file == "pyramid.ome.tif":  # the file's own second level, not one computed from the first
        np.testing.assert_array_equal(np.asarray(image["scale1"]["image"]), he[::2, ::2].transpose(2, 0, 1))
    assert lk.pp.spot_patches(sdata, table_key="V1", size=32).compute().shape[0] == sdata.tables["V1"].n_obs


@pytest.mark.parametrize("file", ["he.jpg", "he.png", "grey.png"])
def test_read_visium_decodes_a_full_resolution_jpg_or_png_once(folder, he, tmp_path, monkeypatch, file):
    """spatialdata-io's array of a jpg/png rests on one task that decodes the whole file, so each
    compute decoded it again: a region, each chunk of patches (lk.tl.embed_image computes them chunk
    by chunk, 256 spots a chunk), each pyramid level. It is decoded at the first use (not when the
    folder is read) and held."""
    import dask_image.imread
    from PIL import Image

    out = tmp_path / "v"
    shutil.copytree(folder, out)
    pixels = he[..., 1] if file.startswith("grey") else he
    Image.fromarray(pixels).save(out / file, **({"quality": 90} if file.endswith(".jpg") else {}))
    with Image.open(out / file) as img:  # the file's pixels, lossy for the jpg
        expected = np.asarray(img.convert("RGB")).transpose(2, 0, 1)

    read_frame = dask_image.imread._read_frame
    decodes = []

    def counted(fn, *args, **kwargs):
        decodes.extend([fn] if str(fn).endswith(file) else [])
        return read_frame(fn, *args, **kwargs)

    monkeypatch.setattr(dask_image.imread, "_read_frame", counted)
    sdata = _read_quietly(out, fullres_image_file=file)
    assert decodes == [], "reading the folder decoded the image"
    image = sdata.images["V1_full_image"]
    region = np.asarray(image["scale0"]["image"][:, 100:300, 200:400])
    np.testing.assert_array_equal(region, expected[:, 100:300, 200:400])
    np.asarray(image["scale0"]["image"][:, :50, :50])
    patches = lk.pp.spot_patches(sdata, table_key="V1", size=32, chunk_size=16)
    assert patches.numblocks[0] > 1
    chunks = [patches.blocks[i].compute() for i in range(patches.numblocks[0])]
    assert sum(len(c) for c in chunks) == sdata.tables["V1"].n_obs
    np.asarray(image["scale1"]["image"])
    np.testing.assert_array_equal(_level0(sdata), expected)
    assert len(decodes) == 1, f"the file was decoded {len(decodes)} times"


def test_decoded_once_decodes_at_the_first_block_for_all_threads_and_pickles_without_pixels(he, tmp_path):
    """Blocks computed together on threads wait for one decode; a pickled copy carries the reader,
    not the pixels, and decodes again at its own first use."""
    import cloudpickle
    import dask
    import dask.array as da

    from loki.io._image import DecodedOnce

    np.save(tmp_path / "he.npy", he.transpose(2, 0, 1))
    log = tmp_path / "decodes.log"

    def decode(path):  # a whole-file read that logs itself, also in a copy
        with open(log, "a") as f:
            f.write("decoded\n")
        return np.load(path)

    def decodes():
        return log.read_text().count("decoded") if log.exists() else 0

    source = da.from_delayed(dask.delayed(decode)(str(tmp_path / "he.npy")), (3, *he.shape[:2]), np.uint8)
    reader = DecodedOnce(source)
    image = reader.to_dask((3, 64, 64))
    assert not reader.decoded
    assert image.numblocks[1] * image.numblocks[2] > 50
    np.testing.assert_array_equal(image.compute(scheduler="threads", num_workers=4), he.transpose(2, 0, 1))
    np.testing.assert_array_equal(np.asarray(image[:, 10:70, 5:9]), he[10:70, 5:9].transpose(2, 0, 1))
    assert reader.decoded
    assert decodes() == 1
    blob = cloudpickle.dumps(image)
    assert len(blob) < he.nbytes / 10
    np.testing.assert_array_equal(cloudpickle.loads(blob).compute(), he.transpose(2, 0, 1))
    assert decodes() == 2


@pytest.mark.parametrize("layout", ["pyramid", "one-strip"])
def test_read_visium_reads_a_deep_tiff_without_a_stated_depth_whole(
    folder, he, tmp_path, monkeypatch, layout
):
    """Its range must come from the full resolution: a stored coarse level can miss the brightest
    pixels (here 999 of 1,100, which read as 10-bit data would be 4x too bright), and a level stored as
    one compressed strip would be decoded whole at every use. It is read once and held, as before."""
    out = tmp_path / "v"
    shutil.copytree(folder, out)
    full = np.rint(he * (1100 / he.max())).astype(np.uint16)  # 12-bit data, 16-bit samples, no statement
    if layout == "pyramid":
        _deep_pyramid(out / "d.tif", full, np.minimum(full[::4, ::4], 999))
    else:
        tifffile.imwrite(
            out / "d.tif", full, photometric="rgb", compression="zlib", rowsperstrip=full.shape[0]
        )
    from loki.io import _slide

    monkeypatch.setattr(_slide, "tiff_levels", lambda *a, **k: pytest.fail("read block by block"))
    sdata = _read_quietly(out, fullres_image_file="d.tif")
    level0 = np.asarray(sdata.images["V1_full_image"]["scale0"]["image"]).astype(int)
    assert np.abs(level0 - np.rint(full * (255 / 4095)).transpose(2, 0, 1)).max() <= 1


def _deep_pyramid(path, full, coarse, *, ome=None, extratags=()):
    """A 2-level tiled pyramid (sub-IFDs) of uint16 RGB; ``ome``: OME metadata, else a plain TIFF."""
    options = {"tile": (128, 128), "photometric": "rgb"}
    with tifffile.TiffWriter(path, ome=ome is not None) as tif:
        tif.write(full, subifds=1, metadata={"axes": "YXS", **(ome or {})}, extratags=extratags, **options)
        tif.write(coarse, subfiletype=1, **options)


@pytest.mark.parametrize(
    ("ome", "extratags", "bits", "match"),
    [
        ({"SignificantBits": 12}, (), 12, r"read as 12-bit data \(the file's OME SignificantBits = 12\)"),
        (None, [(281, "H", 3, (1100,) * 3, True)], 12, r"12-bit data \(the file's MaxSampleValue = 1100\)"),
        (None, [(281, "H", 1, 4095, True)], 12, r"12-bit data \(the file's MaxSampleValue = 4095\)"),
        # statements of the container's own depth say nothing: scanners write 12 bits in 16 silently
        ({"SignificantBits": 16}, (), 10, r"values \d+ to \d+ \(found in its coarsest stored level.*10-bit"),
        (None, [(281, "H", 1, 65535, True)], 10, r"states no bit depth\), read as 10-bit data"),
        (None, (), 10, r"values \d+ to \d+ \(found in its coarsest stored level, 150 x 150 px"),
    ],
    ids=[
        "ome-significant-bits",
        "max-sample-value",
        "max-sample-value-4095",
        "ome-16",
        "max-65535",
        "silent",
    ],
)
def test_a_deep_slide_takes_its_bit_depth_from_the_file_where_it_states_it(
    tmp_path, he, ome, extratags, bits, match
):
    """Values up to 1,100 at full resolution but 999 in the coarsest level: found there, the range
    made the slide 10-bit data, 4 times brighter than 12-bit; where the file states 12 bits it is."""
    full = np.rint(he * (1100 / he.max())).astype(np.uint16)  # 12-bit data: 0 to 1,100
    coarse = np.minimum(full[::4, ::4], 999)  # its subsampling missed the brightest pixels
    path = tmp_path / ("s.ome.tif" if ome is not None else "s.tif")
    _deep_pyramid(path, full, coarse, ome=ome, extratags=extratags)
    with pytest.warns(lk.LokiWarning, match=match):
        image = lk.io.read_slide(path).images["s"]
    assert full.max() == 1100
    assert coarse.max() <= 999
    got = np.asarray(image["scale0"]["image"])
    expected = np.clip(np.rint(full * (255 / (2**bits - 1))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected.transpose(2, 0, 1))


def test_an_uncompressed_tiff_is_read_region_by_region_through_a_memory_map(tmp_path, he):
    """tifffile writes an uncompressed image as one strip, one chunk of its zarr store: every block
    read the whole file. Big-endian and planar samples too; the reader pickles by its location."""
    import pickle

    from loki.io._tiff_tiles import MappedLevel

    u12 = np.rint(he * (4095 / 255)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", u12, photometric="rgb", byteorder=">")
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(u12, -1, 0), photometric="rgb", planarconfig="separate"
    )
    for name in ("be", "planar"):
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tif:
            level = tif.series[0].levels[0]
            assert MappedLevel.supports(level)
            reader = MappedLevel.of(tmp_path / f"{name}.tif", tif.byteorder, level)
            stored = tif.asarray()
        assert len(pickle.dumps(reader)) < 500
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(reader)).to_dask(256, level.axes), stored)
        with pytest.warns(lk.LokiWarning, match="12-bit data"):
            image = lk.io.read_slide(tmp_path / f"{name}.tif").images[name]["scale0"]["image"]
        assert np.abs(np.asarray(image).astype(int) - he.transpose(2, 0, 1)).max() <= 1


@pytest.mark.parametrize("shape", [(2000, 1500, 3), (2000, 1500)], ids=["rgb", "grey"])
def test_a_16_bit_array_is_converted_without_a_float_copy_of_it(shape):
    """Converting the whole image at once held a float32 copy (twice a 16-bit image) besides it and
    the result, and grey was repeated to three 16-bit channels first: about 2.5x (RGB) and 10x
    (grey) the input's size more memory than the uint8 result, for slides read into memory."""
    import tracemalloc

    from loki.io._image import read_rgb

    image = np.random.default_rng(0).integers(0, 4096, shape).astype(np.uint16)
    expected = np.rint(image.astype(np.float64) * (255 / 4095)).astype(np.uint8)
    expected = np.repeat(expected[..., None], 3, axis=2) if image.ndim == 2 else expected
    tracemalloc.start()
    try:
        with pytest.warns(lk.LokiWarning, match="12-bit data"):
            rgb = read_rgb(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(rgb, expected)
    assert rgb.flags.c_contiguous
    assert rgb.dtype == np.uint8
    # the result, plus a block of a few MB being converted
    assert peak < rgb.nbytes + 6 * 2**20, peak / rgb.nbytes
