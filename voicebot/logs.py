"""structlog setup: JSON when not on a terminal, console otherwise; secrets never reach a log line."""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_KEYS = ("key", "token", "secret", "authorization", "password", "signature")


def _redact_secrets(_logger, _method, event_dict: dict) -> dict:
    for name in event_dict:
        lowered = name.lower()
        if any(part in lowered for part in _SECRET_KEYS) and not lowered.endswith(("_set", "_present")):
            event_dict[name] = "[redacted]"
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write per line (print() writes the line and its newline apart): lines from the workers of
        # `serve --workers`, which share the stream, then never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # aiohttp's access log and library warnings go through stdlib logging.
    logging.basicConfig(level=logging.WARNING, stream=stream, format="%(levelname)s %(name)s: %(message)s")
