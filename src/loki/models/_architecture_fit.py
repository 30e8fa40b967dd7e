"""Which architectures a checkpoint's weights fit, told from their shapes without building models.

A checkpoint loaded under the wrong architecture fails with a list of mismatched keys;
:func:`architecture_hint` adds the sentence that names the architectures whose open_clip configs
(loki's included) give the same sizes, so the error can say which ``arch=`` to pass.
"""

from __future__ import annotations

from ._architectures import architecture_shapes
from ._registry import DEFAULT_ARCH, register_configs
from ._small import SMALL_ARCHS


def architecture_hint(shapes: dict[str, tuple[int, ...]], tried: str | None) -> str:
    """The sentence of a key-mismatch error that says which architecture the weights fit."""
    fits = fitting_architectures(shapes)
    others = [name for name in fits if name != tried]
    if others:
        listed = ", ".join(repr(n) for n in others[:6]) + (", ..." if len(others) > 6 else "")
        several = (
            " (they share these shapes but can compute differently: take the one the weights were "
            "trained with)"
            if len(others) > 1
            else ""
        )
        timm = (
            " (its image tower is a timm model, whose sizes are not compared)"
            if shape_signature(shapes).get("vision") == "timm"
            else ""
        )
        return f"Its shapes fit the config of {listed}{several}{timm}: pass arch={others[0]!r}."
    if fits:  # only the architecture tried
        return (
            f"Its sizes (widths, layers, patch, image and embedding size, context, vocabulary) are those "
            f"of {tried!r}: the keys above differ from its own (missing, renamed or reshaped), which "
            "another architecture would not explain."
        )
    return (
        "Its shapes fit none of open_clip's known configs (open_clip.list_models(), loki's included) "
        "nor loki's own architectures: it may be another library's model, or need a config registered "
        f"with open_clip.add_model_config. Pass the right arch= (the published OmiCLIP is {DEFAULT_ARCH!r})."
    )


def _dim(shapes: dict[str, tuple[int, ...]], key: str, axis: int) -> int | None:
    """``shapes[key][axis]``, or None when there is no such key or axis."""
    shape = shapes.get(key)
    return shape[axis] if shape is not None and len(shape) > axis else None


def _blocks(shapes: dict[str, tuple[int, ...]], prefix: str) -> int | None:
    """Number of numbered blocks ``prefix0.``, ``prefix1.``, ... among the keys, or None when none."""
    found = {k[len(prefix) :].split(".", 1)[0] for k in shapes if k.startswith(prefix)}
    return len(found) or None


def shape_signature(shapes: dict[str, tuple[int, ...]]) -> dict:
    """The sizes that tell open_clip architectures apart, read from the shapes of a state dict.

    Where the text tower sits (``text.`` in CoCa and custom-text CLIP, the top level in CLIP), its
    vocabulary, width, layers, positions and MLP width; the kind of image tower (ViT, ResNet, timm)
    and, for ViT and ResNet, its width, layers, positions (patch and image size), MLP width; the
    embedding size; the CoCa decoder's layers and width. None where the state dict has no such part.
    """
    text = next((p for p in ("text.", "") if f"{p}token_embedding.weight" in shapes), None)
    sig: dict = {"text": text}
    if text is not None:
        block = f"{text}transformer.resblocks.0.mlp.c_fc.weight"
        sig.update(
            vocab=_dim(shapes, f"{text}token_embedding.weight", 0),
            text_width=_dim(shapes, f"{text}token_embedding.weight", 1),
            text_layers=_blocks(shapes, f"{text}transformer.resblocks."),
            text_positions=_dim(shapes, f"{text}positional_embedding", 0),
            text_mlp=_dim(shapes, block, 0),
        )
    embed = (
        _dim(shapes, f"{text}text_projection", 1)
        or _dim(shapes, f"{text}text_projection.weight", 0)
        or _dim(shapes, "visual.proj", 1)
        or _dim(shapes, "visual.attnpool.c_proj.weight", 0)
    )
    sig["embed_dim"] = embed
    if _blocks(shapes, "visual.transformer.resblocks."):
        sig.update(
            vision="vit",
            vision_width=_dim(shapes, "visual.conv1.weight", 0),
            patch=_dim(shapes, "visual.conv1.weight", 2),
            vision_layers=_blocks(shapes, "visual.transformer.resblocks."),
            vision_positions=_dim(shapes, "visual.positional_embedding", 0),
            vision_mlp=_dim(shapes, "visual.transformer.resblocks.0.mlp.c_fc.weight", 0),
        )
    elif _blocks(shapes, "visual.layer1."):
        stem = _dim(shapes, "visual.conv1.weight", 0)
        sig.update(
            vision="resnet",
            vision_width=2 * stem if stem else None,  # the stem's first conv has half the width
            vision_layers=[_blocks(shapes, f"visual.layer{i}.") for i in range(1, 5)],
            vision_positions=_dim(shapes, "visual.attnpool.positional_embedding", 0),
        )
    elif any(k.startswith("visual.trunk.") for k in shapes):
        sig["vision"] = "timm"
    else:
        sig["vision"] = None
    layers = _blocks(shapes, "text_decoder.resblocks.")
    if layers:
        sig.update(
            decoder_layers=layers, decoder_width=_dim(shapes, "text_decoder.resblocks.0.ln_1.weight", 0)
        )
    return sig


