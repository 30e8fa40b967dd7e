"""Readers that build SpatialData sections (image, spot circles, annotating table) and slide images."""

from ._legacy_st import read_legacy_st, read_legacy_st_sections
from ._slide import read_slide
from ._visium import read_visium
from ._visium_hd import read_visium_hd

__all__ = ["read_legacy_st", "read_legacy_st_sections", "read_slide", "read_visium", "read_visium_hd"]
