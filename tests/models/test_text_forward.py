"""The causal text forward used for inference equals open_clip's CoCa ``encode_text``."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # a hard dependency: a broken install must fail, not skip
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def tiny_model():
    import loki as lk

    return lk.models.load("loki-tiny", device="cpu", seed=0)


def _reference(model, ids: np.ndarray):
    with torch.inference_mode():
        return model.model.encode_text(torch.from_numpy(ids), normalize=False)


def test_loki_tiny_and_published_arch_qualify(tiny_model):
    import loki as lk
    from loki.models._text_forward import supports_causal_forward

    assert supports_causal_forward(tiny_model.model)
    small = lk.models.load("loki-small-data", device="cpu", seed=0)
    assert not supports_causal_forward(small.model)  # no open_clip text tower: open_clip's path is used


def test_causal_forward_equals_open_clip_on_real_sentences(tiny_model, mob1):
    import loki as lk
    from loki.models._text_forward import encode_text_causal

    sentences = mob1.tables["MOB1"].obs[lk.Key.SENTENCE].astype(str).tolist()[:48]
    ids = tiny_model.tokenizer.ids(sentences)
    assert not (ids == 0).any(), "50-gene MOB sentences fill the context"
    with torch.inference_mode():
        fast = encode_text_causal(tiny_model.model, torch.from_numpy(ids))
    np.testing.assert_allclose(fast.numpy(), _reference(tiny_model, ids).numpy(), atol=2e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(1, 9),
    lengths=st.lists(st.integers(1, 76), min_size=9, max_size=9),
    padded=st.lists(st.booleans(), min_size=9, max_size=9),
    seed=st.integers(0, 2**16),
)
def test_mixed_padded_batches_equal_open_clip(tiny_model, n_rows, lengths, padded, seed):
    """Rows with padding go through open_clip's forward, the rest through the causal one, per row."""
    from loki.models._text_forward import encode_text

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 49406, (n_rows, 76))
    for i in range(n_rows):
        if padded[i]:
            ids[i, lengths[i] :] = 0
    with torch.inference_mode():
        got = encode_text(tiny_model.model, ids, torch.from_numpy(ids), causal=True)
    np.testing.assert_allclose(got.numpy(), _reference(tiny_model, ids).numpy(), atol=2e-5, rtol=1e-5)


def test_encode_texts_mixes_short_and_full_sentences(tiny_model, mob1):
    """Short sentences (padded) and 50-gene ones in one batch: the same embeddings as open_clip's path."""
    import loki as lk

    sentences = mob1.tables["MOB1"].obs[lk.Key.SENTENCE].astype(str).tolist()[:12]
    sentences[3] = "Apoe"
    sentences[7] = "Snap25 Ptgds Apoe"
    got = tiny_model.encode_texts(sentences, batch_size=5)
    ref = _reference(tiny_model, tiny_model.tokenizer.ids(sentences)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=2e-5)
