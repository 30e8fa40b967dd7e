from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mob1():
    """MOB1 section (bundled real data) with gene sentences."""
    import loki as lk

    sdata = lk.datasets.mob("MOB1")
    lk.pp.gene_sentences(sdata, table_key="MOB1")
    return sdata


@pytest.fixture(scope="session")
def mob1_pairs(mob1):
    """(patches of 200 µm at 48 px, uint8; sentences) of MOB1."""
    import loki as lk

    patches = np.asarray(lk.pp.spot_patches(mob1, table_key="MOB1", size=48, diameter_um=200))
    sentences = mob1.tables["MOB1"].obs[lk.Key.SENTENCE].astype(str).tolist()
    return patches, sentences


@pytest.fixture
def tiny():
    import loki as lk

    return lk.models.load("loki-tiny", device="cpu", seed=0)
