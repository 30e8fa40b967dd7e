from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tests.conftest import shared_path

import loki as lk
from loki import Key
from loki.pp._tiles import box_fractions, otsu_threshold, tile_centres

H, W = 600, 800


def _image(rgb: np.ndarray, scale: float = 2.0):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    img = Image2DModel.parse(
        rgb.transpose(2, 0, 1),
        dims=("c", "y", "x"),
        scale_factors=[2],
        transformations={"global": Scale([scale, scale], axes=("x", "y"))},
        chunks=256,
    )
    return sd.SpatialData(images={"he": img})


def _slide() -> np.ndarray:
    """White glass with a pink-purple rectangle of 'tissue' over x 200-520, y 100-420."""
    rgb = np.full((H, W, 3), 242, dtype=np.uint8)
    rgb[100:420, 200:520] = (200, 90, 170)
    return rgb


def _pattern() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([(xx // 4) % 256, (yy // 4) % 256, np.full_like(xx, 7)], -1).astype(np.uint8)


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.05, 0.01, 5000), rng.normal(0.45, 0.05, 2000)]).clip(0, 1)
    assert 0.08 < otsu_threshold(values) < 0.35


def test_tissue_mask_finds_the_stained_region_and_not_glass():
    rgb = _slide()
    noise = np.random.default_rng(0).integers(-6, 7, rgb.shape)
    mask = lk.pp.tissue_mask(np.clip(rgb + noise, 0, 255).astype(np.uint8))
    truth = np.zeros((H, W), bool)
    truth[100:420, 200:520] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.98
    glass = np.full((H, W, 3), 240, np.uint8) + np.random.default_rng(1).integers(0, 8, (H, W, 3)).astype(
        np.uint8
    )
    assert not lk.pp.tissue_mask(glass).any()  # Otsu would split the noise; the floor stops it
    # a scanner's black padding beside the tissue: noise over noise in the saturation ratio
    padded = np.clip(rgb + noise, 0, 255).astype(np.uint8)
    padded[:, 560:] = np.random.default_rng(2).integers(0, 7, (H, W - 560, 3))
    mask = lk.pp.tissue_mask(padded)
    assert not mask[:, 560:].any()
    assert (mask & truth).sum() / (mask | truth).sum() > 0.98


def _tissue_only(seed: int = 0) -> np.ndarray:
    """An image wholly inside the tissue: purple nuclei (saturation ~0.55) on pale pink stroma (~0.2)."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((H, W, 3), dtype=np.float64)
    rgb[:] = (225, 180, 215)  # stroma
    nuclei = rng.random((H // 8, W // 8)) < 0.4
    rgb[np.kron(nuclei, np.ones((8, 8), dtype=bool))] = (150, 70, 160)
    return np.clip(rgb + rng.integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)


def test_tissue_mask_of_an_image_without_glass_is_all_tissue():
    """A crop inside the tissue shows no glass: Otsu's split would drop the stroma, most of the tissue."""
    rgb = _tissue_only()
    assert lk.pp.tissue_mask(rgb).mean() > 0.99
    # Otsu's threshold alone (max_glass_saturation=1) splits nuclei from stroma
    assert lk.pp.tissue_mask(rgb, max_glass_saturation=1.0).mean() < 0.6
    truth = np.zeros((H, W), bool)
    truth[100:420, 200:520] = True
    # tissue on a scanner's black padding, which is background, not a class of its own
    on_black = np.zeros_like(rgb)
    on_black[100:420, 200:520] = rgb[100:420, 200:520]
    mask = lk.pp.tissue_mask(on_black)
    assert (mask & truth).sum() / (mask | truth).sum() > 0.98
    with pytest.raises(ValueError, match=r"max_glass_saturation must be in \[0, 1\], got 1.5"):
        lk.pp.tissue_mask(rgb, max_glass_saturation=1.5)


