"""Local voice activity detection on the caller's 8 kHz frames (barge-in trigger)."""

from __future__ import annotations

import numpy as np

from . import FRAME_MS


class EnergyVad:
    """Frame-energy detector: speech is ``min_speech_ms`` of frames above ``threshold_dbfs``.

    One quiet frame inside an utterance (a plosive gap) does not reset the count; ``hangover_ms`` of
    quiet ends the utterance, so one utterance triggers once.
    """

    def __init__(self, min_speech_ms: int = 200, threshold_dbfs: float = -38.0, hangover_ms: int = 200) -> None:
        self.min_frames = max(1, min_speech_ms // FRAME_MS)
        self.hangover_frames = max(1, hangover_ms // FRAME_MS)
        # Compare mean squares against a precomputed threshold: no sqrt/log per frame.
        self._threshold_ms = (32768.0 * 10 ** (threshold_dbfs / 20)) ** 2
        self._voiced = 0
        self._quiet = 0
        self.in_speech = False   # an utterance has been confirmed and has not ended yet

    def reset(self) -> None:
        self._voiced = self._quiet = 0
        self.in_speech = False

    def process(self, frame: np.ndarray) -> bool:
        """True exactly on the frame that confirms a new utterance."""
        samples = frame.astype(np.float32)
        loud = float(np.dot(samples, samples)) / len(samples) > self._threshold_ms
        if loud:
            self._voiced += 1
            self._quiet = 0
        else:
            self._quiet += 1
            if self._quiet >= self.hangover_frames:
                self._voiced = 0
                self.in_speech = False
            elif self._quiet > 1 and not self.in_speech:
                self._voiced = 0
        if not self.in_speech and self._voiced >= self.min_frames:
            self.in_speech = True
            return True
        return False


class Endpointer:
    """Cuts the caller's audio into utterances: speech start, then ``silence_ms`` of quiet ends the turn.

    Keeps ``prefix_ms`` of audio before the detected start (the onset of the first word is quieter than
    the threshold), ignores noises shorter than ``min_speech_ms`` and cuts turns at ``max_turn_s``.
    """

    def __init__(self, *, silence_ms: int = 600, min_speech_ms: int = 200, max_turn_s: float = 30.0,
                 prefix_ms: int = 300, threshold_dbfs: float = -38.0) -> None:
        self.vad = EnergyVad(min_speech_ms=min_speech_ms, threshold_dbfs=threshold_dbfs, hangover_ms=silence_ms)
        self.prefix_frames = prefix_ms // FRAME_MS
        self.max_frames = int(max_turn_s * 1000) // FRAME_MS
        self._recent: list[np.ndarray] = []
        self._turn: list[np.ndarray] | None = None

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    def push(self, frame: np.ndarray) -> tuple[bool, np.ndarray | None]:
        """(speech confirmed on this frame, the finished utterance if this frame ended one)."""
        started = self.vad.process(frame)
        if self._turn is None:
            self._recent.append(frame)
            if started:
                # The VAD confirms after min_speech_ms: the turn began that long (plus the prefix) ago.
                keep = self.prefix_frames + self.vad.min_frames
                self._turn = self._recent[-keep:]
                self._recent = []
            elif len(self._recent) > self.prefix_frames + self.vad.min_frames:
                del self._recent[0]
            return started, None
        self._turn.append(frame)
        if not self.vad.in_speech or len(self._turn) >= self.max_frames:
            utterance = np.concatenate(self._turn)
            self._turn = None
            if self.vad.in_speech:      # cut at max_turn_s: the rest of the speech is a new turn
                self.vad.reset()
            return started, utterance
        return started, None
