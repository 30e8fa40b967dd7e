from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from spatialdata.transformations import Identity, Scale, get_transformation
from tests.conftest import shared_path

import loki as lk
from loki.io._geometry import (
    array_to_pixel_fit,
    axis_scales,
    is_checkerboard,
    scale_of,
)
from loki.io._image import pyramid_scale_factors


def _grid(nx: int = 6, ny: int = 5, checkerboard: bool = False) -> np.ndarray:
    xy = np.array([(x, y) for x in range(1, nx + 1) for y in range(1, ny + 1)], dtype=float)
    if checkerboard:
        xy = xy[(xy.sum(1) % 2) == 0]
    return xy


def _affine(array_xy: np.ndarray, scale: float, angle: float, shift=(30.0, 40.0)) -> np.ndarray:
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return array_xy @ (scale * rot).T + np.asarray(shift)


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(0.5, 500.0),
    angle=st.floats(-np.pi, np.pi),
    seed=st.integers(0, 2**31 - 1),
)
def test_scale_of_the_fit_recovers_scale_under_rotation_noise_and_an_outlier(scale, angle, seed):
    rng = np.random.default_rng(seed)
    arr = _grid(8, 7)
    pix = _affine(arr, scale, angle) + rng.normal(0, 0.01 * scale, size=arr.shape)
    pix[3] += 20 * scale  # one misplaced spot
    assert scale_of(array_to_pixel_fit(arr, pix)) == pytest.approx(scale, rel=0.02)


def test_scale_of_the_fit_is_geometric_mean_of_anisotropic_scales():
    arr = _grid()
    pix = arr * np.array([20.0, 45.0])
    assert scale_of(array_to_pixel_fit(arr, pix)) == pytest.approx(30.0)


def test_scale_of_the_fit_rejects_collinear_spots():
    arr = np.c_[np.arange(5.0), np.zeros(5)]
    with pytest.raises(ValueError, match="not on one line"):
        array_to_pixel_fit(arr, arr * 3)


@pytest.mark.parametrize(
    ("shape", "levels"), [((1905, 1905), 1), ((2138, 2000), 2), ((7435, 6954), 3), ((100, 80), 1)]
)
def test_pyramid_scale_factors(shape, levels):
    factors = pyramid_scale_factors(shape)
    assert factors == [2] * levels
    assert max(shape) // 2 ** (levels - 1) >= min(512, max(shape))


def test_is_checkerboard():
    assert is_checkerboard(_grid(8, 8, checkerboard=True))
    assert not is_checkerboard(_grid(8, 8))


def _toy(n_genes: int = 4, px_per_unit: float = 20.0):
    """A 6x5 square-grid array, 1k layout; spots with x <= 2 are off tissue."""
    arr = _grid()
    ids = [f"{int(x)}x{int(y)}" for x, y in arr]
    spots = pd.DataFrame(
        {
            "x": arr[:, 0].astype(int),
            "y": arr[:, 1].astype(int),
            "pixel_x": arr[:, 0] * px_per_unit + 5,
            "pixel_y": arr[:, 1] * px_per_unit + 7,
            "selected": (arr[:, 0] > 2).astype(int),
        }
    )
    rng = np.random.default_rng(0)
    counts = pd.DataFrame(
        rng.poisson(3, size=(len(ids), n_genes)), index=ids, columns=[f"G{i}" for i in range(n_genes)]
    )
    image = np.full((160, 150, 3), 200, dtype=np.uint8)
    return counts, spots, image


