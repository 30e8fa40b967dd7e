"""Tools: embeddings, fine-tuning, alignment, annotation, retrieval, expression prediction, decomposition."""

from ._align import Alignment, align, align_sections
from ._annotate import Annotation, annotate
from ._decompose import Decomposition, decompose
from ._embed import ImageEmbedding, embed_image, embed_text
from ._finetune import finetune
from ._predict import predict_expression, predict_expression_loso
from ._retrieve import retrieve

__all__ = [
    "Alignment",
    "Annotation",
    "Decomposition",
    "ImageEmbedding",
    "align",
    "align_sections",
    "annotate",
    "decompose",
    "embed_image",
    "embed_text",
    "finetune",
    "predict_expression",
    "predict_expression_loso",
    "retrieve",
]
