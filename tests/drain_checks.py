"""What the drain, limit and reload tests share: a persona with a goodbye, a real server with the emulator as its
StepFun, a signed Twilio voice webhook and a bare media upgrade as a carrier would send them, /readyz."""

from __future__ import annotations

import aiohttp

from voicebot.simulator.twilio import new_sid
from voicebot.telephony.twilio_auth import compute_signature

DRAIN_LINE = "+15550100001"
GREETING = "Hello, this is the drain test line."
GOODBYE = "We are closing this line now. Goodbye."


def persona(name: str = "drain-en", *, number: str = DRAIN_LINE, greeting: str = GREETING,
            goodbye: str | None = GOODBYE, extra: str = "", default: bool = True) -> str:
    """One persona as a dialplan file holds it (``goodbye=None``: the language's default line)."""
    return (f"name: {name}\n" + ("default: true\n" if default else "") +
            f'numbers: ["{number}"]\nlanguage: en\nvoice: lively-girl\n'
            "instructions: You are a test line. Keep answers short.\n"
            f"greeting: {greeting}\n" + (f'goodbye: "{goodbye}"\n' if goodbye is not None else "") + extra)


async def post_voice_webhook(base_url: str, auth_token: str, *, to: str = DRAIN_LINE, path: str = "/twilio/voice",
                             query: str = "") -> tuple[int, str]:
    """A new call's Twilio voice webhook, signed as Twilio signs it: (status, body)."""
    url = base_url + path + query
    params = {"CallSid": new_sid("CA"), "AccountSid": new_sid("AC"), "From": "+15005550006", "To": to,
              "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
    headers = {"X-Twilio-Signature": compute_signature(auth_token, url, params)}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=params, headers=headers) as response:
            return response.status, await response.text()


async def media_upgrade_status(base_url: str, path: str = "/twilio/media") -> int:
    """The HTTP status a WebSocket upgrade to ``path`` gets (101 when accepted; the socket is closed at once)."""
    ws_url = "ws" + base_url.removeprefix("http") + path
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(ws_url) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def readyz(base_url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(base_url + "/readyz") as response:
            return response.status, await response.json()


def assert_goodbye_heard_then_closed(result, deadline_s: float) -> None:
    """From the deadline on the caller heard at least the goodbye's length (the reply under way may finish
    first), played out to its end before the stream closed."""
    after = [s for s in result.segments if s.end_s > deadline_s]
    heard_s = sum(s.end_s - max(s.start_s, deadline_s) for s in after)
    assert heard_s >= 0.9 * len(GOODBYE) * 0.065, result.segments
    assert after[-1].ended_by == "drained" and after[-1].end_s <= result.duration_s <= after[-1].end_s + 2.0
