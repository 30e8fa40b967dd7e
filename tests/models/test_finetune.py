from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import interrupt_training_at_batch

import loki as lk


def _pairs(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    genes = ["Apoe", "Ptgds", "Snap25", "Malat1", "Plp1", "Mbp", "Gad1", "Calm1"]
    sents = [" ".join(rng.permutation(genes)) for _ in range(n)]
    return imgs, sents


def test_contrastive_loss_is_half_of_eq1():
    """The loss is eq. (1) / 2 (open_clip's ClipLoss convention), and AdamW steps are those of eq. (1)."""
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    b = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    scale = torch.tensor(np.log(10.0))
    s = 10.0 * a @ b.T
    # eq. (1) term by term: -(1/N) sum_i [log softmax_img->txt + log softmax_txt->img] of the pair i
    eq1 = -(torch.log_softmax(s, 1).diag() + torch.log_softmax(s, 0).diag()).mean()
    torch.testing.assert_close(lk.models.contrastive_loss(a, b, scale), eq1 / 2)

    steps = []
    for factor in (1.0, 2.0):  # the loss as loki computes it, and eq. (1)
        w = torch.nn.Parameter(a.clone())
        opt = torch.optim.AdamW([w], lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            (factor * lk.models.contrastive_loss(F.normalize(w, dim=1), b, scale)).backward()
            opt.step()
        steps.append(w.detach())
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-5, atol=1e-6)


def test_finetune_is_deterministic_for_a_seed():
    imgs, sents = _pairs()
    runs = []
    for _ in range(2):
        m = lk.models.load("loki-tiny", device="cpu", seed=1)
        m, hist = lk.models.finetune(m, imgs, sents, epochs=2, lr=1e-3, batch_size=8, seed=7, progress=False)
        runs.append((m.checkpoint_hash, hist["step_loss"]))
    assert runs[0] == runs[1]
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    _, hist = lk.models.finetune(m, imgs, sents, epochs=2, lr=1e-3, batch_size=8, seed=8, progress=False)
    assert hist["step_loss"] != runs[0][1]


def test_history_and_freeze_image():
    imgs, sents = _pairs()
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    m, hist = lk.models.finetune(
        m, imgs, sents, epochs=3, lr=1e-3, batch_size=8, freeze="image", progress=False
    )
    assert len(hist["step_loss"]) == 9
    assert len(hist["epoch_loss"]) == 3
    assert np.isclose(hist["epoch_loss"][0], np.mean(hist["step_loss"][:3]))
    after = m.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("visual.", "text_decoder.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    assert m.trained
    assert all(p.requires_grad for p in m.model.parameters())
    assert not m.model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"freeze": "vision"}, "freeze"),
        ({"batch_size": 0}, "batch_size"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": True}, "lr"),
        ({"warmup": "0.1"}, "warmup"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_finetune_arguments_change_nothing(kwargs, match):
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    h = m.checkpoint_hash
    with pytest.raises(ValueError, match=match):
        lk.models.finetune(m, imgs, sents, progress=False, **kwargs)
    m._checkpoint_hash = None
    assert m.checkpoint_hash == h
    assert not m.trained


def test_mismatched_pairs():
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu")
    with pytest.raises(ValueError, match="8 images but 7 sentences"):
        lk.models.finetune(m, imgs, sents[:7], progress=False)


def test_training_on_real_pairs_lowers_the_loss(mob1_pairs):
    patches, sents = mob1_pairs
    _, hist = lk.models.train_tiny(
        patches[:64],
        sents[:64],
        device="cpu",
        seed=0,
        progress=False,
        epochs=6,
        batch_size=16,
        lr=1e-3,
        warmup=0.3,
    )
    first, last = hist["epoch_loss"][0], hist["epoch_loss"][-1]
    # ln(16) = 2.77 is the loss of constant embeddings; training must get clearly below it
    assert last < first - 0.2, hist["epoch_loss"]
    assert last < np.log(16) - 0.2


def _flags(model):
    return {name: p.requires_grad for name, p in model.model.named_parameters()}


def test_freeze_image_keeps_batchnorm_statistics():
    """A frozen image tower with BatchNorm (loki-small-data) gives the same embeddings after training."""
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-small-data", device="cpu", seed=0)
    before = {k: v.clone() for k, v in m.model.state_dict().items() if k.startswith("visual.")}
    emb = m.encode_images(imgs)
    m, _ = lk.models.finetune(m, imgs, sents, epochs=1, lr=1e-3, batch_size=8, freeze="image", progress=False)
    after = m.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    np.testing.assert_array_equal(m.encode_images(imgs), emb)
    assert not m.model.training


def test_weight_decay_follows_open_clips_rule(monkeypatch):
    groups = []
    adamw = torch.optim.AdamW

    def spy(params, **kwargs):
        groups.extend(params)
        return adamw(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    imgs, sents = _pairs(8)
    for arch in ("loki-tiny", "loki-small-data"):
        groups.clear()
        m = lk.models.load(arch, device="cpu", seed=0)
        names = {id(p): name for name, p in m.model.named_parameters()}
        lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, weight_decay=0.3, progress=False)
        decayed = [names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]]
        kept = [names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]]
        # open_clip's training: weight matrices and embeddings decay; biases, norms, tokens, scale do not
        assert "text.token_embedding.weight" in decayed
        assert "logit_scale" in kept
        assert all(m.model.get_parameter(n).ndim >= 2 for n in decayed)
        assert all(m.model.get_parameter(n).ndim < 2 for n in kept)
        assert not [n for n in decayed if n.startswith("text_decoder.")]  # not trained at all


