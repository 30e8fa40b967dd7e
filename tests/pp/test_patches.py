from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from tests.conftest import shared_path

import loki as lk
from loki import Key

# Pattern image: channel 0 = x // 4, channel 1 = y // 4 (mod 256), channel 2 constant, so every patch
# tells where it was cut from.
H, W = 800, 1000


def _pattern(h=H, w=W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx // 4) % 256, (yy // 4) % 256, np.full_like(xx, 7)], -1).astype(np.uint8)


def _section(centers, *, radius=50.0, scale=2.0, scale_factors=(2, 2), with_shapes=True, uns=None):
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    img = Image2DModel.parse(
        _pattern().transpose(2, 0, 1),
        dims=("c", "y", "x"),
        scale_factors=list(scale_factors) or None,
        transformations={"global": Scale([scale, scale], axes=("x", "y"))},
        chunks=256,
    )
    ids = pd.Index([f"spot{i}" for i in range(len(centers))])
    table = ad.AnnData(
        np.ones((len(centers), 2), dtype=np.float32),
        obs=pd.DataFrame({"region": pd.Categorical(["S_spots"] * len(ids)), "spot_id": ids}, index=ids),
    )
    table.obsm["spatial"] = np.asarray(centers, dtype=float)
    table.uns["loki"] = {"image_key": "S_image", **(uns or {})}
    table = TableModel.parse(table, region="S_spots", region_key="region", instance_key="spot_id")
    shapes = {}
    if with_shapes:
        shapes["S_spots"] = ShapesModel.parse(
            np.asarray(centers, dtype=float), geometry=0, radius=np.full(len(ids), radius), index=ids
        )
    return sd.SpatialData(images={"S_image": img}, shapes=shapes, tables={"S": table})


def test_crop_patches_lands_on_the_centre_and_pads_borders():
    image = _pattern()
    centers = np.array([[200.0, 100.0], [10.0, 400.0], [999.0, 799.0]])
    patches, ok = lk.pp.crop_patches(image, centers, 48.0, 12)
    assert patches.shape == (3, 12, 12, 3)
    assert patches.dtype == np.uint8
    assert ok.tolist() == [True, False, False]
    # square x in [176, 224) -> x // 4 in 44..55, y in [76, 124) -> 19..30; 4 source px per output px
    np.testing.assert_array_equal(patches[0, 5, :, 0], np.arange(44, 56))
    np.testing.assert_array_equal(patches[0, :, 5, 1], np.arange(19, 31))
    # spot 1 square x in [-14, 34): the left 14 px of 48 are padding -> about 3.5 output columns white
    assert (patches[1, :, :3] == 255).all()
    assert (patches[1, :, 5:, 2] == 7).all()
    # corner spot: only the top-left quarter is image
    assert (patches[2, 7:, :] == 255).all()
    assert (patches[2, :, 7:] == 255).all()
    assert (patches[2, :5, :5, 2] == 7).all()


def test_crop_patches_numpy_and_dask_agree_and_subpixel():
    image = _pattern()
    centers = np.array([[300.25, 200.5], [301.25, 200.5], [5.0, 5.0]])
    diam = np.array([40.0, 40.0, 30.0])
    a, ok_a = lk.pp.crop_patches(image, centers, diam, 20, fill=0)
    b, ok_b = lk.pp.crop_patches(da.from_array(image, chunks=(128, 96, 1)), centers, diam, 20, fill=0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ok_a, ok_b)
    assert (a[2, :2, :2] == 0).all()  # fill value honoured
    # a 1 px shift of the centre moves the crop by half an output pixel: values grow by 1/8 per pixel
    diff = a[1, 10, 2:-2, 0].astype(float) - a[0, 10, 2:-2, 0].astype(float)
    assert 0 < diff.mean() < 0.6


def test_crop_patches_rejects_bad_input():
    image = _pattern()
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        lk.pp.crop_patches(image, np.zeros((3, 3)), 10, 8)
    with pytest.raises(ValueError, match="diameter must be positive"):
        lk.pp.crop_patches(image, np.zeros((1, 2)), 0, 8)
    with pytest.raises(ValueError, match="non-finite"):
        lk.pp.crop_patches(image, np.array([[np.nan, 1.0]]), 5, 8)
    with pytest.raises(
        ValueError, match=r"float image must hold values in \[0, 1\].*Convert the image to uint8"
    ):
        lk.pp.crop_patches(image.astype(np.float32), np.zeros((1, 2)), 5, 8)  # 0-255 as floats
    with pytest.raises(ValueError, match=r"uint8 \(RGB 0-255\) or float with values in \[0, 1\], got int16"):
        lk.pp.crop_patches(image.astype(np.int16), np.zeros((1, 2)), 5, 8)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        lk.pp.crop_patches(image, np.zeros((1, 2)), 5, 0)


def test_spot_patches_maps_through_transformation_and_picks_level():
    # global units = 2 x level-0 pixels; spot diameter 100 units = 50 px at level 0, 25 at level 1
    centers = np.array([[400.0, 400.0], [1000.0, 800.0], [5.0, 400.0]])
    sdata = _section(centers)
    patches = lk.pp.spot_patches(sdata, size=16, chunk_size=2, key_added=Key.PATCH_OK)
    assert isinstance(patches, da.Array)
    assert patches.shape == (3, 16, 16, 3)
    assert patches.chunks[0] == (2, 1)
    table = sdata.tables["S"]
    assert table.obs[Key.PATCH_OK].tolist() == [True, True, False]
    params = table.uns["loki"][Key.PATCH_OK]
    assert params["level"] == 1  # coarsest level where 25 px >= 16
    assert params["diameter_px"] == pytest.approx(25.0)
    arr = patches.compute()
    # spot 0: level-0 square x in [175, 225) -> x // 4 from 43.75 to 56.25
    assert arr[0, 8, 0, 0] in (43, 44)
    assert arr[0, 8, -1, 0] in (55, 56)
    assert arr[0, 0, 8, 1] in (43, 44)
    # reference: same crop from the full-resolution array
    ref, _ = lk.pp.crop_patches(_pattern(), np.array([[200.0, 200.0], [500.0, 400.0]]), 50.0, 16)
    assert np.abs(arr[:2].astype(int) - ref.astype(int)).max() <= 2
    assert (arr[2, :, :3] == 255).all()  # padded left border


def test_spot_patches_level0_and_diameter_um():
    centers = np.array([[400.0, 400.0]])
    sdata = _section(centers, uns={"microns_per_unit": 0.5})
    # 20 um = 40 units = 20 level-0 px < 32: finest level
    patches = lk.pp.spot_patches(sdata, size=32, diameter_um=20.0, key_added="ok")
    assert sdata.tables["S"].uns["loki"]["ok"]["level"] == 0
    assert sdata.tables["S"].uns["loki"]["ok"]["diameter_px"] == pytest.approx(20.0)
    ref, _ = lk.pp.crop_patches(_pattern(), np.array([[200.0, 200.0]]), 20.0, 32)
    np.testing.assert_array_equal(patches.compute(), ref)


def test_spot_patches_without_shapes_uses_uns_diameter():
    sdata = _section(
        np.array([[400.0, 400.0]]), with_shapes=False, uns={"spot_diameter_um": 50.0, "microns_per_unit": 1.0}
    )
    lk.pp.spot_patches(sdata, size=8, key_added=Key.PATCH_OK)
    assert sdata.tables["S"].uns["loki"][Key.PATCH_OK]["diameter_px"] == pytest.approx(25.0 / 2)  # level 1
    sdata = _section(np.array([[400.0, 400.0]]), with_shapes=False)
    with pytest.raises(ValueError, match="Cannot tell the spot size"):
        lk.pp.spot_patches(sdata, size=8)
    # the message says how to set the scale, with the Visium recipe
    with pytest.raises(ValueError, match=r"microns_per_unit.*found None\. Set it as .*55 / scalefactors"):
        lk.pp.spot_patches(sdata, size=8, diameter_um=55.0)


def test_spot_patches_centres_from_shapes_when_no_obsm():
    centers = np.array([[400.0, 400.0], [900.0, 300.0]])
    sdata = _section(centers)
    ref = lk.pp.spot_patches(sdata, size=16).compute()
    del sdata.tables["S"].obsm["spatial"]
    np.testing.assert_array_equal(lk.pp.spot_patches(sdata, size=16).compute(), ref)


def test_patch_touching_the_image_border_holds_no_padding():
    """A box exactly at the image's corner is inside (ok); the resampling filter's margin beyond the
    image repeats its edge, so the patch does not depend on fill. A box crossing the edge is padded."""
    image = _pattern()  # channel 2 is 7 everywhere
    for fill in (0, 255):
        patches, ok = lk.pp.crop_patches(image, np.array([[24.0, 24.0], [24.0, 400.0]]), 48.0, 12, fill=fill)
        assert ok.tolist() == [True, True]
        assert (patches[..., 2] == 7).all()
    padded, ok = lk.pp.crop_patches(image, np.array([[10.0, 400.0]]), 48.0, 12, fill=255)
    assert not ok[0]
    assert (padded[0, :, :3] == 255).all()


def test_spot_patches_reads_obsm_spatial_beside_shapes_with_repeated_ids():
    """The check that .obsm['spatial'] holds the shapes' own coordinates failed here in pandas' words
    ("cannot reindex on an axis with duplicate labels"); the centres come from .obsm['spatial']."""
    from spatialdata.transformations import Identity, Scale, set_transformation

    centers = np.array([[400.0, 400.0], [1000.0, 800.0], [600.0, 500.0]])
    sdata = _section(centers)
    shapes = sdata.shapes["S_spots"]
    shapes.index = pd.Index(["spot0", "spot1", "spot1"])
    set_transformation(
        shapes, {"global": Identity(), "hires": Scale([0.5, 0.5], axes=("x", "y"))}, set_all=True
    )
    patches = lk.pp.spot_patches(sdata, size=16)
    reference = lk.pp.spot_patches(_section(centers), size=16)
    np.testing.assert_array_equal(np.asarray(patches), np.asarray(reference))


@pytest.mark.parametrize("spots", ["circles", "squares"])
def test_obsm_spatial_in_another_coordinate_system_is_refused_for_circles_and_squares(spots):
    import geopandas as gpd
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity, Scale, set_transformation

    centers = np.array([[400.0, 400.0], [1000.0, 800.0], [600.0, 500.0]])
    sdata = _section(centers)
    if spots == "squares":  # Visium HD bins: the centroid is the centre
        circles = sdata.shapes["S_spots"]
        squares = gpd.GeoDataFrame(geometry=circles.geometry.buffer(50.0, cap_style=3), index=circles.index)
        sdata.shapes["S_spots"] = ShapesModel.parse(squares)
    hires = {"global": Identity(), "hires": Scale([0.25, 0.25], axes=("x", "y"))}
    set_transformation(sdata.shapes["S_spots"], hires, set_all=True)
    table = sdata.tables["S"]
    assert lk.pp.spot_patches(sdata, size=16).shape == (3, 16, 16, 3)  # own coordinates
    table.obsm["spatial"] = centers + np.array([3.0, -2.0])  # other points of the spots: left alone
    assert lk.pp.spot_patches(sdata, size=16).shape == (3, 16, 16, 3)
    table.obsm["spatial"] = centers * 0.25  # their 'hires' positions
    with pytest.raises(ValueError, match=r"table 'S' holds its spots' positions in 'hires'"):
        lk.pp.spot_patches(sdata, size=16)


def test_spot_patches_centres_of_polygon_spots_and_square_pixels_only():
    import geopandas as gpd
    from shapely.geometry import box
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale, set_transformation

    centers = np.array([[400.0, 400.0], [900.0, 300.0]])
    sdata = _section(centers)
    ref = lk.pp.spot_patches(sdata, size=16).compute()
    squares = gpd.GeoDataFrame(geometry=[box(x - 50, y - 50, x + 50, y + 50) for x, y in centers])
    squares.index = sdata.shapes["S_spots"].index
    sdata.shapes["S_spots"] = ShapesModel.parse(squares)
    del sdata.tables["S"].obsm["spatial"]
    sdata.tables["S"].uns["loki"]["microns_per_unit"] = 1.0
    np.testing.assert_array_equal(lk.pp.spot_patches(sdata, size=16, diameter_um=100.0).compute(), ref)
    # without diameter_um, a square's side is its size (Visium HD bins as spatialdata-io writes them):
    # it was refused for want of a 'radius' column
    del sdata.tables["S"].uns["loki"]["microns_per_unit"]
    np.testing.assert_array_equal(lk.pp.spot_patches(sdata, size=16).compute(), ref)

    set_transformation(
        sdata.images["S_image"], Scale([2.0, 3.0], axes=("x", "y")), to_coordinate_system="global"
    )
    with pytest.raises(ValueError, match="are not square in 'global'"):
        lk.pp.spot_patches(sdata, size=16, diameter_um=100.0)
    with pytest.raises(ValueError, match=r"fill must be an integer in \[0, 255\] \(a grey level\)"):
        lk.pp.crop_patches(_pattern(), centers, 48.0, 12, fill=300)
    with pytest.raises(ValueError, match="key_added must be a non-empty string"):
        lk.pp.spot_patches(_section(centers), key_added="")


def test_spot_patches_bad_input_writes_nothing():
    sdata = _section(np.array([[400.0, 400.0], [5000.0, 400.0], [-300.0, -300.0]]))
    table = sdata.tables["S"]
    before = (list(table.obs.columns), dict(table.uns["loki"]))
    with pytest.raises(
        ValueError, match=r"2 of 3 spots lie entirely outside image 'S_image' \(e.g. 'spot1', 'spot2'\)"
    ):
        lk.pp.spot_patches(sdata)
    with pytest.raises(KeyError, match=r"'nope' not found in sdata.images; available: 'S_image'"):
        lk.pp.spot_patches(sdata, image_key="nope")
    with pytest.raises(KeyError, match="'aligned' not found in the coordinate systems"):
        lk.pp.spot_patches(sdata, coordinate_system="aligned")
    with pytest.raises(KeyError, match=r"sdata\.tables"):
        lk.pp.spot_patches(sdata, table_key="T")
    assert (list(table.obs.columns), dict(table.uns["loki"])) == before


def _mob_section():
    """MOB1 H&E with the spots of its alignment table (pixel coordinates of this jpg)."""
    import spatialdata as sd
    from PIL import Image
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    mob = shared_path("stutility_mob")
    spots = pd.read_csv(mob / "alignment_table_MOB1.tsv", sep="\t")
    ids = pd.Index(spots["x"].astype(str) + "x" + spots["y"].astype(str))
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    rgb = np.asarray(Image.open(mob / "MOB1.jpg").convert("RGB"))
    img = Image2DModel.parse(
        rgb.transpose(2, 0, 1), dims=("c", "y", "x"), transformations={"global": Identity()}
    )
    table = ad.AnnData(
        np.zeros((len(ids), 1), dtype=np.float32),
        obs=pd.DataFrame(
            {
                "region": pd.Categorical(["MOB1_spots"] * len(ids)),
                "spot_id": ids,
                "tissue": spots["selected"].to_numpy() == 1,
            },
            index=ids,
        ),
    )
    table.obsm["spatial"] = xy
    table = TableModel.parse(table, region="MOB1_spots", region_key="region", instance_key="spot_id")
    # 200 um spot spacing = median nearest-neighbour distance (~31.7 px); spots are 100 um across
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(len(ids), 31.7 / 4), index=ids)
    return sd.SpatialData(images={"MOB1_image": img}, shapes={"MOB1_spots": shapes}, tables={"MOB1": table})


