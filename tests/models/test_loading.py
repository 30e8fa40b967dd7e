from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch

import loki as lk
from loki.models import _loading


def _sentences(n=6):
    return [f"Gene{i} Apoe Ptgds Malat1 Snap25" for i in range(n)]


def _images(n=6, size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_import_loki_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, loki; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_shapes_and_normalisation(tiny):
    assert tiny.name == "loki-tiny"
    assert tiny.trained is False
    img = tiny.encode_images(_images(5), batch_size=2)
    txt = tiny.encode_texts(_sentences(7), batch_size=3)
    assert img.shape == (5, tiny.embed_dim)
    assert txt.shape == (7, tiny.embed_dim)
    assert img.dtype == np.float32
    assert txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    assert tiny.context_length == 76
    assert tiny.tokenizer.ids(["a"]).shape == (1, 76)


def test_batching_does_not_change_embeddings(tiny):
    x = _images(7)
    np.testing.assert_allclose(
        tiny.encode_images(x, batch_size=7), tiny.encode_images(x, batch_size=2), atol=1e-5
    )
    s = _sentences(7)
    np.testing.assert_allclose(
        tiny.encode_texts(s, batch_size=7), tiny.encode_texts(s, batch_size=3), atol=1e-5
    )
    # more batches than the output sink groups (16), so outputs are copied while later ones are queued
    s = _sentences(40)
    np.testing.assert_allclose(
        tiny.encode_texts(s, batch_size=40), tiny.encode_texts(s, batch_size=1), atol=1e-5
    )


def test_pil_and_array_inputs_agree(tiny):
    from PIL import Image

    x = _images(3, size=tiny.image_size)
    pil = [Image.fromarray(a) for a in x]
    np.testing.assert_allclose(tiny.encode_images(pil), tiny.encode_images(x), atol=1e-4)


def test_untrained_model_warns(tiny, caplog):
    with caplog.at_level("WARNING", logger="loki"):
        tiny.encode_texts(["Apoe"])
    assert "untrained" in caplog.text


def test_building_a_model_leaves_the_root_logger_alone(caplog):
    # open_clip warns "No pretrained weights loaded" through logging.warning on the root logger.
    root = logging.getLogger()
    handlers = list(root.handlers)
    with caplog.at_level("WARNING"):
        lk.models.load("loki-tiny", seed=0)
    assert not [r for r in caplog.records if r.name == "root"]
    assert root.handlers == handlers
    assert not root.filters


def test_seed_fixes_initialisation_without_global_rng():
    state = torch.random.get_rng_state()
    a = lk.models.load("loki-tiny", device="cpu", seed=3)
    b = lk.models.load("loki-tiny", device="cpu", seed=3)
    c = lk.models.load("loki-tiny", device="cpu", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.checkpoint_hash == b.checkpoint_hash != c.checkpoint_hash


def test_save_load_round_trip(tiny, tmp_path):
    x, s = _images(4), _sentences(4)
    tiny.save(tmp_path / "m")
    for path in (tmp_path / "m", tmp_path / "m" / "model.safetensors"):
        back = lk.models.load(path, device="cpu")
        assert back.arch == "loki-tiny"
        assert back.trained is False
        np.testing.assert_array_equal(back.encode_images(x), tiny.encode_images(x))
        np.testing.assert_array_equal(back.encode_texts(s), tiny.encode_texts(s))
    assert back.checkpoint_hash == _loading.file_sha256(tmp_path / "m" / "model.safetensors")
    assert tiny.checkpoint_hash == back.checkpoint_hash


@pytest.mark.parametrize("wrap", ["state_dict", "module", "bare"])
def test_open_clip_checkpoint_layouts(tiny, tmp_path, wrap):
    sd = tiny.model.state_dict()
    if wrap == "state_dict":
        obj = {"epoch": 3, "name": "x", "state_dict": sd}
    elif wrap == "module":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = sd
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    back = lk.models.load(path, arch="loki-tiny", device="cpu")
    s = _sentences(3)
    np.testing.assert_array_equal(back.encode_texts(s), tiny.encode_texts(s))
    assert back.checkpoint_hash == _loading.file_sha256(path)


def test_pickled_checkpoint_needs_trust_and_converts(tiny, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": tiny.model.state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(
        lk.models.UntrustedCheckpointError, match=r"trust_checkpoint=True.*convert_to_safetensors"
    ):
        lk.models.load(path, arch="loki-tiny", device="cpu")
    trusted = lk.models.load(path, arch="loki-tiny", device="cpu", trust_checkpoint=True)
    with pytest.raises(lk.models.UntrustedCheckpointError):
        lk.models.convert_to_safetensors(path, arch="loki-tiny")
    out = lk.models.convert_to_safetensors(path, arch="loki-tiny", trust_checkpoint=True)
    converted = lk.models.load(out, device="cpu")  # arch read from the file, no unpickling
    assert converted.arch == "loki-tiny"
    s = _sentences(3)
    np.testing.assert_array_equal(converted.encode_texts(s), trusted.encode_texts(s))


def test_architecture_mismatch_names_keys(tiny, tmp_path):
    sd = dict(tiny.model.state_dict())
    sd.pop("logit_scale")
    sd.pop("visual.proj")
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(
        ValueError, match=r"2 missing keys \[.*logit_scale.*\], 1 unexpected keys \[extra.weight\]"
    ):
        lk.models.load(path, arch="loki-tiny", device="cpu")


def test_hf_hub_download_path(tiny, tmp_path, monkeypatch):
    tiny.save(tmp_path / "m")
    calls = []

    def fake(repo_id, filename, token):
        calls.append((repo_id, filename, token))
        return tmp_path / "m" / "model.safetensors"

    monkeypatch.setattr(_loading, "_hub_download", fake)
    model = lk.models.load("hf-hub:org/repo/model.safetensors", token="tok", device="cpu")
    assert calls == [("org/repo", "model.safetensors", "tok")]
    assert model.arch == "loki-tiny"
    s = _sentences(2)
    np.testing.assert_array_equal(model.encode_texts(s), tiny.encode_texts(s))


def test_published_name_requests_gated_checkpoint(monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def fake(repo_id, filename, token):
        calls.append((repo_id, filename, token))
        raise Stop

    monkeypatch.setattr(_loading, "_hub_download", fake)
    with pytest.raises(Stop):
        lk.models.load("omiclip", token="hf_x", device="cpu")
    assert calls == [("WangGuangyuLab/Loki", "checkpoint.pt", "hf_x")]
    assert lk.models._registry.PUBLISHED["omiclip"].arch == "coca_ViT-L-14"


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"name_or_path": "no/such/file.pt"}, FileNotFoundError, "neither a file"),
        ({"name_or_path": "hf-hub:onlyorg"}, ValueError, "hf-hub:org/repo"),
        ({"name_or_path": "loki-tiny", "precision": "fp8"}, ValueError, "precision"),
    ],
)
def test_bad_load_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        lk.models.load(device="cpu", **kwargs)


