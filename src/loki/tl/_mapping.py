"""Tangram-style mapping of single cells (or cell-type clusters) to spots, eq. (12) of the paper.

Plain functions on arrays; nothing here knows about AnnData. torch is imported inside the
functions so that ``import loki`` stays torch-free.

The objective, for a mapping ``M`` (sources x spots, softmax over spots for every source), source
features ``S`` (sources x features) and spot features ``G`` (spots x features), with
``G_pred = M^T S``:

``loss = -lambda_g1 * mean_k cos(G_pred[:, k], G[:, k])``  (eq. 12, one term per feature)
``       -lambda_g2 * mean_j cos(G_pred[j], G[j])``       (per spot, off by default)
``       +lambda_d * KL(d || d_source @ M)``             (density prior, uniform by default)
``       -lambda_r * sum(M log M)``                      (entropy, off by default)

The logits start from ``N(0, 1)`` values (Tangram's start), one per (source, spot) pair, drawn by
hashing the seed and the pair's keys (:func:`initial_logits`), so that the start, and with it the
fit, follows the sources and spots when they are reordered.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np

from loki._logging import logger
from loki._utils import check_int
from loki._utils._threads import keep_torch_threads

if TYPE_CHECKING:
    import torch

#: Eager epochs before an epoch is captured as a CUDA graph (allocations and lazy inits settle first).
_GRAPH_WARMUP = 3
#: Epochs timed to estimate how long a fit takes; a fit estimated to take longer than
#: ``_LONG_FIT_S`` seconds is announced when no progress bar is shown (e.g. 200,000 cells on a CPU).
_TIMED_EPOCHS = 5
_LONG_FIT_S = 120.0


@dataclass
class MappingResult:
    """Result of :func:`fit_mapping`.

    Attributes
    ----------
    mapping
        ``(n_sources, n_spots)`` float32; every row sums to 1 (softmax over spots).
    loss
        ``(epochs,)`` total loss per epoch.
    device
        The torch device the optimisation ran on.

    """

    mapping: np.ndarray
    loss: np.ndarray
    device: str


#: The weights of the loss's four terms, in the order of the module docstring.
_LAMBDAS = ("lambda_g1", "lambda_g2", "lambda_d", "lambda_r")


@dataclass(frozen=True)
class MappingSettings:
    """The settings of one fit of the mapping, as :func:`fit_mapping` takes them (see there).

    Built once from the keywords of :func:`fit_mapping` or :func:`loki.tl.decompose` and checked in
    one place, :meth:`check`. The values are kept as given: what :func:`fit_mapping_with` fits is
    what the keywords asked for.
    """

    lambda_g1: float
    lambda_g2: float
    lambda_d: float
    lambda_r: float
    epochs: int
    lr: float
    seed: int
    device: str | torch.device
    num_threads: int | None
    progress: bool
    cuda_graph: bool = True

    def check(self) -> None:
        """Raise a ValueError naming the first of ``epochs``, ``lr``, ``num_threads``, the weights out of range."""
        check_int(self.epochs, "epochs")
        if not self.lr > 0:  # also nan, which `lr <= 0` let through to torch
            raise ValueError(f"lr must be > 0, got {self.lr!r}.")
        check_int(self.num_threads, "num_threads", optional=True)
        for name in _LAMBDAS:
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")

    def record(self) -> dict:
        """``epochs``, ``lr`` and the four weights as Python numbers, in that order (for a ``.uns`` record)."""
        return {
            "epochs": int(self.epochs),
            "lr": float(self.lr),
            **{name: float(getattr(self, name)) for name in _LAMBDAS},
        }


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a torch device; ``"auto"`` picks CUDA, then MPS, then CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    # Same convention as torch.nn.functional.cosine_similarity: norms clamped at eps.
    num = (a * b).sum(dim)
    den = a.norm(dim=dim).clamp_min(eps) * b.norm(dim=dim).clamp_min(eps)
    return num / den


def _gram(M: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    # On CPU, M @ M.T summed over column blocks: BLAS is slow on one long reduction of a skinny
    # matrix. On a GPU one product is fast and each block would cost a kernel launch.
    if M.device.type != "cpu":
        return M @ M.T
    out = M[:, :chunk] @ M[:, :chunk].T
    for start in range(chunk, M.shape[1], chunk):
        block = M[:, start : start + chunk]
        out += block @ block.T
    return out


#: The Gram association of :func:`_feature_cosine_fn` is taken while its extra products,
#: ``2 s^2 (spots + features)`` multiply-adds for ``s`` sources, cost less than this many
#: multiply-adds per element of a spots x features matrix (the element-wise passes over ``G_pred``
#: that the other association makes instead). Measured on one CPU thread (see ``_use_gram``).
_GRAM_ELEMENT_COST = 32.0


def _use_gram(n_sources: int, n_spots: int, n_features: int) -> bool:
    """Whether the Gram association of the norm term is the cheaper one (see :func:`_feature_cosine_fn`)."""
    return 2.0 * n_sources**2 * (n_spots + n_features) < _GRAM_ELEMENT_COST * n_spots * n_features


def _column_dots(a: torch.Tensor, b: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a * b).sum(0)`` and ``(a * a).sum(0)``; on CPU by blocks of rows, through one small buffer."""
    import torch

    if a.device.type != "cpu":
        return (a * b).sum(0), (a * a).sum(0)
    dots = a.new_zeros(a.shape[1])
    squares = a.new_zeros(a.shape[1])
    tmp = a.new_empty((min(chunk, a.shape[0]), a.shape[1]))
    for start in range(0, a.shape[0], chunk):
        block = a[start : start + chunk]
        out = tmp[: block.shape[0]]
        dots += torch.mul(block, b[start : start + chunk], out=out).sum(0)
        squares += torch.mul(block, block, out=out).sum(0)
    return dots, squares


