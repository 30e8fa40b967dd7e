"""What a fine-tuning run trains: frozen prefixes, AdamW's parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

FREEZE_GROUPS = {"image": ("visual.",), "text": ("text.",)}
#: The text tower of a plain open_clip ``CLIP`` model, whose parameters sit on the model itself.
CLIP_TEXT_PREFIXES = (
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
)


def _frozen_prefixes(freeze, net) -> tuple[str, ...]:
    """The parameter-name prefixes ``freeze=`` names, its groups expanded for ``net``.

    Parameters
    ----------
    freeze
        ``None``, a group name (``"image"``, ``"text"``) or a list of prefixes and group names.
    net
        The open_clip module; a plain ``CLIP`` (no ``text`` submodule) has its text tower on itself.

    Returns
    -------
    The prefixes, ``()`` for ``None``.

    """
    if freeze is None:
        return ()
    groups = FREEZE_GROUPS if hasattr(net, "text") else {**FREEZE_GROUPS, "text": CLIP_TEXT_PREFIXES}
    if isinstance(freeze, str):
        if freeze not in groups:
            raise ValueError(
                f"freeze must be None, 'image', 'text' or a list of parameter prefixes, got {freeze!r}"
            )
        return groups[freeze]
    bad = [f for f in freeze if not isinstance(f, str)]
    if bad:
        raise ValueError(f"freeze prefixes must be strings, got {bad[0]!r}")
    return tuple(prefix for f in freeze for prefix in groups.get(f, (f,)))


def trainable_names(net, freeze) -> set[str]:
    """Names of the parameters to train; the model is not touched."""
    prefixes = _frozen_prefixes(freeze, net)
    names = [name for name, _ in net.named_parameters()]
    unmatched = [p for p in prefixes if not any(name.startswith(p) for name in names)]
    if unmatched:
        tops = sorted({name.split(".")[0] + ("." if "." in name else "") for name in names})
        raise ValueError(
            f"freeze prefix {unmatched[0]!r} matches no parameter; groups: {list(FREEZE_GROUPS)}, "
            f"top-level prefixes: {tops}"
        )
    # The captioning decoder takes no part in the contrastive loss; parameters the caller froze stay so.
    frozen = (*prefixes, "text_decoder.")
    trainable = {
        name for name, p in net.named_parameters() if p.requires_grad and not name.startswith(frozen)
    }
    if not trainable:
        raise ValueError(
            f"freeze={freeze!r} leaves nothing to train (parameters the caller froze count as frozen)"
        )
    return trainable


def param_groups(net, trainable: set[str], weight_decay: float) -> list[dict]:
    """AdamW groups as in open_clip's training.

    Decay on weight matrices and embeddings (ndim >= 2); none on biases, norms, class tokens and the
    logit scale (ndim < 2).
    """
    named = [(name, p) for name, p in net.named_parameters() if name in trainable]
    return [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]


def set_trainable(net, trainable: set[str]) -> None:
    """Set ``requires_grad`` from ``trainable``; fully frozen modules go to eval mode.

    Eval mode keeps a frozen tower frozen: its BatchNorm statistics are not updated and its dropout is off.
    """
    for name, p in net.named_parameters():
        p.requires_grad_(name in trainable)
    net.train()
    for module in net.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Factor of the peak learning rate at ``step`` (from 0): linear warm-up, then cosine decay to 0.

    Parameters
    ----------
    step
        Steps taken before this one.
    total
        Steps of the whole run.
    warmup
        Steps of warm-up.

    Returns
    -------
    The factor, in ``(0, 1]``.

    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
