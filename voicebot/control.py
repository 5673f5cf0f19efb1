"""The bot's control of a call: hanging up, transferring, pressing keys, and ending the call by itself when it
ran too long or the caller went silent — always after the caller heard what the bot said before
(design.md invariant 7: a goodbye is never cut by our own hang-up).

Once an ending has begun, the call is closing: barge-in no longer cuts the bot and the caller's speech no
longer reaches the model, so the goodbye plays in full and nothing new starts. Hang-up and transfer use the
carrier's call-control API where one is configured (``telephony/rest``); a hang-up otherwise ends the media
stream in-band, which on every carrier but Telnyx ends the call or hands it back to the carrier's own flow.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .audio.dtmf import tones
from .caller_input import Keypad, SilenceWatch, keypad_text
from .tools import ActionFailed, CarrierAbilities

if TYPE_CHECKING:
    from .call import Call

PLAYED_OUT_TIMEOUT_S = 60.0     # the most a goodbye may take to play before the call ends anyway
LINE_TIMEOUT_S = 20.0           # the most a spoken line (goodbye, re-prompt) may take to be produced
BOT_GRACE_S = 10.0              # at the time limit, the bot may finish its sentence this long
DRAIN_BOT_GRACE_S = 2.0         # at the drain deadline, the bot may finish its sentence this long
CARRIER_END_TIMEOUT_S = 5.0     # after a transfer, the carrier ends the stream itself; then we close it
TICK_S = 0.25                   # silence and keypad-entry timers


def carrier_abilities(session, capabilities, missing: dict[str, str]) -> CarrierAbilities:
    """What a call on this carrier can do: its stream protocol (``session``: a CarrierSession or its class)
    and its call-control API's ``capabilities`` (None: no API), with why the rest is off."""
    missing = dict(missing)
    in_band = session.in_band_hang_up
    api_hang_up = bool(capabilities and capabilities.hang_up)
    if not in_band and not api_hang_up:
        missing["hang_up"] = session.in_band_hang_up_missing or missing.get("hang_up", "no way to hang up")
    else:
        missing.pop("hang_up", None)
    transfer = bool(capabilities and capabilities.transfer)
    if not transfer:
        missing.setdefault("transfer", f"{session.carrier} has no call-control API to transfer with")
    missing.pop("send_dtmf", None)       # keypad tones go out in the call's own audio on every carrier
    return CarrierAbilities(hang_up=in_band or api_hang_up, transfer=transfer, send_dtmf=True, missing=missing)


