from __future__ import annotations

import numpy as np
import open_clip
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loki as lk


@pytest.fixture(scope="module")
def tokenizers():
    ref = open_clip.get_tokenizer("coca_ViT-L-14")
    return ref, lk.models.CachedTokenizer(ref, 76)


def test_ids_equal_open_clip_on_real_gene_sentences(mob1, tokenizers):
    ref, cached = tokenizers
    sentences = mob1.tables["MOB1"].obs[lk.Key.SENTENCE].astype(str).tolist()
    ours = cached.ids(sentences)
    theirs = ref(sentences).numpy()
    np.testing.assert_array_equal(ours, theirs)
    # the real 50-gene sentences overflow the 76-token context: truncation is exercised
    full = [len(ref.encode(s)) + 2 for s in sentences]
    assert max(full) > 76
    assert (ours[:, -1] == cached.eot).any()
    assert len(cached) > 50  # words are cached


def test_context_boundaries(tokenizers):
    ref, cached = tokenizers
    # sentences of growing length cross the 76-token boundary at every offset
    sentences = [" ".join(["Apoe"] * n) for n in range(0, 90)] + [
        "",
        "  Apoe\tPtgds\n",
        "MT-CO1 H2-K1 Gm42418",
    ]
    np.testing.assert_array_equal(cached.ids(sentences), ref(sentences).numpy())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["Apoe", "Snap25", "Gm42418", "2010107E04Rik", "mt-Co1", "H2-K1", "Sepp1", "Cd74", "X"]
        ),
        max_size=60,
    )
)
def test_ids_equal_open_clip_property(tokenizers, words):
    ref, cached = tokenizers
    s = " ".join(words)
    np.testing.assert_array_equal(cached.ids([s]), ref([s]).numpy())


def test_model_tokenizer_is_callable_like_open_clip(tiny):
    out = tiny.tokenizer(["Apoe Ptgds"])
    assert tuple(out.shape) == (1, 76)
    with pytest.raises(TypeError):
        tiny.tokenizer.ids([1])


@pytest.mark.parametrize(
    "text",
    ["Apoe\x85Ptgds", "Apoe\x1cPtgds", "Ã\xa0 Apoe", "A&amp;B C", "a&nbsp;b", "x\u2028y z", "🙂Apoe", "İx Y"],
)
def test_ids_equal_open_clip_where_cleaning_changes_the_text(tokenizers, text):
    ref, cached = tokenizers
    np.testing.assert_array_equal(cached.ids([text]), ref([text]).numpy())


_TRICKY = st.sampled_from(
    ["&amp;", "&nbsp;", "&#32;", "\xa0", "\x85", "\x1c", "\x0b", "\r", "Ã", "é", "\u0301"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(st.one_of(st.text(alphabet=st.characters(max_codepoint=127), max_size=8), _TRICKY)).map(
            "".join
        ),
        st.lists(st.sampled_from(["Apoe", "Gm42418", "mt-Co1", " ", "\t", "\n", "'s", "&"])).map("".join),
    )
)
def test_ids_equal_open_clip_on_any_text(tokenizers, text):
    ref, cached = tokenizers
    np.testing.assert_array_equal(cached.ids([text]), ref([text]).numpy())


def _whole_words_in_context(ref, text, n_ctx=76):
    """Words of ``text`` whose tokens all fit before the end token, counted with open_clip alone."""
    words = text.split()
    return max(
        (k for k in range(len(words) + 1) if len(ref.encode(" ".join(words[:k]))) + 2 <= n_ctx),
        default=0,
    )


def test_word_counts_say_how_many_genes_reach_the_encoder(mob1, tokenizers):
    ref, cached = tokenizers
    sentences = mob1.tables["MOB1"].obs[lk.Key.SENTENCE].astype(str).tolist()[:40]
    # one-token words around the boundary: 74 fit with sot and eot, a 75th is cut
    short = [" ".join(["gene"] * n) for n in (0, 1, 73, 74, 75, 80)]
    texts = [*sentences, *short, "café Apoe", " ".join(["café"] * 80)]
    ids, counts = cached.ids(texts, return_word_counts=True)
    np.testing.assert_array_equal(ids, cached.ids(texts))
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts[:, 1], [len(t.split()) for t in texts])
    expected = [_whole_words_in_context(ref, t) for t in texts[: len(sentences) + len(short)]]
    np.testing.assert_array_equal(counts[: len(expected), 0], expected)
    assert counts[len(sentences) : len(expected), 0].tolist() == [0, 1, 73, 74, 74, 74]
    # the 50-gene sentences are all cut: about 18-27 genes reach the encoder
    assert (counts[: len(sentences), 0] < counts[: len(sentences), 1]).all()
    assert 15 <= np.median(counts[: len(sentences), 0]) <= 30
    # texts encoded whole (non-ASCII): all words when they fit, -1 (unknown) when cut
    assert counts[-2].tolist() == [2, 2]
    assert counts[-1].tolist() == [-1, 80]


def test_fingerprint_tells_vocabularies_merges_and_cleaning_apart(tokenizers, tmp_path):
    import gzip

    from loki.models._tokenize import tokenizer_fingerprint

    ref, cached = tokenizers
    fp = cached.fingerprint()
    assert fp == tokenizer_fingerprint(ref) == tokenizer_fingerprint(open_clip.get_tokenizer("coca_ViT-L-14"))
    assert (fp["kind"], fp["vocab_size"], fp["clean"], len(fp["vocab_sha256"])) == (
        "SimpleTokenizer",
        49408,
        "lower",
        64,
    )
    more = tokenizer_fingerprint(open_clip.SimpleTokenizer(additional_special_tokens=["<gene>"]))
    assert (more["vocab_size"], more["vocab_sha256"] != fp["vocab_sha256"]) == (49409, True)
    assert tokenizer_fingerprint(open_clip.SimpleTokenizer(clean="whitespace"))["clean"] == "whitespace"
    # the same number of tokens, two merges in the other order: other ids for some words
    lines = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    swapped = tmp_path / "bpe.txt.gz"
    swapped.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    other = tokenizer_fingerprint(open_clip.SimpleTokenizer(bpe_path=str(swapped)))
    assert other["vocab_size"] == fp["vocab_size"]
    assert other["vocab_sha256"] != fp["vocab_sha256"]
