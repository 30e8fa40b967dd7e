"""The package logger. loki never configures the root logger."""

from __future__ import annotations

import logging

logger = logging.getLogger("loki")