def test_read_legacy_st_builds_the_section_layout():
    counts, spots, image = _toy()
    counts_before, spots_before = counts.copy(), spots.copy()
    sdata = lk.io.read_legacy_st(counts, spots, image, name="S")
    pd.testing.assert_frame_equal(counts, counts_before)  # inputs are left untouched
    pd.testing.assert_frame_equal(spots, spots_before)
    assert set(sdata.images) == {"S_image"}
    assert set(sdata.shapes) == {"S_spots"}
    assert set(sdata.tables) == {"S"}
    table = sdata.tables["S"]
    selected = spots.loc[spots["selected"] == 1]
    assert table.n_obs == len(selected)
    assert list(table.var_names) == list(counts.columns)
    assert sparse.issparse(table.X)
    assert table.X.format == "csr"
    assert table.X.dtype == np.float32
    np.testing.assert_array_equal(table.X.toarray(), counts.loc[table.obs_names].to_numpy())
    np.testing.assert_allclose(table.obsm["spatial"], selected[["pixel_x", "pixel_y"]].to_numpy())
    assert table.obs["region"].dtype == "category"
    assert set(table.obs["region"]) == {"S_spots"}
    assert table.uns["spatialdata_attrs"]["region"] == "S_spots"
    assert table.obs["in_tissue"].all()
    np.testing.assert_array_equal(table.obs["array_col"], selected["x"])
    # 20 px per 200 µm array unit -> 10 µm per pixel; 100 µm spots -> radius 5 px
    uns = table.uns["loki"]
    assert uns["microns_per_unit"] == pytest.approx(10.0)
    assert uns["spot_diameter_um"] == 100.0
    assert uns["image_key"] == "S_image"
    shapes = sdata.shapes["S_spots"]
    np.testing.assert_allclose(shapes["radius"], 5.0)
    assert list(shapes.index) == list(table.obs["spot_id"])
    np.testing.assert_allclose(np.c_[shapes.geometry.x, shapes.geometry.y], table.obsm["spatial"])
    assert isinstance(get_transformation(sdata.images["S_image"], "global"), Identity)
    assert isinstance(get_transformation(shapes, "global"), Identity)
    level0 = sdata.images["S_image"]["scale0"]["image"]
    assert level0.dtype == np.uint8
    assert level0.shape == (3, 160, 150)
    assert list(level0.coords["c"].values) == ["r", "g", "b"]


def test_read_legacy_st_image_scale_maps_image_pixels_to_full_resolution():
    counts, spots, image = _toy()
    sdata = lk.io.read_legacy_st(counts, spots, image, name="S", image_scale=0.25, coordinate_system="cs")
    tr = get_transformation(sdata.images["S_image"], "cs")
    assert isinstance(tr, Scale)
    # image pixel (x=10, y=20) -> full-res (40, 80)
    m = tr.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    np.testing.assert_allclose(m @ [10, 20, 1], [40, 80, 1])


def test_read_legacy_st_keeps_all_spots_and_no_image_when_asked():
    counts, spots, _ = _toy()
    sdata = lk.io.read_legacy_st(counts, spots, name="S", selected_only=False)
    assert len(sdata.images) == 0
    assert sdata.tables["S"].n_obs == len(counts)
    assert "image_key" not in sdata.tables["S"].uns["loki"]


def test_read_legacy_st_reads_files(tmp_path):
    counts, spots, image = _toy()
    counts.to_csv(tmp_path / "c.tsv.gz", sep="\t")
    spots.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "im.png")
    sdata = lk.io.read_legacy_st(tmp_path / "c.tsv.gz", tmp_path / "s.tsv", tmp_path / "im.png", name="S")
    ref = lk.io.read_legacy_st(counts, spots, image, name="S")
    np.testing.assert_array_equal(sdata.tables["S"].X.toarray(), ref.tables["S"].X.toarray())
    np.testing.assert_array_equal(
        sdata.images["S_image"]["scale0"]["image"].values, ref.images["S_image"]["scale0"]["image"].values
    )


def test_read_legacy_st_errors_are_clear():
    counts, spots, image = _toy()
    with pytest.raises(KeyError, match=r"lacks column\(s\) \['pixel_x'\].*'pixel_y'"):
        lk.io.read_legacy_st(counts, spots.drop(columns="pixel_x"), name="S")
    extra = pd.concat([counts, counts.iloc[:1].rename(index={counts.index[0]: "99x99"})])
    with pytest.raises(ValueError, match=r"1 of 31 spot\(s\) of the counts table are missing.*'99x99'"):
        lk.io.read_legacy_st(extra, spots, name="S", selected_only=False)
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        lk.io.read_legacy_st(counts, spots, "nope.jpg", name="S")
    with pytest.raises(FileNotFoundError, match=r"counts\.tsv"):
        lk.io.read_legacy_st("counts.tsv", spots, name="S")
    with pytest.raises(ValueError, match="spot_diameter_um"):
        lk.io.read_legacy_st(counts, spots, name="S", spot_diameter_um=0)
    bad = spots.copy()
    bad.loc[3, "pixel_x"] = np.nan
    with pytest.raises(ValueError, match=r"pixel_x/pixel_y contains 1 non-finite"):
        lk.io.read_legacy_st(counts, bad, name="S")
    # a float image with values 0-1.33 could be [0, 1] or a nearly black [0, 255]
    with pytest.raises(ValueError, match=r"image array: a float64 image with values .* neither \[0, 1\]"):
        lk.io.read_legacy_st(counts, spots, image / 150.0, name="S")