def test_tiles_of_a_real_region_inside_the_tissue_cover_all_of_it():
    """A region cut inside a her2st section's tissue (no glass) is tiled whole, and a warning says why."""
    import spatialdata as sd
    from PIL import Image
    from spatialdata.models import Image2DModel

    path = shared_path("her2st_A", "images", "A2_HE_image_dark.png")
    region = np.asarray(Image.open(path).convert("RGB"))[900:1500, 300:1300]  # tumour and stroma only
    sdata = sd.SpatialData(
        images={"he": Image2DModel.parse(np.moveaxis(region, -1, 0), dims=("c", "y", "x"))}
    )
    with pytest.warns(
        lk.LokiWarning, match=r"sdata.images\['he'\] shows no glass .+ max_glass_saturation=1.0"
    ):
        table = lk.pp.tile_image(sdata, "he", microns_per_pixel=3.2, tile_um=55.0)
    assert table.n_obs == table.uns[Key.UNS]["tiles"]["n_candidates"]  # before: 464 of 1,972 tiles


@settings(max_examples=80, deadline=None)
@given(
    mask=arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))),
    box=st.tuples(*[st.integers(-12, 60)] * 4),
)
def test_box_fractions_are_the_covered_area_of_the_box(mask, box):
    # boxes on a quarter-pixel lattice: the mask upsampled 4x gives the covered area by counting
    x0, x1 = sorted(box[0::2])
    y0, y1 = sorted(box[1::2])
    fine = np.kron(mask, np.ones((4, 4), dtype=bool))
    cx0, cx1 = np.clip([x0, x1], 0, fine.shape[1])
    cy0, cy1 = np.clip([y0, y1], 0, fine.shape[0])
    area = (cx1 - cx0) * (cy1 - cy0)
    expected = fine[cy0:cy1, cx0:cx1].sum() / area if area > 0 else 0.0
    got = box_fractions(mask, np.array([[x0, y0, x1, y1]]) / 4.0)[0]
    assert got == pytest.approx(expected, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    mask=arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))),
    boxes=st.lists(st.tuples(*[st.integers(-5, 45)] * 4), min_size=1, max_size=30),
    sweep=st.integers(1, 8),
)
def test_box_fractions_count_the_pixels_of_many_whole_pixel_boxes(mask, boxes, sweep):
    import loki.pp._tiles as tiles

    boxes = np.array([sorted(b[0::2]) + sorted(b[1::2]) for b in boxes], dtype=np.float64)[:, [0, 2, 1, 3]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiles, "_SWEEP_ROWS", sweep)  # rows summed per step of the sweep
        got = box_fractions(mask, boxes)
    h, w = mask.shape
    for (x0, y0, x1, y1), g in zip(np.clip(boxes, 0, [w, h, w, h]).astype(int), got, strict=True):
        area = (x1 - x0) * (y1 - y0)
        assert g == (mask[y0:y1, x0:x1].sum() / area if area else 0.0)  # exact: counts, not float sums


def test_box_fractions_memory_does_not_grow_with_the_mask():
    import tracemalloc

    mask = np.zeros((3000, 2000), dtype=bool)
    mask[500:2500, 400:1600] = True
    centres = np.stack(np.meshgrid(np.arange(50, 2000, 100), np.arange(50, 3000, 100)), -1).reshape(-1, 2)
    boxes = np.hstack([centres - 50.0, centres + 50.0])
    tracemalloc.start()
    try:
        got = box_fractions(mask, boxes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < mask.nbytes / 4  # a float64 summed-area table alone would be 8x the mask
    expected = [mask[int(y0) : int(y1), int(x0) : int(x1)].mean() for x0, y0, x1, y1 in boxes]
    np.testing.assert_array_equal(got, expected)


def test_box_fractions_of_no_boxes():
    assert box_fractions(np.ones((5, 7), dtype=bool), np.zeros((0, 4))).shape == (0,)


def test_a_mask_coarser_than_the_tiles_keeps_tiles_inside_its_tissue_pixels():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [4.2, 3.0, 4.4, 3.2], [5.2, 3.0, 5.4, 3.2], [4.9, 0.0, 5.1, 1.0]])
    np.testing.assert_allclose(box_fractions(mask, boxes), [1.0, 1.0, 0.0, 0.5])


def test_tile_centres_square_and_hex_stay_inside():
    sq = tile_centres(100, 50, 10, 10, "square")
    assert len(sq) == 10 * 5
    assert sq[:, 0].min() == 5
    assert sq[:, 0].max() == 95
    assert sq[:, 1].max() == 45
    hx = tile_centres(100, 50, 10, 10, "hex")
    assert (hx[:, 0] >= 5).all()
    assert (hx[:, 0] <= 95).all()
    assert (hx[:, 1] <= 45).all()
    assert np.allclose(np.unique(hx[:, 1])[:2], [5, 5 + 10 * np.sqrt(3) / 2])
    assert len(tile_centres(5, 50, 10, 10, "square")) == 0


