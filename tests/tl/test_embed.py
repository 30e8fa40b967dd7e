from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import loki as lk


@pytest.fixture(scope="module")
def model():
    return lk.models.load("loki-tiny", device="cpu", seed=0)


def _adata(n=6):
    a = ad.AnnData(np.ones((n, 3), dtype=np.float32))
    a.obs[lk.Key.SENTENCE] = [f"Apoe Ptgds Gene{i}" for i in range(n)]
    a.obsm["spatial"] = np.zeros((n, 2))
    return a


def _patches(n=6, size=40):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_embed_text_writes_normalised_float32(model):
    a = _adata()
    assert lk.tl.embed_text(a, model, batch_size=4) is None
    emb = a.obsm[lk.Key.TEXT]
    assert emb.dtype == np.float32
    assert emb.shape == (6, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(emb, model.encode_texts(a.obs[lk.Key.SENTENCE].tolist()), atol=1e-6)
    info = a.uns["loki"][lk.Key.TEXT]
    assert info["model"] == "loki-tiny"
    assert info["checkpoint_hash"] == model.checkpoint_hash
    assert info["batch_size"] == 4


def test_embed_text_missing_sentences_says_what_to_run(model):
    a = _adata()
    del a.obs[lk.Key.SENTENCE]
    with pytest.raises(KeyError, match=r"lk.pp.gene_sentences"):
        lk.tl.embed_text(a, model)
    assert lk.Key.TEXT not in a.obsm
    assert "loki" not in a.uns


def test_embed_text_missing_value_rejected(model):
    a = _adata()
    a.obs[lk.Key.SENTENCE] = pd.Series([None] + ["Apoe"] * 5, index=a.obs_names, dtype=object)
    with pytest.raises(ValueError, match="1 missing sentence"):
        lk.tl.embed_text(a, model)
    assert lk.Key.TEXT not in a.obsm


def test_embed_image_with_patches_and_copy(model):
    a = _adata()
    out = lk.tl.embed_image(a, model, patches=_patches(), key_added="img", copy=True)
    assert "img" not in a.obsm
    assert "img" in out.obsm
    np.testing.assert_array_equal(out.obsm["img"], model.encode_images(_patches()))
    assert out.uns["loki"]["img"]["patch_source"] == "patches"
    with pytest.raises(ValueError, match="diameter_um choose how patches are cut here"):
        lk.tl.embed_image(a, model, patches=_patches(), diameter_um=55.0)
    assert lk.Key.IMAGE not in a.obsm


@pytest.mark.parametrize(
    ("patches", "match"),
    [
        (None, "pass patches="),
        (np.zeros((5, 8, 8, 3), dtype=np.uint8), "5 rows but the table has 6"),
        (np.zeros((6, 8, 8), dtype=np.uint8), "uint8 array"),
        (np.zeros((6, 8, 8, 3), dtype=np.float64), "must be uint8"),
    ],
)
def test_embed_image_bad_patches_write_nothing(model, patches, match):
    a = _adata()
    with pytest.raises(ValueError, match=match):
        lk.tl.embed_image(a, model, patches=patches)
    assert lk.Key.IMAGE not in a.obsm
    assert "loki" not in a.uns


def test_embed_real_section(model):
    sdata = lk.datasets.mob("MOB2")
    lk.pp.gene_sentences(sdata, table_key="MOB2")
    lk.tl.embed_image(sdata, model, table_key="MOB2")
    lk.tl.embed_text(sdata, model, table_key="MOB2")
    table = sdata.tables["MOB2"]
    assert table.obsm[lk.Key.IMAGE].shape == table.obsm[lk.Key.TEXT].shape == (table.n_obs, model.embed_dim)
    assert lk.Key.PATCH_OK in table.obs
    patches = np.asarray(lk.pp.spot_patches(sdata, table_key="MOB2", size=model.image_size))
    np.testing.assert_allclose(table.obsm[lk.Key.IMAGE], model.encode_images(patches), atol=1e-6)
    with pytest.raises(KeyError, match=r"sdata\.tables"):
        lk.tl.embed_text(sdata, model, table_key="MOB9")


def test_patches_cut_area_by_area_come_back_in_table_order(model, monkeypatch):
    # embed_image cuts spots grouped by image block; any grouping must give the table-order result
    sdata = lk.datasets.mob("MOB2")
    table = sdata.tables["MOB2"]
    shuffled = np.random.default_rng(0).permutation(table.n_obs)
    monkeypatch.setattr("loki.pp._patches.space_order", lambda boxes, rows, cols: shuffled)
    lk.tl.embed_image(sdata, model, table_key="MOB2", batch_size=64)
    patches = np.asarray(lk.pp.spot_patches(sdata, table_key="MOB2", size=model.image_size))
    np.testing.assert_allclose(table.obsm[lk.Key.IMAGE], model.encode_images(patches), atol=1e-6)


def test_each_image_embedding_keeps_the_flags_of_its_own_cut(model):
    sdata = lk.datasets.mob("MOB2")
    lk.tl.embed_image(sdata, model, table_key="MOB2")
    lk.tl.embed_image(sdata, model, table_key="MOB2", key_added="wide", diameter_um=5000)
    table = sdata.tables["MOB2"]
    default, wide = table.obs[lk.Key.PATCH_OK], table.obs["wide_patch_ok"]
    assert default.sum() > wide.sum()  # 5 mm squares leave the 8.4 mm image at more spots
    loki = table.uns["loki"]
    assert loki[lk.Key.IMAGE]["patch_ok_key"] == lk.Key.PATCH_OK
    assert loki["wide"]["patch_ok_key"] == "wide_patch_ok"
    assert loki["wide_patch_ok"]["diameter_px"] > loki[lk.Key.PATCH_OK]["diameter_px"]


def _state(adata) -> tuple:
    """Everything a call could write into a table: .obs, the .obsm keys and the .uns entries."""
    return adata.obs.copy(), list(adata.obsm), list(adata.uns), sorted(adata.uns.get("loki", {}))


def _assert_same_state(adata, before) -> None:
    pd.testing.assert_frame_equal(adata.obs, before[0])
    assert _state(adata)[1:] == before[1:]


def test_embed_inplace_false_on_anndata_returns_what_would_be_written(model):
    a = _adata()
    lk.tl.embed_text(a, model, batch_size=4)
    lk.tl.embed_image(a, model, patches=_patches(), batch_size=4)
    before = _state(a)
    text = lk.tl.embed_text(a, model, batch_size=4, key_added="t", inplace=False)
    image = lk.tl.embed_image(a, model, patches=_patches(), batch_size=4, key_added="i", inplace=False)
    assert isinstance(text, np.ndarray)  # one result: the embedding alone
    assert isinstance(image, lk.tl.ImageEmbedding)
    assert image.patch_ok is None  # given patches have no flags
    for out, written in ((text, a.obsm[lk.Key.TEXT]), (image.embedding, a.obsm[lk.Key.IMAGE])):
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, written)
    _assert_same_state(a, before)
    # validation runs first, and the copy=/inplace= check before it
    del a.obs[lk.Key.SENTENCE]
    with pytest.raises(KeyError, match=r"lk.pp.gene_sentences"):
        lk.tl.embed_text(a, model, inplace=False)
    with pytest.raises(ValueError, match="5 rows but the table has 6"):
        lk.tl.embed_image(a, model, patches=_patches(5), inplace=False)
    for embed, kwargs in ((lk.tl.embed_text, {}), (lk.tl.embed_image, {"patches": _patches()})):
        with pytest.raises(ValueError, match="copy=True writes into a copy and inplace=False"):
            embed(a, model, copy=True, inplace=False, **kwargs)
    assert list(a.obsm) == before[1]


