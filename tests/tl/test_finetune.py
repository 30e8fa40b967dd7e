from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
from tests.conftest import interrupt_training_at_batch

import loki as lk
from loki.tl._finetune import collect_pairs


@pytest.fixture(scope="module")
def mob12():
    sdata = lk.datasets.mob(["MOB1", "MOB2"])
    for s in ("MOB1", "MOB2"):
        lk.pp.gene_sentences(sdata, table_key=s)
    return sdata


def _patch_ok(sdata, section, size=16):
    """Border flags of a section's patches, as lk.pp.spot_patches writes them when asked."""
    lk.pp.spot_patches(sdata, table_key=section, size=size, key_added="test_patch_ok")
    return sdata.tables[section].obs.pop("test_patch_ok").to_numpy(bool)


def test_collect_pairs_concatenates_sections(mob12):
    imgs, sents = collect_pairs(mob12, table_keys=["MOB1", "MOB2"], size=16)
    n = mob12.tables["MOB1"].n_obs + mob12.tables["MOB2"].n_obs
    ok = np.concatenate([_patch_ok(mob12, s) for s in ("MOB1", "MOB2")])
    assert imgs.shape == (int(ok.sum()), 16, 16, 3)
    assert imgs.dtype == np.uint8
    assert len(sents) == ok.sum() <= n
    assert sents[0] == mob12.tables["MOB1"].obs[lk.Key.SENTENCE].iloc[np.argmax(ok)]
    # every patch is its own spot's patch and carries its own spot's sentence, in table order
    own_patches = np.concatenate(
        [np.asarray(lk.pp.spot_patches(mob12, table_key=s, size=16)) for s in ("MOB1", "MOB2")]
    )
    own_sents = np.concatenate([mob12.tables[s].obs[lk.Key.SENTENCE].to_numpy() for s in ("MOB1", "MOB2")])
    np.testing.assert_array_equal(imgs, own_patches[ok])
    assert list(sents) == list(own_sents[ok])


def test_collect_pairs_writes_nothing():
    sdata = lk.datasets.mob("MOB3")
    lk.pp.gene_sentences(sdata, table_key="MOB3")
    columns = list(sdata.tables["MOB3"].obs.columns)
    collect_pairs(sdata, table_keys="MOB3", size=16)
    assert list(sdata.tables["MOB3"].obs.columns) == columns


def test_collect_pairs_unknown_section_fails_before_work(mob12):
    with pytest.raises(KeyError, match="MOB7"):
        collect_pairs(mob12, table_keys=["MOB1", "MOB7"])


