from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage

import loki as lk


@pytest.fixture
def spots():
    rng = np.random.default_rng(0)
    n = 50
    adata = ad.AnnData(np.zeros((n, 3), np.float32))
    adata.obs_names = [f"s{i}" for i in range(n)]
    adata.obsm["spatial"] = rng.uniform(0, 200, size=(n, 2))
    props = rng.dirichlet(np.ones(3), size=n)
    adata.obsm["loki_proportions"] = pd.DataFrame(
        props, index=adata.obs_names, columns=["Tumour", "Immune", "Stroma"]
    )
    yield adata
    plt.close("all")


def _panels(fig):
    return [a for a in fig.axes if a.get_title()]


def test_one_panel_per_type_with_the_spot_values(spots, tmp_path):
    fig = lk.pl.proportions(spots, image=False, ncols=2, save=tmp_path / "p.png")
    panels = _panels(fig)
    assert [a.get_title() for a in panels] == ["Tumour", "Immune", "Stroma"]
    for panel in panels:
        (points,) = panel.collections
        np.testing.assert_allclose(points.get_offsets(), spots.obsm["spatial"])
        np.testing.assert_allclose(points.get_array(), spots.obsm["loki_proportions"][panel.get_title()])
        assert panel.yaxis_inverted()
    assert (tmp_path / "p.png").stat().st_size > 0


def test_subset_into_given_axes_over_an_image(spots):
    _, ax = plt.subplots()
    rgb = np.full((200, 200, 3), 200, np.uint8)
    fig = lk.pl.proportions(spots, cell_types=["Immune"], image=rgb, ax=ax)
    assert fig is ax.figure
    assert ax.get_title() == "Immune"
    (img,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert img.get_array().shape == (200, 200, 3)


def test_spatialdata_section_draws_its_image_in_spot_units(spots):
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    spots.obs["region"] = pd.Categorical(["sec_spots"] * spots.n_obs)
    spots.obs["spot_id"] = np.arange(spots.n_obs)
    image = Image2DModel.parse(
        np.full((3, 50, 50), 128, np.uint8),
        dims=("c", "y", "x"),
        transformations={"global": Scale([4.0, 4.0], axes=("x", "y"))},
    )
    shapes = ShapesModel.parse(spots.obsm["spatial"], geometry=0, radius=np.full(spots.n_obs, 2.0))
    table = TableModel.parse(spots, region="sec_spots", region_key="region", instance_key="spot_id")
    sdata = SpatialData(images={"sec_image": image}, shapes={"sec_spots": shapes}, tables={"sec": table})
    fig = lk.pl.proportions(sdata, cell_types=["Tumour"])
    (panel,) = _panels(fig)
    (img,) = [a for a in panel.get_children() if isinstance(a, AxesImage)]
    # The 50 px image is scaled by 4 into spot units; SpatialData's pixel (i, j) spans [j, j + 1] x
    # [i, i + 1], so the image's far corner (50, 50) lands at 200 and pixel (0, 0) is centred at 2.
    for pixel, spot_units in (((50.0, 50.0), 200.0), ((0.5, 0.5), 2.0)):
        drawn = img.get_transform().transform([pixel])[0]
        np.testing.assert_allclose(drawn, panel.transData.transform([(spot_units, spot_units)])[0], atol=1e-6)
    np.testing.assert_allclose(img.get_extent(), (0, 50, 50, 0))


def test_bad_input(spots):
    with pytest.raises(KeyError, match=r"'nope' not found in adata\.obsm"):
        lk.pl.proportions(spots, key="nope")
    with pytest.raises(KeyError, match="'B cells' not found"):
        lk.pl.proportions(spots, cell_types=["B cells"])
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="ax= draws one cell type"):
        lk.pl.proportions(spots, ax=ax)
    spots.obsm["raw"] = np.ones((spots.n_obs, 3))
    with pytest.raises(ValueError, match="must be a DataFrame"):
        lk.pl.proportions(spots, key="raw")
