from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest

import loki as lk
from loki._keys import Key
from loki.pl._alignment import embedding_rgb


@pytest.fixture(scope="module")
def pair():
    tgt = lk.datasets.synthetic_tissue(n_spots=200, n_genes=30, seed=1)
    src, _ = lk.datasets.transform_section(tgt, rotation_deg=60.0, translation=(30.0, 0.0), seed=2)
    for a in (tgt, src):
        a.obsm["emb"] = np.log1p(a.X.toarray())
    lk.tl.align(src, target=tgt, use="emb", method="rigid")
    return src, tgt


def test_embedding_rgb_shared_scale():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(30, 5)) + 1.0
    ca, cb = embedding_rgb([a, b])
    assert ca.shape == (20, 3)
    assert cb.shape == (30, 3)
    both = np.vstack([ca, cb])
    np.testing.assert_allclose(both.min(axis=0), 0.0)
    np.testing.assert_allclose(both.max(axis=0), 1.0)
    # identical embeddings get identical colours across sections
    c1, c2 = embedding_rgb([a, a.copy()])
    np.testing.assert_allclose(c1, c2)


def test_embedding_rgb_streams_the_pca(monkeypatch):
    import tracemalloc

    from loki._utils import _pca

    rng = np.random.default_rng(2)
    d = 64
    a = (rng.normal(size=(20_000, d)) * 0.8 ** np.arange(d)).astype(np.float32)
    b = (rng.normal(size=(10_000, d)) * 0.8 ** np.arange(d) + 0.5).astype(np.float32)
    both = np.vstack([a, b]).astype(np.float64)
    centred = both - both.mean(axis=0)
    pcs = centred @ np.linalg.svd(centred, full_matrices=False)[2][:3].T
    del both, centred
    ca, cb = embedding_rgb([a, b])
    rgb = np.vstack([ca, cb])
    # the SVD's colours, up to a component's sign (now that of its largest loading): c or 1 - c
    span = (pcs - pcs.min(axis=0)) / np.ptp(pcs, axis=0)
    flipped = np.corrcoef(rgb.T, span.T)[[0, 1, 2], [3, 4, 5]] < 0
    np.testing.assert_allclose(rgb, np.where(flipped, 1 - span, span), atol=1e-9)
    monkeypatch.setattr(_pca, "_BLOCK_VALUES", 1024 * d)
    tracemalloc.start()
    embedding_rgb([a, b])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.75 * (a.nbytes + b.nbytes), peak  # the SVD stacked them in float64, twice, and U


def test_overlay_draws_before_and_after(pair):
    src, tgt = pair
    fig = lk.pl.alignment([tgt, src], sections=["target", "source"], show=False)
    before, after = fig.axes[:2]
    assert before.get_title() == "before alignment"
    assert after.get_title() == "after alignment"
    assert len(before.collections) == 2
    assert len(after.collections) == 2
    np.testing.assert_allclose(before.collections[1].get_offsets(), src.obsm["spatial"])
    np.testing.assert_allclose(after.collections[1].get_offsets(), src.obsm[Key.ALIGNED])
    np.testing.assert_allclose(after.collections[0].get_offsets(), tgt.obsm["spatial"])
    assert [t.get_text() for t in after.get_legend().get_texts()] == ["target", "source"]
    plt.close(fig)


def test_stack_side_view_coloured_by_embedding(pair, tmp_path):
    src, tgt = pair
    out = tmp_path / "stack.png"
    fig = lk.pl.alignment([tgt, src], use="emb", kind="stack", save=str(out), show=False)
    assert out.stat().st_size > 0
    after = fig.axes[1]
    offsets = [c.get_offsets() for c in after.collections]
    assert np.unique(offsets[0][:, 1]).tolist() == [0.0]
    assert np.unique(offsets[1][:, 1]).tolist() == [1.0]
    np.testing.assert_allclose(offsets[1][:, 0], src.obsm[Key.ALIGNED][:, 0])
    colours = after.collections[1].get_facecolors()[:, :3]
    expect = embedding_rgb([tgt.obsm["emb"], src.obsm["emb"]])[1]
    np.testing.assert_allclose(colours, expect, atol=1e-6)
    for panel in fig.axes[:2]:  # each level is named by its section
        assert panel.get_yticks().tolist() == [0.0, 1.0]
        assert [t.get_text() for t in panel.get_yticklabels()] == ["section0", "section1"]
    plt.close(fig)


def test_one_embedding_key_per_section(pair):
    # an H&E source (image embedding) drawn beside an ST target (text embedding) in one colour space
    src, tgt = pair
    src = src.copy()
    src.obsm["img"] = src.obsm.pop("emb")
    fig = lk.pl.alignment([tgt, src], use=["emb", "img"], show=False)
    colours = fig.axes[1].collections[1].get_facecolors()[:, :3]
    np.testing.assert_allclose(colours, embedding_rgb([tgt.obsm["emb"], src.obsm["img"]])[1], atol=1e-6)
    with pytest.raises(ValueError, match="one or one each"):
        lk.pl.alignment([tgt, src], use=["emb"], show=False)
    with pytest.raises(KeyError, match="img"):
        lk.pl.alignment([tgt, src], use=["img", "img"], show=False)
    plt.close(fig)


