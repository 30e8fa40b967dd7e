"""Inference forward of open_clip's CoCa text tower for unpadded token rows.

open_clip builds an additive mask of shape ``(batch * heads, 77, 77)`` for every batch (causal part,
padding keys, class token) and runs the attention with it. Gene sentences of 50 symbols overflow the
76-token context (it holds about their first 23 symbols), so their rows hold no padding, the padding
part of the mask is zero, and the mask is purely causal. The forward here then

- runs each block's attention as causal ``scaled_dot_product_attention`` (flash attention on CUDA, no
  mask tensor), and
- in the last block computes only the class token, the one position the text embedding reads (its keys
  and values still come from every position).

The result equals open_clip's ``encode_text`` (tests compare the two); rows holding the padding id
(shorter sentences) go through open_clip's own forward.
"""

from __future__ import annotations

import numpy as np


def supports_causal_forward(model) -> bool:
    """Whether ``model.text`` is the open_clip CoCa text tower this forward reproduces."""
    from open_clip.transformer import ResidualAttentionBlock, TextTransformer
    from torch import nn

    text = getattr(model, "text", None)
    if not isinstance(text, TextTransformer) or text.cls_emb is None or text.attn_mask is None:
        return False
    tower = text.transformer
    if not tower.batch_first or tower.grad_checkpointing or text.text_projection is None:
        return False
    for block in tower.resblocks:
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first or attn.in_proj_weight is None:
            return False
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            return False
    return True


def encode_text(model, ids: np.ndarray, tokens, causal: bool):
    """Un-normalised text embeddings of a batch, by the causal forward wherever a row allows it.

    Parameters
    ----------
    model
        An open_clip-style model with ``encode_text``.
    ids
        ``(batch, context_length)`` token ids on the host (read to find padded rows without a device sync).
    tokens
        The same ids as a tensor on the model's device.
    causal
        Whether :func:`supports_causal_forward` holds for ``model``.

    """
    if not causal:
        return model.encode_text(tokens, normalize=False)
    padded = (ids == model.text.pad_id).any(axis=1)
    if not padded.any():
        return encode_text_causal(model, tokens)
    if padded.all():
        return model.encode_text(tokens, normalize=False)
    import torch

    plain = torch.from_numpy(np.flatnonzero(~padded)).to(tokens.device)
    masked = torch.from_numpy(np.flatnonzero(padded)).to(tokens.device)
    fast = encode_text_causal(model, tokens[plain])
    out = fast.new_empty((len(ids), fast.shape[1]))
    out[plain] = fast
    out[masked] = model.encode_text(tokens[masked], normalize=False).to(fast.dtype)
    return out


def _attention(attn, h, query_last_only: bool):
    import torch.nn.functional as F

    b, n, e = h.shape
    heads = attn.num_heads
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    kv = F.linear(h, w[e:], None if bias is None else bias[e:])
    k, v = kv.view(b, n, 2, heads, e // heads).permute(2, 0, 3, 1, 4)
    hq = h[:, -1:] if query_last_only else h
    q = F.linear(hq, w[:e], None if bias is None else bias[:e])
    q = q.view(b, hq.shape[1], heads, e // heads).transpose(1, 2)
    # a lone query is the class token, the last position: it sees every key, so it takes no mask
    # (is_causal would align the mask top-left and leave it only the first key)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=not query_last_only)
    return attn.out_proj(out.transpose(1, 2).reshape(b, out.shape[2], e))


def encode_text_causal(model, tokens):
    """Un-normalised text embeddings of token rows without padding, as open_clip's ``encode_text``.

    Parameters
    ----------
    model
        An open_clip CoCa model for which :func:`supports_causal_forward` holds.
    tokens
        ``(batch, context_length)`` long tensor on the model's device, no padding ids.

    Returns
    -------
    ``(batch, embed_dim)`` tensor.

    """
    import torch

    text = model.text
    dtype = text.transformer.get_cast_dtype()
    x = text.token_embedding(tokens).to(dtype)
    cls = text.cls_emb.to(dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([x, cls], dim=1)
    x = x + text.positional_embedding[: x.shape[1]].to(dtype)
    *blocks, last = text.transformer.resblocks
    for block in blocks:
        x = x + _attention(block.attn, block.ln_1(x), query_last_only=False)
        x = x + block.mlp(block.ln_2(x))
    x = x[:, -1:] + _attention(last.attn, last.ln_1(x), query_last_only=True)
    x = x + last.mlp(last.ln_2(x))
    pooled = text.ln_final(x[:, 0])
    proj = text.text_projection
    return proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
