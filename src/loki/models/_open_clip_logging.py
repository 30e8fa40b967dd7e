"""Keep open_clip's log calls from configuring or flooding the application's root logger."""

from __future__ import annotations

import contextlib
import logging

# open_clip says this whenever a model is built without its pretrained weights, which is exactly what
# loki asks for before loading weights of its own.
_EXPECTED = ("No pretrained weights loaded",)


@contextlib.contextmanager
def quiet_open_clip():
    """Run open_clip calls without touching the root logger's configuration.

    open_clip logs with the module-level ``logging.info`` / ``logging.warning``, which call
    ``logging.basicConfig()`` and so install a stderr handler on an unconfigured root logger of the
    user's program. A temporary ``NullHandler`` makes that call a no-op, and a filter drops the
    expected "no pretrained weights" warning. Both are removed on exit.
    """
    root = logging.getLogger()
    handler = logging.NullHandler()

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_EXPECTED)

    root.addHandler(handler)
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        root.removeHandler(handler)
