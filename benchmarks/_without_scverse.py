"""Import one loki module where the scverse stack is missing (the GPU machines' image).

The GPU image has torch, numpy and scipy but not anndata or spatialdata, which ``import loki`` and the
subpackages' ``__init__`` pull in. The array-level modules (``loki.models``, ``loki.tl._mapping``) need
neither, so there they are imported under empty parent packages that point at ``src/loki``.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "loki"


def import_loki_module(name: str):
    """Return the module ``name`` (e.g. ``"loki.tl._mapping"``), by a normal import where ``import loki`` works."""
    try:
        import loki  # noqa: F401
    except ImportError as err:
        print(f"import loki failed ({err}); importing {name} under empty parent packages", file=sys.stderr)
        parts = name.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent not in sys.modules:
                pkg = types.ModuleType(parent)
                pkg.__path__ = [str(SRC.joinpath(*parts[1:depth]))]
                sys.modules[parent] = pkg
    return importlib.import_module(name)
