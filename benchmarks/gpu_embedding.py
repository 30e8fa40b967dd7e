"""GPU throughput of the OmiCLIP embedding pipeline (``coca_ViT-L-14``, random weights).

Measures, on one CUDA device, end to end as a user calls it:

- patches/s from uint8 224 px crops in host memory (host -> device copy, on-device normalisation,
  encode, L2, back to numpy) with ``OmiCLIP.encode_images``, under bf16 autocast and with bf16 weights;
  target >= 2,200 patches/s;
- gene sentences/s from Python strings, tokenisation included (a cold per-gene cache each repeat),
  with ``OmiCLIP.encode_texts``; target >= 20,000 sentences/s.

Beside them, in the same run: the per-item fp32 loops with open_clip's PIL preprocess and tokenizer
(the published code's pattern, the baseline of the ratios), the model alone on tensors already on the
device (where the end-to-end pipeline loses time), tokenisation alone on the host, and the agreement
of the fast paths with the fp32 path on the same weights (cosine similarity of the embeddings).

Usage on the GPU machine (about 2 minutes)::

    PYTHONPATH=src python benchmarks/gpu_embedding.py --out $OUT/gpu_embedding.md

A CPU dry run of the script's logic: ``--arch loki-tiny --device cpu --n-patches 64 --n-sentences 512``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
from _without_scverse import import_loki_module


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, n_items: int, device, reps: int = 2) -> float:
    """Items per second over ``reps`` calls, after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return reps * n_items / (time.perf_counter() - t0)


