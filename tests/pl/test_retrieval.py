from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import loki as lk


def test_gallery_shows_query_and_its_hits():
    rng = np.random.default_rng(0)
    bank_emb = rng.normal(size=(20, 8))
    query_emb = bank_emb[[4, 7, 9]] + 0.01
    hits = lk.tl.retrieve(query_emb, bank_emb, k=4)
    # each patch is a flat colour that encodes its index, so the drawn images can be traced back
    bank_img = np.repeat(np.arange(20, dtype=np.uint8)[:, None, None, None] * 10, 3, axis=3) * np.ones(
        (1, 6, 6, 3), np.uint8
    )
    query_img = np.full((3, 6, 6, 3), 255, np.uint8)
    fig = lk.pl.retrieval_gallery(hits, query_img, bank_img, n_hits=3, truth=[4, 7, 9], show=False)
    axes = np.array(fig.axes).reshape(3, 4)
    for row, q in zip(axes, range(3), strict=True):
        top = hits[hits.query_index == q].sort_values("rank")
        assert row[0].get_title() == f"query {q}"
        for a, (_, h) in zip(row[1:], top.head(3).iterrows(), strict=True):
            assert a.images[0].get_array()[0, 0, 0] == h.bank_index * 10
            assert a.get_title() == f"#{int(h['rank'])} {h.score:.3f}"
        # the true pair is the top hit and gets a green frame
        assert row[1].spines["left"].get_edgecolor()[:3] == pytest.approx((0, 0.5, 0), abs=0.01)
    plt.close(fig)


def test_gallery_errors():
    hits = lk.tl.retrieve(np.eye(3), np.eye(3), k=2)
    imgs = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(KeyError, match=r"hits\.columns"):
        lk.pl.retrieval_gallery(hits.drop(columns="score"), imgs, imgs, show=False)
    with pytest.raises(ValueError, match=r"bank rows \[1, 2\] outside bank_images \(1 images"):
        lk.pl.retrieval_gallery(hits, imgs, imgs[:1], show=False)
    with pytest.raises(ValueError, match="images"):
        lk.pl.retrieval_gallery(hits, imgs[0], imgs, show=False)


def test_gallery_refuses_rows_outside_the_images():
    hits = pd.DataFrame({"query_index": [0, 0], "rank": [1, 2], "bank_index": [0, -1], "score": [0.9, 0.8]})
    query = np.zeros((1, 4, 4, 3), np.uint8)
    bank = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)])
    plt.close("all")
    # a negative row would draw bank_images[-1] as the hit
    with pytest.raises(ValueError, match=r"bank rows \[-1\] outside bank_images \(2 images, rows 0 to 1\)"):
        lk.pl.retrieval_gallery(hits, query, bank, n_hits=2, show=False)
    with pytest.raises(ValueError, match=r"truth holds 0 entries, but query 0 is drawn"):
        lk.pl.retrieval_gallery(hits.iloc[:1], query, bank, n_hits=1, truth=[], show=False)
    assert plt.get_fignums() == []
    fig = lk.pl.retrieval_gallery(hits.iloc[:1], query, bank, n_hits=1, truth=[0], show=False)
    assert fig.axes[1].images[0].get_array().max() == 0  # bank row 0, framed as the true pair
    assert fig.axes[1].spines["left"].get_linewidth() == 3
    plt.close(fig)


def test_patches_imshow_would_clip_are_refused():
    # float patches in 0-255 were drawn white (imshow clips floats to [0, 1]), with no error
    hits = pd.DataFrame({"query_index": [0, 0], "rank": [1, 2], "bank_index": [0, 1], "score": [0.9, 0.8]})
    floats = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3))
    plt.close("all")
    with pytest.raises(
        ValueError, match=r"query_images hold values in \[.*\], outside \[0, 1\.0\] for float64"
    ):
        lk.pl.retrieval_gallery(hits, floats, floats / 255, n_hits=2, show=False)
    with pytest.raises(ValueError, match=r"bank_images hold values in \[.*\], outside \[0, 255\] for uint16"):
        lk.pl.retrieval_gallery(hits, floats / 255, (floats * 257).astype(np.uint16), n_hits=2, show=False)
    with pytest.raises(ValueError, match=r"bank_images must hold numbers .* got dtype <U1"):
        lk.pl.retrieval_gallery(hits, floats / 255, np.full((2, 4, 4, 3), "a"), n_hits=2, show=False)
    assert plt.get_fignums() == []
    # a bank row no hit draws is not checked (a large bank is not scanned); floats in [0, 1] are drawn
    bank = np.concatenate([floats[:2] / 255, np.full((1, 4, 4, 3), 300.0)])
    fig = lk.pl.retrieval_gallery(hits, floats / 255, bank, n_hits=2, show=False)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), floats[0] / 255)
    plt.close(fig)


def test_gallery_takes_query_names():
    # queries=["spot_b"] raised "invalid literal for int() with base 10"
    emb = np.eye(3) + 0.1
    hits = lk.tl.retrieve(
        pd.DataFrame(emb, index=["spot_a", "spot_b", "spot_c"]), emb, k=2, bank_ids=["t0", "t1", "t2"]
    )
    imgs = np.arange(3, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8) * 50
    plt.close("all")
    fig = lk.pl.retrieval_gallery(hits, imgs, imgs, queries=["spot_c", 0], n_hits=1, show=False)
    assert [a.get_title() for a in fig.axes[::2]] == ["query 2", "query 0"]
    assert fig.axes[1].images[0].get_array()[0, 0, 0] == 100  # spot_c's top hit is bank row 2
    plt.close(fig)
    with pytest.raises(
        ValueError, match=r"Queries \['spot_x'\] are not named in hits\['query'\] \(e\.g\. \['spot_a'"
    ):
        lk.pl.retrieval_gallery(hits, imgs, imgs, queries=["spot_x"], show=False)
    with pytest.raises(ValueError, match=r"query positions \(integers\) or names .* got 1\.5"):
        lk.pl.retrieval_gallery(hits, imgs, imgs, queries=[1.5], show=False)
    assert plt.get_fignums() == []