def test_read_legacy_st_drops_unplaced_spots_when_filtering_selected(caplog):
    counts, spots, _ = _toy()
    extra = pd.concat([counts, counts.iloc[:1].rename(index={counts.index[0]: "99x99"})])
    with caplog.at_level("INFO", logger="loki"):
        sdata = lk.io.read_legacy_st(extra, spots, name="S")
    assert "99x99" not in sdata.tables["S"].obs_names
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "1 of 31 spot(s) of the counts table are not in the spot file" in m and "99x99" in m for m in warned
    )


def test_read_legacy_st_refuses_counts_and_spot_file_of_different_sections(tmp_path, caplog, recwarn):
    counts, spots, _ = _toy()
    other = counts.set_axis([f"{int(x) + 5}x{y}" for x, y in (i.split("x") for i in counts.index)], axis=0)
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    with caplog.at_level("WARNING", logger="loki"), pytest.raises(ValueError, match="barely overlap") as err:
        lk.io.read_legacy_st(other, tmp_path / "spots.tsv", name="S")
    assert "counts DataFrame" in str(err.value)
    assert repr(str(tmp_path / "spots.tsv")) in str(err.value)
    assert not caplog.records  # nothing logged by a call that fails
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]  # nor warned


def test_read_legacy_st_refuses_her2st_counts_with_a_mob_spot_file():
    her2st, mob = shared_path("her2st_A"), shared_path("stutility_mob")
    counts, spots = her2st / "counts" / "A1.tsv.gz", mob / "alignment_table_MOB1.tsv"
    with pytest.raises(
        ValueError, match=r"only 23 of the 346 counts spots .* only 23 of its 379 selected"
    ) as err:
        lk.io.read_legacy_st(counts, spots, name="A1")
    assert repr(str(counts)) in str(err.value)
    assert repr(str(spots)) in str(err.value)


def test_read_legacy_st_says_when_counts_are_transposed():
    counts, spots, _ = _toy()
    for selected_only in (True, False):
        with pytest.raises(ValueError, match=r"counts look transposed \(genes x spots\).*counts\.T"):
            lk.io.read_legacy_st(counts.T, spots, name="S", selected_only=selected_only)


def test_read_legacy_st_makes_repeated_gene_names_unique_like_scanpy(tmp_path, caplog):
    counts, spots, _ = _toy(n_genes=5)
    counts.columns = ["G0", "G0", "G0.1", "G2", "G0"]  # "G0.1" is what pandas would call the 2nd "G0"
    counts.to_csv(tmp_path / "c.tsv.gz", sep="\t")
    expected = ["G0", "G0-1", "G0.1", "G2", "G0-2"]
    for source in (counts, tmp_path / "c.tsv.gz"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="loki"):
            table = lk.io.read_legacy_st(source, spots, name="S").tables["S"]
        assert list(table.var_names) == expected
        np.testing.assert_array_equal(table.X.toarray(), counts.loc[table.obs_names].to_numpy())
        assert "1 gene name(s) occur more than once (2 name(s) renamed" in caplog.text


