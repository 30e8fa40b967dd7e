from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import loki as lk


def _pairs(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    genes = ["Apoe", "Ptgds", "Snap25", "Malat1", "Plp1", "Mbp", "Gad1", "Calm1"]
    sents = [" ".join(rng.permutation(genes)) for _ in range(n)]
    return imgs, sents


def test_contrastive_loss_is_eq1():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    b = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    scale = torch.tensor(np.log(10.0))
    s = 10.0 * a @ b.T
    expected = -0.5 * (torch.log_softmax(s, 1).diag().mean() + torch.log_softmax(s, 0).diag().mean())
    torch.testing.assert_close(lk.models.contrastive_loss(a, b, scale), expected)


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
