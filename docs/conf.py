"""Sphinx configuration for loki."""

from __future__ import annotations

from datetime import date
from importlib.metadata import version as _version

project = "loki"
author = "the loki developers"
copyright = f"{date.today().year}, {author}"
release = _version("loki")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_member_order = "groupwise"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
typehints_defaults = "braces"
myst_enable_extensions = ["dollarmath", "colon_fence"]
nb_execution_mode = "cache"
# per cell: training loki-tiny took 964 s on a loaded 2-core machine (about 100 s idle)
nb_execution_timeout = 1800
nb_merge_streams = True
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
}

html_theme = "sphinx_book_theme"
html_title = "loki"
