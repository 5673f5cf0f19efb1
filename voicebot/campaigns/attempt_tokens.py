"""The signed attempt id a campaign call carries through the carrier (the Voice webhook URL, Telnyx client_state,
callback URLs): the media stream and the callbacks know which attempt they belong to, and nobody can make one up.

``<attempt_id>.<base64url HMAC-SHA256(secret, "attempt" NUL attempt_id)>``, keyed with the stream-token secret
($VOICEBOT_STREAM_SECRET; the same on every instance sharing campaigns). It does not expire: the attempt's state in
the database says whether it still takes a stream or a callback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_ATTEMPT_ID = re.compile(r"[0-9a-f]{8,64}")


def _mac(secret: bytes, attempt_id: str) -> str:
    digest = hmac.new(secret, b"attempt\x00" + attempt_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue(secret: bytes, attempt_id: str) -> str:
    if not _ATTEMPT_ID.fullmatch(attempt_id):
        raise ValueError(f"attempt id {attempt_id!r} is not lowercase hex")
    return f"{attempt_id}.{_mac(secret, attempt_id)}"


def verify(secret: bytes, token: str | None) -> str | None:
    """The attempt id of a genuine token, else None."""
    if not isinstance(token, str):
        return None
    attempt_id, _, mac = token.partition(".")
    if not _ATTEMPT_ID.fullmatch(attempt_id) or not mac:
        return None
    return attempt_id if hmac.compare_digest(_mac(secret, attempt_id), mac) else None