def test_tl_finetune_and_loss_curve(mob12, tmp_path):
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    model, hist = lk.tl.finetune(
        mob12, model, table_keys="MOB1", epochs=2, lr=1e-3, batch_size=64, seed=0, progress=False
    )
    n_ok = int(_patch_ok(mob12, "MOB1").sum())
    assert hist["n_pairs"] == n_ok
    assert len(hist["step_loss"]) == 2 * (n_ok // 64)
    assert model.trained

    ax = lk.pl.loss_curve(hist, show=False, save=tmp_path / "loss.png")
    step_line, epoch_line = ax.get_lines()
    np.testing.assert_allclose(step_line.get_ydata(), hist["step_loss"])
    np.testing.assert_allclose(epoch_line.get_ydata(), hist["epoch_loss"])
    np.testing.assert_array_equal(epoch_line.get_xdata(), [n_ok // 64, 2 * (n_ok // 64)])
    assert ax.get_xlabel() == "step"
    assert (tmp_path / "loss.png").stat().st_size > 0
    plt.close(ax.figure)


def test_tl_finetune_holds_out_sections_for_a_validation_loss(mob12):
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    model, hist = lk.tl.finetune(
        mob12, model, validation_keys="MOB2", epochs=1, lr=1e-3, batch_size=64, seed=0, progress=False
    )
    # trained on the other table only; the held-out pairs are cut and filtered as training pairs are
    assert hist["n_pairs"] == int(_patch_ok(mob12, "MOB1").sum())
    assert hist["n_validation_pairs"] == int(_patch_ok(mob12, "MOB2").sum())
    assert len(hist["val_loss"]) == 1
    ax = lk.pl.loss_curve(hist, show=False)
    held_out = ax.get_lines()[2]
    assert held_out.get_label() == "held-out"
    np.testing.assert_allclose(held_out.get_ydata(), [hist["val_loss_before"], *hist["val_loss"]])
    np.testing.assert_array_equal(held_out.get_xdata(), [0, len(hist["step_loss"])])
    plt.close(ax.figure)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table_keys": ["MOB1", "MOB2"], "validation_keys": "MOB2"}, "'MOB2' is in both"),
        ({"validation_keys": ["MOB1", "MOB2"]}, "holds out every table"),
        ({"validation_keys": ["MOB2", "MOB2"]}, "more than once"),
        ({"validation_keys": "MOB9"}, "MOB9"),
    ],
)
def test_bad_validation_keys_are_refused_before_training(mob12, kwargs, match):
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    before = model.checkpoint_hash
    with pytest.raises((KeyError, ValueError), match=match):
        lk.tl.finetune(mob12, model, epochs=1, progress=False, **kwargs)
    assert model.checkpoint_hash == before


def test_keep_best_without_held_out_sections_names_validation_keys(mob12, monkeypatch):
    # lk.tl.finetune has no validation= argument: the error named lk.models.finetune's, after every
    # training patch had been cut
    import loki.tl._finetune as tl_finetune

    def no_cut(*args, **kwargs):
        raise AssertionError("patches were cut before the arguments were checked")

    monkeypatch.setattr(tl_finetune, "collect_pairs", no_cut)
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(ValueError, match=r"keep_best=True needs validation_keys="):
        lk.tl.finetune(mob12, model, keep_best=True, epochs=1, progress=False)


def test_validation_keys_need_a_spatialdata():
    a = ad.AnnData(np.ones((4, 2), np.float32))
    a.obs[lk.Key.SENTENCE] = ["Apoe Ptgds"] * 4
    patches = np.zeros((4, 8, 8, 3), np.uint8)
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(ValueError, match=r"lk.models.finetune\(validation="):
        lk.tl.finetune(a, model, patches=patches, validation_keys="x", progress=False)


def test_tl_finetune_anndata_needs_patches():
    a = ad.AnnData(np.ones((4, 2), dtype=np.float32))
    a.obs[lk.Key.SENTENCE] = ["Apoe"] * 4
    model = lk.models.load("loki-tiny", device="cpu")
    with pytest.raises(ValueError, match="patches="):
        lk.tl.finetune(a, model, progress=False)


def test_loss_curve_rejects_bad_history():
    with pytest.raises(KeyError, match="epoch_loss"):
        lk.pl.loss_curve({"step_loss": [1.0]}, show=False)
    with pytest.raises(ValueError, match="do not split"):
        lk.pl.loss_curve({"step_loss": [1.0, 2.0, 3.0], "epoch_loss": [1.0, 2.0]}, show=False)


@pytest.mark.parametrize("keys", [[], ()])
def test_empty_table_keys_names_the_argument_and_the_tables(mob12, keys):
    with pytest.raises(
        ValueError, match=r"table_keys=.*selects no table; available tables: \['MOB1', 'MOB2'\]"
    ):
        collect_pairs(mob12, table_keys=keys)
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(ValueError, match="table_keys"):
        lk.tl.finetune(mob12, model, table_keys=keys, progress=False)
    assert not model.trained


def test_tl_finetune_records_the_patch_size_it_cut(mob12):
    train = {"table_keys": "MOB1", "epochs": 1, "lr": 1e-3, "batch_size": 64, "progress": False}
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    model, hist = lk.tl.finetune(mob12, model, diameter_um=200, **train)
    assert model.patch_um == hist["patch_um"] == 200.0
    model, hist = lk.tl.finetune(mob12, model, **train)  # the spots: legacy ST, 100 µm
    assert model.patch_um == hist["patch_um"] == pytest.approx(100.0)

    table = mob12.tables["MOB1"]
    patches = np.asarray(lk.pp.spot_patches(mob12, table_key="MOB1", size=16))
    model, hist = lk.tl.finetune(table, model, patches=patches, **{**train, "table_keys": None})
    assert model.patch_um == hist["patch_um"] == pytest.approx(100.0)  # patches of unknown size: kept

    no_scale = lk.datasets.mob("MOB1")
    del no_scale.tables["MOB1"].uns["loki"]["microns_per_unit"]
    lk.pp.gene_sentences(no_scale, table_key="MOB1")
    model, hist = lk.tl.finetune(no_scale, model, **train)  # spot-sized, size in µm unknown
    assert model.patch_um is hist["patch_um"] is None


def test_pairs_with_an_empty_sentence_are_left_out(caplog):
    sdata = lk.datasets.mob("MOB3")
    lk.pp.gene_sentences(sdata, table_key="MOB3")
    obs = sdata.tables["MOB3"].obs
    obs[lk.Key.SENTENCE] = obs[lk.Key.SENTENCE].astype(str)
    obs.iloc[:5, obs.columns.get_loc(lk.Key.SENTENCE)] = ""  # empty, not flagged
    obs.iloc[5:9, obs.columns.get_loc(lk.Key.EMPTY_SPOT)] = True  # flagged
    ok = _patch_ok(sdata, "MOB3")
    keep = ok.copy()
    keep[:9] = False
    with caplog.at_level("INFO", logger="loki"):
        imgs, sents = collect_pairs(sdata, table_keys="MOB3", size=16)
    assert len(sents) == len(imgs) == keep.sum()
    assert "" not in sents
    assert sents == obs[lk.Key.SENTENCE][keep].tolist()
    expected = np.asarray(lk.pp.spot_patches(sdata, table_key="MOB3", size=16))[keep]
    np.testing.assert_array_equal(imgs, expected)
    assert (
        f"left {int((~keep).sum())} of {len(keep)} spots out of training (9 with an empty sentence"
        in caplog.text
    )

    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    _, hist = lk.tl.finetune(sdata, model, table_keys="MOB3", epochs=1, batch_size=64, progress=False)
    assert hist["n_pairs"] == keep.sum()


def test_finetune_in_another_coordinate_system(mob12):
    from spatialdata.transformations import get_transformation, remove_transformation, set_transformation

    sdata = lk.datasets.mob("MOB1")
    lk.pp.gene_sentences(sdata, table_key="MOB1")
    for element in [*sdata.images.values(), *sdata.shapes.values()]:
        set_transformation(element, get_transformation(element, "global"), "heart")
        remove_transformation(element, "global")
    with pytest.raises(KeyError, match=r"'global' not found"):
        collect_pairs(sdata, table_keys="MOB1", size=16, coordinate_system="global")
    ref_imgs, ref_sents = collect_pairs(mob12, table_keys="MOB1", size=16)
    for name in ("heart", None):  # named, or the only one the spots and the image share
        imgs, sents = collect_pairs(sdata, table_keys="MOB1", size=16, coordinate_system=name)
        np.testing.assert_array_equal(imgs, ref_imgs)
        assert sents == ref_sents

    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    _, hist = lk.tl.finetune(
        sdata, model, table_keys="MOB1", coordinate_system="heart", epochs=1, batch_size=128, progress=False
    )
    assert hist["n_pairs"] == len(ref_sents)
    assert hist["patch_um"] == pytest.approx(100.0)


def test_collect_pairs_holds_the_result_and_one_chunk():
    """Pairs are written into one array: the peak is the result plus a chunk, not 2.5 times the result."""
    import tracemalloc

    import dask

    sdata = lk.datasets.mob(["MOB1", "MOB2"])
    for s in ("MOB1", "MOB2"):
        lk.pp.gene_sentences(sdata, table_key=s)
    with dask.config.set(scheduler="synchronous"):  # one chunk in flight
        collect_pairs(sdata, size=64)  # warm caches
        tracemalloc.start()
        try:
            imgs, _ = collect_pairs(sdata, size=64)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    chunk = 256 * imgs[0].nbytes
    assert peak < imgs.nbytes + 1.5 * chunk, (peak / imgs.nbytes, imgs.shape)


def test_too_few_pairs_says_how_many_spots_were_left_out_and_why(mob12):
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    h = model.checkpoint_hash
    table = mob12.tables["MOB1"].copy()
    table.obs[lk.Key.SENTENCE] = ""
    patches = np.zeros((table.n_obs, 32, 32, 3), np.uint8)
    n = table.n_obs
    with pytest.raises(
        ValueError,
        match=rf"0 \(patch, sentence\) pair\(s\) left, fewer than the 2 needed: the table: left {n} of {n} "
        rf"spots out of training \({n} with an empty sentence, 0 whose patch leaves the image\)\. "
        r"To fix: for empty sentences, check sentence_key='loki_sentence'",
    ):
        lk.tl.finetune(table, model, patches=patches, epochs=1, progress=False)
    # patches that all leave the image (squares nearly as wide as the whole 8,347 µm image; wider ones
    # are refused before any pixel, see tests/pp/test_patches.py)
    with pytest.raises(
        ValueError,
        match=rf"section 'MOB1': left {n} of {n} spots out of training \(0 with an empty sentence, {n} whose "
        r"patch leaves the image\).*coordinate_system='global'.*diameter_um=",
    ):
        lk.tl.finetune(mob12, model, table_keys="MOB1", diameter_um=8340, epochs=1, progress=False)
    model._checkpoint_hash = None
    assert model.checkpoint_hash == h
    assert not model.trained


def test_whitespace_sentences_are_left_out_like_empty_ones():
    sdata = lk.datasets.mob("MOB3")
    lk.pp.gene_sentences(sdata, table_key="MOB3")
    obs = sdata.tables["MOB3"].obs
    obs[lk.Key.SENTENCE] = obs[lk.Key.SENTENCE].astype(str)
    obs.iloc[:3, obs.columns.get_loc(lk.Key.SENTENCE)] = "  "
    keep = _patch_ok(sdata, "MOB3") & ~obs[lk.Key.EMPTY_SPOT].to_numpy(bool)
    keep[:3] = False
    _, sents = collect_pairs(sdata, table_keys="MOB3", size=16)
    assert sents == obs[lk.Key.SENTENCE][keep].tolist()


def test_patches_cut_for_a_figure_do_not_change_the_pairs_of_given_patches():
    # an AnnData given patches= is trained without the spots its embedding's cut flagged; cutting other
    # patches afterwards (e.g. wide crops for a figure) must not change that
    sdata = lk.datasets.mob("MOB3")
    lk.pp.gene_sentences(sdata, table_key="MOB3")
    table = sdata.tables["MOB3"]
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    lk.tl.embed_image(sdata, model, table_key="MOB3", diameter_um=200)
    ok = table.obs[lk.Key.PATCH_OK].to_numpy(bool)
    keep = ok & ~table.obs[lk.Key.EMPTY_SPOT].to_numpy(bool)
    patches = np.asarray(lk.pp.spot_patches(sdata, table_key="MOB3", size=16, diameter_um=200))
    lk.pp.spot_patches(sdata, table_key="MOB3", size=16, diameter_um=5000)  # the figure's crops
    lk.pp.spot_patches(sdata, table_key="MOB3", size=16, diameter_um=5000, key_added="figure_ok")
    assert ok.all()
    assert not table.obs["figure_ok"].all()  # the figure's squares leave the image
    imgs, sents = collect_pairs(table, patches=patches)
    assert len(sents) == keep.sum()
    np.testing.assert_array_equal(imgs, patches[keep])


def _table_with_flags(flags):
    table = ad.AnnData(np.zeros((4, 2), dtype=np.float32))
    table.obs[lk.Key.SENTENCE] = ["Apoe Mbp", "Plp1", "Gad1 Snap25", "Calm1"]
    table.obs[lk.Key.PATCH_OK] = flags
    return table, np.zeros((4, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "flags",
    [
        ["True", "False", "True", "True"],  # strings (e.g. after a CSV round trip)
        [1.0, np.nan, 1.0, 1.0],  # missing values (tables concatenated, one without the column)
        [True, None, True, True],  # object column with a missing value
    ],
)
def test_patch_flags_that_are_not_boolean_are_refused(flags):
    """Read as booleans, "False" and NaN would count as True and keep spots whose patch leaves the image."""
    table, patches = _table_with_flags(flags)
    with pytest.raises(ValueError, match=r"\.obs\['loki_patch_ok'\] of the table must be boolean"):
        collect_pairs(table, patches=patches)
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(ValueError, match="must be boolean"):
        lk.tl.finetune(table, model, patches=patches, progress=False)
    assert not model.trained


@pytest.mark.parametrize(
    "flags", [[True, False, True, True], np.array([True, False, True, True], dtype=object)]
)
def test_boolean_patch_flags_leave_spots_out(flags):
    table, patches = _table_with_flags(flags)
    _, sents = collect_pairs(table, patches=patches)
    assert sents == ["Apoe Mbp", "Gad1 Snap25", "Calm1"]


def test_a_section_named_twice_is_refused(mob12):
    with pytest.raises(ValueError, match=r"names 'MOB1' more than once"):
        collect_pairs(mob12, table_keys=["MOB1", "MOB2", "MOB1"], size=16)


def test_loss_curve_rings_the_kept_epoch(tmp_path):
    history = {
        "step_loss": [3, 2.5, 2, 1.8, 1.5, 1.2],
        "epoch_loss": [2.75, 1.9, 1.35],
        "val_loss_before": 3.1,
        "val_loss": [2.6, 2.2, 2.4],
        "best_epoch": 2,
    }
    ax = lk.pl.loss_curve(history, show=False, save=tmp_path / "loss.png")
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["held-out"].get_xdata(), [0, 2, 4, 6])
    np.testing.assert_array_equal(lines["kept"].get_xdata(), [4])
    np.testing.assert_array_equal(lines["kept"].get_ydata(), [2.2])
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"step", "epoch mean", "held-out", "kept"}
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="2 held-out losses for 3 epochs"):
        lk.pl.loss_curve({**history, "val_loss": [2.6, 2.2]}, show=False)


