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
    # SpatialData coordinate systems
    GLOBAL_CS = "global"
    ALIGNED_CS = "aligned"
