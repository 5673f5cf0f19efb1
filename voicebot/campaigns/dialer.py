"""The dialer: inside every ``voicebot serve`` process, claims the due contacts of running campaigns and dials each
at its slot of the campaign's dial-rate schedule.

The limits live in the database, not here: a claim reserves both a concurrency place and a rate slot in one
transaction on the campaign row (see ``store.campaigns.claim``), so any number of processes and instances share
one campaign without exceeding ``max_concurrent_calls`` or ``calls_per_second``. A claim is recorded before its dial
request, the request is marked as being sent just before it goes out, and its answer (the carrier's call id) is
recorded after: after a crash, :class:`Reconciler` knows which attempts were never sent (released), which may have
been (looked up at the carrier, never re-dialed blindly) and which were placed (their state asked of the carrier).
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from .clock import Clock

if TYPE_CHECKING:
    from .service import CampaignService

log = structlog.get_logger("voicebot.campaigns")

POLL_S = 0.5                 # how often the running campaigns (and an idle campaign's due contacts) are looked at
HORIZON_S = 1.0              # a claim reserves the rate slots of at most this much time ahead
MAX_CLAIM = 100              # contacts claimed in one transaction
CLAIM_RETRY_S = 2.0          # after a database error


class Dialer:
    """One per process: a :class:`CampaignRunner` per running campaign."""

    def __init__(self, service: "CampaignService", clock: Clock, *, poll_s: float = POLL_S,
                 horizon_s: float = HORIZON_S) -> None:
        self.service = service
        self.store = service.store
        self.clock = clock
        self.poll_s = poll_s
        self.horizon_s = horizon_s
        self.runners: dict[str, CampaignRunner] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="campaign-dialer")

    async def stop(self) -> None:
        """Stop claiming; dial requests already under way finish (their answers are recorded)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()), return_exceptions=True)

    def wake(self, campaign_id: str | None = None) -> None:
        """Something changed (an attempt ended, a campaign was started): look again now rather than at the next poll."""
        runner = self.runners.get(campaign_id) if campaign_id else None
        if runner is not None:
            runner.wake()
        else:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                running = {row.id: row for row in await self.store.running_campaigns()}
            except Exception as exc:
                log.error("campaigns_unreadable", error=f"{type(exc).__name__}: {exc}")
                running = None
            if running is not None:
                for campaign_id, row in running.items():
                    if campaign_id not in self.runners or self.runners[campaign_id].finished:
                        runner = CampaignRunner(self, row)
                        self.runners[campaign_id] = runner
                        runner.start()
                for campaign_id in [c for c in self.runners if c not in running]:
                    await self.runners.pop(campaign_id).stop()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass


