"""``loki-small-data``: light towers for training from scratch on a few thousand pairs.

A small CNN image tower and a gene-bag text tower (rank-weighted sum of token embeddings), behind the
same interface as open_clip's CoCa (``encode_image``, ``encode_text``, ``logit_scale``, ``visual``,
``text.text_projection``), so :class:`~loki.models.OmiCLIP`, fine-tuning, saving and loading work unchanged.
The standard CLIP tokenizer (49408 tokens, 76-token context) is kept: gene sentences are tokenised exactly
as for OmiCLIP.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: Architectures implemented here (not open_clip configs), with their hyper-parameters.
SMALL_ARCHS = {
    "loki-small-data": {
        "embed_dim": 128,
        "image_size": 32,
        "channels": (32, 64, 128, 128),
        "vocab_size": 49408,
        "context_length": 76,
        "text_width": 128,
    }
}


class CNNTower(nn.Module):
    """Conv-BN-ReLU blocks (stride 2 after the first), global average pooling, linear projection."""

    def __init__(self, embed_dim: int, image_size: int, channels=(32, 64, 128, 128)):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(channels):
            layers += [
                nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, embed_dim)
        self.image_size = image_size
        self.image_mean = OPENAI_MEAN
        self.image_std = OPENAI_STD

    def forward(self, x):
        return self.proj(self.features(x).mean(dim=(2, 3)))


class GeneBagTower(nn.Module):
    """Sum of token embeddings weighted by a learned function of their position (the gene's rank)."""

    def __init__(self, embed_dim: int, vocab_size: int, context_length: int, width: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width, padding_idx=0)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.position_weight = nn.Parameter(torch.zeros(context_length))
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) / math.sqrt(width))

    def forward(self, tokens):
        valid = (tokens > 0).float()
        # sot/eot are shared by every sentence and carry no information
        valid = valid * (tokens < 49406).float()
        w = torch.softmax(self.position_weight, 0)[: tokens.shape[1]] * valid
        w = w / w.sum(1, keepdim=True).clamp_min(1e-6)
        x = (self.token_embedding(tokens) * w.unsqueeze(-1)).sum(1)
        return self.mlp(x) @ self.text_projection


class SmallDataCLIP(nn.Module):
    """Dual encoder with :class:`CNNTower` and :class:`GeneBagTower` and a learnable logit scale."""

    def __init__(self, embed_dim, image_size, channels, vocab_size, context_length, text_width):
        super().__init__()
        self.visual = CNNTower(embed_dim, image_size, channels)
        self.text = GeneBagTower(embed_dim, vocab_size, context_length, text_width)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.context_length = context_length

    def encode_image(self, images, normalize: bool = False):
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text, normalize: bool = False):
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x


def create_small(arch: str) -> SmallDataCLIP:
    """Build a randomly initialised :data:`SMALL_ARCHS` model."""
    cfg = SMALL_ARCHS[arch]
    return SmallDataCLIP(
        cfg["embed_dim"],
        cfg["image_size"],
        cfg["channels"],
        cfg["vocab_size"],
        cfg["context_length"],
        cfg["text_width"],
    )
