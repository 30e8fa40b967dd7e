"""Default key names: the single place where ``tl`` writes and ``pl`` reads."""

from __future__ import annotations


class Key:
    """Default keys of loki results in AnnData / SpatialData containers."""

    # .obs
    SENTENCE = "loki_sentence"
    PATCH_OK = "loki_patch_ok"
    EMPTY_SPOT = "loki_empty"
    LABEL = "loki_annotation"
    # .obsm
    TEXT = "loki_text"
    IMAGE = "loki_image"
    SPATIAL = "spatial"
    ALIGNED = "spatial_aligned"
    ANNOTATION = "loki_annotation"
    PROPORTIONS = "loki_proportions"
    TRUE_PROPORTIONS = "proportions"  # exact proportions of pseudo-spots / synthetic data
    # .layers
    PREDICTED = "loki_predicted"
    # .uns namespace; results go to .uns[UNS][key_added]
    UNS = "loki"
    #: Entries of .uns[UNS] that describe the section (written by the readers, ``pp.tile_image`` and
    #: ``pp.pseudo_spots``), not a result: no ``key_added`` may take these names.
    SECTION_METADATA = ("image_key", "microns_per_unit", "spot_diameter_um", "spot_spacing_um", "tiles")
    # SpatialData coordinate systems
    GLOBAL_CS = "global"
    ALIGNED_CS = "aligned"  # align's default: its coordinate system follows key_added (spatial_aligned)

    @staticmethod
    def empty_of(sentence_key: str) -> str:
        """Column of the empty-spot flag written with the sentences in ``.obs[sentence_key]``."""
        return Key.EMPTY_SPOT if sentence_key == Key.SENTENCE else f"{sentence_key}_empty"

    @staticmethod
    def patch_ok_of(image_key: str) -> str:
        """Column of the patch-validity flag written with the image embedding ``.obsm[image_key]``."""
        return Key.PATCH_OK if image_key == Key.IMAGE else f"{image_key}_patch_ok"
