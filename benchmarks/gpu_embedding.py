"""One-shot GPU throughput check of the OmiCLIP embedding pipeline (coca_ViT-L-14, random weights).

Prepared for one NVIDIA H100; not runnable without CUDA. Measures end-to-end

- patches/s from uint8 224 px crops (host -> device copy, on-device resize/normalise, encode, L2, back to
  numpy) with ``OmiCLIP.encode_images`` under bf16 autocast and with bf16 weights, against a per-patch fp32
  loop with open_clip's PIL preprocess (target >= 2,200 patches/s);
- sentences/s including tokenisation (cold per-gene cache) with ``OmiCLIP.encode_texts``, against a
  per-sentence loop with open_clip's tokenizer (target >= 20,000 sentences/s).

Usage (about 3 minutes including model creation)::

    python benchmarks/gpu_embedding.py --out $OUT/gpu_embedding.md
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np


def timed(fn, n_items: int, reps: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return reps * n_items / (time.perf_counter() - t0)


def gene_sentences(n: int, rng) -> list[str]:
    """Random 50-gene sentences over a vocabulary of realistic mouse/human-like symbols."""
    stems = [
        "Apoe",
        "Ptgds",
        "Snap25",
        "Malat1",
        "Gm",
        "Rik",
        "Atp1a",
        "Slc",
        "Cd",
        "Hnrnp",
        "Rps",
        "Rpl",
        "Kif",
        "Zfp",
    ]
    vocab = [f"{rng.choice(stems)}{rng.integers(1, 9999)}" for _ in range(5000)]
    return [" ".join(rng.choice(vocab, 50, replace=False)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--n-patches", type=int, default=8192)
    ap.add_argument("--n-sentences", type=int, default=65536)
    ap.add_argument("--batch-images", type=int, default=512)
    ap.add_argument("--batch-texts", type=int, default=2048)
    args = ap.parse_args()

    import open_clip
    import torch

    import loki as lk

    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (args.n_patches, 224, 224, 3), dtype=np.uint8)
    sentences = gene_sentences(args.n_sentences, rng)
    rows = []

    model = lk.models.load("coca_ViT-L-14", device="cuda", precision="bf16")
    model.trained = True  # throughput only
    rows.append(
        (
            "images, bf16 autocast, batched",
            timed(lambda: model.encode_images(patches, batch_size=args.batch_images), len(patches), 2),
        )
    )
    ref_tok = open_clip.get_tokenizer("coca_ViT-L-14")

    def text_cold():
        model.tokenizer = lk.models.CachedTokenizer(ref_tok, 76)  # cold cache: tokenisation included
        model.encode_texts(sentences, batch_size=args.batch_texts)

    rows.append(
        ("texts incl. tokenisation (cold cache), bf16 autocast, batched", timed(text_cold, len(sentences), 2))
    )
    rows.append(
        (
            "texts, warm token cache, bf16 autocast",
            timed(lambda: model.encode_texts(sentences, batch_size=args.batch_texts), len(sentences), 2),
        )
    )

    fp32 = lk.models.load("coca_ViT-L-14", device="cuda", precision="fp32")
    fp32.model.load_state_dict(model.model.state_dict())
    from PIL import Image

    def loop_images():
        with torch.inference_mode():
            for p in patches[:64]:
                x = fp32.preprocess(Image.fromarray(p)).unsqueeze(0).cuda()
                fp32.model.encode_image(x, normalize=True).cpu()

    def loop_texts():
        with torch.inference_mode():
            for s in sentences[:256]:
                fp32.model.encode_text(ref_tok([s]).cuda(), normalize=True).cpu()

    rows.append(("baseline: per-patch loop, fp32, PIL preprocess", timed(loop_images, 64, 1)))
    rows.append(("baseline: per-sentence loop, fp32, open_clip tokenizer", timed(loop_texts, 256, 1)))

    fast = lk.models.load("coca_ViT-L-14", device="cuda", precision="bf16-weights")
    fast.trained = True
    rows.append(
        (
            "images, bf16 weights, batched",
            timed(lambda: fast.encode_images(patches, batch_size=args.batch_images), len(patches), 2),
        )
    )

    def text_cold_fast():
        fast.tokenizer = lk.models.CachedTokenizer(ref_tok, 76)
        fast.encode_texts(sentences, batch_size=args.batch_texts)

    rows.append(
        ("texts incl. tokenisation (cold cache), bf16 weights", timed(text_cold_fast, len(sentences), 2))
    )

    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    md = [
        f"### GPU embedding throughput, coca_ViT-L-14 random weights — {date}",
        "",
        f"Device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, open_clip {open_clip.__version__}. "
        "End to end from uint8 224 px crops in host memory / Python strings to float32 numpy embeddings. "
        "Targets: >= 2,200 patches/s, >= 20,000 sentences/s.",
        "",
        "| pipeline | items/s |",
        "|---|---|",
        *[f"| {name} | {r:,.0f} |" for name, r in rows],
        "",
    ]
    text = "\n".join(md)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
