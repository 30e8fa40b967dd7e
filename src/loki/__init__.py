"""loki: H&E histology and spatial transcriptomics in one embedding space, for the scverse.

Use as ``import loki as lk``; ``lk.pp`` prepares data, ``lk.tl`` computes, ``lk.pl`` plots;
``lk.baselines`` holds the naive baselines a learned encoder must beat.
Importing loki does not import torch: the model layer loads it on first use.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from . import baselines, datasets, io, metrics, pl, pp, tl
from ._keys import Key
from ._logging import LokiWarning

try:
    __version__ = _version("loki")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def __getattr__(name: str):
    # ``lk.models`` imports torch, so it is loaded only when asked for.
    if name == "models":
        import importlib

        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module 'loki' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazily loaded ``models`` is listed (tab completion) before it is first used
    return sorted({*globals(), "models"})


__all__ = ["Key", "LokiWarning", "baselines", "datasets", "io", "metrics", "models", "pl", "pp", "tl"]
