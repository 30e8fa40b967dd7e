"""Checkpoint files by themselves: the suffixes of weights files, and the cause of an error reading one."""

from __future__ import annotations

import re

#: Suffixes of the weights files :func:`~loki.models.load` looks for in a directory that
#: :meth:`~loki.models.OmiCLIP.save` did not write (a Hugging Face snapshot, a training run's checkpoints).
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


#: Sentences of torch's weights-only errors that give torch's advice (re-run with weights_only=False,
#: allowlist the global, read the docs) rather than the cause; loki gives its own advice.
_TORCH_ADVICE = re.compile(
    r"weights_only|trusted source|trust the source|file an issue"
    r"|^(Please|Check the documentation|Alternatively)",
    re.IGNORECASE,
)


def first_line(err: BaseException, limit: int = 300) -> str:
    """``Type: cause`` of an error, at most about ``limit`` characters, cut between words.

    For torch's weights-only errors the cause is the unpickler's own message (e.g. the line naming the
    blocked global) without torch's preamble and advice; for other errors it is the first line.
    """
    text = str(err)
    cause = ""
    if text.startswith("Weights only load failed"):
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text, re.DOTALL)
        body = found.group(1) if found else text.removeprefix("Weights only load failed.")
        sentences = [
            sentence
            for line in body.splitlines()
            for sentence in re.split(r"(?<=\.)\s+(?=[A-Z])", line.strip())
            if sentence and not _TORCH_ADVICE.search(sentence)
        ]
        cause = " ".join(sentences)
    if not cause:
        cause = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(cause) > limit:
        head = cause[: limit + 1].rsplit(None, 1)[0] if " " in cause[:limit] else cause[:limit]
        cause = head.rstrip(" ,;:") + " ..."
    return f"{type(err).__name__}: {cause}"