def test_failed_finetune_leaves_requires_grad_as_it_was():
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    m.model.logit_scale.requires_grad_(False)  # the caller's own choice
    flags = _flags(m)
    with pytest.raises(ValueError, match="leaves nothing to train"):
        lk.models.finetune(m, imgs, sents, freeze=[""], progress=False)
    assert _flags(m) == flags
    with pytest.raises(TypeError, match=r"texts\[3\] is float"):
        lk.models.finetune(m, imgs, [*sents[:3], float("nan"), *sents[4:]], freeze="image", progress=False)
    assert _flags(m) == flags
    assert not m.trained
    lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, freeze="text", progress=False)
    assert _flags(m) == flags


@pytest.mark.parametrize("freeze", [["visual.transformer.resblock.0."], ["vision"], ["image", "txt."]])
def test_freeze_prefix_matching_nothing_raises(freeze):
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    h = m.checkpoint_hash
    with pytest.raises(ValueError, match=r"matches no parameter.*'text\.'.*'visual\.'"):
        lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, freeze=freeze, progress=False)
    m._checkpoint_hash = None
    assert m.checkpoint_hash == h
    assert all(_flags(m).values())


def test_batch_of_one_pair_is_rejected():
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    h = m.checkpoint_hash
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        lk.models.finetune(m, imgs, sents, batch_size=1, progress=False)
    m._checkpoint_hash = None
    assert m.checkpoint_hash == h
    assert not m.trained


def test_finetune_on_non_square_patches():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)
    sents = _pairs(8)[1]
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    _, hist = lk.models.finetune(m, imgs, sents, epochs=2, batch_size=4, augment=True, progress=False)
    assert len(hist["step_loss"]) == 4
    assert np.isfinite(hist["step_loss"]).all()


def test_dask_images_are_validated_without_computing():
    import dask.array as da

    def boom(block):
        raise AssertionError("the lazy array was computed")

    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    h = m.checkpoint_hash
    as_float = da.from_array(imgs / 255.0, chunks=4).map_blocks(boom, dtype=np.float64)
    with pytest.raises(ValueError, match="must be uint8"):
        lk.models.finetune(m, as_float, sents, progress=False)
    rgba = da.from_array(np.concatenate([imgs, imgs[..., :1]], axis=-1), chunks=4).map_blocks(
        boom, dtype=np.uint8
    )
    with pytest.raises(ValueError, match=r"\(n, height, width, 3\)"):
        lk.models.finetune(m, rgba, sents, progress=False)
    m._checkpoint_hash = None
    assert m.checkpoint_hash == h
    assert not m.trained
    # valid lazy patches train exactly as the same numpy patches
    kw = {"epochs": 1, "lr": 1e-3, "batch_size": 4, "seed": 3, "progress": False}
    _, lazy = lk.models.finetune(m, da.from_array(imgs, chunks=3), sents, **kw)
    _, eager = lk.models.finetune(lk.models.load("loki-tiny", device="cpu", seed=0), imgs, sents, **kw)
    assert lazy["step_loss"] == eager["step_loss"]


def test_generator_seed_is_the_recorded_seed():
    imgs, sents = _pairs(16)
    kw = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "progress": False}
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    m, hist = lk.models.finetune(m, imgs, sents, seed=np.random.default_rng(5), **kw)
    assert isinstance(hist["seed"], int)
    again = lk.models.load("loki-tiny", device="cpu", seed=1)
    again, rerun = lk.models.finetune(again, imgs, sents, seed=hist["seed"], **kw)
    assert rerun["step_loss"] == hist["step_loss"]
    assert again.checkpoint_hash == m.checkpoint_hash

    tiny, hist = lk.models.train_tiny(imgs, sents, device="cpu", seed=np.random.default_rng(5), **kw)
    again, rerun = lk.models.train_tiny(imgs, sents, device="cpu", seed=hist["seed"], **kw)
    assert rerun["step_loss"] == hist["step_loss"]
    assert again.checkpoint_hash == tiny.checkpoint_hash


def test_parameters_the_caller_froze_stay_frozen():
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    visual = {k: v.clone() for k, v in m.model.state_dict().items() if k.startswith("visual.")}
    for name, p in m.model.named_parameters():
        if name.startswith("visual."):
            p.requires_grad_(False)
    lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, progress=False)
    after = m.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in visual.items())


