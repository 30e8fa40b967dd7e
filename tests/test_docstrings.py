"""Every public function's docstring parses as numpydoc and documents each parameter, in order."""

from __future__ import annotations

import inspect
import warnings

import pytest

import loki as lk

docscrape = pytest.importorskip("numpydoc.docscrape")

MODULES = (lk.pp, lk.tl, lk.pl, lk.io, lk.metrics, lk.models, lk.datasets)
PUBLIC = [
    pytest.param(getattr(module, name), id=f"{module.__name__}.{name}")
    for module in MODULES
    for name in module.__all__
    if inspect.isfunction(getattr(module, name))
]


def test_every_public_module_lists_functions():
    assert len(PUBLIC) > 50


@pytest.mark.parametrize("func", PUBLIC)
def test_docstring_documents_the_signature(func):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpydoc warns on unknown sections and malformed headers
        doc = docscrape.FunctionDoc(func)
    assert doc["Summary"], "no summary line"
    documented = [name.strip() for entry in doc["Parameters"] for name in entry.name.split(",")]
    expected = [
        ("**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else "") + p.name
        for p in inspect.signature(func).parameters.values()
    ]
    assert [name.lstrip("*") for name in documented] == [name.lstrip("*") for name in expected]
    assert all(entry.desc for entry in doc["Parameters"]), "a parameter without a description"
