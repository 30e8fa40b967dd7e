from __future__ import annotations

import hashlib
import re
import shutil
import tarfile

import pooch
import pytest
from tests.conftest import shared_path

import loki as lk
from loki.datasets import _registry


def test_registry_is_well_formed():
    samples = _registry.VISIUM_SAMPLES
    assert len(samples) >= 10
    reg = _registry.registry()
    assert len(reg) == 3 * len(samples)
    all_hashes = [h for hashes in samples.values() for h in hashes]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in all_hashes)
    for sample, hashes in samples.items():
        assert re.fullmatch(r"[A-Za-z0-9_]+", sample)
        # matrix and spatial archive are sample specific (images may be shared by targeted/parent runs)
        assert hashes[0] != hashes[1]
        for file, digest in zip(_registry.FILES, hashes, strict=True):
            assert reg[f"{sample}/{sample}_{file}"] == f"sha256:{digest}"
    matrix_hashes = [h[0] for h in samples.values()]
    assert len(set(matrix_hashes)) == len(matrix_hashes)
    fetcher = _registry._fetcher("/nonexistent-never-created")
    url = fetcher.get_url("V1_Human_Heart/V1_Human_Heart_spatial.tar.gz")
    assert (
        url
        == "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Human_Heart/V1_Human_Heart_spatial.tar.gz"
    )


@pytest.fixture
def no_network(monkeypatch):
    calls = []

    def refuse(self, url, output_file, pooch_obj, check_only=False):
        calls.append(url)
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", refuse)
    return calls


def test_missing_network_gives_a_clear_error(tmp_path, no_network):
    with pytest.raises(
        ConnectionError, match=r"Could not download 'V1_Human_Heart/.*exampledata\.scverse\.org.*data_dir"
    ):
        lk.datasets.visium_sample("V1_Human_Heart", data_dir=tmp_path)
    assert no_network  # the download was attempted through the (patched) fetcher
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_failed_download_leaves_no_folder_it_created(tmp_path, no_network):
    cache = tmp_path / "new" / "cache"
    with pytest.raises(ConnectionError):
        lk.datasets.visium_sample("V1_Human_Heart", data_dir=cache)
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "V1_Human_Heart"
    mine.mkdir()  # a folder the call did not create stays
    with pytest.raises(ConnectionError):
        lk.datasets.visium_sample("V1_Human_Heart", data_dir=tmp_path)
    assert mine.is_dir()
    doc = lk.datasets.visium_sample.__doc__
    assert "Raises" in doc
    assert "ConnectionError" in doc


def test_unknown_sample():
    with pytest.raises(ValueError, match="V1_Human_Heart"):
        lk.datasets.visium_sample("nope")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cached_sample(tmp_path, monkeypatch):
    """The folder of a sample 'S1' whose downloads are in the cache (scanpy's Visium test data)."""
    src = shared_path("scanpy_visium_testdata", "1.0.0")
    folder = tmp_path / "S1"
    folder.mkdir()
    shutil.copyfile(src / "filtered_feature_bc_matrix.h5", folder / "S1_filtered_feature_bc_matrix.h5")
    with tarfile.open(folder / "S1_spatial.tar.gz", "w:gz") as tar:
        tar.add(src / "spatial", arcname="spatial")
    hashes = (_sha(folder / "S1_filtered_feature_bc_matrix.h5"), _sha(folder / "S1_spatial.tar.gz"), "0" * 64)
    monkeypatch.setitem(_registry.VISIUM_SAMPLES, "S1", hashes)
    return folder


def test_cached_files_are_read_offline(tmp_path, cached_sample, no_network):
    folder = cached_sample
    sdata = lk.datasets.visium_sample("S1", data_dir=tmp_path)
    assert not no_network
    assert (folder / "spatial" / "scalefactors_json.json").is_file()
    assert sdata.tables["S1"].n_obs == 100
    assert sdata.tables["S1"].uns["loki"]["image_key"] == "S1_hires_image"


def test_failed_read_removes_what_it_extracted_and_keeps_verified_files(
    tmp_path, monkeypatch, cached_sample, no_network
):
    folder = cached_sample

    def broken(*args, **kwargs):
        raise RuntimeError("read failed (test)")

    monkeypatch.setattr(lk.io, "read_visium", broken)
    with pytest.raises(RuntimeError, match="read failed"):
        lk.datasets.visium_sample("S1", data_dir=tmp_path)
    assert not (folder / "spatial").exists()
    assert sorted(p.name for p in folder.iterdir()) == [
        "S1_filtered_feature_bc_matrix.h5",
        "S1_spatial.tar.gz",
    ]
