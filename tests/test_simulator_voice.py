"""The caller's microphone renders a block ahead: same samples as mixing frame by frame."""

import numpy as np
import pytest

from voicebot.audio import FRAME_SAMPLES
from voicebot.simulator.voice import BLOCK_FRAMES, Microphone, speech_frames


def frame_by_frame(seed: int, noise_rms: float | None, n_frames: int, speech: dict[int, np.ndarray]) -> np.ndarray:
    """The reference: one noise draw per frame, speech added frame by frame and clipped."""
    rng = np.random.default_rng(seed)
    out, active, pos = [], None, 0
    for i in range(n_frames):
        if i in speech:
            active, pos = speech[i], 0
        if noise_rms is None:
            frame = np.zeros(FRAME_SAMPLES, np.int16)
        else:
            frame = np.clip(np.rint(rng.normal(0.0, noise_rms, FRAME_SAMPLES)), -32768, 32767).astype(np.int16)
        if active is not None:
            chunk = active[pos : pos + FRAME_SAMPLES]
            pos += FRAME_SAMPLES
            frame = np.clip(frame.astype(np.int32) + np.pad(chunk, (0, FRAME_SAMPLES - len(chunk))),
                            -32768, 32767).astype(np.int16)
            if pos >= len(active):
                active = None
        out.append(frame)
    return np.concatenate(out)


@pytest.mark.parametrize("noise_rms", [None, 33.0, 20000.0])
def test_block_rendering_matches_frame_by_frame(noise_rms):
    rng = np.random.default_rng(3)
    loud = np.clip(rng.normal(0, 20000, 8000 * 3 + 37), -32768, 32767).astype(np.int16)  # clips when mixed
    short = rng.integers(-3000, 3000, 100).astype(np.int16)                              # under one frame
    # speech starting mid-block, spanning block edges, right at a block start, and back to back
    speech = {7: loud, 7 + len(speech_frames(loud)) + 3: short, 4 * BLOCK_FRAMES: short,
              4 * BLOCK_FRAMES + 1: loud[:FRAME_SAMPLES * BLOCK_FRAMES]}
    n_frames = 6 * BLOCK_FRAMES + 11
    mic = Microphone(np.random.default_rng(11), noise_rms)
    frames = []
    for i in range(n_frames):
        if i in speech:
            mic.speak(speech_frames(speech[i]))
        frames.append(mic.next_frame())
    got = np.concatenate(frames)
    assert np.array_equal(got, frame_by_frame(11, noise_rms, n_frames, speech))


def test_frames_handed_out_do_not_change():
    mic = Microphone(np.random.default_rng(1), 30.0)
    first = [mic.next_frame() for _ in range(5)]
    kept = [f.copy() for f in first]
    mic.speak(speech_frames(np.full(800, 1000, np.int16)))
    mic.next_frame()
    assert all(np.array_equal(a, b) for a, b in zip(first, kept))
    with pytest.raises(ValueError):
        first[0][0] = 1
