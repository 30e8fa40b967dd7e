"""CPU embedding throughput: batched device-side pipeline vs the per-item open_clip loop.

Measures, in one run, for loki-tiny (and briefly for coca_ViT-L-14 with random weights):
patches/s from uint8 crops (preprocessing included) and sentences/s (tokenisation included), for
``OmiCLIP.encode_images`` / ``encode_texts`` and for the per-item baseline (open_clip PIL preprocess +
tokenizer + one forward per item). Also the tokenizer alone: open_clip's vs the per-gene cache.

Usage::

    flock /tmp/loki_bench.lock python benchmarks/bench_embedding.py --out benchmarks/_out/embedding.md
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np

WARMUP = True


def rate(fn, n_items: int, min_seconds: float = 1.0) -> float:
    if WARMUP:
        fn()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return reps * n_items / dt


def per_item_images(model, patches):
    import torch
    from PIL import Image

    with torch.inference_mode():
        for p in patches:
            x = model.preprocess(Image.fromarray(p)).unsqueeze(0)
            model.model.encode_image(x, normalize=True)


def per_item_texts(model, sentences, tokenizer):
    import torch

    with torch.inference_mode():
        for s in sentences:
            model.model.encode_text(tokenizer([s]), normalize=True)


def bench(arch: str, patches, sentences, n_img: int, n_txt: int, threads: int) -> dict:
    import open_clip

    import loki as lk

    model = lk.models.load(arch, device="cpu")
    model.trained = True  # throughput only; silences the untrained warning
    ref_tok = open_clip.get_tokenizer(arch if arch.startswith("coca") else "coca_ViT-L-14")
    p, s = patches[:n_img], sentences[:n_txt]
    out = {"arch": arch, "threads": threads, "n_img": len(p), "n_txt": len(s)}
    out["img_batched"] = rate(lambda: model.encode_images(p, batch_size=256), len(p))
    out["img_loop"] = rate(lambda: per_item_images(model, p[: max(2, len(p) // 8)]), max(2, len(p) // 8))
    fresh = lambda: lk.models.CachedTokenizer(ref_tok, 76).ids(s)  # noqa: E731 - cold cache each call
    out["txt_batched"] = rate(lambda: model.encode_texts(s, batch_size=512), len(s))
    out["txt_loop"] = rate(
        lambda: per_item_texts(model, s[: max(2, len(s) // 8)], ref_tok), max(2, len(s) // 8)
    )
    out["tok_open_clip"] = rate(lambda: ref_tok(s, context_length=76), len(s))
    out["tok_cached_cold"] = rate(fresh, len(s))
    out["tok_cached_warm"] = rate(lambda: model.tokenizer.ids(s), len(s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import loki as lk

    sdata = lk.datasets.mob(["MOB1", "MOB2", "MOB3"])
    sentences, patches = [], []
    for s in ("MOB1", "MOB2", "MOB3"):
        lk.pp.gene_sentences(sdata, table_key=s)
        sentences += sdata.tables[s].obs[lk.Key.SENTENCE].astype(str).tolist()
        patches.append(np.asarray(lk.pp.spot_patches(sdata, table_key=s, size=224)))
    patches = np.concatenate(patches)
    rows = [bench("loki-tiny", patches, sentences, 1024, 1224, args.threads)]
    if not args.skip_large:
        global WARMUP
        WARMUP = False  # one timed call each: a coca_ViT-L-14 forward takes seconds per patch on this CPU
        rows.append(bench("coca_ViT-L-14", patches, sentences, 4, 32, args.threads))
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    md = [
        f"### Embedding throughput on CPU — {date}",
        "",
        f"Machine: 2 CPU cores, 24 GiB, shared with other engineers' processes (numbers are noisy and low); "
        f"torch threads {args.threads}; no GPU in this session (see benchmarks/gpu_embedding.py for the H100 "
        "script). Inputs: real MOB1-3 patches, uint8 224 px (resized on the fly to the model input), and "
        "their 50-gene sentences. Baseline: per-item loop with open_clip's PIL preprocess / tokenizer, measured "
        "in the same run.",
        "",
        "| model | patches/s batched | patches/s per-item loop | ratio | sentences/s batched | sentences/s loop | ratio | tokenizer open_clip /s | cached cold /s | cached warm /s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['arch']} | {r['img_batched']:.3g} | {r['img_loop']:.3g} | {r['img_batched'] / r['img_loop']:.1f}x "
            f"| {r['txt_batched']:.3g} | {r['txt_loop']:.3g} | {r['txt_batched'] / r['txt_loop']:.1f}x "
            f"| {r['tok_open_clip']:.0f} | {r['tok_cached_cold']:.0f} | {r['tok_cached_warm']:.0f} |"
        )
    md.append("")
    text = "\n".join(md)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
