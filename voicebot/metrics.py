"""Prometheus metrics, defined in one place, and what the rest of the server calls to publish them.

``GET /metrics`` (voicebot/server.py) serves them in the Prometheus text format. On by default;
``VOICEBOT_METRICS=0`` turns them off (no route, nothing recorded: the hot paths pay one flag test). With
``VOICEBOT_METRICS_TOKEN`` set, a scrape must carry ``Authorization: Bearer <token>``.

Labels are bounded by construction: carriers are the carrier modules, personas the dialplans, engines
``realtime``/``chain``, campaigns the database; every other label value comes from a fixed set here, and
anything else maps to ``other``. No call id, phone number or free text is ever a label, so scrapes carry
no personal data.

What a call measures already is reused, never measured twice: first bot audio and turn latencies are the
call record's (``Call.record``), barge-in reaction is the ``reaction_us`` of the call's barge-in record,
and the frame latency is the playout's "out" span of voicebot/latency.py (a bot frame due → handed to the
carrier connection), which the playout keeps per call while metrics are on and which is published when
the call ends. Per 20 ms frame the call does a few arithmetic operations on its own tally; the shared
metrics are touched per event (a call starting or ending, a turn, a barge-in, a failover, an error).

``voicebot serve --workers N`` (voicebot/workers.py) runs prometheus-client's multiprocess mode: the
supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a directory of its own before anything imports
prometheus-client, each worker writes its values there, and a scrape answered by any worker adds them
all up (active calls: the live workers' sum; counters and histograms: every worker's, dead ones included,
so totals never go back).
"""

from __future__ import annotations

import hmac
import os
from bisect import bisect_left as _bucket_of

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .store.calls import OUTCOMES as CALL_OUTCOMES
from .store.campaigns import ATTEMPT_OUTCOMES

ENABLED = os.environ.get("VOICEBOT_METRICS", "1").strip().lower() not in ("0", "false", "no", "off")
TOKEN_ENV = "VOICEBOT_METRICS_TOKEN"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
OTHER = "other"

ENGINES = ("realtime", "chain")
# Why a media stream (or the call it would carry) was refused or ended by us.
REFUSAL_REASONS = (
    "auth",         # credentials, signature or stream token wrong or missing
    "limit",        # a configured limit: message size, calls per process
    "draining",     # the server is shutting down
    "protocol",     # not a valid upgrade, a stream that breaks the carrier's or WebSocket's protocol
    "no_persona",   # nothing here answers the call: no persona for the number, no campaigns on this server
    "unavailable",  # what the call needs could not be had (the campaign attempt's lookup failed)
)
# StepFun failures as the engines see them (voicebot/stepfun/errors.py's classes, and the realtime session's).
STEPFUN_ERROR_KINDS = (
    "auth",              # 401/403
    "quota",             # 402/429
    "unavailable",       # connect failure, timeout, 5xx
    "request",           # 400/404/451
    "realtime_error",    # an `error` event on a realtime session
    "realtime_dropped",  # the realtime socket closed under a live call
    "realtime_stalled",  # no realtime event while a reply was due (the engine's watchdog)
    "realtime_start",    # the realtime session did not start properly (no or wrong first event)
)
FRAME_DROP_REASONS = (
    "late",               # bot audio handed to the carrier after its playback slot (server-added delay > lead)
    "engine_connecting",  # caller audio beyond what is held while an engine connects
    "protocol",           # a carrier message that could not be used
    "flood",              # caller audio a carrier sent faster than real time, beyond a burst (telephony/flood.py)
    "playout_full",       # bot audio past the most a call holds ahead of the caller's ear (audio/playout.py)
)

# Buckets (seconds): around what each span is expected to be, with room for the bad cases.
FIRST_AUDIO_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TURN_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
BARGE_IN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
FRAME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

ACTIVE_CALLS = Gauge("voicebot_active_calls", "Calls in progress.", ("carrier", "persona", "engine"),
                     multiprocess_mode="livesum")
CALLS = Counter("voicebot_calls", "Calls ended, by outcome (the call record's).", ("carrier", "outcome"))
FIRST_AUDIO = Histogram("voicebot_first_audio_seconds",
                        "Stream start to the first bot audio sent to the carrier (calls that had any).",
                        buckets=FIRST_AUDIO_BUCKETS)
TURN_LATENCY = Histogram("voicebot_turn_latency_seconds",
                         "The caller stopped speaking to the first bot audio of the reply.", buckets=TURN_BUCKETS)
BARGE_IN_REACTION = Histogram("voicebot_barge_in_reaction_seconds",
                              "Barge-in trigger to the carrier clear queued and the engine told (server side).",
                              buckets=BARGE_IN_BUCKETS)
FRAME_LATENCY = Histogram("voicebot_frame_latency_seconds",
                          "Server-added latency of bot audio frames: due (audio arrived, pacing allows) to "
                          "handed to the carrier connection.", buckets=FRAME_BUCKETS)
FAILOVERS = Counter("voicebot_engine_failovers", "Calls switched from one engine to another.",
                    ("from_engine", "to_engine"))
STEPFUN_ERRORS = Counter("voicebot_stepfun_errors", "StepFun failures seen by the engines, by kind.", ("kind",))
FRAMES_DROPPED = Counter("voicebot_frames_dropped", "Audio frames dropped or sent too late, by reason.",
                         ("carrier", "reason"))
STREAM_REFUSALS = Counter("voicebot_stream_refusals", "Media streams (and Twilio voice webhooks) refused, by reason.",
                          ("carrier", "reason"))
CAMPAIGN_DIALS = Counter("voicebot_campaign_dials", "Dial requests sent to the carrier for campaign attempts.",
                         ("campaign",))
