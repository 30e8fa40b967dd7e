from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests on a fixed example sequence so that a submission's result does not depend
# on the draw; locally they explore new examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset not available: {path} (../shared/data is absent on this machine)")
    return path


def spacexr_visium(rename: dict[str, str] | None = None):
    """spacexr's Visium vignette: spots (counts, ``.obsm['spatial']``) and its labelled reference.

    ``rename`` maps cell-type labels to others (e.g. messy names a user's reference has).
    """
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    root = shared_path("spacexr_rctd_examples")
    counts = pd.read_csv(root / "Reference" / "Visium_Ref" / "counts.csv", index_col=0)
    labels = pd.read_csv(root / "Reference" / "Visium_Ref" / "cell_types.csv", index_col=0).iloc[:, 0]
    labels = labels.loc[counts.columns].astype(str).replace(rename or {})
    reference = ad.AnnData(
        sp.csr_matrix(counts.T.to_numpy(np.float32)),
        obs=pd.DataFrame({"cell_type": labels.to_numpy()}, index=counts.columns),
        var=pd.DataFrame(index=counts.index),
    )
    spot_counts = pd.read_csv(root / "SpatialRNA" / "VisiumVignette" / "counts.csv", index_col=0)
    coords = pd.read_csv(root / "SpatialRNA" / "VisiumVignette" / "coords.csv", index_col=0)
    spots = ad.AnnData(
        sp.csr_matrix(spot_counts.T.to_numpy(np.float32)),
        obs=pd.DataFrame(index=spot_counts.columns),
        var=pd.DataFrame(index=spot_counts.index),
    )
    spots.obsm["spatial"] = coords.loc[spot_counts.columns, ["x", "y"]].to_numpy(float)
    return spots, reference


@pytest.fixture
def mob4_zarr(tmp_path):
    """The bundled MOB4 section written as a SpatialData zarr store (the CLI tests' store)."""
    import loki as lk

    path = tmp_path / "mob4.zarr"
    lk.datasets.mob("MOB4").write(path)
    return path


@pytest.fixture
def slide(tmp_path) -> Path:
    """A small RGB TIFF (256 x 256 px of noise) for `loki slide` (the CLI store tests' slide)."""
    import numpy as np
    import tifffile

    rgb = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_path()


def interrupt_training_at_batch(monkeypatch, batch: int) -> None:
    """Make fine-tuning raise KeyboardInterrupt as it prepares its ``batch``-th batch (counted from 1)."""
    from loki.models import _finetune

    calls = []
    real = _finetune.augment_dihedral

    def stop(x, gen):
        calls.append(1)
        if len(calls) == batch:
            raise KeyboardInterrupt
        return real(x, gen)

    monkeypatch.setattr(_finetune, "augment_dihedral", stop)


def fail_spatialdata_write(
    monkeypatch,
    method: str,
    name: str | None = None,
    error: BaseException | type[BaseException] = KeyboardInterrupt,
    *,
    once: bool = False,
) -> None:
    """Raise ``error`` once SpatialData has written element ``name`` (``_write_element``) or the attrs (``write_attrs``).

    With ``once``, only the first such write fails (a Ctrl-C comes once; the clean-up writes again).
    """
    import spatialdata as sd

    real = getattr(sd.SpatialData, method)
    raised = []

    def write(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if (name is None or kwargs["element_name"] == name) and not (once and raised):
            raised.append(True)
            raise error

    monkeypatch.setattr(sd.SpatialData, method, write)
