"""Typed StepFun errors shared by every endpoint client."""

from __future__ import annotations


class StepFunError(Exception):
    """A StepFun request failed. ``trace_id`` is the X-Trace-Id StepFun support asks for."""

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 code: str | None = None, trace_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.trace_id = trace_id

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.type:
            parts.append(f"type={self.type}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.trace_id:
            parts.append(f"trace_id={self.trace_id}")
        return " ".join(parts)


class StepFunAuthError(StepFunError):
    """401/403: the key is missing or invalid. Retrying will not help."""


class StepFunQuotaError(StepFunError):
    """402/429: balance or rate limit."""


class StepFunUnavailable(StepFunError):
    """Connect failure, timeout or 5xx: the service cannot be used right now."""


class StepFunRequestError(StepFunError):
    """400/404/451: the request itself was rejected."""


def http_status(value: object) -> int | None:
    """The HTTP status an error event carries in its ``status`` or ``code`` (a number or its text; None when
    there is none: absent, other text, 1e999)."""
    try:
        status = int(value)      # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return status if 400 <= status < 600 else None


def error_for_status(status: int, message: str, **fields) -> StepFunError:
    if status in (401, 403):
        cls = StepFunAuthError
    elif status in (402, 429):
        cls = StepFunQuotaError
    elif status >= 500:
        cls = StepFunUnavailable
    else:
        cls = StepFunRequestError
    return cls(message, status=status, **fields)
