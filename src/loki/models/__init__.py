"""OmiCLIP model layer over open_clip: load, encode, fine-tune. Importing this module imports torch."""

from __future__ import annotations

# models