def test_a_finetune_stopped_part_way_updates_the_hash(monkeypatch):
    imgs, sents = _pairs(16)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    before = m.info()["checkpoint_hash"]
    interrupt_training_at_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, progress=False)
    assert m.info()["checkpoint_hash"] != before  # one step changed the weights


def test_finetune_records_the_patch_size_it_is_given():
    imgs, sents = _pairs(n=16)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    m, hist = lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, patch_um=200, progress=False)
    assert m.patch_um == hist["patch_um"] == 200.0
    m, hist = lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, progress=False)
    assert m.patch_um == hist["patch_um"] == 200.0  # patches of unknown size: the model keeps its own

    model, hist = lk.models.train_tiny(imgs, sents, device="cpu", epochs=1, patch_um=55, progress=False)
    assert model.patch_um == hist["patch_um"] == 55.0


def test_bad_patch_size_fails_before_training():
    imgs, sents = _pairs(n=16)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    before = m.checkpoint_hash
    with pytest.raises(ValueError, match="patch_um"):
        lk.models.finetune(m, imgs, sents, epochs=1, batch_size=8, patch_um=-1, progress=False)
    assert m.checkpoint_hash == before
    assert m.patch_um is None
    assert not m.trained


def test_seed_none_records_the_seed_it_drew():
    imgs, sents = _pairs(16)
    kw = {"epochs": 1, "lr": 1e-3, "batch_size": 8, "progress": False}
    m, hist = lk.models.finetune(
        lk.models.load("loki-tiny", device="cpu", seed=1), imgs, sents, seed=None, **kw
    )
    assert isinstance(hist["seed"], int)
    again, rerun = lk.models.finetune(
        lk.models.load("loki-tiny", device="cpu", seed=1), imgs, sents, seed=hist["seed"], **kw
    )
    assert rerun["step_loss"] == hist["step_loss"]
    assert again.checkpoint_hash == m.checkpoint_hash

    tiny, hist = lk.models.train_tiny(imgs, sents, device="cpu", seed=None, **kw)
    assert isinstance(hist["seed"], int)
    again, rerun = lk.models.train_tiny(imgs, sents, device="cpu", seed=hist["seed"], **kw)
    assert rerun["step_loss"] == hist["step_loss"]
    assert again.checkpoint_hash == tiny.checkpoint_hash


def test_lazy_images_are_computed_once_after_the_checks():
    import dask.array as da

    imgs, sents = _pairs(16)
    computed = []

    def count(block, block_info=None):
        computed.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(imgs, chunks=(4, -1, -1, -1)).map_blocks(count, dtype=np.uint8)
    kw = {"lr": 1e-3, "batch_size": 4, "seed": 3, "progress": False}
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(ValueError, match="matches no parameter"):  # a late check: nothing computed yet
        lk.models.finetune(m, lazy, sents, epochs=1, freeze=["nothing."], **kw)
    assert computed == []
    _, hist = lk.models.finetune(m, lazy, sents, epochs=3, **kw)
    assert len(hist["step_loss"]) == 12
    assert sorted(computed) == [0, 1, 2, 3]  # each chunk once, not once per step


def test_each_epoch_drops_the_last_partial_batch():
    """n // batch_size steps an epoch, reshuffled: the pairs that sit out change from epoch to epoch."""
    imgs, sents = _pairs(20)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    seen = []
    real = m.model.encode_text

    def spy(tokens, normalize=False):
        seen.append({tuple(row) for row in tokens.tolist()})
        return real(tokens, normalize=normalize)

    m.model.encode_text = spy
    sents = [f"Gene{i} {s}" for i, s in enumerate(sents)]  # each pair's tokens are its own
    _, hist = lk.models.finetune(m, imgs, sents, epochs=3, batch_size=8, augment=False, progress=False)
    assert hist["steps_per_epoch"] == 2
    assert len(hist["step_loss"]) == 6
    assert [len(batch) for batch in seen] == [8] * 6
    per_epoch = [seen[0] | seen[1], seen[2] | seen[3], seen[4] | seen[5]]
    assert all(len(pairs) == 16 for pairs in per_epoch)  # 4 of 20 pairs sit out each epoch
    assert len(per_epoch[0] | per_epoch[1] | per_epoch[2]) > 16


def test_finetune_a_plain_clip_model():
    """Freeze groups work for a plain open_clip CLIP, whose text tower sits on the model itself."""
    m = lk.models.load("ViT-S-32", device="cpu", seed=0)
    imgs, sents = _pairs(4, size=m.image_size)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    m, hist = lk.models.finetune(
        m, imgs, sents, epochs=1, lr=1e-3, batch_size=4, freeze="text", progress=False
    )
    after = m.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    assert all(k.startswith("visual.") or k == "logit_scale" for k in changed)
    assert np.isfinite(hist["step_loss"]).all()


