"""Call records for the store, API and CLI tests: every field set, as a finished call leaves them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from voicebot.store import OUTCOMES, CallRecord

T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=timezone.utc)
PERSONAS = ("acme-en", "acme-zh", "billing")


def full_record(n: int, *, started_at: datetime | None = None, **changes) -> CallRecord:
    """Call number n: a different persona, outcome and start time for each n (one second apart)."""
    started = started_at or T0 + timedelta(seconds=n)
    outcome = OUTCOMES[n % len(OUTCOMES)]
    fields = dict(
        id=f"{n:016x}",
        carrier=("twilio", "telnyx", "asterisk")[n % 3],
        carrier_call_id=f"CA{n:032x}",
        # Shifted once per round of outcomes: every persona meets every outcome, whatever their numbers.
        persona=PERSONAS[(n + n // len(OUTCOMES)) % len(PERSONAS)],
        from_number=f"+1555010{n % 10000:04d}",
        to_number="+15557650199",
        direction="outbound" if n % 5 == 4 else "inbound",
        started_at=started,
        answered_at=started + timedelta(milliseconds=850),
        ended_at=started + timedelta(seconds=42, milliseconds=125),
        duration_s=42.125,
        outcome=outcome,
        outcome_detail="realtime and chain both unavailable" if outcome == "failed" else None,
        transfer_target="sales" if outcome == "transferred" else None,
        end_reason=f"{outcome.replace('_', ' ')} after 42 s",
        engines=["stepaudio-2.5-realtime", "chain"],
        engine_switches=[{"from": "stepaudio-2.5-realtime", "to": "chain", "reason": "socket closed: 1011",
                          "t_ms": 12040}],
        user_turns=3,
        bot_turns=4,
        barge_ins=1,
        first_audio_ms=612,
        turn_latencies_ms=[812, 640, 977],
        tools=[{"name": "check_order", "arguments": {"order_id": "A-1093"},
                "result": {"status": "shipped", "eta": "2025-03-16"}, "ok": True, "t_ms": 20500,
                "duration_ms": 231},
               {"name": "transfer", "arguments": {"target": "nowhere"}, "result": {"error": "unknown target"},
                "ok": False, "t_ms": 30100, "duration_ms": 0}],
        transcript=[
            {"role": "assistant", "text": "Hello, this is Acme. How can I help?", "t_ms": 900},
            {"role": "user", "text": "我想查一下订单 A-1093", "t_ms": 5200},
            {"role": "assistant", "text": "Your order", "t_ms": 7100, "interrupted": True, "heard_ms": 640,
             "full_text": "Your order A-1093 has shipped and arrives on Sunday."},
            {"role": "user", "text": "When does it arrive?", "t_ms": 7800},
        ],
        dtmf=[{"digit": "1", "t_ms": 15000}, {"digit": "#", "t_ms": 15400}],
        recording_path=f"/var/lib/voicebot/recordings/CA{n:032x}.wav",
        campaign_id=None,
        attempt_id=None,
    )
    fields.update(changes)
    return CallRecord(**fields)
