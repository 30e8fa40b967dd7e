"""Tools: embeddings, fine-tuning, alignment, annotation, retrieval, expression prediction, decomposition."""

from __future__ import annotations

# embed+finetune
# align
# annotate+retrieve+predict
# decompose