@pytest.mark.parametrize("blank", [[""] * 10, ["", *(["Apoe Ptgds"] * 9)], ["Apoe Ptgds"] * 9 + ["  "]])
def test_empty_sentences_are_refused(blank):
    imgs, _ = _pairs(10)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    h = m.checkpoint_hash
    n = sum(not s.strip() for s in blank)
    with pytest.raises(ValueError, match=rf"{n} of 10 sentences are empty .*Leave those pairs out"):
        lk.models.finetune(m, imgs, blank, epochs=1, batch_size=4, progress=False)
    m._checkpoint_hash = None
    assert m.checkpoint_hash == h
    assert not m.trained


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 2.5}, "batch_size must be an integer >= 2 .*, got 2.5"),
        ({"batch_size": 4.0}, "batch_size must be an integer >= 2 .*, got 4.0"),
        ({"epochs": 1.7}, "epochs must be a positive integer, got 1.7"),
        ({"epochs": True}, "epochs must be a positive integer, got True"),
        ({"batch_size": True}, "batch_size must be an integer >= 2 .*, got True"),
    ],
)
def test_non_integer_epochs_and_batch_size_are_refused(kwargs, match):
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(ValueError, match=match):
        lk.models.finetune(m, imgs, sents, progress=False, **{"epochs": 1, "batch_size": 4, **kwargs})
    assert not m.trained


def test_numpy_integer_epochs_and_batch_size_are_accepted():
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    _, hist = lk.models.finetune(m, imgs, sents, epochs=np.int64(1), batch_size=np.int32(4), progress=False)
    assert (hist["epochs"], hist["batch_size"], len(hist["step_loss"])) == (1, 4, 2)


def test_progress_bar_counts_every_step(monkeypatch):
    """The bar is advanced after each finished step and ends at the total (it stopped one short)."""
    import io

    import tqdm.auto

    bars = []

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, file=io.StringIO(), **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    imgs, sents = _pairs(n=16)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    _, hist = lk.models.finetune(m, imgs, sents, epochs=2, lr=1e-3, batch_size=8, progress=True)
    (bar,) = bars
    assert bar.total == 4 == len(hist["step_loss"])
    assert bar.n == 4


def test_one_string_is_not_taken_as_sentences():
    """A string of n characters is not n one-letter sentences."""
    imgs, _ = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    with pytest.raises(TypeError, match="not one string"):
        lk.models.finetune(m, imgs, "Apoe Ptg", progress=False)
    assert not m.trained


def test_a_diverging_loss_stops_training_before_its_step(monkeypatch):
    """A non-finite loss raises instead of stepping every weight to NaN and calling the model trained."""
    from loki.models import _finetune

    imgs, sents = _pairs(16)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    calls = []
    real = _finetune.contrastive_loss

    def diverging(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(_finetune, "contrastive_loss", diverging)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3 of 4 .*lower lr="):
        lk.models.finetune(m, imgs, sents, epochs=2, lr=1e-3, batch_size=8, progress=False)
    assert all(torch.isfinite(p).all() for p in m.model.parameters())
    assert m.trained  # steps 1 and 2 changed it in place


def test_history_records_every_parameter_of_the_run():
    """history holds what a rerun needs: warmup and precision too."""
    imgs, sents = _pairs(8)
    m = lk.models.load("loki-tiny", device="cpu", seed=0, precision="fp32")
    _, hist = lk.models.finetune(m, imgs, sents, epochs=1, lr=1e-3, warmup=0.25, progress=False)
    assert hist["warmup"] == 0.25
    assert hist["precision"] == "fp32"


def test_held_out_loss_is_measured_without_changing_training():
    imgs, sents = _pairs(n=32)
    val = _pairs(n=20, seed=1)
    train = {"epochs": 3, "lr": 1e-3, "batch_size": 8, "seed": 7, "progress": False}
    plain = lk.models.load("loki-tiny", device="cpu", seed=1)
    plain, plain_hist = lk.models.finetune(plain, imgs, sents, **train)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    before = lk.models.load("loki-tiny", device="cpu", seed=1)
    m, hist = lk.models.finetune(m, imgs, sents, validation=val, **train)
    # measuring held-out pairs draws no random number and leaves the modules' modes: same training
    assert m.checkpoint_hash == plain.checkpoint_hash
    assert hist["step_loss"] == plain_hist["step_loss"]
    assert len(hist["val_loss"]) == 3
    assert hist["n_validation_pairs"] == 20
    # the recorded losses are those of the held-out pairs in batches of 8 (the partial last one left out)
    tokens = torch.from_numpy(m.tokenizer.ids(val[1]))

    def loss_of(model):
        model.model.eval()
        with torch.no_grad():
            x = lk.models._preprocess.preprocess_uint8(
                torch.from_numpy(val[0][:16]),
                image_size=model.image_size,
                mean=model.image_mean,
                std=model.image_std,
                device="cpu",
            )
            img = model.model.encode_image(x, normalize=True).reshape(2, 8, -1)
            txt = model.model.encode_text(tokens[:16], normalize=True).reshape(2, 8, -1)
            scale = model.model.logit_scale
            return np.mean([float(lk.models.contrastive_loss(img[i], txt[i], scale)) for i in range(2)])

    assert hist["val_loss"][-1] == pytest.approx(loss_of(m), rel=1e-5)
    assert hist["val_loss_before"] == pytest.approx(loss_of(before), rel=1e-5)
    assert "best_epoch" not in hist


def test_keep_best_ends_with_the_weights_of_the_epoch_of_lowest_held_out_loss(monkeypatch):
    from loki.models import _finetune
    from loki.models._omiclip import state_dict_hash

    scripted = iter([3.0, 2.0, 1.0, 1.5, 2.5])  # before training, then epochs 1-4: epoch 2 is best
    seen = []

    def held_out_loss(model, images, tokens, batch_size):
        seen.append(state_dict_hash(model.model.state_dict()))  # the weights measured at each call
        return next(scripted)

    monkeypatch.setattr(_finetune, "_held_out_loss", held_out_loss)
    imgs, sents = _pairs(n=16)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    m, hist = lk.models.finetune(
        m,
        imgs,
        sents,
        epochs=4,
        lr=1e-3,
        batch_size=8,
        progress=False,
        validation=_pairs(n=8, seed=1),
        keep_best=True,
    )
    assert hist["val_loss"] == [2.0, 1.0, 1.5, 2.5]
    assert hist["best_epoch"] == 2
    assert len(set(seen)) == 5  # every epoch changed the weights
    assert m.checkpoint_hash == seen[2]  # those measured after epoch 2, not the last epoch's


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"keep_best": True}, ValueError, "keep_best=True needs validation="),
        ({"validation": "pairs"}, TypeError, "validation must be a pair"),
        (
            {"validation": (np.zeros((1, 8, 8, 3), np.uint8), ["Apoe"])},
            ValueError,
            "validation: need at least 2",
        ),
        (
            {"validation": (np.zeros((3, 8, 8, 3), np.uint8), ["Apoe"] * 2)},
            ValueError,
            "validation: got 3 images",
        ),
    ],
)
def test_bad_validation_pairs_are_refused_before_training(kwargs, error, match):
    imgs, sents = _pairs(n=8)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    before = m.checkpoint_hash
    with pytest.raises(error, match=match):
        lk.models.finetune(m, imgs, sents, epochs=1, batch_size=4, progress=False, **kwargs)
    assert m.checkpoint_hash == before


