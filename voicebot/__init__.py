"""voicebot: telephony voice-bot server relaying carrier media streams to StepFun speech models."""

__version__ = "0.1.0"
