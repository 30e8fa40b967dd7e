"""``lk.models.load("hf-hub:org/repo")`` without a file: the published layout, then open_clip's.

No network here: the Hub is faked (``list_repo_files`` / ``hf_hub_download``), or a local Hugging Face
cache folder is laid out by hand and read by the real huggingface_hub in offline mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import loki as lk
from loki.models import _hub

OPEN_CLIP_FILES = [
    "README.md",
    "open_clip_config.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
]


def _open_clip_repo(model, folder: Path, files=OPEN_CLIP_FILES) -> Path:
    """A repository as ``open_clip.push_to_hf_hub`` lays it out: bare weights, and the config as JSON."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.model.state_dict().items()}
    for name in files:
        if name.endswith(".safetensors"):
            save_file(state, str(folder / name))  # no loki metadata: the arch is not recorded
        elif name.endswith(".bin"):
            torch.save(state, folder / name)
        elif name == "open_clip_config.json":
            config = {"model_cfg": open_clip.get_model_config(model.arch), "preprocess_cfg": {}}
            (folder / name).write_text(json.dumps(config))
        else:
            (folder / name).write_text("# a model")
    return folder


def _fake_hub(monkeypatch, folder: Path, files: list[str]):
    """The Hub holding ``files`` of ``folder``; returns the list of the files downloaded."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    calls = []

    def download(repo_id, filename, token, local_files_only):
        calls.append(filename)
        if filename not in files:
            raise EntryNotFoundError(f"404: {filename} not in {repo_id}")
        return str(folder / filename)

    monkeypatch.setattr(_hub, "host_resolves", lambda: True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, token=None: list(files))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def _probe(model):
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    return model.encode_images(images), model.encode_texts(["Apoe Gfap Snap25", "Mbp Plp1"])


def test_an_open_clip_repo_loads_its_safetensors_with_the_arch_of_its_config(tiny, tmp_path, monkeypatch):
    folder = _open_clip_repo(tiny, tmp_path / "repo")
    calls = _fake_hub(monkeypatch, folder, OPEN_CLIP_FILES)
    model = lk.models.load("hf-hub:org/repo", device="cpu")  # no arch=: from open_clip_config.json
    assert calls == ["open_clip_model.safetensors", "open_clip_config.json"]  # safetensors: no unpickling
    assert model.arch == "loki-tiny"
    assert model.checkpoint_hash == tiny.checkpoint_hash
    for ours, ref in zip(_probe(model), _probe(tiny), strict=True):
        np.testing.assert_array_equal(ours, ref)


def test_the_published_layout_comes_first_and_arch_wins_over_the_config(tiny, tmp_path, monkeypatch):
    files = ["checkpoint.pt", *OPEN_CLIP_FILES]
    folder = _open_clip_repo(tiny, tmp_path / "repo")
    torch.save({"state_dict": tiny.model.state_dict()}, folder / "checkpoint.pt")
    calls = _fake_hub(monkeypatch, folder, files)
    assert lk.models.load("hf-hub:org/repo", arch="loki-tiny", device="cpu").arch == "loki-tiny"
    assert calls == ["checkpoint.pt"]
    # only the .bin: read through it; an explicit arch= is used and the config is not fetched
    calls = _fake_hub(monkeypatch, folder, ["open_clip_config.json", "open_clip_pytorch_model.bin"])
    assert lk.models.load("hf-hub:org/repo", arch="loki-tiny", device="cpu").arch == "loki-tiny"
    assert calls == ["open_clip_pytorch_model.bin"]


def test_a_config_that_is_no_known_architecture_is_not_used(tiny, tmp_path, monkeypatch):
    folder = _open_clip_repo(tiny, tmp_path / "repo")
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["layers"] = 7  # no registered config is this one
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    _fake_hub(monkeypatch, folder, OPEN_CLIP_FILES)
    # the default architecture is tried, and its error names the one the weights fit
    with pytest.raises(ValueError, match=r"architecture 'coca_ViT-L-14'.*pass arch='loki-tiny'"):
        lk.models.load("hf-hub:org/repo", device="cpu")


def test_a_repo_without_a_default_weights_file_lists_its_files(tmp_path, monkeypatch):
    files = ["README.md", "config.json", "weights/epoch_3.pt"]
    calls = _fake_hub(monkeypatch, tmp_path, files)
    with pytest.raises(
        FileNotFoundError,
        match=r"'org/repo' holds none of the weights files loaded by default \(checkpoint.pt, "
        r"open_clip_model.safetensors, open_clip_pytorch_model.bin\); files listed by the Hub: README.md, "
        r"config.json, weights/epoch_3.pt\. Name the file to load: "
        r"lk.models.load\('hf-hub:org/repo/weights/epoch_3.pt'\)",
    ):
        lk.models.load("hf-hub:org/repo", device="cpu")
    assert calls == []  # nothing downloaded


def _hf_cache(monkeypatch, root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """A local Hugging Face cache holding ``files`` of ``repo_id`` (main revision), and offline mode."""
    from huggingface_hub.file_download import repo_folder_name

    repo = root / repo_folder_name(repo_id=repo_id, repo_type="model")
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(source.read_bytes())
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(root))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return snapshot


def test_offline_an_open_clip_repo_loads_from_the_local_cache(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    source = _open_clip_repo(tiny, tmp_path / "src", ["open_clip_config.json", "open_clip_pytorch_model.bin"])
    _hf_cache(monkeypatch, tmp_path / "hub", "org/repo", {p.name: p for p in source.iterdir()})
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: pytest.fail("Hub asked"))
    model = lk.models.load("hf-hub:org/repo", device="cpu")
    assert model.arch == "loki-tiny"
    assert model.checkpoint_hash == tiny.checkpoint_hash


def test_offline_a_cached_repo_without_a_default_weights_file_lists_the_snapshot(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("")
    snapshot = _hf_cache(monkeypatch, tmp_path / "hub", "org/repo", {"notes.txt": tmp_path / "notes.txt"})
    with pytest.raises(
        FileNotFoundError, match=r"listed by the local Hugging Face cache \(.*\): notes.txt"
    ) as info:
        lk.models.load("hf-hub:org/repo", device="cpu")
    assert str(snapshot) in str(info.value)
    assert "lk.models.load('hf-hub:org/repo/<file>')" in str(info.value)


def test_a_repo_not_in_the_cache_still_names_the_published_file(tmp_path, monkeypatch):
    """Nothing lists the files (offline, not cached): checkpoint.pt is asked for, as before."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConnectionError, match=r"HF_HUB_OFFLINE is set and 'checkpoint.pt' .*not in the local"
    ):
        lk.models.load("hf-hub:org/repo", device="cpu")