def test_a_run_is_recorded_on_the_model_with_fingerprints_of_its_pairs():
    import hashlib

    from loki.models._finetune import images_sha256

    imgs, sents = _pairs(n=16)
    val = _pairs(n=8, seed=1)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    start = m.checkpoint_hash
    assert m.training_runs == []
    kw = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "seed": 4, "progress": False}
    m, hist = lk.models.finetune(m, imgs, sents, validation=val, keep_best=True, freeze="image", **kw)
    (run,) = m.training_runs
    # the fingerprints: shape then bytes of the images; each sentence's length then its UTF-8 bytes
    pixels = hashlib.sha256(f"loki-images-v1:{imgs.shape}".encode() + imgs.tobytes()).hexdigest()
    words = hashlib.sha256(b"loki-sentences-v1")
    for s in sents:
        words.update(len(s.encode()).to_bytes(8, "little") + s.encode())
    assert run["images_sha256"] == hist["images_sha256"] == pixels
    assert run["sentences_sha256"] == hist["sentences_sha256"] == words.hexdigest()
    assert run["validation_images_sha256"] == images_sha256(val[0]) != pixels
    expected = {
        "completed": True,
        "steps": 4,
        "start_model": "loki-tiny",
        "start_checkpoint_hash": start,
        "epochs": 2,
        "steps_per_epoch": 2,
        "lr_max": 1e-3,
        "batch_size": 8,
        "weight_decay": 0.2,
        "seed": 4,
        "freeze": "image",
        "n_pairs": 16,
        "n_validation_pairs": 8,
        "keep_best": True,
        "epoch_loss": hist["epoch_loss"],
        "final_epoch_loss": hist["epoch_loss"][-1],
        "val_loss_before": hist["val_loss_before"],
        "val_loss": hist["val_loss"],
    }
    assert {k: run[k] for k in expected} == expected
    assert run["best_epoch"] == hist["best_epoch"] == 2  # the held-out loss fell each epoch
    assert run["best_val_loss"] == hist["val_loss"][1]
    assert run["best_epoch_loss"] == hist["epoch_loss"][1]
    assert "step_loss" not in run  # per-step history stays out of the record
    assert "lr" not in run
    # a second run is appended, and names the weights it started from
    trained = m.checkpoint_hash
    m, _ = lk.models.finetune(m, imgs[::-1], sents[::-1], **kw)
    assert [r["start_checkpoint_hash"] for r in m.training_runs] == [start, trained]
    assert m.training_runs[1]["images_sha256"] != pixels  # the same pairs in another order
    assert m.training_runs[1]["best_epoch"] is None


