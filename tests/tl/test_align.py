from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import loki as lk
from loki._keys import Key


def _log_expr(adata, target_sum=1e3):
    x = adata.X.tocsr().astype(np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()
    target_sum = np.median(lib) if target_sum is None else target_sum  # None: the median library
    x = sp.diags(target_sum / np.maximum(lib, 1)) @ x
    x.data = np.log1p(x.data)
    return x.toarray().astype(np.float32)


@pytest.fixture(scope="module")
def tissue():
    adata = lk.datasets.synthetic_tissue(n_spots=600, n_genes=60, n_cell_types=5, seed=11)
    adata.obsm["X_expr"] = _log_expr(adata)
    return adata


def _moved(tissue, **kw):
    moved, truth = lk.datasets.transform_section(tissue, seed=5, **kw)
    moved.obsm["X_expr"] = _log_expr(moved)
    return moved, truth


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_mirror_decision_does_not_depend_on_the_seed(seed):
    # 4,000 spots per side, the scale benchmark's pair: the global start screens 400 points, and with
    # these seeds the mirror was judged on those 400 alone and chosen wrongly (34 spacings off)
    tgt = lk.datasets.synthetic_tissue(n_spots=4000, n_genes=30, n_cell_types=6, seed=0, depth=500.0)
    src, truth = lk.datasets.transform_section(
        tgt, rotation_deg=35.0, translation=(7.0, -4.0), warp=0.5, drop_fraction=0.1, thin_counts=0.7, seed=1
    )
    for a in (tgt, src):
        a.obsm["X_expr"] = _log_expr(a, target_sum=None)
    lk.tl.align(src, target=tgt, use="X_expr", method="rigid", seed=seed)
    assert not src.uns["loki"][Key.ALIGNED]["mirror"]
    aligned = lk.tl._cpd.apply_matrix(np.asarray(src.obsm["spatial"]), src.uns["loki"][Key.ALIGNED]["matrix"])
    assert lk.metrics.alignment_error(aligned, truth.coords, truth.spot_spacing) < 0.5


@pytest.mark.parametrize(
    ("rotation", "mirror", "warp", "drop", "method"),
    [
        (0.0, False, 0.0, 0.05, "rigid"),
        (75.0, True, 0.0, 0.1, "rigid"),
        (180.0, False, 0.0, 0.2, "rigid"),
        (130.0, True, 1.0, 0.1, "deformable"),
        (20.0, False, 1.5, 0.2, "deformable"),
    ],
)
def test_synthetic_recovery(tissue, rotation, mirror, warp, drop, method):
    moved, truth = _moved(
        tissue,
        rotation_deg=rotation,
        translation=(4.0, -7.0),
        mirror=mirror,
        warp=warp,
        drop_fraction=drop,
        thin_counts=0.6,
    )
    lk.tl.align(moved, target=tissue, use="X_expr", method=method)
    err = lk.metrics.alignment_error(moved.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    info = moved.uns[Key.UNS][Key.ALIGNED]
    assert err < 0.15, err
    assert info["mirror"] == mirror
    assert np.sign(np.linalg.det(info["matrix"][:2, :2])) == (-1 if mirror else 1)
    assert info["method"] == method
    assert info["n_iter"] >= 1
    assert info["sigma2"] > 0
    starts = info["starts"]
    assert len(starts) == 16  # 8 rotations x both sides
    assert starts["mirror"].sum() == 8
    assert starts.loc[starts["agreement"].idxmax(), "mirror"] == mirror  # the embedding picked the winner


@pytest.mark.parametrize("method", ["rigid", "deformable"])
def test_partial_source_is_aligned_by_moving_the_target(tissue, method):
    """A source holding half the target (torn or cropped): CPD must explain every fixed point, so the
    target moves and the motion is inverted (deformable warp carried back by kernel regression)."""
    xy = tissue.obsm["spatial"]
    half = tissue[xy[:, 0] <= np.median(xy[:, 0])].copy()
    warp = 1.0 if method == "deformable" else 0.0
    moved, truth = _moved(
        half, rotation_deg=120.0, mirror=True, translation=(5.0, -3.0), warp=warp, drop_fraction=0.1
    )
    lk.tl.align(moved, target=tissue, use="X_expr", method=method)
    info = moved.uns[Key.UNS][Key.ALIGNED]
    assert info["moving"] == "target"
    assert info["mirror"]
    err = lk.metrics.alignment_error(moved.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err < 0.15, err
    # the stored rigid part maps the source onto the result (exactly, or up to the warp)
    rigid = moved.obsm["spatial"] @ info["matrix"][:2, :2].T + info["matrix"][:2, 2]
    if method == "rigid":
        np.testing.assert_allclose(rigid, moved.obsm[Key.ALIGNED], atol=1e-6)
    else:
        assert lk.metrics.alignment_error(rigid, moved.obsm[Key.ALIGNED], truth.spot_spacing) < 2 * warp


@pytest.mark.parametrize("method", ["rigid", "deformable"])
def test_sections_torn_on_both_sides(tissue, method):
    """Source = left 70% of the tissue, target = right 70%: each holds 3/7 the other lacks."""
    xy = tissue.obsm["spatial"]
    left = tissue[xy[:, 0] <= np.quantile(xy[:, 0], 0.7)].copy()
    right = tissue[xy[:, 0] >= np.quantile(xy[:, 0], 0.3)].copy()
    warp = 1.0 if method == "deformable" else 0.0
    moved, truth = _moved(
        left, rotation_deg=137.0, mirror=True, translation=(5.0, -3.0), warp=warp, drop_fraction=0.1
    )
    lk.tl.align(moved, target=right, use="X_expr", method=method, partial=True)
    info = moved.uns[Key.UNS][Key.ALIGNED]
    shared = np.isin(moved.obs_names, right.obs_names)
    err = lk.metrics.alignment_error(
        moved.obsm[Key.ALIGNED][shared], truth.coords[shared], truth.spot_spacing
    )
    assert err < 0.15, err
    assert info["mirror"]
    assert info["moving"] == "source"
    assert info["params"]["partial"] is True
    assert info["stages"]["stage"].iloc[0] == "partial_start"
    starts = info["starts"]
    assert {"correlation", "overlap", "agreement"} <= set(starts.columns)
    assert starts.loc[starts["agreement"].idxmax(), "mirror"]
    # the spots the target lacks follow the rigid/deformable motion of the rest
    err_all = lk.metrics.alignment_error(moved.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err_all < 0.15 + warp / 10, err_all


def test_partial_warns_above_the_validated_size(tissue, caplog, monkeypatch):
    import loki.tl._cpd as cpd

    monkeypatch.setattr(cpd, "_PARTIAL_VALIDATED", 100)
    moved, _ = _moved(tissue, rotation_deg=10.0)
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.align(moved, target=tissue, use="X_expr", method="rigid", partial=True)
    assert "validated on sections of up to 100 spots" in caplog.text


def test_partial_needs_an_embedding(tissue):
    moved, _ = _moved(tissue, rotation_deg=10.0)
    with pytest.raises(ValueError, match="partial=True needs an embedding"):
        lk.tl.align(moved, target=tissue, use=None, partial=True)
    assert Key.ALIGNED not in moved.obsm
    assert Key.UNS not in moved.uns


def test_preserve_scale_keeps_known_transform(tissue):
    moved, truth = _moved(
        tissue, rotation_deg=130.0, translation=(4.0, -7.0), mirror=True, warp=1.0, drop_fraction=0.1
    )
    lk.tl.align(moved, target=tissue, use="X_expr", method="deformable", preserve_scale=True)
    info = moved.uns[Key.UNS][Key.ALIGNED]
    assert lk.metrics.alignment_error(moved.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing) < 0.15
    assert info["params"]["preserve_scale"] is True
    assert info["scale_removed"] == pytest.approx(1.0, abs=0.03)  # the true motion has no scale
    assert info["mirror"]


def test_anndata_copy_and_coordinates_only(tissue, tmp_path):
    moved, truth = _moved(tissue, rotation_deg=40.0, translation=(2.0, 1.0))
    out = lk.tl.align(moved, target=tissue, use=None, method="rigid", mirror=False, copy=True)
    assert Key.ALIGNED not in moved.obsm
    assert Key.UNS not in moved.uns
    assert lk.metrics.alignment_error(out.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing) < 0.15
    # the stored rigid part maps the source coordinates onto the aligned ones
    m = out.uns[Key.UNS][Key.ALIGNED]["matrix"]
    np.testing.assert_allclose(
        moved.obsm["spatial"] @ m[:2, :2].T + m[:2, 2], out.obsm[Key.ALIGNED], atol=1e-6
    )


def test_pyramid_large_input():
    """8,000 spots from an 800-spot first level: the pyramid reaches the exact CPD's precision."""
    target = lk.datasets.synthetic_tissue(n_spots=8000, n_genes=30, n_cell_types=6, seed=3, depth=500.0)
    target.obsm["X_expr"] = _log_expr(target)
    moved, truth = lk.datasets.transform_section(
        target, rotation_deg=35.0, translation=(7.0, -4.0), warp=0.5, drop_fraction=0.1, seed=4
    )
    moved.obsm["X_expr"] = _log_expr(moved)
    approx = lk.tl.align(
        moved, target=target, use="X_expr", n_coarse=800, max_points=800, refine=False, copy=True
    )
    lk.tl.align(moved, target=target, use="X_expr", n_coarse=800, max_points=800)
    info = moved.uns[Key.UNS][Key.ALIGNED]
    assert not info["approximate"]
    stages = info["stages"][["stage", "level", "n_points"]].iloc[1:]
    assert list(stages.itertuples(index=False, name=None)) == [
        ("rigid", 0, 800),
        ("rigid", 1, 2530),
        ("rigid", 2, 7200),
        ("deformable", 2, 7200),
    ]
    err = lk.metrics.alignment_error(moved.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err < 0.15, err
    # refine=False stops at the 800-spot subsample and interpolates: about a subsample spacing off
    assert approx.uns[Key.UNS][Key.ALIGNED]["approximate"]
    err_approx = lk.metrics.alignment_error(approx.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err < err_approx < 2 * np.sqrt(8000 / 800)


def test_approximation_not_dragged_by_shifted_expression():
    """refine=False, 30,000 spots from a 6,000-spot subsample, the source's counts thinned.

    The thinning shifts the source's expression. With the spatial variance of the approximation's
    subsample level free to widen, the feature columns chose the pairs and the fit drifted 5.9 spot
    spacings; capped at the subsample's spacing it stays within a fraction of that spacing (sqrt(5)).
    """
    target = lk.datasets.synthetic_tissue(n_spots=30000, n_genes=30, n_cell_types=6, seed=0, depth=500.0)
    moved, truth = lk.datasets.transform_section(
        target,
        rotation_deg=35.0,
        translation=(7.0, -4.0),
        warp=0.5,
        drop_fraction=0.1,
        thin_counts=0.7,
        seed=1,
    )
    for a in (target, moved):
        a.obsm["X_expr"] = _log_expr(a, target_sum=None)
    out = lk.tl.align(moved, target=target, use="X_expr", max_points=6000, refine=False, copy=True)
    assert out.uns[Key.UNS][Key.ALIGNED]["approximate"]
    err = lk.metrics.alignment_error(out.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    assert err < 1.0, err


@pytest.mark.parametrize(
    ("mutate", "err", "match"),
    [
        (lambda s, t: s.obsm.pop("X_expr"), KeyError, "X_expr"),
        (lambda s, t: s.obsm.__setitem__("X_expr", s.obsm["X_expr"][:, :10]), ValueError, "share one space"),
        (lambda s, t: s.obsm["spatial"].__setitem__((0, 0), np.nan), ValueError, "non-finite"),
    ],
)
def test_bad_input_writes_nothing(tissue, mutate, err, match):
    moved, _ = _moved(tissue, rotation_deg=10.0)
    target = tissue.copy()
    mutate(moved, target)
    with pytest.raises(err, match=match):
        lk.tl.align(moved, target=target, use="X_expr")
    assert Key.ALIGNED not in moved.obsm
    assert Key.UNS not in moved.uns
    assert Key.ALIGNED not in target.obsm


def test_too_few_points_and_bad_params(tissue):
    small = tissue[:2].copy()
    with pytest.raises(ValueError, match="at least 3"):
        lk.tl.align(small, target=tissue, use="X_expr")
    assert Key.ALIGNED not in small.obsm
    moved, _ = _moved(tissue)
    for kw, match in [
        ({"method": "warp"}, "method"),
        ({"w": 1.0}, "w must"),
        ({"alpha": 0}, "alpha"),
        ({"moving": "both"}, "moving must be 'auto', 'source' or 'target'"),
    ]:
        with pytest.raises(ValueError, match=match):
            lk.tl.align(moved, target=tissue, use="X_expr", **kw)
    assert Key.ALIGNED not in moved.obsm


@pytest.mark.parametrize("sequential", [False, True])
def test_align_sections_stack(tissue, sequential):
    rotations = [0.0, 25.0, 50.0, 75.0]
    stack, truths = [], []
    for i, r in enumerate(rotations):
        moved, truth = lk.datasets.transform_section(tissue, rotation_deg=r, drop_fraction=0.1, seed=i)
        moved.obsm["X_expr"] = _log_expr(moved)
        stack.append(moved)
        truths.append(truth)
    res = lk.tl.align_sections(
        stack, target=0, use="X_expr", method="rigid", sequential=sequential, progress=False
    )
    assert sorted(res) == [f"section{i}" for i in range(4)]
    for i, (sec, truth) in enumerate(zip(stack, truths, strict=True)):
        info = sec.uns[Key.UNS][Key.ALIGNED]
        assert info["z"] == i
        if i:
            assert info["reference"] == (f"section{i - 1}" if sequential else "section0")
        # section 0 was moved too (by the identity plus dropped spots): compare in its frame
        ref = truths[0]
        expect = truth.coords @ ref.matrix[:2, :2].T + ref.matrix[:2, 2]
        err = lk.metrics.alignment_error(sec.obsm[Key.ALIGNED], expect, truth.spot_spacing)
        assert err < 0.15, (i, err)


def test_align_sections_validates_first(tissue):
    a, _ = _moved(tissue, rotation_deg=5.0)
    b, _ = _moved(tissue, rotation_deg=10.0)
    c, _ = _moved(tissue, rotation_deg=15.0)
    del c.obsm["X_expr"]
    with pytest.raises(KeyError, match="X_expr"):
        lk.tl.align_sections([a, b, c], target=0, use="X_expr", progress=False)
    assert all(Key.ALIGNED not in s.obsm for s in (a, b, c))


def test_image_to_st_key_pair(tissue):
    # image-to-ST: the source's patch embedding and the target's transcriptome embedding share one space
    moved, truth = _moved(tissue, rotation_deg=110.0, mirror=True)
    moved.obsm["img"] = moved.obsm.pop("X_expr")
    lk.tl.align(moved, target=tissue, use=("img", "X_expr"), method="rigid")
    assert moved.uns[Key.UNS][Key.ALIGNED]["use"] == ["img", "X_expr"]
    assert lk.metrics.alignment_error(moved.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing) < 0.15


def test_moving_auto_rule():
    from loki.tl._align import _moving

    assert _moving("auto", 100, 109) == "source"  # serial sections of one size
    assert _moving("auto", 100, 113) == "target"  # the source holds under 89% of the target's spots
    assert _moving("auto", 113, 100) == "source"  # a larger source moves anyway
    assert _moving("target", 113, 100) == "target"


def _in_other_units(section, factor: float, mpu: float):
    """The section with coordinates multiplied by ``factor`` and labelled ``mpu`` µm per unit."""
    out = section.copy()
    out.obsm[Key.SPATIAL] = section.obsm[Key.SPATIAL] * factor
    out.uns[Key.UNS] = {"microns_per_unit": mpu}
    return out


@pytest.mark.parametrize("physical_units", [True, False])
def test_sections_in_different_units(tissue, physical_units):
    # the source was imaged at twice the target's resolution: its coordinates are twice as large
    target = _in_other_units(tissue, 1.0, 1.0)
    moved, truth = _moved(tissue, rotation_deg=40.0, translation=(5.0, 3.0))
    source = _in_other_units(moved, 2.0, 0.5)
    lk.tl.align(source, target=target, use="X_expr", method="rigid", physical_units=physical_units)
    info = source.uns[Key.UNS][Key.ALIGNED]
    err = lk.metrics.alignment_error(source.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing)
    if physical_units:
        assert err < 0.15, err
        assert info["unit_scale"] == pytest.approx(0.5)
        assert info["microns_per_unit"] == pytest.approx(1.0)
        # the matrix takes the source's own coordinates to the target's
        mapped = source.obsm[Key.SPATIAL] @ info["matrix"][:2, :2].T + info["matrix"][:2, 2]
        assert lk.metrics.alignment_error(mapped, truth.coords, truth.spot_spacing) < 0.15
        assert abs(np.linalg.det(info["matrix"][:2, :2])) == pytest.approx(0.25, rel=1e-3)
    else:  # a rigid fit cannot absorb the factor 2
        assert err > 1.0, err
        assert info["unit_scale"] == 1.0


def test_units_of_chained_sections(tissue):
    # sequential stacks align onto a neighbour's aligned coordinates, which are in the target's units
    target = _in_other_units(tissue, 1.0, 1.0)
    stack = [target]
    for angle, factor in [(20.0, 2.0), (40.0, 0.5)]:
        moved, _ = _moved(tissue, rotation_deg=angle, drop_fraction=0.05)
        stack.append(_in_other_units(moved, factor, 1.0 / factor))
    lk.tl.align_sections(stack, target=0, use="X_expr", method="rigid", sequential=True, progress=False)
    first, second = (s.uns[Key.UNS][Key.ALIGNED] for s in stack[1:])
    assert first["unit_scale"] == pytest.approx(0.5)
    assert first["microns_per_unit"] == pytest.approx(1.0)
    assert second["reference"] == "section1"
    assert second["unit_scale"] == pytest.approx(2.0)  # the neighbour's aligned units, not its own 0.5
    for sec, factor in zip(stack[1:], (2.0, 0.5), strict=True):
        det = abs(np.linalg.det(sec.uns[Key.UNS][Key.ALIGNED]["matrix"][:2, :2]))
        assert det == pytest.approx(1 / factor**2, rel=1e-3)


def test_degenerate_inputs_and_non_finite_parameters(tissue):
    moved, _ = _moved(tissue, rotation_deg=30.0)
    for kw, match in [
        ({"alpha": np.nan}, "alpha must be a positive number, got nan"),
        ({"beta": np.inf}, "beta must be a positive number"),
        ({"feature_weight": np.nan}, "feature_weight must be a number >= 0"),
        ({"n_landmarks": 0}, r"^n_landmarks must be a positive integer, got 0\.$"),
    ]:
        with pytest.raises(ValueError, match=match):
            lk.tl.align(moved, target=tissue, use="X_expr", **kw)
    stacked = moved[:4].copy()
    stacked.obsm[Key.SPATIAL] = np.repeat(moved.obsm[Key.SPATIAL][:1], 4, axis=0)
    with pytest.raises(ValueError, match="4 spots lie at 1 distinct position"):
        lk.tl.align(stacked, target=tissue, use="X_expr")
    assert Key.ALIGNED not in moved.obsm
    assert Key.ALIGNED not in stacked.obsm


@pytest.mark.parametrize("method", ["rigid", "deformable"])
def test_coincident_target_spots_with_the_target_moving(tissue, method):
    # every target spot twice (two cells per spot, or a table's rows repeated): the spacing is that of
    # the distinct spots, not 0 (the deformable field's kernel regression divided 0 by 0)
    import anndata as ad

    moved, truth = _moved(tissue, rotation_deg=30.0, drop_fraction=0.1)
    doubled = ad.concat([tissue, tissue], index_unique="-")
    doubled.obsm[Key.SPATIAL] = np.vstack([tissue.obsm[Key.SPATIAL]] * 2)
    out = lk.tl.align(moved, target=doubled, use="X_expr", method=method, copy=True)
    assert out.uns[Key.UNS][Key.ALIGNED]["moving"] == "target"
    assert lk.metrics.alignment_error(out.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing) < 0.15


def test_physical_units_only_for_the_readers_coordinates(tissue):
    # both sections already in µm under another key: the tables' scale of .obsm['spatial'] is not theirs
    target = _in_other_units(tissue, 1.0, 0.5)
    moved, truth = _moved(tissue, rotation_deg=40.0)
    source = _in_other_units(moved, 1.0, 1.0)
    target.obsm["spatial_um"], source.obsm["spatial_um"] = target.obsm[Key.SPATIAL], source.obsm[Key.SPATIAL]
    lk.tl.align(source, target=target, use="X_expr", method="rigid", spatial_key="spatial_um")
    assert source.uns[Key.UNS][Key.ALIGNED]["unit_scale"] == 1.0
    assert lk.metrics.alignment_error(source.obsm[Key.ALIGNED], truth.coords, truth.spot_spacing) < 0.15


def test_align_sections_checks_every_pair_before_writing(tissue):
    sections = [tissue.copy()] + [_moved(tissue, rotation_deg=r)[0] for r in (5.0, 10.0)]
    sections[2].obsm["X_expr"] = sections[2].obsm["X_expr"][:, :10]
    with pytest.raises(ValueError, match=r"'section2' .obsm\['X_expr'\] has 10 dimensions"):
        lk.tl.align_sections(sections, target=0, use="X_expr", progress=False)
    del sections[2].obsm["X_expr"]
    with pytest.raises(KeyError, match="X_expr"):  # an embedding is needed with n_pcs=0 too
        lk.tl.align_sections(sections, target=0, use="X_expr", n_pcs=0, progress=False)
    assert all(Key.ALIGNED not in s.obsm and Key.UNS not in s.uns for s in sections)


def test_image_stack_aligned_sequentially_onto_a_transcriptome(tissue):
    # H&E sections hold only an image embedding: a neighbour is aligned on it, the target on the pair
    target = tissue.copy()
    stack = [target]
    for seed, angle in enumerate((10.0, 20.0), start=1):
        moved, _ = lk.datasets.transform_section(tissue, rotation_deg=angle, seed=seed)
        moved.obsm["img"] = _log_expr(moved)
        stack.append(moved)
    lk.tl.align_sections(
        stack, target=0, use=("img", "X_expr"), method="rigid", sequential=True, progress=False
    )
    assert stack[1].uns[Key.UNS][Key.ALIGNED]["use"] == ["img", "X_expr"]
    assert stack[2].uns[Key.UNS][Key.ALIGNED]["use"] == ["img", "img"]


def _fast(**kw):
    """Keyword arguments of a quick rigid alignment (one start, no mirror)."""
    return {"method": "rigid", "mirror": False, "n_rotations": 1, **kw}


def test_embedding_features_equal_the_svd_without_its_memory(monkeypatch):
    import tracemalloc

    from loki._utils import _pca
    from loki.tl._align import embedding_features

    rng = np.random.default_rng(0)
    n, d = 40_000, 32
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    emb_t = ((rng.normal(size=(n, d)) * 0.8 ** np.arange(d)) @ basis.T).astype(np.float32)
    emb_s = (emb_t[::2] + 0.1 * rng.normal(size=(n // 2, d))).astype(np.float32)
    # the thin SVD of the centred target: the components the PCA gave before (largest loading positive)
    centred = emb_t.astype(np.float64) - emb_t.mean(axis=0, dtype=np.float64)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2] * np.sign(vt[[0, 1], np.abs(vt[:2]).argmax(axis=1)])[:, None]
    pt = centred @ comps.T
    scale = np.subtract(*np.percentile(pt[:, 0], [99, 1]))
    ps, pt_new, ratio = embedding_features(emb_s, emb_t, 2)
    np.testing.assert_allclose(pt_new, pt / scale, atol=1e-9)
    np.testing.assert_allclose(
        ps, (emb_s - emb_t.mean(axis=0, dtype=np.float64)) @ comps.T / scale, atol=1e-9
    )
    np.testing.assert_allclose(ratio, sv[:2] ** 2 / (sv**2).sum(), rtol=1e-9)
    del centred
    # row blocks: less than one copy of the (float32) target, where the SVD held two float64 copies and U
    monkeypatch.setattr(_pca, "_BLOCK_VALUES", 1024 * d)
    tracemalloc.start()
    embedding_features(emb_s, emb_t, 2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < emb_t.nbytes, peak


def test_sparse_dataframe_and_non_numeric_embeddings(tissue):
    import pandas as pd

    moved, _ = _moved(tissue, rotation_deg=30.0)
    target = tissue.copy()
    dense = lk.tl.align(moved, target=target, use="X_expr", copy=True, **_fast())
    # a sparse (n, d) embedding is densified: the same alignment
    for a in (moved, target):
        a.obsm["E"] = sp.csr_matrix(a.obsm["X_expr"])
    out = lk.tl.align(moved, target=target, use="E", copy=True, **_fast())
    np.testing.assert_allclose(out.obsm[Key.ALIGNED], dense.obsm[Key.ALIGNED], atol=1e-8)
    for a in (moved, target):
        a.obsm["E"] = pd.DataFrame({"c": ["x"] * a.n_obs}, index=a.obs_names)
    with pytest.raises(ValueError, match=r"source .obsm\['E'\] must be numeric; its column\(s\) \['c'\]"):
        lk.tl.align(moved, target=target, use="E", **_fast())
    moved.obsm["E"] = np.full((moved.n_obs, 2), "x")
    with pytest.raises(ValueError, match=r"source .obsm\['E'\] must be numeric, got dtype <U1"):
        lk.tl.align(moved, target=target, use="E", **_fast())
    for kw, match in [
        ({"n_pcs": 2.5}, r"^n_pcs must be an integer >= 0, got 2\.5\.$"),
        ({"n_pcs": -1}, r"^n_pcs must be an integer >= 0, got -1\.$"),
        ({"max_iter": True}, r"^max_iter must be a positive integer, got True\.$"),
        ({"n_coarse": 2}, r"^n_coarse must be an integer >= 3, got 2\.$"),
        ({"max_points": 10.0}, r"^max_points must be an integer >= 3, got 10\.0\.$"),
    ]:
        with pytest.raises(ValueError, match=match):
            lk.tl.align(moved, target=target, use="X_expr", **kw)
    # more components than the embedding has: refused, not silently fewer (recorded as asked)
    n, d = target.obsm["X_expr"].shape
    with pytest.raises(
        ValueError,
        match=rf"^n_pcs={d + 1} but the target .obsm\['X_expr'\] \({n} spots x {d} dimensions\) has at most "
        rf"{min(n, d)} principal components; pass n_pcs <= {min(n, d)}\.$",
    ):
        lk.tl.align(moved, target=target, use="X_expr", n_pcs=d + 1)
    assert Key.ALIGNED not in moved.obsm
    # numpy integers are integers: the same alignment
    counts = {"n_pcs": np.int64(2), "max_iter": np.int32(200), "n_coarse": np.int64(5000)}
    out = lk.tl.align(
        moved, target=target, use="X_expr", copy=True, **_fast(n_rotations=np.int64(1), **counts)
    )
    np.testing.assert_array_equal(out.obsm[Key.ALIGNED], dense.obsm[Key.ALIGNED])


@pytest.mark.parametrize(
    ("key", "match"), [("spatial", "spatial_key"), ("X_expr", "embedding"), ("", "non-empty")]
)
def test_key_added_may_not_replace_an_input(tissue, key, match):
    moved, _ = _moved(tissue, rotation_deg=30.0)
    before = {k: np.array(v, copy=True) for k, v in moved.obsm.items()}
    with pytest.raises(ValueError, match=match):
        lk.tl.align(moved, target=tissue, use="X_expr", key_added=key, **_fast())
    assert set(moved.obsm) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(moved.obsm[k], v)
    assert Key.UNS not in moved.uns


def test_physical_units_on_one_side_only_warns(tissue, caplog):
    moved, _ = _moved(tissue, rotation_deg=40.0)
    source = _in_other_units(moved, 2.0, 0.5)  # the target records no microns_per_unit
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.align(source, target=tissue, use="X_expr", **_fast())
    assert "only the source section 'adata' records .uns['loki']['microns_per_unit']" in caplog.text
    assert "no unit conversion was applied" in caplog.text
    assert source.uns[Key.UNS][Key.ALIGNED]["unit_scale"] == 1.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="loki"):  # asked not to convert: nothing to say
        lk.tl.align(source, target=tissue, use="X_expr", physical_units=False, **_fast())
    assert "microns_per_unit" not in caplog.text


@pytest.mark.parametrize("seed", [3, np.random.default_rng(3), None], ids=["int", "generator", "none"])
def test_uns_records_the_arguments(tissue, tmp_path, seed):
    import anndata as ad

    moved, _ = _moved(tissue, rotation_deg=30.0)
    target = tissue.copy()
    for a in (moved, target):
        a.obsm["xy"] = a.obsm[Key.SPATIAL].copy()
    out = lk.tl.align(moved, target=target, use=None, seed=seed, spatial_key="xy", copy=True, **_fast())
    info = out.uns[Key.UNS][Key.ALIGNED]
    assert info["use"] == []
    params = info["params"]
    record = params["seed"]
    assert isinstance(record, int)
    assert record == 3 or not isinstance(seed, int)
    again = lk.tl.align(moved, target=target, use=None, seed=record, spatial_key="xy", copy=True, **_fast())
    np.testing.assert_array_equal(again.obsm[Key.ALIGNED], out.obsm[Key.ALIGNED])  # the run can be repeated
    assert params["mirror"] is False  # the argument; info["mirror"] is the side found
    assert params["spatial_key"] == "xy"
    assert params["target_spatial_key"] == "xy"
    assert params["input_coordinate_system"] == "global"
    out.write_h5ad(tmp_path / "a.h5ad")  # every entry is writeable
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns[Key.UNS][Key.ALIGNED]["params"]
    assert back["seed"] == record
    assert back["spatial_key"] == "xy"


def test_align_sections_refuses_copy_and_repeated_sections(tissue):
    a, _ = _moved(tissue, rotation_deg=20.0)
    target = tissue.copy()
    with pytest.raises(ValueError, match="writes every section in place; copy=True is not supported"):
        lk.tl.align_sections([target, a], target=0, use="X_expr", copy=True, progress=False)
    with pytest.raises(ValueError, match=r"sections \['section1', 'section2'\] are one and the same section"):
        lk.tl.align_sections([a, target, target], target=1, use="X_expr", progress=False)
    assert Key.ALIGNED not in a.obsm
    assert Key.ALIGNED not in target.obsm
    assert Key.UNS not in a.uns


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"method": "deformable", "pre_align": "Affine"},
            "pre_align must be 'rigid', 'similarity' or 'affine'",
        ),
        ({"method": "rigid", "pre_align": "none"}, "pre_align must be"),
        (
            {"method": "rigid", "preserve_scale": True},
            "preserve_scale=True applies to method='deformable' only",
        ),
        ({"method": "affine", "preserve_scale": True}, "got method='affine'"),
    ],
)
def test_pre_align_and_preserve_scale_are_checked_before_anything_runs(tissue, kw, match):
    moved, _ = _moved(tissue, rotation_deg=10.0)
    with pytest.raises(ValueError, match=match):
        lk.tl.align(moved, target=tissue, use="X_expr", **kw)
    assert Key.ALIGNED not in moved.obsm
    assert Key.UNS not in moved.uns


def test_messages_name_the_parameters_that_choose_a_section():
    two, one = lk.datasets.mob(("MOB1", "MOB2")), lk.datasets.mob(("MOB3",))
    with pytest.raises(ValueError, match=r"section1 is a SpatialData with 2 tables \('MOB1', 'MOB2'\)"):
        lk.tl.align_sections([one, two], target=0, progress=False, use=None)
    with pytest.raises(ValueError, match=r"holds 2 tables \('MOB1', 'MOB2'\); .* with target_table=\."):
        lk.tl.align(one, target=two, use=None)
    with pytest.raises(ValueError, match=r"sections must be a list of table keys .* got the string 'MOB1'"):
        lk.tl.align_sections(two, target="MOB1", sections="MOB1", progress=False, use=None)
    lk.tl.align(one, target=two, target_table="MOB1", use=None, method="rigid", mirror=False, n_rotations=1)
    assert one.tables["MOB3"].uns[Key.UNS][Key.ALIGNED]["target"] == "MOB1"


def test_a_stage_stopped_by_max_iter_warns(tissue):
    """A CPD stage that ran out of iterations said nothing; its result is where it stopped."""
    moved, _ = _moved(tissue, rotation_deg=30.0)
    with pytest.warns(
        lk.LokiWarning,
        match=r"CPD stopped at max_iter=2 before converging in stage\(s\) 'rigid' of the alignment of "
        r"'adata' onto 'adata'",
    ):
        out = lk.tl.align(moved, target=tissue, use="X_expr", inplace=False, **_fast(max_iter=2))
    assert not out.record["converged"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)
        out = lk.tl.align(moved, target=tissue, use="X_expr", inplace=False, **_fast())
    assert out.record["converged"]
