"""Image-to-transcriptomics retrieval end to end on the bundled MOB sections: embeddings in SpatialData
tables, a reference library of several sections, a zarr round trip, Recall@K from the hit table."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import loki as lk

SECTIONS = ("MOB3", "MOB4")


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mob():
    """MOB3 and MOB4 with stand-in embeddings: text from each spot's expression, image = text + noise.

    A trained model is not needed to check how retrieval composes with SpatialData, AnnData and the
    metrics; the stand-ins give every query a known true pair (its own spot) that ranks high.
    """
    sdata = lk.datasets.mob(list(SECTIONS))
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(1000, 24)).astype(np.float32)
    for name in SECTIONS:
        t = sdata.tables[name]
        x = np.log1p(np.asarray(t.X.todense(), dtype=np.float32))
        text = x @ proj
        t.obsm[lk.Key.TEXT] = text
        t.obsm[lk.Key.IMAGE] = text + rng.normal(scale=0.5 * text.std(), size=text.shape).astype(np.float32)
    return sdata


def test_spatialdata_anndata_arrays_and_zarr_give_one_hit_table(mob, tmp_path):
    t4 = mob.tables["MOB4"]
    obs, uns, obsm = list(t4.obs.columns), set(t4.uns), set(t4.obsm)
    hits = lk.tl.retrieve(mob, mob, k=10, query_table_key="MOB4", bank_table_key="MOB4")
    assert (t4.obs.columns.tolist(), set(t4.uns), set(t4.obsm)) == (obs, uns, obsm)  # nothing written
    pd.testing.assert_frame_equal(lk.tl.retrieve(t4, t4, k=10), hits)
    arrays = lk.tl.retrieve(
        pd.DataFrame(t4.obsm[lk.Key.IMAGE], index=t4.obs_names),
        t4.obsm[lk.Key.TEXT],
        k=10,
        bank_ids=t4.obs_names,
    )
    pd.testing.assert_frame_equal(arrays, hits)
    # the scores are the cosine similarities, best first, and the true pair is mostly the top hit
    sim = _unit(t4.obsm[lk.Key.IMAGE]) @ _unit(t4.obsm[lk.Key.TEXT]).T
    np.testing.assert_allclose(
        hits["score"], sim[hits["query_index"], hits["bank_index"]], rtol=1e-5, atol=1e-6
    )
    top1 = hits[hits["rank"] == 1]
    assert (top1["bank_index"].to_numpy() == top1["query_index"].to_numpy()).mean() > 0.5

    mob.write(tmp_path / "mob.zarr")
    back = sd.read_zarr(tmp_path / "mob.zarr")
    pd.testing.assert_frame_equal(
        lk.tl.retrieve(back, back, k=10, query_table_key="MOB4", bank_table_key="MOB4"), hits
    )
    # a view and a backed AnnData are read as they are
    view = t4[t4.obs["array_row"] < 20]
    on_view = lk.tl.retrieve(view, t4, k=10)
    assert on_view["query"].tolist() == hits[hits["query"].isin(view.obs_names)]["query"].tolist()
    t4.write_h5ad(tmp_path / "mob4.h5ad")
    backed = ad.read_h5ad(tmp_path / "mob4.h5ad", backed="r")
    pd.testing.assert_frame_equal(lk.tl.retrieve(backed, backed, k=10), hits)
    backed.file.close()


def test_reference_library_of_sections_and_recall_from_hits(mob):
    t3, t4 = mob.tables["MOB3"], mob.tables["MOB4"]
    library = ad.concat([t3, t4], label="section", keys=list(SECTIONS), index_unique="-")
    n = library.n_obs
    truth = np.arange(t3.n_obs, n)  # MOB4 query i is library row n_MOB3 + i
    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)  # unique names: no warning
        hits = lk.tl.retrieve(t4, library, k=int(0.1 * n) + 1, bank_metadata=["section"])
    assert (hits.loc[hits["rank"] == 1, "section"] == "MOB4").mean() > 0.5
    sim = _unit(t4.obsm[lk.Key.IMAGE]) @ _unit(library.obsm[lk.Key.TEXT]).T
    ks = [0.01, 0.05, 0.1]
    expected = lk.metrics.recall_at_k(sim, ks, targets=truth)
    assert expected[0] > 0.3  # far above a random ranking's 0.01
    np.testing.assert_array_equal(lk.metrics.recall_at_k(hits, ks, targets=truth, n_candidates=n), expected)
    # too few hits per query for the quantile: a true pair outside them could still count
    with pytest.raises(ValueError, match=r"Recall@0.2 of 841 bank rows needs the top 169 hits .* k >= 169"):
        lk.metrics.recall_at_k(hits, 0.2, targets=truth, n_candidates=n)
    with pytest.raises(ValueError, match="pass targets= .* and n_candidates="):
        lk.metrics.recall_at_k(hits, 0.05)
    # approximate search: the same seed gives the same hits
    for search in ("pca", "ivf"):
        a = lk.tl.retrieve(t4, library, k=5, search=search, seed=3)
        pd.testing.assert_frame_equal(a, lk.tl.retrieve(t4, library, k=5, search=search, seed=3))


def test_recall_at_k_of_a_hit_table_matches_the_similarity_matrix():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n_q, n_b, d = rng.integers(1, 20), rng.integers(2, 60), rng.integers(1, 5)
        # small integer embeddings: many exact ties, which count against the target
        q = rng.integers(-2, 3, (n_q, d)).astype(float) + 0.5
        b = rng.integers(-2, 3, (n_b, d)).astype(float) + 0.25
        targets = rng.integers(0, n_b, n_q)
        full = lk.tl.retrieve(q, b, k=int(n_b))
        sim = np.zeros((n_q, n_b))
        sim[full["query_index"], full["bank_index"]] = full["score"]  # retrieve's own float32 scores
        top = int(rng.integers(1, n_b + 1))
        hits = full[full["rank"] <= top]
        for k in (0.05, 0.1, 0.3, 1.0):
            expected = lk.metrics.recall_at_k(sim, k, targets=targets)
            enough = top >= min(int(np.floor(k * n_b + 1e-9)) + 1, n_b)
            try:
                got = lk.metrics.recall_at_k(hits, k, targets=targets, n_candidates=int(n_b))
            except ValueError as e:  # refused only when a true pair outside the hits could count
                refused = str(e)
            else:
                refused = None
            if refused is not None:
                assert not enough
                assert "Retrieve with k >=" in refused
                continue
            assert got == expected


def test_recall_at_k_refuses_an_integer_k():
    # k=1 read as the quantile 100% counted every query: Recall@1 of a random ranking was 1.0
    sim = np.random.default_rng(0).normal(size=(20, 20))
    with pytest.raises(
        ValueError, match=r"got the integer 1: k=1 would count every query.*1 / n_candidates|m / n_candidates"
    ):
        lk.metrics.recall_at_k(sim, 1)
    assert lk.metrics.recall_at_k(sim, 1.0) == 1.0
    assert lk.metrics.recall_at_k(sim, 1 / 20) == lk.metrics.recall_at_k(
        lk.metrics.target_ranks(sim), 0.05, n_candidates=20
    )