def test_read_legacy_st_checks_section_names_up_front(caplog, recwarn):
    counts, spots, _ = _toy()
    keep = ((spots["x"] + spots["y"]) % 2 == 0).to_numpy()  # would give the checkerboard warning
    with caplog.at_level("WARNING", logger="loki"):
        with pytest.raises(ValueError, match=r"name='MOB 1' is not a valid SpatialData element name"):
            lk.io.read_legacy_st(counts[keep], spots[keep], name="MOB 1")
        with pytest.raises(ValueError, match=r"Section name 'MOB 1' \(a key of `sections`\) is not a valid"):
            lk.io.read_legacy_st_sections({"A": (counts, spots), "MOB 1": (counts, spots)})
    assert not caplog.records
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_read_legacy_st_sections_says_what_a_section_is():
    with pytest.raises(
        ValueError, match=r"Section 'a' must be a tuple \(counts, spots\).*or a dict .*got a str 'x.tsv'"
    ):
        lk.io.read_legacy_st_sections({"a": "x.tsv"})
    counts, spots, _ = _toy()
    with pytest.raises(ValueError, match="got a DataFrame"):
        lk.io.read_legacy_st_sections({"a": counts})
    with pytest.raises(ValueError, match="got 1 items"):
        lk.io.read_legacy_st_sections({"a": (counts,)})


def test_read_legacy_st_records_the_centre_to_centre_spacing():
    counts, spots, _ = _toy()
    square = lk.io.read_legacy_st(counts, spots, name="S").tables["S"].uns["loki"]
    assert square["spot_spacing_um"] == pytest.approx(200.0)  # 1k array: neighbours one 200 µm step apart
    keep = ((spots["x"] + spots["y"]) % 2 == 0).to_numpy()
    checker = lk.io.read_legacy_st(counts[keep], spots[keep], name="S", array_step_um=100.0)
    uns = checker.tables["S"].uns["loki"]
    # 2k array: 100 µm array steps, neighbours diagonal
    assert uns["spot_spacing_um"] == pytest.approx(100.0 * np.sqrt(2.0))
    assert set(uns) <= set(lk.Key.SECTION_METADATA)


def test_read_legacy_st_warns_of_anisotropic_spot_pixels(caplog):
    counts, spots, _ = _toy()
    spots["pixel_y"] = spots["y"] * 23.0 + 7  # 20 px per step along x, 23 along y: 15 % apart
    with caplog.at_level("WARNING", logger="loki"):
        table = lk.io.read_legacy_st(counts, spots, name="S").tables["S"]
    assert "20.00 px per array step along x but 23.00 along y (15% apart, more than 5%)" in caplog.text
    assert table.uns["loki"]["microns_per_unit"] == pytest.approx(
        200.0 / np.sqrt(20.0 * 23.0)
    )  # fit unchanged
    caplog.clear()
    spots["pixel_y"] = spots["y"] * 20.8 + 7  # 4 % apart: below the threshold
    with caplog.at_level("WARNING", logger="loki"):
        lk.io.read_legacy_st(counts, spots, name="S")
    assert "per array step" not in caplog.text


def test_axis_scales_of_the_fit():
    arr = _grid()
    linear = array_to_pixel_fit(arr, _affine(arr * np.array([20.0, 45.0]), 1.0, 0.7))
    assert axis_scales(linear) == pytest.approx((20.0, 45.0))


def test_reader_docstrings_say_how_to_plot_with_squidpy_and_what_they_raise():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    counts, spots, _ = _toy()
    table = lk.io.read_legacy_st(counts, spots, name="S").tables["S"]
    sq.pl.spatial_scatter(table, shape=None, color="G0")  # the call the docstrings give
    plt.close("all")
    for reader in (lk.io.read_legacy_st, lk.io.read_visium):
        assert "sq.pl.spatial_scatter(table, shape=None" in " ".join(reader.__doc__.split())
    assert "Raises\n    ------" in lk.io.read_legacy_st.__doc__


def test_read_legacy_st_warns_on_checkerboard_with_1k_spacing():
    counts, spots, _ = _toy()
    keep = ((spots["x"] + spots["y"]) % 2 == 0).to_numpy()
    with pytest.warns(UserWarning, match="array_step_um=100") as record:
        lk.io.read_legacy_st(counts[keep], spots[keep], name="S")
    assert [w.filename for w in record if "checkerboard" in str(w.message)] == [__file__]  # the caller's line


def test_read_legacy_st_warns_when_spot_centres_fall_outside_the_image():
    counts, spots, image = _toy()
    with pytest.warns(
        UserWarning, match=r"section 'S': 17 of 20 spot centres fall outside the 150x160 image"
    ):
        lk.io.read_legacy_st(counts, spots, image, name="S", image_scale=2.0)  # pixels twice the image's