def test_embed_inplace_false_and_failure_leave_the_section_untouched(model):
    sdata = lk.datasets.mob("MOB2")
    lk.pp.gene_sentences(sdata, table_key="MOB2")
    table = sdata.tables["MOB2"]
    before, elements = _state(table), (list(sdata.images), list(sdata.shapes), list(sdata.tables))

    image = lk.tl.embed_image(sdata, model, table_key="MOB2", diameter_um=5000, inplace=False)
    assert isinstance(image, lk.tl.ImageEmbedding)
    emb, ok = image
    text = lk.tl.embed_text(sdata, model, table_key="MOB2", inplace=False)
    assert isinstance(text, np.ndarray)
    _assert_same_state(table, before)
    assert (list(sdata.images), list(sdata.shapes), list(sdata.tables)) == elements
    assert sdata.tables["MOB2"] is table
    # the same results as written in place
    lk.tl.embed_image(sdata, model, table_key="MOB2", diameter_um=5000)
    lk.tl.embed_text(sdata, model, table_key="MOB2")
    np.testing.assert_array_equal(emb, table.obsm[lk.Key.IMAGE])
    np.testing.assert_array_equal(text, table.obsm[lk.Key.TEXT])
    assert ok.name == lk.Key.PATCH_OK
    assert not ok.all()  # 5 mm squares leave the 8.4 mm image at some spots
    pd.testing.assert_series_equal(ok, table.obs[lk.Key.PATCH_OK])

    # a SpatialData is never copied (DESIGN §5): copy=True names the way to get the results
    before = _state(table)
    for embed in (lk.tl.embed_image, lk.tl.embed_text):
        with pytest.raises(ValueError, match="copy=True applies to AnnData.*inplace=False"):
            embed(sdata, model, table_key="MOB2", copy=True)
    with pytest.raises(ValueError, match="batch_size"):
        lk.tl.embed_image(sdata, model, table_key="MOB2", key_added="other", batch_size=0)
    with pytest.raises(KeyError, match=r"sdata\.tables"):
        lk.tl.embed_text(sdata, model, table_key="MOB9", inplace=False)
    _assert_same_state(table, before)