def test_tile_image_covers_the_tissue_only():
    sdata = _image(_slide())
    table = lk.pp.tile_image(sdata, "he", microns_per_pixel=0.5, tile_um=20.0)  # 40 px tiles
    assert table is sdata.tables["he_tiles"]
    xy = table.obsm[Key.SPATIAL] / 2  # the image has Scale 2 into "global"
    # 40 px tiles from x = 20: the tissue x 200-520 holds tiles centred at 220 .. 500 (8 columns),
    # y 100-420 those centred at 100 .. 420: the first and last rows are half tissue, and min_tissue=0.5
    # keeps a tile holding exactly half
    assert np.unique(xy[:, 0]).tolist() == list(range(220, 501, 40))
    assert np.unique(xy[:, 1]).tolist() == list(range(100, 421, 40))
    rim = np.isin(xy[:, 1], [100, 420])
    assert np.allclose(table.obs["loki_tissue_fraction"][rim], 0.5)
    assert np.allclose(table.obs["loki_tissue_fraction"][~rim], 1.0)
    assert table.uns[Key.UNS]["microns_per_unit"] == pytest.approx(0.25)
    assert (table.obs["loki_tissue_fraction"] >= 0.5).all()
    assert table.n_vars == 0
    assert table.uns[Key.UNS]["image_key"] == "he"
    attrs = {"region": "he_tiles_shapes", "region_key": "region", "instance_key": "tile_id"}
    assert table.uns["spatialdata_attrs"] == attrs
    from spatialdata.transformations import get_transformation

    assert get_transformation(sdata.shapes["he_tiles_shapes"], get_all=True).keys() == {"global"}
    bounds = sdata.shapes["he_tiles_shapes"].geometry.bounds.to_numpy() / 2
    assert np.allclose(bounds[:, 2] - bounds[:, 0], 40)
    assert np.allclose((bounds[:, 0] + bounds[:, 2]) / 2, xy[:, 0])


