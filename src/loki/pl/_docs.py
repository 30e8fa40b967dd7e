"""The parameter descriptions that several ``lk.pl`` functions share, written once.

A plot function's docstring puts a placeholder, ``{show}``, where a shared description goes (the
line under the parameter's name), and :func:`doc_params`, applied under ``@plot_function``, fills
it in when the module is imported. The rendered docstring (``help(lk.pl.expression)``, the API
pages) holds the text itself.

A text may be extended in place (``{cmap} Used with kind="scores" only.``). Literal braces in such a
docstring are doubled, as in :meth:`str.format` (``f"{{key}}_colors"`` reads ``f"{key}_colors"``).
A parameter whose behaviour differs between functions keeps its own description instead.
"""

from __future__ import annotations

from collections.abc import Callable
from string import Formatter
from typing import TypeVar

_F = TypeVar("_F", bound=Callable)

PARAMS: dict[str, str] = {
    # the section a spatial plot draws (annotation, expression, proportions)
    "table_key": (
        "Table of a SpatialData, a key of ``sdata.tables``; may be omitted when it holds one table.\n"
        "Not used for an AnnData."
    ),
    "image_key": (
        "H&E image of a SpatialData, a key of ``sdata.images``; default: the section's own (the one\n"
        "its table records, as :mod:`loki.io` readers write it, else the only image, or the one named\n"
        "after the table or its region), none when it has no image of its own. Not used for an AnnData."
    ),
    "coordinate_system": (
        "Coordinate system of a SpatialData to draw in, as spatialdata-plot does: the axes are in its\n"
        "units, and the image and the spots are placed there by their transformations. Default: the\n"
        "one an alignment's ``spatial_key`` was placed in (its record's ``coordinate_system``), else\n"
        '``"global"``, or the only one the spots and the image share when they are not in it (setting\n'
        "aside those that alignments added); when they share several, pass one. Not used for an AnnData."
    ),
    "spatial_key": (
        "``.obsm`` key of the spot coordinates: the spots' own (placed by the transformation of\n"
        'the table\'s spot shapes), or those of an alignment (e.g. ``"spatial_aligned"`` from\n'
        ":func:`loki.tl.align`, placed by the shapes element it wrote, in the coordinate system it\n"
        "recorded, where its section's image is placed too). An AnnData's are drawn as they are."
    ),
    "show_image": (
        "Draw the H&E underneath: by default when ``data`` is a SpatialData whose table has an image;\n"
        "``True`` warns when there is none; ``False`` never."
    ),
    "spot_size": (
        "Marker area of each spot in points^2, a finite number > 0; default: as wide as the median\n"
        "distance between neighbouring spots, so that neighbours touch (``lk.pl.alignment``: shrinks as\n"
        "the number of spots grows)."
    ),
    "cmap": (
        "Colour map of the values: a matplotlib Colormap or its name; spots without a value (NaN) are\n"
        "drawn in light grey."
    ),
    "alpha": "Opacity of the spots, from 0 (transparent) to 1 (opaque).",
    # the figure
    "ncols": "Panels per row of a new figure (not used with ``ax``).",
    "panel_size": "Height of each panel of a new figure, in inches (> 0; not used with ``ax``).",
    "show": "Show the figure; by default when it is new (no ``ax``) and the backend is interactive.",
    "save": (
        "Where to write the figure (150 dpi): a path, str or pathlib.Path, whose suffix names the\n"
        "format (``.png`` is added when it has none; missing folders are created), or a binary file\n"
        "object, written as PNG. scanpy's ``save=True`` is refused. A new figure (no ``ax``) saved and\n"
        "not shown is closed; what the function returns stays usable."
    ),
}


def doc_params(func: _F) -> _F:
    """Fill the ``{name}`` placeholders of ``func``'s docstring with the texts of :data:`PARAMS`.

    A text's later lines take the indentation of the line its placeholder is on, so a description
    stays one numpydoc block. A placeholder :data:`PARAMS` lacks raises a KeyError naming it and the
    function, when the module defining the function is imported.
    """
    doc = func.__doc__
    if not doc:
        raise ValueError(f"{func.__qualname__} has no docstring to fill.")
    filled: list[str] = []
    for literal, field, spec, conversion in Formatter().parse(doc):
        filled.append(literal)
        if field is None:
            continue
        if field not in PARAMS or spec or conversion:
            whole = (
                "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            )
            raise KeyError(
                f"The docstring of {func.__qualname__} holds the placeholder {whole!r}, which is no shared "
                f"parameter text; those are {', '.join(sorted(PARAMS))}. Double literal braces ({{{{ }}}})."
            )
        line = "".join(filled).rsplit("\n", 1)[-1]
        indent = line[: len(line) - len(line.lstrip())]
        filled.append(PARAMS[field].replace("\n", "\n" + indent))
    func.__doc__ = "".join(filled)
    return func