class CallController:
    """Carries out the bot's control of one call (:class:`voicebot.tools.CallActions` and the timed endings)."""

    def __init__(self, call: "Call") -> None:
        self.call = call
        self.log = call.log
        self.rest = call.services.call_control(call.meta.carrier)
        self._ending: str | None = None         # the outcome being carried out (bot_hung_up, transferred, …)
        self.keypad = Keypad(call.persona.dtmf)
        self.silence = SilenceWatch(call.persona.silence)
        self.drained: asyncio.Event | None = None    # set once the playout is empty (played_out waits)
        self._line: tuple[set[str], asyncio.Event] | None = None   # items of a line being said, its end
        self._ticker: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._dtmf_items = 0

    # -- what the carrier can do ----------------------------------------------------------------------
    @property
    def abilities(self) -> CarrierAbilities:
        rest = self.rest
        return carrier_abilities(self.call.carrier, rest.capabilities if rest else None,
                                 dict(rest.missing) if rest else {})

    @property
    def ending(self) -> str | None:
        return self._ending

    @ending.setter
    def ending(self, outcome: str | None) -> None:
        # Mirrored in call.closing: a plain attribute, read on every caller frame.
        self._ending = outcome
        self.call.closing = outcome is not None

    # -- tools: CallActions -----------------------------------------------------------------------------
    async def end_call(self, reason: str) -> None:
        if self.ending is not None:
            raise ActionFailed(f"the call is already ending ({self.ending})")
        self.ending = "bot_hung_up"
        self.log.info("bot_hang_up_requested", reason=reason)
        await self.played_out()
        await self._hang_up("bot_hung_up", f"bot hung up: {reason}")

    async def transfer_call(self, name: str, target: str) -> None:
        if self.ending is not None:
            raise ActionFailed(f"the call is already ending ({self.ending})")
        if self.rest is None or not self.rest.capabilities.transfer:
            raise ActionFailed(f"this line cannot transfer calls ({self.abilities.missing.get('transfer')})")
        self.ending = "transferred"
        self.log.info("transfer_requested", target_name=name, target=target)
        await self.played_out()
        try:
            await self.rest.transfer(self.call.meta, target)
        except Exception as exc:   # CallControlError, or a bug: the caller stays with the bot either way
            self.ending = None
            self.log.error("transfer_failed", target_name=name, target=target, problem=str(exc))
            raise ActionFailed(f"the transfer to {name} failed ({exc}); tell the caller and offer help") from None
        self.call.transferred(name, target)
        # The carrier now ends the stream itself (Twilio sends stop); close it ourselves if it does not.
        try:
            await asyncio.wait_for(self.call.wait_ended(), CARRIER_END_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.log.info("transfer_stream_still_open", waited_s=CARRIER_END_TIMEOUT_S)
        self.call.hang_up(f"transferred to {name}", "transferred")

    async def send_dtmf(self, digits: str) -> None:
        """Keypad tones in the call's audio, after what the bot is saying."""
        self._dtmf_items += 1
        item_id = f"dtmf_{self._dtmf_items}"
        self.call.playout.enqueue(item_id, tones(digits))
        self.call.playout.end_item(item_id)
        self.call.send_due_audio()
        self.log.info("dtmf_sent", digits=digits)
        self.call.note("dtmf_out", digits=digits)

    async def set_outcome(self, outcome: str, note: str | None) -> None:
        campaign = self.call.campaign
        if campaign is None:
            raise ActionFailed("this is not a campaign call")
        campaign.set_outcome(outcome, note)
        self.log.info("campaign_outcome_set", outcome=outcome, note=note)

    async def opt_out(self) -> None:
        """Recorded at once (the number goes on the do-not-call list even if the line drops); the goodbye and
        the hang-up follow once the tool's turn is over (a chain engine speaks it after the tool returns)."""
        campaign = self.call.campaign
        if campaign is None:
            raise ActionFailed("this is not a campaign call")
        if self.ending is not None:
            campaign.opt_out()
            raise ActionFailed(f"opt-out recorded; the call is already ending ({self.ending})")
        self.ending = "bot_hung_up"
        campaign.opt_out()
        self.log.info("callee_opted_out")
        self._task = asyncio.create_task(self._opt_out_goodbye(), name=f"opt-out-{self.call.call_id}")

    async def _opt_out_goodbye(self) -> None:
        from .campaigns.outbound import OPT_OUT_GOODBYE
        language = self.call.persona.language
        await self.played_out()
        await self.say_line(OPT_OUT_GOODBYE.get(language, OPT_OUT_GOODBYE["en"]))
        await self.played_out()
        await self._hang_up("bot_hung_up", "bot hung up: the callee opted out")

    # -- campaign calls: machines -------------------------------------------------------------------------
    def hang_up_now(self, outcome: str, reason: str) -> None:
        """End the call without a word (nothing was said: there is nothing to wait for)."""
        if self.ending is not None:
            return
        self.ending = outcome
        self.log.info("hanging_up_at_once", reason=reason)
        self._task = asyncio.create_task(self._hang_up(outcome, reason), name=f"hang-up-{self.call.call_id}")

    def leave_voicemail(self, message: str) -> None:
        """Say ``message`` once, in full, then hang up (outcome voicemail)."""
        if self.ending is not None:
            return
        self.ending = "voicemail"
        self.log.info("leaving_voicemail")
        self._task = asyncio.create_task(self._voicemail(message), name=f"voicemail-{self.call.call_id}")

    async def _voicemail(self, message: str) -> None:
        if not await self.call.engine_up():
            await self._hang_up("voicemail", "answering machine: the engine never came up to leave the message")
            return
        await self.say_line(message)
        await self.played_out()
        await self._hang_up("voicemail", f"voicemail message left ({self.call.campaign.answered_by})")

    # -- ending by itself --------------------------------------------------------------------------------
    async def time_limit(self) -> None:
        """``max_call_seconds`` reached: the bot finishes its sentence, says goodbye, hangs up."""
        if self.ending is not None:
            return
        self.ending = "max_duration"
        self.log.info("max_call_seconds_reached", max_call_seconds=self.call.persona.max_call_seconds)
        await self._bot_quiet(BOT_GRACE_S)
        await self.say_line(self.call.persona.goodbye)
        await self.played_out()
        await self._hang_up("max_duration", "max_call_seconds reached")

    def drain_deadline(self, drain_seconds: float) -> None:
        """The server is stopping and ``drain_seconds`` are over: the bot finishes its sentence (briefly), says
        the persona's goodbye, and hangs up once it was heard. A call already ending carries on as it was."""
        if self.ending is not None or self.call.ended:
            return
        self.ending = "drained"
        self.log.info("drain_deadline_reached", drain_seconds=drain_seconds)
        self._task = asyncio.create_task(self._drain_goodbye(drain_seconds), name=f"drain-{self.call.call_id}")

    async def _drain_goodbye(self, drain_seconds: float) -> None:
        call = self.call
        if call.engine_ready and not call.waiting_for_callee and call.persona.goodbye:
            await self._bot_quiet(DRAIN_BOT_GRACE_S)
            await self.say_line(call.persona.goodbye)
            await self.played_out()
        await self._hang_up("drained", f"server stopping: drain_seconds ({drain_seconds:g} s) over")

    async def _silent_too_long(self) -> None:
        self.ending = "silence"
        self.log.info("caller_silent_hang_up", silent_s=round(self.silence.quiet_s, 1))
        await self.say_line(self.call.persona.silence.goodbye)
        await self.played_out()
        await self._hang_up("silence", f"caller silent for {self.call.persona.silence.hang_up_s:g} s")

    def start_timers(self) -> None:
        if self.silence.enabled or self.keypad.settings.mode == "collect":
            self._ticker = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    def _tick(self) -> None:
        call = self.call
        if call.ended:
            return
        now = time.monotonic()
        entry = self.keypad.due(now)
        if entry is not None:
            call.caller_typed(keypad_text(entry, call.persona.language, collected=True))
        if self.ending is None and self.silence.enabled and call.engine_ready and not call.waiting_for_callee:
            action = self.silence.tick(now, caller_speaking=call.vad.in_speech,
                                       bot_busy=call.playout.speaking or call.engine.responding)
            if action == "reprompt":
                self.log.info("silence_reprompt", silent_s=round(self.silence.quiet_s, 1))
                call.note("silence_reprompt", silent_s=round(self.silence.quiet_s, 1))
                call.engine.say(call.persona.silence.reprompt)
            elif action == "hang_up":
                self._task = asyncio.create_task(self._silent_too_long(), name=f"silence-{call.call_id}")
        self._ticker = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    # -- caller input ------------------------------------------------------------------------------------
    def dtmf(self, digit: str) -> str | None:
        """A caller keypress: the text for the model once an entry is complete."""
        self.silence.activity()
        if self.ending is not None or self.call.waiting_for_callee:
            return None
        entry = self.keypad.press(digit, time.monotonic())
        if entry is None:
            return None
        return keypad_text(entry, self.call.persona.language, collected=self.keypad.settings.mode == "collect")

    # -- waiting for what the caller hears ----------------------------------------------------------------
    async def say_line(self, text: str) -> None:
        """Have the engine say ``text`` and wait until all its audio has been produced."""
        items: set[str] = set()
        done = asyncio.Event()
        self._line = (items, done)
        self.call.engine.say(text)
        try:
            await asyncio.wait_for(done.wait(), LINE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.log.warning("line_not_produced", text=text, waited_s=LINE_TIMEOUT_S)
        finally:
            self._line = None

    def bot_audio(self, item_id: str) -> None:
        if self._line is not None:
            self._line[0].add(item_id)

    def bot_audio_done(self, item_id: str) -> None:
        if self._line is not None and item_id in self._line[0]:
            self._line[1].set()

    async def played_out(self) -> None:
        """Until everything the bot sent has played to the caller (the playout is empty, its marks came back)."""
        if not self.call.playout.speaking:
            return
        self.drained = asyncio.Event()
        try:
            await asyncio.wait_for(self.drained.wait(), PLAYED_OUT_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.log.warning("playout_not_drained", waited_s=PLAYED_OUT_TIMEOUT_S)
        finally:
            self.drained = None

    async def _bot_quiet(self, grace_s: float) -> None:
        """Until the bot has finished what it is saying (at most ``grace_s``, then it is cut)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.call.engine.responding and loop.time() < deadline:
            await asyncio.sleep(TICK_S)
        if self.call.engine.responding:
            self.call.cut_bot("time limit")
        else:
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(self.played_out(), max(remaining, 0.1))
            except asyncio.TimeoutError:
                self.call.cut_bot("time limit")

    async def _hang_up(self, outcome: str, reason: str) -> None:
        """End the call: through the carrier's API where configured, else by ending the stream in-band."""
        if self.rest is not None and self.rest.capabilities.hang_up:
            try:
                await self.rest.hang_up(self.call.meta)
            except Exception as exc:
                self.log.error("hang_up_api_failed", problem=str(exc), fallback="stream closed")
                reason += f" (call-control API failed: {exc}; the stream was closed instead)"
        self.call.hang_up(reason, outcome)