def test_a_comma_separated_spot_file_is_named_as_such(tmp_path):
    counts, spots, _ = _toy()
    path = tmp_path / "spots.csv"
    spots.to_csv(path, index=False)
    with pytest.raises(
        KeyError, match=r"The file looks comma-separated; loki reads tab-separated spot files"
    ):
        lk.io.read_legacy_st(counts, path, name="S")


def test_read_legacy_st_refuses_spots_none_of_which_is_on_the_image():
    # another section's spot file (or image) was read with a warning, every patch then failing
    counts, spots, image = _toy()
    with pytest.raises(
        ValueError, match=r"section 'S': none of the 20 spot centres falls on the 150x160 image"
    ):
        lk.io.read_legacy_st(counts, spots, image, name="S", image_scale=20.0)


def test_read_legacy_st_sections_merges_with_per_section_options():
    counts, spots, image = _toy()
    sdata = lk.io.read_legacy_st_sections(
        {
            "A": (counts, spots, image),
            "B": {"counts": counts, "spots": spots, "image": image, "image_scale": 0.5},
        },
        spot_diameter_um=55.0,
    )
    assert set(sdata.tables) == {"A", "B"}
    assert set(sdata.shapes) == {"A_spots", "B_spots"}
    assert set(sdata.images) == {"A_image", "B_image"}
    assert sdata.tables["B"].uns["loki"]["spot_diameter_um"] == 55.0
    assert isinstance(get_transformation(sdata.images["B_image"], "global"), Scale)
    assert isinstance(get_transformation(sdata.images["A_image"], "global"), Identity)
    with pytest.raises(KeyError, match="lacks"):
        lk.io.read_legacy_st_sections({"A": {"counts": counts}})
    with pytest.raises(TypeError, match="from the keys of `sections`; got name="):
        lk.io.read_legacy_st_sections({"A": (counts, spots)}, name="x")
    with pytest.raises(TypeError, match="got a 'name' in section 'A'"):
        lk.io.read_legacy_st_sections({"A": {"counts": counts, "spots": spots, "name": "B"}})


def _values_at_spots(sdata, name: str, image_scale: float = 1.0) -> np.ndarray:
    img = sdata.images[f"{name}_image"]["scale0"]["image"].values
    xy = np.round(sdata.tables[name].obsm["spatial"] * image_scale).astype(int)
    return img[:, xy[:, 1], xy[:, 0]].astype(float).mean(0)


def test_read_legacy_st_real_mob_section():
    d = shared_path("stutility_mob")
    sdata = lk.io.read_legacy_st(
        d / "MOB1.tsv", d / "alignment_table_MOB1.tsv", d / "MOB1.jpg", name="MOB1", array_step_um=100.0
    )
    table = sdata.tables["MOB1"]
    assert table.n_obs == 379
    assert table.n_vars == 1000
    assert table.var_names[0].startswith("ENSMUSG")  # the reader does not map ids
    # 2k array: ~21.6 x 24.0 px per 100 µm array unit on this 1905 px image
    assert table.uns["loki"]["microns_per_unit"] == pytest.approx(4.39, abs=0.05)
    # spot centres lie on the tissue, which is darker than the glass around it
    img = sdata.images["MOB1_image"]["scale0"]["image"].values.astype(float).mean(0)
    on_spots = _values_at_spots(sdata, "MOB1")
    assert np.median(on_spots) < np.median(img) - 15


def test_read_legacy_st_real_her2st_section_with_downscaled_image():
    d = shared_path("her2st_A")
    scale = 2000 / 6954
    sdata = lk.io.read_legacy_st(
        d / "counts" / "A1.tsv.gz",
        d / "spotfiles" / "A1_selection.tsv",
        d / "images" / "A1_HE_image_dark.png",
        name="A1",
        image_scale=scale,
    )
    table = sdata.tables["A1"]
    assert table.n_obs == 346
    assert table.uns["loki"]["microns_per_unit"] == pytest.approx(0.92, abs=0.03)
    # the dark png has a black background: spot centres (mapped into image pixels) are on tissue
    assert (_values_at_spots(sdata, "A1", scale) > 40).mean() > 0.95


