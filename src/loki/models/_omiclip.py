"""The OmiCLIP wrapper: one object that encodes H&E patches and gene sentences into one space."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from loki._logging import logger
from loki._utils import block_starts, check_int
from loki._utils._validation import is_pil_image

from ._open_clip_logging import quiet_open_clip
from ._preprocess import as_uint8_nhwc, preprocess_uint8
from ._text_forward import encode_text, supports_causal_forward
from ._tokenize import CachedTokenizer

META_FILE = "loki_model.json"
#: ``auto``: bf16 autocast on CUDA, fp32 elsewhere; ``bf16``: autocast; ``bf16-weights``: weights cast to
#: bf16 (fastest inference; not for training).
PRECISIONS = ("auto", "fp32", "bf16", "bf16-weights")
WEIGHTS_FILE = "model.safetensors"


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked and passed to ``torch.device``.

    Raises
    ------
    ValueError
        For a string torch does not read as a device, and for a CUDA or MPS device this machine lacks.

    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device, got {device!r}"
        ) from None
    _check_available(dev)
    return dev


def _check_available(dev) -> None:
    """Raise a ValueError when ``dev`` is a CUDA or MPS device this machine does not have."""
    import torch

    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {str(dev)!r}: CUDA is not available here; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"device {str(dev)!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(dev)!r}: MPS is not available here; use 'cpu' or 'auto'")


def state_dict_hash(state_dict) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a state dict (sorted by name).

    Tensors are hashed as :meth:`OmiCLIP.save` writes them (:func:`saved_tensor`: lower-precision
    floating-point weights as float32), so a model and its saved and reloaded copy share one hash.
    """
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = saved_tensor(state_dict[name])
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def saved_tensor(t):
    """``t`` as it is saved: detached, contiguous, on the CPU; bf16 / fp16 weights upcast to float32.

    Upcasting is exact, so a model loaded with ``precision="bf16-weights"`` is saved without a further
    loss and reloads (in any precision) as the weights it computed with.
    """
    import torch

    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.contiguous()


