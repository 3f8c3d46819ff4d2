"""structlog as JSON key/value events. Never log PHI: referral IDs and codes only."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(level: str = "INFO", json: bool = True, stream: TextIO | None = None) -> None:
    """Log to `stream` (default stderr). An explicit stream replaces handlers set up earlier."""
    force = stream is not None
    stream = stream or sys.stderr
    logging.basicConfig(stream=stream, level=getattr(logging, level.upper(), logging.INFO), format="%(message)s", force=force)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # ~25 lines per association otherwise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