def test_tiles_feed_spot_patches_at_their_centres():
    sdata = _image(_pattern())
    lk.pp.tile_image(
        sdata,
        "he",
        microns_per_pixel=1.0,
        tile_um=32.0,
        spacing_um=64.0,
        mask=np.ones((H // 2, W // 2), bool),
    )
    table = sdata.tables["he_tiles"]
    assert table.n_obs == ((W - 32) // 64 + 1) * ((H - 32) // 64 + 1)
    patches = np.asarray(lk.pp.spot_patches(sdata, table_key="he_tiles", size=32, key_added=Key.PATCH_OK))
    assert table.obs[Key.PATCH_OK].all()
    centre = patches[:, 16, 16, :2].astype(float) * 4  # channels hold x // 4 and y // 4
    assert np.abs(centre - table.obsm[Key.SPATIAL] / 2).max() <= 4


def test_tile_image_hex_grid_and_min_tissue_zero_keep_every_tile():
    sdata = _image(_slide())
    table = lk.pp.tile_image(sdata, "he", microns_per_pixel=0.5, tile_um=20.0, grid="hex", min_tissue=0.0)
    assert table.n_obs == len(tile_centres(W, H, 40, 40, "hex"))
    last_row = (table.obsm[Key.SPATIAL][:, 1].max() / 2 - 20) / (40 * np.sqrt(3) / 2)
    assert table.obs["tile_row"].max() == np.rint(last_row)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_key": "nope"}, KeyError, "'he'"),
        ({"microns_per_pixel": 0.0}, ValueError, "microns_per_pixel"),
        ({"tile_um": -1.0}, ValueError, "tile_um"),
        ({"spacing_um": np.nan}, ValueError, "spacing_um"),
        ({"grid": "hexagonal"}, ValueError, "grid"),
        ({"microns_per_pixel": 50.0}, ValueError, r"A tile spans 0\.40 px"),  # a unit slip
        ({"spacing_um": 1e-3}, ValueError, r"About [\d,]+ tiles .* more than 20,000,000"),
        ({"min_tissue": 1.5}, ValueError, "min_tissue"),
        ({"mask": np.ones((10, 50), bool)}, ValueError, "aspect ratio"),
        ({"mask": np.ones((60, 80), int)}, ValueError, "boolean"),
        ({"mask": np.zeros((60, 80), bool)}, ValueError, "No tile"),
        ({"key_added": "taken"}, ValueError, "already holds"),
        ({"coordinate_system": "aligned"}, KeyError, "global"),
        ({"key_added": "he"}, ValueError, "already holds"),
        ({"key_added": "bad name!"}, ValueError, r"key_added='bad name!' is not a valid SpatialData element"),
        ({"key_added": ""}, ValueError, r"key_added='' is not a valid SpatialData element name: .*empty"),
        # a tile larger than the image (800 x 600 px at 0.5 µm per pixel), in both or one direction
        (
            {"tile_um": 500.0},
            ValueError,
            r"No tile of image 'he' fits: a tile of 500 µm spans 1000\.0 px at 0\.5 µm per pixel, and the "
            r"image is 800x600 px \(400x300 µm\)\. Pass a smaller tile_um=, or check microns_per_pixel=\.",
        ),
        ({"tile_um": 350.0, "grid": "hex"}, ValueError, r"No tile of image 'he' fits: .* 700\.0 px"),
        # a unit slip the other way: the image's size in µm is shown, not rounded to 0x0
        ({"microns_per_pixel": 1e-4}, ValueError, r"image is 800x600 px \(0\.08x0\.06 µm\)"),
    ],
)
def test_tile_image_bad_input_writes_nothing(kwargs, error, match):
    sdata = _image(_slide())
    lk.pp.tile_image(sdata, "he", microns_per_pixel=0.5, tile_um=20.0, key_added="taken")
    before = (set(sdata.shapes), set(sdata.tables))
    args = {"image_key": "he", "microns_per_pixel": 0.5, "tile_um": 20.0, **kwargs}
    with pytest.raises(error, match=match):
        lk.pp.tile_image(sdata, **args)
    assert (set(sdata.shapes), set(sdata.tables)) == before


def test_tiles_of_a_real_h_and_e_cover_its_spots():
    sdata = lk.datasets.mob("MOB4")
    spots = sdata.tables["MOB4"]
    mpu = spots.uns[Key.UNS]["microns_per_unit"]
    table = lk.pp.tile_image(sdata, "MOB4_image", microns_per_pixel=mpu, tile_um=200.0, spacing_um=100.0)
    half = 100.0 / mpu
    tiles = table.obsm[Key.SPATIAL]
    d = np.abs(spots.obsm[Key.SPATIAL][:, None, :] - tiles[None, :, :]).max(axis=2).min(axis=1)
    image = np.moveaxis(np.asarray(sdata.images["MOB4_image"]["scale0"]["image"]), 0, -1)
    xy = np.rint(spots.obsm[Key.SPATIAL]).astype(int)
    on_tissue = lk.pp.tissue_mask(image)[xy[:, 1], xy[:, 0]]
    assert on_tissue.mean() > 0.75  # the rest are selected spots on pale rims and tears
    covered = d[on_tissue] <= half
    # tiles need half their area on tissue, so spots on the tissue's rim may fall just outside them
    assert covered.mean() > 0.95, f"only {covered.mean():.1%} of MOB4's spots on tissue lie in a tile"
    assert (d[on_tissue] <= 3 * half).all(), "a spot on tissue lies more than a tile from every tile"
    # and the tiles do not spread over the glass: their convex hull is not much larger than the spots'
    from scipy.spatial import ConvexHull

    assert ConvexHull(tiles).volume < 1.5 * ConvexHull(spots.obsm[Key.SPATIAL]).volume


def _colour_features(sdata, table_key: str) -> np.ndarray:
    """Mean and spread of each channel of every tile's crop: a model-free image embedding."""
    crops = np.asarray(lk.pp.spot_patches(sdata, table_key=table_key, size=32)).astype(np.float32) / 255
    return np.hstack([crops.mean(axis=(1, 2)), crops.std(axis=(1, 2))])


def test_tiles_of_a_real_h_and_e_align_image_to_image():
    sdata = lk.datasets.mob("MOB1")
    mpu = sdata.tables["MOB1"].uns[Key.UNS]["microns_per_unit"]
    tiles = lk.pp.tile_image(sdata, "MOB1_image", microns_per_pixel=mpu, tile_um=200.0, spacing_um=100.0)
    tiles.obsm["colour"] = _colour_features(sdata, "MOB1_image_tiles")
    moved, truth = lk.datasets.transform_section(
        tiles, rotation_deg=120.0, mirror=True, translation=(300.0, -80.0), drop_fraction=0.1, seed=3
    )
    lk.tl.align(moved, target=tiles, use="colour", method="rigid")
    err = lk.metrics.alignment_error(moved.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err < 0.15, err
    assert moved.uns[Key.UNS][Key.ALIGNED]["mirror"]


def test_image_only_section_runs_every_tool():
    sdata = lk.datasets.mob("MOB4")
    mpu = sdata.tables["MOB4"].uns[Key.UNS]["microns_per_unit"]
    lk.pp.tile_image(sdata, "MOB4_image", microns_per_pixel=mpu, tile_um=200.0, key_added="he")
    model = lk.models.load("loki-tiny", device="cpu", seed=0)  # untrained: this checks the plumbing only
    lk.tl.embed_image(sdata, model, table_key="he")
    table = sdata.tables["he"]
    assert table.obsm[Key.IMAGE].shape == (table.n_obs, model.embed_dim)
    assert table.obs[Key.PATCH_OK].all()
    # the table has no genes: markers are taken as given instead of failing against an empty vocabulary
    lk.tl.annotate(sdata, {"a": ["Penk", "Nrgn"], "b": ["S100a5", "Gng13"]}, model=model, table_key="he")
    assert set(table.obs[Key.LABEL].unique()) <= {"a", "b"}
    reference = sdata.tables["MOB4"].copy()
    lk.pp.gene_sentences(reference)
    lk.tl.embed_text(reference, model)
    predicted = lk.tl.predict_expression(table, reference, top_k=10)
    assert predicted.shape == (table.n_obs, reference.n_vars)
    reference.obs["cell_type"] = np.where(np.arange(reference.n_obs) % 2, "odd", "even")
    lk.tl.decompose(
        sdata,
        table_key="he",
        reference=reference,
        cell_type_key="cell_type",
        use=Key.IMAGE,
        reference_use=Key.TEXT,
    )
    assert np.allclose(table.obsm[Key.PROPORTIONS].sum(axis=1), 1.0)


def test_single_scale_image_larger_than_the_mask_level():
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    from loki._utils._spatialdata import lowres_image

    h, w = 2600, 4200
    rgb = np.full((h, w, 3), 240, dtype=np.uint8)
    rgb[1000:2000, 1200:3200] = (190, 80, 160)
    image = Image2DModel.parse(rgb.transpose(2, 0, 1), dims=("c", "y", "x"), chunks=1024)  # one level
    sdata = sd.SpatialData(images={"wsi": image})
    small, matrix = lowres_image(image, 2048)
    assert max(small.shape[:2]) <= 2048
    assert np.diag(matrix)[:2] == pytest.approx(3.0, rel=2e-3)  # read with a stride of 3
    table = lk.pp.tile_image(sdata, "wsi", microns_per_pixel=0.5, tile_um=100.0)  # 200 px tiles
    xy = table.obsm[Key.SPATIAL]
    assert np.unique(xy[:, 0]).tolist() == list(range(1300, 3101, 200))
    assert np.unique(xy[:, 1]).tolist() == list(range(1100, 1901, 200))


def test_tiles_agree_with_space_rangers_tissue_detection():
    """A real Visium H&E (scanpy's Space Ranger fixture): Space Ranger's own in_tissue flags of 4,992
    array spots are an independent tissue call. Measured when written: 84% of in-tissue spots and 2.9%
    of the others lie in a 110 µm tile (min_tissue 0.5); the misses are pale gaps between muscle
    fibres, which Space Ranger counts as tissue."""
    import json

    import pandas as pd
    import spatialdata as sd
    from PIL import Image
    from spatialdata.models import Image2DModel

    folder = shared_path("scanpy_visium_testdata", "1.0.0", "spatial")  # skips when absent
    scale = json.loads((folder / "scalefactors_json.json").read_text())
    spots = pd.read_csv(
        folder / "tissue_positions_list.csv", header=None, names=["b", "in", "r", "c", "y", "x"]
    )
    rgb = np.asarray(Image.open(folder / "tissue_lowres_image.png").convert("RGB"))
    sdata = sd.SpatialData(images={"he": Image2DModel.parse(rgb.transpose(2, 0, 1), dims=("c", "y", "x"))})
    mpp = 55.0 / (scale["spot_diameter_fullres"] * scale["tissue_lowres_scalef"])  # a spot is 55 µm
    tiles = lk.pp.tile_image(sdata, "he", microns_per_pixel=mpp, tile_um=110.0)
    xy = spots[["x", "y"]].to_numpy() * scale["tissue_lowres_scalef"]
    d = np.abs(xy[:, None, :] - tiles.obsm[Key.SPATIAL][None]).max(axis=2).min(axis=1)
    covered = d <= 110.0 / mpp / 2
    in_tissue = spots["in"].to_numpy() == 1
    assert covered[in_tissue].mean() > 0.8
    assert covered[~in_tissue].mean() < 0.05


def test_spatialdata_plot_draws_the_tiles_over_the_image():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    sdata = _image(_slide())
    table = lk.pp.tile_image(sdata, "he", microns_per_pixel=0.5, tile_um=20.0)
    fig, ax = plt.subplots()
    (
        sdata.pl.render_images("he")
        .pl.render_shapes("he_tiles_shapes", color="loki_tissue_fraction", table_name="he_tiles")
        .pl.show(ax=ax, coordinate_systems="global")
    )
    assert len(ax.images) == 1
    drawn = [c for c in ax.collections if len(c.get_paths()) == table.n_obs]
    assert len(drawn) == 1
    # every drawn square sits on a tile centre (in "global", the image's Scale 2) with the tile's side
    centres = np.array([p.vertices[:4].mean(0) for p in drawn[0].get_paths()])
    d = np.linalg.norm(centres[:, None] - table.obsm[Key.SPATIAL][None], axis=2).min(1)
    assert d.max() < 1.0
    widths = np.array([np.ptp(p.vertices[:, 0]) for p in drawn[0].get_paths()])
    np.testing.assert_allclose(widths, 80.0, rtol=0.02)
    plt.close(fig)


def test_mask_level_of_a_factor_4_pyramid_is_read_with_a_stride():
    """A scanner's pyramid (factor 4) has no level between 1,024 and 2,048 px: the 2,400 px level is
    read every second pixel rather than the 600 px level used, which would give a coarser mask."""
    import dask.array as da
    import xarray as xr
    from spatialdata.transformations import Identity, set_transformation

    from loki._utils._spatialdata import lowres_image

    rgb = np.zeros((3, 9600, 9600), np.uint8)
    levels = [da.from_array(rgb, chunks=(3, 2400, 2400))]
    levels += [levels[0][:, ::4, ::4], levels[0][:, ::16, ::16]]
    tree = xr.DataTree.from_dict(
        {
            f"scale{i}": xr.Dataset({"image": xr.DataArray(lv, dims=("c", "y", "x"))})
            for i, lv in enumerate(levels)
        }
    )
    set_transformation(tree, {"global": Identity()}, set_all=True)
    small, matrix = lowres_image(tree, 2048)
    assert small.shape == (1200, 1200, 3)
    assert np.diag(matrix)[:2] == pytest.approx(8.0)
    # returned pixel k is the 2,400 px level's pixel 2k: its centre (k + 0.5) maps to that pixel's
    # centre in the finest level, 4 * (2k + 0.5), not to the middle of the two pixels it stands for
    k = 7.0
    np.testing.assert_allclose(matrix @ [k + 0.5, k + 0.5, 1.0], [4 * (2 * k + 0.5)] * 2 + [1.0])
    assert lowres_image(tree, 600)[0].shape == (600, 600, 3)  # a level that fits is taken as it is
    assert lowres_image(tree, 100_000)[0].shape == (9600, 9600, 3)  # smaller than max_side: the finest


def test_pixel_size_of_a_section_image_comes_from_its_table():
    """No microns_per_pixel needed for a reader's image: 55 µm tiles on a real Visium hires image span
    one spot diameter there (Space Ranger's scale factors), and MOB4's tiles equal those with the value
    passed."""
    import json

    folder = shared_path("scanpy_visium_testdata", "1.0.0")
    scalefactors = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    sdata = lk.io.read_visium(folder, dataset_id="V1")
    tiles = lk.pp.tile_image(sdata, "V1_hires_image", tile_um=55.0, min_tissue=0.0)
    spot_px = scalefactors["spot_diameter_fullres"] * scalefactors["tissue_hires_scalef"]
    assert 55.0 / tiles.uns["loki"]["tiles"]["microns_per_pixel"] == pytest.approx(spot_px, rel=1e-6)

    mob = lk.datasets.mob("MOB4")
    implicit = lk.pp.tile_image(mob, "MOB4_image", tile_um=200, key_added="a")
    mpu = mob.tables["MOB4"].uns["loki"]["microns_per_unit"]
    explicit = lk.pp.tile_image(mob, "MOB4_image", tile_um=200, microns_per_pixel=mpu, key_added="b")
    np.testing.assert_array_equal(implicit.obsm[Key.SPATIAL], explicit.obsm[Key.SPATIAL])


def test_tiles_within_annotated_regions_of_a_real_slide(tmp_path):
    """A QuPath-style GeoJSON export (polygons in full-resolution pixels, with a classification) over
    MOB4's real H&E keeps the tissue tiles whose centre lies in a region, and names it."""
    import geopandas as gpd
    import shapely
    from shapely.geometry import Polygon
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    sdata = lk.datasets.mob("MOB4")
    every = lk.pp.tile_image(sdata, "MOB4_image", tile_um=200, key_added="every")
    outer = Polygon([(300, 300), (1000, 300), (1000, 1500), (300, 1500)])
    inner = Polygon([(600, 600), (1400, 600), (1400, 1000), (600, 1000)])  # overlaps outer
    exported = gpd.GeoDataFrame({"classification": ["mitral", "granule"]}, geometry=[outer, inner])
    exported.to_file(tmp_path / "annotations.geojson", driver="GeoJSON")
    regions = gpd.read_file(tmp_path / "annotations.geojson")
    sdata.shapes["annotations"] = ShapesModel.parse(regions, transformations={"global": Identity()})

    tiles = lk.pp.tile_image(sdata, "MOB4_image", tile_um=200, within="annotations", key_added="inside")
    xy = every.obsm[Key.SPATIAL]
    in_outer = shapely.contains_xy(outer, xy[:, 0], xy[:, 1])
    in_inner = shapely.contains_xy(inner, xy[:, 0], xy[:, 1])
    assert 10 < tiles.n_obs == int((in_outer | in_inner).sum()) < every.n_obs
    np.testing.assert_array_equal(tiles.obsm[Key.SPATIAL], xy[in_outer | in_inner])
    expected = np.where(in_outer, "0", "1")[in_outer | in_inner]  # the first region where both hold a tile
    assert tiles.obs["annotations_id"].astype(str).tolist() == expected.tolist()
    labels = regions["classification"].to_numpy()[tiles.obs["annotations_id"].astype(int)]
    assert set(labels) == {"mitral", "granule"}
    assert tiles.uns[Key.UNS]["tiles"]["within"] == "annotations"
    # listed the other way round, the overlap goes to the other region: the first listed wins
    sdata.shapes["reversed"] = ShapesModel.parse(
        gpd.read_file(tmp_path / "annotations.geojson").iloc[::-1].reset_index(drop=True),
        transformations={"global": Identity()},
    )
    flipped = lk.pp.tile_image(sdata, "MOB4_image", tile_um=200, within="reversed", key_added="flipped")
    expected = np.where(in_inner, "0", "1")[in_outer | in_inner]
    assert flipped.obs["reversed_id"].astype(str).tolist() == expected.tolist()


def test_tiles_within_circles_in_another_unit():
    """Regions drawn in another coordinate frame (circles in half-pixels, Scale 0.5 into 'global') are
    matched after their transformation; the image itself has Scale 2."""
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale

    sdata = _image(_slide())  # tissue x 200-520, y 100-420 image pixels = 400-1040, 200-840 in 'global'
    # centres (720, 520) and (500, 300) in 'global', radii 100 and 45 there (tiles 28 and 63 from the second)
    circles = gpd.GeoDataFrame({"radius": [200.0, 90.0]}, geometry=[Point(1440, 1040), Point(1000, 600)])
    sdata.shapes["roi"] = ShapesModel.parse(
        circles, transformations={"global": Scale([0.5, 0.5], axes=("x", "y"))}
    )
    every = lk.pp.tile_image(sdata, "he", microns_per_pixel=0.5, tile_um=20.0, key_added="every")
    tiles = lk.pp.tile_image(
        sdata, "he", microns_per_pixel=0.5, tile_um=20.0, within="roi", key_added="roi_tiles"
    )
    xy = every.obsm[Key.SPATIAL]
    big, small = np.linalg.norm(xy - [720, 520], axis=1) <= 100, np.linalg.norm(xy - [500, 300], axis=1) <= 45
    assert small.sum() > 0
    assert 0 < tiles.n_obs == int((big | small).sum()) < every.n_obs
    assert tiles.obs["roi_id"].astype(str).tolist() == np.where(big, "0", "1")[big | small].tolist()

    n_tables = len(sdata.tables)
    sdata.shapes["far"] = ShapesModel.parse(
        gpd.GeoDataFrame({"radius": [10.0]}, geometry=[Point(0, 0)]),
        transformations={"global": Scale([0.5, 0.5], axes=("x", "y"))},
    )
    with pytest.raises(ValueError, match=r"centre in sdata.shapes\['far'\].*0 tiles inside"):
        lk.pp.tile_image(sdata, "he", microns_per_pixel=0.5, tile_um=20.0, within="far", key_added="x")
    with pytest.raises(KeyError, match=r"'nowhere' not found in sdata.shapes; available: .*'roi'"):
        lk.pp.tile_image(sdata, "he", microns_per_pixel=0.5, tile_um=20.0, within="nowhere", key_added="x")
    assert len(sdata.tables) == n_tables
    assert "x_shapes" not in sdata.shapes


def test_pixel_size_from_a_table_is_the_same_in_every_coordinate_system():
    """After an alignment the image is placed in another coordinate system too (here scaled 3x); its
    pixels keep their size. Also when only the image, not its spots, has that system."""
    from spatialdata.transformations import Scale, Sequence, get_transformation, set_transformation

    from loki._utils._spatialdata import recorded_microns_per_pixel

    sdata = lk.datasets.mob("MOB4")
    expected = sdata.tables["MOB4"].uns["loki"]["microns_per_unit"]  # MOB4's image has Identity into 'global'
    for element in (sdata.images["MOB4_image"], sdata.shapes["MOB4_spots"]):
        moved = Sequence([get_transformation(element, "global"), Scale([3.0, 3.0], axes=("x", "y"))])
        set_transformation(element, moved, to_coordinate_system="aligned")
        for cs in ("global", "aligned"):
            assert recorded_microns_per_pixel(sdata, "MOB4_image", cs) == pytest.approx(expected)
    tiles = lk.pp.tile_image(sdata, "MOB4_image", tile_um=200, coordinate_system="aligned")
    assert tiles.uns["loki"]["tiles"]["microns_per_pixel"] == pytest.approx(expected)
    assert tiles.uns["loki"]["microns_per_unit"] == pytest.approx(expected / 3)


def test_a_section_outside_global_needs_no_coordinate_system_argument():
    """Tiles laid in a slide's own coordinate system, then embedded and drawn without naming it: each
    call defaulted to 'global' and failed ("'global' not found ...; available: 'slide'")."""
    from spatialdata.transformations import get_transformation, remove_transformation, set_transformation

    sdata = lk.datasets.mob("MOB4")
    for element in (sdata.images["MOB4_image"], sdata.shapes["MOB4_spots"]):
        set_transformation(element, get_transformation(element, "global"), "slide")
        remove_transformation(element, "global")
    tiles = lk.pp.tile_image(sdata, "MOB4_image", tile_um=200)
    assert tiles.uns["loki"]["tiles"]["coordinate_system"] == "slide"
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    lk.tl.embed_image(sdata, model, table_key="MOB4_image_tiles", progress=False)
    assert sdata.tables["MOB4_image_tiles"].uns["loki"][Key.IMAGE]["coordinate_system"] == "slide"
    import matplotlib.pyplot as plt

    fig = lk.pl.expression(sdata, "Penk", table_key="MOB4", layer_predicted=None, show=False)
    assert fig.axes[0].get_images()  # the image drawn under the spots, placed in 'slide'
    plt.close(fig)