def test_bad_encode_inputs(tiny):
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode_images(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(n, height, width, 3\)"):
        tiny.encode_images(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="list of strings"):
        tiny.encode_texts("Apoe Ptgds")
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode_texts(["Apoe"], batch_size=0)


def test_bf16_weights_precision_encodes_close_to_fp32(tiny):
    fast = lk.models.load("loki-tiny", device="cpu", seed=0, precision="bf16-weights")
    assert next(fast.model.parameters()).dtype == torch.bfloat16
    x, s = _images(3), _sentences(3)
    a, b = fast.encode_images(x), tiny.encode_images(x)
    assert a.dtype == np.float32
    assert np.all(np.sum(a * b, axis=1) > 0.98)  # cosine to the fp32 embedding
    assert np.all(np.sum(fast.encode_texts(s) * tiny.encode_texts(s), axis=1) > 0.98)
    with pytest.raises(ValueError, match="bf16-weights"):
        lk.models.finetune(fast, x, s, progress=False)


def test_small_data_model_same_interface(tmp_path):
    m = lk.models.load("loki-small-data", device="cpu", seed=0)
    assert m.arch in lk.models.SMALL_ARCHS
    x, s = _images(4), _sentences(4)
    m, hist = lk.models.finetune(m, x, s, epochs=1, lr=1e-3, batch_size=4, progress=False)
    assert m.trained
    assert len(hist["step_loss"]) == 1
    m.save(tmp_path / "small")
    back = lk.models.load(tmp_path / "small", device="cpu")
    assert back.trained
    np.testing.assert_array_equal(back.encode_images(x), m.encode_images(x))
    np.testing.assert_array_equal(back.encode_texts(s), m.encode_texts(s))
