"""The interface between a Call and an engine (the StepFun side). Engines know nothing of carriers."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..audio.playout import HeardItem


class EngineSink(Protocol):
    """What an engine reports to its call. Every method is synchronous and cheap."""

    def bot_audio(self, item_id: str, pcm: np.ndarray) -> None:
        """Bot speech for ``item_id`` as 8 kHz int16, in order."""

    def bot_audio_done(self, item_id: str) -> None:
        """All audio of ``item_id`` has been delivered."""

    def caller_speech_started(self) -> None:
        """The model heard the caller start speaking (a barge-in trigger while the bot speaks)."""

    def transcript(self, role: str, text: str, item_id: str | None) -> None:
        """Final text of one turn: role is "user" or "assistant"."""

    def engine_failed(self, reason: str) -> None:
        """The engine cannot go on; ``reason`` says why in words fit for a log line."""


class Engine(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and speak the greeting; raises StepFunError when the engine cannot be used."""

    def feed(self, frame: np.ndarray) -> None:
        """One 20 ms frame of caller audio (8 kHz int16)."""

    def interrupt(self, heard: list[HeardItem]) -> None:
        """Barge-in: stop the bot now and keep only what the caller heard of each item."""

    async def close(self) -> None: ...
