from __future__ import annotations

import argparse
import logging
import re

import numpy as np
import pytest
import torch

import loki as lk
from loki.models import _architecture_fit, _architectures, _checkpoint_files, _hub, _loading


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
    assert back.file_sha256 == tiny.file_sha256 == _loading.file_sha256(tmp_path / "m" / "model.safetensors")
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
    assert back.file_sha256 == _loading.file_sha256(path)
    assert back.checkpoint_hash == tiny.checkpoint_hash  # the weights' content, whatever the layout


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
    ) as info:
        lk.models.load(path, arch="loki-tiny", device="cpu")
    # the sizes are loki-tiny's own: the keys, not the architecture, are wrong
    assert (
        "are those of 'loki-tiny': the keys above differ from its own (missing, renamed or reshaped)"
        in str(info.value)
    )


def test_hf_hub_download_path(tiny, tmp_path, monkeypatch):
    tiny.save(tmp_path / "m")
    calls = []

    def fake(repo_id, filename, token):
        calls.append((repo_id, filename, token))
        return tmp_path / "m" / "model.safetensors"

    monkeypatch.setattr(_hub, "download", fake)
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

    monkeypatch.setattr(_hub, "download", fake)
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
    with pytest.raises(ValueError, match=r"\(n, height, width, 3\).*got an array of shape \(2, 8, 8\)"):
        tiny.encode_images(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(
        ValueError, match=r"got a list of 2 ndarray \(stack equal-sized patches with np.stack\)"
    ):
        tiny.encode_images([np.zeros((8, 8, 3), dtype=np.uint8)] * 2)
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


def test_precision_and_arch_are_checked_before_download_or_read(tiny, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_hub, "download", lambda *a: calls.append(a))
    monkeypatch.setattr(_loading, "read_checkpoint", lambda *a, **k: calls.append(a))
    tiny.save(tmp_path / "m")
    for where in ("omiclip", "hf-hub:org/repo", tmp_path / "m"):
        with pytest.raises(ValueError, match="precision must be one of"):
            lk.models.load(where, precision="fp16", device="cpu")
        with pytest.raises(ValueError, match="unknown architecture 'coca_ViT-L-41'"):
            lk.models.load(where, arch="coca_ViT-L-41", device="cpu")
    assert calls == []


def test_seed_does_not_reseed_cuda_generators(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    a = lk.models.load("loki-tiny", device="cpu", seed=1234)
    b = lk.models.load("loki-small-data", device="cpu", seed=1234)
    assert calls == []
    assert a.checkpoint_hash == lk.models.load("loki-tiny", device="cpu", seed=1234).checkpoint_hash
    assert b.checkpoint_hash == lk.models.load("loki-small-data", device="cpu", seed=1234).checkpoint_hash


def test_unreadable_checkpoints_are_not_called_untrusted(tiny, tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.pt"
    torch.save(tiny.model.state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:4096])
    html = tmp_path / "error_page.pt"
    html.write_text("<html><body>401 Unauthorized</body></html>")
    for path in (truncated, html):
        for trust in (False, True):
            with pytest.raises(ValueError, match=rf"{path.name} is not a readable .*checkpoint") as err:
                lk.models.load(path, arch="loki-tiny", device="cpu", trust_checkpoint=trust)
            assert not isinstance(err.value, lk.models.UntrustedCheckpointError)
    # safetensors content is recognised whatever the suffix
    renamed = tmp_path / "weights.bin"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(renamed))
    back = lk.models.load(renamed, arch="loki-tiny", device="cpu")
    s = _sentences(3)
    np.testing.assert_array_equal(back.encode_texts(s), tiny.encode_texts(s))


def test_convert_keeps_the_arch_of_its_metadata_and_never_clobbers_it(tiny, tmp_path):
    path = tmp_path / "ck.pt"
    torch.save(tiny.model.state_dict(), path)
    meta = '{"arch": "loki-tiny", "name": "mine", "trained": false}'
    (tmp_path / "ck.json").write_text(meta)
    out = lk.models.convert_to_safetensors(path)
    assert (tmp_path / "ck.json").read_text() == meta
    for p in (path, out):
        back = lk.models.load(p, device="cpu")
        assert (back.arch, back.name, back.trained) == ("loki-tiny", "mine", False)
    # an existing JSON that names another arch is refused, and nothing is written
    other = tmp_path / "other.safetensors"
    (tmp_path / "other.json").write_text('{"arch": "coca_ViT-L-14"}')
    with pytest.raises(ValueError, match=r"other.json names arch 'coca_ViT-L-14', not 'loki-tiny'"):
        lk.models.convert_to_safetensors(path, other)
    assert not other.exists()
    assert (tmp_path / "other.json").read_text() == '{"arch": "coca_ViT-L-14"}'
    # weights that do not fit the architecture are refused before anything is written
    wrong = tmp_path / "wrong.safetensors"
    with pytest.raises(ValueError, match="does not match the model architecture"):
        lk.models.convert_to_safetensors(path, wrong, arch="loki-small-data")
    assert not wrong.exists()
    assert not wrong.with_suffix(".json").exists()


def test_local_path_named_like_a_published_model(tiny, tmp_path, monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def fake(repo_id, filename, token):
        calls.append(repo_id)
        raise Stop

    monkeypatch.setattr(_hub, "download", fake)
    monkeypatch.chdir(tmp_path)
    tiny.save("omiclip")
    from pathlib import Path

    back = lk.models.load(Path("omiclip"), device="cpu")
    assert back.file_sha256 == _loading.file_sha256(tmp_path / "omiclip" / "model.safetensors")
    assert calls == []
    # the plain name keeps its published meaning, with a warning on how to load the directory
    local = re.escape(str((tmp_path / "omiclip").resolve()))
    with (
        pytest.warns(UserWarning, match=rf"{local} is ignored; .*Path\('omiclip'\)") as record,
        pytest.raises(Stop),
    ):
        lk.models.load("omiclip", device="cpu")
    assert calls == ["WangGuangyuLab/Loki"]
    # once per call, at the caller's line
    assert [w.filename for w in record if "names a model" in str(w.message)] == [__file__]


def test_checkpoints_torch_refuses_for_their_pickle_protocol_need_trust(tiny, tmp_path):
    """A legacy torch file pickled with protocol 4 is refused by the weights-only reader, like other globals."""
    path = tmp_path / "legacy.pt"
    torch.save(
        {"state_dict": tiny.model.state_dict()}, path, _use_new_zipfile_serialization=False, pickle_protocol=4
    )
    with pytest.raises(lk.models.UntrustedCheckpointError, match="trust_checkpoint=True"):
        lk.models.load(path, arch="loki-tiny", device="cpu")
    back = lk.models.load(path, arch="loki-tiny", device="cpu", trust_checkpoint=True)
    s = _sentences(2)
    np.testing.assert_array_equal(back.encode_texts(s), tiny.encode_texts(s))


def test_paths_are_local_and_names_are_models(tiny, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    tiny.save("~/mine")  # ~ is expanded, not a folder named '~'
    assert (tmp_path / "mine" / "model.safetensors").is_file()
    assert not (tmp_path / "~").exists()
    assert lk.models.load("~/mine", device="cpu").checkpoint_hash == tiny.checkpoint_hash
    with pytest.raises(FileNotFoundError, match="No such file or directory: 'loki-tiny'"):
        lk.models.load(Path("loki-tiny"), device="cpu")  # a Path is never taken as a name
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
        _loading.read_checkpoint(tmp_path / "absent.safetensors")
    tiny.save("loki-tiny")  # a saved model named like the architecture
    with pytest.warns(UserWarning, match="pass a Path"):
        fresh = lk.models.load("loki-tiny", device="cpu", seed=0)
    assert not fresh.trained  # the name means random weights of the architecture
    assert lk.models.load(Path("loki-tiny"), device="cpu").checkpoint_hash == tiny.checkpoint_hash


def test_convert_never_overwrites_weights_or_a_saved_models_metadata(tiny, tmp_path):
    path = tmp_path / "ck.pt"
    torch.save(tiny.model.state_dict(), path)
    small = lk.models.load("loki-small-data", device="cpu", seed=0)
    saved = small.save(tmp_path / "saved")
    before = (saved / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="exists; pass another out="):
        lk.models.convert_to_safetensors(path, saved / "model.safetensors", arch="loki-tiny")
    assert (saved / "model.safetensors").read_bytes() == before
    (saved / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"loki_model.json names arch 'loki-small-data', not 'loki-tiny'"):
        lk.models.convert_to_safetensors(path, saved / "model.safetensors", arch="loki-tiny")
    assert not (saved / "model.safetensors").exists()


def test_patch_size_is_saved_and_read_back(tiny, tmp_path):
    import json

    assert tiny.patch_um is None  # an architecture name: nothing known
    tiny.patch_um = 200
    tiny.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "loki_model.json").read_text())["patch_um"] == 200.0
    assert lk.models.load(tmp_path / "m", device="cpu").patch_um == 200.0

    meta = json.loads((tmp_path / "m" / "loki_model.json").read_text())
    del meta["patch_um"]  # as saved before the patch size was recorded
    (tmp_path / "m" / "loki_model.json").write_text(json.dumps(meta))
    assert lk.models.load(tmp_path / "m", device="cpu").patch_um is None


@pytest.mark.parametrize("value", [0, -5.0, float("nan"), "200", True])
def test_bad_patch_size_is_refused(tiny, value):
    with pytest.raises(ValueError, match="patch_um must be None or a positive number"):
        tiny.patch_um = value
    assert tiny.patch_um is None


def test_unknown_or_absent_devices_are_value_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', .*got 'gpu0'"):
        lk.models.load("loki-tiny", device="gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available here"):
        lk.models.load("loki-tiny", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        ValueError, match=r"device 'cuda:3': this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"
    ):
        lk.models.load("loki-tiny", device="cuda:3")
    assert lk.models.load("loki-tiny", device="cpu").device.type == "cpu"


def test_plain_clip_architecture_works():
    """A plain open_clip CLIP (text tower on the model itself), e.g. the OpenAI CLIP baselines."""
    m = lk.models.load("ViT-S-32", device="cpu", seed=0)  # the smallest CLIP config: 63 M parameters
    assert type(m.model).__name__ == "CLIP"
    assert m.embed_dim == 384
    assert "embed_dim=384" in repr(m)
    assert m.info()["embed_dim"] == 384
    assert m.context_length == 77
    img = m.encode_images(_images(3, size=m.image_size), batch_size=2)
    txt = m.encode_texts(_sentences(3), batch_size=2)
    assert img.shape == txt.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    with torch.inference_mode():
        ref = m.model.encode_text(m.tokenizer(_sentences(3)), normalize=True).numpy()
    np.testing.assert_allclose(txt, ref, atol=1e-5)


def test_architectures_with_a_hugging_face_text_tower_are_refused_up_front(monkeypatch):
    monkeypatch.setattr(_loading, "create_architecture", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ValueError, match=r"'ViT-B-16-SigLIP' encodes text with the Hugging Face .*Supported"):
        lk.models.load("ViT-B-16-SigLIP", device="cpu")
    with pytest.raises(ValueError, match="roberta-base"):
        lk.models.load("loki-tiny", arch="roberta-ViT-B-32", device="cpu")


def test_wrong_arch_is_refused_before_the_model_is_built(tiny, tmp_path, monkeypatch):
    tiny.save(tmp_path / "m")
    monkeypatch.setattr(_loading, "create_architecture", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ValueError, match="does not match the model architecture"):
        lk.models.load(tmp_path / "m" / "model.safetensors", arch="loki-small-data", device="cpu")


def test_checkpoint_hash_is_the_weights_content(tiny, tmp_path):
    """Identical weights record one hash: in memory, after save, from .pt, .safetensors and a saved dir."""
    before = tiny.checkpoint_hash
    assert tiny.file_sha256 is None
    assert "file_sha256" not in tiny.info()
    tiny.save(tmp_path / "m")
    tiny._checkpoint_hash = None  # recomputed from the weights, not taken from the file
    assert tiny.checkpoint_hash == before
    pt = tmp_path / "ck.pt"
    torch.save({"state_dict": tiny.model.state_dict()}, pt)
    converted = lk.models.convert_to_safetensors(pt, arch="loki-tiny")
    loaded = [lk.models.load(p, arch="loki-tiny", device="cpu") for p in (tmp_path / "m", pt, converted)]
    assert [m.checkpoint_hash for m in loaded] == [before] * 3
    assert [m.info()["checkpoint_hash"] for m in loaded] == [before] * 3
    # the files' own sha256 differ with the format, and are kept apart
    shas = [m.info()["file_sha256"] for m in loaded]
    assert shas == [_loading.file_sha256(p) for p in (tmp_path / "m" / "model.safetensors", pt, converted)]
    assert shas[1] != shas[0]
    assert tiny.file_sha256 == shas[0]
    # trained weights are no longer those of any file
    m = loaded[1]
    lk.models.finetune(m, _images(4, size=32), _sentences(4), epochs=1, batch_size=4, progress=False)
    assert m.file_sha256 is None
    assert "file_sha256" not in m.info()
    assert m.checkpoint_hash != before


def test_saving_bf16_weights_writes_float32(tmp_path):
    from safetensors.torch import load_file

    fast = lk.models.load("loki-tiny", device="cpu", seed=0, precision="bf16-weights")
    fast.save(tmp_path / "m")
    written = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {v.dtype for v in written.values() if v.is_floating_point()} == {torch.float32}
    back = lk.models.load(tmp_path / "m", device="cpu")
    upcast = {k: v.float() if v.is_floating_point() else v for k, v in fast.model.state_dict().items()}
    for k, v in back.model.state_dict().items():
        torch.testing.assert_close(v, upcast[k], rtol=0, atol=0)
    assert back.checkpoint_hash == fast.checkpoint_hash
    again = lk.models.load(tmp_path / "m", device="cpu", precision="bf16-weights")
    x = _images(3)
    np.testing.assert_array_equal(again.encode_images(x), fast.encode_images(x))


def test_seed_none_draws_fresh_entropy_without_the_global_rng(caplog):
    hashes = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(2):
            torch.manual_seed(7)  # the same global state for both calls
            state = torch.random.get_rng_state()
            with caplog.at_level("INFO", logger="loki"):
                hashes.append(lk.models.load("loki-tiny", device="cpu", seed=None).checkpoint_hash)
            assert torch.equal(torch.random.get_rng_state(), state)
    assert hashes[0] != hashes[1]
    seeds = [int(s) for s in re.findall(r"seed=(\d+)", caplog.text)]
    assert len(seeds) == 2
    assert lk.models.load("loki-tiny", device="cpu", seed=seeds[1]).checkpoint_hash == hashes[1]


def test_encode_images_computes_each_dask_chunk_once(tiny):
    import dask.array as da

    x = _images(23)
    computed = []

    def count(block, block_info=None):
        computed.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(x, chunks=(5, -1, -1, -1)).map_blocks(count, dtype=np.uint8)
    expected = tiny.encode_images(x, batch_size=4)
    for batch_size in (2, 4, 7, 64):
        computed.clear()
        np.testing.assert_allclose(tiny.encode_images(lazy, batch_size=batch_size), expected, atol=1e-6)
        assert sorted(computed) == list(range(5)), batch_size


def test_unreadable_safetensors_is_a_value_error_naming_the_file(tiny, tmp_path):
    """A truncated .safetensors file fails like any unreadable checkpoint, also when arch= is given."""
    from pathlib import Path

    raw = (tiny.save(tmp_path / "m") / "model.safetensors").read_bytes()
    (tmp_path / "half.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("half.safetensors", "empty.safetensors"):
        for kwargs in ({}, {"arch": "loki-tiny"}):
            with pytest.raises(
                ValueError, match=rf"{name} is not a readable torch or safetensors checkpoint"
            ):
                lk.models.load(Path(tmp_path / name), device="cpu", **kwargs)


@pytest.mark.parametrize("text", ['["lr", 0.001]', '{"lr": 0.001, "epochs": 3', '{"arch": 5}', "\udcff"])
def test_a_json_that_is_not_lokis_metadata_is_ignored_with_a_warning(tiny, tmp_path, caplog, text):
    path = tmp_path / "run.pt"
    torch.save({"state_dict": tiny.model.state_dict()}, path)
    (tmp_path / "run.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with caplog.at_level("WARNING", logger="loki"):
        back = lk.models.load(path, arch="loki-tiny", device="cpu")
    assert back.checkpoint_hash == tiny.checkpoint_hash
    assert (back.name, back.trained, back.patch_um) == ("run", True, None)
    assert f"ignoring {tmp_path / 'run.json'}" in caplog.text
    # without arch=, a safetensors file's own metadata names it
    out = lk.models.convert_to_safetensors(path, tmp_path / "w.safetensors", arch="loki-tiny")
    (tmp_path / "w.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert lk.models.load(out, device="cpu").arch == "loki-tiny"


def test_lokis_metadata_next_to_a_checkpoint_is_used_and_checked(tiny, tmp_path):
    path = tmp_path / "run.pt"
    torch.save(tiny.model.state_dict(), path)
    meta = tmp_path / "run.json"
    meta.write_text('{"arch": "loki-tiny", "name": "mine", "trained": false, "patch_um": 200}')
    back = lk.models.load(path, device="cpu")
    assert (back.arch, back.name, back.trained, back.patch_um) == ("loki-tiny", "mine", False, 200.0)
    for bad, match in [
        ('"patch_um": -1', "patch_um must be"),
        ('"trained": "no"', "'trained' must be a bool"),
    ]:
        meta.write_text(f'{{"arch": "loki-tiny", {bad}}}')
        with pytest.raises(ValueError, match=rf"run\.json: {match}"):
            lk.models.load(path, arch="loki-tiny", device="cpu")
    # convert_to_safetensors never writes over a JSON it cannot read
    meta.unlink()
    (tmp_path / "out.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"out\.json exists and is not valid JSON"):
        lk.models.convert_to_safetensors(path, tmp_path / "out.safetensors", arch="loki-tiny")
    assert not (tmp_path / "out.safetensors").exists()
    assert (tmp_path / "out.json").read_text() == "{not json"


def _hub_error(kind: str):
    from types import SimpleNamespace

    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    def response(status):
        return SimpleNamespace(status_code=status, headers={}, request=None)

    if kind == "offline":
        err = LocalEntryNotFoundError("cannot find the requested files in the local cache")
        err.__cause__ = OfflineModeIsEnabled("offline mode is enabled")
        return err
    if kind == "unreachable":
        err = LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
        err.__cause__ = ConnectionError("[Errno -2] Name or service not known")
        return err
    if kind == "gated":
        return GatedRepoError("401 Client Error: cannot access gated repo", response=response(401))
    if kind == "unknown":
        return RepositoryNotFoundError("401 Client Error: Repository Not Found", response=response(401))
    return HfHubHTTPError(f"{kind} Client Error", response=response(int(kind)))


@pytest.mark.parametrize(
    ("kind", "err", "match"),
    [
        ("unreachable", ConnectionError, r"could not be reached.*local path.*HF_HUB_OFFLINE=1"),
        ("offline", ConnectionError, r"HF_HUB_OFFLINE is set and 'checkpoint.pt'.*not in the local.*cache"),
        (
            "gated",
            PermissionError,
            r"no access to 'checkpoint.pt'.*HTTP 401\): it is gated or private.*token=",
        ),
        ("unknown", PermissionError, r"HTTP 401\): it does not exist \(check the name\) or is private"),
        ("403", PermissionError, r"HTTP 403.*huggingface.co/WangGuangyuLab/Loki.*token="),
    ],
)
def test_hub_errors_say_what_to_do(monkeypatch, kind, err, match):
    """huggingface_hub's offline and access errors become ones that say how to load the model anyway."""
    import huggingface_hub

    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        raise _hub_error(kind)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(_hub, "host_resolves", lambda: True)  # as on a machine with DNS
    with pytest.raises(err, match=match) as info:
        lk.models.load("omiclip", token="hf_x", device="cpu")
    assert calls == [
        {
            "repo_id": "WangGuangyuLab/Loki",
            "filename": "checkpoint.pt",
            "token": "hf_x",
            "local_files_only": False,
        }
    ]
    assert "lk.models.load(Path('.../checkpoint.pt'))" in str(info.value)
    assert isinstance(info.value.__cause__, type(_hub_error(kind)))


def test_other_hub_errors_pass_unchanged(monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    def fake(**kwargs):
        raise _hub_error("500")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, **kw: ["checkpoint.pt"])
    monkeypatch.setattr(_hub, "host_resolves", lambda: True)
    with pytest.raises(HfHubHTTPError, match="500 Client Error"):
        lk.models.load("hf-hub:org/repo", device="cpu")


def _no_dns(monkeypatch):
    import socket

    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_without_dns_the_hub_is_skipped_for_the_local_cache(monkeypatch, tmp_path):
    """No host name resolution: huggingface_hub is asked for the cached file only (no ~25 s of retries)."""
    import huggingface_hub

    calls, cached = [], tmp_path / "checkpoint.pt"

    def fake(**kwargs):
        calls.append(kwargs)
        return str(cached)

    _no_dns(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    assert _hub.host_resolves() is False
    assert _hub.download("org/repo", "checkpoint.pt", None) == cached
    assert calls == [
        {"repo_id": "org/repo", "filename": "checkpoint.pt", "token": None, "local_files_only": True}
    ]


def test_without_dns_a_file_not_cached_is_named(monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    def fake(**kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    _no_dns(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(
        ConnectionError, match=r"host name does not resolve.*'checkpoint.pt'.*not in the local"
    ):
        lk.models.load("hf-hub:org/repo", device="cpu")


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_behind_a_proxy_the_hub_is_asked_even_without_local_dns(monkeypatch, variable):
    _no_dns(monkeypatch)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "http://proxy.example:3128")
    assert _hub.host_resolves() is True
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert _hub.host_resolves() is False


def test_the_hub_host_is_not_looked_up_in_offline_mode(monkeypatch):
    looked_up = []
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: looked_up.append(a))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert _hub.host_resolves() is True
    assert looked_up == []


def test_refusing_an_unsafe_pickle_names_the_blocked_global_without_torchs_advice(tiny, tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny.model.state_dict(), "x": Evil()}, evil)
    args = tmp_path / "args.pt"
    torch.save({"state_dict": tiny.model.state_dict(), "args": argparse.Namespace(lr=1.0)}, args)
    for path, cause in [
        (evil, r"Trying to load unsupported GLOBAL \w+\.system whose module \w+ is blocked\."),
        (args, r"Unsupported global: GLOBAL argparse\.Namespace was not an allowed global by default\."),
    ]:
        with pytest.raises(
            lk.models.UntrustedCheckpointError, match=rf"\(UnpicklingError: {cause}\)"
        ) as info:
            lk.models.load(path, arch="loki-tiny", device="cpu")
        text = str(info.value)
        for advice in ("weights_only` set to `False", "Re-running", "add_safe_globals", "PyTorch 2.6"):
            assert advice not in text


def test_long_error_causes_are_cut_between_words():
    line = _checkpoint_files.first_line(ValueError("abcdefghijk " * 60), limit=100)
    assert line.startswith("ValueError: abcdefghijk ")
    assert line.endswith(" ...")
    assert set(line.removeprefix("ValueError: ").removesuffix(" ...").split()) == {"abcdefghijk"}
    assert len(line) <= len("ValueError: ") + 104


def test_docs_load_the_published_checkpoint_with_trust():
    """Every documented call that loads the published (pickled) checkpoint passes trust_checkpoint=True."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    docs = [root / "README.md", *sorted((root / "docs" / "tutorials").glob("*.md"))]
    if not docs[0].is_file():
        pytest.skip("not run from a source checkout")
    calls = [
        (doc.name, call)
        for doc in docs
        for call in re.findall(r"lk\.models\.load\(\"omiclip\"[^)]*\)", doc.read_text())
    ]
    assert calls
    assert [c for c in calls if "trust_checkpoint=True" not in c[1]] == []


def test_an_unknown_name_lists_lokis_architectures_and_suggests_the_closest():
    with pytest.raises(
        FileNotFoundError, match=r"loki's: loki-tiny, loki-small-data.*Did you mean 'loki-tiny'\?"
    ):
        lk.models.load("loki-tinyy", device="cpu")


def test_an_arch_other_than_the_recorded_one_warns(tmp_path):
    """Same shapes do not mean the same model: quickgelu and gelu ViT-B-32 load each other's weights."""
    model = lk.models.load("ViT-B-32-quickgelu", device="cpu", seed=0)
    model.save(tmp_path / "saved")
    with pytest.warns(lk.LokiWarning, match=r"records arch 'ViT-B-32-quickgelu', but arch='ViT-B-32'"):
        back = lk.models.load(tmp_path / "saved", arch="ViT-B-32", device="cpu")
    assert back.arch == "ViT-B-32"


def test_a_saved_weights_file_loads_alike_on_its_own(tiny, tmp_path):
    """Moved or uploaded without loki_model.json, model.safetensors keeps name, trained and patch_um."""
    tiny.patch_um = 200.0
    tiny.save(tmp_path / "saved")
    alone = tmp_path / "elsewhere" / "weights.safetensors"
    alone.parent.mkdir()
    (tmp_path / "saved" / "model.safetensors").rename(alone)
    back = lk.models.load(alone, device="cpu")
    assert (back.arch, back.name, back.trained, back.patch_um) == ("loki-tiny", "loki-tiny", False, 200.0)
    assert back.checkpoint_hash == tiny.checkpoint_hash


def test_training_runs_are_saved_and_read_back(tmp_path):
    import json

    imgs, sents = _images(8, size=32), _sentences(8)
    model = lk.models.load("loki-tiny", device="cpu", seed=0)
    model, hist = lk.models.finetune(model, imgs, sents, epochs=2, batch_size=4, seed=3, progress=False)
    (run,) = model.training_runs
    model.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "loki_model.json").read_text())
    assert meta["training_runs"] == [run]
    assert run["images_sha256"] == hist["images_sha256"]
    alone = tmp_path / "alone.safetensors"  # the header carries the record too
    (tmp_path / "saved" / "model.safetensors").rename(alone)
    for path in (tmp_path / "saved", alone):
        if path == tmp_path / "saved":
            model.save(path)
        back = lk.models.load(path, device="cpu")
        assert back.training_runs == [run]
        assert back.checkpoint_hash == model.checkpoint_hash
    # a file saved before runs were recorded (or the published weights): none
    del meta["training_runs"]
    (tmp_path / "saved" / "loki_model.json").write_text(json.dumps(meta))
    assert lk.models.load(tmp_path / "saved", device="cpu").training_runs == []


@pytest.mark.parametrize("runs", ['{"epochs": 2}', '["epochs"]'])
def test_bad_training_runs_in_the_metadata_are_refused(tiny, tmp_path, runs):
    import json

    tiny.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "loki_model.json").read_text())
    meta["training_runs"] = json.loads(runs)
    (tmp_path / "m" / "loki_model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"loki_model.json: 'training_runs' must be a list"):
        lk.models.load(tmp_path / "m", device="cpu")


def _registered_config(monkeypatch, arch, change):
    """Change the config open_clip builds ``arch`` from, as a later loki version could."""
    import copy

    import open_clip.factory

    config = copy.deepcopy(open_clip.factory._MODEL_CONFIGS[arch])
    change(config)
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, arch, config)


def test_the_config_is_saved_and_a_changed_one_warns_or_refuses(tiny, tmp_path, monkeypatch):
    import json
    import warnings

    import open_clip

    tiny.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "loki_model.json").read_text())["config"]
    assert saved == tiny.config == open_clip.get_model_config("loki-tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same config: no warning
        assert lk.models.load(tmp_path / "m", device="cpu").config == saved
    torch.save(tiny.model.state_dict(), tmp_path / "bare.pt")  # records no config, as published weights

    # a shape-preserving change (the activation): loaded, with a warning naming the field
    _registered_config(monkeypatch, "loki-tiny", lambda c: c.update(quick_gelu=True))
    with pytest.warns(lk.LokiWarning, match=r"another config of 'loki-tiny'.*quick_gelu: '<absent>' -> True"):
        back = lk.models.load(tmp_path / "m" / "model.safetensors", device="cpu")
    assert back.config["quick_gelu"] is True  # the config it was built from now
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no record, no comparison
        lk.models.load(tmp_path / "bare.pt", arch="loki-tiny", device="cpu")

    # a change of shapes: refused, naming the fields as well as the keys
    _registered_config(monkeypatch, "loki-tiny", lambda c: c["text_cfg"].update(context_length=64))
    with pytest.raises(ValueError, match=r"keys with another shape.*text_cfg.context_length: 76 -> 64"):
        lk.models.load(tmp_path / "m", device="cpu")


def test_the_config_of_a_small_data_model_is_saved(tmp_path):
    import json

    model = lk.models.load("loki-small-data", device="cpu", seed=0)
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "loki_model.json").read_text())["config"]
    assert saved["channels"] == [32, 64, 128, 128]
    assert lk.models.load(tmp_path / "m", device="cpu").config == saved