def test_spot_patches_on_real_mob_image():
    sdata = _mob_section()
    patches = lk.pp.spot_patches(sdata, size=32, key_added=Key.PATCH_OK)
    table = sdata.tables["MOB1"]
    assert patches.shape == (table.n_obs, 32, 32, 3)
    assert table.obs[Key.PATCH_OK].mean() > 0.95
    arr = patches[:600].compute()
    tissue = table.obs["tissue"].to_numpy()[:600]
    # spots under tissue are stained (darker, more saturated) than the bare-glass spots around it
    brightness = arr.reshape(len(arr), -1).mean(1)
    assert brightness[tissue].mean() < brightness[~tissue].mean() - 10


def test_spot_patches_with_io_reader():
    mob = shared_path("stutility_mob")
    sdata = lk.io.read_legacy_st(
        mob / "MOB1.tsv", mob / "alignment_table_MOB1.tsv", mob / "MOB1.jpg", name="MOB1"
    )
    patches = lk.pp.spot_patches(sdata, size=16, key_added=Key.PATCH_OK)
    table = next(iter(sdata.tables.values()))
    assert patches.shape == (table.n_obs, 16, 16, 3)
    assert table.obs[Key.PATCH_OK].dtype == bool
    assert patches[:4].compute().dtype == np.uint8


