"""Plots on matplotlib.

Every function takes ``ax=``, ``show=`` and ``save=`` and returns its figure (``loss_curve``: its
axes), as scanpy's ``savefig_or_show`` does:

- ``ax``: the axes to draw into, one per panel (as each function documents): an Axes when there is
  one panel, else a list or an array of that many; default a new figure.
- ``show``: by default, a new figure is shown when the backend is interactive; drawing into the
  caller's axes never shows the caller's figure unless ``show=True``.
- ``save``: a path (str or pathlib.Path) or a binary file object to write the figure to (PNG unless
  the path's suffix names another format); scanpy's ``save=True`` is refused.
  A figure the function created, saved and did not show is closed afterwards, so loops that save
  one figure each leave none open. A call that fails closes the figure it created.

The functions that draw spots of a section (``annotation``, ``expression``, ``proportions``) draw
its H&E underneath by default when the section is a SpatialData whose table has an image, and take
``coordinate_system=`` (default: the one an alignment's ``spatial_key`` was placed in, else
``"global"``, or the only one a section's spots and image share when they are not in ``"global"``):
a SpatialData is drawn in that coordinate system, as spatialdata-plot draws it, with the image and
the spots placed by their transformations (an alignment's ``spatial_key``, e.g.
``"spatial_aligned"``, by the shapes element it wrote); an AnnData's spots are drawn at their
coordinates. A section whose table has no image of its own is drawn without one. Spots without a
value (NaN) are drawn in light grey; categories take the colours scanpy stores in
``.uns[f"{key}_colors"]`` (one per category of the column, in its order), else scanpy's default
palette. A panel title wider than its panel is wrapped onto lines that fit it.
Nothing is written into the data.
"""

from ._alignment import alignment
from ._annotation import annotation
from ._expression import expression
from ._proportions import proportions
from ._retrieval import retrieval_gallery
from ._training import loss_curve

__all__ = ["alignment", "annotation", "expression", "loss_curve", "proportions", "retrieval_gallery"]
