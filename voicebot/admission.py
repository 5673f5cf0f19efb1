"""Whether this server process takes a new call: not while it drains (SIGTERM), not beyond ``server.max_calls``.

Asked once per call, where a call first reaches us: the carrier's voice webhook (Twilio, SignalWire) and the media
connection (every carrier, in voicebot/answer.py). What a refusal looks like is the carrier's business (TwiML
``<Reject reason="busy"/>``, HTTP 503 to a WebSocket upgrade, an AudioSocket hang-up); that it is counted
(``voicebot_stream_refusals_total{reason="draining"|"limit"}``) and logged is done here, once for all of them.

Calls are counted as the media connections open on this process: a connection is a call from its upgrade on,
also in the moment before its start message makes it a ``Call``, so a burst of connections cannot overshoot
the limit.
"""

from __future__ import annotations

import structlog

from . import metrics

log = structlog.get_logger("voicebot.admission")


class Admission:
    def __init__(self, max_calls: int) -> None:
        self.max_calls = max_calls     # 0: no limit
        self.draining = False
        self.connections = 0           # media connections open on this process (calls, or calls about to start)

    def refusal(self, carrier: str, **context) -> str | None:
        """None when a new call may start; else why not ("draining" or "limit"), counted and logged."""
        if self.draining:
            reason = "draining"
        elif self.max_calls and self.connections >= self.max_calls:
            reason = "limit"
        else:
            return None
        metrics.stream_refused(carrier, reason)
        log.warning("call_refused", carrier=carrier, reason=reason, calls=self.connections,
                    max_calls=self.max_calls or None, **context)
        return reason

    def opened(self) -> None:
        self.connections += 1

    def closed(self) -> None:
        self.connections -= 1