def test_read_legacy_st_says_when_counts_and_spots_are_swapped():
    """A counts table given as the spot file is named as such, without listing all its genes."""
    mob = shared_path("stutility_mob")
    with pytest.raises(
        KeyError, match=r"were counts and spots swapped\? read_legacy_st takes \(counts, spots"
    ) as err:
        lk.io.read_legacy_st(mob / "alignment_table_MOB1.tsv", mob / "MOB1.tsv", name="MOB1")
    message = str(err.value)
    assert len(message) < 600
    assert "its columns are 1001: ['Unnamed: 0', 'ENSMUSG00000064339.1'" in message
    counts, spots, _ = _toy()  # a spot file with a column missing still lists its few columns, no hint
    with pytest.raises(KeyError, match=r"lacks column\(s\) \['pixel_x'\]; its columns are \['x', ") as err:
        lk.io.read_legacy_st(counts, spots.drop(columns="pixel_x"), name="S")
    assert "swapped" not in str(err.value)


def _cut(path, keep: float = 1 / 3):
    """``path`` with only its first bytes (a failed download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("argument", "spoil", "reader_words", "expected"),
    [
        ("counts", "npz", "'utf-8' codec can't decode", "a tab-separated table of spots x genes counts"),
        ("counts", "cut gz", "Compressed file ended", "a tab-separated table of spots x genes counts"),
        (
            "spots",
            "empty",
            "the file is empty",
            "a tab-separated spot file with columns x, y, pixel_x, pixel_y",
        ),
        ("image", "cut jpg", "image file is truncated", "an image file (jpg, png or tif)"),
        ("image", "text", "cannot identify image file", "an image file (jpg, png or tif)"),
    ],
)
def test_read_legacy_st_names_the_argument_and_file_it_cannot_read(
    tmp_path, argument, spoil, reader_words, expected
):
    """The old reader failed in pandas' or PIL's words ('No columns to parse from file'), naming no file."""
    from PIL import Image

    counts, spots, image = _toy()
    files = {"counts": tmp_path / "c.tsv", "spots": tmp_path / "s.tsv", "image": tmp_path / "im.jpg"}
    counts.to_csv(files["counts"], sep="\t")
    spots.to_csv(files["spots"], sep="\t", index=False)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)).save(
        files["image"]
    )
    if spoil == "npz":
        files["counts"] = tmp_path / "c.npz"
        sparse.save_npz(files["counts"], sparse.csr_matrix(counts.to_numpy()))
    elif spoil == "cut gz":
        files["counts"] = tmp_path / "c.tsv.gz"
        pd.concat([counts] * 50).to_csv(files["counts"], sep="\t")  # long enough to be cut inside the stream
        _cut(files["counts"], 1 / 2)
    elif spoil == "empty":
        files["spots"].write_text("")
    elif spoil == "cut jpg":
        _cut(files["image"])
    else:
        files["image"] = tmp_path / "im.png"
        files["image"].write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot be read \(") as err:
        lk.io.read_legacy_st(files["counts"], files["spots"], files["image"], name="S")
    message = str(err.value)
    assert message.startswith(f"{argument}={str(files[argument])!r} cannot be read (")
    assert reader_words in message
    assert f"; expected {expected}" in message
    assert err.value.__cause__ is not None  # the reader's own error, for a traceback


def _pandas_counts(path, monkeypatch):
    """The counts table as pandas reads it (the reader without its plain-file parser)."""
    from loki.io import _legacy_st

    with monkeypatch.context() as m:
        m.setattr(_legacy_st, "_read_plain_counts", lambda path: None)
        return _legacy_st._read_counts(path)


_HEADER = "\tG1\tGène 2\tG1\tG1.1\tNA\n"  # repeated names, a space, a non-ASCII letter, "NA"
_ROWS = "10x13\t0\t6\t1\t0\t-2\n11x13\t3\t0\t0\t12\t1\n"


@pytest.mark.parametrize(
    ("text", "suffix"),
    [
        (_HEADER + _ROWS, ".tsv.gz"),
        (_HEADER + _ROWS, ".tsv"),
        ("spot" + _HEADER + _ROWS, ".tsv"),  # the index column named
        (_HEADER[1:] + _ROWS, ".tsv"),  # R's write.table: no header field for the row names
        (_HEADER + _ROWS.rstrip("\n"), ".tsv"),  # no newline at the end
        (_HEADER + _ROWS + "\n\n", ".tsv"),  # blank lines at the end
    ],
)
def test_plain_counts_files_are_parsed_to_the_table_pandas_reads(tmp_path, monkeypatch, text, suffix):
    from loki.io._legacy_st import _read_counts, _read_plain_counts

    path = tmp_path / f"c{suffix}"
    if suffix.endswith(".gz"):
        import gzip

        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    assert _read_plain_counts(path) is not None  # the fast parser takes it
    expected = _pandas_counts(path, monkeypatch)
    got = _read_counts(path)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got.index.name == expected.index.name
    assert list(got.columns) == ["G1", "Gène 2", "G1", "G1.1", "NA"]  # as written, not pandas' "G1.1"


@pytest.mark.parametrize(
    "text",
    [
        '\t"G1"\t"G2"\n10x13\t0\t6\n11x13\t3\t0\n',  # quoted names (pandas unquotes them)
        "\tG1\tG2\r\n10x13\t0\t6\r\n11x13\t3\t0\r\n",  # Windows line ends
        "\ufeff\tG1\tG2\n10x13\t0\t6\n11x13\t3\t0\n",  # a byte order mark
        "\n\tG1\tG2\n10x13\t0\t6\n11x13\t3\t0\n",  # a blank first line (pandas skips it)
        "\tG1\tG2\n10x13\t0.5\t6\n11x13\t3\t0\n",  # a float
        "\tG1\tG2\n10x13\t\t6\n11x13\t3\t0\n",  # an empty field (NaN to pandas)
        "\tG1\tG2\n10x13\tNA\t6\n11x13\t3\t0\n",  # a missing value
        "\tG1\tG2\n10x13\t 1\t6\n11x13\t3\t0\n",  # a space
        "\tG1\tG2\n1\t0\t6\n2\t3\t0\n",  # numeric ids (pandas makes them integers)
        "\tG1\tG2\n10x13\t0\t6\t1\t1\n11x13\t3\t0\t2\t2\n",  # two fields more than the header
        "\tG1\tG2\n10x13\t0\t6\n11x13\t3\n",  # a short row
        "\tG1\tG2\n10x13\t-\t6\n11x13\t3\t0\n",  # a lone minus
        "\tG1\tG2\n10x13\t99999999999999999999\t6\n11x13\t3\t0\n",  # beyond int64
    ],
)
def test_other_counts_files_are_left_to_pandas(tmp_path, text):
    from loki.io._legacy_st import _read_plain_counts

    path = tmp_path / "c.tsv"
    path.write_text(text, encoding="utf-8")
    assert _read_plain_counts(path) is None


@pytest.mark.parametrize("suffix", [".gz", ".tar.gz", ".bz2", ".zip", ".xz", ".zst", ".tar", ".TSV.GZ"])
def test_a_plain_table_named_as_compressed_is_left_to_pandas(tmp_path, suffix):
    """pandas decompresses by the name (and refuses this file); the plain-file parser must not read it."""
    from loki.io._legacy_st import _read_plain_counts

    path = tmp_path / f"c{suffix}"
    path.write_text(_HEADER + _ROWS, encoding="utf-8")
    assert _read_plain_counts(path) is None
    assert _read_plain_counts(path.rename(tmp_path / "c.tsv")) is not None  # the same text, named plainly


def test_a_plain_her2st_counts_file_is_not_parsed_by_pandas(monkeypatch):
    """pandas built a Series per column of the ~15,000-gene table, and read its header twice: ~2 s a section."""
    d = shared_path("her2st_A")
    counts = d / "counts" / "A1.tsv.gz"
    read = []
    original = pd.read_csv

    def read_csv(path, *args, **kwargs):
        read.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", read_csv)
    table = lk.io.read_legacy_st(counts, d / "spotfiles" / "A1_selection.tsv", name="A1").tables["A1"]
    assert read == [str(d / "spotfiles" / "A1_selection.tsv")]  # the spot file only
    assert table.shape == (346, 15045)
    expected = original(counts, sep="\t", index_col=0).loc[table.obs_names]
    np.testing.assert_array_equal(table.X.toarray(), expected.to_numpy(dtype=np.float32))
