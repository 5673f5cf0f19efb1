"""What a campaign call knows about the contact it dialled, and how it reports back.

An :class:`OutboundContext` is resolved when the media stream of a dialled call starts (the stream carries the
attempt); the :class:`~voicebot.call.Call` then waits for the callee before its greeting, leaves the voicemail
message when a machine answered, and offers the campaign tools (``set_outcome``, ``opt_out``). What the call
learns goes to the process's campaign service through :class:`CampaignHooks`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Protocol

from ..dialplan import Persona
from ..telephony.base import CallMeta
from .templates import fill

# AMD verdicts (Twilio's AnsweredBy values; the Telnyx events are mapped onto them).
HUMAN_VERDICTS = ("human", "unknown")
MACHINE_VERDICTS = ("machine_end_beep", "machine_end_silence", "machine_end_other")
STILL_LISTENING = ("machine_start",)    # a machine, its greeting still playing: the final verdict follows
FAX = "fax"

# What the bot says after the callee asked not to be called again, before it hangs up.
OPT_OUT_GOODBYE = {"en": "Understood, we will not call you again. Goodbye.",
                   "zh": "好的，我们以后不会再给您打电话了。再见。"}


@dataclass(frozen=True)
class OutboundContext:
    """One dialled attempt, as its call needs it."""

    attempt_id: str
    campaign_id: str
    campaign: str                     # the campaign's name
    contact_id: str
    phone: str                        # E.164, the number dialled
    variables: dict[str, str]
    persona: Persona                  # already personalised: instructions and greeting filled
    voicemail: object | None          # the campaign's VoicemailPolicy (.action, .message); None: AMD off
    voicemail_message: str | None     # the policy's message, filled
    outcomes: tuple[str, ...]         # what set_outcome may set

    @property
    def machine_detection(self) -> bool:
        """The carrier was asked for an AMD verdict: the bot waits for it before speaking."""
        return self.voicemail is not None


def personalised(persona: Persona, variables: dict[str, str]) -> Persona:
    """``persona`` with the contact's ``{variables}`` filled into its instructions and greeting.

    KeyError names a variable the contact has no value for (contacts are checked at campaign creation, so
    this means the persona changed since)."""
    return dataclasses.replace(persona, instructions=fill(persona.instructions, variables),
                               greeting=fill(persona.greeting, variables))


class CampaignHooks(Protocol):
    """The process's campaign service as a call sees it (``CallServices.campaigns``)."""

    async def resolve(self, meta: CallMeta) -> OutboundContext | None:
        """The attempt a starting media stream belongs to (``meta.params["attempt"]``), None when that token
        names no live attempt (forged, expired, or already ended)."""

    def call_result(self, attempt_id: str, *, call_id: str, disposition: str | None = None,
                    note: str | None = None, opted_out: bool = False) -> None:
        """What the call established so far (cumulative; the last report wins). Must not block: the service
        queues it for the store."""

    async def answered_by(self, attempt_id: str) -> str | None:
        """The carrier's AMD verdict for the attempt if one has arrived (on any instance), else None."""


AMD_WAIT_S = 35.0        # no verdict by then (the carrier's AMD gave none): greet as for "unknown"
AMD_POLL_S = 0.5         # the verdict may land on another instance: asked for this often while waiting
FIRST_WORDS_WAIT_S = 5.0  # AMD off: a callee who says nothing this long after answering is greeted anyway


