"""A ``.uns['loki']`` that is not loki's (not a mapping) is refused before any tool writes."""

from __future__ import annotations

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


@pytest.mark.parametrize("call", CALLS)
def test_foreign_loki_uns_is_refused_before_writing(call, model):
    sdata = lk.datasets.mob("MOB2")
    table = sdata.tables["MOB2"]
    table.uns["loki"] = "another tool's value"
    obs, obsm = list(table.obs.columns), list(table.obsm)
    with pytest.raises(ValueError, match=r"\.uns\['loki'\] holds a str, not loki's records"):
        CALLS[call](sdata, model)
    assert list(table.obs.columns) == obs
    assert list(table.obsm) == obsm
    assert table.uns["loki"] == "another tool's value"
