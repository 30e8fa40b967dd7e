"""Folders a call creates, and their removal when the call fails (nothing is left behind)."""

from __future__ import annotations

from pathlib import Path


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) as long as they are empty; one holding anything stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break
