from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from loki.tl._mapping import (
    _cosine,
    _feature_cosine_fn,
    fit_mapping,
    initial_logits,
    mapping_to_proportions,
    name_keys,
    nms_refine,
    normalize_rows,
    percentile_normalize,
)


@settings(max_examples=40, deadline=None)
@given(
    # both associations of the norm term: fewer sources than features (clusters) and more (cells)
    n_sources=st.integers(1, 30),
    n_spots=st.integers(2, 40),
    n_features=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_feature_cosine_matches_direct_formula_and_autograd(n_sources, n_spots, n_features, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_sources, n_spots, generator=gen, dtype=torch.float64, requires_grad=True)
    S = torch.rand(n_sources, n_features, generator=gen, dtype=torch.float64) + 0.01
    G = torch.rand(n_spots, n_features, generator=gen, dtype=torch.float64)
    direct = _cosine(torch.softmax(logits, 1).T @ S, G, dim=0).mean()
    (g_direct,) = torch.autograd.grad(direct, logits)
    for association in ("auto", "gram", "pred"):
        fn = _feature_cosine_fn(association)
        fast = fn.apply(torch.softmax(logits, 1), S, G, G.norm(dim=0).clamp_min(1e-8))
        (g_fast,) = torch.autograd.grad(fast, logits)
        assert float(fast.detach()) == pytest.approx(float(direct.detach()), rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(g_fast.numpy(), g_direct.numpy(), rtol=1e-7, atol=1e-10)


class _LargestTensor(TorchDispatchMode):
    """Records the size of the largest tensor any torch operation produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("n_sources", [3, 1500])
def test_feature_cosine_memory_is_linear_in_sources(n_sources):
    """Cells mode: no sources x sources matrix, forward or backward (it was 1500 x 1500 here)."""
    n_spots, n_features = 20, 8
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n_sources, n_spots, generator=gen, requires_grad=True)
    S = torch.rand(n_sources, n_features, generator=gen)
    G = torch.rand(n_spots, n_features, generator=gen)
    with _LargestTensor() as largest:
        value = _feature_cosine_fn().apply(torch.softmax(logits, 1), S, G, G.norm(dim=0))
        value.backward()
    assert largest.numel <= max(n_sources, n_spots, n_features) * max(n_spots, n_features)
    direct = _cosine(torch.softmax(logits, 1).T @ S, G, dim=0).mean()
    (g_direct,) = torch.autograd.grad(direct, logits)
    assert float(value.detach()) == pytest.approx(float(direct.detach()), rel=1e-5)
    np.testing.assert_allclose(logits.grad.numpy(), g_direct.numpy(), rtol=1e-3, atol=1e-9)


def _mixture(n_types=4, n_spots=60, n_features=30, seed=0):
    rng = np.random.default_rng(seed)
    profiles = rng.gamma(1.0, 1.0, size=(n_types, n_features))
    # Every spot holds 10 cells, so the uniform density prior is exact and the truth is a global optimum.
    counts = rng.multinomial(10, rng.dirichlet(np.full(n_types, 0.5), size=n_spots))
    return profiles, counts, counts @ profiles


def test_fit_mapping_rows_are_distributions_and_loss_decreases():
    profiles, _, spots = _mixture()
    res = fit_mapping(profiles, spots, epochs=150, lr=0.1, seed=1, device="cpu")
    assert res.mapping.shape == (4, 60)
    np.testing.assert_allclose(res.mapping.sum(axis=1), 1.0, rtol=1e-5)
    assert res.loss.shape == (150,)
    assert res.loss[-1] < res.loss[0]
    assert res.device == "cpu"


def test_fit_mapping_is_seeded_without_global_state():
    profiles, _, spots = _mixture()
    torch.manual_seed(123)
    a = fit_mapping(profiles, spots, epochs=20, seed=5, device="cpu").mapping
    torch.manual_seed(999)
    b = fit_mapping(profiles, spots, epochs=20, seed=5, device="cpu").mapping
    c = fit_mapping(profiles, spots, epochs=20, seed=6, device="cpu").mapping
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_fit_mapping_recovers_exact_mixtures_in_clusters_mode():
    profiles, counts, spots = _mixture(seed=3)
    n = counts.sum(axis=0)
    source = profiles * n[:, None]  # clusters: features summed over the cluster's cells
    res = fit_mapping(source, spots, source_density=n / n.sum(), epochs=600, lr=0.1, seed=0, device="cpu")
    pred = mapping_to_proportions(res.mapping, np.arange(4), 4, n)
    truth = counts / counts.sum(axis=1, keepdims=True)
    r = [np.corrcoef(pred[:, k], truth[:, k])[0, 1] for k in range(4)]
    assert min(r) > 0.9, r


def test_fit_mapping_restores_torch_threads():
    before = torch.get_num_threads()
    profiles, _, spots = _mixture()
    fit_mapping(profiles, spots, epochs=2, device="cpu", num_threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("source", "target", "kwargs", "match"),
    [
        (np.ones((3, 4)), np.ones((5, 6)), {}, "different feature sizes"),
        (np.ones(3), np.ones((5, 3)), {}, "2-d"),
        (np.ones((3, 4)), np.ones((5, 4)), {"epochs": 0}, "epochs"),
        (np.ones((3, 4)), np.ones((5, 4)), {"lr": 0.0}, "lr"),
        (np.ones((3, 4)), np.ones((5, 4)), {"lr": np.nan}, "lr must be > 0, got nan"),
        (np.ones((3, 4)), np.ones((5, 4)), {"lambda_g1": np.nan}, "lambda_g1 must be a finite number >= 0"),
        (np.ones((3, 4)), np.ones((5, 4)), {"lambda_d": -1.0}, "lambda_d must be a finite number >= 0"),
    ],
)
def test_fit_mapping_rejects_bad_input(source, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_mapping(source, target, **kwargs)


def test_mapping_to_proportions_counts_cells_per_type():
    rng = np.random.default_rng(0)
    mapping = rng.dirichlet(np.ones(7), size=5)  # 5 cells x 7 spots
    groups = np.array([0, 1, 1, 2, 0])
    out = mapping_to_proportions(mapping, groups, 3, np.ones(5))
    expected = np.stack([mapping[groups == g].sum(axis=0) for g in range(3)], axis=1)
    np.testing.assert_allclose(out, expected / expected.sum(axis=1, keepdims=True))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(1, 8), st.integers(0, 1000))
def test_nms_keeps_only_the_maximum(n, c, seed):
    p = np.random.default_rng(seed).random((n, c))
    out = nms_refine(p)
    assert ((out > 0).sum(axis=1) == 1).all()
    np.testing.assert_array_equal(out.max(axis=1), p.max(axis=1))
    np.testing.assert_array_equal(out.argmax(axis=1), p.argmax(axis=1))


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 50), st.integers(1, 5), st.integers(0, 1000))
def test_percentile_normalize_maps_columns_to_unit_range_monotonically(n, c, seed):
    v = np.random.default_rng(seed).random((n, c))
    out = percentile_normalize(v, 5, 95)
    assert out.min() >= 0
    assert out.max() <= 1
    for k in range(c):
        order = np.argsort(v[:, k])
        assert (np.diff(out[order, k]) >= -1e-12).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 4), st.floats(0.0, 0.2), st.integers(0, 1000))
def test_percentile_normalize_zeroes_only_constant_columns(n, c, nonzero_fraction, seed):
    """A column non-zero in few rows (e.g. a rare type after NMS) keeps its non-zero entries."""
    rng = np.random.default_rng(seed)
    v = rng.random((n, c)) * (rng.random((n, c)) < nonzero_fraction)
    out = percentile_normalize(v, 5, 95)
    for col, scaled in zip(v.T, out.T, strict=True):
        if np.ptp(col) == 0:
            assert (scaled == 0).all()
            continue
        assert scaled.max() == 1.0
        if np.percentile(col, 95) == np.percentile(col, 5):  # rescaled over [min, max] instead
            np.testing.assert_array_equal(scaled > 0, col > col.min())


def test_percentile_normalize_clips_at_the_percentiles_not_the_extremes():
    """Values beyond the 5th / 95th percentiles map to 0 / 1 and the rest linearly in between, per
    column; plain min-max scaling would put the outliers at 0 / 1 and squeeze the rest near 0.5."""
    col = np.arange(101.0)
    col[0], col[100] = -1e6, 1e6  # sorted, the 5th percentile is 5 and the 95th 95 exactly
    v = np.c_[col, 10 * col + 7]
    out = percentile_normalize(v, 5, 95)
    expected = np.clip((np.arange(101.0) - 5) / 90, 0, 1)
    np.testing.assert_allclose(out, np.c_[expected, expected], atol=1e-12)
    np.testing.assert_array_equal(out[[0, 1, 4, 5], 0], 0.0)  # at or below the 5th percentile
    np.testing.assert_array_equal(out[[95, 96, 99, 100], 0], 1.0)  # at or above the 95th
    assert out[50, 0] == pytest.approx(0.5)
    assert out[20, 0] == pytest.approx(15 / 90)
    other = percentile_normalize(v, 10, 80)
    np.testing.assert_allclose(other[:, 0], np.clip((np.arange(101.0) - 10) / 70, 0, 1), atol=1e-12)


def test_percentile_normalize_after_nms_keeps_a_type_that_wins_few_spots():
    p = np.tile([0.6, 0.4, 0.0], (100, 1))
    p[:4] = [0.05, 0.05, 0.9]  # the third type wins 4 % of the spots
    out = percentile_normalize(nms_refine(p), 5, 95)
    np.testing.assert_array_equal(out[:4, 2], 1.0)
    assert (out[4:, 2] == 0).all()


def test_percentile_normalize_rejects_bad_percentiles():
    with pytest.raises(ValueError, match="Percentiles"):
        percentile_normalize(np.ones((3, 2)), 90, 10)


def test_normalize_rows_makes_empty_rows_uniform():
    out = normalize_rows(np.array([[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]]))
    np.testing.assert_allclose(out, [[1 / 3, 1 / 3, 1 / 3], [0.25, 0.75, 0.0]])


def test_fit_mapping_follows_the_direct_tangram_objective():
    """Same trajectory as eq. 12 + KL density term written the direct way (G_pred materialised)."""
    profiles, counts, spots = _mixture(seed=2)
    n = counts.sum(axis=0).astype(float)
    source, density = profiles * n[:, None], n / n.sum()
    epochs, lr = 40, 0.1
    res = fit_mapping(source, spots, source_density=density, epochs=epochs, lr=lr, seed=7, device="cpu")

    S = torch.tensor(source, dtype=torch.float64)
    G = torch.tensor(spots, dtype=torch.float64)
    d = torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=torch.float64)
    d_source = torch.tensor(density, dtype=torch.float64)
    start = initial_logits(7, np.arange(S.shape[0], dtype=np.uint64), np.arange(G.shape[0], dtype=np.uint64))
    logits = torch.tensor(start, dtype=torch.float64)
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    kl = torch.nn.KLDivLoss(reduction="sum")
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        M = torch.softmax(logits, dim=1)
        loss = -torch.nn.functional.cosine_similarity(M.T @ S, G, dim=0).mean() + kl(
            torch.log(d_source @ M), d
        )
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    np.testing.assert_allclose(res.loss, losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.mapping, torch.softmax(logits, 1).detach().numpy(), atol=1e-4)


def test_a_diverged_fit_is_an_error_not_uniform_proportions():
    rng = np.random.default_rng(0)
    profiles, spots = rng.random((3, 6)), rng.random((8, 6))
    with pytest.raises(FloatingPointError, match="diverged to non-finite values"):
        fit_mapping(profiles, spots, lr=np.inf, epochs=3, device="cpu")


def test_feature_cosine_reuses_its_buffer_across_epochs_and_refuses_a_second_backward():
    gen = torch.Generator().manual_seed(0)
    S, G = torch.rand(50, 6, generator=gen), torch.rand(9, 6, generator=gen)
    fn = _feature_cosine_fn("pred")
    for _ in range(2):  # the second forward writes over the first one's G_pred buffer
        logits = torch.randn(50, 9, generator=gen, requires_grad=True)
        value = fn.apply(torch.softmax(logits, 1), S, G, G.norm(dim=0))
        value.backward(retain_graph=True)
        direct = _cosine(torch.softmax(logits, 1).T @ S, G, dim=0).mean()
        (g_direct,) = torch.autograd.grad(direct, logits)
        np.testing.assert_allclose(logits.grad.numpy(), g_direct.numpy(), rtol=1e-4, atol=1e-7)
    with pytest.raises(RuntimeError, match="only once per forward"):
        value.backward(retain_graph=True)
    first = fn.apply(torch.softmax(logits, 1), S, G, G.norm(dim=0))
    fn.apply(torch.softmax(logits, 1), S, G, G.norm(dim=0))  # overwrites the first one's G_pred
    with pytest.raises(RuntimeError, match="before the next forward"):
        first.backward()
    with pytest.raises(ValueError, match="association must be"):
        _feature_cosine_fn("other")


@settings(max_examples=25, deadline=None)
@given(
    n_sources=st.integers(1, 12),
    n_spots=st.integers(1, 15),
    seed=st.integers(0, 2**63),
    data=st.data(),
)
def test_initial_logits_follow_the_keys_not_the_positions(n_sources, n_spots, seed, data):
    src = np.random.default_rng(seed % 2**32).integers(0, 2**63, n_sources, dtype=np.uint64)
    tgt = np.random.default_rng(seed % 2**32 + 1).integers(0, 2**63, n_spots, dtype=np.uint64)
    perm_src = np.asarray(data.draw(st.permutations(range(n_sources))), dtype=int)
    perm_tgt = np.asarray(data.draw(st.permutations(range(n_spots))), dtype=int)
    start = initial_logits(seed, src, tgt)
    moved = initial_logits(seed, src[perm_src], tgt[perm_tgt])
    np.testing.assert_array_equal(moved, start[np.ix_(perm_src, perm_tgt)])
    assert start.dtype == np.float32
    assert np.isfinite(start).all()


def _reference_logits(seed, source_keys, target_keys):
    """The start as the formula reads, vectorised in numpy (the kernel's oracle)."""
    from loki.tl._mapping import _mix64

    with np.errstate(over="ignore"):
        seed_key = _mix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        src = _mix64(source_keys.astype(np.uint64) ^ seed_key)
        tgt = _mix64(target_keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        z = _mix64(src[:, None] ^ tgt[None, :])
    u1 = ((z >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32
    u2 = (z & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(n_sources=st.integers(0, 9), n_spots=st.integers(0, 40), seed=st.integers(0, 2**64 - 1))
def test_initial_logits_kernel_equals_the_numpy_formula(n_sources, n_spots, seed):
    rng = np.random.default_rng(seed % 2**32)
    src = rng.integers(0, 2**64 - 1, n_sources, dtype=np.uint64, endpoint=True)
    tgt = rng.integers(0, 2**64 - 1, n_spots, dtype=np.uint64, endpoint=True)
    got = initial_logits(seed, src, tgt)
    assert got.shape == (n_sources, n_spots)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _reference_logits(seed, src, tgt), rtol=1e-6, atol=1e-6)


def test_initial_logits_are_standard_normal_and_depend_on_the_seed():
    keys_a, keys_b = np.arange(300, dtype=np.uint64), name_keys([f"spot{i}" for i in range(400)])
    start = initial_logits(0, keys_a, keys_b).astype(np.float64)
    assert abs(start.mean()) < 0.01
    assert abs(start.std() - 1) < 0.01
    # no correlation between neighbouring rows or columns (consecutive keys)
    assert abs(np.corrcoef(start[:-1].ravel(), start[1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(start[:, :-1].ravel(), start[:, 1:].ravel())[0, 1]) < 0.01
    other = initial_logits(1, keys_a, keys_b)
    assert abs(np.corrcoef(start.ravel(), other.ravel())[0, 1]) < 0.01
    np.testing.assert_array_equal(initial_logits(0, keys_a, keys_b), start.astype(np.float32))
    assert name_keys(["a", "b", "a"])[0] == name_keys(["a"])[0] != name_keys(["b"])[0]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), data=st.data())
def test_fit_mapping_is_equivariant_to_permuting_sources_and_spots(seed, data):
    """Same keys, permuted rows: the mapping is the same, permuted (up to rounding)."""
    rng = np.random.default_rng(seed)
    n_sources, n_spots = int(rng.integers(2, 25)), int(rng.integers(2, 30))
    source, target = rng.random((n_sources, 7)), rng.random((n_spots, 7))
    src_keys = name_keys([f"c{i}" for i in range(n_sources)])
    tgt_keys = name_keys([f"s{i}" for i in range(n_spots)])
    ps = np.asarray(data.draw(st.permutations(range(n_sources))), dtype=int)
    pt = np.asarray(data.draw(st.permutations(range(n_spots))), dtype=int)
    kwargs = {"epochs": 30, "seed": seed, "device": "cpu"}
    a = fit_mapping(source, target, source_keys=src_keys, target_keys=tgt_keys, **kwargs).mapping
    b = fit_mapping(
        source[ps], target[pt], source_keys=src_keys[ps], target_keys=tgt_keys[pt], **kwargs
    ).mapping
    np.testing.assert_allclose(b, a[np.ix_(ps, pt)], atol=1e-5)


def test_fit_mapping_rejects_keys_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"target_keys must have shape \(4,\)"):
        fit_mapping(np.ones((2, 3)), np.ones((4, 3)), target_keys=np.arange(3), epochs=1, device="cpu")


@pytest.mark.parametrize("bad_setting", [{"epochs": 0}, {"lr": 0.0}, {"num_threads": 0}, {"lambda_r": -1.0}])
def test_fit_mapping_checks_its_inputs_before_its_settings(bad_setting):
    """Shapes, then keys, then the settings (epochs, lr, num_threads, weights) in one place."""
    source, target = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match=r"source_keys must have shape \(2,\)"):
        fit_mapping(source, target, source_keys=np.arange(3), device="cpu", **bad_setting)
    with pytest.raises(ValueError, match=next(iter(bad_setting))):
        fit_mapping(source, target, source_keys=np.arange(2), device="cpu", **bad_setting)


def test_fit_mapping_takes_integer_keys_only():
    # float keys were truncated (1.2 and 1.7 gave one start), negative ones in a list overflowed
    source, target = np.ones((2, 3)), np.random.default_rng(0).random((2, 3))
    kwargs = {"epochs": 1, "device": "cpu"}
    for keys in (np.array([1.2, 1.7]), np.array(["a", "b"])):
        with pytest.raises(ValueError, match=r"source_keys must be integers .* name_keys"):
            fit_mapping(source, target, source_keys=keys, **kwargs)
    wrapped = fit_mapping(source, target, source_keys=[-1, 2], **kwargs).mapping
    same = fit_mapping(source, target, source_keys=np.array([2**64 - 1, 2], np.uint64), **kwargs).mapping
    np.testing.assert_array_equal(wrapped, same)


def test_a_long_fit_is_announced_with_its_estimate(monkeypatch, caplog):
    """A fit whose first epochs say it will be long logs its estimate; a short one, or one with a bar, does not."""
    import loki.tl._mapping as mapping

    profiles, _, spots = _mixture()
    with caplog.at_level("WARNING", logger="loki"):
        fit_mapping(profiles, spots, epochs=20, device="cpu")
    assert not caplog.records  # a few milliseconds: nothing to announce

    monkeypatch.setattr(mapping, "_LONG_FIT_S", 0.0)  # every fit counts as long
    with caplog.at_level("WARNING", logger="loki"):
        fit_mapping(profiles, spots, epochs=20, device="cpu")
    (record,) = caplog.records
    message = record.getMessage()
    assert "mapping's 20 epochs will take about" in message
    assert "on cpu (5 epochs took" in message
    assert "progress=True" in message
    assert "device='cuda'" in message

    caplog.clear()
    with caplog.at_level("WARNING", logger="loki"):
        fit_mapping(profiles, spots, epochs=20, device="cpu", progress=True)
    assert not caplog.records  # the bar shows it already