def test_image_of_a_section_is_found_by_its_name_not_a_neighbours():
    """'A1' has no image: it takes neither 'A10_image' (A10's by name) nor a lone 'A2_image'."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    from loki._utils._spatialdata import section_image_key

    def section(name):
        obs = pd.DataFrame(
            {"region": pd.Categorical([f"{name}_spots"] * 3), "id": range(3)},
            index=[f"{name}_{i}" for i in range(3)],
        )
        table = TableModel.parse(
            ad.AnnData(np.zeros((3, 1), np.float32), obs=obs),
            region=f"{name}_spots",
            region_key="region",
            instance_key="id",
        )
        return table, ShapesModel.parse(np.full((3, 2), 10.0), geometry=0, radius=np.ones(3))

    def image():
        return Image2DModel.parse(np.zeros((3, 20, 20), np.uint8), dims=("c", "y", "x"))

    parts = {name: section(name) for name in ("A1", "A10", "A2")}
    sdata = SpatialData(
        images={"A10_image": image(), "A2_image": image()},
        shapes={f"{n}_spots": shapes for n, (_, shapes) in parts.items()},
        tables={n: table for n, (table, _) in parts.items()},
    )
    assert section_image_key(sdata, "A10") == "A10_image"
    assert section_image_key(sdata, "A2") == "A2_image"
    with pytest.raises(KeyError, match="'A10_image', 'A2_image' belong to other tables"):
        section_image_key(sdata, "A1")
    del sdata.images["A10_image"]
    with pytest.raises(KeyError, match="'A2_image' belongs to other tables"):
        section_image_key(sdata, "A1")
    del sdata.images["A2_image"]
    with pytest.raises(
        KeyError,
        match=r"^\"Table 'A1' records no image and sdata.images is empty: there is no image to use.\"$",
    ):
        section_image_key(sdata, "A1")


class _CountingImage:
    """Array-like (c, y, x) image that counts the pixels read and copies them, as a zarr store decodes."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.ndim, self.read = arr, arr.shape, arr.dtype, arr.ndim, 0

    def __getitem__(self, key):
        out = np.array(self.arr[key])
        self.read += out.size
        return out


