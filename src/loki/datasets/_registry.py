"""Registry of public 10x Genomics Visium samples (H&E), downloaded on demand with pooch.

Files and SHA-256 hashes are those pinned by squidpy 1.8.2 (``src/squidpy/datasets/datasets.yaml``,
scverse/squidpy commit ba864432dfdf729ea3e9db7ff228a3c50e60d182) for its ``sq.datasets.visium``:
the scverse mirror (``https://exampledata.scverse.org/squidpy/10x_genomics/``) of the Space Ranger
outputs published by 10x Genomics (https://www.10xgenomics.com/datasets, CC BY 4.0). No hash
below was computed or edited here; every file has a published hash, so none is ``None``.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from loki._logging import logger
from loki._utils._folders import missing_folders, remove_empty_folders

if TYPE_CHECKING:
    from spatialdata import SpatialData

BASE_URL = "https://exampledata.scverse.org/squidpy/10x_genomics/"
FILES = ("filtered_feature_bc_matrix.h5", "spatial.tar.gz", "image.tif")

# sample -> SHA-256 of (filtered_feature_bc_matrix.h5, spatial.tar.gz, image.tif), in that order,
# copied from squidpy 1.8.2 datasets.yaml (see the module docstring). V1_* are fresh-frozen H&E
# sections (Space Ranger 1.0/1.1); Visium_FFPE_* are FFPE H&E sections (Space Ranger 1.3).
VISIUM_SAMPLES: dict[str, tuple[str, str, str]] = {
    "V1_Adult_Mouse_Brain": (
        "eb78379e02dcf48036abf05b67233e73ecb0d880787feb82f76ff16f6ce01eb3",
        "46d6b05ba740f232d6bf4b27b9a8846815851e000985fb878f1364bab04e5bd4",
        "39d0a85a7cecb0bde9ad2566260d571bb49834d26fc443cb32b96475f30668b2",
    ),
    "V1_Mouse_Brain_Sagittal_Anterior": (
        "56078d8d6fe6c13de248fdb1c518b691cdef78fb00021b659786b4a47c6656d5",
        "5f41a803e2bd69fa4dfca6abc8fa2d4e0d76aeb6c72d7038a5fdcf9cc50a36f8",
        "5837c44e4e1d0f77b3ade2350a4f2159922f4c388e882f1c38b5683ff7bd086d",
    ),
    "V1_Mouse_Brain_Sagittal_Anterior_Section_2": (
        "6ffcca5979b722f7f112202a9a8273cdad60a2b40ba4f651d465fbba577b5a5c",
        "0fa49dd44835e0a77c4f24653abe6092c0a164c594696540ee3d9e2eee2e34a2",
        "f6573c85a2e56fd9f70e6ce59134ed03a14140a074e2f85161f8b4778dad5bfb",
    ),
    "V1_Mouse_Brain_Sagittal_Posterior": (
        "df962209143860488bd679ff7a1b3bb14985208d0929fb814934ba7571c488b6",
        "b878d7eaca487ffc17224a870f86599abf9d45a99033c1ef65661ff119cef0d5",
        "18558cd21345f6d590af4f519859a3710b400508ed31ae1e0b1d66b561de5e5f",
    ),
    "V1_Mouse_Brain_Sagittal_Posterior_Section_2": (
        "7e4dbea6a2037b3478719d121eec33a56b96d0c904daade9c8cbeb428f415bc4",
        "e8be08bf867387a6209c4f37ede4266d1305dfb038c77411b213a28fc2d79107",
        "ccc41944ae7586b1468141f840897c6096e1ce9506e6e0774b9ef3d89054b12c",
    ),
    "V1_Mouse_Kidney": (
        "5e0b1d1c51c4e8759cd623d212573e1c28daf95d66e0d25a8e4488f6bed3831a",
        "91570548eae3d2bcf738af45e9dc463547a01669841db43ff20afb41b7cc0539",
        "be58cc8b6aec69635ecc813fa9de559fd124a5c265999aff198d76d75f3c6f6a",
    ),
    "V1_Human_Heart": (
        "a7274ea2ff2717693b200e614c288c174f02925b6d82c98221871a08e52d415b",
        "f2033b6ec4c13dcaf75386d4de3e86cb3357e15fe0eaa2be7037c3d3f0194188",
        "ff6fc5169a4ab3af5a0799ee1333e2fa0e6df242bc6bc5162e6ea51e6826fa5f",
    ),
    "V1_Human_Lymph_Node": (
        "86fd533eb907450e7125b9820183a0ca73776eeafcc5eddae5695b6aabfd9139",
        "812808883366ff9623dc8354847a7211b0d922b2bfc4c9359d6e12e993ea6a73",
        "19462aa8f74ed6032738251e2f56931be9047de58bab6ca0373af385aae2ff03",
    ),
    "V1_Human_Brain_Section_1": (
        "076e5d1fa82243349ee963e069b362c81198e8c4f752ad9680dfb0714d0c240f",
        "3979bcbeb13a61d5e1a2ffb066bd76b4c121a1cd1293c66da7578cd1fbb1d247",
        "68ac2d8b72514248eeb7666a7409c286d1e7d4af30b700baed36ebe85dcf2961",
    ),
    "V1_Human_Brain_Section_2": (
        "1ee773e152a1befb9a4fce1b4883f62790e717546d5db092e209c6ac4c1f9d2d",
        "74b40c7f38d69b086d47739a565a8b17e558c2c5cf2c83c17c999e9ac7c25f83",
        "87881ff452472bc326c6267184a43ad5c53fb4caa39637679a59143228266ef1",
    ),
    "V1_Breast_Cancer_Block_A_Section_1": (
        "b3cbb6ead60afad848ebcc07a34835613d9d2d79e416ad8300b210d9de584b65",
        "415530a9d31172f63fd358d5d1cefb0798698ef9c0e614f52825894cd45c61bf",
        "73a94ca956d1b5c027dcaf1ac42c15fed4d4a12eefee4b4b597e62f34cc5959e",
    ),
    "V1_Breast_Cancer_Block_A_Section_2": (
        "e325b4e53f0036a71904cea6b7cd65945f10c25cf2ef8e2f681de9ac1ff7766c",
        "15fcf837478bcba847b50e393b016f95f02067ea930e81f96b103f2a14bf6db0",
        "1ad96042cba8e05b22566ef5b8197714e06d4a5e98d040e926c8591ffdb48cc7",
    ),
    "Visium_FFPE_Human_Breast_Cancer": (
        "64321f603f7200b0bedffbe353c04dde72bbe7c7be7390e503d955aa9b2584c5",
        "2937fcc44b7adee70f162a9e09857410dcf22eed89a3e3187950dfc1574fea14",
        "b3fbbdb5006769ef7d2b614171e208b6caf901bde52272a02da6e3d019626ce0",
    ),
    "Visium_FFPE_Human_Prostate_Cancer": (
        "08fb4185da5ac375ab3f4782744752bf3aa23fedbe93d0882aaa9fa0afde9abd",
        "3eec0e63de718a51afd1d11dea3a1db926009399937f93384d14c81f52e37202",
        "c5e967a1c09deef5a1ef0a60b00c823d2daa3640b50ee3cb6683f61c254299f7",
    ),
    "Visium_FFPE_Mouse_Kidney": (
        "b7c3a904971ece636c79cda1dd49d7f7f183080698516477f96182b46597f977",
        "cd55f1d7c5665d7f37ea83ab58729149e93e762f4ed69f7f9bde747ec4404c64",
        "6628054c2ecf68124f319ef154bead8359424fe9ccf9f2e1191aac66de787870",
    ),
}


def registry() -> dict[str, str]:
    """The pooch registry: ``{"<sample>/<sample>_<file>": "sha256:<hash>"}`` for every file."""
    return {
        f"{sample}/{sample}_{file}": f"sha256:{digest}"
        for sample, hashes in VISIUM_SAMPLES.items()
        for file, digest in zip(FILES, hashes, strict=True)
    }


def _fetcher(data_dir: str | Path | None):
    import pooch

    return pooch.create(
        path=Path(data_dir) if data_dir is not None else pooch.os_cache("loki"),
        base_url=BASE_URL,
        registry=registry(),
        retry_if_failed=2,
    )


def _fetch(fetcher, fname: str) -> Path:
    try:
        return Path(fetcher.fetch(fname, progressbar=False))
    except Exception as err:  # pooch surfaces requests/urllib/OSError/hash errors alike
        if isinstance(err, ValueError) and "hash" in str(err).lower():
            raise
        raise ConnectionError(
            f"Could not download {fname!r} from {BASE_URL + fname!r} ({type(err).__name__}: {err}). "
            f"Check the network connection, or place the file (with its published hash) under "
            f"{str(fetcher.abspath)!r} and pass data_dir= to use it offline."
        ) from err


def visium_sample(name: str, *, data_dir: str | Path | None = None, full_image: bool = False) -> SpatialData:
    """Download (once, hash-checked) and read a public 10x Visium H&E sample.

    Parameters
    ----------
    name
        Sample name, one of :data:`VISIUM_SAMPLES` (e.g. ``"V1_Human_Lymph_Node"``).
    data_dir
        Cache folder; default: the user cache of ``pooch.os_cache("loki")``.
    full_image
        Also download the full-resolution H&E TIFF (hundreds of MB) and add it as
        ``f"{name}_full_image"``; otherwise only the Space Ranger hires/lowres PNGs are read.

    Returns
    -------
    A SpatialData section read by :func:`loki.io.read_visium` with ``dataset_id=name``:
    ``tables[name]``, ``shapes[f"{name}_spots"]`` and the images, ``uns['loki']`` filled in.

    Raises
    ------
    ValueError
        When ``name`` is not a known sample, or a downloaded file does not have its published hash.
    ConnectionError
        When a file cannot be downloaded (no network, server error).

    Notes
    -----
    A call that fails removes the folders it created and the ``spatial/`` folder it extracted;
    files it downloaded and verified stay in the cache for the next call.

    """
    from loki.io import read_visium

    if name not in VISIUM_SAMPLES:
        raise ValueError(f"Unknown Visium sample {name!r}; available: {sorted(VISIUM_SAMPLES)}.")
    fetcher = _fetcher(data_dir)
    created = missing_folders(Path(fetcher.abspath) / name)
    extracted = None
    try:
        counts = _fetch(fetcher, f"{name}/{name}_filtered_feature_bc_matrix.h5")
        archive = _fetch(fetcher, f"{name}/{name}_spatial.tar.gz")
        folder = counts.parent
        if not (folder / "spatial" / "scalefactors_json.json").is_file():
            if not (folder / "spatial").exists():
                extracted = folder / "spatial"
            with tarfile.open(archive) as tar:
                tar.extractall(folder, filter="data")
            logger.info("extracted %s", archive.name)
        kwargs = {}
        if full_image:
            kwargs["fullres_image_file"] = _fetch(fetcher, f"{name}/{name}_image.tif")
        return read_visium(folder, dataset_id=name, counts_file=counts.name, **kwargs)
    except BaseException:
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)
        remove_empty_folders(created)  # a folder holding verified downloads is kept
        raise