def test_loss_curve_rings_the_start_when_no_epoch_beat_it():
    # keep_best kept the starting weights (best_epoch 0): the ring sits on the loss before training
    history = {
        "step_loss": [3, 2.5, 2, 1.8],
        "epoch_loss": [2.75, 1.9],
        "val_loss_before": 2.0,
        "val_loss": [2.6, 2.2],
        "best_epoch": 0,
    }
    ax = lk.pl.loss_curve(history, show=False)
    kept = next(line for line in ax.get_lines() if line.get_label() == "kept")
    np.testing.assert_array_equal(kept.get_xdata(), [0])
    np.testing.assert_array_equal(kept.get_ydata(), [2.0])
    plt.close(ax.figure)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"val_loss": [2.6, 2.2]}, "2 held-out losses for 3 epochs"),
        (
            {"best_epoch": 0},
            r"best_epoch must be an epoch 1 to 3, got 0 \(0, the starting weights, needs val_loss_before\)",
        ),
        ({"best_epoch": -1, "val_loss_before": 3.1}, r"best_epoch must be an epoch 0 to 3, got -1"),
        ({"best_epoch": 4}, r"best_epoch must be an epoch 1 to 3, got 4"),
    ],
)
def test_loss_curve_refuses_held_out_losses_that_do_not_fit_before_drawing(change, match):
    # best_epoch=0 ringed the last epoch (index -1); a bad history left a figure open
    history = {
        "step_loss": [3, 2.5, 2, 1.8, 1.5, 1.2],
        "epoch_loss": [2.75, 1.9, 1.35],
        "val_loss": [2.6, 2.2, 2.4],
        "best_epoch": 2,
    }
    plt.close("all")
    with pytest.raises(ValueError, match=match):
        lk.pl.loss_curve({**history, **change}, show=False)
    assert not plt.get_fignums()


