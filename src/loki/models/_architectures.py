"""Architecture names: which loki can use, and the shapes of the weights each one holds."""

from __future__ import annotations

from ._open_clip_logging import quiet_open_clip
from ._registry import DEFAULT_ARCH, is_known_arch
from ._small import SMALL_ARCHS


def check_arch(arch: str) -> None:
    """Raise a ValueError for a name that is no architecture, or one whose text tower loki cannot use.

    loki tokenises with open_clip's CLIP tokenizer (:class:`~loki.models.CachedTokenizer`), so it
    supports :data:`~loki.models.SMALL_ARCHS` and the open_clip architectures with open_clip's own
    text transformer (CoCa, CLIP and custom-text CLIP: ``coca_ViT-L-14``, ``loki-tiny``, ``ViT-B-32``,
    ``RN50``, ...), not those with a Hugging Face text model or tokenizer (SigLIP, CLIPA, mt5, ...).
    """
    if arch not in SMALL_ARCHS and not is_known_arch(arch):
        raise ValueError(
            f"unknown architecture {arch!r}; known: {', '.join(SMALL_ARCHS)}, loki-tiny, {DEFAULT_ARCH}, "
            "... (open_clip.list_models())"
        )
    hf_text = _hf_text_tower(arch)
    if hf_text is not None:
        raise ValueError(
            f"architecture {arch!r} encodes text with the Hugging Face model/tokenizer {hf_text!r}, which "
            "loki does not support: loki tokenises gene sentences with open_clip's CLIP tokenizer. "
            f"Supported: {', '.join(SMALL_ARCHS)} and open_clip architectures with open_clip's own text "
            f"transformer (CoCa such as loki-tiny and {DEFAULT_ARCH}, or CLIP such as ViT-B-32 and RN50)."
        )


def _hf_text_tower(arch: str) -> str | None:
    """Name of the Hugging Face text model or tokenizer of an open_clip architecture, or None."""
    if arch in SMALL_ARCHS:
        return None
    import open_clip

    text_cfg = (open_clip.get_model_config(arch) or {}).get("text_cfg", {})
    return text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")


def architecture_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict of ``arch``, from a model built on the meta device (no memory)."""
    import open_clip
    import torch

    from ._small import create_small

    check_arch(arch)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        if arch in SMALL_ARCHS:
            model = create_small(arch)
        else:
            with quiet_open_clip():
                model = open_clip.create_model(arch, pretrained=None, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
