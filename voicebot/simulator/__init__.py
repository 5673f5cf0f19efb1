"""Simulated phone callers that speak each carrier's media-stream protocol (tests, demo, load)."""

from voicebot.simulator.caller import (
    CallerUtterance,
    CallResult,
    CallSetupError,
    CarrierProtocol,
    ClearPlayback,
    Drop,
    Hangup,
    MarkRecord,
    PlayAudio,
    PlaybackSegment,
    Press,
    ProtocolViolation,
    QueueMark,
    Say,
    SimulatedCall,
    StreamRefused,
    StreamTarget,
    TimelineEvent,
)
from voicebot.simulator.twilio import AUTO, TwilioProtocol, parse_twiml_stream, simulate_twilio_call

__all__ = [
    "AUTO", "CallResult", "CallSetupError", "CallerUtterance", "CarrierProtocol", "ClearPlayback", "Drop", "Hangup",
    "MarkRecord", "PlayAudio", "PlaybackSegment", "Press", "ProtocolViolation", "QueueMark", "Say", "SimulatedCall",
    "StreamRefused", "StreamTarget", "TimelineEvent", "TwilioProtocol", "parse_twiml_stream",
    "simulate_twilio_call",
]
