"""Result keys that would overwrite a call's inputs, a SpatialData table's links or the section metadata."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from spatialdata import SpatialData

import loki as lk

DIM = 8
RNG = np.random.default_rng(0)
CLASSES = {"A": RNG.normal(size=DIM), "B": RNG.normal(size=DIM)}


def _unit_rows(n: int) -> np.ndarray:
    x = RNG.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mob1():
    """MOB1 (bundled real data, a SpatialData table with region/instance keys) with sentences and embeddings."""
    sdata = lk.datasets.mob("MOB1")
    table = sdata.tables["MOB1"]
    lk.pp.gene_sentences(table)
    table.obsm[lk.Key.IMAGE] = _unit_rows(table.n_obs)
    table.obsm[lk.Key.TEXT] = _unit_rows(table.n_obs)
    table.obs["cell_type"] = pd.Categorical(np.resize(["a", "b"], table.n_obs))
    return sdata


@pytest.fixture(scope="module")
def model():
    return lk.models.load("loki-tiny", device="cpu", seed=0)


def _state(table) -> tuple:
    obsm = {k: (v.copy() if isinstance(v, pd.DataFrame) else np.array(v)) for k, v in table.obsm.items()}
    return table.obs.copy(), obsm, dict(table.layers), copy.deepcopy(dict(table.uns))


def _assert_unchanged(table, before: tuple) -> None:
    obs, obsm, layers, uns = before
    pd.testing.assert_frame_equal(table.obs, obs)
    assert list(table.obsm) == list(obsm)
    for key, value in obsm.items():
        np.testing.assert_array_equal(np.asarray(table.obsm[key]), np.asarray(value))
    assert list(table.layers) == list(layers)
    assert table.uns == uns


def _call(name, section, table, model):
    """The call of case ``name`` on ``section`` (a SpatialData) whose table is ``table``."""
    return {
        "gene_sentences": lambda **kw: lk.pp.gene_sentences(section, **kw),
        "spot_patches": lambda **kw: lk.pp.spot_patches(section, size=16, **kw),
        "embed_text": lambda **kw: lk.tl.embed_text(section, model, **kw),
        "embed_image": lambda **kw: lk.tl.embed_image(
            table, model, patches=np.zeros((table.n_obs, 16, 16, 3), dtype=np.uint8), **kw
        ),
        "annotate": lambda **kw: lk.tl.annotate(section, class_embeddings=CLASSES, **kw),
        "decompose": lambda **kw: lk.tl.decompose(
            section, reference=table.copy(), cell_type_key="cell_type", reference_use=lk.Key.IMAGE, **kw
        ),
        "predict_expression": lambda **kw: lk.tl.predict_expression(
            section, table.copy(), output="layer", **kw
        ),
    }[name]


LINK = r"table's {} column \.obs\['{}'\], which links its rows to their shapes\. Choose another {}\."
META = r"section metadata \.uns\['loki'\]\['{}'\]\. Choose another key_added\."
COORDS = r"spot coordinates \.obsm\['spatial'\]\. Choose another key_added\."


@pytest.mark.parametrize(
    ("function", "kwargs", "match"),
    [
        ("gene_sentences", {"key_added": "region"}, LINK.format("region_key", "region", "key_added")),
        ("gene_sentences", {"key_added": "spot_id"}, LINK.format("instance_key", "spot_id", "key_added")),
        ("gene_sentences", {"key_added": "microns_per_unit"}, META.format("microns_per_unit")),
        ("spot_patches", {"key_added": "region"}, LINK.format("region_key", "region", "key_added")),
        ("spot_patches", {"key_added": "image_key"}, META.format("image_key")),
        ("embed_text", {"key_added": "spatial"}, COORDS),
        ("embed_text", {"key_added": "spot_diameter_um"}, META.format("spot_diameter_um")),
        ("embed_image", {"key_added": "spatial"}, COORDS),
        ("annotate", {"key_added": lk.Key.IMAGE}, r"input use='loki_image'\. Choose another key_added\."),
        ("annotate", {"key_added": "spatial"}, COORDS),
        ("annotate", {"label_key": "region"}, LINK.format("region_key", "region", "label_key")),
        ("annotate", {"key_added": "spot_id"}, LINK.format("instance_key", "spot_id", "label_key")),
        ("annotate", {"key_added": "image_key"}, META.format("image_key")),
        (
            "decompose",
            {"use": lk.Key.IMAGE, "key_added": lk.Key.IMAGE},
            r"input use='loki_image'\. Choose another key_added\.",
        ),
        ("decompose", {"use": lk.Key.IMAGE, "key_added": "spatial"}, COORDS),
        ("decompose", {"use": lk.Key.IMAGE, "key_added": "tiles"}, META.format("tiles")),
        ("predict_expression", {"key_added": "image_key"}, META.format("image_key")),
    ],
)
def test_result_key_that_would_overwrite_is_refused_before_any_write(mob1, model, function, kwargs, match):
    table = mob1.tables["MOB1"].copy()
    section = SpatialData(images=mob1.images, shapes=mob1.shapes, tables={"MOB1": table})
    before = _state(table)
    with pytest.raises(ValueError, match=match):
        _call(function, section, table, model)(**kwargs)
    _assert_unchanged(table, before)


def test_link_columns_are_free_names_without_spatialdata_attrs(mob1):
    table = mob1.tables["MOB1"].copy()
    del table.uns["spatialdata_attrs"]
    lk.tl.annotate(table, class_embeddings=CLASSES, label_key="region")
    assert set(table.obs["region"]) <= set(CLASSES)