def _trained_on(model, patch_um):
    """A copy of ``model`` whose recorded training patch size is ``patch_um``."""
    import copy

    twin = copy.copy(model)
    twin.patch_um = patch_um
    return twin


def test_embed_image_cuts_the_patch_size_the_model_was_trained_on(model):
    sdata = lk.datasets.mob("MOB2")
    lk.tl.embed_image(sdata, _trained_on(model, 200.0), table_key="MOB2")
    lk.tl.embed_image(sdata, model, table_key="MOB2", key_added="explicit", diameter_um=200.0)
    lk.tl.embed_image(sdata, model, table_key="MOB2", key_added="spot")
    table = sdata.tables["MOB2"]
    loki = table.uns["loki"]
    np.testing.assert_array_equal(table.obsm[lk.Key.IMAGE], table.obsm["explicit"])
    assert loki[lk.Key.IMAGE]["diameter_um"] == loki["explicit"]["diameter_um"] == 200.0
    assert loki[lk.Key.IMAGE]["diameter_source"] == "model"
    assert loki["explicit"]["diameter_source"] == "argument"
    # a model that does not know its patch size: the spot (legacy ST, 100 µm), recorded in µm too
    assert loki["spot"]["diameter_source"] == "spot"
    assert loki["spot"]["diameter_um"] == pytest.approx(100.0)
    assert loki["spot_patch_ok"]["diameter_px"] == pytest.approx(loki[lk.Key.PATCH_OK]["diameter_px"] / 2)
    assert loki[lk.Key.IMAGE]["coordinate_system"] == "global"


def test_a_models_patch_size_needs_the_sections_scale(model):
    sdata = lk.datasets.mob("MOB2")
    table = sdata.tables["MOB2"]
    del table.uns["loki"]["microns_per_unit"]
    before = dict(table.uns["loki"])
    with pytest.raises(
        ValueError, match=r"trained on 200 µm patches \(model.patch_um\).*microns_per_unit"
    ) as err:
        lk.tl.embed_image(sdata, _trained_on(model, 200.0), table_key="MOB2")
    # it says how to set the scale, and not to pass diameter_um= (which needs the scale too)
    assert "uns.setdefault('loki', {})['microns_per_unit'] = " in str(err.value)
    assert "55 / scalefactors['spot_diameter_fullres']" in str(err.value)
    assert "diameter_um" not in str(err.value)
    assert lk.Key.IMAGE not in table.obsm
    assert dict(table.uns["loki"]) == before
    # spot-sized squares need no µm: the record says the size in µm is unknown
    lk.tl.embed_image(sdata, model, table_key="MOB2")
    assert np.isnan(table.uns["loki"][lk.Key.IMAGE]["diameter_um"])


def _moved_to(sdata, coordinate_system):
    """``sdata`` with every element's transformation to 'global' renamed ``coordinate_system``."""
    from spatialdata.transformations import get_transformation, remove_transformation, set_transformation

    for element in [*sdata.images.values(), *sdata.shapes.values()]:
        set_transformation(element, get_transformation(element, "global"), coordinate_system)
        remove_transformation(element, "global")
    return sdata