class CampaignRunner:
    """Claims and dials one campaign's contacts in this process."""

    def __init__(self, dialer: Dialer, row) -> None:
        self.dialer = dialer
        self.service = dialer.service
        self.store = dialer.store
        self.campaign_id = row.id
        self.name = row.name
        self.spec = self.service.spec_of(row)
        self.log = log.bind(campaign=self.name)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._dials: set[asyncio.Task] = set()
        self._done_checked_at = -math.inf
        self.finished = False

    def start(self) -> None:
        self.log.info("campaign_dialing", calls_per_second=self.spec.calls_per_second,
                      max_concurrent_calls=self.spec.max_concurrent_calls)
        self._task = asyncio.create_task(self._run(), name=f"campaign-{self.name}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Claimed slots not yet due are given back by their dial tasks (they see _stopping); requests under way end.
        self._wake.set()
        await asyncio.gather(*self._dials, return_exceptions=True)

    async def _run(self) -> None:
        limit = max(1, min(MAX_CLAIM, math.ceil(self.spec.calls_per_second * self.dialer.horizon_s)))
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    claims = await self.store.claim(self.campaign_id, now=self.dialer.clock.now(),
                                                    horizon_s=self.dialer.horizon_s, limit=limit,
                                                    due=self.service.due_function(self.spec))
                except Exception as exc:
                    self.log.error("campaign_claim_failed", error=f"{type(exc).__name__}: {exc}")
                    await self._pause(CLAIM_RETRY_S)
                    continue
                for claim in claims:
                    task = asyncio.create_task(self._dial(claim), name=f"dial-{claim.attempt_id}")
                    self._dials.add(task)
                    task.add_done_callback(self._dials.discard)
                if claims:
                    # Claim again when the reserved stretch of the schedule is half used.
                    await self.dialer.clock.sleep_until(claims[-1].dial_at - self.dialer.horizon_s / 2)
                else:
                    if await self._done():
                        break
                    # Every instance looks again at a random moment of the next poll period, so that whichever
                    # finds a free place first is a matter of chance: the calls spread over the instances instead
                    # of piling up on the one whose call just ended.
                    await self._pause(self.dialer.poll_s * random.uniform(0.5, 1.0))
        finally:
            self.finished = True

    async def _done(self) -> bool:
        """Whether the campaign is done, asked of the database at most once per poll: at the end of a campaign
        every call that ends wakes the runner, and counting the campaign's contacts each time costs more than
        the claim it woke for."""
        now = asyncio.get_running_loop().time()
        if now - self._done_checked_at < self.dialer.poll_s:
            return False
        self._done_checked_at = now
        return await self.service.finish_if_done(self.campaign_id, self.name)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _dial(self, claim) -> None:
        await self.dialer.clock.sleep_until(claim.dial_at)
        why = "campaign no longer running" if self._stopping else self._outside_window(claim)
        if why is not None:
            await self.store.release_claim(claim.attempt_id)
            self.log.info("dial_released", attempt_id=claim.attempt_id, reason=why)
            return
        await self.service.dial(self.spec, claim)

    def _outside_window(self, claim) -> str | None:
        """The window is checked when the contact is claimed; its slot may come a moment after the window closed."""
        now = self.dialer.clock.now()
        due = self.service.due_function(self.spec)(claim.timezone, now)
        if due is None:
            return "the campaign's end has passed"
        return None if due <= now else f"outside the calling window in {claim.timezone} (opens {due.isoformat()})"


class Reconciler:
    """Settles attempts this or another process left unfinished: at startup (after a crash) and every ``every_s``.

    * claimed long ago, never marked as sent: the request never went out → released (the contact is due again);
    * marked as sent, no carrier call id: the request may have reached the carrier → looked up there by number and
      time; not found: settled as ``failed`` once callbacks would surely have come (never re-dialed blindly);
    * placed, still live in the database long after it could be: the carrier is asked for its state."""

    def __init__(self, service: "CampaignService", clock: Clock, *, every_s: float = 15.0,
                 claimed_grace_s: float = 10.0, dialing_grace_s: float = 30.0, unknown_after_s: float = 300.0,
                 live_check_after_s: float = 120.0) -> None:
        self.service = service
        self.store = service.store
        self.clock = clock
        self.every_s = every_s
        self.claimed_grace_s = claimed_grace_s
        self.dialing_grace_s = dialing_grace_s
        self.unknown_after_s = unknown_after_s
        self.live_check_after_s = live_check_after_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="campaign-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self.pass_once(startup=first)
            except Exception as exc:
                log.error("campaign_reconcile_failed", error=f"{type(exc).__name__}: {exc}")
            first = False
            await asyncio.sleep(self.every_s)

    async def pass_once(self, *, startup: bool = False) -> int:
        """One reconciliation pass; how many attempts it settled or updated. At startup every placed attempt
        still live in the database is asked about (this process may have missed its callbacks while down)."""
        now = self.clock.now()
        stale = await self.store.stale_attempts(
            now=now, claimed_older_s=self.claimed_grace_s, dialing_older_s=self.dialing_grace_s,
            dialed_older_s=0.0 if startup else self.live_check_after_s)
        settled = 0
        for attempt in stale:
            try:
                settled += await self._settle(attempt, now)
            except Exception as exc:
                log.warning("attempt_reconcile_failed", attempt_id=attempt.id,
                            error=f"{type(exc).__name__}: {exc}")
        if settled:
            log.info("campaign_attempts_reconciled", settled=settled, looked_at=len(stale))
        return settled

    async def _settle(self, attempt, now) -> int:
        if attempt.state == "claimed":
            await self.store.release_claim(attempt.id)
            log.info("attempt_released", attempt_id=attempt.id, reason="claimed but never sent")
            return 1
        client = self.service.client(attempt.carrier)
        if attempt.state == "dialing" and not attempt.carrier_call_id:
            found = []
            if client is not None:
                since = (attempt.dialing_at or now) - timedelta(minutes=2)
                found = await client.find_call(attempt.phone, attempt.from_number, since)
            if len(found) == 1:
                progress = found[0]
                await self.store.mark_dialed(attempt.id, progress.carrier_call_id, now=now)
                log.info("attempt_found_at_carrier", attempt_id=attempt.id, carrier_call_id=progress.carrier_call_id,
                         status=progress.status)
                await self.service.apply_progress(attempt.id, progress)
                return 1
            age = (now - (attempt.dialing_at or now)).total_seconds()
            if age >= self.unknown_after_s:
                await self.service.settle(attempt.id, "failed",
                                          "the dial request's answer was lost (the server stopped during it) and the "
                                          "carrier shows no such call")
                return 1
            return 0
        if client is None or not attempt.carrier_call_id:
            return 0
        progress = await client.call_status(attempt.carrier_call_id)
        if progress is None:
            return 0
        return 1 if await self.service.apply_progress(attempt.id, progress) else 0