def gene_sentences(n: int, rng) -> list[str]:
    """Random 50-gene sentences over 5,000 symbols shaped like mouse gene names."""
    stems = ["Apoe", "Ptgds", "Snap25", "Malat1", "Gm", "Rik", "Atp1a", "Slc", "Cd", "Hnrnp", "Kif", "Zfp"]
    vocab = sorted({f"{rng.choice(stems)}{rng.integers(1, 9999)}" for _ in range(5200)})[:5000]
    return [" ".join(rng.choice(vocab, 50, replace=False)) for _ in range(n)]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--arch", default="coca_ViT-L-14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n-patches", type=int, default=8192)
    ap.add_argument("--n-sentences", type=int, default=65536)
    args = ap.parse_args()

    import open_clip
    import torch
    from PIL import Image

    models = import_loki_module("loki.models")
    from loki.models._text_forward import encode_text_causal

    device = torch.device(args.device)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --device cpu for a dry run)"
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (args.n_patches, 224, 224, 3), dtype=np.uint8)
    sentences = gene_sentences(args.n_sentences, rng)
    rows: list[tuple[str, float]] = []
    notes: list[str] = []

    def report() -> str:
        date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
        name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "CPU"
        text = "\n".join(
            [
                f"### GPU embedding throughput, {args.arch} random weights ({date})",
                "",
                f"Device: {name}; torch {torch.__version__}, open_clip {open_clip.__version__}, "
                f"{args.n_patches} patches, {args.n_sentences} sentences of 50 genes. End to end from uint8 "
                "224 px crops in host memory / Python strings to float32 numpy embeddings unless the row "
                "says otherwise. Targets: >= 2,200 patches/s, >= 20,000 sentences/s.",
                "",
                "| pipeline | items/s |",
                "|---|---:|",
                *[f"| {n} | {r:,.0f} |" for n, r in rows],
                "",
                *notes,
                "",
            ]
        )
        if args.out:
            args.out.write_text(text)
        return text

    t0 = time.perf_counter()
    fp32 = models.load(args.arch, device=str(device), precision="fp32", seed=0)
    fp32.trained = True  # throughput and agreement only: the weights are random
    auto = models.OmiCLIP(fp32.model, arch=args.arch, device=device, precision="bf16")
    fast = models.OmiCLIP(copy.deepcopy(fp32.model), arch=args.arch, device=device, precision="bf16-weights")
    notes.append(f"- model creation: {time.perf_counter() - t0:.0f} s")
    ref_tok = open_clip.get_tokenizer("coca_ViT-L-14")

    # ---- agreement with the fp32 path (same weights)
    few, few_s = patches[:64], sentences[:256]
    e32 = fp32.encode_images(few)
    pil = fp32.encode_images([Image.fromarray(p) for p in few])
    notes.append(
        f"- uint8 on-device preprocessing vs open_clip PIL preprocessing, fp32: min cosine {min_cosine(e32, pil):.5f}"
    )
    for label, m in (("bf16 autocast", auto), ("bf16 weights", fast)):
        notes.append(
            f"- {label} vs fp32: images min cosine {min_cosine(m.encode_images(few), e32):.4f}, "
            f"texts min cosine {min_cosine(m.encode_texts(few_s), fp32.encode_texts(few_s)):.4f}"
        )
    ids = fast.tokenizer.ids(few_s)
    same = np.array_equal(ids, ref_tok(few_s).numpy())
    notes.append(f"- cached token ids equal open_clip's tokenizer on 256 sentences: {same}")
    print(report(), flush=True)

    # ---- images
    for label, m, bs in (
        ("images, bf16 autocast, batch 512", auto, 512),
        ("images, bf16 weights, batch 256", fast, 256),
        ("images, bf16 weights, batch 512", fast, 512),
    ):
        rows.append(
            (label, rate(lambda m=m, bs=bs: m.encode_images(patches, batch_size=bs), len(patches), device))
        )
    x_dev = fast.image_tensor(patches[:512])

    def model_only_images():
        with torch.inference_mode():
            for _ in range(4):
                fast.model.encode_image(x_dev, normalize=True)

    rows.append(
        (
            "images, model only on a device tensor, bf16 weights, batch 512",
            rate(model_only_images, 4 * len(x_dev), device),
        )
    )
    print(report(), flush=True)

    # ---- texts
    def cold(m, bs):
        m.tokenizer = models.CachedTokenizer(ref_tok, 76)  # empty cache: tokenisation is timed too
        m.encode_texts(sentences, batch_size=bs)

    for label, m, bs in (
        ("texts incl. tokenisation (cold cache), bf16 autocast, batch 2048", auto, 2048),
        ("texts incl. tokenisation (cold cache), bf16 weights, batch 1024", fast, 1024),
        ("texts incl. tokenisation (cold cache), bf16 weights, batch 2048", fast, 2048),
        ("texts incl. tokenisation (cold cache), bf16 weights, batch 4096", fast, 4096),
    ):
        rows.append((label, rate(lambda m=m, bs=bs: cold(m, bs), len(sentences), device)))
    # spots with few expressed genes give short sentences: their padded rows take open_clip's forward
    mixed = [" ".join(t.split()[: 5 + i % 16]) if i % 10 == 0 else t for i, t in enumerate(sentences)]

    def cold_mixed():
        fast.tokenizer = models.CachedTokenizer(ref_tok, 76)
        fast.encode_texts(mixed, batch_size=2048)

    rows.append(
        (
            "texts incl. tokenisation (cold cache), 10% short (padded) sentences, bf16 weights, batch 2048",
            rate(cold_mixed, len(mixed), device),
        )
    )
    rows.append(
        (
            "texts, warm token cache, bf16 weights, batch 2048",
            rate(lambda: fast.encode_texts(sentences, batch_size=2048), len(sentences), device),
        )
    )
    tok_dev = torch.from_numpy(fast.tokenizer.ids(sentences[:2048])).to(device)

    def model_only_texts(forward):
        with torch.inference_mode():
            for _ in range(4):
                forward(tok_dev)

    for label, forward in (
        ("open_clip encode_text", lambda t: fast.model.encode_text(t, normalize=True)),
        ("loki causal forward", lambda t: encode_text_causal(fast.model, t)),
    ):
        rows.append(
            (
                f"texts, model only on device tokens, {label}, bf16 weights, batch 2048",
                rate(lambda f=forward: model_only_texts(f), 4 * len(tok_dev), device),
            )
        )
    host = sentences[: min(len(sentences), 16384)]
    rows.append(
        (
            "tokenisation alone on one host core, loki cached tokenizer (cold cache)",
            rate(
                lambda: models.CachedTokenizer(ref_tok, 76).ids(host), len(host), torch.device("cpu"), reps=1
            ),
        )
    )
    rows.append(
        (
            "tokenisation alone on one host core, open_clip tokenizer",
            rate(lambda: ref_tok(host[:4096]), 4096, torch.device("cpu"), reps=1),
        )
    )
    print(report(), flush=True)

    # ---- baselines: the per-item fp32 pattern of the published code
    def loop_images():
        with torch.inference_mode():
            for p in patches[:64]:
                x = fp32.preprocess(Image.fromarray(p)).unsqueeze(0).to(device)
                fp32.model.encode_image(x, normalize=True).cpu()

    def loop_texts():
        with torch.inference_mode():
            for s in sentences[:256]:
                fp32.model.encode_text(ref_tok([s]).to(device), normalize=True).cpu()

    rows.append(("baseline: per-patch loop, fp32, PIL preprocess", rate(loop_images, 64, device, reps=1)))
    rows.append(
        ("baseline: per-sentence loop, fp32, open_clip tokenizer", rate(loop_texts, 256, device, reps=1))
    )
    best_img = max(r for n, r in rows if n.startswith("images, bf16"))
    best_txt = max(r for n, r in rows if n.startswith("texts incl."))
    notes.append(
        f"- best end-to-end: {best_img:,.0f} patches/s ({best_img / rows[-2][1]:.0f}x the per-patch loop), "
        f"{best_txt:,.0f} sentences/s ({best_txt / rows[-1][1]:.0f}x the per-sentence loop)"
    )
    print(report(), flush=True)

    if device.type == "cuda":  # does kernel fusion help the text tower? (not used by the library)
        t0 = time.perf_counter()
        compiled = torch.compile(lambda t: encode_text_causal(fast.model, t))
        with torch.inference_mode():
            compiled(tok_dev)
        notes.append(
            f"- torch.compile of the causal text forward: {time.perf_counter() - t0:.0f} s to compile"
        )
        rows.append(
            (
                "texts, model only on device tokens, loki causal forward + torch.compile, batch 2048",
                rate(lambda: model_only_texts(compiled), 4 * len(tok_dev), device),
            )
        )
        print(report(), flush=True)


if __name__ == "__main__":
    main()
