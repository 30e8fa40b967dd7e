"""Load OmiCLIP / loki models from names, local files, safetensors or the Hugging Face hub."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import time
import warnings
from pathlib import Path

from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import as_seed

from . import _hub
from ._architecture_fit import architecture_hint
from ._architectures import architecture_shapes, check_arch
from ._checkpoint_files import WEIGHT_SUFFIXES, first_line
from ._omiclip import META_FILE, PRECISIONS, WEIGHTS_FILE, OmiCLIP, check_patch_um, resolve_device
from ._open_clip_logging import quiet_open_clip
from ._registry import DEFAULT_ARCH, PUBLISHED, is_known_arch, loki_configs, register_configs
from ._small import SMALL_ARCHS
from ._tokenize import fingerprint_changes

HF_PREFIX = "hf-hub:"


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint needs full unpickling (arbitrary code execution) and was not trusted explicitly."""


#: Digests :func:`file_sha256` has computed in this process, by :func:`_file_identity`.
_SHA256_MEMO: dict[tuple, str] = {}

#: Files modified less than this (ns) before :func:`file_sha256` reads them are hashed on every call.
_RACY_NS = 2_000_000_000


def _file_identity(path: Path) -> tuple:
    """The resolved path, device, inode, size, modification and status-change times (ns) of a file.

    The key of its content. The status-change time (ctime) is set by the system at every write and
    every change of the modification time, so a rewrite that keeps size and modification time
    (``cp -p``, ``rsync -t --inplace``, ``touch -r``) still changes the key.
    """
    st = path.stat()
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(path: Path, chunk: int) -> str:
    """sha256 of a file, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file, read in chunks, and read only once per process while the file is unchanged.

    The digest is remembered by the file's resolved path, device, inode, size, modification and
    status-change times (ns; :func:`_file_identity`): loading the same file again (the published ``checkpoint.pt`` is ~7 GB) does not read it
    again, and a file rewritten or replaced since is read anew. A file modified in the last
    :data:`_RACY_NS` before it was read, or while it was read, is not remembered: file systems
    record modification times in coarse ticks, so a rewrite of the same size right after could keep
    its time.
    """
    path = Path(path).expanduser().resolve()
    key = _file_identity(path)
    digest = _SHA256_MEMO.get(key)
    if digest is None:
        started = time.time_ns()
        digest = _hash_file(path, chunk)
        if started - key[4] > _RACY_NS and _file_identity(path) == key:  # key[4]: modification time
            _SHA256_MEMO[key] = digest
    return digest


