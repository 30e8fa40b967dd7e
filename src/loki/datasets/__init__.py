"""Bundled real data, a synthetic tissue generator with ground truth, and a registry of public samples."""

from ._bundled import mob
from ._registry import visium_sample
from ._synthetic import SectionTransform, synthetic_reference, synthetic_tissue, transform_section

__all__ = [
    "SectionTransform",
    "mob",
    "synthetic_reference",
    "synthetic_tissue",
    "transform_section",
    "visium_sample",
]