def test_images_are_hashed_in_blocks_without_copying_them_whole():
    from loki.models._finetune import images_sha256, sentences_sha256

    imgs, _ = _pairs(n=10)
    whole = images_sha256(imgs)
    assert images_sha256(imgs, block_bytes=1) == whole  # one row a block
    assert images_sha256(imgs, block_bytes=3 * imgs[0].nbytes) == whole
    flipped = np.ascontiguousarray(imgs[:, ::-1])
    assert images_sha256(imgs[:, ::-1], block_bytes=100) == images_sha256(flipped)
    changed = imgs.copy()
    changed[9, 0, 0, 0] ^= 1
    assert images_sha256(changed) != whole
    assert images_sha256(imgs.reshape(10, 16, 64, 3)) != whole  # same bytes, other shape
    assert sentences_sha256(["ab", "c"]) != sentences_sha256(["a", "bc"])


def test_a_run_stopped_part_way_is_recorded_as_not_completed(monkeypatch):
    imgs, sents = _pairs(16)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    interrupt_training_at_batch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        lk.models.finetune(m, imgs, sents, epochs=2, batch_size=8, progress=False)
    (run,) = m.training_runs  # two steps changed the weights: the saved model must say so
    assert (run["completed"], run["steps"], run["epochs"], len(run["epoch_loss"])) == (False, 2, 2, 1)


@pytest.mark.parametrize("scripted", [[1.0, 2.0, 1.5, 3.0], [1.0, 1.0, 1.0, 1.0]])
def test_keep_best_keeps_the_starting_weights_when_no_epoch_improves(monkeypatch, scripted):
    """The starting weights are epoch 0: when no epoch is strictly better, the model comes back unchanged."""
    from loki.models import _finetune

    losses = iter(scripted)  # before training, then epochs 1-3
    monkeypatch.setattr(_finetune, "_held_out_loss", lambda *args: next(losses))
    imgs, sents = _pairs(n=16)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    before = m.checkpoint_hash
    with pytest.warns(lk.LokiWarning, match=r"no epoch lowered the held-out loss.*best_epoch 0"):
        m, hist = lk.models.finetune(
            m,
            imgs,
            sents,
            epochs=3,
            lr=1e-3,
            batch_size=8,
            patch_um=200,
            progress=False,
            validation=_pairs(n=8, seed=1),
            keep_best=True,
        )
    assert hist["best_epoch"] == 0
    assert len(hist["step_loss"]) == 6  # it trained, then went back
    m._checkpoint_hash = None
    assert m.checkpoint_hash == before
    assert (m.trained, m.patch_um, m.training_runs) == (False, None, [])
    assert hist["patch_um"] is None


def test_non_finite_losses_are_recorded_as_null_so_the_saved_json_is_strict(monkeypatch, tmp_path):
    import json

    from loki.models import _finetune

    losses = iter([float("nan"), float("inf")])  # before training, then epoch 1
    monkeypatch.setattr(_finetune, "_held_out_loss", lambda *args: next(losses))
    imgs, sents = _pairs(n=16)
    m = lk.models.load("loki-tiny", device="cpu", seed=0)
    m, hist = lk.models.finetune(
        m, imgs, sents, epochs=1, batch_size=8, validation=(imgs, sents), progress=False
    )
    assert np.isnan(hist["val_loss_before"])  # the history keeps the values as measured
    (run,) = m.training_runs
    assert (run["val_loss_before"], run["val_loss"]) == (None, [None])
    m.save(tmp_path / "m")
    text = (tmp_path / "m" / "loki_model.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the saved JSON"))


# ------------------------------------------------------------------ checkpoints and resumption
_RESUMABLE = {"epochs": 3, "lr": 1e-3, "batch_size": 8, "seed": 7, "progress": False}


def _interrupted_run(monkeypatch, path, imgs, sents, *, batch, **kw):
    """A run of loki-tiny (seed 1) stopped as it prepares its ``batch``-th batch; the model it left."""
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    interrupt_training_at_batch(monkeypatch, batch)
    with pytest.raises(KeyboardInterrupt):
        lk.models.finetune(m, imgs, sents, checkpoint=path, **{**_RESUMABLE, **kw})
    monkeypatch.undo()
    return m