class OutboundCall:
    """The campaign side of one :class:`~voicebot.call.Call`: nothing is said and nothing reaches the model
    until the callee is confirmed — by the AMD verdict (``human``/``unknown``), or with AMD off by the end of
    the callee's first words — then the greeting. A machine gets the voicemail message once, in full, and
    the hang-up (or the hang-up at once, as the campaign says). What the call established goes to the
    campaign service (:class:`CampaignHooks`), cumulatively, whenever it changes and at the end."""

    def __init__(self, call, context: OutboundContext, hooks: CampaignHooks | None) -> None:
        self.call = call
        self.context = context
        self.hooks = hooks
        self.log = call.log.bind(attempt_id=context.attempt_id, campaign=context.campaign)
        self.answered_by: str | None = None     # the verdict acted on
        self.utterances_heard = 0               # the callee's utterances while the bot waited
        self.disposition: str | None = None
        self.note: str | None = None
        self.opted_out = False
        self._greet_at_pause = False            # confirmed while the callee spoke: greet when they pause
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        return self.call.waiting_for_callee

    def start(self) -> None:
        if self.context.machine_detection:
            self._task = asyncio.create_task(self._wait_for_verdict(), name=f"amd-{self.call.call_id}")
        else:
            self._timer = asyncio.get_running_loop().call_later(FIRST_WORDS_WAIT_S, self._no_words)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    # -- confirming the callee -------------------------------------------------------------------------
    def utterance_ended(self) -> None:
        """The callee stopped speaking while the bot waited (the Call's local VAD)."""
        self.utterances_heard += 1
        if self._greet_at_pause or not self.context.machine_detection:
            self._greet("first words" if not self.context.machine_detection else "verdict, then a pause")

    def _no_words(self) -> None:
        if self.waiting and not self.call.ended and not self.call.vad.in_speech:
            self.log.info("callee_silent_greeting_anyway", waited_s=FIRST_WORDS_WAIT_S)
            self._greet("no words")

    async def _wait_for_verdict(self) -> None:
        """Until the verdict is told in-process (machine_detected) or found by asking the campaign service."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AMD_WAIT_S
        asked = self.hooks is not None and hasattr(self.hooks, "answered_by")
        failed = False
        while self.answered_by is None and loop.time() < deadline:
            if asked:
                try:
                    verdict = await self.hooks.answered_by(self.context.attempt_id)
                except Exception as exc:     # the store being slow or down must not end the call
                    verdict = None
                    if not failed:
                        self.log.warning("amd_verdict_lookup_failed", problem=str(exc))
                        failed = True
                if verdict and self.answered_by is None:
                    self.machine_detected(verdict)
                    if self.answered_by is not None:
                        return
            await asyncio.sleep(min(AMD_POLL_S, max(deadline - loop.time(), 0)))
        if self.answered_by is None:
            self.log.warning("amd_verdict_missing", waited_s=AMD_WAIT_S, treated_as="unknown")
            self.machine_detected("unknown")

    def machine_detected(self, answered_by: str) -> None:
        """The carrier's AMD verdict. The first final one counts; later ones change nothing."""
        call = self.call
        if self.answered_by is not None or call.ended or call.closing:
            self.log.info("amd_verdict_ignored", answered_by=answered_by, acted_on=self.answered_by)
            return
        if answered_by in STILL_LISTENING:
            self.log.info("amd_machine_greeting_playing", answered_by=answered_by)
            return
        known = answered_by in HUMAN_VERDICTS or answered_by in MACHINE_VERDICTS or answered_by == FAX
        if not known:
            self.log.warning("amd_verdict_unknown_value", answered_by=answered_by, treated_as="unknown")
        self.answered_by = answered_by if known else "unknown"
        call.note("amd_verdict", answered_by=answered_by)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if self.answered_by in HUMAN_VERDICTS:
            if call.vad.in_speech:
                self._greet_at_pause = True    # not over the callee's words: when they pause
            else:
                self._greet(f"amd {self.answered_by}")
        elif self.answered_by == FAX:
            call.control.hang_up_now("voicemail", "a fax machine answered")
        else:
            self._machine()

    def _machine(self) -> None:
        policy, control = self.context.voicemail, self.call.control
        if policy is None or policy.action == "hang_up" or not self.context.voicemail_message:
            control.hang_up_now("voicemail", f"answering machine ({self.answered_by}): hung up without a message")
        else:
            control.leave_voicemail(self.context.voicemail_message)

    def _greet(self, why: str) -> None:
        if not self.waiting or self.call.ended:
            return
        self._greet_at_pause = False
        self.stop()
        self.log.info("callee_confirmed", why=why, answered_by=self.answered_by)
        self.call.greet()

    # -- results ----------------------------------------------------------------------------------------
    def set_outcome(self, outcome: str, note: str | None) -> None:
        self.disposition, self.note = outcome, note if note is not None else self.note
        self.report()

    def opt_out(self) -> None:
        self.opted_out = True
        self.report()

    def report(self) -> None:
        """Everything established so far, to the campaign service (never blocks, never fails the call)."""
        if self.hooks is None:
            return
        try:
            self.hooks.call_result(self.context.attempt_id, call_id=self.call.call_id,
                                   disposition=self.disposition, note=self.note, opted_out=self.opted_out)
        except Exception as exc:
            self.log.error("campaign_result_not_reported", problem=str(exc), disposition=self.disposition,
                           opted_out=self.opted_out)