def test_embed_image_in_another_coordinate_system(model):
    from spatialdata.transformations import Identity, set_transformation

    reference = lk.datasets.mob("MOB2")
    lk.tl.embed_image(reference, model, table_key="MOB2")
    for name in ("heart", None):  # named, and found as the only one the spots and the image share
        sdata = _moved_to(lk.datasets.mob("MOB2"), "heart")
        lk.tl.embed_image(sdata, model, table_key="MOB2", coordinate_system=name)
        table = sdata.tables["MOB2"]
        np.testing.assert_array_equal(table.obsm[lk.Key.IMAGE], reference.tables["MOB2"].obsm[lk.Key.IMAGE])
        assert table.uns["loki"][lk.Key.IMAGE]["coordinate_system"] == "heart"
    for element in [*sdata.images.values(), *sdata.shapes.values()]:  # two shared systems: no guess
        set_transformation(element, Identity(), "brain")
    with pytest.raises(
        KeyError,
        match=r"share the coordinate systems 'heart', 'brain', none of them 'global': pass coordinate_system=",
    ):
        lk.tl.embed_image(sdata, model, table_key="MOB2", key_added="again")
    with pytest.raises(ValueError, match="coordinate_system choose how patches are cut here"):
        lk.tl.embed_image(_adata(), model, patches=_patches(), coordinate_system="heart")


def test_embed_text_warns_about_empty_sentences_and_counts_them(model, caplog):
    a = _adata()
    a.obs[lk.Key.SENTENCE] = ["", "Apoe", "", "Ptgds Apoe", "Snap25", "Mbp"]
    a.obs[lk.Key.EMPTY_SPOT] = [True, False, True, False, False, True]  # flagged, sentence kept
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.embed_text(a, model)
    assert "3 of 6 spots have an empty gene sentence (.obs['loki_empty'])" in caplog.text
    assert a.uns["loki"][lk.Key.TEXT]["n_empty"] == 3
    # without the flag column the sentences naming no gene are counted, whitespace alone too (as
    # lk.models.finetune refuses them)
    del a.obs[lk.Key.EMPTY_SPOT]
    a.obs[lk.Key.SENTENCE] = ["", "Apoe", "", "Ptgds Apoe", "Snap25", "  "]
    lk.tl.embed_text(a, model, key_added="again")
    assert a.uns["loki"]["again"]["n_empty"] == 3
    emb = a.obsm["again"]
    np.testing.assert_array_equal(emb[0], emb[2])  # one vector, that of the empty text


def test_embed_text_records_the_genes_the_context_keeps(model, caplog):
    sdata = lk.datasets.mob("MOB2")
    lk.pp.gene_sentences(sdata, table_key="MOB2")
    with caplog.at_level("INFO", logger="loki"):
        lk.tl.embed_text(sdata, model, table_key="MOB2")
    table = sdata.tables["MOB2"]
    info = table.uns["loki"][lk.Key.TEXT]
    assert {"n_truncated", "median_genes_kept"} <= set(info)
    sentences = table.obs[lk.Key.SENTENCE].tolist()
    _, counts = model.tokenizer.ids(sentences, return_word_counts=True)
    assert info["n_truncated"] == int((counts[:, 0] < counts[:, 1]).sum()) > 0.9 * table.n_obs
    assert info["median_genes_kept"] == np.median(counts[counts[:, 1] > 0, 0])
    assert 15 <= info["median_genes_kept"] <= 30  # of 50 genes a sentence
    assert "token context" in caplog.text
    assert caplog.text.count("token context") == 1  # one line a call, not one per sentence or batch
    # short sentences fit whole
    a = _adata()
    lk.tl.embed_text(a, model, batch_size=2)
    info = a.uns["loki"][lk.Key.TEXT]
    assert (info["n_truncated"], info["median_genes_kept"], info["n_empty"]) == (0, 3.0, 0)


def test_embed_image_cuts_each_patch_once_whatever_the_batch_size(model, monkeypatch):
    import loki.pp._patches as patches_module

    cropped = []
    real = patches_module._crop_task

    def count(blocks, origins, boxes, *args, **kwargs):
        cropped.append(len(boxes))
        return real(blocks, origins, boxes, *args, **kwargs)

    monkeypatch.setattr(patches_module, "_crop_task", count)
    sdata = lk.datasets.mob("MOB2")
    n = sdata.tables["MOB2"].n_obs
    results = {}
    for batch_size in (256, 16, 100):
        cropped.clear()
        lk.tl.embed_image(sdata, model, table_key="MOB2", batch_size=batch_size, key_added=f"b{batch_size}")
        assert sum(cropped) == n, batch_size
        results[batch_size] = sdata.tables["MOB2"].obsm[f"b{batch_size}"]
    np.testing.assert_allclose(results[16], results[256], atol=1e-6)
    np.testing.assert_allclose(results[100], results[256], atol=1e-6)


