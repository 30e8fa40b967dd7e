"""The lk.pl docstrings as a reader gets them: shared parameter texts filled in, every parameter described."""

from __future__ import annotations

import inspect
import re

import matplotlib

matplotlib.use("Agg")
import pytest

import loki as lk
from loki.pl._docs import PARAMS, doc_params

PUBLIC = [getattr(lk.pl, name) for name in lk.pl.__all__]


def _parameters(doc: str) -> dict[str, str]:
    """The numpydoc Parameters section of ``doc``: each name (``a, b`` counts for both) and its text."""
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(
            i for i, line in enumerate(lines[:-1]) if line == "Parameters" and set(lines[i + 1]) == {"-"}
        )
    except StopIteration:
        return {}
    found: dict[str, str] = {}
    names: list[str] = []
    for i in range(start + 2, len(lines)):
        line = lines[i]
        if i + 1 < len(lines) and line and set(lines[i + 1]) == {"-"}:  # the next section
            break
        if line and not line[0].isspace():
            names = [n.strip() for n in line.split(",")]
            found.update(dict.fromkeys(names, ""))
        elif line.strip():
            for n in names:
                found[n] += " " + line.strip()
    return found


def _problems(doc: str | None, parameters: list[str]) -> list[str]:
    """What is wrong with a rendered docstring: unfilled placeholders, parameters without a text."""
    if not doc:
        return ["no docstring"]
    problems = []
    prose = re.sub(r"``.*?``", "", doc, flags=re.DOTALL)  # f"{key}_colors" in a literal is text
    problems += [f"unfilled placeholder {p}" for p in re.findall(r"\{[^{}\s]*\}", prose)]
    documented = _parameters(doc)
    problems += [f"{p} is not documented" for p in parameters if p not in documented]
    problems += [f"{p} has no description" for p in parameters if p in documented and not documented[p]]
    problems += [f"{p} is documented but no parameter" for p in documented if p not in parameters]
    if not problems and list(documented) != parameters:
        problems.append(f"parameters documented in the order {list(documented)}, not {parameters}")
    return problems


@pytest.mark.parametrize("func", PUBLIC, ids=lk.pl.__all__)
def test_every_parameter_is_described_and_no_placeholder_is_left(func):
    parameters = list(inspect.signature(func).parameters)
    assert _problems(func.__doc__, parameters) == []


# parameters whose behaviour there differs from the shared text's, so they keep their own
OWN_TEXT = {"alignment": {"spatial_key", "spot_size"}}


@pytest.mark.parametrize("func", PUBLIC, ids=lk.pl.__all__)
def test_a_shared_parameter_reads_the_same_everywhere(func):
    """Each function that takes a shared parameter gives its shared text (extended at its end at most)."""
    documented = _parameters(func.__doc__)
    for name, text in PARAMS.items():
        if name in documented and name not in OWN_TEXT.get(func.__name__, set()):
            assert documented[name].strip().startswith(" ".join(text.split())), name


def test_the_check_fails_on_a_dropped_text_and_an_unfilled_placeholder():
    func = lk.pl.proportions
    parameters = list(inspect.signature(func).parameters)
    doc = func.__doc__
    alpha = re.search(r"\n    alpha\n(        .*\n)+", doc).group(0)
    assert _problems(doc.replace(alpha, "\n"), parameters) == ["alpha is not documented"]
    described = re.search(r"\n    alpha\n((        .*\n)+)", doc).group(1)
    assert _problems(doc.replace(described, ""), parameters) == ["alpha has no description"]
    assert _problems(doc.replace(described, "        {alpha}\n"), parameters) == [
        "unfilled placeholder {alpha}"
    ]
    assert _problems(func.__wrapped__.__doc__, parameters) == []  # the filled docstring is wrapped too


def test_doc_params_indents_a_text_under_its_parameter_and_keeps_doubled_braces():
    @doc_params
    def plot(save=None):
        """Plot.

        Parameters
        ----------
        save
            {save}
            Also ``f"{{save}}.png"``.
        """

    assert "{save}" not in plot.__doc__.replace('``f"{save}.png"``', "")
    assert (
        _parameters(plot.__doc__)["save"].strip()
        == " ".join(PARAMS["save"].split()) + ' Also ``f"{save}.png"``.'
    )
    body = plot.__doc__.split("save\n", 1)[1].splitlines()
    assert all(line.startswith(" " * 12) for line in body[:-1])  # one block under the name


@pytest.mark.parametrize("placeholder", ["{shwo}", "{}", "{save!r}", "{save:>10}"])
def test_doc_params_refuses_a_placeholder_it_has_no_text_for(placeholder):
    def plot(save=None):
        pass

    plot.__doc__ = f"Plot.\n\n    Parameters\n    ----------\n    save\n        {placeholder}\n"
    with pytest.raises(
        KeyError, match=r"plot holds the placeholder .*no shared parameter text; those are alpha"
    ):
        doc_params(plot)


def test_numpydoc_parses_the_parameters():
    docscrape = pytest.importorskip("numpydoc.docscrape")
    for func in PUBLIC:
        parsed = docscrape.FunctionDoc(func)
        names = [n.strip() for p in parsed["Parameters"] for n in p.name.split(",")]
        assert names == list(inspect.signature(func).parameters), func.__name__
        assert all(p.desc for p in parsed["Parameters"]), func.__name__


def test_sphinx_napoleon_renders_every_parameter():
    napoleon = pytest.importorskip("sphinx.ext.napoleon")
    config = napoleon.Config(napoleon_use_param=True, napoleon_numpy_docstring=True)
    for func in PUBLIC:
        rst = str(napoleon.NumpyDocstring(inspect.cleandoc(func.__doc__), config, what="function"))
        rendered = re.findall(r"^:param (\w+):", rst, flags=re.MULTILINE)
        assert rendered == list(inspect.signature(func).parameters), func.__name__
