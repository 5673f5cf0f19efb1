"""structlog setup: JSON when not on a terminal, console otherwise; secrets never reach a log line."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit

import structlog

REDACTED = "[redacted]"
# A field or environment variable holds a secret when the last word of its name is one of these: api_key,
# auth_token, X-Twilio-Signature, VOICEBOT_STREAM_SECRET. Not twilio_signatures (a boolean setting), token_ttl_s
# or key_present: a word elsewhere in a name says nothing.
SECRET_WORDS = frozenset({"key", "token", "secret", "password", "passwd", "authorization", "signature",
                          "credentials"})
MIN_SECRET_CHARS = 6     # shorter environment values are too likely to occur in ordinary text to be hunted for
_WORD = re.compile(r"[^a-z0-9]+")


def names_a_secret(name: str) -> bool:
    words = _WORD.split(name.lower())
    return bool(words) and words[-1] in SECRET_WORDS


def secret_values(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The secrets in ``environ``: values of variables named for one (STEP_API_KEY, TWILIO_AUTH_TOKEN, ...) and
    the password inside a URL (VOICEBOT_DATABASE_URL), longest first so one inside another goes as a whole."""
    found = set()
    for name, value in environ.items():
        if names_a_secret(name):
            found.add(value.strip())
        elif "://" in value:
            try:
                password = urlsplit(value.strip()).password
            except ValueError:
                password = None
            if password:
                found.add(password)
    return tuple(sorted((v for v in found if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True))


class SecretRedactor:
    """The structlog processor: a field named for a secret is replaced whole (unless it is a flag such as
    True or None, which says only whether one is set), and a secret's value is cut out of any text, whatever
    the field (an error message, a URL, the event itself, a traceback)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets

    def __call__(self, _logger, _method, event_dict: dict) -> dict:
        for name, value in event_dict.items():
            if names_a_secret(str(name)) and value is not None and not isinstance(value, bool):
                event_dict[name] = REDACTED
            elif self.secrets:
                event_dict[name] = self._scrub(value)
        return event_dict

    def _scrub(self, value):
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(self._scrub(item) for item in value)
        if isinstance(value, dict):
            return {key: self._scrub(item) for key, item in value.items()}
        return value


def configure_logging(fmt: str = "auto", level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            SecretRedactor(secret_values(os.environ)),    # after format_exc_info: a traceback is text to scrub
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
