"""Call events: signed, delivered in order, retried with backoff when the receiver fails, given up and
counted after the last retry; the call never waits for them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import structlog
from aiohttp import web

from voicebot.webhooks import SIGNATURE_HEADER, EventSender, signature, signature_matches

from conftest import until

EXPECTED = "88a67f24bbcdaed0e6c997404bb79a743baf44c6bab2f4c27328e3009d22e342"   # openssl, below


async def receiver(aiohttp_server, failures: int):
    """Answers 500 to the first ``failures`` requests, then 204; keeps what it got."""
    got = []

    async def events(request):
        body = await request.read()
        got.append((asyncio.get_running_loop().time(), body, request.headers.get(SIGNATURE_HEADER)))
        return web.Response(status=500 if len(got) <= failures else 204)

    app = web.Application()
    app.router.add_post("/events", events)
    server = await aiohttp_server(app)
    return str(server.make_url("/events")), got


def test_the_signature_is_hmac_sha256_of_the_body():
    # printf '{"a":1}' | openssl dgst -sha256 -hmac key
    assert signature(b'{"a":1}', "key") == "sha256=" + EXPECTED
    assert signature_matches(b'{"a":1}', "key", signature(b'{"a":1}', "key"))
    assert not signature_matches(b'{"a":2}', "key", signature(b'{"a":1}', "key"))
    assert not signature_matches(b'{"a":1}', "key", None)


async def test_events_are_signed_and_retried_until_delivered(aiohttp_server):
    url, got = await receiver(aiohttp_server, failures=2)
    async with aiohttp.ClientSession() as http:
        sender = EventSender(http, retry_delays_s=(0.1, 0.2, 0.4))
        sender.send(url, "s3cret", "call.started", "c1", {"id": "c1"})
        sender.send(url, "s3cret", "call.ended", "c1", {"id": "c1", "outcome": "completed"})
        await until(lambda: sender.delivered == 2, what="both events delivered")
        await sender.close()
    assert sender.failed_attempts == 2 and sender.given_up == 0
    bodies = [json.loads(body) for _, body, _ in got]
    assert all(signature_matches(body, "s3cret", sig) for _, body, sig in got)
    delivered = [b["type"] for (_, _, _), b in zip(got, bodies)][2:]
    assert sorted(delivered) == ["call.ended", "call.started"]
    first = [t for (t, _, _), b in zip(got, bodies) if b["type"] == "call.started"]
    assert first[1] - first[0] >= 0.09           # the retry waited its backoff


async def test_an_event_is_given_up_after_its_retries_and_logged(aiohttp_server):
    url, got = await receiver(aiohttp_server, failures=100)
    async with aiohttp.ClientSession() as http:
        sender = EventSender(http, retry_delays_s=(0.05, 0.05))
        with structlog.testing.capture_logs() as logs:
            sender.send(url, None, "call.ended", "c2", {"id": "c2"})
            await until(lambda: sender.given_up == 1, what="the event to be given up")
        await sender.close()
    assert len(got) == 3 and sender.delivered == 0
    assert got[0][2] is None                      # no secret configured: no signature header
    assert [e["event"] for e in logs].count("call_event_failed") == 3
    assert any(e["event"] == "call_event_given_up" and e["call_id"] == "c2" for e in logs)


async def test_sending_never_waits_even_when_the_receiver_is_down():
    async with aiohttp.ClientSession() as http:
        sender = EventSender(http, retry_delays_s=(10.0,))
        sender.send("http://127.0.0.1:9/events", None, "call.started", "c3", {})   # nothing listens there
        assert sender.pending == 1
        await sender.close(timeout_s=2.0)
    assert sender.given_up == 1 and sender.pending == 0