def extract_state_dict(obj) -> dict:
    """The state dict inside an open_clip checkpoint.

    Accepts ``{'state_dict': ...}`` (open_clip's training checkpoints), ``{'model': ...}`` and bare
    state dicts; strips a ``module.`` prefix (DistributedDataParallel).
    """
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"checkpoint holds no state dict (got {type(obj).__name__})")
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` holds safetensors: an 8-byte little-endian header length, then a JSON object."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive (the format of ``torch.save`` since torch 1.6)."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _pickled(path: Path) -> bool:
    """Whether ``path`` starts like a torch file: a zip archive (torch.save) or a pickle (protocol 2-5)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def read_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> dict:
    """Read a state dict from a safetensors or a torch file.

    Safetensors files are recognised by their header, whatever their suffix. Torch files are first read
    with ``torch.load(weights_only=True)``, which cannot run code. Files it refuses (they store other
    Python objects, e.g. training arguments, or use a pickle feature it does not support) are read only
    with ``trust_checkpoint=True``; files that are not torch files at all, or that no reader can read
    (truncated, another format), raise a ``ValueError``.

    Parameters
    ----------
    path
        Checkpoint file (``~`` is expanded).
    trust_checkpoint
        Allow full unpickling (``torch.load(weights_only=False)``, which can run code stored in the
        file) of a torch file that the safe reader refuses; a warning is logged when it is used.

    Returns
    -------
    The state dict (parameter name -> tensor, on the CPU, in memory), taken from a ``state_dict``, ``model`` or
    ``model_state_dict`` entry when the file holds one, without a ``module.`` prefix.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    UntrustedCheckpointError
        The file needs full unpickling and ``trust_checkpoint`` is False.
    ValueError
        The file is unreadable or holds no state dict.

    """
    state, mapped = _read_state(path, trust_checkpoint=trust_checkpoint)
    # the tensors of a memory-mapped file stay tied to it: give the caller copies of its own
    return {k: v.clone() for k, v in state.items()} if mapped else state


def _read_state(path: str | Path, *, trust_checkpoint: bool) -> tuple[dict, bool]:
    """:func:`read_checkpoint`, and whether the tensors are memory-mapped from the file (zip archives).

    Mapped tensors are read from the file only when used, and only those of the state dict are: an
    optimizer's state next to it (twice the weights' size in the ~7 GB published ``checkpoint.pt``)
    never fills memory. They stay tied to the file: copy them before it can change.
    """
    import pickle

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {str(path)!r}.")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), False
        except Exception as err:
            raise _unreadable(path, err) from err
    mmap = _is_zip(path)  # torch.save's format: memory-mapped (a refused safe read costs no memory either)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        if not (isinstance(err, pickle.UnpicklingError) and _pickled(path)):
            raise _unreadable(path, err) from err
        if not trust_checkpoint:
            raise UntrustedCheckpointError(
                f"{path} cannot be read with torch.load(weights_only=True) ({first_line(err)}). "
                "Reading it needs full unpickling, which can run "
                "arbitrary code stored in the file. If you trust its source (e.g. the published OmiCLIP "
                "checkpoint.pt), pass trust_checkpoint=True, or convert it once with "
                "lk.models.convert_to_safetensors(path, trust_checkpoint=True) and load the .safetensors "
                "file from then on."
            ) from err
        logger.warning("unpickling %s with weights_only=False (trust_checkpoint=True)", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as full_err:
            raise _unreadable(path, full_err) from full_err
    return extract_state_dict(obj), mmap


def _unreadable(path: Path, err: BaseException) -> ValueError:
    """The error for a file no reader can read, saying what it is when it is a known stand-in.

    A Git LFS pointer (a repository cloned without Git LFS) and an HTML page (an error or login page
    saved in place of the file) are named as such; other files get the reader's error.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        size, head = -1, b""
    start = head.lstrip().lower()
    base = f"{path} is not a readable torch or safetensors checkpoint"
    if head.startswith(b"version https://git-lfs"):
        return ValueError(
            f"{base}: it is a Git LFS pointer ({size} bytes), not the weights, as in a repository cloned "
            "without Git LFS. Fetch the file with `git lfs pull` in the clone, or download it with "
            "`hf download <org/repo> <file>`, and load that file."
        )
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return ValueError(
            f"{base}: it is an HTML or XML page ({size} bytes), not the weights (an error or login page "
            "saved in place of the file). Download it again (`hf download <org/repo> <file>`, with an "
            "access token for a gated repository such as WangGuangyuLab/Loki)."
        )
    return ValueError(f"{base} ({size} bytes; truncated download or another format?): {first_line(err)}")


def convert_to_safetensors(
    path: str | Path,
    out: str | Path | None = None,
    *,
    arch: str | None = None,
    trust_checkpoint: bool = False,
) -> Path:
    """Convert a torch checkpoint to safetensors once, so later loads never unpickle.

    Parameters
    ----------
    path
        The ``.pt`` / ``.bin`` checkpoint, or a directory holding it as its only weights file (e.g. a
        downloaded Hugging Face snapshot; :func:`load` then reads the directory through the converted
        copy).
    out
        Output file (default: ``path`` with suffix ``.safetensors``).
    arch
        open_clip architecture of the weights (default: from the loki JSON next to ``path``, as
        :func:`load` reads it, else ``coca_ViT-L-14``). It is stored in the file's metadata and in a JSON
        next to ``out``; an existing JSON there that names another architecture is never overwritten.
    trust_checkpoint
        Allow full unpickling (needed for the published OmiCLIP ``checkpoint.pt`` with open_clip >= 3).

    Returns
    -------
    Path of the ``.safetensors`` file.

    Raises
    ------
    FileExistsError
        When ``out`` exists.
    ValueError
        When the weights do not fit ``arch``, or a JSON :func:`load` would read for ``out`` names another
        architecture; nothing is written then.

    """
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if path.is_dir():
        path = _weights_file_in(path)
    out = Path(out).expanduser() if out is not None else path.with_suffix(".safetensors")
    if out.exists():
        raise FileExistsError(f"{out} exists; pass another out= (nothing was written).")
    meta = _meta_for(path) if path.is_file() else {}
    arch = arch or meta.get("arch") or DEFAULT_ARCH
    check_arch(arch)
    meta_out = out.with_suffix(".json")
    # every JSON load() would read for out (a directory of OmiCLIP.save has loki_model.json)
    for cand in filter(Path.is_file, _meta_files(out)):
        try:
            existing = json.loads(cand.read_text())
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(
                f"{cand} exists and is not valid JSON ({err}); pass another out= (nothing was written)"
            ) from None
        found = existing.get("arch") if isinstance(existing, dict) else None
        if found != arch:
            raise ValueError(
                f"{cand} names arch {found!r}, not {arch!r}; pass the right arch= or another out= "
                "(nothing was written)"
            )
    keep_meta = meta_out.is_file()  # checked above: it names arch
    state, _ = _read_state(path, trust_checkpoint=trust_checkpoint)  # mapped: saved, then dropped
    _check_keys(architecture_shapes(arch), state, source=str(path), arch=arch)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(state, str(out), metadata={"arch": arch})
    if not keep_meta:
        new_meta = {"arch": arch, "name": meta.get("name", path.stem), "trained": meta.get("trained", True)}
        for key in ("patch_um", "tokenizer"):
            if meta.get(key) is not None:
                new_meta[key] = meta[key]
        meta_out.write_text(json.dumps(new_meta))
    logger.info("wrote %s", out)
    return out


def _meta_files(path: Path) -> list[Path]:
    """The loki JSON files :func:`load` reads for a weights file, first found first."""
    candidates = [path.with_suffix(".json")]
    if path.name == WEIGHTS_FILE:
        candidates.insert(0, path.parent / META_FILE)
    return candidates


def _meta_for(path: Path) -> dict:
    """The loki metadata of a weights file.

    That is the JSON next to it (``loki_model.json`` or ``<stem>.json``), else the metadata stored in a
    safetensors file's header (:func:`_header_meta`), else ``{}``. A JSON that is not loki's metadata
    (e.g. a run's training arguments saved as ``run.json`` next to ``run.pt``) is skipped with a
    warning; a safetensors file whose header cannot be read raises the ``ValueError`` of
    :func:`read_checkpoint`.
    """
    for cand in _meta_files(path):
        meta = _loki_json(cand) if cand.is_file() else None
        if meta is not None:
            return meta
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as err:
            raise _unreadable(path, err) from err
        if "arch" in meta:
            return _header_meta(meta, path)
    return {}


def _header_meta(header: dict, path: Path) -> dict:
    """The loki metadata in a safetensors header that names the ``arch``.

    :meth:`OmiCLIP.save` stores the entries of ``loki_model.json`` there as well; a file with only the
    ``arch`` (:func:`convert_to_safetensors`), or whose stored entries are unreadable or name another
    arch, gives ``{"arch": ...}``.
    """
    found = {"arch": header["arch"]}
    stored = header.get(META_FILE)
    if stored is None:
        return found
    try:
        meta = json.loads(stored)
    except ValueError:
        meta = None
    if not (isinstance(meta, dict) and meta.get("arch") == header["arch"]):
        logger.warning("ignoring the unreadable %s entry of the header of %s", META_FILE, path)
        return found
    _check_meta(meta, path)
    return meta


def _loki_json(path: Path) -> dict | None:
    """The loki metadata in the JSON file ``path``, or None (with a warning) when it holds none.

    loki's metadata (written by :meth:`OmiCLIP.save` and :func:`convert_to_safetensors`) is a JSON
    object whose ``arch`` is a string. Its other entries are checked; a wrong one raises a
    ``ValueError`` naming the file.
    """
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        reason = f"it is not valid JSON ({err})"
    else:
        if isinstance(meta, dict) and isinstance(meta.get("arch"), str):
            _check_meta(meta, path)
            return meta
        reason = "it is not a JSON object naming the model's 'arch'"
    logger.warning("ignoring %s: %s, so it is not the model metadata that OmiCLIP.save writes", path, reason)
    return None


def _check_meta(meta: dict, path: Path) -> None:
    """Raise a ValueError naming ``path`` for an entry of loki metadata that :func:`load` cannot use."""
    expected = {"name": str, "trained": bool, "config": dict, "training_runs": list, "tokenizer": dict}
    for key, kind in expected.items():
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise ValueError(
                f"{path}: {key!r} must be a {kind.__name__} or null, got {meta[key]!r}; fix or delete "
                "the file (it is the model's metadata, written by OmiCLIP.save)"
            )
    runs = meta.get("training_runs") or []
    bad = next((run for run in runs if not isinstance(run, dict)), None)
    if bad is not None:
        raise ValueError(
            f"{path}: 'training_runs' must be a list of objects (one per training run), got an item "
            f"{bad!r}; fix or delete the file (it is the model's metadata, written by OmiCLIP.save)"
        )
    try:
        check_patch_um(meta.get("patch_um"))
    except ValueError as err:
        raise ValueError(
            f"{path}: {err}; fix or delete the file (it is the model's metadata, written by OmiCLIP.save)"
        ) from None


def create_architecture(arch: str, *, seed: int | None = None):
    """A randomly initialised open_clip model of architecture ``arch`` (loki configs registered).

    ``seed`` fixes the initialisation; ``None`` draws one from fresh OS entropy. Either way only the
    CPU generator of a local fork is seeded: the global torch RNGs (CPU and CUDA) are neither read nor
    changed.
    """
    import open_clip
    import torch

    from ._small import SMALL_ARCHS, create_small

    seed = as_seed(seed)
    # the model is built on the CPU: seed only the CPU generator (torch.manual_seed would also reseed
    # every CUDA generator, which fork_rng(devices=[]) does not restore)
    if arch in SMALL_ARCHS:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return create_small(arch)
    check_arch(arch)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        with quiet_open_clip():
            model = open_clip.create_model(arch, pretrained=None, device="cpu")
        decoder = getattr(model, "text_decoder", None)
        if decoder is not None and getattr(decoder, "text_projection", None) is not None:
            # open_clip leaves the CoCa decoder's projection uninitialised (torch.empty): fill it so the
            # same seed gives the same weights (and checkpoint hash).
            torch.nn.init.normal_(decoder.text_projection, std=decoder.text_projection.shape[0] ** -0.5)
        return model


def architecture_config(arch: str) -> dict:
    """The config :func:`create_architecture` builds ``arch`` from now, as JSON would read it back.

    open_clip's model config (loki's registered ones included) for open_clip architectures; the
    hyper-parameters of :data:`~loki.models.SMALL_ARCHS` for loki's own.
    """
    import open_clip

    from ._small import SMALL_ARCHS

    register_configs()
    config = SMALL_ARCHS[arch] if arch in SMALL_ARCHS else open_clip.get_model_config(arch)
    return json.loads(json.dumps(config or {}))


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict of dotted keys (``text_cfg.width``)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_ABSENT = "<absent>"


def config_changes(saved: dict, now: dict) -> list[str]:
    """The fields in which two architecture configs differ, as ``"field: saved -> now"`` lines."""
    old, new = _flat(saved), _flat(now)
    fields = sorted(k for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT))
    return [f"{k}: {old.get(k, _ABSENT)!r} -> {new.get(k, _ABSENT)!r}" for k in fields]


def few_changes(changes: list[str], n: int = 8) -> str:
    return "; ".join(changes[:n]) + (f"; ... ({len(changes)} fields in all)" if len(changes) > n else "")


def _check_keys(
    own: dict[str, tuple[int, ...]], state_dict: dict, *, source: str, arch: str | None = None
) -> None:
    """Raise naming a few missing/unexpected/reshaped keys and the counts when ``state_dict`` misfits.

    The error also names the architectures whose configs fit the shapes of ``state_dict``
    (:func:`loki.models._architecture_fit.fitting_architectures`), other than ``arch`` (the one tried), or says that none does.
    """
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k] != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:

        def few(keys):
            return ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")

        raise ValueError(
            f"{source} does not match the model architecture{f' {arch!r}' if arch else ''}: "
            f"{len(missing)} missing keys [{few(missing)}], {len(unexpected)} unexpected keys "
            f"[{few(unexpected)}], {len(wrong)} keys with another shape [{few(wrong)}]. "
            + architecture_hint({k: tuple(v.shape) for k, v in state_dict.items()}, arch)
        )


def load_weights(model, state_dict: dict, *, source: str) -> None:
    """Load ``state_dict`` strictly; on mismatch raise naming a few missing/unexpected keys and the counts."""
    _check_keys({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict, source=source)
    model.load_state_dict(state_dict, strict=True)


def load(
    name_or_path: str | Path = "loki-tiny",
    *,
    arch: str | None = None,
    device: str = "auto",
    trust_checkpoint: bool = False,
    token: str | None = None,
    precision: str = "auto",
    seed: int | None = 0,
) -> OmiCLIP:
    """Load an OmiCLIP model.

    Parameters
    ----------
    name_or_path
        - ``"omiclip"``: the published OmiCLIP (``coca_ViT-L-14``) from the gated Hugging Face repo
          ``WangGuangyuLab/Loki`` (``checkpoint.pt``; accept its terms and pass ``token=``). That file
          is a pickle that ``torch.load(weights_only=True)`` refuses with open_clip >= 3: load it with
          ``trust_checkpoint=True``, or convert it once with :func:`convert_to_safetensors`.
        - ``"hf-hub:org/repo"`` or ``"hf-hub:org/repo/file.pt"``. Without a file, the first of
          ``checkpoint.pt`` (the published OmiCLIP's), ``open_clip_model.safetensors`` and
          ``open_clip_pytorch_model.bin`` (open_clip's) that the repository holds; for open_clip's, the
          architecture is the open_clip config equal to the repository's ``open_clip_config.json``
          (unless ``arch`` is given). A repository holding none of them raises a ``FileNotFoundError``
          listing its files.
          A file already in the local Hugging Face cache is used when the Hub cannot be reached.
          On a machine whose DNS does not resolve the Hub's host (no network, as on many compute
          nodes) only the cache is looked at, at once; when the host resolves but the Hub does not
          answer, huggingface_hub retries for about 25 s first. The environment variable
          ``HF_HUB_OFFLINE=1`` skips the Hub altogether.
        - a path: a directory written by :meth:`OmiCLIP.save`, a ``.safetensors`` file, or an open_clip
          torch checkpoint (``{'state_dict': ...}``, with or without ``module.``, or a bare state dict).
          A directory without ``model.safetensors`` (e.g. a Hugging Face snapshot downloaded with
          ``hf download WangGuangyuLab/Loki --local-dir ...``) is read through its only weights file
          (``.safetensors``, ``.pt``, ``.pth``, ``.bin`` or ``.ckpt``; a ``.safetensors`` copy made by
          :func:`convert_to_safetensors` is preferred to its original); with several, pass the file.
          A :class:`~pathlib.Path` is always local (``~`` expanded); a string that names a published model
          or an architecture keeps that meaning even where a file of that name exists (a warning says
          so: pass a ``Path`` to load it).
        - an architecture name (``"loki-tiny"``, ``"loki-small-data"`` or an open_clip model name): random
          weights, to be trained with :func:`loki.models.train_tiny` / :func:`loki.models.finetune`.
          open_clip's CoCa and CLIP architectures (e.g. ``"coca_ViT-L-14"``, ``"ViT-B-32"``) work;
          those with a Hugging Face text tower or tokenizer (SigLIP, CLIPA, mt5, ...) are refused.
    arch
        open_clip architecture of a checkpoint (default: from the JSON saved next to it, else from a
        safetensors file's metadata, else ``coca_ViT-L-14``). The checkpoint's keys and shapes are
        checked against it before the model is built; an ``arch`` other than the one recorded with the
        file is used, with a :class:`~loki.LokiWarning` (same shapes do not mean the same model). A
        JSON next to the checkpoint (``loki_model.json`` or ``<stem>.json``) that is not loki's
        metadata, i.e. not an object naming the ``arch``, is ignored with a warning.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    trust_checkpoint
        Allow full unpickling of torch files that ``weights_only=True`` cannot read. Only for files from a
        source you trust; better convert once with :func:`convert_to_safetensors`.
    token
        Hugging Face token for gated repositories.
    precision
        ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` (autocast) or
        ``"bf16-weights"`` (weights cast to bf16: fastest inference, not for training; on one H100,
        ``coca_ViT-L-14`` embeds about 2,440 patches/s against 1,740 with ``"auto"``).
    seed
        Initialisation seed for architecture names (random weights). ``None`` draws an int from fresh
        OS entropy (logged at INFO), so repeated calls give different models. Only the CPU generator of
        a local fork is seeded: the global torch RNGs are neither read nor changed.

    Returns
    -------
    The :class:`OmiCLIP` model. Its ``patch_um`` (the patch side in µm it was trained on) and
    ``training_runs`` (how its weights were trained, see :func:`loki.models.finetune`) are read from
    the metadata :meth:`OmiCLIP.save` writes; ``patch_um`` is ``None`` and ``training_runs`` empty for
    published weights, architecture names and files saved without them. Its ``config`` is the
    architecture's config it was built from now; when the file records another one (saved by a loki
    whose config of that architecture differed), the weights load with a :class:`~loki.LokiWarning`
    naming the differing fields when the parameter shapes still fit, and a ``ValueError`` naming them
    when not. Files that record no config (the published OmiCLIP, converted checkpoints) are not
    compared. Likewise its ``trained_tokenizer`` is the fingerprint of the tokenizer the
    file records the weights were trained with (kind, vocabulary size, hash of the vocabulary and
    merges); when the tokenizer loki builds now differs, the model loads with a
    :class:`~loki.LokiWarning` naming the differing fields (files that record none are not compared).

    Raises
    ------
    ValueError
        For an unknown or unsupported ``precision``, ``arch`` or ``device`` (also a CUDA device on a
        machine without one), checked before anything is downloaded or read; for a checkpoint that
        does not fit its architecture, before the model is built; for a file that is no readable
        checkpoint (truncated download, a Git LFS pointer, an HTML page, another format), naming it;
        for a directory holding several weights files, naming them. The error for a checkpoint
        that does not fit names the architectures whose open_clip configs fit its shapes, or says
        that none does.
    FileNotFoundError
        For a path that does not exist, a directory holding no weights file (naming those found
        deeper, or what it holds), an ``hf-hub:org/repo`` holding none of the files loaded by default
        (naming those it holds), or a string that is neither a path nor a model name.
    UntrustedCheckpointError
        For a torch file that needs full unpickling, without ``trust_checkpoint=True``.
    ConnectionError
        For a hub file that is not in the local cache when the Hub cannot be reached (no network, or
        ``HF_HUB_OFFLINE`` set); the message says how to load it from a local path instead.
    PermissionError
        For a gated or private hub repository without access (HTTP 401/403): accept its terms and pass
        ``token=``.

    """
    register_configs()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if arch is not None:
        check_arch(arch)
    device_t = resolve_device(device)
    name = str(name_or_path)
    path = Path(name_or_path).expanduser()
    is_arch = is_known_arch(name) or name in SMALL_ARCHS
    named = isinstance(name_or_path, str) and (name in PUBLISHED or name.startswith(HF_PREFIX) or is_arch)
    if isinstance(name_or_path, Path) and not path.exists():
        raise FileNotFoundError(f"No such file or directory: {str(path)!r}.")
    if path.exists() and not named:
        if path.is_dir():
            path = _weights_file_in(path)
        return _load_file(
            path, arch=arch, name=None, device=device_t, trust=trust_checkpoint, precision=precision
        )
    if named and path.exists():
        warnings.warn(
            f"{name!r} names a model, so the local {path.resolve()} is ignored; to load that, pass a Path: "
            f"lk.models.load(Path({name!r}))",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    if name in PUBLISHED or name.startswith(HF_PREFIX):
        if name in PUBLISHED:
            pub = PUBLISHED[name]
            repo_id, filename, arch = pub.repo_id, pub.filename, arch or pub.arch
        else:
            parts = name[len(HF_PREFIX) :].strip("/").split("/")
            if len(parts) < 2:
                raise ValueError(f"hf-hub id must be 'hf-hub:org/repo[/file]', got {name!r}")
            repo_id = "/".join(parts[:2])
            filename = "/".join(parts[2:]) or None
        hub_arch = None
        if filename is None:
            path, hub_arch = _hub.default_file(repo_id, token, arch_wanted=arch is None)
        else:
            path = _hub.download(repo_id, filename, token)
        return _load_file(
            path,
            arch=arch,
            name=name,
            device=device_t,
            trust=trust_checkpoint,
            precision=precision,
            default_arch=hub_arch,
        )
    if is_arch:
        check_arch(name)  # before anything is built
        seed = as_seed(seed)  # None: fresh OS entropy, never the global RNG
        model = create_architecture(name, seed=seed)
        logger.info("created %r with random weights (seed=%d): train it before use", name, seed)
        return OmiCLIP(
            model,
            arch=name,
            name=name,
            device=device_t,
            precision=precision,
            trained=False,
            config=architecture_config(name),
        )
    loki_archs = [*loki_configs(), *SMALL_ARCHS]
    close = difflib.get_close_matches(str(name_or_path), [*PUBLISHED, *loki_archs], n=1)
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a file, a directory saved by OmiCLIP.save, a published name "
        f"({', '.join(PUBLISHED)}), an 'hf-hub:' id nor an open_clip architecture (loki's: "
        f"{', '.join(loki_archs)}; all: open_clip.list_models())"
        + (f". Did you mean {close[0]!r}?" if close else ".")
    )


def _weights_file_in(directory: Path) -> Path:
    """The weights file of ``directory`` that :func:`load` reads.

    That is the ``model.safetensors`` of :meth:`OmiCLIP.save`, else the directory's only weights file
    (suffix in :data:`WEIGHT_SUFFIXES`, e.g. the ``checkpoint.pt`` of a downloaded Hugging Face
    snapshot), else, next to a ``.pt`` / ``.bin`` file, its copy converted to ``.safetensors``
    (same stem). Several other weights files raise a ``ValueError`` naming them, none a
    ``FileNotFoundError`` naming the weights files found two or three levels deeper (e.g. in the
    ``snapshots/<revision>/`` folder of a Hugging Face cache) or what the directory holds.
    """
    if (directory / WEIGHTS_FILE).is_file():
        return directory / WEIGHTS_FILE
    found = sorted(
        p
        for p in directory.iterdir()
        if p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    converted = [p for p in found if p.suffix == ".safetensors"]
    if len(found) == 1 or (len(converted) == 1 and {p.stem for p in found} == {converted[0].stem}):
        chosen = converted[0] if len(found) > 1 else found[0]
        logger.info("loading %s, the weights file of %s", chosen, directory)
        return chosen
    if found:
        raise ValueError(
            f"{directory} holds {len(found)} weights files ({', '.join(p.name for p in found[:8])}"
            f"{', ...' if len(found) > 8 else ''}); pass the one to load: "
            f"lk.models.load(Path({str(found[-1])!r}))"
        )
    deeper = itertools.chain.from_iterable(directory.glob("/".join(["*"] * depth)) for depth in (2, 3))
    nested = list(itertools.islice((p for p in deeper if p.suffix in WEIGHT_SUFFIXES and p.is_file()), 3))
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    where = (
        f"; weights files deeper down: {', '.join(str(p) for p in nested)} (pass the one to load)"
        if nested
        else f"; it holds {', '.join(held[:8]) + (', ...' if len(held) > 8 else '') if held else 'nothing'}"
    )
    raise FileNotFoundError(
        f"{directory} holds no weights file ({WEIGHTS_FILE} written by OmiCLIP.save, or a "
        f"{' / '.join(WEIGHT_SUFFIXES)} checkpoint){where}."
    )


def _load_file(
    path: Path, *, arch, name, device, trust: bool, precision: str, default_arch: str | None = None
) -> OmiCLIP:
    meta = _meta_for(path)
    recorded = meta.get("arch")
    overridden = arch is not None and recorded is not None and arch != recorded
    arch = arch or recorded or default_arch or DEFAULT_ARCH
    state, _ = _read_state(path, trust_checkpoint=trust)  # mapped: copied into the model, then dropped
    config = architecture_config(arch)
    saved_config = meta.get("config")
    # files written before the config was saved (and the published checkpoints) record none
    changes = config_changes(saved_config, config) if saved_config and not overridden else []
    # keys and shapes are checked on the meta device before the (costly) real model is built
    try:
        _check_keys(architecture_shapes(arch), state, source=str(path), arch=arch)
    except ValueError as err:
        if not changes:
            raise
        raise ValueError(
            f"{err} The config of {arch!r} has changed since the file was saved ({few_changes(changes)}): "
            "these weights were trained for the config recorded in the file."
        ) from None
    if changes:
        # same shapes, yet the model computes otherwise (an activation, the context, a norm, ...)
        warnings.warn(
            f"{path} was saved with another config of {arch!r} than the one loki builds now; the weights "
            f"are loaded into the current config, which differs in {few_changes(changes)}. Their embeddings can "
            "differ from those the model was trained to give: install the loki version the file was "
            "saved with, or retrain.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    if overridden:
        # architectures may share every shape (e.g. ViT-B-32 and ViT-B-32-quickgelu) yet compute
        # differently: the key check above cannot tell them apart
        warnings.warn(
            f"{path} records arch {recorded!r}, but arch={arch!r} was passed: the weights are loaded "
            f"as {arch!r}. Architectures with the same parameter shapes can still compute differently; "
            "omit arch= to use the recorded one.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    model = create_architecture(arch)
    load_weights(model, state, source=str(path))
    logger.info("loaded %r weights from %s", arch, path)
    loaded = OmiCLIP(
        model,
        arch=arch,
        name=name or meta.get("name") or path.stem,
        device=device,
        precision=precision,
        trained=bool(meta.get("trained", True)),
        file_sha256=file_sha256(path),
        config=config,  # the config the model was built from now (compared above with the file's)
        patch_um=meta.get("patch_um"),  # absent from files saved before it was recorded: unknown
        training_runs=meta.get("training_runs"),  # absent: no run recorded (published weights)
        trained_tokenizer=meta.get("tokenizer"),  # absent from older files: not compared
    )
    _check_tokenizer(loaded, path)
    return loaded


def _check_tokenizer(model: OmiCLIP, path: Path) -> None:
    """Warn when the tokenizer the model's weights were trained with differs from the one it now has.

    A warning, not an error: the weights are intact and image embeddings are unaffected, but gene
    sentences become other token ids than those the text tower learned.
    """
    saved = model.trained_tokenizer
    if not saved:  # files saved before the tokenizer was recorded, published weights
        return
    changes = fingerprint_changes(saved, model.tokenizer.fingerprint())
    if changes:
        warnings.warn(
            f"{path} was trained with another tokenizer than the one loki builds now for {model.arch!r} "
            f"({'; '.join(changes)}; saved with open_clip {saved.get('open_clip')}, installed "
            f"{model.tokenizer.fingerprint().get('open_clip')}): gene sentences now become other token "
            "ids than those the text tower learned, so text embeddings can be wrong (image embeddings "
            "are not affected). Install the open_clip version the model was saved with, or fine-tune "
            "it again with the tokenizer in use.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
