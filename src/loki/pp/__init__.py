"""Preprocessing: gene sentences, H&E patches and tiles, gene ids, pseudo-spots, marker tables."""

from ._genes import map_gene_ids
from ._housekeeping import housekeeping_genes
from ._markers import read_markers
from ._patches import crop_patches, spot_patches
from ._pseudo_spots import pseudo_spots
from ._sentences import gene_sentences, top_gene_indices
from ._tiles import tile_image, tissue_mask

__all__ = [
    "crop_patches",
    "gene_sentences",
    "housekeeping_genes",
    "map_gene_ids",
    "pseudo_spots",
    "read_markers",
    "spot_patches",
    "tile_image",
    "tissue_mask",
    "top_gene_indices",
]