def _shuffled_section(seed=0):
    """1024 px image in 128 px blocks, spots on a 60 px grid listed in random order (like barcodes)."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    rng = np.random.default_rng(seed)
    src = _CountingImage(rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8))
    img = Image2DModel.parse(da.from_array(src, chunks=(3, 128, 128)), dims=("c", "y", "x"))
    ys, xs = np.mgrid[40:1000:60, 40:1000:60]
    centers = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)[rng.permutation(xs.size)]
    ids = pd.Index([f"s{i}" for i in range(len(centers))])
    table = ad.AnnData(
        np.ones((len(ids), 1), np.float32),
        obs=pd.DataFrame({"region": pd.Categorical(["spots"] * len(ids)), "sid": ids}, index=ids),
    )
    table.obsm["spatial"] = centers
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="sid")
    shapes = ShapesModel.parse(centers, geometry=0, radius=np.full(len(ids), 20.0), index=ids)
    return sd.SpatialData(images={"img": img}, shapes={"spots": shapes}, tables={"t": table}), src


def test_spot_patches_computed_at_once_read_each_image_block_once():
    import dask

    sdata, src = _shuffled_section()
    patches = lk.pp.spot_patches(sdata, size=16, chunk_size=32)
    assert len(patches.chunks[0]) == 8  # 256 spots
    with dask.config.set(scheduler="synchronous"):
        src.read = 0
        np.asarray(patches)
    assert src.read == src.arr.size  # not once per chunk of spots


def test_patches_grouped_by_area_read_few_blocks_a_chunk_and_match_table_order():
    import dask

    from loki.pp._patches import _cut_spot_patches, _cut_spot_patches_by_area

    sdata, src = _shuffled_section(1)
    with dask.config.set(scheduler="synchronous"):
        table_order, ok, meta = _cut_spot_patches(sdata, size=16, chunk_size=32)
        by_area, order, ok_area, meta_area = _cut_spot_patches_by_area(sdata, size=16, chunk_size=32)
        assert sorted(order) == list(range(256))
        np.testing.assert_array_equal(ok_area, ok)
        assert meta_area == meta
        reads = {}
        for name, patches in (("table", table_order), ("area", by_area)):
            src.read = 0
            got = [np.asarray(patches[i : i + 32]) for i in range(0, 256, 32)]  # chunk by chunk
            reads[name] = src.read / src.arr.size
            if name == "area":
                np.testing.assert_array_equal(
                    np.concatenate(got), np.asarray(table_order)[order]
                )  # bit-identical
    assert reads["table"] > 4  # each chunk of randomly placed spots reads most of the image
    assert reads["area"] < 2.5  # each chunk reads the few blocks around its spots


def test_spot_patches_writes_flags_only_under_key_added():
    # a call that returns patches (e.g. a figure's crops) leaves the table alone unless asked to write
    sdata = _section(np.array([[400.0, 400.0], [5.0, 400.0]]))
    table = sdata.tables["S"]
    obs, uns = table.obs.copy(), {k: dict(v) if isinstance(v, dict) else v for k, v in table.uns.items()}
    patches = lk.pp.spot_patches(sdata, size=16)
    assert patches.shape == (2, 16, 16, 3)
    pd.testing.assert_frame_equal(table.obs, obs)
    assert table.uns == uns
    lk.pp.spot_patches(sdata, size=16, key_added="crop_ok")
    assert table.obs["crop_ok"].tolist() == [True, False]
    assert table.uns["loki"]["crop_ok"]["n_not_ok"] == 1


def test_spot_patches_refuses_to_replace_the_flags_of_an_image_embedding():
    sdata = _section(np.array([[400.0, 400.0], [5.0, 400.0]]))
    table = sdata.tables["S"]
    table.obs[Key.PATCH_OK] = [True, True]
    table.uns["loki"]["emb"] = {"modality": "image", "patch_ok_key": Key.PATCH_OK}
    before = table.obs.copy()
    with pytest.raises(
        ValueError,
        match=r"key_added='loki_patch_ok' would replace \.obs\['loki_patch_ok'\], the patch flags of the "
        r"image embedding \.obsm\['emb'\].*Choose another key_added",
    ):
        lk.pp.spot_patches(sdata, size=16, key_added=Key.PATCH_OK)
    pd.testing.assert_frame_equal(table.obs, before)
    assert Key.PATCH_OK not in table.uns["loki"]


def _float_rgba(image: np.ndarray) -> np.ndarray:
    """``image`` as float32 in [0, 1] with an opaque alpha channel (spatialdata-io's legacy conversion)."""
    rgb = image.astype(np.float32) / 255
    return np.concatenate([rgb, np.ones_like(rgb[..., :1])], axis=-1)


def test_float_images_in_0_1_are_read_as_0_255_and_alpha_is_dropped():
    centers = np.array([[200.0, 100.0], [10.0, 400.0]])
    ref, ok = lk.pp.crop_patches(_pattern(), centers, 48.0, 12)
    patches, ok_float = lk.pp.crop_patches(_float_rgba(_pattern()), centers, 48.0, 12)
    assert patches.dtype == np.uint8
    np.testing.assert_array_equal(patches, ref)
    np.testing.assert_array_equal(ok_float, ok)
    lazy, _ = lk.pp.crop_patches(
        da.from_array(_float_rgba(_pattern()), chunks=(256, 256, 4)), centers, 48.0, 12
    )
    np.testing.assert_array_equal(lazy, ref)

    # a SpatialData section whose image is float RGBA, as in the sections spot_patches cuts
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    sdata = _section(np.array([[400.0, 400.0], [1000.0, 800.0]]))
    expected = lk.pp.spot_patches(sdata, size=16).compute()
    image = sdata.images["S_image"]["scale0"]["image"]
    float_image = Image2DModel.parse(
        _float_rgba(_pattern()).transpose(2, 0, 1),
        dims=("c", "y", "x"),
        scale_factors=[2, 2],
        transformations=sd.transformations.get_transformation(image, get_all=True),
        chunks=256,
    )
    sdata.images["S_image"] = float_image
    np.testing.assert_array_equal(lk.pp.spot_patches(sdata, size=16).compute(), expected)


def test_squares_wider_than_the_image_are_refused_before_any_pixel():
    """diameter_um=1e9 (a typo, or pixels for µm) went on to cut the patches: numpy asked for 43.8 PiB."""
    sdata = _section(np.array([[400.0, 400.0]]), uns={"microns_per_unit": 0.5})
    table = sdata.tables["S"]
    before = (list(table.obs.columns), dict(table.uns["loki"]))
    side_um = max(H, W) * 2.0 * 0.5  # level-0 pixels of 2 units, 0.5 µm a unit
    with pytest.raises(
        ValueError,
        match=rf"^Squares of 1e\+09 µm are wider than all of image 'S_image' \({side_um:.4g} µm across its "
        r"longer side\): each would hold the whole image\. Pass a smaller diameter_um= \(in µm\)\.$",
    ):
        lk.pp.spot_patches(sdata, size=8, diameter_um=1e9)
    assert (list(table.obs.columns), dict(table.uns["loki"])) == before
    lk.pp.spot_patches(sdata, size=8, diameter_um=side_um * 0.9)  # nearly the whole image is a patch
