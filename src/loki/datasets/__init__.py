"""Bundled real data, a synthetic tissue generator with ground truth, and a registry of public samples."""

from __future__ import annotations

# bundled+registry
# synthetic
