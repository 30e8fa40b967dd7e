"""Result keys that would overwrite a call's inputs, a SpatialData table's links or the section metadata."""

from __future__ import annotations

import copy

import anndata as ad
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


def _section_with_instance(mob1, instance: str) -> tuple[SpatialData, object]:
    """A copy of MOB1 whose instance column (``spot_id``) is named ``instance``."""
    table = mob1.tables["MOB1"].copy()
    table.obs = table.obs.rename(columns={"spot_id": instance})
    table.uns["spatialdata_attrs"] = {**table.uns["spatialdata_attrs"], "instance_key": instance}
    return SpatialData(images=mob1.images, shapes=mob1.shapes, tables={"MOB1": table}), table


DERIVED_LINK = (
    r"key_added='spot' also takes \.obs\['{}'\] for its results, which is the table's instance_key "
    r"column \.obs\['{}'\], which links its rows to their shapes\. Choose another key_added\."
)


@pytest.mark.parametrize(
    ("function", "column"),
    [("gene_sentences", "spot_empty"), ("embed_image_cut", "spot_patch_ok")],
)
def test_derived_obs_column_that_is_the_instance_column_is_refused(mob1, model, function, column):
    # the flag column written next to the result (f"{key_added}_empty", f"{key_added}_patch_ok")
    section, table = _section_with_instance(mob1, column)
    before = _state(table)
    call = {
        "gene_sentences": lambda: lk.pp.gene_sentences(section, key_added="spot"),
        "embed_image_cut": lambda: lk.tl.embed_image(section, model, key_added="spot", diameter_um=100.0),
    }[function]
    with pytest.raises(ValueError, match=DERIVED_LINK.format(column, column)):
        call()
    _assert_unchanged(table, before)


def test_embed_image_with_given_patches_writes_no_flags_so_needs_no_free_flag_column(mob1, model):
    section, table = _section_with_instance(mob1, "spot_patch_ok")
    patches = np.zeros((table.n_obs, 16, 16, 3), dtype=np.uint8)
    lk.tl.embed_image(section, model, patches=patches, key_added="spot")
    assert "spot" in table.obsm
    assert table.obs["spot_patch_ok"].equals(mob1.tables["MOB1"].obs["spot_id"].rename("spot_patch_ok"))


@pytest.mark.parametrize("fuse", [False, True])
def test_annotate_fused_key_that_is_use_is_refused(mob1, fuse):
    # with fuse_with the fused scores would overwrite use=, without it the earlier "fused" entry is removed
    table = mob1.tables["MOB1"].copy()
    table.obsm["emb_fused"] = _unit_rows(table.n_obs)
    before = _state(table)
    fuse_with = {"fuse_with": RNG.random((table.n_obs, len(CLASSES)))} if fuse else {}
    match = (
        r"key_added='emb' also takes \.obsm\['emb_fused'\] for its results, which is the call's input "
        r"use='emb_fused'\. Choose another key_added\."
    )
    with pytest.raises(ValueError, match=match):
        lk.tl.annotate(table, class_embeddings=CLASSES, use="emb_fused", key_added="emb", **fuse_with)
    _assert_unchanged(table, before)


@pytest.mark.parametrize("refine", [None, "nms"])
def test_decompose_refined_key_that_is_use_is_refused(mob1, refine):
    # with refine the refined scores would overwrite use=, without it the earlier "refined" entry is removed
    table = mob1.tables["MOB1"].copy()
    table.obsm["emb_refined"] = _unit_rows(table.n_obs)
    before = _state(table)
    match = (
        r"key_added='emb' also takes \.obsm\['emb_refined'\] for its results, which is the call's input "
        r"use='emb_refined'\. Choose another key_added\."
    )
    with pytest.raises(ValueError, match=match):
        lk.tl.decompose(
            table,
            reference=table.copy(),
            cell_type_key="cell_type",
            use="emb_refined",
            reference_use="emb_refined",
            method="nnls",
            refine=refine,
            key_added="emb",
        )
    _assert_unchanged(table, before)


