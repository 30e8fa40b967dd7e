"""The package logger, and loki's rule for warnings. loki never configures the root logger.

loki warns through one of two channels, as the Python logging HOWTO ("When to use logging") sets
them apart. ``warnings.warn(message, LokiWarning, stacklevel=user_stacklevel())`` when the user can
avoid the issue by changing the call or its input (pass a parameter, fix a key, choose another
option) and the result may not be what they meant; ``logger.warning(...)`` when there is nothing the
call can change and the event is only noted: a fact of the data or the environment, a notice the
user asked for (``trust_checkpoint=True``) or a follow-up note. Progress and each
write are logged at INFO. When in doubt, log. Warnings are :class:`LokiWarning`, never a plain
UserWarning: users filter loki's by category, and the command line tells them from other libraries'.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger("loki")

_PACKAGE = Path(__file__).resolve().parent


class LokiWarning(UserWarning):
    """loki's own warnings: a call whose result may not be what the user meant.

    A :class:`UserWarning`, so ``pytest.warns(UserWarning)`` and filters of UserWarnings catch it too.
    Silence loki's warnings, and only loki's, with
    ``warnings.filterwarnings("ignore", category=lk.LokiWarning)``.
    """


def user_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that points at the first caller outside loki.

    Called by the function that warns, however deep inside loki: the warning names the line of the
    user's call into loki's public function.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