def test_patches_cut_for_a_figure_leave_the_embeddings_flags_alone(model):
    sdata = lk.datasets.mob("MOB2")
    lk.tl.embed_image(sdata, _trained_on(model, 200.0), table_key="MOB2")
    table = sdata.tables["MOB2"]
    flags, record = table.obs[lk.Key.PATCH_OK].copy(), dict(table.uns["loki"][lk.Key.PATCH_OK])
    # 5 mm squares leave the image at many spots; the embedding's 200 µm squares at none
    lk.pp.spot_patches(sdata, table_key="MOB2", size=16, diameter_um=5000)
    pd.testing.assert_series_equal(table.obs[lk.Key.PATCH_OK], flags)
    assert table.uns["loki"][lk.Key.PATCH_OK] == record
    with pytest.raises(ValueError, match=r"patch flags of the image embedding \.obsm\['loki_image'\]"):
        lk.pp.spot_patches(sdata, table_key="MOB2", size=16, diameter_um=5000, key_added=lk.Key.PATCH_OK)
    # another embedding whose flag column would be the same (key_added='loki': 'loki_patch_ok')
    with pytest.raises(ValueError, match=r"key_added='loki' would replace \.obs\['loki_patch_ok'\]"):
        lk.tl.embed_image(sdata, model, table_key="MOB2", key_added="loki", diameter_um=5000)
    assert "loki" not in table.obsm
    pd.testing.assert_series_equal(table.obs[lk.Key.PATCH_OK], flags)
    assert table.uns["loki"][lk.Key.PATCH_OK] == record
    # an embedding replaces its own flags
    lk.tl.embed_image(sdata, model, table_key="MOB2", diameter_um=5000)
    assert table.obs[lk.Key.PATCH_OK].sum() < flags.sum()


def _scanpy_visium(n=6):
    """An AnnData laid out as scanpy.read_visium / squidpy leave it: images in .uns['spatial']."""
    a = _adata(n)
    a.uns["spatial"] = {
        "lib1": {
            "images": {"hires": np.zeros((20, 20, 3), np.float32), "lowres": np.zeros((6, 6, 3), np.float32)},
            "scalefactors": {"spot_diameter_fullres": 89.4, "tissue_hires_scalef": 0.15},
        }
    }
    return a


def test_anndata_with_scanpy_images_names_the_way_in(model):
    a = _scanpy_visium()
    with pytest.raises(
        ValueError,
        match=r"\.uns\['spatial'\]\['lib1'\]\['images'\] \('hires', 'lowres'\).*"
        r"spatialdata_io\.experimental\.from_legacy_anndata\(adata\).*lk\.io\.read_visium.*"
        r"'microns_per_unit'.*55 / 89\.4 = 0\.6152.*'lib1_hires'",
    ):
        lk.tl.embed_image(a, model)
    assert lk.Key.IMAGE not in a.obsm
    with pytest.raises(ValueError, match="from_legacy_anndata"):
        lk.tl.finetune(a, model, progress=False)