def test_one_tool_may_not_take_another_tools_result_key():
    """`loki align --key-added loki_text` replaced the text embedding (and its record) with aligned
    coordinates; each record now names its tool, and another tool's key is refused."""
    tissue = lk.datasets.synthetic_tissue(n_spots=80, n_genes=30, n_cell_types=3, seed=0)
    lk.pp.gene_sentences(tissue, housekeeping=None)
    assert tissue.uns["loki"][lk.Key.SENTENCE]["tool"] == "pp.gene_sentences"
    tissue.obsm["loki_text"] = np.ones((tissue.n_obs, 4), dtype=np.float32)
    tissue.uns["loki"]["loki_text"] = {"tool": "tl.embed_text", "model": "m"}
    moved = tissue.copy()
    with pytest.raises(
        ValueError,
        match=r"^key_added='loki_text' would replace the result of lk\.tl\.embed_text under that key "
        r"\(\.uns\['loki'\]\['loki_text'\] and what it describes\)\. Choose another key_added\.$",
    ):
        lk.tl.align(
            moved, target=tissue, use=None, method="rigid", mirror=False, n_rotations=1, key_added="loki_text"
        )
    assert moved.obsm["loki_text"].shape == (tissue.n_obs, 4)
    assert moved.uns["loki"]["loki_text"] == {"tool": "tl.embed_text", "model": "m"}
    with pytest.raises(ValueError, match=r"would replace the result of lk\.pp\.gene_sentences"):
        lk.tl.decompose(moved, reference=moved, cell_type_key="cell_type", key_added=lk.Key.SENTENCE)
    # the same tool replaces its own result; a record without a tool (older loki) is not guarded
    lk.pp.gene_sentences(moved, housekeeping=None, n_genes=5)
    assert moved.uns["loki"][lk.Key.SENTENCE]["n_genes"] == 5
    out = lk.tl.align(moved, target=tissue, use=None, method="rigid", mirror=False, n_rotations=1, copy=True)
    assert out.uns["loki"]["spatial_aligned"]["tool"] == "tl.align"
    del moved.uns["loki"]["loki_text"]["tool"]
    lk.tl.align(
        moved, target=tissue, use=None, method="rigid", mirror=False, n_rotations=1, key_added="loki_text"
    )
    assert moved.uns["loki"]["loki_text"]["tool"] == "tl.align"


def test_keys_written_beside_key_added_may_not_take_another_result():
    """The tool check covered key_added only: annotate's label_key replaced the sentences, and a
    derived key (``{key}_fused``, ``{key}_refined``, ``{key}_empty``) replaced or deleted another
    recorded result."""
    rng = np.random.default_rng(0)
    adata = lk.datasets.synthetic_tissue(n_spots=60, n_genes=30, n_cell_types=3, seed=0)
    adata.obsm["emb"] = _unit_rows(adata.n_obs)
    reference = adata.copy()
    reference.obs["cell_type"] = pd.Categorical(rng.choice(["a", "b"], reference.n_obs))
    classes = {"A": rng.normal(size=DIM), "B": rng.normal(size=DIM)}
    lk.pp.gene_sentences(adata, housekeeping=None)
    lk.tl.annotate(adata, class_embeddings=classes, use="emb", key_added="other_fused")
    lk.tl.annotate(adata, class_embeddings=classes, use="emb", key_added="x_empty")
    lk.tl.annotate(adata, class_embeddings=classes, use="emb", key_added="p_refined")
    obs_before, obsm_before, uns_before = adata.obs.copy(), set(adata.obsm), copy.deepcopy(adata.uns["loki"])
    refusals = [
        (
            lambda: lk.tl.annotate(adata, class_embeddings=classes, use="emb", label_key="loki_sentence"),
            r"^label_key='loki_sentence' would replace the result 'loki_sentence' of lk\.pp\.gene_sentences",
        ),
        (
            lambda: lk.tl.annotate(adata, class_embeddings=classes, use="emb", label_key="loki_empty"),
            r"would replace \.obs\['loki_empty'\], part of the result 'loki_sentence' of "
            r"lk\.pp\.gene_sentences \(its empty_key\)",
        ),
        (
            lambda: lk.tl.annotate(adata, class_embeddings=classes, use="emb", key_added="other"),
            r"^key_added='other' also takes 'other_fused' for its results, which would replace the result "
            r"'other_fused' of lk\.tl\.annotate",
        ),
        (
            lambda: lk.tl.decompose(adata, reference=reference, cell_type_key="cell_type", key_added="p"),
            r"^key_added='p' also takes 'p_refined' for its results, which would replace the result 'p_refined'",
        ),
        (
            lambda: lk.pp.gene_sentences(adata, key_added="x", housekeeping=None),
            r"^key_added='x' also takes 'x_empty' for its results, which would replace the result 'x_empty'",
        ),
    ]
    for call, match in refusals:
        with pytest.raises(ValueError, match=match):
            call()
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert set(adata.obsm) == obsm_before
    assert adata.uns["loki"].keys() == uns_before.keys()
    # each result's own rerun passes
    lk.tl.annotate(adata, class_embeddings=classes, use="emb", key_added="other_fused")
    lk.pp.gene_sentences(adata, housekeeping=None, n_genes=3)


