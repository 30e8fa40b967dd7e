from __future__ import annotations

import subprocess
import sys


def test_import_loki_does_not_import_torch():
    code = "import sys, loki; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_public_namespaces():
    import loki as lk

    for name in ("pp", "tl", "pl", "metrics", "datasets", "io", "baselines"):
        assert hasattr(lk, name)
    assert lk.Key.TEXT == "loki_text"


def test_api_page_lists_every_public_name():
    import importlib
    import inspect
    import pathlib

    api = (pathlib.Path(__file__).parents[1] / "docs" / "api.md").read_text()
    missing = []
    for module in ("pp", "tl", "pl", "metrics", "datasets", "io", "models", "baselines"):
        mod = importlib.import_module(f"loki.{module}")
        for name, obj in vars(mod).items():
            defined_in_loki = getattr(obj, "__module__", "").startswith("loki")
            public = not name.startswith("_") and not inspect.ismodule(obj)
            if public and defined_in_loki and f"{module}.{name}" not in api:
                missing.append(f"{module}.{name}")
    assert not missing, f"public names missing from docs/api.md: {missing}"


MODULES = ("pp", "tl", "pl", "metrics", "datasets", "io", "models", "baselines")


def _documented(module: str) -> set[str]:
    import pathlib
    import re

    api = (pathlib.Path(__file__).parents[1] / "docs" / "api.md").read_text()
    names = set(re.findall(rf"^\s+{module}\.(\w+)\s*$", api, re.M))
    return names | set(re.findall(rf"py:data:: {module}\.(\w+)", api))


def test_star_import_gives_exactly_the_documented_names():
    """Each module's __all__ is what docs/api.md documents (``from loki.baselines import *`` gave ``np``)."""
    import importlib

    for module in MODULES:
        mod = importlib.import_module(f"loki.{module}")
        documented = _documented(module)
        assert documented, module
        assert sorted(mod.__all__) == sorted(documented), module
        namespace: dict = {}
        exec(f"from loki.{module} import *", namespace)
        assert set(namespace) - {"__builtins__"} == documented, module


def test_tab_completion_shows_only_the_public_names():
    """``dir()`` of loki and of its namespaces (what IPython completes) lists the public API, not the
    ``annotations`` of ``from __future__ import annotations`` or the helpers the namespace imports.
    A fresh interpreter: importing a submodule such as ``loki.cli`` adds its name, rightly."""
    code = """
import importlib
import loki as lk
bad = {}
for name, mod in [("loki", lk)] + [(m, importlib.import_module("loki." + m)) for m in
        ("pp", "tl", "pl", "metrics", "datasets", "io", "models")]:
    shown = [n for n in dir(mod) if not n.startswith("_")]
    if shown != sorted(mod.__all__):
        bad[name] = sorted(set(shown) ^ set(mod.__all__))
print(bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{}", out.stdout + out.stderr


def test_namespaces_are_loaded_on_first_use():
    """``import loki`` loads no scientific library (it took 4 s, which ``loki --help`` paid too): each
    namespace is imported when first used, and is listed and importable as before."""
    code = """
import sys
import loki as lk

heavy = ("anndata", "dask", "numpy", "pandas", "scanpy", "spatialdata", "torch")
print(sorted(m for m in heavy if m in sys.modules))
print([n for n in dir(lk) if not n.startswith("_")] == sorted(lk.__all__))
from loki import pp
print(pp is lk.pp, callable(lk.pp.gene_sentences), callable(lk.tl.align), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "True", "True True True False"], out.stdout + out.stderr