def _other_tokenizer(monkeypatch, **kwargs):
    """Make the models built from now on tokenise with another open_clip tokenizer, as a later one could."""
    import open_clip

    monkeypatch.setattr(
        open_clip, "get_tokenizer", lambda name, **kw: open_clip.SimpleTokenizer(context_length=76, **kwargs)
    )


def test_the_tokenizer_is_saved_and_a_changed_one_warns(tiny, tmp_path, monkeypatch):
    import json
    import warnings

    tiny.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "loki_model.json").read_text())["tokenizer"]
    assert saved == tiny.tokenizer.fingerprint()
    assert (saved["kind"], saved["vocab_size"], saved["clean"]) == ("SimpleTokenizer", 49408, "lower")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same tokenizer: no warning
        assert lk.models.load(tmp_path / "m", device="cpu").trained_tokenizer == saved

    _other_tokenizer(monkeypatch, additional_special_tokens=["<gene>"])
    for path in (tmp_path / "m", tmp_path / "m" / "model.safetensors"):  # the header records it too
        with pytest.warns(
            lk.LokiWarning,
            match=r"trained with another tokenizer .*'loki-tiny' \(vocab_size: 49408 -> 49409; vocab_sha256: "
            r"[0-9a-f]{12}\.\.\. -> [0-9a-f]{12}\.\.\.; saved with open_clip .*text embeddings can be wrong",
        ):
            back = lk.models.load(path, device="cpu")
    # saved again, the model still names the tokenizer its weights learned: the next load warns too
    back.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "loki_model.json").read_text())["tokenizer"] == saved
    with pytest.warns(lk.LokiWarning, match="another tokenizer"):
        lk.models.load(tmp_path / "again", device="cpu")
    # fine-tuned with the tokenizer in use, the weights have learned that one
    back, hist = lk.models.finetune(
        back, _images(8, size=32), _sentences(8), epochs=1, batch_size=4, progress=False
    )
    assert back.trained_tokenizer == back.tokenizer.fingerprint() == hist["tokenizer"] != saved
    assert back.training_runs[-1]["tokenizer"]["vocab_size"] == 49409
    back.save(tmp_path / "tuned")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lk.models.load(tmp_path / "tuned", device="cpu")