def test_tl_finetune_records_the_sections_of_the_run(mob12, monkeypatch):
    from loki.models import _finetune

    train = {"epochs": 1, "lr": 1e-3, "batch_size": 64, "progress": False}
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    model, hist = lk.tl.finetune(mob12, model, validation_keys="MOB2", **train)
    (run,) = model.training_runs
    assert run["table_keys"] == hist["table_keys"] == ["MOB1"]
    assert run["validation_keys"] == hist["validation_keys"] == ["MOB2"]
    assert run["n_pairs"] == hist["n_pairs"]
    assert run["patch_um"] == model.patch_um == pytest.approx(100.0)

    # keep_best with no better epoch: the model comes back as it was, patch size and record included
    model.patch_um = 200.0
    before = model.checkpoint_hash
    losses = iter([1.0, 2.0])
    monkeypatch.setattr(_finetune, "_held_out_loss", lambda *args: next(losses))
    with pytest.warns(lk.LokiWarning, match="best_epoch 0"):
        model, hist = lk.tl.finetune(mob12, model, validation_keys="MOB2", keep_best=True, **train)
    assert hist["best_epoch"] == 0
    assert (model.patch_um, len(model.training_runs)) == (200.0, 1)
    model._checkpoint_hash = None
    assert model.checkpoint_hash == before