def test_a_key_written_under_its_own_name_may_not_take_another_results_column():
    """gene_sentences(key_added="cell_type") replaced annotate's label column .obs['cell_type'] (the
    key is the call's own result, so only other records were checked, not the columns they name)."""
    rng = np.random.default_rng(1)
    adata = lk.datasets.synthetic_tissue(n_spots=40, n_genes=20, n_cell_types=3, seed=0)
    adata.obsm["emb"] = _unit_rows(adata.n_obs)
    classes = {"A": rng.normal(size=DIM), "B": rng.normal(size=DIM)}
    lk.tl.annotate(adata, class_embeddings=classes, use="emb", label_key="cell_type")
    labels = adata.obs["cell_type"].copy()
    part = r"would replace \.obs\['cell_type'\], part of the result 'loki_annotation' of lk\.tl\.annotate \(its label_key\)"
    with pytest.raises(ValueError, match=rf"^key_added='cell_type' {part}"):
        lk.pp.gene_sentences(adata, key_added="cell_type", housekeeping=None)
    with pytest.raises(ValueError, match=rf"^label_key='cell_type' {part}"):
        lk.tl.annotate(adata, class_embeddings=classes, use="emb", key_added="cell_type")
    pd.testing.assert_series_equal(adata.obs["cell_type"], labels)
    lk.tl.annotate(adata, class_embeddings=classes, use="emb", label_key="cell_type")  # its own rerun


def _write_all_then_fail(adata) -> None:
    from loki._utils import all_or_nothing, write_layer, write_obs, write_obsm, write_uns

    with all_or_nothing():
        write_obs(adata, "kept", np.zeros(adata.n_obs))
        write_obs(adata, "new", np.zeros(adata.n_obs))
        write_obsm(adata, "kept", np.zeros((adata.n_obs, 2)))
        write_layer(adata, "new", adata.X)
        write_uns(adata, "new", {"tool": "tl.test"})
        raise RuntimeError("late")


def _inner_block_fails_and_is_caught(adata, emb) -> None:
    from loki._utils import all_or_nothing, write_obsm, write_uns

    with all_or_nothing():
        write_obsm(adata, "outer", emb)
        try:
            with all_or_nothing():
                write_uns(adata, "first", {"tool": "tl.other"})
                write_obsm(adata, "inner", emb)
                raise ValueError("inner")
        except ValueError:
            pass


def _outer_block_fails_after_the_inner_one(adata, emb) -> None:
    from loki._utils import all_or_nothing, write_obsm

    with all_or_nothing():
        with all_or_nothing():
            write_obsm(adata, "inner", emb)
        raise RuntimeError("after the inner block")


def test_all_or_nothing_undoes_the_writes_of_a_failing_block():
    """What a tool's write block replaced comes back, what it added goes; an inner block that failed and was
    caught is undone alone; writes outside a block are not recorded."""
    from loki._utils import write_uns

    adata = lk.datasets.synthetic_tissue(30, 10, 2, seed=0)
    adata.obs["kept"] = pd.Categorical(np.resize(["a", "b"], adata.n_obs))
    adata.obsm["kept"] = emb = np.ones((adata.n_obs, 2))
    obs, uns = adata.obs.copy(), copy.deepcopy(dict(adata.uns))
    with pytest.raises(RuntimeError, match="late"):
        _write_all_then_fail(adata)
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert adata.obsm["kept"] is emb
    assert list(adata.obsm) == ["spatial", "proportions", "kept"]
    assert "new" not in adata.layers
    assert adata.uns.keys() == uns.keys()  # no 'loki' left behind

    write_uns(adata, "first", {"tool": "tl.test"})  # outside a block: written, not recorded
    _inner_block_fails_and_is_caught(adata, emb)
    assert adata.uns["loki"] == {"first": {"tool": "tl.test"}}
    assert "outer" in adata.obsm
    assert "inner" not in adata.obsm
    with pytest.raises(RuntimeError, match="after the inner block"):
        _outer_block_fails_after_the_inner_one(adata, emb)
    assert "inner" not in adata.obsm
    assert "outer" in adata.obsm