def test_models_saved_without_a_tokenizer_fingerprint_still_load(tiny, tmp_path, monkeypatch):
    """Files from before the fingerprint was recorded load without a comparison, and record one when saved."""
    import json
    import warnings

    from safetensors.torch import save_file

    tiny.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "loki_model.json").read_text())
    del meta["tokenizer"]
    (tmp_path / "m" / "loki_model.json").write_text(json.dumps(meta))
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    header = {"arch": "loki-tiny", "loki_model.json": json.dumps(meta)}
    save_file(state, str(tmp_path / "old.safetensors"), metadata=header)
    _other_tokenizer(monkeypatch, clean="whitespace")
    for path in (tmp_path / "m", tmp_path / "old.safetensors"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to compare with
            back = lk.models.load(path, device="cpu")
        assert back.trained_tokenizer is None
        assert back.checkpoint_hash == tiny.checkpoint_hash
    back.save(tmp_path / "resaved")  # the tokenizer in use is recorded from now on
    resaved = json.loads((tmp_path / "resaved" / "loki_model.json").read_text())["tokenizer"]
    assert resaved["clean"] == "whitespace"


def test_a_tokenizer_entry_that_is_not_an_object_is_refused(tiny, tmp_path):
    import json

    tiny.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "loki_model.json").read_text())
    meta["tokenizer"] = "SimpleTokenizer"
    (tmp_path / "m" / "loki_model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"loki_model.json: 'tokenizer' must be a dict or null"):
        lk.models.load(tmp_path / "m", device="cpu")


def test_a_checkpoint_of_another_architecture_names_the_one_it_fits(tiny, tmp_path):
    """No arch recorded: the default (coca_ViT-L-14) is tried, and the error says which one fits."""
    bare = tmp_path / "bare.pt"
    torch.save(tiny.model.state_dict(), bare)
    with pytest.raises(
        ValueError,
        match=r"does not match the model architecture 'coca_ViT-L-14': .*Its shapes fit the config of "
        r"'loki-tiny': pass arch='loki-tiny'\.",
    ):
        lk.models.load(bare, device="cpu")
    tiny.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"architecture 'loki-small-data': .*pass arch='loki-tiny'"):
        lk.models.load(tmp_path / "m", arch="loki-small-data", device="cpu")
    small = lk.models.load("loki-small-data", device="cpu", seed=0)
    torch.save(small.model.state_dict(), tmp_path / "small.pt")
    with pytest.raises(ValueError, match=r"fit the config of 'loki-small-data': pass arch='loki-small-data'"):
        lk.models.load(tmp_path / "small.pt", arch="loki-tiny", device="cpu")
    # sizes no config has: said so
    state = dict(tiny.model.state_dict())
    state["text.token_embedding.weight"] = torch.zeros(1000, 64)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"fit none of open_clip's known configs .*Pass the right arch="):
        lk.models.load(tmp_path / "odd.pt", arch="loki-tiny", device="cpu")