def test_tl_finetune_names_the_sections_in_history_when_keep_best_kept_the_start(mob12, monkeypatch):
    """best_epoch 0 returned before history named the sections (its docstring says it does)."""
    from loki.models import _finetune

    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    losses = iter([1.0, 2.0])
    monkeypatch.setattr(_finetune, "_held_out_loss", lambda *args: next(losses))
    with pytest.warns(lk.LokiWarning, match="best_epoch 0"):
        model, hist = lk.tl.finetune(
            mob12, model, validation_keys="MOB2", keep_best=True, epochs=1, batch_size=64, progress=False
        )
    assert hist["best_epoch"] == 0
    assert (hist["table_keys"], hist["validation_keys"]) == (["MOB1"], ["MOB2"])
    assert model.training_runs == []


def test_a_tl_finetune_stopped_part_way_names_its_sections_and_patch_size(mob12, monkeypatch):
    """The record of a run stopped by an error still says what it trained on (its steps changed the weights)."""

    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    model.patch_um = 200.0  # a size from earlier training: the new steps were on spot-sized squares
    interrupt_training_at_batch(monkeypatch, 2)
    monkeypatch.setattr("loki.tl._finetune._cut_patch_um", lambda *args: None)  # no known µm size
    with pytest.raises(KeyboardInterrupt):
        lk.tl.finetune(mob12, model, table_keys="MOB1", epochs=1, batch_size=32, progress=False)
    (run,) = model.training_runs
    assert (run["completed"], run["steps"]) == (False, 1)
    assert run["table_keys"] == ["MOB1"]
    assert model.patch_um is None
    assert run["patch_um"] is None


