from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest
from spatialdata.transformations import Identity, get_transformation
from tests.conftest import shared_path

import loki as lk


@pytest.fixture(scope="module")
def mob():
    return lk.datasets.mob()


def test_mob_has_the_section_layout(mob):
    names = ["MOB1", "MOB2", "MOB3", "MOB4"]
    assert sorted(mob.tables) == names
    assert sorted(mob.shapes) == [f"{n}_spots" for n in names]
    assert sorted(mob.images) == [f"{n}_image" for n in names]
    for name, n_spots in zip(names, (379, 407, 438, 403), strict=True):
        table = mob.tables[name]
        assert table.shape == (n_spots, 1000)
        assert table.uns["spatialdata_attrs"]["region"] == f"{name}_spots"
        assert table.uns["loki"]["image_key"] == f"{name}_image"
        assert table.uns["loki"]["spot_diameter_um"] == 100.0
        # 2k array, 100 µm per array unit, 1905 px image: ~4.4 µm per pixel in every section
        assert table.uns["loki"]["microns_per_unit"] == pytest.approx(4.385, abs=0.03)
        assert table.var_names.is_unique
        assert table.var["gene_ids"].str.startswith("ENSMUSG").all()
        assert table.X.dtype == np.float32
        radius = mob.shapes[f"{name}_spots"]["radius"].to_numpy()
        np.testing.assert_allclose(radius, 50.0 / table.uns["loki"]["microns_per_unit"])
        assert isinstance(get_transformation(mob.images[f"{name}_image"], "global"), Identity)
        assert mob.images[f"{name}_image"]["scale0"]["image"].shape == (3, 1905, 1905)


def test_mob_symbols_are_real_gene_symbols(mob):
    genes = set(mob.tables["MOB1"].var_names)
    # olfactory bulb markers
    assert {"Penk", "Cdhr1", "Apod", "Nrgn"} <= genes


def test_mob_matches_the_source_data(mob):
    d = shared_path("stutility_mob")
    counts = pd.read_csv(d / "MOB2.tsv", sep="\t", index_col=0)
    spots = pd.read_csv(d / "alignment_table_MOB2.tsv", sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    table = mob.tables["MOB2"]
    ref = counts.loc[table.obs_names, table.var["gene_ids"]]
    np.testing.assert_array_equal(table.X.toarray(), ref.to_numpy())
    np.testing.assert_allclose(
        table.obsm["spatial"], spots.loc[table.obs_names, ["pixel_x", "pixel_y"]].to_numpy()
    )
    assert set(table.obs_names) == set(spots.index[spots["selected"] == 1]) & set(counts.index)


def test_mob_spots_fall_on_tissue(mob):
    for name in mob.tables:
        img = mob.images[f"{name}_image"]["scale0"]["image"].values.astype(float).mean(0)
        xy = np.round(mob.tables[name].obsm["spatial"]).astype(int)
        on_spots = img[xy[:, 1], xy[:, 0]]
        # tissue is darker than the glass; shifted spots (600 px to the right) land mostly on glass
        assert np.median(on_spots) < np.median(img) - 15
        shifted = img[xy[:, 1], np.clip(xy[:, 0] + 600, 0, img.shape[1] - 1)]
        assert np.median(shifted) > np.median(on_spots) + 10


def test_mob_subset_and_errors():
    sdata = lk.datasets.mob("MOB3")
    assert list(sdata.tables) == ["MOB3"]
    with pytest.raises(ValueError, match="MOB9"):
        lk.datasets.mob(["MOB9"])
    with pytest.raises(ValueError, match=r"No section given; choose at least one of \['MOB1'"):
        lk.datasets.mob([])


def test_mob_records_spacing_and_states_its_anisotropy_once(caplog):
    with caplog.at_level("WARNING", logger="loki"):
        sdata = lk.datasets.mob("MOB1")
    assert not caplog.records  # the docstring states the anisotropy the reader would warn of
    assert "11 %" in lk.datasets.mob.__doc__
    # 2k array: 100 µm array steps, neighbouring spots diagonal
    assert sdata.tables["MOB1"].uns["loki"]["spot_spacing_um"] == pytest.approx(100 * np.sqrt(2))
    d = shared_path("stutility_mob")
    with caplog.at_level("WARNING", logger="loki"):
        lk.io.read_legacy_st(d / "MOB1.tsv", d / "alignment_table_MOB1.tsv", name="MOB1", array_step_um=100)
    assert "21.62 px per array step along x but 24.05 along y (11% apart" in caplog.text


def test_bundle_is_small_and_attributed():
    folder = resources.files("loki.datasets").joinpath("data", "mob")
    with resources.as_file(folder) as path:
        total = sum(f.stat().st_size for f in path.iterdir())
    assert total < 5_000_000
    text = folder.joinpath("LICENSE_ATTRIBUTION.txt").read_text(encoding="utf-8")
    assert "MIT License" in text
    assert "Ståhl" in text
    assert "jbergenstrahle/STUtility" in text
    assert "9a8f421499e58b13340ee386db07b0eba923c88c" in text
