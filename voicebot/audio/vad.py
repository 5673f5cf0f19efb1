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