@pytest.mark.parametrize(
    ("arch", "fits"),
    [
        ("coca_ViT-L-14", ["coca_ViT-L-14"]),  # the published OmiCLIP
        ("ViT-B-32", ["ViT-B-32", "ViT-B-32-quickgelu"]),  # same shapes, other activation
        ("RN50", ["RN50", "RN50-quickgelu"]),
        ("loki-tiny", ["loki-tiny"]),
    ],
)
def test_architectures_are_told_apart_by_their_shapes_quickly(arch, fits):
    import time

    shapes = _architectures.architecture_shapes(arch)  # as a checkpoint's state dict would have them
    _architecture_fit.fitting_architectures(shapes)  # first call imports what it needs
    start = time.perf_counter()
    assert _architecture_fit.fitting_architectures(shapes) == fits
    assert time.perf_counter() - start < 1.0  # reads configs: builds no model (~0.05 s)
    hint = _architecture_fit.architecture_hint(
        shapes, "loki-tiny" if arch != "loki-tiny" else "coca_ViT-L-14"
    )
    assert f"pass arch={fits[0]!r}" in hint
    assert ("can compute differently" in hint) == (len(fits) > 1)


def test_file_sha256_reads_an_unchanged_file_once_and_a_changed_one_again(tmp_path, monkeypatch):
    import builtins
    import hashlib
    import os
    from pathlib import Path

    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    stamp = 1_700_000_000_000_000_000
    os.utime(path, ns=(stamp, stamp))
    reads = []
    real_open = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        if Path(file).name == path.name and "r" in mode:
            reads.append(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(_loading, "open", spy, raising=False)  # the module's open: hashing reads only
    first = _loading.file_sha256(path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(reads) == 1
    assert _loading.file_sha256(str(path)) == first  # same file: remembered, not read again
    assert _loading.file_sha256(tmp_path / "." / "weights.bin") == first  # the resolved path
    assert len(reads) == 1
    # rewritten in place (same inode and size) with another content and a later modification time
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert _loading.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(reads) == 2
    # rewritten in place keeping size and modification time (cp -p, rsync -t --inplace, touch -r)
    path.write_bytes(b"e" * 1000)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert _loading.file_sha256(path) == hashlib.sha256(b"e" * 1000).hexdigest()
    assert len(reads) == 3
    # replaced by another file (another inode), even with the old size and time
    other = tmp_path / "other.bin"
    other.write_bytes(b"c" * 1000)
    os.utime(other, ns=(stamp + 10**9, stamp + 10**9))
    os.replace(other, path)
    assert _loading.file_sha256(path) == hashlib.sha256(b"c" * 1000).hexdigest()
    assert len(reads) == 4
    # a file modified just now is read on every call: a same-size rewrite could keep its time
    path.write_bytes(b"d" * 1000)
    assert _loading.file_sha256(path) == _loading.file_sha256(path) == hashlib.sha256(b"d" * 1000).hexdigest()
    assert len(reads) == 6


def test_loading_the_same_file_again_does_not_hash_it_again(tiny, tmp_path, monkeypatch):
    import os

    tiny.save(tmp_path / "m")
    stamp = 1_700_000_000_000_000_000  # written long ago: a file just written is hashed every time
    os.utime(tmp_path / "m" / "model.safetensors", ns=(stamp, stamp))
    hashed = []
    real = _loading._hash_file
    monkeypatch.setattr(_loading, "_hash_file", lambda path, chunk: hashed.append(path) or real(path, chunk))
    _loading._SHA256_MEMO.clear()
    a = lk.models.load(tmp_path / "m", device="cpu")
    assert len(hashed) == 1
    b = lk.models.load(tmp_path / "m", device="cpu")
    assert len(hashed) == 1  # the unchanged file is not read again
    assert (
        a.file_sha256 == b.file_sha256 == _loading._hash_file(tmp_path / "m" / "model.safetensors", 1 << 20)
    )