def test_a_tl_finetune_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(mob12, monkeypatch, tmp_path):
    kw = {"table_keys": "MOB1", "validation_keys": "MOB2", "epochs": 2, "batch_size": 64, "progress": False}
    whole, _ = lk.tl.finetune(mob12, lk.models.load("loki-tiny", device="cpu", seed=0), **kw)
    path = tmp_path / "tl.ckpt"
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    steps = whole.training_runs[0]["steps_per_epoch"]
    interrupt_training_at_batch(monkeypatch, steps + 2)  # in epoch 2, after its first batch
    with pytest.raises(KeyboardInterrupt):
        lk.tl.finetune(mob12, model, checkpoint=path, checkpoint_every=1, **kw)
    monkeypatch.undo()
    assert model.training_runs[-1]["table_keys"] == ["MOB1"]
    model, hist = lk.tl.finetune(mob12, model, checkpoint=path, resume=True, **kw)
    assert model.checkpoint_hash == whole.checkpoint_hash
    (run,) = model.training_runs  # the stopped session's record is replaced, and completed as before
    assert (run["completed"], run["table_keys"], run["validation_keys"]) == (True, ["MOB1"], ["MOB2"])
    assert [(r["step"], r["epoch"], r["batch"]) for r in run["resumed_from"]] == [(steps + 1, 2, 1)]
    assert hist["val_loss"] == pytest.approx(whole.training_runs[0]["val_loss"])
    # a checkpoint of the MOB1 run is not one of a MOB2 run
    with pytest.raises(ValueError, match=r"another run.*the training images"):
        lk.tl.finetune(
            mob12,
            lk.models.load("loki-tiny", device="cpu", seed=0),
            checkpoint=path,
            resume=True,
            **{**kw, "table_keys": "MOB2", "validation_keys": "MOB1"},
        )


def test_tl_finetune_checks_the_checkpoint_before_cutting_patches(mob12, tmp_path, monkeypatch):
    (tmp_path / "f.ckpt").write_bytes(b"x")
    monkeypatch.setattr("loki.tl._finetune.collect_pairs", lambda *a, **k: pytest.fail("patches were cut"))
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        lk.tl.finetune(mob12, model, table_keys="MOB1", checkpoint=tmp_path / "f.ckpt", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lk.tl.finetune(mob12, model, table_keys="MOB1", checkpoint=tmp_path / "g.ckpt", resume=True)
