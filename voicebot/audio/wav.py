"""16-bit PCM WAV files (stdlib ``wave``): mono in, mono or stereo out."""

from __future__ import annotations

import os
import wave

import numpy as np

from voicebot.audio import RATE


class WavFormatError(ValueError):
    """The file is not a WAV we accept (16-bit PCM; mono when reading)."""


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a mono 16-bit PCM WAV → (int16 samples of shape (n,), sample rate)."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if channels != 1:
                raise WavFormatError(f"{path}: {channels} channels, expected mono")
            if width != 2:
                raise WavFormatError(f"{path}: {8 * width}-bit samples, expected 16-bit PCM")
            data = w.readframes(n)
    except wave.Error as exc:  # e.g. WAVE_FORMAT_EXTENSIBLE or float on Python < 3.12, not RIFF at all
        raise WavFormatError(f"{path}: {exc}") from exc
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    return samples, rate


def read_wav_8k(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mono 16-bit WAV and return it at 8 kHz (resampled if needed)."""
    samples, rate = read_wav(path)
    if rate == RATE:
        return samples
    from voicebot.audio.resample import Resampler  # imported lazily: only needed for other rates

    resampler = Resampler(rate, RATE)
    # A streaming resampler holds back its filter delay and any partial input period: feed a second of
    # zeros after the file to flush both, then drop the delay so sample i stays at time i / 8000.
    delay = int(getattr(resampler, "delay_samples", 0))
    out = resampler.process(np.concatenate([samples, np.zeros(rate + 2 * delay * rate // RATE, np.int16)]))
    expected = (len(samples) * RATE + rate // 2) // rate
    return np.asarray(out[delay : delay + expected], dtype=np.int16)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> None:
    """Write int16 samples, mono ``(n,)`` or stereo ``(n, 2)``, as a 16-bit PCM WAV."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise TypeError(f"write_wav wants int16 samples, got {samples.dtype}")
    if samples.ndim == 1:
        channels = 1
    elif samples.ndim == 2 and samples.shape[1] == 2:
        channels = 2
    else:
        raise ValueError(f"write_wav wants shape (n,) or (n, 2), got {samples.shape}")
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