def test_scanpy_visium_converted_with_spatialdata_io_embeds(model):
    # spatialdata-io's conversion of a scanpy AnnData: spots in full-resolution pixels, float RGBA
    # images in [0, 1] in coordinate systems named after them
    from tests.conftest import shared_path

    folder = shared_path("scanpy_visium_testdata", "1.0.0")
    experimental = pytest.importorskip("spatialdata_io.experimental")
    sc = pytest.importorskip("scanpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        adata = sc.read_visium(folder)
    sdata = experimental.from_legacy_anndata(adata)
    (key,) = sdata.tables
    table = sdata.tables[key]
    spot = adata.uns["spatial"]["custom"]["scalefactors"]["spot_diameter_fullres"]
    table.uns.setdefault("loki", {})["microns_per_unit"] = 55 / spot  # as the error says
    assert np.dtype(sdata.images["custom_hires"].dtype) == np.float32
    # this fixture's hires PNG is blank (PROVENANCE.txt): every patch is the same, and the call says so
    with pytest.warns(lk.LokiWarning, match=r"All \d+ image embeddings are the same .* blank"):
        lk.tl.embed_image(
            sdata,
            _trained_on(model, 55.0),
            table_key=key,
            image_key="custom_hires",
            coordinate_system="custom_hires",
        )
    emb = table.obsm[lk.Key.IMAGE]
    assert emb.shape == (table.n_obs, model.embed_dim)
    assert table.uns["loki"][lk.Key.IMAGE]["diameter_um"] == 55.0
    assert table.obs[lk.Key.PATCH_OK].mean() > 0.9


@pytest.mark.parametrize("bad", [0, 2.5, True])
def test_a_bad_batch_size_is_refused_before_any_patch_is_cut(model, monkeypatch, bad):
    sdata = lk.datasets.mob("MOB2")
    lk.pp.gene_sentences(sdata, table_key="MOB2")

    def no_cut(*args, **kwargs):
        raise AssertionError("patches were cut before batch_size was checked")

    monkeypatch.setattr(lk.tl._embed, "_patches_of", no_cut)
    for embed in (lk.tl.embed_image, lk.tl.embed_text):
        with pytest.raises(ValueError, match=rf"^batch_size must be a positive integer, got {bad!r}\.$"):
            embed(sdata, model, table_key="MOB2", batch_size=bad)
    assert "loki_image" not in sdata.tables["MOB2"].obsm


def _fail_record(*args, **kwargs):
    raise RuntimeError("the record could not be written")


def test_embed_image_failing_at_its_record_leaves_no_patch_flags(model, monkeypatch):
    """The patch flags (written first) stayed behind when the embedding's record failed to write."""
    sdata = lk.datasets.mob("MOB2")
    table = sdata.tables["MOB2"]
    before = (list(table.obs.columns), list(table.obsm), dict(table.uns.get("loki", {})))
    monkeypatch.setattr("loki.tl._embed.write_uns", _fail_record)
    with pytest.raises(RuntimeError, match="could not be written"):
        lk.tl.embed_image(sdata, model, table_key="MOB2", diameter_um=100.0)
    assert (list(table.obs.columns), list(table.obsm), dict(table.uns.get("loki", {}))) == before


def test_spot_patches_failing_at_its_record_leaves_no_flags(monkeypatch):
    sdata = lk.datasets.mob("MOB2")
    table = sdata.tables["MOB2"]
    columns = list(table.obs.columns)
    monkeypatch.setattr("loki.pp._patches.write_uns", _fail_record)
    with pytest.raises(RuntimeError, match="could not be written"):
        lk.pp.spot_patches(sdata, table_key="MOB2", size=16, key_added="ok")
    assert list(table.obs.columns) == columns


def test_embed_image_says_when_the_model_size_overrides_the_spots(model, monkeypatch, caplog):
    """Squares of the model's training size were cut around smaller spots (or tiles) without a word."""
    sdata = lk.datasets.mob("MOB2")
    monkeypatch.setattr(model, "patch_um", 200.0, raising=False)
    with caplog.at_level("INFO", logger="loki"):
        lk.tl.embed_image(sdata, model, table_key="MOB2")
    assert "cutting 200 µm squares around each spot, the size model 'loki-tiny' was trained on" in caplog.text
    assert "not the spots' own 100 µm" in caplog.text
    assert sdata.tables["MOB2"].uns["loki"]["loki_image"]["diameter_um"] == 200.0
    caplog.clear()
    monkeypatch.setattr(model, "patch_um", 100.0, raising=False)
    with caplog.at_level("INFO", logger="loki"):
        lk.tl.embed_image(sdata, model, table_key="MOB2")
    assert "cutting" not in caplog.text


def test_distinct_patches_raise_no_blank_image_warning(model):
    a = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)
        lk.tl.embed_image(a, model, patches=_patches())
    blank = np.full((6, 40, 40, 3), 255, dtype=np.uint8)
    with pytest.warns(lk.LokiWarning, match=r"All 6 image embeddings are the same .*: patches= look alike"):
        lk.tl.embed_image(a, model, patches=blank)


@pytest.mark.parametrize("tool", ["embed_text", "embed_image"])
def test_a_bare_torch_module_is_refused_naming_the_loki_model(model, tool):
    # the open_clip module inside the loki model failed in torch's words ("no attribute 'image_size'")
    a = _adata()
    kwargs = {"patches": _patches()} if tool == "embed_image" else {}
    with pytest.raises(
        TypeError, match=r"model must be a loki.models.OmiCLIP .+ got a CoCa .+ bare torch module"
    ):
        getattr(lk.tl, tool)(a, model.model, **kwargs)
    with pytest.raises(TypeError, match=r"got a str without"):
        getattr(lk.tl, tool)(a, "loki-tiny", **kwargs)
    assert not set(a.obsm) & {lk.Key.TEXT, lk.Key.IMAGE}
    assert "loki" not in a.uns
