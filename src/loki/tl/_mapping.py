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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from loki._utils import check_int

if TYPE_CHECKING:
    import torch

#: Eager epochs before an epoch is captured as a CUDA graph (allocations and lazy inits settle first).
_GRAPH_WARMUP = 3


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


def _feature_cosine_fn():
    """Mean over features k of cos((M^T S)[:, k], G[:, k]) with a hand-written gradient.

    ``<G_pred[:, k], G[:, k]> = sum_c S[c, k] (M G)[c, k]``, so the numerator needs only ``M G``
    (sources x features) forward and ``(S * alpha) G^T`` backward. For the norms
    ``|G_pred[:, k]|^2`` and their gradient ``(S * beta) S^T M`` the cheaper association is taken:

    - fewer sources than features (clusters): through ``P = M M^T``, as ``S[:, k]^T P S[:, k]`` and
      ``((S * beta) S^T) M``; nothing of size spots x features is formed;
    - otherwise (single cells): through ``G_pred^T = S^T M`` (features x spots), as its squared row
      norms and ``(S * beta) G_pred^T``; nothing of size sources x sources is formed, so memory and
      time stay linear in the number of reference cells.
    """
    import torch

    class FeatureCosine(torch.autograd.Function):
        @staticmethod
        def forward(ctx, M, S, G, g_norm):
            num = (S * (M @ G)).sum(0)
            if M.shape[0] < S.shape[1]:
                pred_t = None
                q = (S * (_gram(M) @ S)).sum(0)
            else:
                pred_t = S.T @ M
                q = (pred_t * pred_t).sum(1)
            q = q.clamp_min(1e-16)
            pred_norm = q.sqrt()
            ctx.save_for_backward(M, S, G, g_norm, num, q, pred_norm, pred_t)
            return (num / (pred_norm * g_norm)).mean()

        @staticmethod
        def backward(ctx, grad_out):
            M, S, G, g_norm, num, q, pred_norm, pred_t = ctx.saved_tensors
            scale = grad_out / S.shape[1]
            alpha = scale / (pred_norm * g_norm)
            beta = -scale * num / (q * pred_norm * g_norm)
            s_beta = S * beta
            norm_term = (s_beta @ S.T) @ M if pred_t is None else s_beta @ pred_t
            grad_m = (S * alpha) @ G.T + norm_term
            return grad_m, None, None, None

    return FeatureCosine


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
        Seed of the local :class:`torch.Generator` that draws the initial logits ``N(0, 1)``.
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
    check_int(epochs, "epochs")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    check_int(num_threads, "num_threads", optional=True)
    for name, value in (
        ("lambda_g1", lambda_g1),
        ("lambda_g2", lambda_g2),
        ("lambda_d", lambda_d),
        ("lambda_r", lambda_r),
    ):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")

    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(int(num_threads or 1))
    try:
        return _fit(
            source,
            target,
            dev,
            source_density=source_density,
            target_density=target_density,
            lambda_g1=lambda_g1,
            lambda_g2=lambda_g2,
            lambda_d=lambda_d,
            lambda_r=lambda_r,
            epochs=epochs,
            lr=lr,
            seed=seed,
            cuda_graph=cuda_graph,
            progress=progress,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _fit(
    source: np.ndarray,
    target: np.ndarray,
    dev: torch.device,
    *,
    source_density,
    target_density,
    lambda_g1: float,
    lambda_g2: float,
    lambda_d: float,
    lambda_r: float,
    epochs: int,
    lr: float,
    seed: int,
    cuda_graph: bool,
    progress: bool,
) -> MappingResult:
    import torch
    from tqdm.auto import trange

    n_sources, n_spots = source.shape[0], target.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    logits = torch.randn(n_sources, n_spots, generator=gen, dtype=torch.float32).to(dev)
    logits.requires_grad_(True)
    S = torch.from_numpy(source).to(dev)
    G = torch.from_numpy(target).to(dev)

    use_density = lambda_d > 0
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
        loss = -lambda_g1 * feature_cosine.apply(M, S, G, g_norm)
        if lambda_g2:
            loss = loss - lambda_g2 * _cosine(M.T @ S, G, dim=1).mean()
        if use_density:
            d_pred = d_source @ M
            loss = loss + lambda_d * (d_entropy - (d * torch.log(d_pred)).sum())
        if lambda_r:
            loss = loss - lambda_r * (M * torch.log(M)).sum()
        return loss

    graph = cuda_graph and dev.type == "cuda" and epochs > _GRAPH_WARMUP
    # The fused CUDA kernel is the same update in one launch instead of several per step; capturable
    # keeps Adam's step count on the device, which a CUDA graph needs.
    optimiser = torch.optim.Adam([logits], lr=lr, fused=dev.type == "cuda", capturable=graph)
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
        for epoch in range(epochs):
            eager_epoch(epoch)
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
