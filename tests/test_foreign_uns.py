"""A ``.uns['loki']`` that is not loki's (not a mapping) is refused before any tool writes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import loki as lk


@pytest.fixture(scope="module")
def model():
    return lk.models.load("loki-tiny", device="cpu", seed=0)


CALLS = {
    "gene_sentences": lambda sdata, model: lk.pp.gene_sentences(sdata, table_key="MOB2"),
    "embed_image": lambda sdata, model: lk.tl.embed_image(sdata, model, table_key="MOB2", diameter_um=5000),
    "spot_patches": lambda sdata, model: lk.pp.spot_patches(sdata, table_key="MOB2", size=8, key_added="p"),
}


@pytest.mark.parametrize("foreign", ["another tool's value", None])
@pytest.mark.parametrize("call", CALLS)
def test_foreign_loki_uns_is_refused_before_writing(call, foreign, model):
    sdata = lk.datasets.mob("MOB2")
    table = sdata.tables["MOB2"]
    table.uns["loki"] = foreign
    obs, obsm = list(table.obs.columns), list(table.obsm)
    with pytest.raises(
        ValueError, match=rf"\.uns\['loki'\] holds a {type(foreign).__name__}, not loki's records"
    ):
        CALLS[call](sdata, model)
    assert list(table.obs.columns) == obs
    assert list(table.obsm) == obsm
    assert table.uns["loki"] == foreign


def test_a_stack_target_with_foreign_loki_uns_is_refused_before_writing():
    rng = np.random.default_rng(0)
    sections = [
        ad.AnnData(rng.random((60, 5)).astype("f4"), obsm={"spatial": rng.random((60, 2)) * 100})
        for _ in "ab"
    ]
    sections[1].uns["loki"] = "another tool's value"
    with pytest.raises(ValueError, match=r"\.uns\['loki'\] holds a str, not loki's records"):
        lk.tl.align_sections(sections, target=1, use=None, method="rigid", max_iter=5, n_rotations=1)
    assert [list(a.obsm) for a in sections] == [["spatial"], ["spatial"]]
    assert "loki" not in sections[0].uns
