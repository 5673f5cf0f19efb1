"""Log lines: secrets never reach them (by the field's name, and by a secret's value wherever it appears), and
nothing else is hidden — a boolean such as ``twilio_signatures`` is printed as it is."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from voicebot.logs import configure_logging

KEY = "sk-live-4f9a0c2e7b"
STREAM_SECRET = "stream-secret-0123456789abcdef0123"
DB_PASSWORD = "pg-pass-77aa"


@pytest.fixture
def lines(monkeypatch):
    """Logging configured as serve does (JSON), with secrets in the environment; returns the lines written."""
    monkeypatch.setenv("STEP_API_KEY", KEY)
    monkeypatch.setenv("VOICEBOT_STREAM_SECRET", STREAM_SECRET)
    monkeypatch.setenv("VOICEBOT_DATABASE_URL", f"postgresql://bot:{DB_PASSWORD}@db.example:5432/voicebot")
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    structlog.reset_defaults()


def test_the_startup_line_shows_its_booleans(lines):
    structlog.get_logger("t").info("voicebot_listening", url="http://127.0.0.1:8080", twilio_signatures=True,
                                   twilio_auth_token_set=False, key_present=True)
    line = lines()[0]
    assert line["twilio_signatures"] is True
    assert line["twilio_auth_token_set"] is False and line["key_present"] is True


@pytest.mark.parametrize("field", ["api_key", "auth_token", "signing_key", "password", "secret", "authorization",
                                   "x_twilio_signature", "stream-token"])
def test_a_field_named_for_a_secret_is_redacted(lines, field):
    structlog.get_logger("t").info("event", **{field: "some-value-123"})
    assert lines()[0][field] == "[redacted]"


@pytest.mark.parametrize("field", ["twilio_signatures", "token_ttl_s", "keys_loaded", "monkey", "keyword",
                                   "tokens", "secretary"])
def test_a_field_whose_name_only_contains_a_secret_word_is_shown(lines, field):
    structlog.get_logger("t").info("event", **{field: "shown"})
    assert lines()[0][field] == "shown"


def test_a_secret_value_is_redacted_wherever_it_appears(lines):
    log = structlog.get_logger("t")
    log.error("stepfun_failed", error=f"401 for key {KEY}: invalid", url=f"wss://x/realtime?token={STREAM_SECRET}")
    log.info("database", target=f"postgresql://bot:{DB_PASSWORD}@db.example:5432/voicebot")
    error, database = lines()
    assert KEY not in json.dumps(error) and STREAM_SECRET not in json.dumps(error)
    assert error["error"] == "401 for key [redacted]: invalid" and error["url"] == "wss://x/realtime?token=[redacted]"
    assert database["target"] == "postgresql://bot:[redacted]@db.example:5432/voicebot"


def test_a_secret_in_the_event_text_or_an_exception_is_redacted(lines):
    log = structlog.get_logger("t")
    try:
        raise RuntimeError(f"refused {KEY}")
    except RuntimeError:
        log.exception(f"failed with {KEY}")
    line = lines()[0]
    assert KEY not in json.dumps(line)
    assert line["event"] == "failed with [redacted]" and "refused [redacted]" in line["exception"]