def test_errors(pair):
    src, tgt = pair
    plain = tgt.copy()
    with pytest.raises(KeyError, match="spatial_aligned"):
        lk.pl.alignment([plain], show=False)
    with pytest.raises(ValueError, match="kind"):
        lk.pl.alignment([tgt, src], kind="3d", show=False)
    with pytest.raises(KeyError, match="nope"):
        lk.pl.alignment([tgt, src], use="nope", show=False)
    with pytest.raises(ValueError, match="sections gives 1 label"):
        lk.pl.alignment([tgt, src], sections=["target"], show=False)
    bad = src.copy()
    bad.obsm["emb"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"section 'source' \.obsm\['emb'\] contains 1 non-finite value"):
        lk.pl.alignment([tgt, bad], sections=["target", "source"], use="emb", show=False)


def test_overlay_keeps_a_users_inverted_axes(pair):
    src, tgt = pair
    fig, axes = plt.subplots(1, 2)
    axes[0].invert_yaxis()  # image convention set up already
    lk.pl.alignment([tgt, src], ax=axes, show=False)
    lk.pl.alignment([tgt, src], ax=axes, show=False)  # a second call on the same axes
    assert axes[0].yaxis_inverted()
    assert axes[1].yaxis_inverted()
    plt.close(fig)


def test_errors_name_the_section_and_what_exists(pair):
    src, tgt = pair
    lacking = src.copy()
    del lacking.obsm["spatial"]
    with pytest.raises(KeyError, match=r"'spatial' not found in section 'source' adata\.obsm; available: "):
        lk.pl.alignment([tgt, lacking], sections=["target", "source"], show=False)
    with pytest.raises(KeyError, match=r"'emb2' not found in section 'target' adata\.obsm; available: "):
        lk.pl.alignment([tgt, src], sections=["target", "source"], use=["emb2", "emb"], show=False)
    with pytest.raises(
        KeyError,
        match=r"'moved' not found in \.obsm of any section; available: 'spatial', 'proportions', 'emb', 'spatial_aligned'\. "
        r"Run lk\.tl\.align or lk\.tl\.align_sections first",
    ):
        lk.pl.alignment([tgt, src], key="moved", show=False)
    assert plt.get_fignums() == []


def test_many_sections_get_distinct_colours_and_a_wider_legend():
    rng = np.random.default_rng(0)
    sections = []
    for _ in range(16):
        a = lk.datasets.synthetic_tissue(n_spots=20, n_genes=5, seed=0)
        a.obsm[Key.ALIGNED] = a.obsm["spatial"] + rng.normal(size=(a.n_obs, 2))
        sections.append(a)
    fig = lk.pl.alignment(sections, show=False)
    colours = {tuple(c.get_facecolors()[0][:3]) for c in fig.axes[1].collections}
    assert len(colours) == 16  # matplotlib's 10-colour cycle repeated after 10 sections
    legend = fig.axes[1].get_legend()
    assert len(legend.get_texts()) == 16
    assert legend._ncols == 2
    plt.close(fig)


@pytest.fixture(scope="module")
def three_tables(pair):
    """A SpatialData of three tables: B aligned onto A, C never aligned."""
    import spatialdata as sd

    src, tgt = pair
    moving = src.copy()
    del moving.obsm[Key.ALIGNED], moving.uns["loki"]
    sdata = sd.SpatialData(tables={"A": tgt.copy(), "B": moving, "C": tgt.copy()})
    lk.tl.align(sdata, source="B", target="A", use="emb", method="rigid")
    assert sdata.tables["B"].uns["loki"][Key.ALIGNED]["target"] == "A"
    return sdata


def test_default_sections_are_the_aligned_ones_and_their_targets(three_tables, recwarn):
    fig = lk.pl.alignment(three_tables, show=False)
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["A", "B"]
    assert not [w for w in recwarn if "unaligned" in str(w.message)]
    plt.close(fig)


def test_a_section_drawn_unaligned_is_named(three_tables, pair):
    with pytest.warns(
        UserWarning, match=r"Section\(s\) 'C' have no \.obsm\['spatial_aligned'\] .* targets: 'A'"
    ):
        fig = lk.pl.alignment(three_tables, sections=["A", "B", "C"], show=False)
    assert len(fig.axes[1].collections) == 3  # still drawn, as asked
    with pytest.warns(UserWarning, match=r"Section\(s\) 'C' have no"):  # the target is not plotted
        lk.pl.alignment(three_tables, sections=["B", "C"], show=False)
    src, tgt = pair
    with warnings.catch_warnings():  # an AnnData target has no name to check: no warning
        warnings.simplefilter("error")
        lk.pl.alignment([tgt, src], show=False)
    plt.close("all")


def test_the_legend_of_many_sections_does_not_hide_their_spots():
    # loc="best" put the legend of 25 sections inside the "after" panel, over the spots
    rng = np.random.default_rng(0)
    sections = []
    for i in range(25):
        a = lk.datasets.synthetic_tissue(n_spots=30, n_genes=5, seed=0)
        a.obsm[Key.ALIGNED] = a.obsm["spatial"] + i + rng.normal(size=(a.n_obs, 2))
        sections.append(a)
    for kind in ("overlay", "stack"):
        fig = lk.pl.alignment(sections, kind=kind, show=False)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.axes[1].get_legend().get_window_extent(renderer)
        panel = fig.axes[1].get_window_extent(renderer)
        assert legend.x0 >= panel.x1  # beside the panel
        assert len(fig.axes[1].get_legend().get_texts()) == 25
        plt.close(fig)
