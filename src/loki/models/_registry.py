"""Model names known to loki, and registration of loki's own open_clip configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class PublishedModel:
    """A model whose weights are published on the Hugging Face hub."""

    arch: str
    repo_id: str
    filename: str


#: Names accepted by :func:`loki.models.load` besides paths and ``hf-hub:`` ids.
PUBLISHED: dict[str, PublishedModel] = {
    "omiclip": PublishedModel(arch="coca_ViT-L-14", repo_id="WangGuangyuLab/Loki", filename="checkpoint.pt"),
}

#: Default architecture of a bare checkpoint (the published OmiCLIP is ``coca_ViT-L-14``).
DEFAULT_ARCH = "coca_ViT-L-14"

_registered = False


def register_configs() -> None:
    """Make loki's JSON configs (e.g. ``loki-tiny``) known to open_clip.

    Adds :data:`CONFIG_DIR` to open_clip's config search path once; open_clip's own files are untouched.
    """
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def loki_configs() -> list[str]:
    """Names of the open_clip JSON configs shipped with loki (e.g. ``loki-tiny``).

    The light architectures implemented in loki itself (``loki-small-data``) are the keys of
    :data:`loki.models.SMALL_ARCHS`; :func:`loki.models.load` accepts both.

    Returns
    -------
    The config names (file stems of ``CONFIG_DIR/*.json``), sorted.

    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def is_known_arch(name: str) -> bool:
    """Whether ``name`` is an open_clip architecture (after registering loki's configs)."""
    import open_clip

    register_configs()
    return name in open_clip.list_models()
