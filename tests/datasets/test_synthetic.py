from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import loki as lk


@pytest.fixture(scope="module")
def tissue():
    return lk.datasets.synthetic_tissue(n_spots=800, n_genes=120, n_cell_types=5, seed=3)


def test_structure(tissue):
    assert tissue.shape == (800, 120)
    assert sp.isspmatrix_csr(tissue.X) or sp.issparse(tissue.X)
    assert tissue.var_names[0] == "Gene0001"
    props = tissue.obsm["proportions"]
    assert list(props.columns) == [f"Type{i}" for i in range(1, 6)]
    np.testing.assert_allclose(props.to_numpy().sum(axis=1), 1.0, atol=1e-12)
    assert (props.to_numpy() >= 0).all()
    assert tissue.obs["region"].dtype == "category"
    assert (tissue.obs["region"].value_counts() > 0).all()
    prof = tissue.uns["synthetic"]["profiles"]
    assert prof.shape == (5, 120)
    np.testing.assert_allclose(prof.sum(axis=1), 1.0)


def test_hex_spacing_and_square_layout(tissue):
    xy = tissue.obsm["spatial"]
    assert lk.metrics.spot_spacing(xy) == pytest.approx(1.0)
    sq = lk.datasets.synthetic_tissue(n_spots=300, n_genes=10, layout="square", spot_spacing=2.5, seed=0)
    d, _ = cKDTree(sq.obsm["spatial"]).query(sq.obsm["spatial"], k=5)
    np.testing.assert_allclose(d[:, 1], 2.5)
    assert np.isclose(d[:, 1:5], 2.5).sum(axis=1).max() == 4  # square lattice has 4 nearest neighbours


def test_proportions_are_spatially_smooth(tissue):
    xy = tissue.obsm["spatial"]
    p = tissue.obsm["proportions"].to_numpy()
    _, nn = cKDTree(xy).query(xy, k=2)
    neighbour = np.abs(p - p[nn[:, 1]]).sum(axis=1).mean()
    rng = np.random.default_rng(0)
    random = np.abs(p - p[rng.permutation(len(p))]).sum(axis=1).mean()
    assert neighbour < 0.5 * random


def test_counts_follow_proportions(tissue):
    # expected expression mixes the type profiles by the proportions: the correlation of observed
    # and expected normalised expression must be high
    x = tissue.X.toarray()
    expected = tissue.obsm["proportions"].to_numpy() @ tissue.uns["synthetic"]["profiles"]
    obs = x / x.sum(axis=1, keepdims=True)
    r = np.corrcoef(obs.ravel(), expected.ravel())[0, 1]
    assert r > 0.8


def test_seeded(tissue):
    again = lk.datasets.synthetic_tissue(n_spots=800, n_genes=120, n_cell_types=5, seed=3)
    assert (again.X != tissue.X).nnz == 0
    other = lk.datasets.synthetic_tissue(n_spots=800, n_genes=120, n_cell_types=5, seed=4)
    assert (other.X != tissue.X).nnz > 0


def test_reference(tissue):
    ref = lk.datasets.synthetic_reference(tissue, n_cells_per_type=50, seed=1)
    assert ref.n_obs == 250
    assert list(ref.obs["cell_type"].cat.categories) == list(tissue.obsm["proportions"].columns)
    assert (ref.var_names == tissue.var_names).all()
    prof = tissue.uns["synthetic"]["profiles"]
    for t, name in enumerate(ref.obs["cell_type"].cat.categories):
        x = ref[ref.obs["cell_type"] == name].X.toarray().sum(axis=0)
        best = np.argmax([np.corrcoef(np.log1p(x), np.log1p(p * x.sum()))[0, 1] for p in prof])
        assert best == t
    with pytest.raises(KeyError, match="synthetic"):
        lk.datasets.synthetic_reference(ref)


@pytest.mark.parametrize("mirror", [False, True])
def test_transform_truth(tissue, mirror):
    moved, truth = lk.datasets.transform_section(
        tissue, rotation_deg=70, translation=(3, -2), mirror=mirror, scale=1.2, drop_fraction=0.2, seed=0
    )
    assert moved.n_obs == round(0.8 * tissue.n_obs) == len(truth.kept) == len(truth.coords)
    np.testing.assert_allclose(truth.coords, tissue.obsm["spatial"][truth.kept])
    expect = truth.coords @ truth.matrix[:2, :2].T + truth.matrix[:2, 2]
    np.testing.assert_allclose(moved.obsm["spatial"], expect, atol=1e-9)
    assert np.sign(np.linalg.det(truth.matrix[:2, :2])) == (-1 if mirror else 1)
    assert (moved.obs_names == tissue.obs_names[truth.kept]).all()
    assert tissue.obsm["spatial"].shape == (800, 2)  # input untouched