def _fail_record_write(monkeypatch, module: str) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("the record could not be written")

    monkeypatch.setattr(f"loki.tl.{module}.write_uns", fail)


def _snapshot(adata) -> tuple:
    return (
        adata.obs.copy(),
        {k: v for k, v in adata.obsm.items()},
        dict(adata.layers),
        copy.deepcopy(dict(adata.uns)),
    )


def _assert_as_before(adata, before) -> None:
    obs, obsm, layers, uns = before
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert obsm.keys() == adata.obsm.keys()
    assert all(adata.obsm[k] is v for k, v in obsm.items())
    assert layers.keys() == adata.layers.keys()
    assert adata.uns.keys() == uns.keys()
    assert adata.uns.get("loki", {}).keys() == uns.get("loki", {}).keys()


def test_annotate_failing_at_its_record_leaves_the_table_as_it_was(monkeypatch):
    """The scores, labels, and an earlier call's fused scores (dropped by a call without fuse_with) came
    out of step with the record when its write failed."""
    rng = np.random.default_rng(2)
    adata = lk.datasets.synthetic_tissue(n_spots=40, n_genes=20, n_cell_types=3, seed=0)
    adata.obsm["emb"] = _unit_rows(adata.n_obs)
    classes = {"A": rng.normal(size=DIM), "B": rng.normal(size=DIM)}
    fuse = pd.DataFrame(rng.random((adata.n_obs, 2)), index=adata.obs_names, columns=["A", "B"])
    lk.tl.annotate(adata, class_embeddings=classes, use="emb", fuse_with=fuse)
    assert "loki_annotation_fused" in adata.obsm
    before = _snapshot(adata)
    _fail_record_write(monkeypatch, "_annotate")
    with pytest.raises(RuntimeError, match="could not be written"):
        lk.tl.annotate(adata, class_embeddings=classes, use="emb")  # no fuse_with: drops the fused scores
    _assert_as_before(adata, before)


def test_decompose_failing_at_its_record_leaves_the_table_as_it_was(monkeypatch):
    spots = lk.datasets.synthetic_tissue(n_spots=60, n_genes=30, n_cell_types=3, seed=0)
    ref = lk.datasets.synthetic_reference(spots, 10, seed=0)
    lk.tl.decompose(spots, reference=ref, cell_type_key="cell_type", refine="nms")
    assert "loki_proportions_refined" in spots.obsm
    before = _snapshot(spots)
    _fail_record_write(monkeypatch, "_decompose")
    with pytest.raises(RuntimeError, match="could not be written"):
        lk.tl.decompose(spots, reference=ref, cell_type_key="cell_type")  # no refine: drops the refined
    _assert_as_before(spots, before)


def test_predict_expression_failing_at_its_record_leaves_the_table_as_it_was(monkeypatch):
    query = lk.datasets.synthetic_tissue(n_spots=30, n_genes=10, n_cell_types=2, seed=0)
    ref = lk.datasets.synthetic_tissue(n_spots=50, n_genes=10, n_cell_types=2, seed=1)
    query.obsm["loki_image"], ref.obsm["loki_text"] = _unit_rows(query.n_obs), _unit_rows(ref.n_obs)
    before = _snapshot(query)
    _fail_record_write(monkeypatch, "_predict")
    with pytest.raises(RuntimeError, match="could not be written"):
        lk.tl.predict_expression(query, ref, output="layer", top_k=5)
    _assert_as_before(query, before)


def test_a_call_on_a_view_failing_while_it_writes_leaves_it_as_it_was(monkeypatch):
    """anndata makes a view actual on its first write, with new .obs / .uns: the undo kept for the view's
    mappings put nothing back, and the sentences stayed behind."""
    view = lk.datasets.synthetic_tissue(n_spots=50, n_genes=30, n_cell_types=3, seed=0)[:20]
    columns, uns = list(view.obs.columns), list(view.uns)

    def fail(*args, **kwargs):
        raise RuntimeError("the record could not be written")

    monkeypatch.setattr("loki.pp._sentences.write_uns", fail)
    with pytest.warns(lk.LokiWarning, match="view"), pytest.raises(RuntimeError, match="record"):
        lk.pp.gene_sentences(view, n_genes=5, housekeeping=None)
    assert list(view.obs.columns) == columns
    assert list(view.uns) == uns


