"""loki: H&E histology and spatial transcriptomics in one embedding space, for the scverse.

Use as ``import loki as lk``; ``lk.pp`` prepares data, ``lk.tl`` computes, ``lk.pl`` plots;
``lk.baselines`` holds the naive baselines a learned encoder must beat.
Importing loki is quick: each namespace is imported on first use, so torch (``lk.models``) and the
scientific stack load only when a namespace that needs them is used.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._keys import Key
from ._logging import LokiWarning

try:
    __version__ = _version("loki")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


#: The namespaces, each imported on first use (``lk.pp``, ``from loki import pp``): ``import loki``,
#: and the command line's ``loki --help``, do not load the scientific stack, and ``lk.models`` loads
#: torch only when asked for.
_SUBMODULES = ("baselines", "datasets", "io", "metrics", "models", "pl", "pp", "tl")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'loki' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the namespaces are listed (tab completion) before they are first used
    return sorted({*globals(), *_SUBMODULES})


__all__ = ["Key", "LokiWarning", "baselines", "datasets", "io", "metrics", "models", "pl", "pp", "tl"]