CAMPAIGN_ATTEMPTS = Counter("voicebot_campaign_attempts", "Campaign attempts ended, by outcome.",
                            ("campaign", "outcome"))
DRAINING = Gauge("voicebot_draining", "1 while the server is draining (refusing new calls), else 0.",
                 multiprocess_mode="livemax")


def _bounded(value: str | None, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


def set_draining(draining: bool) -> None:
    if ENABLED:
        DRAINING.set(1 if draining else 0)


def stream_refused(carrier: str, reason: str) -> None:
    if ENABLED:
        STREAM_REFUSALS.labels(carrier, _bounded(reason, REFUSAL_REASONS)).inc()


def frames_dropped(carrier: str, reason: str, count: int = 1) -> None:
    if ENABLED and count:
        FRAMES_DROPPED.labels(carrier, _bounded(reason, FRAME_DROP_REASONS)).inc(count)


def stepfun_error(kind: str | BaseException) -> None:
    """Count one StepFun failure: a kind from STEPFUN_ERROR_KINDS, or the StepFunError itself."""
    if ENABLED:
        STEPFUN_ERRORS.labels(kind if isinstance(kind, str) and kind in STEPFUN_ERROR_KINDS
                              else error_kind(kind)).inc()


def error_kind(error: object) -> str:
    from .stepfun.errors import StepFunAuthError, StepFunQuotaError, StepFunRequestError, StepFunUnavailable
    for cls, kind in ((StepFunAuthError, "auth"), (StepFunQuotaError, "quota"),
                      (StepFunUnavailable, "unavailable"), (StepFunRequestError, "request")):
        if isinstance(error, cls):
            return kind
    return OTHER


def turn_latency(seconds: float) -> None:
    if ENABLED:
        TURN_LATENCY.observe(seconds)


def barge_in(reaction_s: float) -> None:
    if ENABLED:
        BARGE_IN_REACTION.observe(reaction_s)


def campaign_dialed(campaign: str) -> None:
    if ENABLED:
        CAMPAIGN_DIALS.labels(campaign).inc()


def campaign_attempt_ended(campaign: str, outcome: str) -> None:
    if ENABLED:
        CAMPAIGN_ATTEMPTS.labels(campaign, _bounded(outcome, ATTEMPT_OUTCOMES)).inc()


class Tally:
    """Observations of one histogram kept by one call and published in one go (``publish``): per frame,
    a call adds to its own list instead of the shared histogram (which, in multiprocess mode, is a write to
    a memory-mapped file per observation)."""

    __slots__ = ("histogram", "bounds", "counts", "total")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds = histogram._upper_bounds       # ends with +Inf: every value falls in a bucket
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[_bucket_of(self.bounds, seconds)] += 1   # bucket i: value <= bounds[i], as observe()
        self.total += seconds

    @property
    def n(self) -> int:
        return sum(self.counts)

    def publish(self) -> None:
        """Add what was tallied to the histogram, as ``observe`` would have one value at a time; then start
        over. (prometheus-client has no bulk observe: its per-bucket values are what ``observe`` increments.)"""
        if not any(self.counts):
            return
        for bucket, count in zip(self.histogram._buckets, self.counts):
            if count:
                bucket.inc(count)
        self.histogram._sum.inc(self.total)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0


class CallMetrics:
    """One call's part in the metrics: active while it runs (under the engine it is on), its outcome, first
    audio and bot frame latencies when it ends."""

    def __init__(self, carrier: str, persona: str, engine: str) -> None:
        self.carrier = carrier
        self.persona = persona
        self.engine = _bounded(engine, ENGINES)
        self.frame_latency = Tally(FRAME_LATENCY) if ENABLED else None   # fed by the call's playout
        self._active = False

    def started(self) -> None:
        if ENABLED and not self._active:
            ACTIVE_CALLS.labels(self.carrier, self.persona, self.engine).inc()
            self._active = True

    def engine_switched(self, old: str, new: str) -> None:
        """The call moved from engine ``old`` to ``new`` (a failover)."""
        if not ENABLED:
            return
        FAILOVERS.labels(_bounded(old, ENGINES), _bounded(new, ENGINES)).inc()
        if self._active:
            ACTIVE_CALLS.labels(self.carrier, self.persona, self.engine).dec()
            self.engine = _bounded(new, ENGINES)
            ACTIVE_CALLS.labels(self.carrier, self.persona, self.engine).inc()

    def ended(self, outcome: str | None, first_audio_s: float | None, frames_late: int) -> None:
        """The call is over: ``first_audio_s`` as its record has it, ``frames_late`` as its playout counted."""
        if not ENABLED:
            return
        if self._active:
            ACTIVE_CALLS.labels(self.carrier, self.persona, self.engine).dec()
            self._active = False
        CALLS.labels(self.carrier, _bounded(outcome, CALL_OUTCOMES)).inc()
        if first_audio_s is not None:
            FIRST_AUDIO.observe(first_audio_s)
        if self.frame_latency is not None:
            self.frame_latency.publish()
        frames_dropped(self.carrier, "late", frames_late)


# -- the scrape ----------------------------------------------------------------------------------------

def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def exposition() -> bytes:
    """The text a scrape gets: this process's metrics, or every worker's in multiprocess mode. Reads files in
    multiprocess mode: run it off the event loop."""
    path = multiprocess_dir()
    if path is None:
        from prometheus_client import REGISTRY
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry)


def scrape_refusal(authorization: str | None) -> str | None:
    """None when a scrape may read the metrics, else why not: with ``VOICEBOT_METRICS_TOKEN`` set, the
    request must carry it as a bearer token."""
    expected = os.environ.get(TOKEN_ENV)
    if not expected:
        return None
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return "missing bearer token"
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        return "wrong bearer token"
    return None