def config_signature(config: dict) -> dict | None:
    """:func:`shape_signature` of the model an open_clip config builds, from the config alone.

    None for configs loki cannot use (a Hugging Face text tower).
    """
    from open_clip.coca_model import MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    text = {**vars(CLIPTextCfg()), **config.get("text_cfg", {})}
    vision = {**vars(CLIPVisionCfg()), **config.get("vision_cfg", {})}
    if text["hf_model_name"] or text["hf_tokenizer_name"]:
        return None
    custom = "multimodal_cfg" in config or bool(config.get("custom_text"))
    sig: dict = {
        "text": "text." if custom else "",
        "vocab": text["vocab_size"],
        "text_width": text["width"],
        "text_layers": text["layers"],
        "text_positions": text["context_length"] + (1 if text["embed_cls"] else 0),
        "text_mlp": int(text["width"] * text["mlp_ratio"]),
        "embed_dim": config["embed_dim"],
    }

    def pair(value):
        return tuple(value) if isinstance(value, list | tuple) else (value, value)

    if vision["timm_model_name"]:
        sig["vision"] = "timm"
    elif isinstance(vision["layers"], list | tuple):
        side = pair(vision["image_size"])[0] // 32  # ModifiedResNet: 32 times smaller
        sig.update(
            vision="resnet",
            vision_width=vision["width"],
            vision_layers=list(vision["layers"]),
            vision_positions=side * side + 1,
        )
    else:
        (height, width), (patch_h, patch_w) = pair(vision["image_size"]), pair(vision["patch_size"])
        sig.update(
            vision="vit",
            vision_width=vision["width"],
            patch=patch_h,
            vision_layers=vision["layers"],
            vision_positions=(height // patch_h) * (width // patch_w) + 1,  # + the class token
            vision_mlp=int(vision["width"] * vision["mlp_ratio"]),
        )
    if "multimodal_cfg" in config:
        decoder = {**vars(MultimodalCfg()), **config["multimodal_cfg"]}
        sig.update(decoder_layers=decoder["layers"], decoder_width=decoder["width"])
    return sig


def fitting_architectures(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Architectures whose state dict has the sizes of ``shapes`` (parameter name -> shape).

    open_clip's configs (loki's included) are compared by the sizes :func:`shape_signature` reads
    (widths, layers, patch and image size, context, vocabulary, embedding size), computed from the
    configs without building a model; :data:`~loki.models.SMALL_ARCHS` by all their shapes. Takes
    some milliseconds. Architectures with the same shapes can still compute differently (e.g.
    ``ViT-B-32`` and ``ViT-B-32-quickgelu``): all of them are returned, in open_clip's order.
    """
    import open_clip

    register_configs()
    sig = shape_signature(shapes)
    fits = []
    for name in open_clip.list_models():
        try:
            config_sig = config_signature(open_clip.get_model_config(name) or {})
        except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a config loki cannot read
            continue
        if config_sig == sig:
            fits.append(name)
    fits += [name for name in SMALL_ARCHS if architecture_shapes(name) == shapes]  # built on meta: ms
    return fits