@pytest.mark.parametrize("given", ["stopped", "reloaded"])
@pytest.mark.parametrize("held_out", [False, True])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(monkeypatch, tmp_path, given, held_out):
    """AdamW's moments, the schedule, the epoch's order and the generator continue: bit-identical on CPU."""
    from loki.models._finetune import RUN_KEYS

    imgs, sents = _pairs(24)
    extra = {"validation": _pairs(16, seed=1), "keep_best": True} if held_out else {}
    whole, whole_hist = lk.models.finetune(
        lk.models.load("loki-tiny", device="cpu", seed=1), imgs, sents, **_RESUMABLE, **extra
    )
    path = tmp_path / "run" / "finetune.ckpt"
    # 3 steps an epoch; saved after steps 2, 3 (epoch end) and 4; stopped after step 5
    m = _interrupted_run(monkeypatch, path, imgs, sents, batch=6, checkpoint_every=2, **extra)
    stopped = m.training_runs[-1]
    assert (stopped["completed"], stopped["steps"], stopped["checkpoint"]) == (False, 5, str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["finetune.ckpt"]  # no partial file left
    if given == "reloaded":  # a new session: the model the run started from
        m = lk.models.load("loki-tiny", device="cpu", seed=1)
    m, hist = lk.models.finetune(m, imgs, sents, checkpoint=path, resume=True, **_RESUMABLE, **extra)

    assert m.checkpoint_hash == whole.checkpoint_hash
    for key in ("step_loss", "lr", "epoch_loss", "logit_scale", "val_loss", "val_loss_before", "best_epoch"):
        assert hist.get(key) == whole_hist.get(key), key
    (run,) = m.training_runs  # the stopped session's record is replaced by the whole run's
    (uninterrupted,) = whole.training_runs
    assert run["run_id"] == stopped["run_id"] != uninterrupted["run_id"]
    assert (run["completed"], run["steps"]) == (True, 9)
    (where,) = run["resumed_from"]
    assert {k: where[k] for k in ("checkpoint", "step", "epoch", "batch")} == {
        "checkpoint": str(path),
        "step": 4,
        "epoch": 2,  # continued in epoch 2, after its first batch
        "batch": 1,
    }
    assert hist["resumed_from"] == run["resumed_from"]
    differ = {"seconds", "checkpoint", "resumed_from"}
    assert {k: run[k] for k in RUN_KEYS if k not in differ} == {
        k: uninterrupted[k] for k in RUN_KEYS if k not in differ
    }
    assert run["start_checkpoint_hash"] == uninterrupted["start_checkpoint_hash"]
    assert m.trained
    assert m.trained_tokenizer == m.tokenizer.fingerprint()


def test_a_run_resumed_at_an_epoch_end_and_again_is_recorded_each_time(monkeypatch, tmp_path):
    imgs, sents = _pairs(24)
    whole, _ = lk.models.finetune(
        lk.models.load("loki-tiny", device="cpu", seed=1), imgs, sents, **_RESUMABLE
    )
    path = tmp_path / "f.ckpt"
    m = _interrupted_run(monkeypatch, path, imgs, sents, batch=5)  # saved at epoch 1's end only
    interrupt_training_at_batch(monkeypatch, 5)  # stops again in epoch 3, after its first batch
    with pytest.raises(KeyboardInterrupt):
        lk.models.finetune(m, imgs, sents, checkpoint=path, resume=True, **_RESUMABLE)
    monkeypatch.undo()
    assert m.training_runs[-1]["steps"] == 7
    m, _ = lk.models.finetune(m, imgs, sents, checkpoint=path, resume=True, **_RESUMABLE)
    assert m.checkpoint_hash == whole.checkpoint_hash
    (run,) = m.training_runs
    assert [(r["step"], r["epoch"], r["batch"]) for r in run["resumed_from"]] == [(3, 2, 0), (6, 3, 0)]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lr": 2e-3}, r"lr: 0\.001 in the checkpoint, 0\.002 now"),
        ({"epochs": 4}, r"epochs: 3 in the checkpoint, 4 now"),
        ({"seed": 8}, r"seed: 7 in the checkpoint, 8 now"),
        (
            {"freeze": "image"},
            r"trained parameters \(63 in the checkpoint, 31 now.*freeze: None in the checkpoint",
        ),
        ({"images": "other"}, r"the training images \(sha256\): [0-9a-f]{12}\.\.\. in the checkpoint"),
        ({"sentences": "other"}, r"the training sentences \(sha256\)"),
        (
            {"model": "other"},
            r"the model: the run started from the weights [0-9a-f]{12}\.\.\. \('loki-tiny'\)",
        ),
        ({"model": "loki-small-data"}, r"arch: 'loki-tiny' in the checkpoint, 'loki-small-data' now"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(monkeypatch, tmp_path, change, match):
    imgs, sents = _pairs(24)
    path = tmp_path / "f.ckpt"
    _interrupted_run(monkeypatch, path, imgs, sents, batch=5)
    saved = path.read_bytes()
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    if change.get("model") == "other":
        m = lk.models.load("loki-tiny", device="cpu", seed=2)
    elif "model" in change:
        m = lk.models.load(change["model"], device="cpu", seed=1)
    if "images" in change:
        imgs = imgs.copy()
        imgs[0, 0, 0, 0] ^= 1
    if "sentences" in change:
        sents = [*sents[1:], sents[0]]
    kw = {**_RESUMABLE, **{k: v for k, v in change.items() if k not in ("model", "images", "sentences")}}
    before = m.checkpoint_hash
    with pytest.raises(ValueError, match=rf"cannot resume from .*another run.*{match}.*Nothing was changed"):
        lk.models.finetune(m, imgs, sents, checkpoint=path, resume=True, **kw)
    m._checkpoint_hash = None
    assert (m.checkpoint_hash, m.trained, m.training_runs) == (before, False, [])
    assert path.read_bytes() == saved


def test_checkpoint_arguments_are_checked_before_anything_is_written(tmp_path):
    imgs, sents = _pairs(16)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    before = m.checkpoint_hash
    kw = {"epochs": 1, "batch_size": 8, "progress": False}
    with pytest.raises(ValueError, match=r"resume=True needs checkpoint="):
        lk.models.finetune(m, imgs, sents, resume=True, **kw)
    with pytest.raises(ValueError, match=r"checkpoint_every= needs checkpoint="):
        lk.models.finetune(m, imgs, sents, checkpoint_every=2, **kw)
    with pytest.raises(ValueError, match=r"checkpoint_every must be a positive integer or None"):
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path / "a.ckpt", checkpoint_every=0, **kw)
    with pytest.raises(TypeError, match=r"resume must be True or False"):
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path / "a.ckpt", resume="yes", **kw)
    (tmp_path / "old.ckpt").write_bytes(b"another run")
    with pytest.raises(FileExistsError, match=r"old\.ckpt' exists .*pass resume=True"):
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path / "old.ckpt", **kw)
    assert (tmp_path / "old.ckpt").read_bytes() == b"another run"
    with pytest.raises(FileNotFoundError, match=r"new\.ckpt' does not exist \(.* holds 'old\.ckpt'\)"):
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path / "new.ckpt", resume=True, **kw)
    with pytest.raises(IsADirectoryError, match=r"is a directory; pass a file path"):
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path, **kw)
    with pytest.raises(ValueError, match=r"old\.ckpt' is not a readable fine-tuning checkpoint"):
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path / "old.ckpt", resume=True, **kw)
    m.save(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    with pytest.raises(ValueError, match=r"not a (readable fine-tuning )?checkpoint"):
        lk.models.finetune(m, imgs, sents, checkpoint=weights, resume=True, **kw)
    torch.save({"state_dict": m.model.state_dict()}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"not a checkpoint saved by lk\.models\.finetune.*lk\.models\.load"):
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path / "weights.pt", resume=True, **kw)
    with pytest.raises(ValueError, match="epochs"):  # a bad argument: no checkpoint is started
        lk.models.finetune(m, imgs, sents, checkpoint=tmp_path / "new" / "f.ckpt", epochs=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "old.ckpt", "weights.pt"]
    m._checkpoint_hash = None
    assert (m.checkpoint_hash, m.trained, m.training_runs) == (before, False, [])


