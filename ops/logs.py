"""Structured logs: JSON lines in service mode, readable lines on a terminal, never a secret."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import stamina
import structlog

SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "authorization")


def is_secret_key(key: str) -> bool:
    key = key.lower()
    return key == "pass" or any(key == w or key.endswith("_" + w) or key.startswith(w + "_") for w in SECRET_WORDS) and not key.endswith("_only")


def drop_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor that replaces any field whose name says secret."""
    for key in list(event_dict):
        if is_secret_key(key):
            event_dict[key] = "[redacted]"
    return event_dict


class _CurrentStderr:
    """Whatever sys.stderr is at the time of writing (tests and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Send structlog output to stderr: JSON unless stderr is a terminal (or `json` says)."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Each retry is logged by its caller through `describe_error`; stamina's own line would
    # carry the raw exception, whose text may hold what was sent to a server.
    stamina.instrumentation.set_on_retry_hooks([])