def _feature_cosine_fn(association: str = "auto"):
    """Mean over features k of cos((M^T S)[:, k], G[:, k]) with a hand-written gradient.

    With ``G_pred = M^T S`` (spots x features), ``num_k = <G_pred[:, k], G[:, k]>`` and
    ``q_k = |G_pred[:, k]|^2``, the gradient is ``dL/dM = S (G * alpha + G_pred * beta)^T`` for two
    per-feature vectors ``alpha`` and ``beta``. Two associations:

    - ``"pred"`` (many sources, e.g. single cells): ``G_pred`` is formed once (one product of
      sources x spots x features), ``num`` and ``q`` are column sums of element-wise products, and
      the backward is one product ``S @ H^T`` with ``H = G * alpha + G_pred * beta``; nothing of size
      sources x sources is formed, so memory and time stay linear in the number of reference cells;
    - ``"gram"`` (few sources, e.g. clusters): ``num`` from ``M G``, ``q`` through ``P = M M^T`` as
      ``S[:, k]^T P S[:, k]``, and the backward as ``(S * alpha) G^T + ((S * beta) S^T) M``; nothing of
      size spots x features is formed.

    Both make two products of sources x spots x features; ``"gram"`` adds
    ``2 sources^2 (spots + features)`` multiply-adds, ``"pred"`` a few element-wise passes over a
    spots x features matrix. ``"auto"`` picks by :func:`_use_gram`.
    """
    import torch

    if association not in ("auto", "gram", "pred"):
        raise ValueError(f"association must be 'auto', 'gram' or 'pred', got {association!r}.")

    # G_pred's buffer, kept from one epoch to the next: on CPU a fresh spots x features tensor each
    # epoch cost more than the arithmetic on it (every page of a new large allocation is faulted in).
    workspace: dict[str, torch.Tensor] = {}

    class FeatureCosine(torch.autograd.Function):
        @staticmethod
        def forward(ctx, M, S, G, g_norm):
            gram = (
                _use_gram(M.shape[0], M.shape[1], S.shape[1])
                if association == "auto"
                else association == "gram"
            )
            if gram:
                pred = None
                num = (S * (M @ G)).sum(0)
                q = (S * (_gram(M) @ S)).sum(0)
            else:
                pred = workspace.get("pred")
                shape = (M.shape[1], S.shape[1])
                if pred is None or pred.shape != shape or pred.dtype != M.dtype or pred.device != M.device:
                    pred = workspace["pred"] = M.new_empty(shape)
                torch.mm(M.T, S, out=pred)
                workspace["epoch"] = ctx.epoch = workspace.get("epoch", 0) + 1
                num, q = _column_dots(pred, G)
            q = q.clamp_min(1e-16)
            pred_norm = q.sqrt()
            ctx.save_for_backward(M if gram else None, S, G, g_norm, num, q, pred_norm)
            ctx.gram, ctx.pred = gram, pred
            return (num / (pred_norm * g_norm)).mean()

        @staticmethod
        def backward(ctx, grad_out):
            M, S, G, g_norm, num, q, pred_norm = ctx.saved_tensors
            scale = grad_out / S.shape[1]
            alpha = scale / (pred_norm * g_norm)
            beta = -scale * num / (q * pred_norm * g_norm)
            if ctx.gram:
                return (S * alpha) @ G.T + ((S * beta) @ S.T) @ M, None, None, None
            # H = G * alpha + G_pred * beta, written over G_pred (not needed after this)
            h, ctx.pred = ctx.pred, None
            if h is None or ctx.epoch != workspace["epoch"]:
                raise RuntimeError(
                    "FeatureCosine's backward can run only once per forward, before the next forward."
                )
            h.mul_(beta).addcmul_(G, alpha)
            return S @ h.T, None, None, None

    return FeatureCosine


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic): a bijection that scatters the bits."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def name_keys(names) -> np.ndarray:
    """Stable 64-bit keys of names (BLAKE2b of their ``str``), for :func:`initial_logits`."""
    from hashlib import blake2b

    return np.fromiter(
        (int.from_bytes(blake2b(str(n).encode(), digest_size=8).digest(), "little") for n in names),
        dtype=np.uint64,
        count=len(names),
    )


