"""A user's first load of published-style weights: downloaded folders, stand-in files, memory, inputs.

The published OmiCLIP (``checkpoint.pt`` of ``WangGuangyuLab/Loki``, ~7 GB with its optimizer state)
cannot be fetched here; these tests write files in the same layouts from ``loki-tiny``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import loki as lk


def _training_checkpoint(model, path: Path, *, legacy: bool = False) -> Path:
    """An open_clip training checkpoint: ``module.`` keys, optimizer state and the run's arguments."""
    state = model.model.state_dict()
    torch.save(
        {
            "epoch": 10,
            "name": "omiclip-run",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {
                "state": {i: {"exp_avg": torch.zeros_like(v)} for i, v in enumerate(state.values())}
            },
            "args": argparse.Namespace(model="loki-tiny"),
        },
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    return path


def _probe(model):
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    return model.encode_images(images), model.encode_texts(["Apoe Gfap Snap25", "Mbp Plp1"])


@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoints_are_memory_mapped_so_optimizer_state_is_never_read(tiny, tmp_path, monkeypatch, legacy):
    path = _training_checkpoint(tiny, tmp_path / "checkpoint.pt", legacy=legacy)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = lk.models.load(path, arch="loki-tiny", device="cpu", trust_checkpoint=True)
    # the safe read (refused: argparse.Namespace) and the trusted one both map the zip archive;
    # torch.save's legacy format cannot be mapped and is read as before
    assert [bool(mmap) for mmap in calls] == [not legacy] * 2
    assert loaded.checkpoint_hash == tiny.checkpoint_hash
    for ours, ref in zip(_probe(loaded), _probe(tiny), strict=True):
        np.testing.assert_array_equal(ours, ref)


def test_a_downloaded_snapshot_folder_loads_through_its_weights_file(tiny, tmp_path, caplog):
    snapshot = tmp_path / "Loki"  # as `hf download WangGuangyuLab/Loki --local-dir Loki` lays it out
    snapshot.mkdir()
    _training_checkpoint(tiny, snapshot / "checkpoint.pt")
    (snapshot / "README.md").write_text("# Loki")
    (snapshot / ".gitattributes").write_text("*.pt filter=lfs")
    with pytest.raises(lk.models.UntrustedCheckpointError, match="checkpoint.pt"):
        lk.models.load(snapshot, arch="loki-tiny", device="cpu")
    loaded = lk.models.load(str(snapshot), arch="loki-tiny", device="cpu", trust_checkpoint=True)
    assert loaded.checkpoint_hash == tiny.checkpoint_hash
    # converted in place, the folder loads through the safetensors copy: no unpickling, no trust
    out = lk.models.convert_to_safetensors(snapshot, arch="loki-tiny", trust_checkpoint=True)
    assert out == snapshot / "checkpoint.safetensors"
    with caplog.at_level("INFO", logger="loki"):
        again = lk.models.load(snapshot, device="cpu")
    assert "checkpoint.safetensors" in caplog.text
    assert again.arch == "loki-tiny"
    assert again.checkpoint_hash == tiny.checkpoint_hash


def test_a_folder_with_several_or_no_weights_files_says_which_to_pass(tiny, tmp_path):
    runs = tmp_path / "checkpoints"
    runs.mkdir()
    for epoch in (1, 2):
        torch.save({"state_dict": tiny.model.state_dict()}, runs / f"epoch_{epoch}.pt")
    with pytest.raises(ValueError, match=r"holds 2 weights files \(epoch_1.pt, epoch_2.pt\); pass the one"):
        lk.models.load(runs, arch="loki-tiny", device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"holds no weights file .*it holds notes.txt"):
        lk.models.load(empty, device="cpu")
    # the root of a Hugging Face cache entry: the file sits in snapshots/<revision>/
    cache = tmp_path / "models--WangGuangyuLab--Loki"
    (cache / "snapshots" / "abc123").mkdir(parents=True)
    (cache / "refs").mkdir()
    torch.save({"state_dict": tiny.model.state_dict()}, cache / "snapshots" / "abc123" / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match=r"deeper down: .*snapshots/abc123/checkpoint.pt"):
        lk.models.load(cache, device="cpu")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 7000000000\n",
            r"not a readable .*: it is a Git LFS pointer \(\d+ bytes\), not the weights.*git lfs pull",
        ),
        (
            b"<!DOCTYPE html><html><body>Access to model is restricted</body></html>",
            r"not a readable .*: it is an HTML or XML page \(\d+ bytes\)",
        ),
        (b"", r"is not a readable torch or safetensors checkpoint \(0 bytes; truncated download"),
    ],
)
@pytest.mark.parametrize("name", ["checkpoint.pt", "model.safetensors"])
def test_files_standing_in_for_the_weights_are_named(tmp_path, content, match, name):
    path = tmp_path / name
    path.write_bytes(content)
    for trust in (False, True):
        with pytest.raises(ValueError, match=match):
            lk.models.load(path, arch="loki-tiny", device="cpu", trust_checkpoint=trust)


def test_encode_images_refuses_a_lone_or_mixed_pil_input_clearly(tiny):
    from PIL import Image

    patch = np.zeros((40, 40, 3), np.uint8)
    image = Image.fromarray(patch)
    with pytest.raises(TypeError, match=r"one PIL image; pass a list of PIL images \(\[image\]\)"):
        tiny.encode_images(image)
    with pytest.raises(TypeError, match=r"images\[1\] is ndarray, but images\[0\] is a PIL image"):
        tiny.encode_images([image, patch])
    assert tiny.encode_images([image, image.convert("L").resize((60, 30))]).shape == (2, tiny.embed_dim)


@pytest.mark.parametrize(
    ("dtype", "match"),
    [
        (np.float32, r"got dtype float32; convert floats in \[0, 1\] with"),
        (np.int64, r"images.astype\(np.uint8\)"),
    ],
)
def test_images_of_another_dtype_say_how_to_convert(tiny, dtype, match):
    images = np.zeros((2, 40, 40, 3), dtype=dtype)
    with pytest.raises(ValueError, match=match):
        tiny.encode_images(images)
    with pytest.raises(ValueError, match=match):
        tiny.encode_images(torch.from_numpy(images))


def test_empty_inputs_and_long_sentences(tiny):
    assert tiny.encode_images([]).shape == (0, tiny.embed_dim)
    assert tiny.encode_images(np.empty((0, 40, 40, 3), np.uint8)).shape == (0, tiny.embed_dim)
    assert tiny.encode_texts([]).shape == (0, tiny.embed_dim)
    long = " ".join(f"Gene{i}" for i in range(5000))
    emb, counts = tiny.encode_texts([long, long], return_word_counts=True)
    assert counts[0, 1] == 5000
    assert 0 < counts[0, 0] < 76
    # equal up to float rounding (CPU matrix kernels may sum rows of one batch in another order)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)
    np.testing.assert_array_equal(emb, tiny.encode_texts([long, long]))  # same call, same result


def test_read_checkpoint_returns_tensors_of_its_own(tiny, tmp_path):
    """The file is memory-mapped while read; what read_checkpoint returns no longer depends on it."""
    path = _training_checkpoint(tiny, tmp_path / "checkpoint.pt")
    state = lk.models.read_checkpoint(path, trust_checkpoint=True)
    path.write_bytes(bytes(path.stat().st_size))  # overwritten in place: mapped pages would read zeros
    expected = tiny.model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in state.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