def test_relabelling_drops_the_colours_scanpy_kept_for_the_old_categories():
    """scanpy paints categories with .uns[f'{key}_colors'] in order: stale colours would swap classes."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((40, 2), dtype=np.float32))
    adata.obsm["emb"] = rng.normal(size=(40, DIM))
    four = {c: adata.obsm["emb"][i] for i, c in enumerate("ABCD")}  # each class wins its own spot at least
    lk.tl.annotate(adata, class_embeddings=four, use="emb")
    adata.uns["loki_annotation_colors"] = ["#ff0000", "#00ff00", "#0000ff", "#000000"]  # as sc.pl writes
    lk.tl.annotate(adata, class_embeddings=four, use="emb")  # the same categories: a chosen palette stays
    assert adata.uns["loki_annotation_colors"] == ["#ff0000", "#00ff00", "#0000ff", "#000000"]
    three = {c: four[c] for c in "BCD"}
    lk.tl.annotate(adata, class_embeddings=three, use="emb")
    assert list(adata.obs["loki_annotation"].cat.categories) == ["B", "C", "D"]
    # the stale palette is gone; annotate stores its own, one colour per new category
    from matplotlib.colors import to_hex

    from loki.pl._common import category_colours

    assert adata.uns["loki_annotation_colors"] == [to_hex(c) for c in category_colours(3)]


def test_a_failed_write_puts_dropped_colours_back():
    from loki._utils import all_or_nothing, write_obs

    adata = ad.AnnData(np.zeros((4, 2), dtype=np.float32))
    adata.obs["label"] = pd.Categorical(["a", "b", "a", "b"])
    adata.uns["label_colors"] = ["#111111", "#222222"]
    dropped = []

    def relabel_then_fail():
        with all_or_nothing():
            write_obs(adata, "label", pd.Categorical(["c", "c", "a", "a"]))
            dropped.append("label_colors" not in adata.uns)
            raise RuntimeError("late")

    with pytest.raises(RuntimeError, match="late"):
        relabel_then_fail()
    assert dropped == [True]
    assert adata.uns["label_colors"] == ["#111111", "#222222"]
    assert list(adata.obs["label"]) == ["a", "b", "a", "b"]


def test_relabelling_a_view_drops_the_stale_colours_of_the_view_only():
    """anndata ignores a deletion from a view's .uns: the stale colours stayed on the (now actual) view."""
    from loki._utils import write_obs

    adata = ad.AnnData(np.zeros((4, 2), dtype=np.float32))
    adata.obs["label"] = pd.Categorical(["a", "b", "a", "b"])
    adata.uns["label_colors"] = ["#111111", "#222222"]
    view = adata[:3]
    with pytest.warns(UserWarning, match="initializing view as actual"):
        write_obs(view, "label", pd.Categorical(["c", "d", "e"]))
    assert not view.is_view
    assert list(view.obs["label"]) == ["c", "d", "e"]
    assert "label_colors" not in view.uns
    assert adata.uns["label_colors"] == ["#111111", "#222222"]  # the parent keeps its own


@pytest.mark.parametrize("key", ["run/1", ".", "..", "k" * 256])
def test_a_result_key_h5ad_or_zarr_cannot_store_is_refused(key):
    """``key_added="run/1"`` was written to h5ad, whose file then could not be read back."""
    from loki._utils import check_result_key

    table = ad.AnnData(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"key_added=.* cannot be written to h5ad or zarr"):
        check_result_key(table, key, ("obs", "uns"))


def test_obsm_columns_zarr_or_h5ad_cannot_store_are_named_with_the_way_out():
    """'/' was warned of; '_index' and names over 255 bytes broke the write without a word."""
    from loki._utils._write import write_obsm

    table = ad.AnnData(np.ones((3, 2)))
    frame = pd.DataFrame(np.ones((3, 3)), index=table.obs_names, columns=["T/NK", "_index", "β" * 200])
    with pytest.warns(lk.LokiWarning) as record:
        write_obsm(table, "props", frame)
    (message,) = (str(w.message) for w in record)
    assert "'T/NK': '/' separates groups" in message
    assert "'_index': anndata keeps '_index'" in message
    assert "longer than 255 bytes" in message
    assert ".rename(columns=lambda c: c.replace('/', '-'))" in message
    assert table.obsm["props"] is frame  # written all the same: the result is kept
