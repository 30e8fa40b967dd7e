"""A deformable alignment that collapses the moving section warns, records it and keeps the rigid placement."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from anndata import AnnData

import loki as lk
from loki import LokiWarning
from loki._utils._affine import apply_matrix
from loki._utils._spacing import nearest_spot_distance
from loki.tl import _cpd


def _lattice(drop: float = 0.1, seed: int = 0) -> np.ndarray:
    """A 24 x 18 square lattice of spacing 1 with a fraction ``drop`` of its spots missing."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(24.0), np.arange(18.0)), axis=-1).reshape(-1, 2)
    return grid[rng.random(len(grid)) >= drop]


def _features(xy: np.ndarray, seed: int = 0) -> np.ndarray:
    """8-d features varying smoothly across the section, as an embedding of its tissue does."""
    rng = np.random.default_rng(seed)
    field = np.tanh((xy - xy.mean(axis=0)) / 6.0) @ rng.normal(size=(2, 8))
    return (field + 0.05 * rng.normal(size=field.shape)).astype(np.float32)


def _section(xy: np.ndarray, emb: np.ndarray) -> AnnData:
    adata = AnnData(np.zeros((len(xy), 1), dtype=np.float32))
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    adata.obsm["emb"] = emb
    return adata


def _disagreeing_pair() -> tuple[AnnData, AnnData]:
    """Target and a rotated, shifted copy whose features belong to other spots of the section.

    Each source spot looks like a spot somewhere else: the features agree with the target
    all over it rather than where the spot lies, as embeddings of a model that saw only one section.
    """
    xy = _lattice()
    emb = _features(xy)
    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    moved = (xy - xy.mean(axis=0)) @ rot.T + [5.0, -3.0]
    shuffled = emb[np.random.default_rng(0).permutation(len(xy))]
    return _section(moved, shuffled), _section(xy, emb)


def _collapse_warnings(caught) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, LokiWarning) and "collapsed" in str(w.message)
    ]


def test_deformation_ratios_of_known_motions():
    xy = _lattice(drop=0.0)  # whole: its principal axes are x and y
    c, s = np.cos(0.7), np.sin(0.7)
    rigid = xy @ np.array([[c, -s], [s, c]]).T + [3.0, 4.0]
    same = _cpd.deformation_ratios(xy, rigid)
    np.testing.assert_allclose(same["axis_ratios"], 1.0, rtol=1e-9)
    assert same["spacing_ratio"] == pytest.approx(1.0)
    assert not same["collapsed"]
    # squeezing the lattice's short side (y) by 0.3: that axis and the spacing shrink by 0.3
    squeezed = xy * [1.0, 0.3]
    out = _cpd.deformation_ratios(xy, squeezed)
    np.testing.assert_allclose(out["axis_ratios"], [1.0, 0.3], rtol=1e-9)
    assert out["spacing_ratio"] == pytest.approx(0.3)
    assert out["collapsed"]
    assert out["spacing_before"] == pytest.approx(nearest_spot_distance(xy))
    # no spread before (all spots on one line): that axis has no ratio and decides nothing
    line = np.c_[np.arange(10.0), np.zeros(10)]
    flat = _cpd.deformation_ratios(line, line * 2.0)
    assert np.isnan(flat["axis_ratios"][1])
    assert not flat["collapsed"]


@pytest.mark.parametrize("moving", ["source", "target"])
def test_collapse_warns_records_and_keeps_the_pre_alignment(moving):
    source, target = _disagreeing_pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lk.tl.align(source, target=target, use="emb", moving=moving, mirror=False, inplace=False)
    messages = _collapse_warnings(caught)
    assert len(messages) == 1, [str(w.message) for w in caught]
    record = result.record
    deformation = record["deformation"]
    assert deformation["collapsed"]
    # the numbers of the record are those of the moved section's spots, pre-aligned -> aligned
    if moving == "source":
        before = apply_matrix(source.obsm["spatial"], record["pre_matrix"])
        expected = _cpd.deformation_ratios(before, result.coords)
        np.testing.assert_allclose(deformation["axis_ratios"], expected["axis_ratios"], rtol=1e-6)
        assert deformation["spacing_ratio"] == pytest.approx(expected["spacing_ratio"], rel=1e-6)
        assert f"{expected['spacing_ratio']:.2f}" in messages[0]
    assert min(*deformation["axis_ratios"], deformation["spacing_ratio"]) < 0.5
    for hint in ("method='rigid'", "use=None", "alpha", "pre-alignment"):
        assert hint in messages[0]
    assert f"collapsed the {moving}" in messages[0]
    # the placement is the pre-alignment's, not a fit to the collapsed coordinates
    np.testing.assert_allclose(record["matrix"], record["pre_matrix"], atol=1e-9)
    fitted = _cpd.fit_linear(source.obsm["spatial"], result.coords, kind="rigid")
    assert not np.allclose(fitted, record["matrix"], atol=1e-3)


def test_a_deformation_that_keeps_the_section_is_fitted_and_silent():
    """The same pair with features that agree: a warp, no collapse, the placement fitted to the result."""
    target = lk.datasets.synthetic_tissue(n_spots=600, n_genes=60, n_cell_types=5, seed=11)
    source, _ = lk.datasets.transform_section(
        target, rotation_deg=40.0, translation=(4.0, -7.0), warp=1.5, drop_fraction=0.1, seed=2
    )
    for adata in (source, target):
        adata.obsm["emb"] = np.log1p(np.asarray(adata.X.todense(), dtype=np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lk.tl.align(source, target=target, use="emb", inplace=False)
    assert not _collapse_warnings(caught)
    deformation = result.record["deformation"]
    assert not deformation["collapsed"]
    assert min(*deformation["axis_ratios"], deformation["spacing_ratio"]) > 0.8
    fitted = _cpd.fit_linear(source.obsm["spatial"], result.coords, kind="rigid")
    np.testing.assert_allclose(result.record["matrix"], fitted, atol=1e-9)
    rigid = lk.tl.align(source, target=target, use="emb", method="rigid", inplace=False)
    assert "deformation" not in rigid.record


def test_the_command_line_shows_the_collapse(tmp_path, caplog):
    """`loki align` logs the warning (its LokiWarnings become log lines) and still writes the result."""
    import spatialdata as sd

    from loki.cli import main

    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    mob1, mob2 = sdata.tables["MOB1"], sdata.tables["MOB2"]
    # in units of spot spacings, as the lattice's
    mob1.obsm["emb"] = _features(mob1.obsm["spatial"] / nearest_spot_distance(mob1.obsm["spatial"]))
    other = _features(mob2.obsm["spatial"] / nearest_spot_distance(mob2.obsm["spatial"]))
    mob2.obsm["emb"] = other[np.random.default_rng(0).permutation(len(other))]
    path = tmp_path / "mob12.zarr"
    sdata.write(path)
    args = ["align", str(path), "--source", "MOB2", "--target", "MOB1", "--use", "emb", "--no-mirror"]
    with caplog.at_level("WARNING", logger="loki"):
        assert main(args) == 0
    logged = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    assert "'MOB2' onto 'MOB1'" in logged[0]
    # in the command's words: its options, and the keywords it has none for named as Python's
    assert "--method 'rigid'" in logged[0]
    assert "--use none (coordinates only)" in logged[0]
    assert "in Python (lk.tl.align), a larger alpha, or partial=True" in logged[0]
    assert "method='rigid'" not in logged[0]
    assert "use=None" not in logged[0]
    stored = sd.read_zarr(path).tables["MOB2"].uns["loki"]["spatial_aligned"]
    assert bool(stored["deformation"]["collapsed"])