def test_a_save_that_fails_leaves_the_previous_checkpoint_whole(monkeypatch, tmp_path):
    """Each save goes to a partial file renamed over the last one: a failed or cut save loses nothing."""
    from loki.models._finetune import read_training_checkpoint

    imgs, sents = _pairs(24)
    whole, _ = lk.models.finetune(
        lk.models.load("loki-tiny", device="cpu", seed=1), imgs, sents, **_RESUMABLE
    )
    path = tmp_path / "f.ckpt"
    (tmp_path / "f.ckpt.partial").write_bytes(b"left by a crash while saving")
    real, saves = torch.save, []

    def cut_short(obj, fh, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the second save dies half-way through writing
            fh.write(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device")
        return real(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", cut_short)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    with pytest.raises(OSError, match="No space left"):
        lk.models.finetune(m, imgs, sents, checkpoint=path, checkpoint_every=1, **_RESUMABLE)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.ckpt"]
    assert read_training_checkpoint(path)["run"]["step"] == 1  # the first save, whole
    assert (m.training_runs[-1]["completed"], m.training_runs[-1]["steps"]) == (False, 2)
    m, _ = lk.models.finetune(m, imgs, sents, checkpoint=path, resume=True, **_RESUMABLE)
    assert m.checkpoint_hash == whole.checkpoint_hash


def test_numpy_scalar_options_train_and_checkpoint(tmp_path):
    """lr, weight_decay and warmup as numpy scalars (e.g. from a grid) reach the JSON record as floats."""
    import json

    imgs, sents = _pairs(16)
    m = lk.models.load("loki-tiny", device="cpu", seed=1)
    options = {"lr": np.float32(1e-3), "weight_decay": np.float64(0.1), "warmup": np.float32(0.25)}
    m, hist = lk.models.finetune(
        m, imgs, sents, epochs=1, batch_size=8, checkpoint=tmp_path / "run.ckpt", progress=False, **options
    )
    assert (tmp_path / "run.ckpt").is_file()
    assert m.training_runs[-1]["completed"] is True
    assert all(type(value) is float for value in hist["lr"])
    json.dumps(m.training_runs[-1])
