"""Weights files from the Hugging Face Hub, or from its local cache when the Hub cannot be reached.

:func:`download` fetches one file with errors that say what to do (no access, no network);
:func:`default_file` picks the weights of a repository named without a file (the published
OmiCLIP's ``checkpoint.pt``, else open_clip's files, with the architecture its config names).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlparse

from loki._logging import logger

from ._checkpoint_files import WEIGHT_SUFFIXES, first_line
from ._registry import register_configs


def host_resolves() -> bool:
    """Whether the Hugging Face Hub's host name resolves (``False`` without DNS: no network at all).

    With ``HF_HUB_OFFLINE`` set the Hub is never contacted, and behind an HTTPS proxy the proxy resolves
    the name (clusters often have no DNS of their own), so in both cases this says ``True`` and leaves
    it to huggingface_hub.
    """
    from urllib.request import getproxies, proxy_bypass

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    if constants.HF_HUB_OFFLINE or not host:
        return True
    proxies = getproxies()
    if (proxies.get("https") or proxies.get("all")) and not proxy_bypass(host):
        return True
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def download(repo_id: str, filename: str, token: str | None) -> Path:
    """Path of ``filename`` of the Hugging Face repository ``repo_id``, downloaded or from the local cache.

    When the Hub's host name does not resolve (a machine without network, such as many compute nodes),
    only the local cache is looked at: huggingface_hub would otherwise retry for about 25 s before
    falling back to it. huggingface_hub's errors for a Hub it cannot reach (no network, or
    ``HF_HUB_OFFLINE`` set and the file not cached) become a ``ConnectionError``, and those for a
    gated, private or unknown repository (HTTP 401/403) a ``PermissionError``, each saying what to do.
    Other errors pass unchanged.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
        )
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("loading from the Hugging Face hub needs `pip install huggingface_hub`") from err
    where = f"{filename!r} of the Hugging Face repository {repo_id!r}"
    elsewhere = (
        f"download it where the Hub is reachable (e.g. `hf download {repo_id} {filename}`) and pass its "
        f"local path: lk.models.load(Path('.../{Path(filename).name}'))"
    )
    cache_only = not host_resolves()
    if cache_only:
        logger.info(
            "the Hugging Face Hub's host does not resolve (no network?): looking in the local cache only"
        )
    try:
        return Path(
            hf_hub_download(repo_id=repo_id, filename=filename, token=token, local_files_only=cache_only)
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if not (isinstance(err, GatedRepoError) or status in (401, 403)):
            raise
        # the Hub answers 401 for a repository that does not exist as for a private one
        unknown = isinstance(err, RepositoryNotFoundError) and not isinstance(err, GatedRepoError)
        raise PermissionError(
            f"no access to {where} (HTTP {status}): "
            f"{'it does not exist (check the name) or is private' if unknown else 'it is gated or private'}. "
            "If it is gated, accept its terms at "
            f"https://huggingface.co/{repo_id} while logged in and pass token= (an access token with "
            f"read permission, from https://huggingface.co/settings/tokens), or {elsewhere}."
        ) from err
    except (LocalEntryNotFoundError, ConnectionError, TimeoutError) as err:
        if isinstance(err, OfflineModeIsEnabled) or isinstance(err.__cause__, OfflineModeIsEnabled):
            problem = f"HF_HUB_OFFLINE is set and {where} is not in the local Hugging Face cache"
        elif cache_only:
            problem = (
                f"the Hugging Face Hub's host name does not resolve (no network?), and {where} is not in "
                "the local Hugging Face cache"
            )
        else:
            problem = (
                f"the Hugging Face Hub could not be reached for {where}, and the file is not in the "
                "local Hugging Face cache"
            )
        raise ConnectionError(
            f"{problem}. Without network access, {elsewhere}. Once the file is in the cache, set the "
            "environment variable HF_HUB_OFFLINE=1 before starting Python to load it without "
            "contacting the Hub (and without huggingface_hub's retries)."
        ) from err


#: Files :func:`load` looks for, first found first, in a Hugging Face repository named without a file
#: (``hf-hub:org/repo``): the published OmiCLIP's, then open_clip's (``open_clip.push_to_hf_hub``;
#: safetensors first, as it needs no unpickling).
WEIGHTS_FILES = ("checkpoint.pt", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")

#: The architecture config open_clip pushes next to its weights (``{"model_cfg": ..., ...}``).
OPEN_CLIP_CONFIG = "open_clip_config.json"


def cached_files(repo_id: str) -> tuple[Path, list[str]] | None:
    """The snapshot folder of ``repo_id``'s main revision in the local Hugging Face cache, and its files.

    None when the repository is not in the cache. Files are paths relative to the folder; links whose
    blob is missing (an interrupted download) are left out.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    try:
        revision = (root / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = root / "snapshots" / revision
    if not revision or not snapshot.is_dir():
        return None
    return snapshot, sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def repo_files(repo_id: str, token: str | None) -> tuple[str, list[str]] | None:
    """Where the file list of ``repo_id`` comes from, and the list: the Hub's, else the local cache's.

    The Hub is asked (``huggingface_hub.list_repo_files``) unless it cannot be reached (no DNS,
    ``HF_HUB_OFFLINE``); when it is not asked or does not answer (no network, a gated or unknown
    repository), the files of the cached snapshot are listed. None when neither lists any.
    """
    import huggingface_hub
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and host_resolves():
        try:
            return "the Hub", sorted(huggingface_hub.list_repo_files(repo_id, token=token))
        except Exception as err:  # any failure: fall back to the cache, then checkpoint.pt
            logger.info("could not list the files of %s on the Hub (%s)", repo_id, first_line(err))
    cached = cached_files(repo_id)
    if cached is None:
        return None
    snapshot, files = cached
    return f"the local Hugging Face cache ({snapshot})", files


def default_file(repo_id: str, token: str | None, *, arch_wanted: bool = True) -> tuple[Path, str | None]:
    """The weights file :func:`load` reads for ``hf-hub:<repo_id>``, and the architecture its repo names.

    The first of :data:`WEIGHTS_FILES` among the repository's files (:func:`repo_files`) is
    downloaded. For open_clip's files, the architecture is the open_clip config equal to the
    ``model_cfg`` of the repository's ``open_clip_config.json`` (None when there is none, it cannot be
    read or no config equals it; not fetched unless ``arch_wanted``). When the files cannot be listed, ``checkpoint.pt`` is asked for, so
    that the Hub's answer (no access, no network) is what the error says.
    """
    listed = repo_files(repo_id, token)
    if listed is None:
        return download(repo_id, WEIGHTS_FILES[0], token), None
    where, files = listed
    chosen = next((f for f in WEIGHTS_FILES if f in files), None)
    if chosen is None:
        shown = ", ".join(files[:12]) + (f", ... ({len(files)} files)" if len(files) > 12 else "")
        weights = [f for f in files if Path(f).suffix in WEIGHT_SUFFIXES]
        raise FileNotFoundError(
            f"the Hugging Face repository {repo_id!r} holds none of the weights files loaded by default "
            f"({', '.join(WEIGHTS_FILES)}); files listed by {where}: {shown or 'none'}. Name the "
            f"file to load: lk.models.load('hf-hub:{repo_id}/{weights[0] if weights else '<file>'}')."
        )
    path = download(repo_id, chosen, token)
    if not arch_wanted or chosen == WEIGHTS_FILES[0] or OPEN_CLIP_CONFIG not in files:
        return path, None
    return path, config_arch(repo_id, token)


def config_arch(repo_id: str, token: str | None) -> str | None:
    """The open_clip architecture whose config is the ``model_cfg`` of ``repo_id``'s open_clip config.

    None (logged) when the file cannot be fetched or read, or no registered config equals it; the
    weights are then checked against the default architecture, whose error names those they fit.
    """
    import open_clip

    try:
        config = json.loads(download(repo_id, OPEN_CLIP_CONFIG, token).read_text())
        model_cfg = json.loads(json.dumps(config["model_cfg"]))
    except Exception as err:  # optional: the weights' check names their architecture
        logger.info("ignoring %s of %s: %s", OPEN_CLIP_CONFIG, repo_id, first_line(err))
        return None
    register_configs()
    same = [
        name
        for name in open_clip.list_models()
        if json.loads(json.dumps(open_clip.get_model_config(name) or {})) == model_cfg
    ]
    if not same:
        logger.info(
            "the model_cfg of %s in %s is none of open_clip's configs: not used",
            OPEN_CLIP_CONFIG,
            repo_id,
        )
        return None
    logger.info("%s of %s names architecture %r", OPEN_CLIP_CONFIG, repo_id, same[0])
    return same[0]
