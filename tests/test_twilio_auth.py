"""X-Twilio-Signature and stream tokens."""

from voicebot.telephony.twilio_auth import StreamTokens, compute_signature, validate_signature

# Known-good vector (twilio-python's RequestValidator algorithm).
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
          "From": "+12349013030", "To": "+18005551212"}
TOKEN = "12345"
EXPECTED = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_known_good_vector():
    assert compute_signature(TOKEN, URL, PARAMS) == EXPECTED
    assert validate_signature(TOKEN, URL, PARAMS, EXPECTED)


def test_default_port_variants_are_accepted():
    assert validate_signature(TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", PARAMS, EXPECTED)


def test_tampered_requests_are_rejected():
    assert not validate_signature(TOKEN, URL, {**PARAMS, "To": "+18005551213"}, EXPECTED)
    assert not validate_signature(TOKEN, URL.replace("foo=1", "foo=2"), PARAMS, EXPECTED)
    assert not validate_signature("54321", URL, PARAMS, EXPECTED)
    assert not validate_signature(TOKEN, URL, PARAMS, EXPECTED[:-2] + "A=")
    assert not validate_signature(TOKEN, URL, PARAMS, None)


def test_stream_token_bound_to_call_and_expires():
    tokens = StreamTokens(b"k" * 32, ttl_s=60)
    token = tokens.issue("CA1", "+1555", "+1666", now=1000)
    assert tokens.check(token, "CA1", "+1555", "+1666", now=1030) is None
    assert tokens.check(token, "CA2", "+1555", "+1666", now=1030) == "token does not match this call"
    assert tokens.check(token, "CA1", "+1555", "+1666", now=1061) == "token expired"
    assert tokens.check(None, "CA1", "+1555", "+1666") == "missing token"
    assert tokens.check("garbage", "CA1", "+1555", "+1666") == "malformed token"
    other = StreamTokens(b"x" * 32)
    assert other.check(token, "CA1", "+1555", "+1666", now=1030) == "token does not match this call"
