"""Defaults shared by the API and the command line.

A module of plain constants that imports nothing: :mod:`loki.cli` builds its parser (``loki --help``)
from these without importing the scientific stack.
"""

from __future__ import annotations

#: Gene-name patterns the reference recipe drops (every symbol containing "-" or ".").
REFERENCE_EXCLUDE_PATTERNS: tuple[str, ...] = (r"-", r"\.")
