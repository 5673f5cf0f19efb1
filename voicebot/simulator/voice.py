"""What the simulated caller's microphone picks up, 20 ms at a time: line noise, with the script's speech
mixed in while the caller speaks.

Frames are rendered a block (one second) ahead, so the numpy work is done once per block instead of once
per frame. The result is sample-exact with rendering frame by frame: the noise is the same stream of
normal draws from the call's generator (``Generator.normal`` gives the same values drawn in one go or
frame by frame), rounded and clipped to int16, and speech is added to it and clipped the same way.
"""

from __future__ import annotations

import numpy as np

from voicebot.audio import FRAME_SAMPLES

BLOCK_FRAMES = 50  # one second of frames rendered at a time


def speech_frames(pcm: np.ndarray) -> np.ndarray:
    """int16 speech → int32 rows of one frame each, the last one padded with zeros."""
    n = -(-len(pcm) // FRAME_SAMPLES)
    out = np.zeros(n * FRAME_SAMPLES, np.int32)
    out[: len(pcm)] = pcm
    return out.reshape(n, FRAME_SAMPLES)


class Microphone:
    """The caller's frames in order: ``next_frame()`` is frame 0, 1, …; ``speak()`` mixes speech in from
    the next frame on. ``noise_rms`` None: digital silence under the speech."""

    def __init__(self, rng: np.random.Generator, noise_rms: float | None) -> None:
        self._rng = rng
        self._noise_rms = noise_rms
        self._noise = np.zeros((0, FRAME_SAMPLES), np.int32)   # the current block's noise
        self._block = np.zeros((0, FRAME_SAMPLES), np.int16)   # the current block as sent
        self._pos = 0                                           # next frame in the block
        self._speech: np.ndarray | None = None                  # speech rows still to mix, from _pos on

    def speak(self, frames: np.ndarray) -> None:
        """Mix ``frames`` (from :func:`speech_frames`) into the frames from the next one on."""
        self._speech = frames
        if self._pos < len(self._block):
            self._mix(self._pos)

    def next_frame(self) -> np.ndarray:
        """The next 160 samples (int16, read-only: a view into the block)."""
        if self._pos >= len(self._block):
            self._render()
        frame = self._block[self._pos]
        self._pos += 1
        if self._speech is not None:
            self._speech = self._speech[1:] if len(self._speech) > 1 else None
        return frame

    def _render(self) -> None:
        if self._noise_rms is None:
            self._noise = np.zeros((BLOCK_FRAMES, FRAME_SAMPLES), np.int32)
        else:
            noise = self._rng.normal(0.0, self._noise_rms, BLOCK_FRAMES * FRAME_SAMPLES)
            self._noise = np.clip(np.rint(noise), -32768, 32767).astype(np.int32).reshape(BLOCK_FRAMES,
                                                                                         FRAME_SAMPLES)
        self._block = self._noise.astype(np.int16)
        self._pos = 0
        if self._speech is not None:
            self._mix(0)
        self._block.flags.writeable = False

    def _mix(self, start: int) -> None:
        assert self._speech is not None
        n = min(len(self._block) - start, len(self._speech))
        block = self._block if self._block.flags.writeable else self._block.copy()
        block[start : start + n] = np.clip(self._noise[start : start + n] + self._speech[:n], -32768, 32767)
        block.flags.writeable = False
        self._block = block
