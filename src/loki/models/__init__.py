"""OmiCLIP model layer over open_clip: load, encode, fine-tune. Importing this module imports torch.

Models: ``"omiclip"`` (published coca_ViT-L-14 weights, Hugging Face ``WangGuangyuLab/Loki``), ``"loki-tiny"``
(a small CoCa registered with open_clip, trained from scratch with :func:`train_tiny`) and
``"loki-small-data"`` (CNN image tower + gene-bag text tower, for training from scratch on a few thousand
pairs), all behind the same :class:`OmiCLIP` interface.
"""

from ._finetune import (
    TINY_PATCH_UM,
    TINY_RECIPE,
    contrastive_loss,
    finetune,
    read_training_checkpoint,
    train_tiny,
)
from ._loading import UntrustedCheckpointError, convert_to_safetensors, load, read_checkpoint
from ._omiclip import OmiCLIP
from ._registry import loki_configs, register_configs
from ._small import SMALL_ARCHS
from ._tokenize import CachedTokenizer, tokenizer_fingerprint

__all__ = [
    "SMALL_ARCHS",
    "TINY_PATCH_UM",
    "TINY_RECIPE",
    "CachedTokenizer",
    "OmiCLIP",
    "UntrustedCheckpointError",
    "contrastive_loss",
    "convert_to_safetensors",
    "finetune",
    "load",
    "loki_configs",
    "read_checkpoint",
    "read_training_checkpoint",
    "register_configs",
    "tokenizer_fingerprint",
    "train_tiny",
]