@numba.njit(cache=True, inline="always")
def _mix64_scalar(z):
    """:func:`_mix64` of one uint64, for the kernel below."""
    z = z ^ (z >> numba.uint64(30))
    z = z * numba.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> numba.uint64(27))
    z = z * numba.uint64(0x94D049BB133111EB)
    return z ^ (z >> numba.uint64(31))


@numba.njit(parallel=True, cache=True)
def _box_muller_fill(src, tgt, out):
    """``out[i, j]``: the normal value of the hash of ``src[i] ^ tgt[j]`` (rows in parallel)."""
    for i in numba.prange(src.shape[0]):
        key = src[i]
        for j in range(tgt.shape[0]):
            z = _mix64_scalar(key ^ tgt[j])
            u1 = (np.float64(z >> numba.uint64(32)) + 0.5) * 2.0**-32  # in (0, 1)
            u2 = np.float64(z & numba.uint64(0xFFFFFFFF)) * 2.0**-32
            out[i, j] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def initial_logits(seed: int, source_keys: np.ndarray, target_keys: np.ndarray) -> np.ndarray:
    """Start of the mapping's logits: one ``N(0, 1)`` value per (source, spot) pair, float32.

    The value of a pair is a function of ``seed`` and the two keys alone (a hash, turned into a
    normal value by Box-Muller), not of the pair's position, so permuting the sources or the spots
    permutes the start with them. Pairs with equal keys get equal values. Computed by a parallel
    numba kernel, one row of pairs at a time: no temporary larger than the result.
    """
    with np.errstate(over="ignore"):
        seed_key = _mix64(np.asarray([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        src = _mix64(np.asarray(source_keys, dtype=np.uint64) ^ seed_key)
        tgt = _mix64(np.asarray(target_keys, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    out = np.empty((len(src), len(tgt)), dtype=np.float32)
    with keep_torch_threads():  # numba's thread pool starts on the first parallel call
        _box_muller_fill(src, tgt, out)
    return out


def fit_mapping(
    source: np.ndarray,
    target: np.ndarray,
    *,
    source_density: np.ndarray | None = None,
    target_density: np.ndarray | None = None,
    lambda_g1: float = 1.0,
    lambda_g2: float = 0.0,
    lambda_d: float = 1.0,
    lambda_r: float = 0.0,
    epochs: int = 1000,
    lr: float = 0.1,
    seed: int = 0,
    source_keys: np.ndarray | None = None,
    target_keys: np.ndarray | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    cuda_graph: bool = True,
    progress: bool = False,
) -> MappingResult:
    """Fit the mapping of sources (cells or clusters) to spots by Adam on eq. (12).

    Parameters
    ----------
    source
        ``(n_sources, n_features)`` features of single cells, or of clusters (summed over their cells).
    target
        ``(n_spots, n_features)`` features of spots or H&E patches.
    source_density
        ``(n_sources,)`` fraction of all cells that each source stands for (clusters mode); ``None``
        counts every source as one cell.
    target_density
        ``(n_spots,)`` prior density of cells over spots (sums to 1); ``None`` means uniform.
        Used only when ``lambda_d > 0``.
    lambda_g1, lambda_g2, lambda_d, lambda_r
        Weights of the per-feature cosine term (eq. 12), the per-spot cosine term, the density
        prior (KL divergence) and the entropy regulariser.
    epochs
        Adam steps (full batch).
    lr
        Adam learning rate.
    seed
        Seed of the initial logits, ``N(0, 1)`` values drawn by :func:`initial_logits` (no global
        random state is used or changed).
    source_keys, target_keys
        ``(n_sources,)`` and ``(n_spots,)`` integer keys (e.g. :func:`name_keys` of the names) from
        which the initial logit of every (source, spot) pair is drawn, so that permuting the sources
        or the spots together with their keys permutes the start with them. ``None`` keys them by
        position (then a reordering acts like another seed).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ... .
    num_threads
        CPU threads for torch during the fit (restored afterwards). Default 1: with torch's OpenMP
        threads the many skinny products of an epoch (sources x sources, sources x spots) ran up to
        20x slower on a shared 2-core machine, and one thread was faster at every size we measured
        (10,000 spots x 30 types x 768-d included); pass more on a quiet many-core machine.
    cuda_graph
        On a CUDA device, run the first epochs eagerly, then replay one captured epoch as a CUDA graph
        (the same operations, without a kernel launch each). ``False`` runs every epoch eagerly.
    progress
        Show a progress bar.

    Returns
    -------
    The mapping (softmax over spots for each source), the loss history and the device used.

    """
    settings = MappingSettings(
        lambda_g1=lambda_g1,
        lambda_g2=lambda_g2,
        lambda_d=lambda_d,
        lambda_r=lambda_r,
        epochs=epochs,
        lr=lr,
        seed=seed,
        device=device,
        num_threads=num_threads,
        progress=progress,
        cuda_graph=cuda_graph,
    )
    return fit_mapping_with(
        source,
        target,
        settings,
        source_density=source_density,
        target_density=target_density,
        source_keys=source_keys,
        target_keys=target_keys,
    )


def fit_mapping_with(
    source: np.ndarray,
    target: np.ndarray,
    settings: MappingSettings,
    *,
    source_density: np.ndarray | None = None,
    target_density: np.ndarray | None = None,
    source_keys: np.ndarray | None = None,
    target_keys: np.ndarray | None = None,
) -> MappingResult:
    """:func:`fit_mapping` with its settings in one :class:`MappingSettings`, checked here.

    The inputs are checked first (shapes, then keys), then the settings; the fit runs on
    ``settings.num_threads`` CPU threads (1 by default), restored afterwards.
    """
    import torch

    # C order: a Fortran-ordered array (a dense .X transposed on the way) reaches torch as a strided
    # tensor whose products round differently from the same values in C order
    source = np.ascontiguousarray(source, dtype=np.float32)
    target = np.ascontiguousarray(target, dtype=np.float32)
    if source.ndim != 2 or target.ndim != 2:
        raise ValueError(f"source and target must be 2-d, got shapes {source.shape} and {target.shape}.")
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"source and target have different feature sizes ({source.shape[1]} vs {target.shape[1]})."
        )
    source_keys = _checked_keys(source_keys, "source_keys", source.shape[0])
    target_keys = _checked_keys(target_keys, "target_keys", target.shape[0])
    settings.check()

    dev = resolve_device(settings.device)
    previous_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(int(settings.num_threads or 1))
    try:
        return _fit(
            source,
            target,
            dev,
            settings,
            source_density=source_density,
            target_density=target_density,
            source_keys=source_keys,
            target_keys=target_keys,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _checked_keys(keys, name: str, n: int) -> np.ndarray | None:
    """``keys`` as ``(n,)`` uint64 (negative integers wrap around); non-integer keys raise a ValueError.

    Floats would be truncated, so that keys 1.2 and 1.7 gave one start; strings failed in numpy.
    """
    if keys is None:
        return None
    arr = np.asarray(keys)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one key per row), got {arr.shape}.")
    if arr.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be integers (e.g. name_keys of the names), got dtype {arr.dtype}; pass "
            "name_keys(names) for names."
        )
    return arr.astype(np.uint64)


def _fit(
    source: np.ndarray,
    target: np.ndarray,
    dev: torch.device,
    settings: MappingSettings,
    *,
    source_density,
    target_density,
    source_keys: np.ndarray | None,
    target_keys: np.ndarray | None,
) -> MappingResult:
    import torch
    from tqdm.auto import trange

    epochs, progress = settings.epochs, settings.progress
    n_sources, n_spots = source.shape[0], target.shape[0]
    start = initial_logits(
        settings.seed,
        np.arange(n_sources, dtype=np.uint64) if source_keys is None else source_keys,
        np.arange(n_spots, dtype=np.uint64) if target_keys is None else target_keys,
    )
    logits = torch.from_numpy(start).to(dev)
    logits.requires_grad_(True)
    S = torch.from_numpy(source).to(dev)
    G = torch.from_numpy(target).to(dev)

    use_density = settings.lambda_d > 0
    if use_density:
        d = (
            torch.full((n_spots,), 1.0 / n_spots, device=dev)
            if target_density is None
            else torch.as_tensor(np.asarray(target_density, dtype=np.float32), device=dev)
        )
        d_source = (
            torch.full((n_sources,), 1.0 / n_sources, device=dev)
            if source_density is None
            else torch.as_tensor(np.asarray(source_density, dtype=np.float32), device=dev)
        )
        # Terms of KL(d || d_pred) that do not depend on M, computed once.
        d_entropy = torch.where(d > 0, d * torch.log(d.clamp_min(1e-30)), torch.zeros_like(d)).sum()

    g_norm = G.norm(dim=0).clamp_min(1e-8)
    feature_cosine = _feature_cosine_fn()

    def loss_fn() -> torch.Tensor:
        M = torch.softmax(logits, dim=1)
        loss = -settings.lambda_g1 * feature_cosine.apply(M, S, G, g_norm)
        if settings.lambda_g2:
            loss = loss - settings.lambda_g2 * _cosine(M.T @ S, G, dim=1).mean()
        if use_density:
            d_pred = d_source @ M
            loss = loss + settings.lambda_d * (d_entropy - (d * torch.log(d_pred)).sum())
        if settings.lambda_r:
            loss = loss - settings.lambda_r * (M * torch.log(M)).sum()
        return loss

    graph = settings.cuda_graph and dev.type == "cuda" and epochs > _GRAPH_WARMUP
    # The fused CUDA kernel is the same update in one launch instead of several per step; capturable
    # keeps Adam's step count on the device, which a CUDA graph needs.
    optimiser = torch.optim.Adam([logits], lr=settings.lr, fused=dev.type == "cuda", capturable=graph)
    history = torch.empty(epochs, device=dev)
    bar = trange(epochs, disable=not progress, desc="decompose")

    def eager_epoch(epoch: int) -> None:
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimiser.step()
        history[epoch] = loss.detach()
        bar.update()

    if not graph:
        started = time.perf_counter()
        for epoch in range(epochs):
            eager_epoch(epoch)
            if epoch + 1 == _TIMED_EPOCHS and not progress and epochs > _TIMED_EPOCHS:
                if dev.type == "cuda":  # kernels run asynchronously: wait for them before timing
                    torch.cuda.synchronize(dev)
                _note_long_fit(time.perf_counter() - started, epochs, dev)
    else:
        # An epoch is ~30 small kernels: replaying them as one CUDA graph removes the launch overhead
        # that dominated (the GPU was busy 0.38 of every 1.5 ms). Warm-up epochs run eagerly on a side
        # stream first, as torch.cuda.graph requires; every epoch is a real one, none is repeated.
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for epoch in range(_GRAPH_WARMUP):
                eager_epoch(epoch)
        torch.cuda.current_stream(dev).wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        optimiser.zero_grad(set_to_none=True)
        with torch.cuda.graph(captured):
            static_loss = loss_fn()
            static_loss.backward()
            optimiser.step()
        for epoch in range(_GRAPH_WARMUP, epochs):
            captured.replay()
            history[epoch] = static_loss.detach()
            bar.update()
    bar.close()

    with torch.no_grad():
        mapping = torch.softmax(logits, dim=1).cpu().numpy()
    if not np.isfinite(mapping).all():  # rows would otherwise become uniform proportions downstream
        bad = np.flatnonzero(~np.isfinite(history.cpu().numpy()))
        first = f"; the loss first became non-finite at epoch {bad[0]}" if len(bad) else ""
        raise FloatingPointError(f"The mapping fit diverged to non-finite values{first}. Lower lr.")
    return MappingResult(mapping=mapping, loss=history.cpu().numpy().astype(np.float64), device=str(dev))


def _note_long_fit(seconds: float, epochs: int, dev: torch.device) -> None:
    """Log how long the whole fit will take when the first epochs (``seconds``) say it is long."""
    estimate = seconds / _TIMED_EPOCHS * epochs
    if estimate < _LONG_FIT_S:
        return
    hint = " or on a GPU (device='cuda')" if dev.type == "cpu" else ""
    logger.warning(
        "decompose: the mapping's %d epochs will take about %.0f min on %s (%d epochs took %.1f s); "
        "pass progress=True to follow it%s.",
        epochs,
        estimate / 60,
        dev,
        _TIMED_EPOCHS,
        seconds,
        hint,
    )


def mapping_to_proportions(
    mapping: np.ndarray, groups: np.ndarray, n_groups: int, weights: np.ndarray
) -> np.ndarray:
    """Cell-type proportions per spot from a mapping.

    Parameters
    ----------
    mapping
        ``(n_sources, n_spots)`` mapping, each row a distribution over spots.
    groups
        ``(n_sources,)`` integer cell type of every source.
    n_groups
        Number of cell types.
    weights
        ``(n_sources,)`` number of cells each source stands for (1 for cells, cluster size for clusters).

    Returns
    -------
    ``(n_spots, n_groups)`` expected cell counts per type, normalised to sum to 1 per spot (uniform
    where a spot received no mass).

    """
    onehot = np.zeros((len(groups), n_groups), dtype=np.float64)
    onehot[np.arange(len(groups)), groups] = weights
    counts = mapping.T.astype(np.float64) @ onehot
    return normalize_rows(counts)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Scale non-negative rows to sum to 1; rows summing to 0 become uniform."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0, None)
    total = x.sum(axis=1, keepdims=True)
    out = np.divide(x, total, out=np.full_like(x, 1.0 / x.shape[1]), where=total > 0)
    return out


def nms_refine(proportions: np.ndarray) -> np.ndarray:
    """Keep only the most probable cell type of every spot (eqs. 13-14); the others become 0.

    A type that is the most probable one of no spot gets a column of zeros, as the equations say.
    """
    p = np.asarray(proportions, dtype=np.float64)
    out = np.zeros_like(p)
    best = p.argmax(axis=1)
    rows = np.arange(len(p))
    out[rows, best] = p[rows, best]
    return out


def percentile_normalize(values: np.ndarray, low: float = 5.0, high: float = 95.0) -> np.ndarray:
    """Clip every column to its [low, high] percentiles and rescale it to [0, 1].

    A column whose two percentiles coincide without being constant, such as a type that is non-zero
    in only a few percent of the spots (after :func:`nms_refine`, a type that is the most probable
    one in few spots), is rescaled over its full range [min, max] instead, so its non-zero entries
    are kept, not set to 0. Only constant columns become 0.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"Percentiles must satisfy 0 <= low < high <= 100, got ({low}, {high}).")
    v = np.asarray(values, dtype=np.float64)
    lo = np.percentile(v, low, axis=0)
    hi = np.percentile(v, high, axis=0)
    flat = hi <= lo
    lo = np.where(flat, v.min(axis=0), lo)
    hi = np.where(flat, v.max(axis=0), hi)
    span = hi - lo
    clipped = np.clip(v, lo, hi) - lo
    return np.divide(clipped, span, out=np.zeros_like(clipped), where=span > 0)
