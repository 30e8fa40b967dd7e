"""A scanpy user's journey from their own tables to text and image embeddings."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from tests.conftest import shared_path

import loki as lk
from loki import Key


@pytest.fixture(scope="module")
def model():
    return lk.models.load("loki-tiny", device="cpu", seed=0)


def _table(n=4) -> ad.AnnData:
    return ad.AnnData(np.ones((n, 2), dtype=np.float32), obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]))


def _patches(n=4, size=32):
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_torch_and_list_patches_embed_as_the_numpy_array(model):
    """A torch uint8 tensor failed with numpy's "Cannot interpret 'torch.uint8' as a data type"; a list of
    patches with "got shape None"."""
    import torch

    patches = _patches()
    expected = lk.tl.embed_image(_table(), model, patches=patches, inplace=False).embedding
    for given in (torch.from_numpy(patches), list(patches), tuple(patches)):
        out = lk.tl.embed_image(_table(), model, patches=given, inplace=False)
        np.testing.assert_allclose(out.embedding, expected, atol=1e-6)
        assert out.patch_ok is None


@pytest.mark.parametrize(
    ("patches", "match"),
    [
        (np.zeros((4, 3, 32, 32), np.uint8), r"got shape \(4, 3, 32, 32\); channels come last: .*transpose"),
        (np.zeros((4, 32, 32, 4), np.uint8), r"drop the alpha channel: pass patches\[\.\.\., :3\]"),
        (np.zeros((4, 32, 32, 3), np.float32), r"must be uint8 \(RGB 0-255\), got float32; convert them"),
        ([np.zeros((32, 32, 3), np.uint8)] * 3 + [np.zeros((16, 32, 3), np.uint8)], r"of different shapes"),
    ],
)
def test_patches_in_another_layout_say_how_to_fix_them_and_write_nothing(model, patches, match):
    table = _table()
    with pytest.raises(ValueError, match=match):
        lk.tl.embed_image(table, model, patches=patches)
    assert Key.IMAGE not in table.obsm
    assert "loki" not in table.uns


def test_pil_patches_are_refused_naming_the_array_to_pass(model):
    from PIL import Image

    table = _table()
    with pytest.raises(ValueError, match=r"list of PIL images; pass one uint8 .* np\.stack"):
        lk.tl.embed_image(table, model, patches=[Image.fromarray(p) for p in _patches()])
    assert "loki" not in table.uns


def _her2st_scanpy_table(n_spots=40) -> tuple[ad.AnnData, pd.Series]:
    """her2st A1 as a scanpy user holds it: counts in a layer, log-normalised .X cut to HVGs, all in .raw."""
    import scanpy as sc

    counts = pd.read_csv(shared_path("her2st_A", "counts", "A1.tsv.gz"), sep="\t", index_col=0).iloc[:n_spots]
    adata = ad.AnnData(
        sparse.csr_matrix(counts.to_numpy(dtype=np.uint16)),
        obs=pd.DataFrame(index=counts.index.astype(str)),
        var=pd.DataFrame(index=counts.columns.astype(str)),
    )
    from_counts = lk.pp.gene_sentences(adata, inplace=False)
    adata.X = adata.X.astype(np.float32)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata.raw = adata
    sc.pp.highly_variable_genes(adata, n_top_genes=300)
    return adata[:, adata.var["highly_variable"]].copy(), from_counts


def test_scanpy_table_to_text_embedding_on_real_her2st(model):
    adata, from_counts = _her2st_scanpy_table()
    # the full gene set is in .raw: log-normalised, it gives the sentences of the raw counts
    lk.pp.gene_sentences(adata, use_raw=True)
    assert adata.obs[Key.SENTENCE].tolist() == from_counts.tolist()
    # a CSC copy of the same table gives the same sentences
    csc = adata.copy()
    csc.X = sparse.csc_matrix(csc.X)
    assert lk.pp.gene_sentences(csc, use_raw=False, inplace=False).equals(
        lk.pp.gene_sentences(adata, use_raw=False, inplace=False)
    )
    lk.tl.embed_text(adata, model, batch_size=7)
    first = adata.obsm[Key.TEXT].copy()
    # batch size does not change the embedding; the same seed gives the same model and embedding
    again = lk.tl.embed_text(
        adata, lk.models.load("loki-tiny", device="cpu", seed=0), batch_size=64, inplace=False
    )
    np.testing.assert_allclose(again, first, atol=1e-5)
    # re-embedding under the same key with another model replaces the embedding and its record
    other = lk.models.load("loki-tiny", device="cpu", seed=1)
    lk.tl.embed_text(adata, other)
    assert adata.uns["loki"][Key.TEXT]["checkpoint_hash"] == other.checkpoint_hash != model.checkpoint_hash
    assert not np.allclose(adata.obsm[Key.TEXT], first)
    # a failing call writes nothing
    before = adata.obsm[Key.TEXT].copy(), dict(adata.uns["loki"][Key.TEXT])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        lk.tl.embed_text(adata, model, batch_size=0)
    np.testing.assert_array_equal(adata.obsm[Key.TEXT], before[0])
    assert adata.uns["loki"][Key.TEXT] == before[1]
