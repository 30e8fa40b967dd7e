"""Preprocessing: gene sentences, H&E patches, gene ids, pseudo-spots, marker tables."""

from __future__ import annotations

# sentences+patches+genes
# markers
# pseudo_spots
