"""Tools comparing two embeddings warn when their records name different model weights."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import loki as lk


@pytest.fixture(scope="module")
def models():
    # two untrained loki-tiny models of different seeds: same architecture, other weights
    return lk.models.load("loki-tiny", device="cpu", seed=0), lk.models.load(
        "loki-tiny", device="cpu", seed=1
    )


def _section(model, seed, n=36):
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(8)]
    a = ad.AnnData(rng.poisson(3, (n, len(genes))).astype(np.float32))
    a.var_names = genes
    a.obs_names = [f"s{seed}_{i}" for i in range(n)]
    a.obs[lk.Key.SENTENCE] = [" ".join(rng.permutation(genes)[:4]) for _ in range(n)]
    side = int(np.sqrt(n))
    a.obsm["spatial"] = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 100.0
    lk.tl.embed_text(a, model)
    a.obsm["X_own"] = a.obsm[lk.Key.TEXT].copy()  # an embedding loki did not record
    a.obs["type"] = ["a", "b"] * (n // 2)  # cell types, when the section is a decomposition's reference
    return a


CALLS = {
    "retrieve": lambda q, r, use: lk.tl.retrieve(q, r, k=3, use_query=use, use_bank=use),
    "predict_expression": lambda q, r, use: lk.tl.predict_expression(q, r, use_query=use, use_reference=use),
    "predict_expression_loso": lambda q, r, use: lk.tl.predict_expression_loso(
        {"q": q, "r": r}, use_query=use, use_reference=use
    ),
    "align": lambda q, r, use: lk.tl.align(q, target=r, use=use, method="rigid", n_pcs=2, inplace=False),
    "decompose": lambda q, r, use: lk.tl.decompose(
        q, reference=r.copy(), cell_type_key="type", use=use, reference_use=use, inplace=False
    ),
}


@pytest.mark.parametrize("call", CALLS)
def test_embeddings_of_two_models_are_named_in_a_warning(models, call):
    a, b = _section(models[0], 0), _section(models[1], 1)
    with pytest.warns(lk.LokiWarning, match="different model weights") as record:
        CALLS[call](a, b, lk.Key.TEXT)
    message = str(next(w.message for w in record if "different model weights" in str(w.message)))
    for model in models:
        assert model.checkpoint_hash[:12] in message
    assert "'loki-tiny'" in message


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("case", ["one model", "not recorded"])
def test_one_model_or_an_unrecorded_embedding_gives_no_warning(models, call, case):
    second = models[0] if case == "one model" else models[1]
    use = lk.Key.TEXT if case == "one model" else "X_own"
    a, b = _section(models[0], 0), _section(second, 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*different model weights")
        CALLS[call](a, b, use)


@pytest.mark.parametrize("same", [True, False])
def test_annotate_compares_its_model_with_the_embeddings_record(models, same):
    a = _section(models[0], 0)
    markers = {"one": ["G0", "G1"], "two": ["G2", "G3"]}
    model = models[0] if same else models[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lk.tl.annotate(a, markers=markers, model=model, use=lk.Key.TEXT)
    messages = [str(w.message) for w in caught if "different model weights" in str(w.message)]
    assert len(messages) == (0 if same else 1)
    if not same:
        assert models[1].checkpoint_hash[:12] in messages[0]
        assert "the class embeddings (model=)" in messages[0]


@pytest.mark.parametrize("precision", ["auto", "bf16-weights"])
def test_the_same_weights_saved_reloaded_or_in_another_precision_give_no_warning(models, tmp_path, precision):
    """A saved model reloads with its hash; loaded with bf16 weights, it is still the same file.

    precision='bf16-weights' rounds the weights (and so the hash), yet its embeddings differ from the
    fp32 ones by rounding only; the warning used to say they "mean nothing".
    """
    models[0].save(tmp_path / "m")
    fp32 = lk.models.load(tmp_path / "m", device="cpu")
    other = lk.models.load(tmp_path / "m", device="cpu", precision=precision)
    assert fp32.checkpoint_hash == models[0].checkpoint_hash
    a, b, c = _section(models[0], 0), _section(fp32, 1), _section(other, 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*different model weights")
        for query, bank in ((a, b), (b, c)):
            lk.tl.retrieve(query, bank, k=3, use_query=lk.Key.TEXT, use_bank=lk.Key.TEXT)
        lk.tl.annotate(c, markers={"one": ["G0", "G1"], "two": ["G2", "G3"]}, model=fp32, use=lk.Key.TEXT)
    # another model's embeddings beside the file's two precisions are still named
    with pytest.warns(lk.LokiWarning, match="different model weights"):
        lk.tl.predict_expression_loso(
            {"a": b, "b": c, "c": _section(models[1], 3)}, use_query=lk.Key.TEXT, use_reference=lk.Key.TEXT
        )


def test_annotate_takes_a_duck_typed_model_with_a_hash_but_no_info(models):
    a = _section(models[0], 0)

    class Encoder:  # a wrapper exposing the weights' hash, as a user's might
        checkpoint_hash = "f" * 64

        def encode_texts(self, sentences):
            return models[0].encode_texts(sentences)

    with pytest.warns(lk.LokiWarning, match=r"model=\) by '\?' \(weights ffffffffffff\)"):
        lk.tl.annotate(a, markers={"one": ["G0"], "two": ["G1"]}, model=Encoder(), use=lk.Key.TEXT)