def _embed_dim(model) -> int:
    """Joint embedding size of an open_clip CoCa / CLIP / custom-text CLIP model or a loki small model.

    CoCa and custom-text models keep the text projection on ``model.text``, plain CLIP models on the
    model itself; it is a ``Linear`` or a ``(width, embed_dim)`` parameter.
    """
    from torch import nn

    proj = getattr(getattr(model, "text", None), "text_projection", None)
    if proj is None:
        proj = getattr(model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if proj is not None:
        return int(proj.shape[1])
    output_dim = getattr(model.visual, "output_dim", None)
    if output_dim is None:
        raise ValueError(f"cannot tell the embedding size of a {type(model).__name__} model")
    return int(output_dim)


class OmiCLIP:
    """An open_clip CoCa model with batched, device-side encoding of patches and gene sentences.

    Create it with :func:`loki.models.load`; train with :func:`loki.models.finetune` or
    :func:`loki.models.train_tiny`.

    Attributes
    ----------
    model
        The underlying ``open_clip`` model (``torch.nn.Module``).
    name
        Human-readable model name (e.g. ``"omiclip"``, ``"loki-tiny"`` or a path).
    arch
        open_clip architecture name.
    tokenizer
        :class:`~loki.models.CachedTokenizer` (callable like open_clip's tokenizer).
    preprocess
        open_clip's PIL eval transform for this model.
    device
        Torch device the model lives on.
    trained
        ``False`` for randomly initialised weights; loki refuses nothing but warns when such a model
        is used to compute results.
    patch_um
        Side in µm of the H&E patches the model was last trained on, recorded by
        :func:`loki.models.finetune` / :func:`loki.tl.finetune` / :func:`loki.models.train_tiny` when
        they know it, saved with the model; :func:`loki.tl.embed_image` cuts patches of this size by
        default. ``None`` when unknown (published weights, or training on given patches): spots are
        then cut at their own diameter.
    file_sha256
        sha256 of the weights file the model was loaded from or last saved to, ``None`` when there is
        none or the weights changed since. It depends on the file format; :attr:`checkpoint_hash`
        identifies the weights.
    config
        The architecture's config the model was built from (open_clip's model config, or the
        hyper-parameters of a :data:`~loki.models.SMALL_ARCHS` model), saved with it;
        :func:`loki.models.load` warns when the config of a saved model's architecture has changed
        since. ``None`` for models built outside :func:`loki.models.load`.
    training_runs
        How the weights were made: one record (a JSON-able dict) per run of
        :func:`loki.models.finetune` (and so :func:`loki.tl.finetune`, :func:`loki.models.train_tiny`)
        that changed them, oldest first, saved with the model and read back by
        :func:`loki.models.load`. Each holds the run's parameters, the sha256 fingerprints of its
        training (and held-out) pairs, its per-epoch losses and the hash of the weights it started
        from (see :func:`loki.models.finetune`). Empty for random weights and for weights loaded
        from a file that records no run (such as the published OmiCLIP).
    trained_tokenizer
        Fingerprint (:func:`~loki.models.tokenizer_fingerprint`: kind, vocabulary size, hash
        of the vocabulary and merges) of the tokenizer the weights were last trained with: read from the
        saved model by :func:`loki.models.load` (which warns when :attr:`tokenizer` differs from it),
        set by :func:`loki.models.finetune` when it changes the weights. ``None`` when unknown
        (published weights, files saved before it was recorded, random weights); :meth:`save` then
        records the fingerprint of :attr:`tokenizer`.

    """

    def __init__(
        self,
        model,
        *,
        arch: str,
        name: str | None = None,
        device="cpu",
        precision: str = "auto",
        trained: bool = True,
        file_sha256: str | None = None,
        config: dict | None = None,
        patch_um: float | None = None,
        training_runs: list[dict] | None = None,
        trained_tokenizer: dict | None = None,
    ):
        import open_clip

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        if precision == "bf16-weights":
            import torch

            self.model.to(torch.bfloat16)
        self.arch = arch
        self.name = name or arch
        self.precision = precision
        self.trained = trained
        self._warned_untrained = False
        self.config = config
        self.patch_um = patch_um
        self.training_runs = [dict(run) for run in training_runs or ()]
        self.trained_tokenizer = dict(trained_tokenizer) if trained_tokenizer else None
        self._appended_run = None  # the record the last fine-tuning call appended (or None)
        self.file_sha256 = file_sha256
        self._checkpoint_hash = None
        visual = model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.image_mean = tuple(float(v) for v in visual.image_mean)
        self.image_std = tuple(float(v) for v in visual.image_std)
        self.context_length = int(getattr(model, "context_length", 76))
        from ._small import SMALL_ARCHS

        with quiet_open_clip():
            base = open_clip.get_tokenizer("coca_ViT-L-14" if arch in SMALL_ARCHS else arch)
            self.preprocess = open_clip.image_transform(
                self.image_size, is_train=False, mean=self.image_mean, std=self.image_std
            )
        self.tokenizer = CachedTokenizer(base, self.context_length)

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding."""
        return _embed_dim(self.model)

    @property
    def patch_um(self) -> float | None:
        """Side in µm of the patches the model was trained on, or ``None`` when unknown."""
        return self._patch_um

    @patch_um.setter
    def patch_um(self, value: float | None) -> None:
        self._patch_um = check_patch_um(value)

    @property
    def checkpoint_hash(self) -> str:
        """Content hash of the weights (:func:`state_dict_hash`), computed once and cached.

        It depends only on the weights as :meth:`save` writes them, not on where they came from: the
        same weights give the same hash before and after :meth:`save`, and loaded from a ``.pt``, a
        ``.safetensors`` file or a saved directory. The weights file's own sha256 is :attr:`file_sha256`.
        """
        if self._checkpoint_hash is None:
            self._checkpoint_hash = state_dict_hash(self.model.state_dict())
        return self._checkpoint_hash

    def _weights_changed(self) -> None:
        self._checkpoint_hash = None
        self.file_sha256 = None
        self.trained = True

    def __repr__(self) -> str:
        return (
            f"OmiCLIP(name={self.name!r}, arch={self.arch!r}, embed_dim={self.embed_dim}, "
            f"image_size={self.image_size}, patch_um={self.patch_um}, device={str(self.device)!r}, "
            f"trained={self.trained})"
        )

    def info(self) -> dict:
        """Model identity for ``.uns`` (writeable types only).

        ``checkpoint_hash`` is the weights' content hash (:attr:`checkpoint_hash`); ``file_sha256``, the
        sha256 of the weights file, is added when the weights are those of a file.
        """
        info = {
            "model": self.name,
            "arch": self.arch,
            "checkpoint_hash": self.checkpoint_hash,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "trained": bool(self.trained),
        }
        if self.file_sha256 is not None:
            info["file_sha256"] = self.file_sha256
        return info

    # ------------------------------------------------------------------ encoding
    def _autocast(self):
        import contextlib

        import torch

        if self.precision == "bf16-weights":
            return contextlib.nullcontext()
        use_bf16 = self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda")
        if use_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_trained(self) -> None:
        """Warn once per model (not once per encoder: ``loki embed`` encodes texts and images)."""
        if not self.trained and not self._warned_untrained:
            self._warned_untrained = True
            logger.warning(
                "model %r has random (untrained) weights: train it (lk.models.train_tiny / finetune) "
                "before using its embeddings for results",
                self.name,
            )

    def image_tensor(self, images):
        """Preprocess a uint8 NHWC batch into the model's normalised input on the device.

        Parameters
        ----------
        images
            uint8 ``(n, h, w, 3)`` array (numpy, torch or dask) or one ``(h, w, 3)`` image. Resized on
            the device like open_clip's eval transform (shorter side to ``image_size``, centre crop).

        Returns
        -------
        Tensor ``(n, 3, image_size, image_size)`` on the model's device, normalised with the model's
        ``image_mean`` / ``image_std``, in the dtype of its weights.

        """
        x = preprocess_uint8(
            as_uint8_nhwc(images),
            image_size=self.image_size,
            mean=self.image_mean,
            std=self.image_std,
            device=self.device,
        )
        return x.to(next(self.model.parameters()).dtype)

    def encode_images(self, images, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Embed H&E patches.

        Parameters
        ----------
        images
            uint8 ``(n, h, w, 3)`` array (numpy, torch or dask; resized on the device like open_clip's
            eval transform: shorter side to the model's input size, then a centre crop) or a list of PIL
            images (open_clip's PIL preprocessing is used). A dask array is computed chunk by chunk,
            each chunk once, whatever ``batch_size`` is.
        batch_size
            Patches per forward pass.
        progress
            Show a progress bar.

        Returns
        -------
        ``(n, embed_dim)`` float32 L2-normalised embeddings.

        """
        import torch

        self._check_trained()
        _check_batch_size(batch_size)
        if is_pil_image(images):
            raise TypeError(
                "images is one PIL image; pass a list of PIL images ([image]) or a uint8 (n, height, "
                "width, 3) array"
            )
        is_pil = isinstance(images, list | tuple) and len(images) and is_pil_image(images[0])
        if is_pil:
            bad = next((i for i, im in enumerate(images) if not is_pil_image(im)), None)
            if bad is not None:
                raise TypeError(
                    f"images[{bad}] is {type(images[bad]).__name__}, but images[0] is a PIL image: pass a "
                    "list of PIL images only, or one uint8 (n, height, width, 3) array"
                )
        n = len(images)
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        if not is_pil and n:
            shape = getattr(images, "shape", None)
            if shape is None or len(shape) != 4 or shape[-1] != 3:
                raise ValueError(
                    f"images must be (n, height, width, 3) uint8 or a list of PIL images, got {_described(images)}"
                )
        sink = _Sink(out)
        # slicing a batch out of a dask array computes every chunk it touches: take each chunk once
        lazy = _lazy_batches(images, batch_size) if hasattr(images, "dask") else None
        with torch.inference_mode(), self._autocast():
            for start in block_starts(n, batch_size, progress=progress, desc="encoding images", unit="batch"):
                chunk = next(lazy) if lazy is not None else images[start : start + batch_size]
                if is_pil:
                    x = torch.stack([self.preprocess(im.convert("RGB")) for im in chunk]).to(self.device)
                    x = x.to(next(self.model.parameters()).dtype)
                else:
                    x = self.image_tensor(np.asarray(chunk))
                sink.add(start, _l2(self.model.encode_image(x, normalize=False).float()))
        sink.flush()
        return out

    def encode_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 512,
        progress: bool = False,
        return_word_counts: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embed texts (gene sentences).

        Texts are cut to the model's context (76 tokens for OmiCLIP, start and end tokens included),
        which holds only the first 20 or so genes of a 50-gene sentence (see
        :class:`~loki.models.CachedTokenizer`); ``return_word_counts`` tells how many.

        Parameters
        ----------
        texts
            Sentences, e.g. the top-50 gene symbols of each spot joined by spaces.
        batch_size
            Sentences per forward pass.
        progress
            Show a progress bar.
        return_word_counts
            Also return the word counts of each text (see
            :meth:`~loki.models.CachedTokenizer.ids`), taken from the tokenisation the encoding does.

        Returns
        -------
        ``(n, embed_dim)`` float32 L2-normalised embeddings; with ``return_word_counts`` also an int64
        ``(n, 2)`` array: the words of each text whose tokens all fit in the context, and its words.

        """
        import torch

        self._check_trained()
        _check_batch_size(batch_size)
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        counts = np.zeros((len(texts), 2), dtype=np.int64)
        sink = _Sink(out)
        causal = supports_causal_forward(self.model)
        with torch.inference_mode(), self._autocast():
            for start in block_starts(
                len(texts), batch_size, progress=progress, desc="encoding texts", unit="batch"
            ):
                # tokenising batch by batch lets the CPU work overlap the device's forward pass
                ids, counts[start : start + batch_size] = self.tokenizer.ids(
                    texts[start : start + batch_size], return_word_counts=True
                )
                tok = torch.from_numpy(ids)
                if self.device.type == "cuda":
                    tok = tok.pin_memory()
                tok = tok.to(self.device, non_blocking=True)
                emb = encode_text(self.model, ids, tok, causal)
                sink.add(start, _l2(emb.float()))
        sink.flush()
        return (out, counts) if return_word_counts else out

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Save weights as safetensors plus a small JSON naming the architecture.

        Parameters
        ----------
        path
            A directory (created); it receives ``model.safetensors`` and ``loki_model.json`` (architecture,
            name, ``trained``, ``config``, ``patch_um``, ``training_runs`` and ``tokenizer``, the
            fingerprint of :attr:`trained_tokenizer`, or of :attr:`tokenizer` when that is None; the
            same entries are stored in the safetensors header, so the weights file loads alike on its
            own).
            :func:`loki.models.load` accepts the directory or the ``.safetensors`` file.

        Returns
        -------
        The directory written.

        Notes
        -----
        Floating-point weights are written as float32: a model loaded with
        ``precision="bf16-weights"`` is saved as its bf16 weights upcast (exactly), so nothing is lost
        beyond the rounding that loading in bf16 already did, and it reloads as a float32 model (load it
        with ``precision="bf16-weights"`` again for fast inference). :attr:`checkpoint_hash` is the same
        before and after saving, and for the reloaded model.

        """
        from safetensors.torch import save_file

        path = Path(path).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        state = {k: saved_tensor(v) for k, v in self.model.state_dict().items()}
        meta = {
            "arch": self.arch,
            "name": self.name,
            "trained": bool(self.trained),
            "config": self.config,
            "patch_um": self.patch_um,
            "training_runs": self.training_runs,
            # the tokenizer the weights learned; load() warns when the one it builds then differs
            "tokenizer": self.trained_tokenizer or self.tokenizer.fingerprint(),
            "loki_format": 1,
        }
        # the weights file carries the metadata too, so it loads alike when moved or uploaded on its own
        header = {"arch": self.arch, META_FILE: json.dumps(meta)}
        save_file(state, str(path / WEIGHTS_FILE), metadata=header)
        (path / META_FILE).write_text(json.dumps(meta, indent=2))
        from ._loading import file_sha256

        self.file_sha256 = file_sha256(path / WEIGHTS_FILE)
        logger.info("saved model %r to %s", self.name, path)
        return path


def _lazy_batches(images, batch_size: int):
    """Consecutive ``batch_size``-row numpy batches of a dask array, each of its chunks computed once.

    A batch sliced out of a dask array computes every chunk it touches, so chunks larger than a batch
    (e.g. the 256-spot chunks of :func:`loki.pp.spot_patches`) would be computed once per batch.
    """
    bounds = np.cumsum((0, *images.chunks[0]))
    held = None
    for lo, hi in itertools.pairwise(bounds):
        if hi == lo:
            continue
        block = np.asarray(images[lo:hi])
        held = block if held is None else np.concatenate([held, block])
        while len(held) >= batch_size:
            yield held[:batch_size]
            held = held[batch_size:]
    if held is not None and len(held):
        yield held


class _Sink:
    """Copy device outputs to the host array in groups.

    The copy synchronises: grouping lets the host prepare the next batches while the device computes,
    and the newest ``in_flight`` batches stay queued on the device while the host waits for older ones.
    """

    def __init__(self, out: np.ndarray, every: int = 16, in_flight: int = 2):
        self.out, self.every, self.in_flight, self.pending = out, every, in_flight, []

    def add(self, start: int, emb) -> None:
        self.pending.append((start, emb))
        if len(self.pending) >= self.every:
            self.flush(keep=self.in_flight)

    def flush(self, keep: int = 0) -> None:
        cut = len(self.pending) - keep
        done, self.pending = self.pending[:cut], self.pending[cut:]
        for start, emb in done:
            self.out[start : start + len(emb)] = emb.cpu().numpy()


def check_patch_um(value) -> float | None:
    """``None`` or a positive, finite patch side in µm (as a float)."""
    if value is None:
        return None
    number = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if not (number and np.isfinite(value) and value > 0):
        raise ValueError(f"patch_um must be None or a positive number of µm, got {value!r}")
    return float(value)


def _check_batch_size(batch_size: int) -> None:
    check_int(batch_size, "batch_size")


def _described(images) -> str:
    """What ``images`` is, for an error message: an array's shape, or a sequence's item type."""
    shape = getattr(images, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    if isinstance(images, list | tuple):
        kind = type(images[0]).__name__
        hint = " (stack equal-sized patches with np.stack)" if hasattr(images[0], "shape") else ""
        return f"a {type(images).__name__} of {len(images)} {kind}{hint}"
    return type(images).__name__


def _l2(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
