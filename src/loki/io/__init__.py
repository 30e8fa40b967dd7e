"""Readers that build SpatialData sections (image, spot circles, annotating table)."""

from __future__ import annotations

# readers
