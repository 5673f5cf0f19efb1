"""Campaigns inside ``voicebot serve``: the dialer and the reconciler, the carriers' progress callbacks turned into
attempt outcomes and retries, and what a campaign call's media stream and its bot need from the database.

Everything here reaches the database off the audio path: a dial, a callback, a stream's start (one read before the
call exists) and a call's results (queued, written by a task of their own, retried)."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from .. import metrics
from ..telephony.rest import CallControlError
from ..telephony.rest.base import CallProgress, DialRequest
from ..telephony.twilio_auth import STREAM_SECRET_ENV, stream_token_secret
from . import attempt_tokens, schedule
from .clock import Clock
from .definition import CampaignSpec
from .dialer import Dialer, Reconciler
from .outbound import OutboundContext, personalised
from .templates import fill

if TYPE_CHECKING:
    from ..call import CallServices
    from ..store import Store

log = structlog.get_logger("voicebot.campaigns")

TERMINAL = ("completed", "busy", "no-answer", "failed", "canceled")
MACHINE = ("machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other")
RESULT_RETRY_MAX_S = 30.0
DRAIN_S = 5.0          # at shutdown, how long the last results may take to be written
ATTEMPT_KEY = "campaign-attempt-tokens"
TWILIO_VOICE_PATH = "/twilio/voice"
TELNYX_MEDIA_PATH = "/telnyx/media"
CALLBACK_PATHS = {"twilio": "/campaigns/twilio/status", "telnyx": "/campaigns/telnyx/events"}


def attempt_outcome(status: str, answered_by: str | None) -> tuple[str, str | None]:
    """(the attempt's outcome, a detail) from the carrier's final status and the AMD verdict."""
    if status == "completed":
        if answered_by in MACHINE:
            return "voicemail", None
        if answered_by == "fax":
            return "failed", "a fax machine answered"
        return "answered", None
    return status, None


class CampaignService:
    def __init__(self, store: "Store", services: "CallServices", *, clock: Clock | None = None,
                 run_dialer: bool = True) -> None:
        self.store = store
        self.services = services
        self.settings = services.settings
        self.clock = clock or Clock()
        self.run_dialer = run_dialer
        self.dialer = Dialer(self, self.clock)
        self.reconciler = Reconciler(self, self.clock)
        self._specs: dict[str, CampaignSpec] = {}
        self._contexts: dict[str, dict] = {}     # attempt id -> the spec and claim of an attempt this process dialed
        self._background: set[asyncio.Task] = set()
        self._secret = b""      # set by load_key() before the service starts

    def use_clock(self, clock: Clock) -> None:
        """Run on another clock from now on (a campaign tried at another time of day; tests)."""
        self.clock = self.dialer.clock = self.reconciler.clock = clock

    # -- lifecycle --------------------------------------------------------------------------------------
    async def load_key(self) -> None:
        """The key of the attempt tokens: $VOICEBOT_STREAM_SECRET when set, else one kept in the database, so
        that a restarted server, and every instance sharing the database, still knows the attempts it dialled."""
        if os.environ.get(STREAM_SECRET_ENV):
            self._secret = stream_token_secret()
        else:
            self._secret = (await self.store.server_key(ATTEMPT_KEY)).encode()

    def start(self) -> None:
        if self.run_dialer:
            self.dialer.start()
            self.reconciler.start()

    async def stop(self) -> None:
        await self.dialer.stop()
        await self.reconciler.stop()
        if self._background:
            _, unwritten = await asyncio.wait(self._background, timeout=DRAIN_S)
            for task in unwritten:
                task.cancel()
                log.error("campaign_write_lost", what=task.get_name())

    # -- what the dialer uses ---------------------------------------------------------------------------
    def spec_of(self, row) -> CampaignSpec:
        spec = self._specs.get(row.id)
        if spec is None:
            spec = self._specs[row.id] = CampaignSpec.from_json(row.definition)
        return spec

    @staticmethod
    def due_function(spec: CampaignSpec) -> Callable[[str, datetime], datetime | None]:
        return functools.partial(schedule.due_at, spec)

    @staticmethod
    def retry_function(spec: CampaignSpec) -> Callable[[str, int], timedelta | None]:
        return functools.partial(schedule.retry_after, spec)

    def client(self, carrier: str):
        return self.services.call_control(carrier)

    def token(self, attempt_id: str) -> str:
        return attempt_tokens.issue(self._secret, attempt_id)

    def attempt_of(self, token: str | None) -> str | None:
        return attempt_tokens.verify(self._secret, token)

    def dial_request(self, spec: CampaignSpec, claim) -> DialRequest:
        token = self.token(claim.attempt_id)
        public = self.settings.public_url.rstrip("/")
        query = f"?attempt={token}"
        media = (public + TWILIO_VOICE_PATH + query if spec.carrier == "twilio"
                 else self.settings.public_ws_url + TELNYX_MEDIA_PATH)
        return DialRequest(to=claim.phone, from_=claim.from_number, attempt_token=token,
                           callback_url=public + CALLBACK_PATHS[spec.carrier] + query, media_url=media,
                           machine_detection=spec.voicemail is not None, ring_timeout_s=spec.ring_timeout_s)

    async def dial(self, spec: CampaignSpec, claim) -> None:
        """Send one attempt's dial request: marked as being sent first, its carrier call id recorded after."""
        bound = log.bind(campaign=spec.name, attempt_id=claim.attempt_id, attempt=claim.number)
        client = self.client(spec.carrier)
        now = self.clock.now()
        problem = (f"no {spec.carrier} call-control client is configured" if client is None
                   else client.dial_problem and f"{spec.carrier} cannot dial: {client.dial_problem}")
        if problem:
            # Certain before any request: the attempt fails now (it must not hold a place waiting for a reconcile).
            bound.error("dial_impossible", problem=problem)
            await self.store.mark_dialing(claim.attempt_id, now=now)
            await self.settle(claim.attempt_id, "failed", problem, spec=spec)
            return
        self._contexts[claim.attempt_id] = {"spec": spec, "claim": claim}
        await self.store.mark_dialing(claim.attempt_id, now=now)
        metrics.campaign_dialed(spec.name)
        try:
            carrier_call_id = await client.dial(self.dial_request(spec, claim))
        except CallControlError as exc:
            if exc.status is not None and exc.status < 500:
                bound.warning("dial_refused", status=exc.status, code=exc.code, problem=exc.problem)
                await self.settle(claim.attempt_id, "failed", str(exc), spec=spec)
                self._contexts.pop(claim.attempt_id, None)
            else:
                # No answer or a server error: the carrier may have placed the call. The reconciler looks for it;
                # its callbacks, if any, settle it first.
                bound.warning("dial_unconfirmed", status=exc.status, problem=exc.problem)
            return
        await self.store.mark_dialed(claim.attempt_id, carrier_call_id, now=self.clock.now())
        bound.info("dialed", carrier=spec.carrier, carrier_call_id=carrier_call_id, from_number=claim.from_number)

    async def settle(self, attempt_id: str, outcome: str, detail: str | None = None, *,
                     spec: CampaignSpec | None = None) -> None:
        """End an attempt with ``outcome``: the contact is done, due again per the retry policy, or do-not-call."""
        if spec is None:
            row = await self.store.attempt(attempt_id)
            if row is None:
                return
            campaign = await self.store.get_campaign(row.campaign_id)
            spec = self.spec_of(campaign)
        ended = await self.store.finish_attempt(attempt_id, outcome=outcome, now=self.clock.now(), detail=detail,
                                                retry_after=self.retry_function(spec), due=self.due_function(spec))
        self._contexts.pop(attempt_id, None)
        log.info("attempt_ended", attempt_id=attempt_id, outcome=outcome, detail=detail)
        if ended is not None:       # None: it had ended already (a repeated or late report)
            metrics.campaign_attempt_ended(spec.name, outcome)

    async def apply_progress(self, attempt_id: str, progress: CallProgress) -> bool:
        """A carrier's news about an attempt (callback or lookup). False when it changed nothing (old or repeated)."""
        changed = False
        if progress.answered_by:
            changed = await self.store.set_answered_by(attempt_id, progress.answered_by,
                                                       now=self.clock.now()) is not None
            self._tell_call(attempt_id, progress.answered_by)
        if progress.status == "dialed":       # the carrier has it and it does not ring yet: nothing new
            return changed
        known = self._contexts.get(attempt_id)
        if progress.status in TERMINAL and known is not None:
            # An attempt this process dialed: its campaign is known, so the final status and the attempt's end
            # are one transaction (a callback per attempt that a campaign's rate makes count).
            spec = known["spec"]
            ended = await self.store.final_progress(
                attempt_id, carrier_call_id=progress.carrier_call_id, status=progress.status, now=self.clock.now(),
                sequence=progress.sequence, duration_s=progress.duration_s, detail=progress.detail,
                outcome_of=attempt_outcome, retry_after=self.retry_function(spec), due=self.due_function(spec))
            if ended is None:
                return changed
            self._contexts.pop(attempt_id, None)
            log.info("attempt_ended", attempt_id=attempt_id, outcome=ended.outcome, detail=ended.detail)
            metrics.campaign_attempt_ended(spec.name, ended.outcome)
            return True
        row = await self.store.attempt_progress(
            attempt_id, carrier_call_id=progress.carrier_call_id, status=progress.status, now=self.clock.now(),
            sequence=progress.sequence, duration_s=progress.duration_s, detail=progress.detail)
        if row is None:
            return changed
        if progress.status in TERMINAL:
            outcome, detail = attempt_outcome(progress.status, row.answered_by)
            # The campaign's spec as this process knows it spares settle two reads per attempt.
            await self.settle(attempt_id, outcome, detail or progress.detail, spec=self._specs.get(row.campaign_id))
        return True

    async def finish_if_done(self, campaign_id: str, name: str) -> bool:
        """Mark a campaign done once nothing is pending or in flight; True when it is."""
        status = await self.store.campaign_status(campaign_id)
        if status["pending"] or status["in_flight"]:
            return False
        try:
            await self.store.set_campaign_state(campaign_id, "done", now=self.clock.now())
        except Exception as exc:     # paused or canceled meanwhile
            log.info("campaign_not_finished", campaign=name, reason=str(exc))
            return False
        log.info("campaign_done", campaign=name, **{k: v for k, v in status.items() if isinstance(v, int)})
        return True

    # -- what a campaign call uses ----------------------------------------------------------------------
    async def resolve(self, meta) -> OutboundContext | None:
        """The campaign, contact and personalised persona of a media stream that carries an attempt token; None
        (the stream is refused) for a forged token, an attempt that is over, or one of another call."""
        token = meta.params.get("attempt")
        attempt_id = self.attempt_of(token)
        bound = log.bind(carrier=meta.carrier, carrier_call_id=meta.call_id)
        if attempt_id is None:
            bound.warning("campaign_stream_refused", reason="attempt token is not genuine")
            return None
        found = await self.store.outbound_context(attempt_id)
        if found is None:
            bound.warning("campaign_stream_refused", attempt_id=attempt_id, reason="no such attempt")
            return None
        attempt, contact, campaign = found
        if attempt.state == "ended":
            bound.warning("campaign_stream_refused", attempt_id=attempt_id, reason="the attempt has ended")
            return None
        if attempt.carrier_call_id and meta.call_id and attempt.carrier_call_id != meta.call_id:
            bound.warning("campaign_stream_refused", attempt_id=attempt_id,
                          reason=f"the attempt belongs to carrier call {attempt.carrier_call_id}")
            return None
        spec = self.spec_of(campaign)
        persona = self.services.dialplan.named(spec.persona)
        if persona is None:
            bound.error("campaign_stream_refused", attempt_id=attempt_id,
                        reason=f"campaign {spec.name}'s persona {spec.persona!r} is not in the dialplans")
            return None
        variables = {**contact.variables, "phone": contact.phone, "timezone": contact.timezone}
        try:
            message = fill(spec.voicemail.message, variables) if spec.voicemail else None
            persona = personalised(persona, variables)
        except (KeyError, ValueError) as exc:
            bound.error("campaign_stream_refused", attempt_id=attempt_id, reason=f"contact variables: {exc}")
            return None
        return OutboundContext(attempt_id=attempt_id, campaign_id=campaign.id, campaign=spec.name,
                               contact_id=contact.id, phone=contact.phone, variables=variables, persona=persona,
                               voicemail=spec.voicemail, voicemail_message=message, outcomes=tuple(spec.outcomes))

    def call_result(self, attempt_id: str, *, call_id: str, disposition: str | None = None, note: str | None = None,
                    opted_out: bool = False) -> None:
        """What the bot settled on a campaign call; written in the background, retried, never blocking the call."""
        what = (f"call result of attempt {attempt_id}: call {call_id}, disposition {disposition!r}, note {note!r}, "
                f"opted out {opted_out}")
        self._in_background(what, lambda: self.store.call_result(
            attempt_id, call_id=call_id, disposition=disposition, note=note, opted_out=opted_out))

    async def answered_by(self, attempt_id: str) -> str | None:
        row = await self.store.attempt(attempt_id)
        return None if row is None else row.answered_by

    def _tell_call(self, attempt_id: str, answered_by: str) -> None:
        for call in list(self.services.calls):
            if call.campaign is not None and call.campaign.context.attempt_id == attempt_id:
                call.machine_detected(answered_by)

    def _in_background(self, what: str, write: Callable) -> None:
        """Write until the database takes it (pauses growing to RESULT_RETRY_MAX_S): an unavailable database makes
        a result arrive late, not vanish. One still unwritten when the server stops is logged in full."""
        async def run() -> None:
            pause = 0.2
            while True:
                try:
                    await write()
                    return
                except Exception as exc:
                    log.warning("campaign_write_retry", what=what, error=f"{type(exc).__name__}: {exc}",
                                retry_in_s=pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, RESULT_RETRY_MAX_S)
        task = asyncio.create_task(run(), name=what)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

def setup(app, services: "CallServices", *, clock: Clock | None = None) -> None:
    """Run campaigns in this server: once the database is open, the dialer and the reconciler start; at shutdown
    dialing stops first, the calls end, then the calls' last results are written before the database closes."""
    from ..api.common import DATABASE

    running: list[CampaignService] = []

    async def start(_app) -> None:
        service = CampaignService(app[DATABASE].store, services, clock=clock)
        await service.load_key()
        running.append(service)
        services.campaigns = service
        service.start()

    async def stop_dialing(_app) -> None:
        for service in running:
            await service.dialer.stop()
            await service.reconciler.stop()

    async def flush(_app) -> None:
        for service in running:
            await service.stop()

    app.on_startup.append(start)
    app.on_shutdown.insert(0, stop_dialing)
    app.on_shutdown.append(flush)