def test_transform_warp_and_thinning(tissue):
    moved, truth = lk.datasets.transform_section(tissue, warp=0.8, thin_counts=0.5, seed=2)
    disp = np.linalg.norm(moved.obsm["spatial"] - truth.coords, axis=1)
    assert disp.max() == pytest.approx(0.8 * truth.spot_spacing)
    assert 0.45 < moved.X.sum() / tissue.X.sum() < 0.55
    assert np.all(moved.X.data == np.round(moved.X.data))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drop_fraction": 1.0}, "drop_fraction"),
        ({"thin_counts": 0.0}, "thin_counts"),
        ({"scale": -1.0}, "scale"),
        ({"warp": -0.1}, "warp"),
        ({"spatial_key": "nope"}, "nope"),
    ],
)
def test_transform_bad_input(tissue, kwargs, match):
    err = KeyError if "spatial_key" in kwargs else ValueError
    with pytest.raises(err, match=match):
        lk.datasets.transform_section(tissue, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": np.nan}, r"scale must be > 0 \(a finite number\), got nan"),
        ({"rotation_deg": np.inf}, r"rotation_deg must be a finite number, got inf"),
        ({"translation": (np.nan, 0.0)}, r"translation\[0\] must be a finite number, got nan"),
        ({"translation": (1.0, 2.0, 3.0)}, r"translation must be two numbers \(x, y\)"),
        ({"warp": np.nan}, r"warp must be >= 0 \(a finite number\), got nan"),
    ],
)
def test_transform_refuses_non_finite_parameters(tissue, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lk.datasets.transform_section(tissue, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": -5}, r"depth must be > 0 \(a finite number\), got -5"),
        ({"depth": 0}, r"depth must be > 0"),
        ({"spot_spacing": np.nan}, r"spot_spacing must be > 0 \(a finite number\), got nan"),
        ({"n_spots": 100.5}, r"n_spots must be >= 3 \(an integer\), got 100.5"),
        ({"n_genes": True}, r"n_genes must be >= 1 \(an integer\), got True"),
        ({"n_regions": 0}, r"n_regions must be >= 1 \(an integer\), got 0"),
    ],
)
def test_generator_names_the_bad_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lk.datasets.synthetic_tissue(**{"n_spots": 100, **kwargs})


def test_reference_names_the_bad_parameter(tissue):
    with pytest.raises(ValueError, match=r"depth must be > 0 \(a finite number\), got -1"):
        lk.datasets.synthetic_reference(tissue, 5, depth=-1)
    with pytest.raises(ValueError, match=r"n_cells_per_type must be >= 1 \(an integer\), got 2.5"):
        lk.datasets.synthetic_reference(tissue, 2.5)
    # integral floats are taken as integers
    assert lk.datasets.synthetic_tissue(100.0, n_genes=10).n_obs == 100


def test_generator_bad_input():
    with pytest.raises(ValueError, match="layout"):
        lk.datasets.synthetic_tissue(100, layout="tri")
    with pytest.raises(ValueError, match="n_spots"):
        lk.datasets.synthetic_tissue(2)


def test_dispersion_zero_is_poisson_and_negative_is_refused():
    from loki.datasets._synthetic import _nb_counts

    mean = np.full((400, 50), 5.0)
    for dispersion, variance in ((0.0, 5.0), (0.2, 5.0 + 0.2 * 25.0)):
        counts = _nb_counts(mean, dispersion, np.random.default_rng(0)).toarray()
        assert counts.var() == pytest.approx(variance, rel=0.05)
    a = lk.datasets.synthetic_tissue(n_spots=200, n_genes=30, dispersion=0, seed=1)
    assert a.uns["synthetic"]["dispersion"] == 0.0
    assert a.X.sum() > 0
    ref = lk.datasets.synthetic_reference(a, n_cells_per_type=5, seed=1)
    assert ref.X.sum() > 0
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="dispersion must be >= 0"):
            lk.datasets.synthetic_tissue(n_spots=200, n_genes=30, dispersion=bad)


def _lognorm(adata):
    """scanpy's usual layout: raw counts in layers['counts'], log1p of normalised counts in .X."""
    out = adata.copy()
    out.layers["counts"] = out.X.copy()
    x = out.X.multiply(1e4 / out.X.sum(axis=1)).tocsr()
    x.data = np.log1p(x.data)
    out.X = x.astype(np.float32)
    return out


def test_thinning_refuses_values_that_are_not_counts(tissue):
    lognorm = _lognorm(tissue)
    with pytest.raises(ValueError, match=r"not non-negative integers .*adata.X = adata.layers\['counts'\]"):
        lk.datasets.transform_section(lognorm, thin_counts=0.9, seed=0)
    scaled = tissue.copy()
    scaled.X = scaled.X.toarray() - 3.0  # scaled data: negative values
    with pytest.raises(ValueError, match="not non-negative integers"):
        lk.datasets.transform_section(scaled, thin_counts=0.9, seed=0)
    # nothing to thin: any values are fine
    moved, _ = lk.datasets.transform_section(lognorm, rotation_deg=10.0, seed=0)
    assert moved.X.sum() == pytest.approx(lognorm.X.sum())


def test_thinning_keeps_a_counts_layer_equal_to_the_thinned_counts(tissue):
    counts = tissue.copy()
    counts.layers["counts"] = counts.X.copy()
    moved, truth = lk.datasets.transform_section(counts, thin_counts=0.5, seed=2)
    assert (moved.layers["counts"] != moved.X).nnz == 0
    assert 0.45 < moved.layers["counts"].sum() / tissue.X[truth.kept].sum() < 0.55
    # the same draw as without the layer
    plain, _ = lk.datasets.transform_section(tissue, thin_counts=0.5, seed=2)
    assert (plain.X != moved.X).nnz == 0

    counts.layers["lognorm"] = _lognorm(tissue).X
    with pytest.raises(ValueError, match=r"layers \['lognorm'\] hold other values"):
        lk.datasets.transform_section(counts, thin_counts=0.5, seed=2)


def test_depth_is_the_median_library_size():
    a = lk.datasets.synthetic_tissue(n_spots=20000, n_genes=100, depth=2000, dispersion=0, seed=0)
    library = np.asarray(a.X.sum(axis=1)).ravel()
    assert np.median(library) == pytest.approx(2000, rel=0.01)
    assert library.mean() == pytest.approx(2000 * np.exp(0.3**2 / 2), rel=0.01)
    for function in (lk.datasets.synthetic_tissue, lk.datasets.synthetic_reference):
        doc = function.__doc__.split("depth\n", 1)[1].split("\n    seed", 1)[0]
        assert "Median library size" in doc
        assert "Mean library size" not in doc
